//! Opening the policy key: a PKCS#11 token (module, token, key label, PIN) on a blocking
//! thread, or the software keystore the demo uses without SoftHSM2; the PIN's sources.
//!
//! Why one place: `treasury spend sign-policy`, `treasury reserves sign-policy`, the API's
//! `[signer]` and the ledger's checkpoint key all open keys the same way; the next step (a
//! separate signer process) replaces this file.

use std::path::Path;

use hsm::{Pkcs11Config, Pkcs11Pin, Pkcs11Signer, Signer};

/// Why opening a key on a blocking thread failed (its message is the cause's own).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The blocking task did not finish.
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    /// The token refused (module, token, PIN or key).
    #[error("{0}")]
    Signer(#[from] hsm::HsmError),
}

/// Opens a key in a PKCS#11 token on a blocking thread (the login may be slow).
///
/// # Errors
/// [`OpenError`].
pub async fn open_pkcs11(cfg: Pkcs11Config) -> Result<Pkcs11Signer, OpenError> {
    Ok(tokio::task::spawn_blocking(move || Pkcs11Signer::open(cfg)).await??)
}

/// The user PIN: from `pin_file` if given (its first line), else from `TREASURY_HSM_PIN`.
///
/// # Errors
/// A message naming the missing source or the unreadable file (never the PIN).
pub fn pin(pin_file: Option<&Path>) -> Result<Pkcs11Pin, String> {
    if let Some(path) = pin_file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read pin file {}: {e}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(format!("pin file {} is empty", path.display()));
        }
        return Ok(Pkcs11Pin::new(line));
    }
    std::env::var("TREASURY_HSM_PIN")
        .map(Pkcs11Pin::new)
        .map_err(|_| "no PIN: set TREASURY_HSM_PIN or give a pin file".to_string())
}

/// The policy key, opened.
#[derive(Debug)]
pub enum PolicyKey {
    /// In a PKCS#11 token.
    Token(Pkcs11Signer),
    /// In a software keystore.
    Software(hsm::SoftwareKeystore),
}

impl Signer for PolicyKey {
    fn id(&self) -> &str {
        match self {
            PolicyKey::Token(k) => k.id(),
            PolicyKey::Software(k) => k.id(),
        }
    }

    fn public_keys(&self) -> Result<Vec<hsm::HeldKey>, hsm::HsmError> {
        match self {
            PolicyKey::Token(k) => k.public_keys(),
            PolicyKey::Software(k) => k.public_keys(),
        }
    }

    fn sign_psbt(
        &self,
        psbt: &mut bdk_wallet::bitcoin::Psbt,
    ) -> Result<hsm::SignReport, hsm::HsmError> {
        match self {
            PolicyKey::Token(k) => k.sign_psbt(psbt),
            PolicyKey::Software(k) => k.sign_psbt(psbt),
        }
    }
}
