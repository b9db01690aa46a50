//! The key holder: the policy key, the ledger checkpoint key and the head anchor, from a
//! PKCS#11 token or a software keystore.
//!
//! PKCS#11: two key pairs in one token (the policy key and the checkpoint key, each with its
//! own label, generated in the token at init) and the head in a data object of the same token
//! ([`TokenAnchor`]). Software: a keystore file (the policy key is its account key; the
//! checkpoint key is its approval key, a BIP-340 key; the head file's MAC key is derived from
//! the approval secret) with a [`MacFileAnchor`] beside it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use custody::ledger::{
    AnyCheckpointSigner, CheckpointKey, CheckpointSignature, KeyFileSigner, SignerError,
};
use hashcore::TaggedHash;
use hsm::{
    HeldKey, HsmError, Pkcs11Config, Pkcs11Pin, Pkcs11Signer, SignReport, Signer, SoftwareKeystore,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::state::{HeadAnchor, MacFileAnchor, TokenAnchor};

/// The tag of the head-file MAC key derivation.
pub const HEAD_KEY_TAG: &str = "strategic-reserve/policy-signer/head-key/v1";

/// Why the key holder could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HolderError {
    /// The token or keystore failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The checkpoint key could not be made.
    #[error("checkpoint key: {0}")]
    Checkpoint(String),
    /// The holder file could not be read or written.
    #[error("holder file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Where the keys are (no secret): written as `holder.json` in the state directory at init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HolderConfig {
    /// A PKCS#11 token.
    Pkcs11 {
        /// The module path.
        module: PathBuf,
        /// The token label.
        token_label: String,
        /// The policy key's label.
        policy_key_label: String,
        /// The checkpoint key's label.
        ledger_key_label: String,
        /// The head data object's label.
        head_label: String,
    },
    /// A software keystore file.
    Software {
        /// The keystore file.
        keystore: PathBuf,
    },
}

impl HolderConfig {
    /// Reads `holder.json` in `dir`.
    ///
    /// # Errors
    /// [`HolderError::File`].
    pub fn load(dir: &Path) -> Result<Self, HolderError> {
        let path = dir.join("holder.json");
        let bad = |reason: String| HolderError::File {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
    }

    /// Writes `holder.json` in `dir`.
    ///
    /// # Errors
    /// [`HolderError::File`].
    pub fn save(&self, dir: &Path) -> Result<(), HolderError> {
        let path = dir.join("holder.json");
        let text = serde_json::to_string_pretty(self).map_err(|e| HolderError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        crate::state::write_atomic(&path, text.as_bytes()).map_err(|e| HolderError::File {
            path,
            reason: e.to_string(),
        })
    }
}

/// The secret that opens the holder: the PKCS#11 user PIN or the keystore passphrase.
/// Zeroized on drop, redacted in `Debug`.
pub struct HolderSecret(Zeroizing<String>);

impl HolderSecret {
    /// Wraps a secret (a trailing newline, as in a file, is dropped).
    pub fn new(secret: impl Into<String>) -> Self {
        let mut s = Zeroizing::new(secret.into());
        while s.ends_with('\n') || s.ends_with('\r') {
            s.pop();
        }
        HolderSecret(s)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for HolderSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HolderSecret(<redacted>)")
    }
}

/// The policy key behind a shared handle (so the anchor can use the same token session pool).
#[derive(Clone)]
pub struct PolicyKey(Arc<dyn Signer>);

impl std::fmt::Debug for PolicyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PolicyKey").field(&self.0.id()).finish()
    }
}

impl PolicyKey {
    /// Wraps a signer.
    pub fn new(signer: Arc<dyn Signer>) -> Self {
        PolicyKey(signer)
    }
}

impl Signer for PolicyKey {
    fn id(&self) -> &str {
        self.0.id()
    }

    fn public_keys(&self) -> Result<Vec<HeldKey>, HsmError> {
        self.0.public_keys()
    }

