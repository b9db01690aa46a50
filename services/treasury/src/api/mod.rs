//! The HTTPS API (`treasury serve`): integrators, officers and auditors reach the reserve
//! through it.
//!
//! Why it is built this way:
//! - Every route names the roles that may call it ([`auth::Role`]); a token belongs to a
//!   principal, whose name is the actor of every ledger entry the call writes.
//! - All state lives in the database (ledger, vaults, coin reservations, spend requests,
//!   tokens, idempotency keys), so several instances against one PostgreSQL database are one
//!   service; only rate-limit buckets live in a process (token lookups are not cached, so a
//!   revocation holds everywhere at once).
//! - Errors are RFC 9457 problems ([`problem`]) with stable `type` URIs; internals are logged
//!   with the request id, never sent.
//! - The handlers call the same service code as the CLIs (`spend`, `signing`, `vaults`,
//!   `governance`, the ledger store); the API adds authentication, limits and JSON.

pub mod auth;
pub mod config;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod ratelimit;
pub mod routes;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bdk_wallet::bitcoin::Network;
use custody::ledger::KeyFileSigner;
use rand_core::{OsRng, RngCore};

pub use auth::{issue_token, Principal, Role};
pub use config::ServeConfig;
pub use problem::{Problem, ProblemKind};
pub use server::{bind, bind_state, init_logging, ServeError, Server};

use routes::{ledger, policies, reserves, spends, tokens, vaults};

use crate::service::spend::SpendService;
use crate::service::vaults::{NodeConfig, VaultService};
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

struct Inner {
    store: LedgerStore,
    spend: SpendService,
    node: Option<NodeConfig>,
    network: Option<Network>,
    policy_signer: Option<SharedSigner>,
    ledger_origin: String,
    ledger_key: Option<Arc<zeroize::Zeroizing<String>>>,
    limits: Limits,
    require_client_cert: bool,
    tokens: auth::TokenCache,
    rate: ratelimit::RateLimiter,
    metrics: metrics::Metrics,
    shutdown: tokio::sync::watch::Sender<bool>,
    vault_cache: vaults::VaultCache,
    fee_caps: custody::vault::spend::FeeCaps,
}

/// Everything the handlers share: the database, the services over it, the node, the policy
/// signer, limits and metrics. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
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
                ledger_origin: self
                    .ledger_origin
                    .unwrap_or_else(|| crate::cli::ledger::DEFAULT_ORIGIN.to_owned()),
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
            b = b.policy_signer(open_signer(sig).await?);
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
    match sig.kind {
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
            let s = tokio::task::spawn_blocking(move || hsm::Pkcs11Signer::open(cfg))
                .await
                .map_err(|e| ServeError::Signer(e.to_string()))?
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

/// The authenticated caller of a `/v1` request (401 when there is none).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(Problem::unauthorized)
    }
}

impl Caller {
    /// 403 unless the caller has one of `roles`.
    ///
    /// # Errors
    /// [`ProblemKind::Forbidden`].
    pub fn require(&self, roles: &[Role]) -> Result<&Principal, Problem> {
        if self.0.has_role(roles) {
            Ok(&self.0)
        } else {
            Err(Problem::forbidden(format!(
                "the {} role may not do this",
                self.0.role
            )))
        }
    }

    /// 403 unless the token covers vault `name`.
    ///
    /// # Errors
    /// [`ProblemKind::Forbidden`].
    pub fn require_vault(&self, name: &str) -> Result<(), Problem> {
        if self.0.may_see_vault(name) {
            Ok(())
        } else {
            Err(Problem::forbidden("the token is not scoped to this vault"))
        }
    }
}

fn new_request_id() -> String {
    let mut b = [0u8; 12];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Outermost layer: request id, span, timeout, metrics and the access log line.
async fn request_context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = new_request_id();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, %method, route = %route);
    let timeout = state.inner.limits.timeout;
    let resp = {
        use tracing::Instrument;
        match tokio::time::timeout(timeout, next.run(req).instrument(span.clone())).await {
            Ok(r) => r,
            Err(_) => {
                let _g = span.enter();
                tracing::warn!("request timed out");
                Problem::new(
                    ProblemKind::Timeout,
                    "the request took longer than the service allows",
                )
                .into_response()
            }
        }
    };
    let mut resp = as_problem(resp).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let took = started.elapsed();
    state.inner.metrics.record(&method, &route, status, took);
    let _g = span.enter();
    tracing::info!(status, took_us = took.as_micros() as u64, "done");
    resp
}

