//! The API's shared state: the database, the services over it, the node, the policy signer,
//! limits and metrics, built from a configuration file or piece by piece.
//!
//! Why apart: every handler and middleware reads it, and tests and the demo build it without
//! a configuration file; keeping it out of `mod.rs` leaves the router readable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bdk_wallet::bitcoin::Network;
use custody::ledger::KeyFileSigner;

use super::routes::vaults;
use super::{auth, config, metrics, ratelimit};
use super::{ServeConfig, ServeError};
use crate::node::NodeConfig;
use crate::service::spend::SpendService;
use crate::service::vaults::VaultService;
use crate::store::LedgerStore;

/// What a connection tells its requests (set by the TLS accept loop).
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the client presented a certificate that chains to `client_ca`.
    pub client_cert: bool,
}

/// The request id of a request (`x-request-id`, set by the service).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Limits applied to every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub body_bytes: usize,
    /// Time to the response head.
    pub timeout: Duration,
    /// Steady requests per minute per token.
    pub per_minute: u32,
    /// Burst above the steady rate.
    pub burst: u32,
    /// How often event streams poll the database.
    pub events_poll: Duration,
    /// How often cached token answers are re-checked against the revocations in the
    /// database (zero: every request looks its token up).
    pub token_recheck: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes: 64 * 1024,
            timeout: Duration::from_secs(30),
            per_minute: 600,
            burst: 60,
            events_poll: Duration::from_millis(500),
            token_recheck: Duration::from_millis(100),
        }
    }
}

/// A signer shared between requests (the policy key).
pub type SharedSigner = Arc<dyn hsm::Signer>;

pub(super) struct Inner {
    pub(super) store: LedgerStore,
    pub(super) spend: SpendService,
    pub(super) node: Option<NodeConfig>,
    pub(super) network: Option<Network>,
    pub(super) policy_signer: Option<SharedSigner>,
    pub(super) signer_client: Option<Arc<::signer::SignerClient>>,
    pub(super) ledger_origin: String,
    pub(super) ledger_key: Option<Arc<zeroize::Zeroizing<String>>>,
    pub(super) limits: Limits,
    pub(super) require_client_cert: bool,
    pub(super) tokens: auth::TokenCache,
    pub(super) rate: ratelimit::RateLimiter,
    pub(super) metrics: metrics::Metrics,
    pub(super) shutdown: tokio::sync::watch::Sender<bool>,
    pub(super) vault_cache: vaults::VaultCache,
    pub(super) fee_caps: custody::vault::spend::FeeCaps,
}

