//! The `treasury serve` configuration file (TOML; docs/configuration.md lists every field).
//!
//! Why it looks like this: one file an operator can review, with unknown fields refused (a
//! typo must not silently fall back to a default) and no secret in it. The PIN, passphrases
//! and RPC password are named by a file path or an environment variable; they are read once
//! at start-up into zeroizing buffers ([`Secret`]) whose `Debug` is redacted, so neither the
//! file nor a log line carries them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

/// Errors loading the configuration or the secrets it names.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TOML does not parse or has unknown fields.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A field has a value that cannot work.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A secret could not be read from its file or environment variable.
    #[error("cannot read secret {what}: {reason}")]
    Secret {
        /// Which secret (never its value).
        what: String,
        /// Why.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Listening, TLS, logs and limits.
    pub server: ServerSection,
    /// The database.
    pub database: DatabaseSection,
    /// The Bitcoin Core node (optional: without it `/readyz` reports the node missing and the
    /// routes that need the chain answer 503).
    #[serde(default)]
    pub node: Option<NodeSection>,
    /// The policy key's signer (optional: without it policy-sign answers 503).
    #[serde(default)]
    pub signer: Option<SignerSection>,
    /// The ledger's origin and checkpoint key.
    #[serde(default)]
    pub ledger: LedgerSection,
    /// Caps on the fees of transactions built through the API.
    #[serde(default)]
    pub fees: FeesSection,
}

fn default_max_fee_sat() -> u64 {
    1_000_000
}

fn default_max_fee_rate() -> u64 {
    500
}

/// `[fees]`: caps on the fee of every transaction the API builds (spend requests and fee
/// bumps); a request above a cap is refused (422) and nothing is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeesSection {
    /// Highest absolute fee, satoshis (default 1 000 000, as the CLI).
    #[serde(default = "default_max_fee_sat")]
    pub max_fee_sat: u64,
    /// Highest fee rate, sat/vB (default 500, as the CLI).
    #[serde(default = "default_max_fee_rate")]
    pub max_fee_rate_sat_vb: u64,
}

impl Default for FeesSection {
    fn default() -> Self {
        FeesSection {
            max_fee_sat: default_max_fee_sat(),
            max_fee_rate_sat_vb: default_max_fee_rate(),
        }
    }
}

