//! A taproot policy key sealed under an HSM's AES key.
//!
//! Why: PKCS#11 tokens have no BIP-340 Schnorr mechanism (only raw `CKM_ECDSA`), so the HSM key
//! cannot sign for a taproot vault. The taproot policy key is therefore a secp256k1 secret that
//! is generated here, immediately encrypted with an AES-256 key that is generated inside the
//! token and never leaves it (`CKM_AES_GCM`, `CKA_SENSITIVE`, not extractable), and stored only
//! as ciphertext. Unsealing needs the token and its PIN; the plaintext exists only in a
//! zeroizing buffer inside the signer process, and is never logged (`Debug` redacts it).
//!
//! File format (JSON, version 1): the public key, the wrapping key's label, the 12-byte GCM IV
//! and the ciphertext with its 128-bit tag. The additional authenticated data binds the format
//! version and the public key, so an altered file is refused by the token, and the unsealed
//! secret must derive the stated public key.
//!
//! The key signs taproot script-path inputs only ([`Signer::sign_psbt`] through the shared
//! PSBT walk: same checks as every other signer), never ECDSA.

use std::fmt;
use std::path::{Path, PathBuf};

use bitcoin::bip32::{Fingerprint, KeySource};
use bitcoin::secp256k1::{
    ecdsa, schnorr, All, Keypair, Message, PublicKey as SecpPublicKey, Secp256k1, SecretKey,
    XOnlyPublicKey,
};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::pkcs11::{connect, key_fingerprint, lock, Pkcs11Config};
use crate::psbt_sign::{self, KeyOps};
use crate::{HeldKey, HsmError, SignReport, Signer};

/// Version of the sealed key file format.
pub const SEALED_KEY_VERSION: u32 = 1;

const AAD_TAG: &[u8] = b"strategic-reserve/sealed-policy-key/v1";
const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedFile {
    version: u32,
    public_key: String,
    wrapping_key_label: String,
    iv: String,
    ciphertext: String,
}

/// A secp256k1 policy key for taproot vaults (PKCS#11 has no Schnorr), sealed under a PKCS#11
/// token's non-extractable AES-256 key with `CKM_AES_GCM` and stored only as ciphertext; the
/// plaintext lives only in this value's zeroizing buffer (redacted in `Debug`). It signs
/// taproot script-path inputs (BIP-340) through the same PSBT checks as every signer, never
/// ECDSA.
pub struct SealedKey {
    id: String,
    path: PathBuf,
    public_key: bitcoin::PublicKey,
    secret: Zeroizing<[u8; 32]>,
    secp: Secp256k1<All>,
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedKey")
            .field("id", &self.id)
            .field("path", &self.path)
            .field("public_key", &self.public_key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn aad(public_key: &bitcoin::PublicKey) -> Vec<u8> {
    let mut aad = AAD_TAG.to_vec();
    aad.extend_from_slice(&public_key.to_bytes());
    aad
}

/// The AES-256 wrapping key labelled `label`, generated inside the token when `create` and
/// absent.
fn wrapping_key(
    session: &Session,
    config: &Pkcs11Config,
    create: bool,
) -> Result<ObjectHandle, HsmError> {
    let label = config.key_label.as_bytes().to_vec();
    let find = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.clone()),
    ];
    let found = session
        .find_objects(&find)
        .map_err(HsmError::pkcs11("find objects"))?;
    match found.as_slice() {
        [one] => return Ok(*one),
        [] if create => {}
        [] => {
            return Err(HsmError::KeyNotFound {
                token: config.token_label.clone(),
                label: config.key_label.clone(),
            })
        }
        _ => {
            return Err(HsmError::AmbiguousKey {
                token: config.token_label.clone(),
                label: config.key_label.clone(),
            })
        }
    }
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label),
    ];
    let _one_at_a_time = lock(&crate::pkcs11::TOKEN_WRITES);
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(HsmError::pkcs11("generate aes key"))
}

fn random<const N: usize>() -> Result<[u8; N], HsmError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| HsmError::Random(e.to_string()))?;
    Ok(b)
}

