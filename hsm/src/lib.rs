//! Signers of the strategic reserve.
//!
//! Why a crate of its own: the policy key lives in an HSM (PKCS#11) and signs only what the
//! policy allows; officers' software keystores live beside it. Keeping every signer behind one
//! small trait lets the service, the CLIs and the tests use a real SoftHSM2 token or a real
//! hardware module through the same path.
//!
//! - [`Signer`]: the one trait; [`Signer::sign_psbt`] signs every input it holds a key for
//!   and refuses (naming the input) any input it cannot check: missing UTXO or script, a
//!   script that is not what the output commits to, a sighash type other than ALL/DEFAULT.
//! - [`Pkcs11Signer`]: a single static secp256k1 key generated inside a PKCS#11 token (no
//!   BIP-32 and no Schnorr in PKCS#11: it cosigns segwit v0 `wsh` inputs only).
//! - [`SealedKey`]: the taproot policy key, a secp256k1 secret sealed under the token's
//!   AES-256 key (`CKM_AES_GCM`; the AES key never leaves the token), unsealed only inside the
//!   signer process; signs taproot script-path inputs (BIP-340) only.
//! - [`SoftwareKeystore`]: an officer's master `Xpriv` encrypted at rest (argon2id +
//!   XChaCha20-Poly1305); signs `wsh` (ECDSA) and taproot script-path (Schnorr) inputs.
//!
//! - [`PolicySigner`]: the gate in front of the policy key: it re-checks the active policy,
//!   the approvals against this exact transaction, quorum, delay, expiry and freeze itself.
//!
//! Signing is all-or-nothing: every signature is computed and verified first, and the PSBT is
//! changed only when every input we hold a key for could be signed.
#![forbid(unsafe_code)]

mod error;
mod keystore;
mod pkcs11;
pub mod policy_signer;
mod psbt_sign;
mod sealed;

use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::taproot::TapLeafHash;

pub use error::HsmError;
pub use keystore::{KdfParams, SoftwareKeystore, APPROVAL_KEY_PATH, KEYSTORE_VERSION};
pub use pkcs11::{list_key_labels, Pkcs11Config, Pkcs11Pin, Pkcs11Signer};
pub use policy_signer::{
    PolicySignature, PolicySigner, PolicySignerError, ProofSignature, SpendAuthorization,
};
pub use sealed::{SealedKey, SEALED_KEY_VERSION};

/// A public key a signer holds, as it appears in a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeldKey {
    /// A single static key (the HSM key): `[fingerprint]02…` in a descriptor.
    Single {
        /// First 4 bytes of hash160 of the compressed key.
        fingerprint: bitcoin::bip32::Fingerprint,
        /// The compressed public key.
        key: bitcoin::PublicKey,
    },
    /// An account-level extended key (software keystore): `[fp/path]xpub…` in a descriptor.
    Extended {
        /// Master fingerprint.
        fingerprint: bitcoin::bip32::Fingerprint,
        /// Path from the master to the account key.
        path: bitcoin::bip32::DerivationPath,
        /// The account-level extended public key.
        xpub: bitcoin::bip32::Xpub,
    },
}

impl HeldKey {
    /// The key with its origin, as written in an output descriptor (`[fp/path]key`).
    pub fn descriptor_key(&self) -> String {
        match self {
            HeldKey::Single { fingerprint, key } => format!("[{fingerprint}]{key}"),
            HeldKey::Extended {
                fingerprint,
                path,
                xpub,
            } => {
                if path.is_empty() {
                    format!("[{fingerprint}]{xpub}")
                } else {
                    format!(
                        "[{fingerprint}/{}]{xpub}",
                        path.to_string().trim_start_matches("m/")
                    )
                }
            }
        }
    }
}

/// Which key signed an input, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignedKey {
    /// An ECDSA signature (segwit v0) placed in `partial_sigs`.
    Ecdsa(bitcoin::PublicKey),
    /// A Schnorr signature for a taproot script-path leaf placed in `tap_script_sigs`.
    Schnorr {
        /// The x-only key.
        key: XOnlyPublicKey,
        /// The leaf signed for.
        leaf: TapLeafHash,
    },
}

/// One signature added to a PSBT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInput {
    /// Index of the input.
    pub input: usize,
    /// The key that signed.
    pub key: SignedKey,
}

/// What [`Signer::sign_psbt`] added to the PSBT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignReport {
    /// Every signature added, in input order.
    pub signed: Vec<SignedInput>,
}

impl SignReport {
    /// True when nothing was signed (no input held one of our keys).
    pub fn is_empty(&self) -> bool {
        self.signed.is_empty()
    }

    /// Indices of the inputs that received at least one signature.
    pub fn inputs(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.signed.iter().map(|s| s.input).collect();
        v.dedup();
        v
    }
}

/// A signer of reserve PSBTs.
///
/// Implementations may block (a PKCS#11 call, an argon2 derivation): from async code call
/// them inside `tokio::task::spawn_blocking`.
pub trait Signer: Send + Sync {
    /// A stable, non-secret name for logs and audit records.
    fn id(&self) -> &str;

    /// The public keys this signer holds, as they appear in descriptors.
    fn public_keys(&self) -> Result<Vec<HeldKey>, HsmError>;

    /// Signs every input of `psbt` this signer holds a key for.
    ///
    /// ECDSA: keys found in `bip32_derivation`, segwit v0 `wsh` only (sighash from
    /// `witness_utxo` + `witness_script`). Schnorr (software keystore only): keys in
    /// `tap_key_origins` with leaf hashes, script path, all `witness_utxo`s as prevouts.
    /// An input holding one of our keys but lacking what is needed to check it is refused with
    /// an error naming it, and then nothing at all is added to the PSBT.
    fn sign_psbt(&self, psbt: &mut bitcoin::Psbt) -> Result<SignReport, HsmError>;
}
