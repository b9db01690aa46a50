//! PKCS#11 backend: the reserve's policy key inside an HSM.
//!
//! Why this shape:
//! - The key is generated inside the token (`CKA_SENSITIVE`, not extractable) and never
//!   leaves it; we only read its public point.
//! - PKCS#11 has no BIP-32 and no Schnorr mechanism: the HSM holds one static secp256k1 key,
//!   written in descriptors as `[fingerprint]02…`, and cosigns segwit v0 (`wsh`) inputs only.
//! - Raw `CKM_ECDSA` over the 32-byte sighash (`CKM_ECDSA_SHA256` would hash again). The
//!   token returns raw `r‖s`, often high-S: we normalize to low-S (BIP-62/146) and verify the
//!   signature with libsecp256k1 before anyone sees it.
//! - A PKCS#11 session must not be used from two threads at once, so the signer keeps a
//!   small pool of logged-in sessions behind a mutex. Every call blocks on the token: from
//!   async code call the signer inside `tokio::task::spawn_blocking`.
//! - The PIN is held in a zeroizing secret, redacted in `Debug`, never logged. Login state is
//!   per process and token (PKCS#11 rule): a second signer for the same token in the same
//!   process finds the token already logged in and cannot re-check its PIN.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use bitcoin::bip32::{Fingerprint, KeySource};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{ecdsa, Message, PublicKey as SecpPublicKey, Secp256k1, VerifyOnly};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::SecretString;

use crate::psbt_sign::{self, KeyOps};
use crate::{HeldKey, HsmError, SignReport, Signer};

/// DER encoding of the secp256k1 curve OID 1.3.132.0.10 (`CKA_EC_PARAMS`).
const SECP256K1_OID_DER: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];

/// Default number of idle sessions a signer keeps open.
const DEFAULT_POOL_SIZE: usize = 4;

/// A PKCS#11 user PIN: zeroized on drop, redacted in `Debug`, never logged.
#[derive(Clone)]
pub struct Pkcs11Pin(SecretString);

impl Pkcs11Pin {
    /// Wraps a PIN.
    pub fn new(pin: impl Into<String>) -> Self {
        Pkcs11Pin(SecretString::from(pin.into()))
    }
}

impl From<String> for Pkcs11Pin {
    fn from(pin: String) -> Self {
        Pkcs11Pin::new(pin)
    }
}

impl fmt::Debug for Pkcs11Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pkcs11Pin(<redacted>)")
    }
}

/// Where the HSM key lives and how to reach it.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Label of the token (`CKA_LABEL` of the token info).
    pub token_label: String,
    /// Label of the key pair (`CKA_LABEL` of both key objects).
    pub key_label: String,
    /// The user PIN.
    pub pin: Pkcs11Pin,
    /// How many idle logged-in sessions to keep (at least 1).
    pub pool_size: usize,
}

impl Pkcs11Config {
    /// A configuration with the default pool size.
    pub fn new(
        module: impl Into<PathBuf>,
        token_label: impl Into<String>,
        key_label: impl Into<String>,
        pin: Pkcs11Pin,
    ) -> Self {
        Pkcs11Config {
            module: module.into(),
            token_label: token_label.into(),
            key_label: key_label.into(),
            pin,
            pool_size: DEFAULT_POOL_SIZE,
        }
    }
}

/// One object creation (key generation, data object) at a time in this process: SoftHSM2's
/// file store fails creations racing on one token (seen as `CKR_GENERAL_ERROR`).
pub(crate) static TOKEN_WRITES: Mutex<()> = Mutex::new(());

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One initialized context per module path per process: `C_Initialize` may be called once.
fn module(path: &Path) -> Result<Pkcs11, HsmError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = lock(MODULES.get_or_init(Default::default));
    if let Some(ctx) = modules.get(path) {
        return Ok(ctx.clone());
    }
    let load_err = |source| HsmError::ModuleLoad {
        path: path.to_path_buf(),
        source,
    };
    let ctx = Pkcs11::new(path).map_err(load_err)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(source) => return Err(load_err(source)),
    }
    modules.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}

