//! Quorum spending policies of the strategic reserve.
//!
//! Why a crate of its own: a policy is evaluated in three places (the service that builds a
//! spend, the policy signer in front of the HSM key, and an auditor re-running decisions from the
//! ledger), and all three must reach the same decision from the same inputs. So the model, its
//! canonical hash and `evaluate` are pure, deterministic functions with no I/O.
//!
//! - [`model`]: the TOML policy document and its validated model ([`Policy`]);
//! - [`canonical`]: the canonical encoding and [`PolicyHash`];
//! - [`approval`]: approval subjects, digests, BIP-340 [`sign`] and [`verify`];
//! - [`evaluate`](mod@evaluate): [`evaluate()`] a spend request into a [`Decision`];
//! - [`freeze`]: the freeze state (any admin freezes, the admin quorum lifts);
//! - [`governance`]: comparing versions (tightening or loosening) and activating a new version.
//! - [`proof`]: the shape of a BIP-127 reserve proof that the reserve-proof rule lets the quorum
//!   sign without spend approvals (shared by `custody` and the HSM policy signer).
//! - [`policy_key`]: the check that every vault path without a relative timelock needs the
//!   policy key (shared by `custody`'s vault validation and the HSM policy signer).
#![forbid(unsafe_code)]

pub mod approval;
pub mod canonical;
mod encode;
pub mod evaluate;
pub mod freeze;
pub mod governance;
pub mod model;
pub mod policy_key;
pub mod proof;
pub mod proof_of_funds;
mod quorum;

pub use approval::{sign, verify, Approval, ApprovalError, ApprovalSubject, Verdict, Verified};
pub use canonical::{PolicyHash, POLICY_TAG};
pub use evaluate::{evaluate, evaluate_proof, Decision, Evaluation, SpendRequestFacts};
pub use freeze::FreezeState;
pub use governance::{activate, compare, propose, ChangeKind};
pub use model::{Policy, PolicyError};
pub use proof::{ProofSubject, ProofTerms};
