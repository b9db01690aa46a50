//! The ledger checkpoint key inside a PKCS#11 token, as a checkpoint signer.
//!
//! A token has no Schnorr mechanism, so an HSM-held checkpoint key signs with the ECDSA
//! checkpoint type (`\xffstrategic-reserve/ecdsa-secp256k1/v1`, ADR 0007): raw `CKM_ECDSA`
//! over the 32-byte tagged checkpoint message, low-S normalized by [`Pkcs11Signer`]. The adapter
//! lives here, at the edge, so that neither `custody` nor `hsm` depends on the other.

use custody::ledger::{
    AnyCheckpointSigner, CheckpointError, CheckpointKey, CheckpointSignature, SignerError,
    VerifierKey,
};
use hsm::Pkcs11Signer;

/// A [`Pkcs11Signer`] that signs ledger checkpoints (ECDSA type).
#[derive(Debug)]
pub struct HsmCheckpointSigner {
    inner: Pkcs11Signer,
}

impl HsmCheckpointSigner {
    /// Wraps a token key. Use a key of its own for checkpoints, never the policy key.
    pub fn new(inner: Pkcs11Signer) -> Self {
        HsmCheckpointSigner { inner }
    }

    /// The token key.
    pub fn signer(&self) -> &Pkcs11Signer {
        &self.inner
    }

    /// The verifier key auditors are given for the log `origin`.
    ///
    /// # Errors
    /// [`CheckpointError::InvalidOrigin`] when `origin` is not a valid key name.
    pub fn verifier_key(&self, origin: &str) -> Result<VerifierKey, CheckpointError> {
        VerifierKey::of_signer(origin, self)
    }
}

impl AnyCheckpointSigner for HsmCheckpointSigner {
    fn checkpoint_key(&self) -> CheckpointKey {
        CheckpointKey::Ecdsa(self.inner.public_key().inner)
    }

    fn sign_checkpoint(&self, msg: &[u8; 32]) -> Result<CheckpointSignature, SignerError> {
        self.inner
            .sign_digest(msg)
            .map(CheckpointSignature::Ecdsa)
            .map_err(|e| SignerError(e.to_string()))
    }
}