fn find_slot(ctx: &Pkcs11, token_label: &str) -> Result<Slot, HsmError> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(HsmError::pkcs11("list slots"))?;
    let mut found = Vec::new();
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(HsmError::pkcs11("token info"))?;
        if info.label().trim_end() == token_label {
            found.push(slot);
        }
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(HsmError::TokenNotFound {
            label: token_label.to_owned(),
        }),
        _ => Err(HsmError::AmbiguousToken {
            label: token_label.to_owned(),
        }),
    }
}

/// Parses `CKA_EC_POINT`: a DER OCTET STRING around the 65-byte uncompressed point (some
/// modules return the bare point). Returns the compressed key.
fn parse_ec_point(bytes: &[u8]) -> Result<bitcoin::PublicKey, HsmError> {
    let point = match bytes {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        [0x04, ..] if bytes.len() == 65 => bytes,
        _ => {
            return Err(HsmError::BadHsmData(format!(
                "CKA_EC_POINT of {} bytes is not a secp256k1 point",
                bytes.len()
            )))
        }
    };
    let key = SecpPublicKey::from_slice(point)
        .map_err(|e| HsmError::BadHsmData(format!("CKA_EC_POINT: {e}")))?;
    Ok(bitcoin::PublicKey::new(key))
}

/// Raw PKCS#11 ECDSA output (`r‖s`, 32 bytes each) to a low-S secp256k1 signature.
fn raw_to_low_s(raw: &[u8]) -> Result<ecdsa::Signature, HsmError> {
    let compact: [u8; 64] = raw.try_into().map_err(|_| {
        HsmError::BadHsmData(format!(
            "ecdsa signature of {} bytes, expected 64",
            raw.len()
        ))
    })?;
    let mut sig = ecdsa::Signature::from_compact(&compact)
        .map_err(|e| HsmError::BadHsmData(format!("ecdsa signature: {e}")))?;
    sig.normalize_s();
    Ok(sig)
}

/// The descriptor fingerprint of a single static key: first 4 bytes of hash160 of the
/// compressed key.
pub(crate) fn key_fingerprint(key: &bitcoin::PublicKey) -> Fingerprint {
    let h = key.pubkey_hash().to_byte_array();
    Fingerprint::from([h[0], h[1], h[2], h[3]])
}

/// A secp256k1 key pair inside a PKCS#11 token.
pub struct Pkcs11Signer {
    id: String,
    ctx: Pkcs11,
    slot: Slot,
    token_label: String,
    key_label: String,
    pin: Pkcs11Pin,
    private_key: ObjectHandle,
    public_key: bitcoin::PublicKey,
    pool: Mutex<Vec<Session>>,
    pool_size: usize,
    secp: Secp256k1<VerifyOnly>,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("id", &self.id)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .field("public_key", &self.public_key)
            .field("pin", &"<redacted>")
            .finish_non_exhaustive()
    }
}

pub(crate) struct Connection {
    ctx: Pkcs11,
    slot: Slot,
    pub(crate) session: Session,
}

fn login(session: &Session, pin: &Pkcs11Pin, token: &str) -> Result<(), HsmError> {
    let auth: &AuthPin = &pin.0;
    match session.login(UserType::User, Some(auth)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(HsmError::WrongPin {
            token: token.to_owned(),
        }),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(HsmError::PinLocked {
            token: token.to_owned(),
        }),
        Err(source) => Err(HsmError::Pkcs11 {
            operation: "login",
            source,
        }),
    }
}

pub(crate) fn connect(config: &Pkcs11Config) -> Result<Connection, HsmError> {
    let ctx = module(&config.module)?;
    let slot = find_slot(&ctx, &config.token_label)?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(HsmError::pkcs11("open session"))?;
    login(&session, &config.pin, &config.token_label)?;
    Ok(Connection { ctx, slot, session })
}