    fn sign_psbt(&self, psbt: &mut bitcoin::Psbt) -> Result<SignReport, HsmError> {
        self.0.sign_psbt(psbt)
    }
}

/// A token key as an ECDSA checkpoint signer (as the service's `HsmCheckpointSigner`).
#[derive(Debug)]
pub struct TokenCheckpointSigner(Arc<Pkcs11Signer>);

impl AnyCheckpointSigner for TokenCheckpointSigner {
    fn checkpoint_key(&self) -> CheckpointKey {
        CheckpointKey::Ecdsa(self.0.public_key().inner)
    }

    fn sign_checkpoint(&self, msg: &[u8; 32]) -> Result<CheckpointSignature, SignerError> {
        self.0
            .sign_digest(msg)
            .map(CheckpointSignature::Ecdsa)
            .map_err(|e| SignerError(e.to_string()))
    }
}

/// The opened holder: what the core signs with, and the anchor for the state log.
pub struct KeyHolder {
    /// The policy key.
    pub policy_key: PolicyKey,
    /// The ledger checkpoint key.
    pub ledger: Box<dyn AnyCheckpointSigner + Send>,
    /// The head anchor.
    pub anchor: Box<dyn HeadAnchor>,
}

impl std::fmt::Debug for KeyHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHolder")
            .field("policy_key", &self.policy_key)
            .field("anchor", &self.anchor.name())
            .finish_non_exhaustive()
    }
}

impl KeyHolder {
    /// Opens the holder `config` with `secret`. With `generate`, missing PKCS#11 keys are
    /// generated in the token (init); a software keystore must exist.
    ///
    /// # Errors
    /// [`HolderError::Hsm`] (wrong PIN or passphrase, missing key, token failure),
    /// [`HolderError::Checkpoint`].
    pub fn open(
        config: &HolderConfig,
        secret: &HolderSecret,
        generate: bool,
    ) -> Result<Self, HolderError> {
        match config {
            HolderConfig::Pkcs11 {
                module,
                token_label,
                policy_key_label,
                ledger_key_label,
                head_label,
            } => {
                let open = |label: &str| -> Result<Pkcs11Signer, HsmError> {
                    let c = Pkcs11Config::new(
                        module,
                        token_label,
                        label,
                        Pkcs11Pin::new(secret.expose()),
                    );
                    match Pkcs11Signer::open(c.clone()) {
                        Err(HsmError::KeyNotFound { .. }) if generate => Pkcs11Signer::generate(c),
                        other => other,
                    }
                };
                let policy = Arc::new(open(policy_key_label)?);
                let ledger = Arc::new(open(ledger_key_label)?);
                Ok(KeyHolder {
                    policy_key: PolicyKey::new(policy.clone()),
                    ledger: Box::new(TokenCheckpointSigner(ledger)),
                    anchor: Box::new(TokenAnchor::new(policy, head_label.clone())),
                })
            }
            HolderConfig::Software { keystore } => {
                let ks = SoftwareKeystore::load(keystore, secret.expose())?;
                let (ledger, mac_key) = ks.with_approval_secret(|sk| {
                    let bytes = Zeroizing::new(sk.secret_bytes());
                    let mut buf = Zeroizing::new(bytes.to_vec());
                    buf.extend_from_slice(b"head");
                    (
                        KeyFileSigner::from_secret_bytes(&bytes),
                        Zeroizing::new(TaggedHash::new(HEAD_KEY_TAG).hash(&buf)),
                    )
                })?;
                let ledger = ledger.map_err(|e| HolderError::Checkpoint(e.to_string()))?;
                let head = keystore.with_extension("signer-head");
                Ok(KeyHolder {
                    policy_key: PolicyKey::new(Arc::new(ks)),
                    ledger: Box::new(ledger),
                    anchor: Box::new(MacFileAnchor::new(head, mac_key)),
                })
            }
        }
    }
}
