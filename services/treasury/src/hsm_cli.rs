//! `treasury hsm ...`: the key ceremony of the policy key inside a PKCS#11 token (SoftHSM2 in
//! tests and the demo, a real HSM by configuration). The PIN comes from `TREASURY_HSM_PIN`,
//! never from the command line, and is never printed.

use std::path::PathBuf;

use bdk_wallet::bitcoin::hashes::{sha256, Hash};
use clap::{Args, Subcommand};
use custody::ledger::Kind;
use hsm::{list_key_labels, Pkcs11Config, Pkcs11Pin, Pkcs11Signer};

use crate::ledger_cli::{runtime, DEFAULT_DB};
use crate::store::LedgerStore;

/// Where the token is.
#[derive(Debug, Clone, Args)]
pub struct HsmOpts {
    /// The PKCS#11 module.
    #[arg(
        long,
        env = "TREASURY_HSM_MODULE",
        default_value = "/usr/lib/softhsm/libsofthsm2.so",
        global = true
    )]
    pub module: PathBuf,
    /// The token label.
    #[arg(
        long,
        env = "TREASURY_HSM_TOKEN",
        default_value = "reserve",
        global = true
    )]
    pub token: String,
    /// Database whose reserve ledger records the ceremony.
    #[arg(long, env = "TREASURY_DB", default_value = DEFAULT_DB, global = true)]
    pub db: String,
}

/// `treasury hsm` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum HsmCommand {
    /// Generate the policy key inside the token; print its descriptor key and a signed
    /// attestation, and record the ceremony in the reserve ledger.
    Init {
        /// Label of the new key.
        #[arg(long, default_value = "policy-key")]
        key_label: String,
        /// Who performs the ceremony (recorded).
        #[arg(long, default_value = "key-ceremony")]
        actor: String,
    },
    /// List the secp256k1 keys on the token with their descriptor keys.
    List,
}

fn pin() -> Result<Pkcs11Pin, String> {
    std::env::var("TREASURY_HSM_PIN")
        .map(Pkcs11Pin::new)
        .map_err(|_| "no PIN: set TREASURY_HSM_PIN".to_string())
}

/// Runs a `treasury hsm` command; returns what to print on standard output.
///
/// # Errors
/// A message for standard error (never containing the PIN).
pub fn run_hsm(opts: &HsmOpts, cmd: HsmCommand) -> Result<String, String> {
    match cmd {
        HsmCommand::Init { key_label, actor } => {
            let cfg = Pkcs11Config::new(&opts.module, &opts.token, &key_label, pin()?);
            let signer = Pkcs11Signer::generate(cfg).map_err(|e| e.to_string())?;
            let now = crate::vaults::now_ms();
            let statement = format!(
                "strategic-reserve hsm key\ntoken: {}\nlabel: {key_label}\npublic key: {}\ncreated_ms: {now}\n",
                opts.token,
                signer.public_key()
            );
            let digest = sha256::Hash::hash(statement.as_bytes()).to_byte_array();
            let sig = signer.sign_digest(&digest).map_err(|e| e.to_string())?;
            let body = serde_json::json!({
                "token": opts.token,
                "key_label": key_label,
                "public_key": signer.public_key().to_string(),
                "fingerprint": signer.fingerprint().to_string(),
                "descriptor_key": signer.descriptor_key(),
                "attestation": {
                    "statement": statement,
                    "sha256": hex::encode(digest),
                    "signature_der": hex::encode(sig.serialize_der()),
                },
            });
            runtime()?.block_on(async {
                let ledger = LedgerStore::open(&opts.db)
                    .await
                    .map_err(|e| e.to_string())?;
                let draft = custody::vault::ledger_record(Kind::KeyCeremony, &actor, &body, now)
                    .map_err(|e| e.to_string())?;
                let r = ledger.append(draft).await.map_err(|e| e.to_string());
                ledger.close().await;
                r
            })?;
            Ok(format!("{body}\n"))
        }
        HsmCommand::List => {
            let pin = pin()?;
            let probe = Pkcs11Config::new(&opts.module, &opts.token, "", pin.clone());
            let mut out = String::new();
            for label in list_key_labels(&probe).map_err(|e| e.to_string())? {
                let cfg = Pkcs11Config::new(&opts.module, &opts.token, &label, pin.clone());
                match Pkcs11Signer::open(cfg) {
                    Ok(s) => out.push_str(&format!("{label}\t{}\n", s.descriptor_key())),
                    Err(e) => out.push_str(&format!("{label}\t(unusable: {e})\n")),
                }
            }
            Ok(out)
        }
    }
}
