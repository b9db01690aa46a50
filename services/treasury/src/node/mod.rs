//! The one Bitcoin Core client: how to reach the node, connecting with retries, and
//! broadcasting after `testmempoolaccept`.
//!
//! Why a folder of its own: the service, the API's readiness check and the demo all talk to
//! the node through these few functions, so changing the RPC client (e.g. to `corepc-client`)
//! happens here only. Calls block: run them on a blocking thread.

pub mod sync;

use std::path::PathBuf;
use std::time::Duration;

use bdk_bitcoind_rpc::bitcoincore_rpc::{self, Auth, Client, RpcApi};
use bdk_wallet::bitcoin::{Network, Txid};
use custody::vault::VaultError;
use zeroize::Zeroizing;

/// How to reach the node's RPC.
#[derive(Clone)]
pub struct NodeConfig {
    /// `http://127.0.0.1:18443`.
    pub url: String,
    /// Cookie file, or user and password.
    pub auth: NodeAuth,
}

/// RPC credentials.
#[derive(Clone)]
pub enum NodeAuth {
    /// Bitcoin Core's `.cookie` file.
    Cookie(PathBuf),
    /// User and password (the password is zeroized and never printed).
    UserPass(String, Zeroizing<String>),
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            NodeAuth::Cookie(p) => format!("cookie {}", p.display()),
            NodeAuth::UserPass(u, _) => format!("user {u}, password [redacted]"),
        };
        write!(f, "NodeConfig({}, {auth})", self.url)
    }
}

/// Errors talking to the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The node cannot be reached (down, wrong URL or credentials).
    #[error("bitcoin node at {url} is unreachable after {attempts} attempts: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        reason: String,
    },
    /// The node answered with an error.
    #[error("bitcoin node error: {0}")]
    Rpc(String),
    /// The node is on another chain than the vault.
    #[error("node is on {node}, vault {vault} is on {network}")]
    WrongChain {
        /// The node's chain.
        node: String,
        /// The vault.
        vault: String,
        /// The vault's network.
        network: Network,
    },
    /// A block did not connect.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

fn rpc_error(e: bitcoincore_rpc::Error) -> SyncError {
    SyncError::Rpc(e.to_string())
}

fn is_transport(e: &bitcoincore_rpc::Error) -> bool {
    matches!(
        e,
        bitcoincore_rpc::Error::JsonRpc(bitcoincore_rpc::jsonrpc::Error::Transport(_))
            | bitcoincore_rpc::Error::Io(_)
    )
}

impl NodeConfig {
    /// A client (no request is made yet).
    ///
    /// # Errors
    /// [`SyncError::Unreachable`] when the cookie cannot be read or the URL is malformed.
    pub fn client(&self) -> Result<Client, SyncError> {
        let auth = match &self.auth {
            NodeAuth::Cookie(p) => Auth::CookieFile(p.clone()),
            NodeAuth::UserPass(u, pw) => Auth::UserPass(u.clone(), pw.to_string()),
        };
        Client::new(&self.url, auth).map_err(|e| SyncError::Unreachable {
            url: self.url.clone(),
            attempts: 1,
            reason: e.to_string(),
        })
    }

    /// Connects and checks the node's chain against `network`, retrying `attempts` times
    /// with a doubling delay from `delay` while the node is unreachable.
    ///
    /// # Errors
    /// [`SyncError::Unreachable`] after the last attempt, [`SyncError::WrongChain`].
    pub fn connect_checked(
        &self,
        network: Network,
        attempts: u32,
        delay: Duration,
    ) -> Result<Client, SyncError> {
        let mut wait = delay;
        let mut last = String::new();
        for attempt in 1..=attempts.max(1) {
            let client = match self.client() {
                Ok(c) => c,
                Err(e) => {
                    last = e.to_string();
                    std::thread::sleep(wait);
                    wait = wait.saturating_mul(2);
                    continue;
                }
            };
            match client.get_blockchain_info() {
                Ok(info) => {
                    let node = info.chain;
                    if node != network {
                        return Err(SyncError::WrongChain {
                            node: node.to_string(),
                            vault: String::new(),
                            network,
                        });
                    }
                    return Ok(client);
                }
                Err(e) if is_transport(&e) => {
                    last = e.to_string();
                    if attempt < attempts {
                        std::thread::sleep(wait);
                        wait = wait.saturating_mul(2);
                    }
                }
                Err(e) => return Err(rpc_error(e)),
            }
        }
        Err(SyncError::Unreachable {
            url: self.url.clone(),
            attempts: attempts.max(1),
            reason: last,
        })
    }
}

/// Checks a finalized transaction with the node's `testmempoolaccept`, then broadcasts it.
///
/// # Errors
/// [`SyncError::Rpc`] with the node's reject reason, [`SyncError::Unreachable`].
pub fn broadcast(
    node: &NodeConfig,
    network: Network,
    tx: &bdk_wallet::bitcoin::Transaction,
) -> Result<Txid, SyncError> {
    let client = node.connect_checked(network, 3, Duration::from_millis(500))?;
    let hex = bdk_wallet::bitcoin::consensus::encode::serialize_hex(tx);
    let accept: serde_json::Value = client
        .call("testmempoolaccept", &[serde_json::json!([hex])])
        .map_err(rpc_error)?;
    if accept[0]["allowed"] != serde_json::Value::Bool(true) {
        return Err(SyncError::Rpc(format!(
            "testmempoolaccept refused the transaction: {}",
            accept[0]["reject-reason"]
                .as_str()
                .unwrap_or("no reason given")
        )));
    }
    client.send_raw_transaction(tx).map_err(rpc_error)
}
