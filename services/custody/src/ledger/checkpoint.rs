//! Signed checkpoints in the C2SP signed-note format (c2sp.org/signed-note,
//! c2sp.org/tlog-checkpoint), signed with BIP-340 Schnorr over secp256k1 (key files) or with
//! ECDSA over secp256k1 (keys held in a PKCS#11 token, which has no Schnorr mechanism).
//!
//! ```text
//! reserve.example/ledger            <- origin
//! 42                                <- tree size (entries 0..41)
//! 3q2+7w...=                        <- base64 RFC 9162 root
//! time 1764057600000                <- extension line: unix milliseconds
//!
//! — reserve.example/ledger AAAAAO...   <- base64(key id (4) || signature (64))
//! ```
//!
//! The key name must equal the origin. The signed message is
//! `TaggedHash("strategic-reserve/ledger/checkpoint/v1", note text)`, where the note text is
//! the four lines above including the final newline. Key ids and signature types: see
//! [`SIGNATURE_TYPE`], [`ECDSA_SIGNATURE_TYPE`] and
//! docs/adr/0002-ledger-encoding-and-checkpoint-signatures.md. The signature is 64 bytes for
//! both types: BIP-340 `(R.x, s)`, or compact ECDSA `r || s` with low S.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bitcoin::secp256k1::{
    ecdsa, schnorr, All, Keypair, Message, PublicKey, Secp256k1, XOnlyPublicKey,
};
use hashcore::{Digest, Sha256, TaggedHash};
use std::sync::OnceLock;
use thiserror::Error;
use zeroize::Zeroizing;

/// The signature type identifier of the key id: `0xff` (the signed-note byte for types without
/// an assigned byte) followed by this project's identifier.
pub const SIGNATURE_TYPE: &[u8] = b"\xffstrategic-reserve/bip340-secp256k1/v1";
/// The signature type identifier of ECDSA checkpoint keys (33-byte compressed secp256k1 key,
/// 64-byte compact low-S signature over the same 32-byte message as BIP-340): `0xff` followed
/// by this project's identifier.
pub const ECDSA_SIGNATURE_TYPE: &[u8] = b"\xffstrategic-reserve/ecdsa-secp256k1/v1";
/// The tag of the 32-byte message that a checkpoint signature (BIP-340 or ECDSA) signs.
pub const CHECKPOINT_SIGNING_TAG: &str = "strategic-reserve/ledger/checkpoint/v1";
/// The longest origin, in bytes.
pub const MAX_ORIGIN_LEN: usize = 255;
/// The most signature lines a note may carry.
pub const MAX_SIGNATURES: usize = 64;
/// The largest note accepted, in bytes.
pub const MAX_NOTE_LEN: usize = 64 * 1024;

fn secp() -> &'static Secp256k1<All> {
    static S: OnceLock<Secp256k1<All>> = OnceLock::new();
    S.get_or_init(Secp256k1::new)
}

fn signing_hasher() -> &'static TaggedHash {
    static H: OnceLock<TaggedHash> = OnceLock::new();
    H.get_or_init(|| TaggedHash::new(CHECKPOINT_SIGNING_TAG))
}

