//! The signer's command line, shared by the `policy-signer` binary and `treasury signer`.
//!
//! - `init --dir D --network regtest --policy policy.toml --ledger-origin O` with a key holder:
//!   PKCS#11 (`--pkcs11-module`, `--token-label`, key labels; the PIN from `--pin-file` or
//!   `TREASURY_SIGNER_PIN`) or a software keystore (`--keystore F --passphrase-file P`, or
//!   `TREASURY_SIGNER_PIN` holding the passphrase). Generates missing token keys, writes the
//!   genesis record, prints the policy key and the checkpoint verifier key.
//! - `serve --dir D --socket S`: verifies and replays the state (refusing a broken chain or a
//!   rollback by name), then serves the socket (mode 0600, own uid only unless `--allowed-uid`)
//!   and, with `--tls-listen ADDR --tls-cert --tls-key --client-ca`, mutual TLS.
//! - `status --socket S`: asks a running signer for its state (JSON).
//!
//! Secrets are read from files or the environment, never from a flag value, never printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{HolderConfig, HolderSecret, SignerClient, SystemClock};
use clap::{Args, Parser, Subcommand};

/// The `policy-signer` command line.
#[derive(Debug, Parser)]
#[command(
    name = "policy-signer",
    about = "The policy signer process of the reserve"
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: SignerCommand,
}

/// The signer's commands (`policy-signer X` and `treasury signer X`).
#[derive(Debug, Subcommand)]
pub enum SignerCommand {
    /// Creates the signer's state: genesis record, keys in the token.
    Init(InitArgs),
    /// Serves the signer on a Unix socket.
    Serve(ServeArgs),
    /// Prints the state of a running signer.
    Status {
        /// The signer's socket.
        #[arg(long)]
        socket: PathBuf,
    },
}

/// Where the holder's secret comes from.
#[derive(Debug, Args)]
pub struct SecretArgs {
    /// A file holding the PKCS#11 user PIN (first line); otherwise `TREASURY_SIGNER_PIN`.
    #[arg(long)]
    pin_file: Option<PathBuf>,
    /// A file holding the software keystore's passphrase; otherwise `TREASURY_SIGNER_PIN`.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

/// `init`: creates the signer's state.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The state directory (created, mode 0700).
    #[arg(long)]
    dir: PathBuf,
    /// The network.
    #[arg(long, default_value = "regtest")]
    network: bitcoin::Network,
    /// The genesis policy document (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// The ledger's origin (the checkpoint key's name).
    #[arg(long)]
    ledger_origin: String,
    /// PKCS#11 module path.
    #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
    pkcs11_module: PathBuf,
    /// PKCS#11 token label (the PKCS#11 holder).
    #[arg(long, conflicts_with = "keystore")]
    token_label: Option<String>,
    /// The policy key's label in the token.
    #[arg(long, default_value = "policy-key")]
    policy_key_label: String,
    /// The checkpoint key's label in the token.
    #[arg(long, default_value = "ledger-checkpoint-key")]
    ledger_key_label: String,
    /// The head data object's label in the token.
    #[arg(long, default_value = "policy-signer-head")]
    head_label: String,
    /// A software keystore file instead of a token.
    #[arg(long)]
    keystore: Option<PathBuf>,
    #[command(flatten)]
    secret: SecretArgs,
}

/// `serve`: serves the signer.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The state directory.
    #[arg(long)]
    dir: PathBuf,
    /// The socket path.
    #[arg(long)]
    socket: PathBuf,
    /// The uid allowed to connect (default: the signer's own).
    #[arg(long)]
    allowed_uid: Option<u32>,
    /// Also serve mutual TLS on this address (`host:port`), for a service on another host.
    #[arg(long, requires_all = ["tls_cert", "tls_key", "client_ca"])]
    tls_listen: Option<String>,
    /// The signer's TLS certificate chain (PEM).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The signer's TLS key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The CA whose client certificates may connect (PEM; keep one CA for the signer only).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    #[command(flatten)]
    secret: SecretArgs,
}

