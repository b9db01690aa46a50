//! `treasury hsm ...`: the key ceremony of the policy key and the ledger checkpoint key inside
//! a PKCS#11 token (SoftHSM2 in tests and the demo, a real HSM by configuration). The PIN comes
//! from a PIN file (`--pin-file`, `TREASURY_HSM_PIN_FILE`) or `TREASURY_HSM_PIN`, never from
//! the command line, and is never printed.

use std::path::PathBuf;

use bdk_wallet::bitcoin::hashes::{sha256, Hash};
use clap::{Args, Subcommand};
use custody::ledger::Kind;
use hsm::{list_key_labels, Pkcs11Config, Pkcs11Signer};

use crate::cli::opts::{runtime, DEFAULT_DB};
use crate::service::DEFAULT_ORIGIN;
use crate::signer::checkpoint::HsmCheckpointSigner;
use crate::signer::open::{open_pkcs11, pin, OpenError, PolicyKey};
use crate::store::LedgerStore;

/// The default PKCS#11 module.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The default token label.
pub const DEFAULT_TOKEN: &str = "reserve";

/// Where the token is.
#[derive(Debug, Clone, Args)]
pub struct HsmOpts {
    /// The PKCS#11 module.
    #[arg(
        long,
        env = "TREASURY_HSM_MODULE",
        default_value = DEFAULT_MODULE,
        global = true
    )]
    pub module: PathBuf,
    /// The token label.
    #[arg(
        long,
        env = "TREASURY_HSM_TOKEN",
        default_value = DEFAULT_TOKEN,
        global = true
    )]
    pub token: String,
    /// A file holding the user PIN (one line); otherwise `TREASURY_HSM_PIN`.
    #[arg(long, env = "TREASURY_HSM_PIN_FILE", global = true)]
    pub pin_file: Option<PathBuf>,
    /// Database whose reserve ledger records the ceremony.
    #[arg(long, env = "TREASURY_DB", default_value = DEFAULT_DB, global = true)]
    pub db: String,
}

/// `treasury hsm` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum HsmCommand {
    /// Generate the policy key and the ledger checkpoint key inside the token; print the
    /// policy key's descriptor key, the checkpoint key's verifier key and an attestation signed
    /// by both, and record the ceremony in the reserve ledger.
    Init {
        /// Label of the new policy key.
        #[arg(long, default_value = "policy-key")]
        key_label: String,
        /// Label of the new ledger checkpoint key.
        #[arg(long, default_value = "ledger-checkpoint")]
        checkpoint_label: String,
        /// The ledger's origin: the name of the checkpoint verifier key.
        #[arg(long, env = "TREASURY_LEDGER_ORIGIN", default_value = DEFAULT_ORIGIN)]
        origin: String,
        /// Who performs the ceremony (recorded).
        #[arg(long, default_value = "key-ceremony")]
        actor: String,
    },
    /// List the secp256k1 keys on the token with their descriptor keys.
    List,
}

/// A ledger checkpoint key in a PKCS#11 token, for `treasury ledger checkpoint` and
/// `treasury ledger public-key` (the same token options as `treasury hsm`).
#[derive(Debug, Clone, Args)]
pub struct HsmKeyOpts {
    /// Sign with this key in the PKCS#11 token (the checkpoint key `treasury hsm init` made,
    /// ECDSA type) instead of a key file.
    #[arg(long)]
    pub hsm_key_label: Option<String>,
    /// The PKCS#11 module.
    #[arg(long, env = "TREASURY_HSM_MODULE", default_value = DEFAULT_MODULE)]
    pub hsm_module: PathBuf,
    /// The token label.
    #[arg(long, env = "TREASURY_HSM_TOKEN", default_value = DEFAULT_TOKEN)]
    pub hsm_token: String,
    /// A file holding the user PIN (one line); otherwise `TREASURY_HSM_PIN`.
    #[arg(long, env = "TREASURY_HSM_PIN_FILE")]
    pub hsm_pin_file: Option<PathBuf>,
}

impl HsmKeyOpts {
    /// Opens the checkpoint key named by `--hsm-key-label`, if one is given.
    ///
    /// # Errors
    /// A message (never containing the PIN): no PIN, module, token, PIN or key errors.
    pub fn open(&self) -> Result<Option<HsmCheckpointSigner>, String> {
        let Some(label) = &self.hsm_key_label else {
            return Ok(None);
        };
        let cfg = Pkcs11Config::new(
            &self.hsm_module,
            &self.hsm_token,
            label,
            pin(self.hsm_pin_file.as_deref())?,
        );
        let signer = Pkcs11Signer::open(cfg).map_err(|e| e.to_string())?;
        Ok(Some(HsmCheckpointSigner::new(signer)))
    }
}

