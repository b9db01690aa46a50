//! The reserve service's library half: storage and the command handlers the `treasury` binary
//! runs. I/O lives here; the domain logic is in `custody` (pure).
#![forbid(unsafe_code)]

pub mod actor;
pub mod api;
pub mod cli;
pub mod demo;
pub mod hsm_checkpoint;
pub mod reserves_audit;
pub mod reserves_verify;
pub mod service;
pub mod store;
pub mod vault_formats;
