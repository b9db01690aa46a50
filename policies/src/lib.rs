//! Quorum spending policies of the strategic reserve.
//!
//! Why a crate of its own: a policy is evaluated in three places (the service that builds a
//! spend, the policy signer in front of the HSM key, and an auditor re-running decisions from the
//! ledger), and all three must reach the same decision from the same inputs. So the model, its
//! canonical hash and `evaluate` are pure, deterministic functions with no I/O.
#![forbid(unsafe_code)]