/// Turns an error response that is not a problem (axum's own rejections of a path or query,
/// for instance) into one, keeping its status and its text as the detail.
async fn as_problem(resp: Response) -> Response {
    let status = resp.status();
    // Problems, and JSON bodies of our own (`/readyz`), stay as they are.
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes() == problem::PROBLEM_JSON.as_bytes() || v.as_bytes() == b"application/json"
    });
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let kind = match status {
        StatusCode::NOT_FOUND => ProblemKind::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ProblemKind::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ProblemKind::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemKind::UnsupportedMediaType,
        StatusCode::UNPROCESSABLE_ENTITY => ProblemKind::Validation,
        StatusCode::UNAUTHORIZED => ProblemKind::Unauthorized,
        StatusCode::FORBIDDEN => ProblemKind::Forbidden,
        s if s.is_server_error() => ProblemKind::Internal,
        _ => ProblemKind::BadRequest,
    };
    let text = match axum::body::to_bytes(resp.into_body(), 4096).await {
        Ok(b) if kind != ProblemKind::Internal => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    };
    let detail = if text.is_empty() {
        kind.title().to_owned()
    } else {
        text
    };
    let mut p = Problem::new(kind, detail).into_response();
    *p.status_mut() = status;
    p
}

/// `/v1` layer: authenticates the bearer token and applies its rate limit.
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_owned);
    let Some(token) = token else {
        state.inner.metrics.auth_failure();
        return Problem::unauthorized().into_response();
    };
    let principal = match state
        .inner
        .tokens
        .principal(&state.inner.store, &token)
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => {
            state.inner.metrics.auth_failure();
            return Problem::unauthorized().into_response();
        }
        Err(e) => return Problem::internal(e).into_response(),
    };
    if state.inner.require_client_cert && principal.role == Role::Integrator {
        let has_cert = req
            .extensions()
            .get::<ConnInfo>()
            .is_some_and(|c| c.client_cert);
        if !has_cert {
            state.inner.metrics.auth_failure();
            return Problem::new(
                ProblemKind::Unauthorized,
                "integrator tokens are accepted only with a client certificate",
            )
            .into_response();
        }
    }
    if let Err(wait) = state.inner.rate.check(&principal.token_id) {
        state.inner.metrics.rate_limited();
        let mut p = Problem::new(
            ProblemKind::RateLimited,
            "the token's rate limit is exceeded",
        );
        p.retry_after = Some(wait.as_secs().saturating_add(1));
        return p.into_response();
    }
    tracing::Span::current().record("principal", principal.name.as_str());
    let actor = match custody::ledger::Actor::new(principal.name.clone()) {
        Ok(a) => a,
        Err(e) => return Problem::internal(e).into_response(),
    };
    req.extensions_mut().insert(principal);
    // Every ledger entry the request writes carries the caller (crate::actor).
    crate::actor::acting_as(actor, next.run(req)).await
}

/// `GET /healthz`: the process is up.
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the database and (when configured) the node answer.
async fn readyz(State(state): State<AppState>) -> Response {
    let db = state.inner.store.head().await.map(|h| h.size());
    let node = match state.inner.node.clone() {
        Some(n) => Some(
            tokio::task::spawn_blocking(move || {
                use bitcoincore_rpc::RpcApi;
                n.client()
                    .map_err(|e| e.to_string())?
                    .get_block_count()
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r),
        ),
        None => None,
    };
    let db_ok = db.is_ok();
    let node_ok = matches!(node, Some(Ok(_)));
    if let Err(e) = &db {
        tracing::warn!(error = %e, "readiness: database unreachable");
    }
    if let Some(Err(e)) = &node {
        tracing::warn!(error = %e, "readiness: node unreachable");
    }
    let body = serde_json::json!({
        "status": if db_ok && node_ok { "ready" } else { "not ready" },
        "database": if db_ok { "ok" } else { "unreachable" },
        "node": match &node { Some(Ok(_)) => "ok", Some(Err(_)) => "unreachable", None => "not configured" },
        "ledger_size": db.ok(),
        "node_height": node.and_then(|n| n.ok()),
    });
    let status = if db_ok && node_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text.
async fn metrics_text(State(state): State<AppState>) -> Response {
    let size = state.inner.store.head().await.ok().map(|h| h.size());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.inner.metrics.render(size),
    )
        .into_response()
}

/// `GET /v1/openapi.json`: the OpenAPI 3.1 document (public, like the health checks).
async fn openapi_doc() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::openapi_json(),
    )
        .into_response()
}

