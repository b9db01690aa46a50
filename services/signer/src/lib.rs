//! The policy signer as its own process, with its own state (ADR 0017).
//!
//! Why a crate of its own: the policy key must sign only what the policy allows, judged from
//! facts the service cannot change. The service (any host, any database) is untrusted for
//! custody; this crate is the other trust domain: it keeps its own hash-chained state
//! ([`state`]), verifies every order itself, and answers the service over a socket
//! ([`server`], [`client`], [`proto`]).
//!
//! - [`state`]: the append-only log, its verification at start, rollback detection with a
//!   head kept in the HSM token (or a MAC'd head file for a software keystore);
//! - [`core`]: [`hsm::PolicySigner`] fed only from that state;
//! - [`holder`]: the keys (PKCS#11 token or software keystore);
//! - [`proto`], [`server`], [`client`], [`tls`]: length-prefixed JSON frames over a Unix
//!   socket (peer uid checked) or mutual TLS over TCP.
//!
//! It depends on neither sqlx, axum nor the treasury crate.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod core;
pub mod holder;
pub mod proto;
pub mod server;
pub mod state;
pub mod tls;

pub use crate::client::{ClientError, SignerClient};
pub use crate::core::{Clock, CoreError, ManualClock, SignerCore, Status, SystemClock};
pub use crate::holder::{HolderConfig, HolderSecret, KeyHolder};
pub use crate::state::{StateError, StateLog};

use std::path::Path;
use std::sync::Arc;

/// Initializes a signer state in `dir`: opens (generating missing token keys) the holder,
/// writes `holder.json` and the genesis record.
///
/// # Errors
/// [`CoreError`] for a bad policy or origin, a state that exists, a holder already anchoring
/// another state, a token failure.
pub fn init(
    dir: &Path,
    config: &HolderConfig,
    secret: &HolderSecret,
    clock: Arc<dyn Clock>,
    network: bitcoin::Network,
    policy_toml: &str,
    ledger_origin: &str,
) -> Result<SignerCore, CoreError> {
    let holder =
        KeyHolder::open(config, secret, true).map_err(|e| CoreError::Holder(e.to_string()))?;
    let state = StateLog::create(dir, holder.anchor)?;
    config
        .save(dir)
        .map_err(|e| CoreError::Holder(e.to_string()))?;
    SignerCore::genesis(
        Box::new(state),
        holder.policy_key,
        holder.ledger,
        clock,
        network,
        policy_toml,
        ledger_origin,
    )
}

/// Opens the signer state in `dir` with the holder of its `holder.json`: verifies the log,
/// checks it against the anchor (rollback), replays it.
///
/// # Errors
/// [`CoreError::State`] (a broken chain, a rollback), [`CoreError::BadRecord`],
/// [`CoreError::WrongHolder`].
pub fn open(
    dir: &Path,
    secret: &HolderSecret,
    clock: Arc<dyn Clock>,
) -> Result<SignerCore, CoreError> {
    let config = HolderConfig::load(dir).map_err(|e| CoreError::Holder(e.to_string()))?;
    let holder =
        KeyHolder::open(&config, secret, false).map_err(|e| CoreError::Holder(e.to_string()))?;
    let state = StateLog::open(dir, holder.anchor)?;
    SignerCore::replay(Box::new(state), holder.policy_key, holder.ledger, clock)
}