fn find_key(
    session: &Session,
    class: ObjectClass,
    config: &Pkcs11Config,
) -> Result<Option<ObjectHandle>, HsmError> {
    let template = [
        Attribute::Class(class),
        Attribute::KeyType(KeyType::EC),
        Attribute::Label(config.key_label.as_bytes().to_vec()),
    ];
    let found = session
        .find_objects(&template)
        .map_err(HsmError::pkcs11("find objects"))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(HsmError::AmbiguousKey {
            token: config.token_label.clone(),
            label: config.key_label.clone(),
        }),
    }
}

/// Labels of the secp256k1 private keys on the token named in `config` (its `key_label` is
/// ignored), sorted. What `treasury hsm list` shows.
///
/// # Errors
/// As [`Pkcs11Signer::open`]: module, token, PIN.
pub fn list_key_labels(config: &Pkcs11Config) -> Result<Vec<String>, HsmError> {
    let conn = connect(config)?;
    let template = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
    ];
    let handles = conn
        .session
        .find_objects(&template)
        .map_err(HsmError::pkcs11("find objects"))?;
    let mut labels = Vec::new();
    for h in handles {
        let attrs = conn
            .session
            .get_attributes(h, &[AttributeType::Label])
            .map_err(HsmError::pkcs11("read label"))?;
        for a in attrs {
            if let Attribute::Label(bytes) = a {
                labels.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    labels.sort();
    labels.dedup();
    Ok(labels)
}

impl Pkcs11Signer {
    /// Opens the existing key pair labelled `config.key_label` on the token.
    ///
    /// Checks that the key is on secp256k1 and signs one probe digest to prove the private
    /// and public objects under the label are one pair.
    pub fn open(config: Pkcs11Config) -> Result<Self, HsmError> {
        let conn = connect(&config)?;
        Self::load(config, conn)
    }

    /// Generates a new secp256k1 key pair inside the token (persistent, sensitive,
    /// non-extractable) under `config.key_label`, then opens it. Refuses when a key with that
    /// label already exists.
    pub fn generate(config: Pkcs11Config) -> Result<Self, HsmError> {
        // One generation at a time in this process: the label check and the generation are
        // then atomic here, and SoftHSM2's file store fails generations racing on one token
        // (seen as CKR_GENERAL_ERROR). A key ceremony is rare; nothing waits long.
        let _one_at_a_time = lock(&TOKEN_WRITES);
        let conn = connect(&config)?;
        let exists = find_key(&conn.session, ObjectClass::PRIVATE_KEY, &config)?.is_some()
            || find_key(&conn.session, ObjectClass::PUBLIC_KEY, &config)?.is_some();
        if exists {
            return Err(HsmError::KeyExists {
                token: config.token_label.clone(),
                label: config.key_label.clone(),
            });
        }
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).map_err(|e| HsmError::Random(e.to_string()))?;
        let label = config.key_label.as_bytes().to_vec();
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(SECP256K1_OID_DER.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.to_vec()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Derive(false),
            Attribute::Label(label),
            Attribute::Id(id.to_vec()),
        ];
        conn.session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .map_err(HsmError::pkcs11("generate key pair"))?;
        Self::load(config, conn)
    }

    fn load(config: Pkcs11Config, conn: Connection) -> Result<Self, HsmError> {
        let not_found = || HsmError::KeyNotFound {
            token: config.token_label.clone(),
            label: config.key_label.clone(),
        };
        let private_key =
            find_key(&conn.session, ObjectClass::PRIVATE_KEY, &config)?.ok_or_else(not_found)?;
        let public_handle =
            find_key(&conn.session, ObjectClass::PUBLIC_KEY, &config)?.ok_or_else(not_found)?;
        let attrs = conn
            .session
            .get_attributes(
                public_handle,
                &[AttributeType::EcParams, AttributeType::EcPoint],
            )
            .map_err(HsmError::pkcs11("read public key"))?;
        let mut params = None;
        let mut point = None;
        for attr in attrs {
            match attr {
                Attribute::EcParams(p) => params = Some(p),
                Attribute::EcPoint(p) => point = Some(p),
                _ => {}
            }
        }
        if params.as_deref() != Some(&SECP256K1_OID_DER[..]) {
            return Err(HsmError::BadHsmData(format!(
                "key {:?} is not on secp256k1",
                config.key_label
            )));
        }
        let point = point.ok_or_else(|| HsmError::BadHsmData("no CKA_EC_POINT".into()))?;
        let public_key = parse_ec_point(&point)?;
        let signer = Pkcs11Signer {
            id: format!("pkcs11:{}/{}", config.token_label, config.key_label),
            ctx: conn.ctx,
            slot: conn.slot,
            token_label: config.token_label,
            key_label: config.key_label,
            pin: config.pin,
            private_key,
            public_key,
            pool: Mutex::new(vec![conn.session]),
            pool_size: config.pool_size.max(1),
            secp: Secp256k1::verification_only(),
        };
        // Self-test: the private and public objects found under the label are one pair.
        let probe = [0x5a; 32];
        signer.sign_digest(&probe)?;
        Ok(signer)
    }

    /// The key's compressed public key.
    pub fn public_key(&self) -> bitcoin::PublicKey {
        self.public_key
    }

    /// Fingerprint for the descriptor key origin: first 4 bytes of hash160 of the
    /// compressed public key.
    pub fn fingerprint(&self) -> Fingerprint {
        key_fingerprint(&self.public_key)
    }

    /// The key as written in a descriptor: `[fingerprint]02…` (a single static key).
    pub fn descriptor_key(&self) -> String {
        format!("[{}]{}", self.fingerprint(), self.public_key)
    }

    /// Label of the token holding the key.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    /// Label of the key pair.
    pub fn key_label(&self) -> &str {
        &self.key_label
    }

    fn new_session(&self) -> Result<Session, HsmError> {
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(HsmError::pkcs11("open session"))?;
        login(&session, &self.pin, &self.token_label)?;
        Ok(session)
    }

    /// Runs `f` on a pooled session; a session that saw an error is closed, not reused.
    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let pooled = lock(&self.pool).pop();
        let session = match pooled {
            Some(s) => s,
            None => self.new_session()?,
        };
        let out = f(&session);
        if out.is_ok() {
            let mut pool = lock(&self.pool);
            if pool.len() < self.pool_size {
                pool.push(session);
            }
        }
        out
    }

    /// ECDSA-signs a 32-byte digest (a sighash) inside the token with raw `CKM_ECDSA`.
    ///
    /// The result is low-S and has been verified against the public key. Blocks on the token.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> Result<ecdsa::Signature, HsmError> {
        let raw = self.with_session(|s| {
            s.sign(&Mechanism::Ecdsa, self.private_key, digest)
                .map_err(HsmError::pkcs11("sign"))
        })?;
        let sig = raw_to_low_s(&raw)?;
        let msg = Message::from_digest(*digest);
        self.secp
            .verify_ecdsa(&msg, &sig, &self.public_key.inner)
            .map_err(|_| HsmError::SignatureCheckFailed {
                signer: self.id.clone(),
            })?;
        Ok(sig)
    }
}