/// Runs a `treasury hsm` command; returns what to print on standard output.
///
/// # Errors
/// A message for standard error (never containing the PIN).
pub fn run_hsm(opts: &HsmOpts, cmd: HsmCommand) -> Result<String, String> {
    match cmd {
        HsmCommand::Init {
            key_label,
            checkpoint_label,
            origin,
            actor,
        } => init(opts, &key_label, &checkpoint_label, &origin, &actor),
        HsmCommand::List => {
            let pin = pin(opts.pin_file.as_deref())?;
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

/// The key ceremony: both keys generated in the token, one statement naming both, signed by
/// both, recorded in the ledger.
fn init(
    opts: &HsmOpts,
    key_label: &str,
    checkpoint_label: &str,
    origin: &str,
    actor: &str,
) -> Result<String, String> {
    if key_label == checkpoint_label {
        return Err("the policy key and the checkpoint key need different labels".into());
    }
    custody::ledger::validate_origin(origin).map_err(|e| e.to_string())?;
    let pin = pin(opts.pin_file.as_deref())?;
    // Refuse before generating anything, so that a taken label leaves no half ceremony.
    let probe = Pkcs11Config::new(&opts.module, &opts.token, "", pin.clone());
    let existing = list_key_labels(&probe).map_err(|e| e.to_string())?;
    for label in [key_label, checkpoint_label] {
        if existing.iter().any(|l| l == label) {
            return Err(format!(
                "a key labelled {label:?} already exists on pkcs#11 token {:?}",
                opts.token
            ));
        }
    }
    let cfg = Pkcs11Config::new(&opts.module, &opts.token, key_label, pin.clone());
    let signer = Pkcs11Signer::generate(cfg).map_err(|e| e.to_string())?;
    let cfg = Pkcs11Config::new(&opts.module, &opts.token, checkpoint_label, pin);
    let checkpoint = HsmCheckpointSigner::new(
        Pkcs11Signer::generate(cfg).map_err(|e| format!("checkpoint key: {e}"))?,
    );
    let verifier_key = checkpoint
        .verifier_key(origin)
        .map_err(|e| e.to_string())?
        .to_string();
    let now = crate::clock::now_ms();
    let statement = format!(
        "strategic-reserve hsm key ceremony\ntoken: {}\npolicy key label: {key_label}\npolicy public key: {}\ncheckpoint key label: {checkpoint_label}\ncheckpoint public key: {}\ncheckpoint verifier key: {verifier_key}\ncreated_ms: {now}\n",
        opts.token,
        signer.public_key(),
        checkpoint.signer().public_key(),
    );
    // A plain SHA-256 of the statement: never a tagged checkpoint message or a sighash.
    let digest = sha256::Hash::hash(statement.as_bytes()).to_byte_array();
    let sig = signer.sign_digest(&digest).map_err(|e| e.to_string())?;
    let checkpoint_sig = checkpoint
        .signer()
        .sign_digest(&digest)
        .map_err(|e| e.to_string())?;
    let body = serde_json::json!({
        "token": opts.token,
        "key_label": key_label,
        "public_key": signer.public_key().to_string(),
        "fingerprint": signer.fingerprint().to_string(),
        "descriptor_key": signer.descriptor_key(),
        "checkpoint": {
            "key_label": checkpoint_label,
            "public_key": checkpoint.signer().public_key().to_string(),
            "origin": origin,
            "verifier_key": verifier_key,
        },
        "attestation": {
            "statement": statement,
            "sha256": hex::encode(digest),
            "signature_der": hex::encode(sig.serialize_der()),
            "checkpoint_signature_der": hex::encode(checkpoint_sig.serialize_der()),
        },
    });
    runtime()?.block_on(async {
        let ledger = LedgerStore::open(&opts.db)
            .await
            .map_err(|e| e.to_string())?;
        let draft = custody::vault::ledger_record(Kind::KeyCeremony, actor, &body, now)
            .map_err(|e| e.to_string())?;
        let r = ledger.append(draft).await.map_err(|e| e.to_string());
        ledger.close().await;
        r
    })?;
    Ok(format!("{body}\n"))
}

/// Where a command finds the policy key: the PKCS#11 token (default; PIN from `--pin-file` or
/// `TREASURY_HSM_PIN`) or, with `--keystore`, a software keystore (the demo without SoftHSM2;
/// not an HSM). Shared by `treasury spend sign-policy` and `treasury reserves sign-policy`.
#[derive(Debug, Clone, Args)]
pub struct PolicyKeyArgs {
    /// The PKCS#11 module.
    #[arg(
        long,
        env = "TREASURY_HSM_MODULE",
        default_value = "/usr/lib/softhsm/libsofthsm2.so"
    )]
    pub module: PathBuf,
    /// The token label.
    #[arg(long, env = "TREASURY_HSM_TOKEN", default_value = "reserve")]
    pub token: String,
    /// The policy key's label.
    #[arg(long, default_value = "policy-key")]
    pub key_label: String,
    /// A file holding the user PIN (one line); otherwise `TREASURY_HSM_PIN`.
    #[arg(long, env = "TREASURY_HSM_PIN_FILE")]
    pub pin_file: Option<PathBuf>,
    /// A software keystore holding the policy key instead of the token.
    #[arg(long, env = "TREASURY_POLICY_KEYSTORE")]
    pub keystore: Option<PathBuf>,
    /// The keystore's passphrase file (default: TREASURY_KEYSTORE_PASSPHRASE).
    #[arg(long, env = "TREASURY_POLICY_PASSPHRASE_FILE", requires = "keystore")]
    pub passphrase_file: Option<PathBuf>,
}

impl PolicyKeyArgs {
    /// Opens the key (on a blocking thread: PKCS#11 login or the keystore's KDF).
    ///
    /// # Errors
    /// A message naming what could not be read or opened (never a PIN or passphrase).
    pub async fn open(self) -> Result<PolicyKey, String> {
        if let Some(path) = self.keystore {
            let pass = crate::cli::officer::passphrase(self.passphrase_file.as_ref())?;
            return tokio::task::spawn_blocking(move || hsm::SoftwareKeystore::load(&path, &pass))
                .await
                .map_err(|e| format!("keystore task: {e}"))?
                .map(PolicyKey::Software)
                .map_err(|e| e.to_string());
        }
        let cfg = Pkcs11Config::new(
            self.module,
            self.token,
            self.key_label,
            pin(self.pin_file.as_deref())?,
        );
        match open_pkcs11(cfg).await {
            Ok(k) => Ok(PolicyKey::Token(k)),
            Err(OpenError::Task(e)) => Err(format!("hsm task: {e}")),
            Err(e) => Err(e.to_string()),
        }
    }
}
