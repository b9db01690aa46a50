//! Serving the API over TLS: bind, accept, graceful shutdown.
//!
//! Why a hand-rolled accept loop (tokio-rustls + hyper-util) and not a server crate: it is
//! short, it uses the one rustls (ring provider) already in the build for sqlx, and it lets
//! each connection tell the handlers whether its client presented a verified certificate
//! (integrators with client-certificate authentication). TLS 1.2 and 1.3 only; HTTP/1.1 and
//! HTTP/2 by ALPN. Shutdown stops accepting, tells event streams to end, and waits for
//! in-flight requests (up to a grace period).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::config::{ConfigError, ServeConfig, ServerSection};
use super::{app, AppState, ConnInfo};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests.
const GRACE: Duration = Duration::from_secs(10);

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration or a secret it names is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The database could not be opened.
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The policy signer could not be opened.
    #[error("signer: {0}")]
    Signer(String),
    /// Accepting connections failed.
    #[error("accept: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound server: listening, not yet serving.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: AppState,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Server({})", self.local_addr)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The rustls server configuration of `server`: its certificate and key, TLS 1.2 and 1.3,
/// ALPN h2 and http/1.1, and the client-certificate verifier when `client_ca` is set (a
/// certificate is optional, and verified when presented).
///
/// # Errors
/// [`ServeError::Tls`] when a file is missing or unusable.
pub fn tls_config(server: &ServerSection) -> Result<rustls::ServerConfig, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&server.tls_cert)?;
    let key = PrivateKeyDer::from_pem_file(&server.tls_key)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", server.tls_key.display())))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let builder = match &server.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| ServeError::Tls(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| ServeError::Tls(format!("client ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Opens the database and the parts `config` names, and binds the listening socket.
///
/// # Errors
/// [`ServeError`] naming what could not be opened or bound.
pub async fn bind(config: ServeConfig) -> Result<Server, ServeError> {
    let state = AppState::from_config(&config).await?;
    bind_state(&config.server, state).await
}

/// Binds `server.listen` serving `state` (for callers that built the state themselves).
///
/// # Errors
/// [`ServeError::Tls`], [`ServeError::Bind`].
pub async fn bind_state(server: &ServerSection, state: AppState) -> Result<Server, ServeError> {
    let tls = tls_config(server)?;
    let listener = TcpListener::bind(server.listen)
        .await
        .map_err(|e| ServeError::Bind {
            addr: server.listen,
            reason: e.to_string(),
        })?;
    let local_addr = listener.local_addr()?;
    Ok(Server {
        listener,
        acceptor: TlsAcceptor::from(Arc::new(tls)),
        state,
        local_addr,
    })
}

impl Server {
    /// The address the server listens on (the real port when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The state the server serves.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops accepting, ends event streams and waits
    /// for in-flight requests (at most 10 s).
    ///
    /// # Errors
    /// [`ServeError::Io`] when the listening socket fails.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            listener,
            acceptor,
            state,
            local_addr,
        } = self;
        let router = app(state.clone());
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        tracing::info!(addr = %local_addr, "serving");
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: wait a little, go on.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let router = router.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(t)) => t,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "tls handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "tls handshake timed out");
                                return;
                            }
                        };
                        let client_cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .is_some_and(|c| !c.is_empty());
                        let svc = router.layer(axum::Extension(ConnInfo { peer, client_cert }));
                        let svc = TowerToHyperService::new(svc);
                        let builder = ConnBuilder::new(TokioExecutor::new());
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                        if let Err(e) = watcher.watch(conn.into_owned()).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("shutting down: no new connections, waiting for requests in flight");
        state.begin_shutdown();
        if tokio::time::timeout(GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over: closing the remaining connections");
        }
        state.store().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Sets up logging (text or JSON lines on standard error; `RUST_LOG` filters, default
/// `info`). Calling it again does nothing.
pub fn init_logging(format: super::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        super::config::LogFormat::Text => builder.try_init(),
        super::config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