impl Pkcs11Signer {
    /// Reads the values of the token data objects (`CKO_DATA`, `CKA_TOKEN` true) labelled
    /// `label` (normally one; two after a crash inside [`Pkcs11Signer::replace_data_object`]).
    /// The policy signer keeps the head of its state log there, so that a restored older copy
    /// of its state directory is noticed.
    ///
    /// # Errors
    /// [`HsmError::Pkcs11`] when the token fails.
    pub fn read_data_objects(&self, label: &str) -> Result<Vec<Vec<u8>>, HsmError> {
        self.with_session(|s| {
            let mut out = Vec::new();
            for h in find_data_objects(s, label)? {
                let attrs = s
                    .get_attributes(h, &[AttributeType::Value])
                    .map_err(HsmError::pkcs11("read data object"))?;
                out.extend(attrs.into_iter().filter_map(|a| match a {
                    Attribute::Value(v) => Some(v),
                    _ => None,
                }));
            }
            Ok(out)
        })
    }

    /// Replaces the private token data objects labelled `label` by one holding `value`: the
    /// new object is created first, then the old ones are destroyed (tokens such as SoftHSM2
    /// do not let `CKA_VALUE` be changed), so a crash in between leaves both, never none.
    ///
    /// # Errors
    /// [`HsmError::Pkcs11`] when the token fails.
    pub fn replace_data_object(&self, label: &str, value: &[u8]) -> Result<(), HsmError> {
        let _one_at_a_time = lock(&TOKEN_WRITES);
        self.with_session(|s| {
            let old = find_data_objects(s, label)?;
            let new = s
                .create_object(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Value(value.to_vec()),
                ])
                .map_err(HsmError::pkcs11("create data object"))?;
            for h in old.into_iter().filter(|h| *h != new) {
                s.destroy_object(h)
                    .map_err(HsmError::pkcs11("destroy data object"))?;
            }
            Ok(())
        })
    }
}

