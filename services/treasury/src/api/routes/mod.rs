//! The API's resource handlers, one file per resource (`/v1/vaults`, `/v1/spends`,
//! `/v1/policies`, `/v1/ledger`, `/v1/reserves`, `/v1/tokens`).
//!
//! Why apart from the HTTP machinery in `api/`: a handler only checks the caller's role, turns
//! the request into a service call and the outcome into JSON or a problem; the state,
//! middleware, TLS server and health endpoints around them are shared by all.

pub mod ledger;
pub mod policies;
pub mod reserves;
pub mod spends;
pub mod tokens;
pub mod vaults;