/// Errors of checkpoints: building, signing, parsing and verifying notes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    /// The origin (or key name) is not allowed.
    #[error("invalid origin {origin:?}: {reason}")]
    InvalidOrigin {
        /// The origin.
        origin: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The time is negative.
    #[error("checkpoint time {0} ms is negative")]
    NegativeTime(i64),
    /// The note is longer than [`MAX_NOTE_LEN`].
    #[error("note is {0} bytes long, the limit is {MAX_NOTE_LEN}")]
    NoteTooLong(usize),
    /// The note contains a control character other than newline.
    #[error("note contains control character {0:?}")]
    ControlChar(char),
    /// No blank line separates the text from the signatures.
    #[error("note has no blank line before its signatures")]
    MissingSeparator,
    /// The note has no signature lines.
    #[error("note has no signatures")]
    NoSignatures,
    /// More signature lines than [`MAX_SIGNATURES`].
    #[error("note has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    /// A signature line is malformed.
    #[error("malformed signature line {line}: {reason}")]
    MalformedSignatureLine {
        /// 1-based index of the signature line.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The note text is not a checkpoint body.
    #[error("malformed checkpoint body: {0}")]
    MalformedBody(String),
    /// The checkpoint is for another log.
    #[error("checkpoint is for origin {found:?}, expected {expected:?}")]
    OriginMismatch {
        /// The origin the verifier trusts.
        expected: String,
        /// The origin in the note.
        found: String,
    },
    /// No signature line carries the trusted key's name and id.
    #[error("no signature by key {name} (id {key_id})")]
    NoSignatureFromKey {
        /// Key name.
        name: String,
        /// Key id, hex.
        key_id: String,
    },
    /// A signature by the trusted key does not verify.
    #[error("signature by key {0} does not verify")]
    BadSignature(String),
    /// A verifier key string is malformed.
    #[error("invalid verifier key: {0}")]
    InvalidKey(String),
    /// The signer failed.
    #[error(transparent)]
    Signer(#[from] SignerError),
}

/// A signer's failure (an HSM error, a locked key, ...).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("checkpoint signer failed: {0}")]
pub struct SignerError(pub String);

/// What signs checkpoints with a BIP-340 key. The key file signer is [`KeyFileSigner`].
/// Every `CheckpointSigner` is an [`AnyCheckpointSigner`]; an ECDSA signer (an HSM key)
/// implements [`AnyCheckpointSigner`] directly, at the edge.
pub trait CheckpointSigner {
    /// The x-only public key.
    fn public_key(&self) -> XOnlyPublicKey;

    /// Signs a 32-byte message with BIP-340 Schnorr.
    ///
    /// # Errors
    /// [`SignerError`] when the key cannot sign.
    fn sign(&self, msg: &[u8; 32]) -> Result<schnorr::Signature, SignerError>;
}

/// The kind of a checkpoint key, and so its signature type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureKind {
    /// BIP-340 Schnorr, type [`SIGNATURE_TYPE`].
    Bip340,
    /// ECDSA with low S, type [`ECDSA_SIGNATURE_TYPE`].
    Ecdsa,
}

impl SignatureKind {
    /// The signature type identifier (the key id's type field).
    pub fn type_id(self) -> &'static [u8] {
        match self {
            SignatureKind::Bip340 => SIGNATURE_TYPE,
            SignatureKind::Ecdsa => ECDSA_SIGNATURE_TYPE,
        }
    }
}

/// The public key of a checkpoint signer, of either signature type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKey {
    /// A BIP-340 x-only key.
    Bip340(XOnlyPublicKey),
    /// An ECDSA key (serialized compressed, 33 bytes).
    Ecdsa(PublicKey),
}

impl CheckpointKey {
    /// The signature kind.
    pub fn kind(&self) -> SignatureKind {
        match self {
            CheckpointKey::Bip340(_) => SignatureKind::Bip340,
            CheckpointKey::Ecdsa(_) => SignatureKind::Ecdsa,
        }
    }

    /// The key bytes as hashed into the key id: 32 (x-only) or 33 (compressed) bytes.
    pub fn key_bytes(&self) -> Vec<u8> {
        match self {
            CheckpointKey::Bip340(k) => k.serialize().to_vec(),
            CheckpointKey::Ecdsa(k) => k.serialize().to_vec(),
        }
    }

    /// The signed-note key id: `SHA-256(name || 0x0A || type || key bytes)[:4]`.
    pub fn key_id(&self, name: &str) -> [u8; 4] {
        let d = Sha256::new()
            .chain(name.as_bytes())
            .chain(b"\n")
            .chain(self.kind().type_id())
            .chain(&self.key_bytes())
            .finalize();
        [d[0], d[1], d[2], d[3]]
    }

    /// Whether `sig` (the signature bytes after the key id) is a valid signature of `msg` by
    /// this key: 64 bytes, and for ECDSA compact `r || s` with low S.
    pub fn verifies(&self, msg: &[u8; 32], sig: &[u8]) -> bool {
        let msg = Message::from_digest(*msg);
        match self {
            CheckpointKey::Bip340(key) => schnorr::Signature::from_slice(sig)
                .ok()
                .is_some_and(|s| secp().verify_schnorr(&s, &msg, key).is_ok()),
            CheckpointKey::Ecdsa(key) => {
                let Ok(compact) = <[u8; 64]>::try_from(sig) else {
                    return false;
                };
                let Ok(s) = ecdsa::Signature::from_compact(&compact) else {
                    return false;
                };
                let mut low = s;
                low.normalize_s();
                // High S is refused explicitly (libsecp256k1 refuses it too): one signature
                // per message and key, as for transactions (BIP-146).
                low == s && secp().verify_ecdsa(&msg, &s, key).is_ok()
            }
        }
    }
}

