//! Software keystore: an officer's BIP-32 master key, encrypted at rest.
//!
//! Why: officers' keys are ordinary BIP-32 keys (they sign taproot script paths, which no
//! PKCS#11 token can), so they live in a file. The file must be useless without the officer's
//! passphrase even to someone holding a GPU farm: argon2id (memory-hard; 64 MiB, 3 passes by
//! default) turns the passphrase into a key and XChaCha20-Poly1305 encrypts the 78-byte
//! serialized master `Xpriv`. The KDF parameters are stored in the file (so they can be raised
//! later, and lowered in tests), and every public field of the file is bound to the
//! ciphertext as associated data: altering any of them makes decryption fail.
//!
//! In memory the master key is erased on drop (best effort) and never printed by `Debug`.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use argon2::{Algorithm, Argon2, Params, Version};
use bitcoin::bip32::{ChainCode, DerivationPath, Fingerprint, KeySource, Xpriv, Xpub};
use bitcoin::secp256k1::{ecdsa, schnorr, All, Keypair, Message, PublicKey as SecpPublicKey};
use bitcoin::secp256k1::{Secp256k1, SecretKey, XOnlyPublicKey};
use bitcoin::NetworkKind;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::psbt_sign::{self, KeyOps};
use crate::{HeldKey, HsmError, SignReport, Signer};

/// The derivation path of an officer's approval key under the master key (hardened, under a
/// purpose no wallet standard uses, so it never coincides with a PSBT signing key).
pub const APPROVAL_KEY_PATH: &str = "m/1826'/0'";

/// Version of the keystore file format written by this crate.
pub const KEYSTORE_VERSION: u32 = 1;

const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const KDF_ALGORITHM: &str = "argon2id";
const KDF_VERSION: u32 = 0x13;

/// Argon2id cost parameters, stored in the keystore file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB (production: 65,536 = 64 MiB or more).
    pub m_cost_kib: u32,
    /// Number of passes.
    pub t_cost: u32,
    /// Degree of parallelism (lanes).
    pub p_cost: u32,
}

impl KdfParams {
    /// Production parameters: 64 MiB, 3 passes, 1 lane.
    pub const fn production() -> Self {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }

    /// Cheap parameters for tests only (64 KiB, 1 pass): never for real keys.
    pub const fn insecure_for_tests() -> Self {
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    /// True when the parameters are at least [`KdfParams::production`] strength (64 MiB,
    /// 3 passes): tools should refuse or warn below that for real keys.
    pub fn meets_production_minimum(&self) -> bool {
        let p = KdfParams::production();
        self.m_cost_kib >= p.m_cost_kib && self.t_cost >= p.t_cost
    }

    /// Bounds checked before any derivation, so a hostile file cannot ask for 1 TiB.
    fn argon2(&self) -> Result<Argon2<'static>, HsmError> {
        if self.m_cost_kib > 4 * 1024 * 1024 || self.t_cost > 64 || self.p_cost > 64 {
            return Err(HsmError::KdfParams(format!(
                "{self:?} above the accepted maximum"
            )));
        }
        let params = Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| HsmError::KdfParams(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams::production()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct KdfSection {
    algorithm: String,
    version: u32,
    #[serde(flatten)]
    params: KdfParams,
}

/// The JSON file. Everything but `ciphertext` is public and bound as associated data.
#[derive(Debug, Serialize, Deserialize)]
struct KeystoreFile {
    version: u32,
    id: String,
    fingerprint: String,
    account_path: String,
    account_xpub: String,
    kdf: KdfSection,
    salt: String,
    nonce: String,
    ciphertext: String,
}

impl KeystoreFile {
    fn aad(&self) -> String {
        format!(
            "treasury-keystore|v{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.version,
            self.id,
            self.fingerprint,
            self.account_path,
            self.account_xpub,
            self.kdf.algorithm,
            self.kdf.version,
            self.kdf.params.m_cost_kib,
            self.kdf.params.t_cost,
            self.kdf.params.p_cost,
            self.salt,
        )
    }
}

/// The master key, erased (best effort) on drop.
struct MasterKey(Xpriv);

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.private_key.non_secure_erase();
        self.0.chain_code = ChainCode::from([0u8; 32]);
    }
}

/// A derived child secret key, erased (best effort) on drop.
struct ChildKey(SecretKey);

impl Drop for ChildKey {
    fn drop(&mut self) {
        self.0.non_secure_erase();
    }
}

fn random<const N: usize>() -> Result<[u8; N], HsmError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| HsmError::Random(e.to_string()))?;
    Ok(b)
}

