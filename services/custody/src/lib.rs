//! The pure custody domain of the strategic reserve.
//!
//! Why pure: wallet, ledger and proof logic must be re-runnable by an auditor from recorded data
//! alone, so this crate does no I/O (no tokio, no sqlx, no RPC). Storage, the node, the HSM and
//! HTTP live at the edge, in `treasury` and `hsm`, behind small traits.
//!
//! Its modules arrive with their issues: the reserve ledger model, vaults and the PSBT builder,
//! the spend-request state machine, proofs of reserves, and the liabilities sum tree.
#![forbid(unsafe_code)]

pub mod ledger;
pub mod liabilities;
pub mod request;
pub mod reserves;
pub mod vault;