/// A checkpoint signature of either type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointSignature {
    /// A BIP-340 signature.
    Bip340(schnorr::Signature),
    /// An ECDSA signature (written compact, 64 bytes; must be low S).
    Ecdsa(ecdsa::Signature),
}

impl CheckpointSignature {
    /// The 64 signature bytes written after the key id.
    pub fn to_bytes(&self) -> [u8; 64] {
        match self {
            CheckpointSignature::Bip340(s) => s.serialize(),
            CheckpointSignature::Ecdsa(s) => s.serialize_compact(),
        }
    }
}

/// What signs checkpoints, with either signature type. Implemented for every
/// [`CheckpointSigner`] (BIP-340); an ECDSA signer such as a PKCS#11 key implements it
/// directly.
pub trait AnyCheckpointSigner {
    /// The public key (its kind selects the signature type).
    fn checkpoint_key(&self) -> CheckpointKey;

    /// Signs a 32-byte message with the key's signature type.
    ///
    /// # Errors
    /// [`SignerError`] when the key cannot sign.
    fn sign_checkpoint(&self, msg: &[u8; 32]) -> Result<CheckpointSignature, SignerError>;
}

impl<T: CheckpointSigner + ?Sized> AnyCheckpointSigner for T {
    fn checkpoint_key(&self) -> CheckpointKey {
        CheckpointKey::Bip340(self.public_key())
    }

    fn sign_checkpoint(&self, msg: &[u8; 32]) -> Result<CheckpointSignature, SignerError> {
        self.sign(msg).map(CheckpointSignature::Bip340)
    }
}

/// A BIP-340 signing key held in memory, read from a key file.
///
/// Key file format: the 32-byte secret key as 64 hex digits, optionally surrounded by ASCII
/// whitespace (a trailing newline), nothing else. The secret is zeroized on drop and never
/// printed by `Debug`.
pub struct KeyFileSigner {
    secret: Zeroizing<[u8; 32]>,
    public: XOnlyPublicKey,
}

impl core::fmt::Debug for KeyFileSigner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyFileSigner")
            .field("public", &self.public)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl KeyFileSigner {
    /// A signer from the 32 secret key bytes.
    ///
    /// # Errors
    /// [`SignerError`] when the bytes are not a valid secp256k1 secret key (zero or ≥ n).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Result<Self, SignerError> {
        let secret = Zeroizing::new(*secret);
        let mut kp = Keypair::from_seckey_slice(secp(), &secret[..])
            .map_err(|_| SignerError("invalid secp256k1 secret key".into()))?;
        let public = kp.x_only_public_key().0;
        kp.non_secure_erase();
        Ok(KeyFileSigner { secret, public })
    }

    /// A signer from a key file's contents (64 hex digits).
    ///
    /// # Errors
    /// [`SignerError`] when the text is not 64 hex digits or not a valid key.
    pub fn from_key_file(text: &str) -> Result<Self, SignerError> {
        let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if t.len() != 64 {
            return Err(SignerError(
                "key file must hold exactly 64 hex digits".into(),
            ));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(t, &mut bytes[..])
            .map_err(|_| SignerError("key file must hold exactly 64 hex digits".into()))?;
        Self::from_secret_bytes(&bytes)
    }

    /// The key file contents for `secret` (64 lowercase hex digits and a newline).
    pub fn key_file_text(secret: &[u8; 32]) -> Zeroizing<String> {
        let mut s = Zeroizing::new(hex::encode(secret));
        s.push('\n');
        s
    }
}

impl CheckpointSigner for KeyFileSigner {
    fn public_key(&self) -> XOnlyPublicKey {
        self.public
    }

    fn sign(&self, msg: &[u8; 32]) -> Result<schnorr::Signature, SignerError> {
        let mut kp = Keypair::from_seckey_slice(secp(), &self.secret[..])
            .map_err(|_| SignerError("invalid secp256k1 secret key".into()))?;
        // Deterministic (no auxiliary randomness, BIP-340 allows it): the same checkpoint
        // signs to the same bytes, which keeps test vectors fixed.
        let sig = secp().sign_schnorr_no_aux_rand(&Message::from_digest(*msg), &kp);
        kp.non_secure_erase();
        Ok(sig)
    }
}