impl FeesSection {
    /// The caps as the spend builder takes them.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a zero or out-of-range value.
    pub fn caps(&self) -> Result<custody::vault::spend::FeeCaps, ConfigError> {
        use bdk_wallet::bitcoin::{Amount, FeeRate};
        let bad = |m: &str| ConfigError::Invalid(m.to_owned());
        if self.max_fee_sat == 0 || self.max_fee_sat > Amount::MAX_MONEY.to_sat() {
            return Err(bad(
                "fees.max_fee_sat must be 1 to 2100000000000000 satoshis",
            ));
        }
        if self.max_fee_rate_sat_vb == 0 || self.max_fee_rate_sat_vb > 100_000 {
            return Err(bad("fees.max_fee_rate_sat_vb must be 1 to 100000"));
        }
        let rate = FeeRate::from_sat_per_vb(self.max_fee_rate_sat_vb)
            .ok_or_else(|| bad("fees.max_fee_rate_sat_vb overflows"))?;
        Ok(custody::vault::spend::FeeCaps {
            max_fee: Amount::from_sat(self.max_fee_sat),
            max_fee_rate: rate,
        })
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_body_limit() -> usize {
    64 * 1024
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_rate() -> u32 {
    600
}
fn default_burst() -> u32 {
    60
}
fn default_events_poll_ms() -> u64 {
    500
}
fn default_token_recheck_ms() -> u64 {
    100
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address and port to listen on (port 0 picks a free port). Default `127.0.0.1:8443`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The server certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// The server private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to. When set, clients may
    /// present a certificate, and integrator tokens are accepted only on connections that did.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Largest accepted request body in bytes. Default 65536.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Time a request may take before it is answered 503, in milliseconds. Default 30000.
    #[serde(default = "default_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Requests per minute each token may make (per instance). Default 600.
    #[serde(default = "default_rate")]
    pub rate_limit_per_minute: u32,
    /// Requests a token may make in a burst above the steady rate. Default 60.
    #[serde(default = "default_burst")]
    pub rate_limit_burst: u32,
    /// How often the event stream polls the database for new entries, in milliseconds.
    /// Default 500.
    #[serde(default = "default_events_poll_ms")]
    pub events_poll_ms: u64,
    /// How often each instance re-checks its cached token answers against the revocations in
    /// the database, in milliseconds: a token revoked elsewhere is refused here within this
    /// time (on the revoking instance at once). 0 looks every token up on every request.
    /// Default 100.
    #[serde(default = "default_token_recheck_ms")]
    pub token_recheck_ms: u64,
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// `sqlite://PATH` or `postgres://...` (a `?schema=NAME` selects a PostgreSQL schema).
    /// Put no password in it: use PostgreSQL's `.pgpass` or `PGPASSWORD`.
    pub url: String,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// `bitcoin`, `testnet`, `testnet4`, `signet` or `regtest`.
    pub network: String,
    /// The node's RPC URL, e.g. `http://127.0.0.1:18443`.
    pub rpc_url: String,
    /// Bitcoin Core's `.cookie` file (or give `rpc_user` with a password source).
    #[serde(default)]
    pub cookie_file: Option<PathBuf>,
    /// RPC user name.
    #[serde(default)]
    pub rpc_user: Option<String>,
    /// File holding the RPC password.
    #[serde(default)]
    pub rpc_password_file: Option<PathBuf>,
    /// Environment variable holding the RPC password.
    #[serde(default)]
    pub rpc_password_env: Option<String>,
}

/// Which signer holds the policy key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignerKind {
    /// A PKCS#11 token (an HSM; SoftHSM2 in tests).
    Pkcs11,
    /// A software keystore file (demo and tests only).
    Software,
}

/// `[signer]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerSection {
    /// The policy signer process's Unix socket (`treasury signer serve --socket`): the policy
    /// key signs spends only there (ADR 0017).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// `pkcs11` or `software`: a policy key opened in this process, for reserve proofs only
    /// (omit it to sign spends through `socket` alone).
    #[serde(default)]
    pub kind: Option<SignerKind>,
    /// PKCS#11 module path (`pkcs11`).
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// Token label (`pkcs11`).
    #[serde(default)]
    pub token_label: Option<String>,
    /// Key label (`pkcs11`).
    #[serde(default)]
    pub key_label: Option<String>,
    /// File holding the user PIN (`pkcs11`).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN (`pkcs11`).
    #[serde(default)]
    pub pin_env: Option<String>,
    /// Keystore file (`software`).
    #[serde(default)]
    pub keystore: Option<PathBuf>,
    /// File holding the keystore passphrase (`software`).
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// Environment variable holding the keystore passphrase (`software`).
    #[serde(default)]
    pub passphrase_env: Option<String>,
}

fn default_origin() -> String {
    crate::service::DEFAULT_ORIGIN.to_owned()
}

/// `[ledger]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    /// The log's origin (checkpoint first line). Default `reserve.example/ledger`.
    #[serde(default = "default_origin")]
    pub origin: String,
    /// The ledger key file for `POST /v1/ledger/checkpoints` (without it that route is 503).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection {
            origin: default_origin(),
            key_file: None,
        }
    }
}

/// A secret read from a file or the environment: zeroized on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// The value (do not log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Reads a secret from `file` or from the environment variable `env` (exactly one).
/// A trailing newline of a file is dropped.
///
/// # Errors
/// [`ConfigError::Secret`] when neither or both are given, or the source cannot be read.
pub fn read_secret(
    what: &str,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Secret, ConfigError> {
    let err = |reason: String| ConfigError::Secret {
        what: what.to_owned(),
        reason,
    };
    match (file, env) {
        (Some(p), None) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(p).map_err(|e| err(format!("{}: {e}", p.display())))?,
            );
            Ok(Secret::new(text.trim_end_matches(['\n', '\r']).to_owned()))
        }
        (None, Some(v)) => std::env::var(v)
            .map(Secret::new)
            .map_err(|e| err(format!("environment variable {v}: {e}"))),
        (Some(_), Some(_)) => Err(err(
            "give a file or an environment variable, not both".into()
        )),
        (None, None) => Err(err("give a file or an environment variable".into())),
    }
}