fn derive_file_key(
    passphrase: &str,
    salt: &[u8],
    kdf: &KdfParams,
) -> Result<Zeroizing<[u8; 32]>, HsmError> {
    let mut key = Zeroizing::new([0u8; 32]);
    kdf.argon2()?
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
        .map_err(|e| HsmError::KdfParams(e.to_string()))?;
    Ok(key)
}

/// An officer's BIP-32 master key with its account path.
pub struct SoftwareKeystore {
    id: String,
    master: MasterKey,
    fingerprint: Fingerprint,
    account_path: DerivationPath,
    account_xpub: Xpub,
    secp: Secp256k1<All>,
}

impl fmt::Debug for SoftwareKeystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareKeystore")
            .field("id", &self.id)
            .field("fingerprint", &self.fingerprint)
            .field("account_path", &self.account_path)
            .field("account_xpub", &self.account_xpub)
            .field("master", &"<redacted>")
            .finish()
    }
}

impl SoftwareKeystore {
    /// Wraps an existing master key. `account_path` is the path to the account-level key
    /// shown in descriptors (e.g. `m/48'/1'/0'/2'`).
    pub fn new(
        id: impl Into<String>,
        master: Xpriv,
        account_path: DerivationPath,
    ) -> Result<Self, HsmError> {
        let secp = Secp256k1::new();
        let master = MasterKey(master);
        let fingerprint = master.0.fingerprint(&secp);
        let account = MasterKey(
            master
                .0
                .derive_priv(&secp, &account_path)
                .map_err(|e| HsmError::Key(e.to_string()))?,
        );
        let account_xpub = Xpub::from_priv(&secp, &account.0);
        Ok(SoftwareKeystore {
            id: id.into(),
            master,
            fingerprint,
            account_path,
            account_xpub,
            secp,
        })
    }

    /// Generates a new master key from 32 bytes of operating-system randomness.
    pub fn generate(
        id: impl Into<String>,
        network: NetworkKind,
        account_path: DerivationPath,
    ) -> Result<Self, HsmError> {
        let seed = Zeroizing::new(random::<32>()?);
        let master =
            Xpriv::new_master(network, seed.as_ref()).map_err(|e| HsmError::Key(e.to_string()))?;
        Self::new(id, master, account_path)
    }

    /// Non-secret name of the keystore.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Master key fingerprint (the key origin in descriptors and PSBTs).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Path from the master to the account key.
    pub fn account_path(&self) -> &DerivationPath {
        &self.account_path
    }

    /// The account-level extended public key.
    pub fn account_xpub(&self) -> Xpub {
        self.account_xpub
    }

    /// The account key as written in a descriptor: `[fingerprint/path]xpub…`.
    pub fn descriptor_key(&self) -> String {
        self.held_key().descriptor_key()
    }

    fn held_key(&self) -> HeldKey {
        HeldKey::Extended {
            fingerprint: self.fingerprint,
            path: self.account_path.clone(),
            xpub: self.account_xpub,
        }
    }