/// Checks that `origin` may be an origin / key name: 1 to [`MAX_ORIGIN_LEN`] bytes, no Unicode
/// white space, no `+`, no control characters.
///
/// # Errors
/// [`CheckpointError::InvalidOrigin`].
pub fn validate_origin(origin: &str) -> Result<(), CheckpointError> {
    let bad = |reason| {
        Err(CheckpointError::InvalidOrigin {
            origin: origin.to_owned(),
            reason,
        })
    };
    if origin.is_empty() {
        return bad("empty");
    }
    if origin.len() > MAX_ORIGIN_LEN {
        return bad("too long");
    }
    if origin.chars().any(char::is_whitespace) {
        return bad("contains white space");
    }
    if origin.contains('+') {
        return bad("contains '+'");
    }
    if origin.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    Ok(())
}

/// The signed-note key id of a BIP-340 key:
/// `SHA-256(name || 0x0A || SIGNATURE_TYPE || x-only key)[:4]`.
pub fn key_id(name: &str, key: &XOnlyPublicKey) -> [u8; 4] {
    CheckpointKey::Bip340(*key).key_id(name)
}

/// The signed-note key id of an ECDSA key:
/// `SHA-256(name || 0x0A || ECDSA_SIGNATURE_TYPE || 33-byte compressed key)[:4]`.
pub fn ecdsa_key_id(name: &str, key: &PublicKey) -> [u8; 4] {
    CheckpointKey::Ecdsa(*key).key_id(name)
}

/// A tree head: the log's origin, its size, its RFC 9162 root and the time it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Digest,
    time_ms: i64,
}

impl Checkpoint {
    /// A checkpoint.
    ///
    /// # Errors
    /// [`CheckpointError::InvalidOrigin`] or [`CheckpointError::NegativeTime`].
    pub fn new(
        origin: impl Into<String>,
        size: u64,
        root: Digest,
        time_ms: i64,
    ) -> Result<Self, CheckpointError> {
        let origin = origin.into();
        validate_origin(&origin)?;
        if time_ms < 0 {
            return Err(CheckpointError::NegativeTime(time_ms));
        }
        Ok(Checkpoint {
            origin,
            size,
            root,
            time_ms,
        })
    }

    /// The log's origin (also the key name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The number of entries covered (seq 0 to size - 1).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 9162 root of the first `size` entries.
    pub fn root(&self) -> &Digest {
        &self.root
    }

    /// Unix time in milliseconds.
    pub fn time_ms(&self) -> i64 {
        self.time_ms
    }

    /// The note text (four lines, each ending in a newline).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntime {}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            self.time_ms
        )
    }

    /// Parses a note text strictly: exactly the four lines [`Checkpoint::body`] writes.
    ///
    /// # Errors
    /// [`CheckpointError::MalformedBody`] or [`CheckpointError::InvalidOrigin`].
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let bad = |m: &str| CheckpointError::MalformedBody(m.to_owned());
        let Some(text) = text.strip_suffix('\n') else {
            return Err(bad("text does not end in a newline"));
        };
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() != 4 {
            return Err(bad(&format!("expected 4 lines, found {}", lines.len())));
        }
        let origin = lines[0];
        validate_origin(origin)?;
        let size =
            parse_decimal(lines[1]).ok_or_else(|| bad("tree size is not a canonical decimal"))?;
        let root = B64
            .decode(lines[2])
            .ok()
            .filter(|r| B64.encode(r) == lines[2])
            .and_then(|r| <Digest>::try_from(r.as_slice()).ok())
            .ok_or_else(|| bad("root hash is not canonical base64 of 32 bytes"))?;
        let time = lines[3]
            .strip_prefix("time ")
            .and_then(parse_decimal)
            .and_then(|t| i64::try_from(t).ok())
            .ok_or_else(|| bad("fourth line is not \"time <unix milliseconds>\""))?;
        Checkpoint::new(origin, size, root, time)
    }

    /// The 32-byte message a signer signs for this checkpoint.
    pub fn signing_message(&self) -> [u8; 32] {
        signing_hasher().hash(self.body().as_bytes())
    }

    /// Signs the checkpoint: returns the whole signed note (text, blank line, signature line).
    /// The key name is the origin.
    ///
    /// # Errors
    /// [`CheckpointError::Signer`] when the signer fails or returns a signature that does not
    /// verify under its own public key.
    pub fn sign(&self, signer: &dyn AnyCheckpointSigner) -> Result<String, CheckpointError> {
        let body = self.body();
        let msg = signing_hasher().hash(body.as_bytes());
        let key = signer.checkpoint_key();
        let sig = signer.sign_checkpoint(&msg)?;
        let bytes = sig.to_bytes();
        let same_kind = matches!(
            (key, sig),
            (CheckpointKey::Bip340(_), CheckpointSignature::Bip340(_))
                | (CheckpointKey::Ecdsa(_), CheckpointSignature::Ecdsa(_))
        );
        if !same_kind || !key.verifies(&msg, &bytes) {
            return Err(
                SignerError("signer returned a signature that does not verify".into()).into(),
            );
        }
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&key.key_id(&self.origin));
        blob.extend_from_slice(&bytes);
        Ok(format!(
            "{body}\n\u{2014} {} {}\n",
            self.origin,
            B64.encode(blob)
        ))
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// The public key an auditor trusts for a log: its name (= origin) and its key, BIP-340 or
/// ECDSA.
///
/// Text form (as Go's note verifier keys): `<name>+<key id, 8 hex>+<base64(type || key)>`,
/// with `SIGNATURE_TYPE || 32-byte x-only key` or `ECDSA_SIGNATURE_TYPE || 33-byte
/// compressed key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key: CheckpointKey,
}

