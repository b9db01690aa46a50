//! The reserve service's library half: storage and the command handlers the `treasury` binary
//! runs. I/O lives here; the domain logic is in `custody` (pure).
#![forbid(unsafe_code)]

pub mod actor;
pub mod api;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod demo;
pub mod files;
pub mod node;
pub mod service;
pub mod signer;
pub mod store;