async fn not_found() -> Problem {
    Problem::not_found("no such route")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        ProblemKind::MethodNotAllowed,
        "the route does not take this method",
    )
}

/// `GET /v1/whoami`: the caller's principal, role and scopes.
async fn whoami(caller: Caller) -> impl IntoResponse {
    Json(serde_json::json!({
        "principal": caller.0.name,
        "role": caller.0.role,
        "vaults": caller.0.vaults,
        "token_id": caller.0.token_id,
    }))
}

/// The `/v1` routes, each behind authentication.
fn v1_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/vaults", get(vaults::list))
        .route("/v1/vaults/{name}", get(vaults::show))
        .route("/v1/vaults/{name}/balance", get(vaults::balance))
        .route("/v1/vaults/{name}/utxos", get(vaults::utxos))
        .route("/v1/vaults/{name}/export", get(vaults::export))
        .route("/v1/vaults/{name}/addresses", post(vaults::next_address))
        .route(
            "/v1/vaults/{name}/addresses/{address}",
            get(vaults::verify_address),
        )
        .route("/v1/vaults/{name}/sync", post(vaults::sync))
        .route("/v1/spends", post(spends::create).get(spends::list))
        .route("/v1/spends/{id}", get(spends::show))
        .route("/v1/spends/{id}/approvals", post(spends::approve))
        .route("/v1/spends/{id}/psbts", post(spends::submit_psbt))
        .route("/v1/spends/{id}/policy-sign", post(spends::policy_sign))
        .route("/v1/spends/{id}/broadcast", post(spends::broadcast))
        .route("/v1/spends/{id}/follow", post(spends::follow))
        .route("/v1/spends/{id}/cancel", post(spends::cancel))
        .route("/v1/spends/{id}/bump", post(spends::bump))
        .route("/v1/policies", get(policies::list))
        .route("/v1/policies/active", get(policies::active))
        .route("/v1/policies/proposals", post(policies::propose))
        .route(
            "/v1/policies/proposals/{hash}/approvals",
            post(policies::approve),
        )
        .route("/v1/policies/simulate", post(policies::simulate))
        .route("/v1/ledger/entries", get(ledger::entries))
        .route("/v1/ledger/entries/{seq}", get(ledger::entry))
        .route("/v1/ledger/head", get(ledger::head))
        .route("/v1/ledger/checkpoints", post(ledger::checkpoint))
        .route(
            "/v1/ledger/checkpoints/latest",
            get(ledger::latest_checkpoint),
        )
        .route("/v1/ledger/proofs/inclusion", get(ledger::inclusion))
        .route("/v1/ledger/proofs/consistency", get(ledger::consistency))
        .route("/v1/events", get(ledger::events))
        .route(
            "/v1/reserves/proofs",
            post(reserves::request_proof).get(reserves::list_proofs),
        )
        .route("/v1/reserves/proofs/{id}", get(reserves::show_proof))
        .route(
            "/v1/reserves/proofs/{id}/psbt",
            get(reserves::proof_psbt).post(reserves::submit_proof_psbt),
        )
        .route(
            "/v1/reserves/proofs/{id}/policy-signature",
            post(reserves::policy_sign_proof),
        )
        .route(
            "/v1/reserves/proofs/{id}/finalize",
            post(reserves::finalize_proof),
        )
        .route("/v1/reserves/proofs/{id}/bundle", get(reserves::bundle))
        .route(
            "/v1/reserves/proofs/{id}/subject",
            get(reserves::proof_subject),
        )
        .route(
            "/v1/reserves/proofs/{id}/approvals",
            get(reserves::proof_approvals).post(reserves::approve_proof),
        )
        .route("/v1/tokens", get(tokens::list))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
}

/// The whole API: `/healthz`, `/readyz`, `/metrics` and the authenticated `/v1` routes.
pub fn app(state: AppState) -> Router {
    let limit = state.inner.limits.body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi_doc))
        .merge(v1_routes(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}