impl VerifierKey {
    /// A verifier key.
    ///
    /// # Errors
    /// [`CheckpointError::InvalidOrigin`] when the name is not allowed.
    pub fn new(name: impl Into<String>, key: XOnlyPublicKey) -> Result<Self, CheckpointError> {
        Self::with_key(name, CheckpointKey::Bip340(key))
    }

    /// A verifier key of either type.
    ///
    /// # Errors
    /// [`CheckpointError::InvalidOrigin`] when the name is not allowed.
    pub fn with_key(name: impl Into<String>, key: CheckpointKey) -> Result<Self, CheckpointError> {
        let name = name.into();
        validate_origin(&name)?;
        Ok(VerifierKey { name, key })
    }

    /// The verifier key of a signer for log `origin`.
    ///
    /// # Errors
    /// [`CheckpointError::InvalidOrigin`].
    pub fn of_signer(
        origin: impl Into<String>,
        signer: &dyn AnyCheckpointSigner,
    ) -> Result<Self, CheckpointError> {
        Self::with_key(origin, signer.checkpoint_key())
    }

    /// Parses the text form.
    ///
    /// # Errors
    /// [`CheckpointError::InvalidKey`] on a malformed string, a wrong signature type, an
    /// invalid point or a key id that does not match.
    pub fn parse(s: &str) -> Result<Self, CheckpointError> {
        let bad = |m: &str| CheckpointError::InvalidKey(m.to_owned());
        let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
        // The base64 key may itself contain '+': split off name and id only.
        let mut parts = s.splitn(3, '+');
        let (Some(name), Some(id), Some(blob)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <name>+<key id>+<base64 key>"));
        };
        let blob = B64.decode(blob).map_err(|_| bad("key is not base64"))?;
        let key = if let Some(raw) = blob.strip_prefix(SIGNATURE_TYPE) {
            CheckpointKey::Bip340(
                XOnlyPublicKey::from_slice(raw).map_err(|_| bad("not a secp256k1 x-only key"))?,
            )
        } else if let Some(raw) = blob.strip_prefix(ECDSA_SIGNATURE_TYPE) {
            if raw.len() != 33 {
                return Err(bad("not a compressed secp256k1 key"));
            }
            CheckpointKey::Ecdsa(
                PublicKey::from_slice(raw).map_err(|_| bad("not a compressed secp256k1 key"))?,
            )
        } else {
            return Err(bad("not a strategic-reserve bip340 or ecdsa key"));
        };
        let vk = VerifierKey::with_key(name, key).map_err(|e| bad(&e.to_string()))?;
        if id.len() != 8 || hex::encode(key.key_id(name)) != id {
            return Err(bad("key id does not match name and key"));
        }
        Ok(vk)
    }

    /// The key name (the log origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key.
    pub fn key(&self) -> &CheckpointKey {
        &self.key
    }

    /// The signature kind the key verifies.
    pub fn kind(&self) -> SignatureKind {
        self.key.kind()
    }

