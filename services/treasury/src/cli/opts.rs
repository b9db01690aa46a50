//! Options and set-up shared by several command families: the database URL default, the
//! async runtime, the vault/node/fee options and the clock.
//!
//! Why one file: `vault`, `psbt`, `spend`, `freeze`, `reserves` and others take the same
//! flags; defining them once keeps their names, defaults and environment variables equal.

use std::path::PathBuf;

use bdk_wallet::bitcoin::{FeeRate, Network};
use clap::Args;
use custody::vault::spend::FeeCaps;
use zeroize::Zeroizing;

use crate::node::{NodeAuth, NodeConfig};
use crate::service::spend::At;

/// The default database when neither `--db` nor `TREASURY_DB` is given.
pub const DEFAULT_DB: &str = "sqlite://treasury.db";

/// A single-threaded async runtime for one command.
///
/// # Errors
/// A message when it cannot start.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}
/// Database, network, node and fee-cap options shared by vault and PSBT commands.
#[derive(Debug, Clone, Args)]
pub struct VaultOpts {
    /// The policy signer process (ADR 0017).
    #[command(flatten)]
    pub signer: SignerClientOpts,
    /// Database URL: sqlite://PATH or postgres://...
    #[arg(long, env = "TREASURY_DB", default_value = DEFAULT_DB, global = true)]
    pub db: String,
    /// Bitcoin network of the vaults.
    #[arg(
        long,
        env = "TREASURY_NETWORK",
        default_value = "regtest",
        global = true
    )]
    pub network: Network,
    /// Bitcoin Core RPC URL.
    #[arg(
        long,
        env = "TREASURY_RPC_URL",
        default_value = "http://127.0.0.1:18443",
        global = true
    )]
    pub rpc_url: String,
    /// Bitcoin Core cookie file (preferred over user and password).
    #[arg(long, env = "TREASURY_RPC_COOKIE", global = true)]
    pub rpc_cookie: Option<PathBuf>,
    /// RPC user.
    #[arg(long, env = "TREASURY_RPC_USER", global = true)]
    pub rpc_user: Option<String>,
    /// RPC password (prefer the environment; it is never printed).
    #[arg(
        long,
        env = "TREASURY_RPC_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub rpc_password: Option<String>,
    /// Highest absolute fee of a PSBT, in satoshis.
    #[arg(
        long,
        env = "TREASURY_MAX_FEE_SAT",
        default_value_t = 1_000_000,
        global = true
    )]
    pub max_fee_sat: u64,
    /// Highest fee rate of a PSBT, in sat/vB.
    #[arg(
        long,
        env = "TREASURY_MAX_FEE_RATE",
        default_value_t = 500,
        global = true
    )]
    pub max_fee_rate: u32,
}

impl VaultOpts {
    pub(crate) fn node(&self) -> Result<NodeConfig, String> {
        let auth = match (&self.rpc_cookie, &self.rpc_user, &self.rpc_password) {
            (Some(c), _, _) => NodeAuth::Cookie(c.clone()),
            (None, Some(u), Some(p)) => NodeAuth::UserPass(u.clone(), Zeroizing::new(p.clone())),
            _ => {
                return Err(
                    "no node credentials: give --rpc-cookie (TREASURY_RPC_COOKIE) or --rpc-user and TREASURY_RPC_PASSWORD"
                        .into(),
                )
            }
        };
        Ok(NodeConfig {
            url: self.rpc_url.clone(),
            auth,
        })
    }

    pub(crate) fn caps(&self) -> FeeCaps {
        FeeCaps {
            max_fee: bdk_wallet::bitcoin::Amount::from_sat(self.max_fee_sat),
            max_fee_rate: FeeRate::from_sat_per_vb_u32(self.max_fee_rate),
        }
    }
}
/// The clock and tip the service decides at.
#[derive(Debug, Clone, Args)]
pub struct ClockOpts {
    /// The service's clock in Unix milliseconds (drills and tests; default: the system clock).
    #[arg(long, env = "TREASURY_NOW_MS", hide = true, global = true)]
    pub now_ms: Option<i64>,
    /// The chain tip height (default: the vault's last sync).
    #[arg(long, hide = true, global = true)]
    pub tip_height: Option<u32>,
}

impl ClockOpts {
    /// The time and tip to decide at.
    pub fn at(&self) -> At {
        At {
            now_ms: self.now_ms.unwrap_or_else(crate::clock::now_ms),
            tip_height: self.tip_height,
        }
    }
}

/// Where the policy signer process listens (ADR 0017).
#[derive(Debug, Clone, Args)]
pub struct SignerClientOpts {
    /// The policy signer's Unix socket (`treasury signer serve --socket ...`).
    #[arg(long = "signer", env = "TREASURY_SIGNER_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
}

impl SignerClientOpts {
    /// A client of the signer, when a socket is given.
    pub fn client(&self) -> Option<::signer::SignerClient> {
        self.socket.as_ref().map(::signer::SignerClient::new)
    }

    /// A client of the signer; an error when no socket is given.
    ///
    /// # Errors
    /// A message asking for `--signer`.
    pub fn require(&self) -> Result<::signer::SignerClient, String> {
        self.client().ok_or_else(|| {
            "no policy signer: give --signer <socket> (or TREASURY_SIGNER_SOCKET)".to_owned()
        })
    }
}
