//! The reserve service's library half: storage and the command handlers the `treasury` binary
//! runs. I/O lives here; the domain logic is in `custody` (pure).
#![forbid(unsafe_code)]

pub mod actor;
pub mod api;
pub mod demo;
pub mod hsm_checkpoint;
pub mod hsm_cli;
pub mod ledger_cli;
pub mod officer_cli;
pub mod policy_cli;
pub mod reserves_audit;
pub mod reserves_cli;
pub mod reserves_verify;
pub mod serve_cli;
pub mod service;
pub mod spend_cli;
pub mod store;
pub mod vault_cli;
pub mod vault_formats;