impl SealedKey {
    /// Generates a new policy key, seals it under the token's AES-256 key labelled
    /// `config.key_label` (generated inside the token if the token has none), and writes the
    /// sealed file at `path` (refused if it exists).
    ///
    /// # Errors
    /// As [`crate::Pkcs11Signer::open`] for the module, token and PIN; [`HsmError::Pkcs11`] when
    /// the token cannot generate the AES key or encrypt (no `CKM_AES_GCM`);
    /// [`HsmError::Io`] when the file exists or cannot be written.
    pub fn generate(config: &Pkcs11Config, path: &Path) -> Result<Self, HsmError> {
        // One key ceremony at a time in this process (SoftHSM2's file store races otherwise).
        static GENERATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = lock(&GENERATE);
        let secret = loop {
            let candidate = Zeroizing::new(random::<32>()?);
            if SecretKey::from_slice(&candidate[..]).is_ok() {
                break candidate;
            }
        };
        let secp = Secp256k1::new();
        let sk = SecretKey::from_slice(&secret[..])
            .map_err(|_| HsmError::Key("generated secret is not a key".into()))?;
        let public_key = bitcoin::PublicKey::new(SecpPublicKey::from_secret_key(&secp, &sk));
        let conn = connect(config)?;
        let key = wrapping_key(&conn.session, config, true)?;
        let mut iv = random::<IV_LEN>()?;
        let aad = aad(&public_key);
        let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into())
            .map_err(HsmError::pkcs11("gcm parameters"))?;
        let ciphertext = conn
            .session
            .encrypt(&Mechanism::AesGcm(params), key, &secret[..])
            .map_err(HsmError::pkcs11("encrypt"))?;
        let file = SealedFile {
            version: SEALED_KEY_VERSION,
            public_key: public_key.to_string(),
            wrapping_key_label: config.key_label.clone(),
            iv: hex::encode(iv),
            ciphertext: hex::encode(ciphertext),
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| HsmError::Key(format!("cannot encode sealed key: {e}")))?;
        let io = |source| HsmError::Io {
            path: path.to_path_buf(),
            source,
        };
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        Ok(Self::held(path, config, public_key, secret, secp))
    }

    /// Unseals the policy key stored at `path` with the token's AES key labelled
    /// `config.key_label`. The secret is checked to derive the file's public key.
    ///
    /// # Errors
    /// As [`crate::Pkcs11Signer::open`] for the module, token and PIN;
    /// [`HsmError::KeyNotFound`] when the token has no such AES key; [`HsmError::Unseal`] when
    /// the token's key does not open the file (another token, or an altered file);
    /// [`HsmError::InvalidSealedKey`] for a file that is not a sealed key; [`HsmError::Io`].
    pub fn open(config: &Pkcs11Config, path: &Path) -> Result<Self, HsmError> {
        let invalid = |reason: &str| HsmError::InvalidSealedKey {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let text = std::fs::read_to_string(path).map_err(|source| HsmError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: SealedFile =
            serde_json::from_str(&text).map_err(|e| invalid(&format!("not json: {e}")))?;
        if file.version != SEALED_KEY_VERSION {
            return Err(invalid(&format!("unknown version {}", file.version)));
        }
        let public_key: bitcoin::PublicKey = file
            .public_key
            .parse()
            .map_err(|_| invalid("bad public key"))?;
        if !public_key.compressed {
            return Err(invalid("public key is not compressed"));
        }
        let mut iv: [u8; IV_LEN] = hex::decode(&file.iv)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| invalid("bad iv"))?;
        let ciphertext = hex::decode(&file.ciphertext).map_err(|_| invalid("bad ciphertext"))?;
        let conn = connect(config)?;
        let key = wrapping_key(&conn.session, config, false)?;
        let aad = aad(&public_key);
        let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into())
            .map_err(HsmError::pkcs11("gcm parameters"))?;
        let plain = Zeroizing::new(
            conn.session
                .decrypt(&Mechanism::AesGcm(params), key, &ciphertext)
                .map_err(|_| HsmError::Unseal {
                    path: path.to_path_buf(),
                })?,
        );
        let mut secret = Zeroizing::new([0u8; 32]);
        if plain.len() != secret.len() {
            return Err(HsmError::Unseal {
                path: path.to_path_buf(),
            });
        }
        secret.copy_from_slice(&plain);
        let secp = Secp256k1::new();
        let sk = SecretKey::from_slice(&secret[..]).map_err(|_| HsmError::Unseal {
            path: path.to_path_buf(),
        })?;
        if SecpPublicKey::from_secret_key(&secp, &sk) != public_key.inner {
            return Err(HsmError::Unseal {
                path: path.to_path_buf(),
            });
        }
        Ok(Self::held(path, config, public_key, secret, secp))
    }

    fn held(
        path: &Path,
        config: &Pkcs11Config,
        public_key: bitcoin::PublicKey,
        secret: Zeroizing<[u8; 32]>,
        secp: Secp256k1<All>,
    ) -> Self {
        SealedKey {
            id: format!(
                "sealed:{}/{}:{}",
                config.token_label,
                config.key_label,
                key_fingerprint(&public_key)
            ),
            path: path.to_path_buf(),
            public_key,
            secret,
            secp,
        }
    }

    /// The key's compressed public key (taproot scripts use its x-only form).
    pub fn public_key(&self) -> bitcoin::PublicKey {
        self.public_key
    }

    /// Fingerprint for the descriptor key origin: first 4 bytes of hash160 of the compressed
    /// public key.
    pub fn fingerprint(&self) -> Fingerprint {
        key_fingerprint(&self.public_key)
    }

    /// The key as written in a descriptor: `[fingerprint]02…` (a single static key).
    pub fn descriptor_key(&self) -> String {
        format!("[{}]{}", self.fingerprint(), self.public_key)
    }

    fn x_only(&self) -> XOnlyPublicKey {
        self.public_key.inner.x_only_public_key().0
    }
}