impl ServeConfig {
    /// Parses and checks a configuration.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] for bad TOML or unknown fields, [`ConfigError::Invalid`] for
    /// values that cannot work together.
    pub fn from_toml_str(text: &str) -> Result<ServeConfig, ConfigError> {
        let cfg: ServeConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Reads, parses and checks the file at `path`. Relative paths inside the file are taken
    /// relative to the process's working directory.
    ///
    /// # Errors
    /// [`ConfigError::Read`], and as [`ServeConfig::from_toml_str`].
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        ServeConfig::from_toml_str(&text)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let s = &self.server;
        if s.body_limit_bytes == 0 {
            return bad("server.body_limit_bytes must be at least 1");
        }
        if s.request_timeout_ms == 0 {
            return bad("server.request_timeout_ms must be at least 1");
        }
        if s.rate_limit_per_minute == 0 {
            return bad("server.rate_limit_per_minute must be at least 1");
        }
        if s.events_poll_ms == 0 {
            return bad("server.events_poll_ms must be at least 1");
        }
        self.fees.caps()?;
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return bad("database.url must be sqlite://... or postgres://...");
        }
        if let Some(n) = &self.node {
            if n.network.parse::<bdk_wallet::bitcoin::Network>().is_err() {
                return bad("node.network must be bitcoin, testnet, testnet4, signet or regtest");
            }
            match (&n.cookie_file, &n.rpc_user) {
                (Some(_), None) => {
                    if n.rpc_password_file.is_some() || n.rpc_password_env.is_some() {
                        return bad("node: a password goes with rpc_user, not with cookie_file");
                    }
                }
                (None, Some(_)) => {
                    if n.rpc_password_file.is_some() == n.rpc_password_env.is_some() {
                        return bad(
                            "node: rpc_user needs exactly one of rpc_password_file and rpc_password_env",
                        );
                    }
                }
                _ => return bad("node: give cookie_file or rpc_user (with a password source)"),
            }
        }
        if let Some(g) = &self.signer {
            match g.kind {
                None => {
                    if g.socket.is_none() {
                        return bad("signer: give socket (the policy signer process) or kind");
                    }
                }
                Some(SignerKind::Pkcs11) => {
                    if g.module.is_none() || g.token_label.is_none() || g.key_label.is_none() {
                        return bad("signer: pkcs11 needs module, token_label and key_label");
                    }
                    if g.pin_file.is_some() == g.pin_env.is_some() {
                        return bad("signer: pkcs11 needs exactly one of pin_file and pin_env");
                    }
                    if g.keystore.is_some()
                        || g.passphrase_file.is_some()
                        || g.passphrase_env.is_some()
                    {
                        return bad("signer: keystore fields do not go with kind = \"pkcs11\"");
                    }
                }
                Some(SignerKind::Software) => {
                    if g.keystore.is_none() {
                        return bad("signer: software needs keystore");
                    }
                    if g.passphrase_file.is_some() == g.passphrase_env.is_some() {
                        return bad(
                            "signer: software needs exactly one of passphrase_file and passphrase_env",
                        );
                    }
                    if g.module.is_some()
                        || g.token_label.is_some()
                        || g.pin_file.is_some()
                        || g.pin_env.is_some()
                    {
                        return bad("signer: pkcs11 fields do not go with kind = \"software\"");
                    }
                }
            }
        }
        Ok(())
    }

    /// The node's network, when a node is configured.
    pub fn network(&self) -> Option<bdk_wallet::bitcoin::Network> {
        self.node.as_ref().and_then(|n| n.network.parse().ok())
    }

    /// The node's RPC configuration, with its password read from its source.
    ///
    /// # Errors
    /// [`ConfigError::Secret`] when the password cannot be read.
    pub fn node_config(&self) -> Result<Option<crate::node::NodeConfig>, ConfigError> {
        use crate::node::{NodeAuth, NodeConfig};
        let Some(n) = &self.node else {
            return Ok(None);
        };
        let auth = match (&n.cookie_file, &n.rpc_user) {
            (Some(c), _) => NodeAuth::Cookie(c.clone()),
            (None, Some(u)) => {
                let pw = read_secret(
                    "node rpc password",
                    n.rpc_password_file.as_deref(),
                    n.rpc_password_env.as_deref(),
                )?;
                NodeAuth::UserPass(u.clone(), Zeroizing::new(pw.expose().to_owned()))
            }
            (None, None) => return Err(ConfigError::Invalid("node: no credentials".into())),
        };
        Ok(Some(NodeConfig {
            url: n.rpc_url.clone(),
            auth,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[server]
tls_cert = "c.pem"
tls_key = "k.pem"
[database]
url = "sqlite://x.db"
"#;

    #[test]
    fn defaults_fill_in() {
        let c = ServeConfig::from_toml_str(MIN).unwrap();
        assert_eq!(c.server.listen, default_listen());
        assert_eq!(c.server.body_limit_bytes, 65536);
        assert_eq!(c.server.log_format, LogFormat::Text);
        assert_eq!(c.ledger.origin, crate::service::DEFAULT_ORIGIN);
        assert!(c.node.is_none());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = MIN.replace("[database]", "tls_pasword = \"x\"\n[database]");
        assert!(matches!(
            ServeConfig::from_toml_str(&text),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn signer_needs_one_pin_source() {
        let text = format!(
            "{MIN}[signer]\nkind = \"pkcs11\"\nmodule = \"m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\n"
        );
        assert!(matches!(
            ServeConfig::from_toml_str(&text),
            Err(ConfigError::Invalid(_))
        ));
        let ok = format!("{text}pin_env = \"PIN\"\n");
        assert!(ServeConfig::from_toml_str(&ok).is_ok());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
