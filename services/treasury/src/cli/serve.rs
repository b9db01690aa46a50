//! `treasury serve` (the HTTPS API) and `treasury token` (API tokens), the command-line side of
//! [`crate::api`].

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::api::{self, Role, ServeConfig};
use crate::store::LedgerStore;

/// `treasury serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeOpts {
    /// The configuration file (docs/configuration.md).
    #[arg(long, env = "TREASURY_CONFIG")]
    pub config: PathBuf,
}

/// `treasury token` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it (once: only its hash is stored).
    Create {
        /// Database URL: sqlite://PATH or postgres://...
        #[arg(long, env = "TREASURY_DB", default_value = crate::cli::opts::DEFAULT_DB)]
        db: String,
        /// Whom the token belongs to (the actor of what they change).
        #[arg(long)]
        principal: String,
        /// admin, officer, auditor or integrator.
        #[arg(long)]
        role: String,
        /// Limit the token to this vault (repeat; default: every vault).
        #[arg(long = "vault")]
        vaults: Vec<String>,
    },
    /// List every token: id, principal, role, vaults, created, revoked (never a secret).
    List {
        /// Database URL: sqlite://PATH or postgres://...
        #[arg(long, env = "TREASURY_DB", default_value = crate::cli::opts::DEFAULT_DB)]
        db: String,
    },
    /// Revoke a token by its id (`treasury token list`): every instance refuses it from the
    /// next request on; the revocation is a ledger entry.
    Revoke {
        /// Database URL: sqlite://PATH or postgres://...
        #[arg(long, env = "TREASURY_DB", default_value = crate::cli::opts::DEFAULT_DB)]
        db: String,
        /// Who revokes (the ledger entry's actor).
        #[arg(long, default_value = "operator")]
        by: String,
        /// The token's id.
        id: String,
    },
}

/// Runs `treasury serve` until Ctrl-C or SIGTERM, then shuts down gracefully.
///
/// # Errors
/// A message for standard error.
pub fn run_serve(opts: &ServeOpts) -> Result<(), String> {
    let config = ServeConfig::load(&opts.config).map_err(|e| e.to_string())?;
    api::init_logging(config.server.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        let server = api::bind(config).await.map_err(|e| e.to_string())?;
        eprintln!("treasury: serving https://{}", server.local_addr());
        server
            .run(shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Runs a `treasury token` command; returns what to print.
///
/// # Errors
/// A message for standard error.
pub fn run_token(cmd: TokenCommand) -> Result<String, String> {
    match cmd {
        TokenCommand::Create {
            db,
            principal,
            role,
            vaults,
        } => {
            let role: Role = role
                .parse()
                .map_err(|e: api::auth::AuthError| e.to_string())?;
            crate::cli::opts::runtime()?.block_on(async {
                let store = LedgerStore::open(&db).await.map_err(|e| e.to_string())?;
                let out =
                    api::issue_token(&store, &principal, role, &vaults, crate::clock::now_ms())
                        .await
                        .map_err(|e| e.to_string());
                store.close().await;
                Ok(format!("{}\n", out?))
            })
        }
        TokenCommand::List { db } => crate::cli::opts::runtime()?.block_on(async {
            let store = LedgerStore::open(&db).await.map_err(|e| e.to_string())?;
            let out = api::auth::list_tokens(&store)
                .await
                .map_err(|e| e.to_string());
            store.close().await;
            let mut text = String::new();
            for t in out? {
                let vaults = if t.vaults.is_empty() {
                    "*".to_owned()
                } else {
                    t.vaults.join(",")
                };
                let status = match t.revoked_ms {
                    Some(ms) => format!("revoked {ms}"),
                    None => "live".to_owned(),
                };
                text.push_str(&format!(
                    "{}\t{}\t{}\t{vaults}\tcreated {}\t{status}\n",
                    t.token_id, t.principal, t.role, t.created_ms
                ));
            }
            Ok(text)
        }),
        TokenCommand::Revoke { db, by, id } => crate::cli::opts::runtime()?.block_on(async {
            let store = LedgerStore::open(&db).await.map_err(|e| e.to_string())?;
            let out = api::auth::revoke_token(&store, &id, &by, crate::clock::now_ms())
                .await
                .map_err(|e| e.to_string());
            store.close().await;
            let t = out?;
            Ok(format!(
                "revoked token {} of {} ({})\n",
                t.token_id, t.principal, t.role
            ))
        }),
    }
}