impl KeyOps for SealedKey {
    fn signer_id(&self) -> &str {
        &self.id
    }

    fn holds_ecdsa(&self, _key: &SecpPublicKey, _origin: &KeySource) -> bool {
        false
    }

    fn sign_ecdsa(
        &self,
        _key: &SecpPublicKey,
        _origin: &KeySource,
        _msg: &Message,
    ) -> Result<ecdsa::Signature, HsmError> {
        Err(HsmError::Key(format!(
            "{} signs taproot script paths only",
            self.id
        )))
    }

    fn holds_schnorr(&self, key: &XOnlyPublicKey, _origin: &KeySource) -> bool {
        *key == self.x_only()
    }

    fn sign_schnorr(
        &self,
        key: &XOnlyPublicKey,
        _origin: &KeySource,
        msg: &Message,
    ) -> Result<schnorr::Signature, HsmError> {
        if *key != self.x_only() {
            return Err(HsmError::Key(format!("{} does not hold {key}", self.id)));
        }
        let mut keypair = Keypair::from_seckey_slice(&self.secp, &self.secret[..])
            .map_err(|_| HsmError::Key("sealed secret is not a key".into()))?;
        let aux = Zeroizing::new(random::<32>()?);
        let sig = self.secp.sign_schnorr_with_aux_rand(msg, &keypair, &aux);
        keypair.non_secure_erase();
        Ok(sig)
    }
}

impl Signer for SealedKey {
    fn id(&self) -> &str {
        &self.id
    }

    fn public_keys(&self) -> Result<Vec<HeldKey>, HsmError> {
        Ok(vec![HeldKey::Single {
            fingerprint: self.fingerprint(),
            key: self.public_key,
        }])
    }

    fn sign_psbt(&self, psbt: &mut bitcoin::Psbt) -> Result<SignReport, HsmError> {
        psbt_sign::sign_psbt(self, psbt)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn debug_is_redacted() {
        let secp = Secp256k1::new();
        let secret = Zeroizing::new([7u8; 32]);
        let sk = SecretKey::from_slice(&secret[..]).unwrap();
        let public_key = bitcoin::PublicKey::new(SecpPublicKey::from_secret_key(&secp, &sk));
        let config = Pkcs11Config::new("/x", "t", "k", crate::Pkcs11Pin::new("1"));
        let key = SealedKey::held(Path::new("/x"), &config, public_key, secret, secp);
        let shown = format!("{key:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains(&hex::encode([7u8; 32])));
    }
}
