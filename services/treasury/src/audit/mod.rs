//! The auditor's verifier: checks a reserve-proof bundle against the auditor's own node.
//!
//! Why a folder of its own: an auditor runs this without the reserve's database or services;
//! it depends on `custody`, `files/` and a node RPC client only, so it can become its own
//! crate and binary (`reserve-audit`).

pub mod bip322;
pub mod bundle;
pub mod manifest;
pub mod problem;
pub mod quorum;
pub mod reserves;