    /// The key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.key.key_id(&self.name)
    }

    /// Verifies a signed checkpoint note and returns the checkpoint.
    ///
    /// Signatures by other keys (another name or id) are ignored, as signed-note requires; the
    /// note is rejected if no signature is by this key or if one by this key fails.
    ///
    /// # Errors
    /// Every [`CheckpointError`] about parsing, [`CheckpointError::OriginMismatch`],
    /// [`CheckpointError::NoSignatureFromKey`] and [`CheckpointError::BadSignature`].
    pub fn verify(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        let parsed = parse_note(note)?;
        let cp = Checkpoint::parse_body(parsed.text)?;
        if cp.origin != self.name {
            return Err(CheckpointError::OriginMismatch {
                expected: self.name.clone(),
                found: cp.origin,
            });
        }
        let id = self.key_id();
        let msg = signing_hasher().hash(parsed.text.as_bytes());
        let mut verified = false;
        for sig in parsed
            .signatures
            .iter()
            .filter(|s| s.name == self.name && s.key_id == id)
        {
            if !self.key.verifies(&msg, &sig.signature) {
                return Err(CheckpointError::BadSignature(self.name.clone()));
            }
            verified = true;
        }
        if verified {
            Ok(cp)
        } else {
            Err(CheckpointError::NoSignatureFromKey {
                name: self.name.clone(),
                key_id: hex::encode(id),
            })
        }
    }
}

impl core::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut blob = self.key.kind().type_id().to_vec();
        blob.extend_from_slice(&self.key.key_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id()),
            B64.encode(blob)
        )
    }
}

impl core::str::FromStr for VerifierKey {
    type Err = CheckpointError;
    fn from_str(s: &str) -> Result<Self, CheckpointError> {
        VerifierKey::parse(s)
    }
}

/// A signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key id.
    pub key_id: [u8; 4],
    /// The signature bytes after the key id.
    pub signature: Vec<u8>,
}

/// A signed note split into its text and signature lines (nothing verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedNote<'a> {
    /// The note text, including its final newline.
    pub text: &'a str,
    /// The signature lines.
    pub signatures: Vec<NoteSignature>,
}

/// Splits a signed note into text and signatures per c2sp.org/signed-note.
///
/// # Errors
/// [`CheckpointError::NoteTooLong`], [`CheckpointError::ControlChar`],
/// [`CheckpointError::MissingSeparator`], [`CheckpointError::NoSignatures`],
/// [`CheckpointError::TooManySignatures`] or [`CheckpointError::MalformedSignatureLine`].
pub fn parse_note(note: &str) -> Result<ParsedNote<'_>, CheckpointError> {
    if note.len() > MAX_NOTE_LEN {
        return Err(CheckpointError::NoteTooLong(note.len()));
    }
    if let Some(c) = note.chars().find(|c| c.is_control() && *c != '\n') {
        return Err(CheckpointError::ControlChar(c));
    }
    let Some(split) = note.rfind("\n\n") else {
        return Err(CheckpointError::MissingSeparator);
    };
    let text = &note[..split + 1];
    let sigs = &note[split + 2..];
    if sigs.is_empty() {
        return Err(CheckpointError::NoSignatures);
    }
    let Some(sigs) = sigs.strip_suffix('\n') else {
        return Err(CheckpointError::MalformedSignatureLine {
            line: sigs.split('\n').count(),
            reason: "does not end in a newline",
        });
    };
    let mut signatures = Vec::new();
    for (i, line) in sigs.split('\n').enumerate() {
        let bad = |reason| CheckpointError::MalformedSignatureLine {
            line: i + 1,
            reason,
        };
        if signatures.len() == MAX_SIGNATURES {
            return Err(CheckpointError::TooManySignatures);
        }
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(|| bad("does not start with an em dash and a space"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| bad("no space between key name and signature"))?;
        if name.is_empty() || name.chars().any(char::is_whitespace) || name.contains('+') {
            return Err(bad("invalid key name"));
        }
        let blob = B64
            .decode(b64)
            .map_err(|_| bad("signature is not base64"))?;
        if blob.len() < 5 {
            return Err(bad("signature is shorter than a key id and one byte"));
        }
        signatures.push(NoteSignature {
            name: name.to_owned(),
            key_id: [blob[0], blob[1], blob[2], blob[3]],
            signature: blob[4..].to_vec(),
        });
    }
    Ok(ParsedNote { text, signatures })
}