    /// Encrypts the keystore under `passphrase` and returns the JSON text of the file.
    pub fn to_json(&self, passphrase: &str, kdf: KdfParams) -> Result<String, HsmError> {
        let salt = random::<SALT_LEN>()?;
        let nonce = random::<NONCE_LEN>()?;
        let mut file = KeystoreFile {
            version: KEYSTORE_VERSION,
            id: self.id.clone(),
            fingerprint: self.fingerprint.to_string(),
            account_path: self.account_path.to_string(),
            account_xpub: self.account_xpub.to_string(),
            kdf: KdfSection {
                algorithm: KDF_ALGORITHM.into(),
                version: KDF_VERSION,
                params: kdf,
            },
            salt: hex::encode(salt),
            nonce: hex::encode(nonce),
            ciphertext: String::new(),
        };
        let key = derive_file_key(passphrase, &salt, &kdf)?;
        let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key.as_ref()));
        let plain = Zeroizing::new(self.master.0.encode());
        let aad = file.aad();
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_ref(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| HsmError::Key("encryption failed".into()))?;
        file.ciphertext = hex::encode(ct);
        serde_json::to_string_pretty(&file).map_err(|e| HsmError::InvalidKeystore(e.to_string()))
    }

    /// Decrypts a keystore from its JSON text. A wrong passphrase gives
    /// [`HsmError::WrongPassphrase`].
    pub fn from_json(json: &str, passphrase: &str) -> Result<Self, HsmError> {
        let bad = |what: &str| HsmError::InvalidKeystore(what.to_owned());
        let file: KeystoreFile =
            serde_json::from_str(json).map_err(|e| HsmError::InvalidKeystore(e.to_string()))?;
        if file.version != KEYSTORE_VERSION {
            return Err(HsmError::InvalidKeystore(format!(
                "unsupported version {}",
                file.version
            )));
        }
        if file.kdf.algorithm != KDF_ALGORITHM || file.kdf.version != KDF_VERSION {
            return Err(bad("unsupported kdf"));
        }
        let salt = hex::decode(&file.salt).map_err(|_| bad("salt is not hex"))?;
        let nonce = hex::decode(&file.nonce).map_err(|_| bad("nonce is not hex"))?;
        let ct = hex::decode(&file.ciphertext).map_err(|_| bad("ciphertext is not hex"))?;
        if salt.len() < SALT_LEN || nonce.len() != NONCE_LEN {
            return Err(bad("salt or nonce of the wrong length"));
        }
        let account_path =
            DerivationPath::from_str(&file.account_path).map_err(|_| bad("bad account path"))?;
        let key = derive_file_key(passphrase, &salt, &file.kdf.params)?;
        let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key.as_ref()));
        let aad = file.aad();
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &ct,
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| HsmError::WrongPassphrase)?,
        );
        let master = Xpriv::decode(&plain).map_err(|_| bad("secret is not an extended key"))?;
        let ks = Self::new(file.id, master, account_path)?;
        if ks.fingerprint.to_string() != file.fingerprint
            || ks.account_xpub.to_string() != file.account_xpub
        {
            return Err(bad("fingerprint or account xpub does not match the secret"));
        }
        Ok(ks)
    }

    /// Writes the encrypted keystore to a new file (mode 0600 on Unix); refuses to overwrite.
    pub fn save(&self, path: &Path, passphrase: &str, kdf: KdfParams) -> Result<(), HsmError> {
        let json = self.to_json(passphrase, kdf)?;
        let io = |source| HsmError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        f.write_all(json.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Reads and decrypts a keystore file.
    pub fn load(path: &Path, passphrase: &str) -> Result<Self, HsmError> {
        let json = std::fs::read_to_string(path).map_err(|source| HsmError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&json, passphrase)
    }

    /// The officer's approval key (BIP-340, for spend approvals and admin orders): the child
    /// at [`APPROVAL_KEY_PATH`] of the master key, so one keystore file holds both the PSBT
    /// signing key and the approval key.
    ///
    /// # Errors
    /// [`HsmError::Key`] when the derivation fails (it cannot for a valid master key).
    pub fn approval_public_key(&self) -> Result<XOnlyPublicKey, HsmError> {
        self.with_approval_secret(|sk| {
            SecpPublicKey::from_secret_key(&self.secp, sk)
                .x_only_public_key()
                .0
        })
    }

    /// Runs `f` with the approval secret key, which is erased (best effort) afterwards.
    ///
    /// # Errors
    /// [`HsmError::Key`] when the derivation fails.
    pub fn with_approval_secret<R>(&self, f: impl FnOnce(&SecretKey) -> R) -> Result<R, HsmError> {
        let path = DerivationPath::from_str(APPROVAL_KEY_PATH)
            .map_err(|e| HsmError::Key(e.to_string()))?;
        let child = ChildKey(
            self.master
                .0
                .derive_priv(&self.secp, &path)
                .map_err(|e| HsmError::Key(e.to_string()))?
                .private_key,
        );
        Ok(f(&child.0))
    }

    /// The child secret key at `origin`, if `origin` is ours and yields `expected`.
    fn child(&self, origin: &KeySource) -> Option<ChildKey> {
        if origin.0 != self.fingerprint {
            return None;
        }
        let child = MasterKey(self.master.0.derive_priv(&self.secp, &origin.1).ok()?);
        Some(ChildKey(child.0.private_key))
    }

    fn child_for_ecdsa(&self, key: &SecpPublicKey, origin: &KeySource) -> Option<ChildKey> {
        let child = self.child(origin)?;
        (SecpPublicKey::from_secret_key(&self.secp, &child.0) == *key).then_some(child)
    }

    fn child_for_schnorr(&self, key: &XOnlyPublicKey, origin: &KeySource) -> Option<ChildKey> {
        let child = self.child(origin)?;
        (SecpPublicKey::from_secret_key(&self.secp, &child.0)
            .x_only_public_key()
            .0
            == *key)
            .then_some(child)
    }
}

impl KeyOps for SoftwareKeystore {
    fn signer_id(&self) -> &str {
        &self.id
    }

    fn holds_ecdsa(&self, key: &SecpPublicKey, origin: &KeySource) -> bool {
        self.child_for_ecdsa(key, origin).is_some()
    }

    fn sign_ecdsa(
        &self,
        key: &SecpPublicKey,
        origin: &KeySource,
        msg: &Message,
    ) -> Result<ecdsa::Signature, HsmError> {
        let child = self
            .child_for_ecdsa(key, origin)
            .ok_or_else(|| HsmError::Key(format!("{} does not hold {key}", self.id)))?;
        // libsecp256k1 signs deterministically (RFC 6979) and always low-S.
        Ok(self.secp.sign_ecdsa(msg, &child.0))
    }

    fn holds_schnorr(&self, key: &XOnlyPublicKey, origin: &KeySource) -> bool {
        self.child_for_schnorr(key, origin).is_some()
    }

    fn sign_schnorr(
        &self,
        key: &XOnlyPublicKey,
        origin: &KeySource,
        msg: &Message,
    ) -> Result<schnorr::Signature, HsmError> {
        let child = self
            .child_for_schnorr(key, origin)
            .ok_or_else(|| HsmError::Key(format!("{} does not hold {key}", self.id)))?;
        let mut keypair = Keypair::from_secret_key(&self.secp, &child.0);
        let aux = Zeroizing::new(random::<32>()?);
        let sig = self.secp.sign_schnorr_with_aux_rand(msg, &keypair, &aux);
        keypair.non_secure_erase();
        Ok(sig)
    }
}

impl Signer for SoftwareKeystore {
    fn id(&self) -> &str {
        &self.id
    }

    fn public_keys(&self) -> Result<Vec<HeldKey>, HsmError> {
        Ok(vec![self.held_key()])
    }

    fn sign_psbt(&self, psbt: &mut bitcoin::Psbt) -> Result<SignReport, HsmError> {
        psbt_sign::sign_psbt(self, psbt)
    }
}