fn read(path: Option<&PathBuf>, what: &str) -> Result<Vec<u8>, String> {
    let path = path.ok_or_else(|| format!("--{what} is required with --tls-listen"))?;
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_secret(file: Option<&Path>) -> Result<HolderSecret, String> {
    if let Some(path) = file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?,
        );
        let first = text.lines().next().unwrap_or("");
        if first.is_empty() {
            return Err(format!("secret file {} is empty", path.display()));
        }
        return Ok(HolderSecret::new(first));
    }
    std::env::var("TREASURY_SIGNER_PIN")
        .map(HolderSecret::new)
        .map_err(|_| {
            "no secret: give --pin-file/--passphrase-file or set TREASURY_SIGNER_PIN".to_owned()
        })
}

fn secret_for(config: &HolderConfig, s: &SecretArgs) -> Result<HolderSecret, String> {
    match config {
        HolderConfig::Pkcs11 { .. } => read_secret(s.pin_file.as_deref()),
        HolderConfig::Software { .. } => read_secret(s.passphrase_file.as_deref()),
    }
}

fn init(a: &InitArgs) -> Result<(), String> {
    let config = match (&a.token_label, &a.keystore) {
        (Some(token), None) => HolderConfig::Pkcs11 {
            module: a.pkcs11_module.clone(),
            token_label: token.clone(),
            policy_key_label: a.policy_key_label.clone(),
            ledger_key_label: a.ledger_key_label.clone(),
            head_label: a.head_label.clone(),
        },
        (None, Some(ks)) => HolderConfig::Software {
            keystore: ks.clone(),
        },
        _ => return Err("give either --token-label (pkcs#11) or --keystore".to_owned()),
    };
    let secret = secret_for(&config, &a.secret)?;
    let policy = std::fs::read_to_string(&a.policy)
        .map_err(|e| format!("cannot read policy {}: {e}", a.policy.display()))?;
    let mut core = crate::init(
        &a.dir,
        &config,
        &secret,
        Arc::new(SystemClock),
        a.network,
        &policy,
        &a.ledger_origin,
    )
    .map_err(|e| e.to_string())?;
    let status = core.status().map_err(|e| e.to_string())?;
    println!("state: {}", a.dir.display());
    println!("policy key: {}", status.policy_key);
    println!("checkpoint verifier key: {}", status.ledger_key);
    println!(
        "genesis policy: {} (version {})",
        status.active_policy, status.active_version
    );
    Ok(())
}

async fn serve(a: &ServeArgs) -> Result<(), String> {
    let config = HolderConfig::load(&a.dir).map_err(|e| e.to_string())?;
    let secret = secret_for(&config, &a.secret)?;
    let dir = a.dir.clone();
    let core =
        tokio::task::spawn_blocking(move || crate::open(&dir, &secret, Arc::new(SystemClock)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("refusing to start: {e}"))?;
    let shared = Arc::new(std::sync::Mutex::new(core));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tls_task = None;
    if let Some(addr) = &a.tls_listen {
        let cfg = crate::tls::server_config(
            &read(a.tls_cert.as_ref(), "tls-cert")?,
            &read(a.tls_key.as_ref(), "tls-key")?,
            &read(a.client_ca.as_ref(), "client-ca")?,
        )
        .map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        eprintln!("policy signer serving mutual tls on {addr}");
        let mut rx = stop_rx.clone();
        tls_task = Some(tokio::spawn(crate::tls::serve_tls(
            shared.clone(),
            listener,
            cfg,
            async move {
                let _ = rx.changed().await;
            },
        )));
    }
    eprintln!("policy signer serving {}", a.socket.display());
    let shutdown = async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    };
    let r = crate::server::serve_unix(shared, &a.socket, a.allowed_uid, shutdown)
        .await
        .map_err(|e| e.to_string());
    if let Some(t) = tls_task {
        let _ = t.await;
    }
    r
}

async fn status(socket: &Path) -> Result<(), String> {
    let client = SignerClient::new(socket);
    let s = client.status().await.map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Runs one signer command on its own runtime; the error is the line to print.
///
/// # Errors
/// A message naming what failed (a missing secret, a refused state, a socket error).
pub fn run(command: &SignerCommand) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    match command {
        SignerCommand::Init(a) => init(a),
        SignerCommand::Serve(a) => rt.block_on(serve(a)),
        SignerCommand::Status { socket } => rt.block_on(status(socket)),
    }
}