fn find_data_objects(session: &Session, label: &str) -> Result<Vec<ObjectHandle>, HsmError> {
    let template = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    session
        .find_objects(&template)
        .map_err(HsmError::pkcs11("find objects"))
}

impl KeyOps for Pkcs11Signer {
    fn signer_id(&self) -> &str {
        &self.id
    }

    fn holds_ecdsa(&self, key: &SecpPublicKey, _origin: &KeySource) -> bool {
        *key == self.public_key.inner
    }

    fn sign_ecdsa(
        &self,
        _key: &SecpPublicKey,
        _origin: &KeySource,
        msg: &Message,
    ) -> Result<ecdsa::Signature, HsmError> {
        self.sign_digest(msg.as_ref())
    }
}

impl Signer for Pkcs11Signer {
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
    use super::*;

    #[test]
    fn ec_point_wrapped_and_bare() {
        let secp = Secp256k1::new();
        let sk = bitcoin::secp256k1::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let pk = SecpPublicKey::from_secret_key(&secp, &sk);
        let bare = pk.serialize_uncompressed();
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&bare);
        assert_eq!(parse_ec_point(&wrapped).unwrap().inner, pk);
        assert_eq!(parse_ec_point(&bare).unwrap().inner, pk);
        assert!(parse_ec_point(&wrapped).unwrap().compressed);
        assert!(parse_ec_point(&bare[..33]).is_err());
    }

    #[test]
    fn high_s_from_the_token_is_normalized() {
        // secp256k1 group order n; a token may return (r, n - s) for a valid (r, s).
        const N: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xfe, 0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c,
            0xd0, 0x36, 0x41, 0x41,
        ];
        let secp = Secp256k1::new();
        let sk = bitcoin::secp256k1::SecretKey::from_slice(&[9u8; 32]).unwrap();
        let pk = SecpPublicKey::from_secret_key(&secp, &sk);
        let msg = Message::from_digest([1u8; 32]);
        let low = secp.sign_ecdsa(&msg, &sk).serialize_compact();
        // high s = n - s, big-endian subtraction.
        let mut high = low;
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(N[i]) - i16::from(low[32 + i]) - borrow;
            borrow = i16::from(d < 0);
            high[32 + i] = (d + if d < 0 { 256 } else { 0 }) as u8;
        }
        assert_ne!(high, low);
        let high_sig = ecdsa::Signature::from_compact(&high).unwrap();
        assert!(
            secp.verify_ecdsa(&msg, &high_sig, &pk).is_err(),
            "libsecp rejects high-S"
        );
        let fixed = raw_to_low_s(&high).unwrap();
        assert_eq!(fixed.serialize_compact(), low);
        secp.verify_ecdsa(&msg, &fixed, &pk).unwrap();
        assert!(raw_to_low_s(&high[..63]).is_err());
    }

    #[test]
    fn pin_debug_is_redacted() {
        let pin = Pkcs11Pin::new("123456");
        assert!(!format!("{pin:?}").contains("123456"));
    }
}