/// Everything the handlers share: the database, the services over it, the node, the policy
/// signer, limits and metrics. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("node", &self.inner.node)
            .field("network", &self.inner.network)
            .field(
                "policy_signer",
                &self.inner.policy_signer.as_ref().map(|s| s.id().to_owned()),
            )
            .field(
                "signer",
                &self.inner.signer_client.as_ref().map(|c| c.endpoint()),
            )
            .field("ledger_origin", &self.inner.ledger_origin)
            .field("ledger_key", &self.inner.ledger_key.is_some())
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AppState`] piece by piece (tests and the demo); [`AppState::from_config`]
/// does it from a configuration file.
#[derive(Default)]
pub struct AppStateBuilder {
    node: Option<(NodeConfig, Network)>,
    policy_signer: Option<SharedSigner>,
    signer_client: Option<Arc<::signer::SignerClient>>,
    ledger_origin: Option<String>,
    ledger_key: Option<zeroize::Zeroizing<String>>,
    limits: Limits,
    require_client_cert: bool,
    fee_caps: Option<custody::vault::spend::FeeCaps>,
}

impl AppStateBuilder {
    /// The fee caps of PSBTs built through the API (default: 1 000 000 sat, 500 sat/vB, as
    /// the CLI).
    pub fn fee_caps(mut self, caps: custody::vault::spend::FeeCaps) -> Self {
        self.fee_caps = Some(caps);
        self
    }

    /// The node the service follows and broadcasts through, and its network.
    pub fn node(mut self, node: NodeConfig, network: Network) -> Self {
        self.node = Some((node, network));
        self
    }

    /// The policy key's signer.
    pub fn policy_signer(mut self, signer: SharedSigner) -> Self {
        self.policy_signer = Some(signer);
        self
    }

    /// The policy signer process (ADR 0017): spends' policy signatures, approvals forwarded,
    /// vaults registered.
    pub fn signer_client(mut self, client: ::signer::SignerClient) -> Self {
        self.signer_client = Some(Arc::new(client));
        self
    }

    /// The ledger origin and the key checkpoints are signed with (the text of a ledger key
    /// file, `treasury ledger keygen`).
    pub fn ledger(mut self, origin: &str, key: Option<zeroize::Zeroizing<String>>) -> Self {
        self.ledger_origin = Some(origin.to_owned());
        self.ledger_key = key;
        self
    }

    /// The request limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Integrator tokens only on connections with a verified client certificate.
    pub fn require_client_cert_for_integrators(mut self, yes: bool) -> Self {
        self.require_client_cert = yes;
        self
    }

    /// The state over `store`.
    pub fn build(self, store: LedgerStore) -> AppState {
        let spend = SpendService::new(VaultService::new(store.clone()));
        let (node, network) = match self.node {
            Some((n, net)) => (Some(n), Some(net)),
            None => (None, None),
        };
        let (shutdown, _) = tokio::sync::watch::channel(false);
        AppState {
            inner: Arc::new(Inner {
                store,
                spend,
                node,
                network,
                policy_signer: self.policy_signer,
                signer_client: self.signer_client,
                ledger_origin: self
                    .ledger_origin
                    .unwrap_or_else(|| crate::service::DEFAULT_ORIGIN.to_owned()),
                ledger_key: self.ledger_key.map(Arc::new),
                rate: ratelimit::RateLimiter::new(self.limits.per_minute, self.limits.burst),
                limits: self.limits,
                require_client_cert: self.require_client_cert,
                tokens: auth::TokenCache::new(self.limits.token_recheck),
                metrics: metrics::Metrics::default(),
                shutdown,
                vault_cache: vaults::VaultCache::default(),
                fee_caps: self.fee_caps.unwrap_or(custody::vault::spend::FeeCaps {
                    max_fee: bdk_wallet::bitcoin::Amount::from_sat(1_000_000),
                    max_fee_rate: bdk_wallet::bitcoin::FeeRate::from_sat_per_vb_u32(500),
                }),
            }),
        }
    }
}

impl AppState {
    /// A builder.
    pub fn builder() -> AppStateBuilder {
        AppStateBuilder::default()
    }

    /// Opens the database, reads the secrets and opens the signer `config` names.
    ///
    /// # Errors
    /// [`ServeError`] naming what could not be opened.
    pub async fn from_config(config: &ServeConfig) -> Result<AppState, ServeError> {
        let store = LedgerStore::open(&config.database.url).await?;
        let s = &config.server;
        let mut b = AppState::builder()
            .limits(Limits {
                body_bytes: s.body_limit_bytes,
                timeout: Duration::from_millis(s.request_timeout_ms),
                per_minute: s.rate_limit_per_minute,
                burst: s.rate_limit_burst,
                events_poll: Duration::from_millis(s.events_poll_ms),
                token_recheck: Duration::from_millis(s.token_recheck_ms),
            })
            .require_client_cert_for_integrators(s.client_ca.is_some())
            .fee_caps(config.fees.caps()?);
        if let (Some(node), Some(network)) = (config.node_config()?, config.network()) {
            b = b.node(node, network);
        }
        let key = match &config.ledger.key_file {
            Some(p) => {
                let text = zeroize::Zeroizing::new(std::fs::read_to_string(p).map_err(|e| {
                    ServeError::Config(config::ConfigError::Secret {
                        what: "ledger key file".into(),
                        reason: format!("{}: {e}", p.display()),
                    })
                })?);
                // Checked now, so a bad key fails at start-up and not at the first checkpoint.
                KeyFileSigner::from_key_file(&text).map_err(|e| {
                    ServeError::Config(config::ConfigError::Secret {
                        what: "ledger key file".into(),
                        reason: format!("{}: {e}", p.display()),
                    })
                })?;
                Some(text)
            }
            None => None,
        };
        b = b.ledger(&config.ledger.origin, key);
        if let Some(sig) = &config.signer {
            if sig.kind.is_some() {
                b = b.policy_signer(open_signer(sig).await?);
            }
            if let Some(socket) = &sig.socket {
                b = b.signer_client(::signer::SignerClient::new(socket));
            }
        }
        Ok(b.build(store))
    }

    /// The ledger store.
    pub fn store(&self) -> &LedgerStore {
        &self.inner.store
    }

    /// The spend service (vaults, governance).
    pub fn spend(&self) -> &SpendService {
        &self.inner.spend
    }

    /// The node, when configured.
    pub fn node(&self) -> Option<&NodeConfig> {
        self.inner.node.as_ref()
    }

    /// The policy signer process, when configured.
    pub fn signer_client(&self) -> Option<&::signer::SignerClient> {
        self.inner.signer_client.as_deref()
    }

    /// The metrics.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// The token cache (a revocation here invalidates it at once).
    pub fn tokens(&self) -> &auth::TokenCache {
        &self.inner.tokens
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Tells long-lived responses (event streams) to end.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// A receiver that turns `true` at shutdown.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }
}

/// Opens the policy key's signer named by `[signer]` (blocking work on a blocking thread).
///
/// # Errors
/// [`ServeError::Config`] for secrets, [`ServeError::Signer`] when the token or keystore
/// cannot be opened.
pub async fn open_signer(sig: &config::SignerSection) -> Result<SharedSigner, ServeError> {
    use config::{read_secret, SignerKind};
    let missing =
        |f: &str| ServeError::Config(config::ConfigError::Invalid(format!("signer: {f} missing")));
    match sig.kind.ok_or_else(|| missing("kind"))? {
        SignerKind::Pkcs11 => {
            let pin = read_secret(
                "signer pin",
                sig.pin_file.as_deref(),
                sig.pin_env.as_deref(),
            )?;
            let cfg = hsm::Pkcs11Config::new(
                sig.module.clone().ok_or_else(|| missing("module"))?,
                sig.token_label
                    .clone()
                    .ok_or_else(|| missing("token_label"))?,
                sig.key_label.clone().ok_or_else(|| missing("key_label"))?,
                hsm::Pkcs11Pin::new(pin.expose().to_owned()),
            );
            let s = crate::signer::open::open_pkcs11(cfg)
                .await
                .map_err(|e| ServeError::Signer(e.to_string()))?;
            Ok(Arc::new(s))
        }
        SignerKind::Software => {
            let pass = read_secret(
                "signer passphrase",
                sig.passphrase_file.as_deref(),
                sig.passphrase_env.as_deref(),
            )?;
            let path = sig.keystore.clone().ok_or_else(|| missing("keystore"))?;
            let s = tokio::task::spawn_blocking(move || {
                let json = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                hsm::SoftwareKeystore::from_json(&json, pass.expose()).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| ServeError::Signer(e.to_string()))?
            .map_err(ServeError::Signer)?;
            Ok(Arc::new(s))
        }
    }
}
