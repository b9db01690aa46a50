//! ECDSA checkpoints (the signature type of HSM-held ledger keys): signing, verification,
//! low S, key ids, and no confusion with BIP-340 keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Secp256k1, SecretKey};
use custody::ledger::checkpoint::{parse_note, ECDSA_SIGNATURE_TYPE, SIGNATURE_TYPE};
use custody::ledger::{
    ecdsa_key_id, AnyCheckpointSigner, Checkpoint, CheckpointError, CheckpointKey,
    CheckpointSignature, KeyFileSigner, SignatureKind, SignerError, VerifierKey,
};

const ORIGIN: &str = "reserve.example/ledger";
/// The same secret as the BIP-340 golden vector's key file.
const SECRET_HEX: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
const ROOT: [u8; 32] = [0xab; 32];
const TIME: i64 = 1_764_057_600_000;

/// A software ECDSA signer (RFC 6979 nonces, low S), standing in for the HSM.
struct SoftEcdsa(SecretKey);

impl SoftEcdsa {
    fn from_hex(h: &str) -> Self {
        SoftEcdsa(SecretKey::from_slice(&hex::decode(h).unwrap()).unwrap())
    }
    fn from_byte(b: u8) -> Self {
        SoftEcdsa(SecretKey::from_slice(&[b; 32]).unwrap())
    }
    fn public(&self) -> PublicKey {
        self.0.public_key(&Secp256k1::new())
    }
}

impl AnyCheckpointSigner for SoftEcdsa {
    fn checkpoint_key(&self) -> CheckpointKey {
        CheckpointKey::Ecdsa(self.public())
    }
    fn sign_checkpoint(&self, msg: &[u8; 32]) -> Result<CheckpointSignature, SignerError> {
        Ok(CheckpointSignature::Ecdsa(
            Secp256k1::new().sign_ecdsa(&Message::from_digest(*msg), &self.0),
        ))
    }
}

fn signer() -> SoftEcdsa {
    SoftEcdsa::from_hex(SECRET_HEX)
}

fn vkey() -> VerifierKey {
    VerifierKey::of_signer(ORIGIN, &signer()).unwrap()
}

fn schnorr_signer() -> KeyFileSigner {
    KeyFileSigner::from_key_file(SECRET_HEX).unwrap()
}

fn note(size: u64) -> String {
    Checkpoint::new(ORIGIN, size, ROOT, TIME)
        .unwrap()
        .sign(&signer())
        .unwrap()
}

/// Frozen: the ECDSA verifier key text and (RFC 6979, deterministic) note.
const GOLDEN_ECDSA_VERIFIER_KEY: &str = "reserve.example/ledger+ce620258+/3N0cmF0ZWdpYy1yZXNlcnZlL2VjZHNhLXNlY3AyNTZrMS92MQJOO4GvnCI0ytCdZ5zmA17ROSNHzmTOQF9dzTYiiiXebg==";
const GOLDEN_ECDSA_NOTE: &str = "reserve.example/ledger\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\ntime 1764057600000\n\n\u{2014} reserve.example/ledger zmICWP/dPHmzyFRwn9UQ6RRGXZw6S76I+BjokFyvc0bXdt1hH54hWyzirxWyurWM6UoHyTgYddoI7cRtlnI9NU6lyJI=\n";

#[test]
fn golden_ecdsa_verifier_key_and_note() {
    assert_eq!(vkey().to_string(), GOLDEN_ECDSA_VERIFIER_KEY);
    assert_eq!(note(42), GOLDEN_ECDSA_NOTE);
    let k = VerifierKey::parse(GOLDEN_ECDSA_VERIFIER_KEY).unwrap();
    assert_eq!(k, vkey());
    assert_eq!(k.kind(), SignatureKind::Ecdsa);
    let cp = k.verify(GOLDEN_ECDSA_NOTE).unwrap();
    assert_eq!(
        (cp.origin(), cp.size(), cp.root(), cp.time_ms()),
        (ORIGIN, 42, &ROOT, TIME)
    );
}

#[test]
fn ecdsa_type_key_id_and_text_shape() {
    use sha2::Digest as _;
    assert_eq!(
        ECDSA_SIGNATURE_TYPE,
        b"\xffstrategic-reserve/ecdsa-secp256k1/v1"
    );
    assert_eq!(SignatureKind::Ecdsa.type_id(), ECDSA_SIGNATURE_TYPE);
    assert_eq!(SignatureKind::Bip340.type_id(), SIGNATURE_TYPE);
    let pk = signer().public();
    let mut pre = ORIGIN.as_bytes().to_vec();
    pre.push(b'\n');
    pre.extend_from_slice(ECDSA_SIGNATURE_TYPE);
    pre.extend_from_slice(&pk.serialize());
    let d = sha2::Sha256::digest(&pre);
    assert_eq!(ecdsa_key_id(ORIGIN, &pk), d[..4]);
    assert_eq!(vkey().key_id(), d[..4]);
    // name+hexid+base64(type || 33-byte key)
    let s = vkey().to_string();
    let mut parts = s.splitn(3, '+');
    assert_eq!(parts.next(), Some(ORIGIN));
    assert_eq!(parts.next(), Some(hex::encode(&d[..4]).as_str()));
    let blob = B64.decode(parts.next().unwrap()).unwrap();
    assert_eq!(&blob[..ECDSA_SIGNATURE_TYPE.len()], ECDSA_SIGNATURE_TYPE);
    assert_eq!(&blob[ECDSA_SIGNATURE_TYPE.len()..], &pk.serialize()[..]);
}

#[test]
fn ecdsa_signature_is_compact_low_s_over_the_tagged_hash() {
    let n = note(7);
    let parsed = parse_note(&n).unwrap();
    assert_eq!(parsed.signatures.len(), 1);
    assert_eq!(parsed.signatures[0].key_id, vkey().key_id());
    let msg = hashcore::TaggedHash::new("strategic-reserve/ledger/checkpoint/v1")
        .hash(parsed.text.as_bytes());
    let compact: [u8; 64] = parsed.signatures[0]
        .signature
        .as_slice()
        .try_into()
        .unwrap();
    let sig = ecdsa::Signature::from_compact(&compact).unwrap();
    let mut low = sig;
    low.normalize_s();
    assert_eq!(low, sig);
    Secp256k1::verification_only()
        .verify_ecdsa(&Message::from_digest(msg), &sig, &signer().public())
        .unwrap();
}

#[test]
fn ecdsa_round_trip() {
    for size in [0, 1, 42, u64::MAX] {
        let cp = vkey().verify(&note(size)).unwrap();
        assert_eq!(cp.size(), size);
    }
    for b in 1..=20u8 {
        let s = SoftEcdsa::from_byte(b);
        let k = VerifierKey::of_signer(ORIGIN, &s).unwrap();
        assert_eq!(VerifierKey::parse(&k.to_string()).unwrap(), k);
        let n = Checkpoint::new(ORIGIN, 3, ROOT, TIME)
            .unwrap()
            .sign(&s)
            .unwrap();
        assert_eq!(k.verify(&n).unwrap().size(), 3);
    }
}

#[test]
fn ecdsa_wrong_key_is_rejected() {
    let other = SoftEcdsa::from_byte(7);
    let n = Checkpoint::new(ORIGIN, 42, ROOT, TIME)
        .unwrap()
        .sign(&other)
        .unwrap();
    let e = vkey().verify(&n).unwrap_err();
    assert!(
        matches!(e, CheckpointError::NoSignatureFromKey { .. }),
        "{e}"
    );
    // The other key's signature under our key id: a bad signature.
    let (text, line) = n.rsplit_once("\n\n").unwrap();
    let mut blob = B64
        .decode(line.trim_end().rsplit_once(' ').unwrap().1)
        .unwrap();
    blob[..4].copy_from_slice(&vkey().key_id());
    let relabelled = format!("{text}\n\n\u{2014} {ORIGIN} {}\n", B64.encode(&blob));
    assert_eq!(
        vkey().verify(&relabelled),
        Err(CheckpointError::BadSignature(ORIGIN.into()))
    );
}

/// secp256k1 group order.
const N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

/// `n - s`, big-endian.
fn negate_s(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(N[i]) - i16::from(s[i]) - borrow;
        borrow = 0;
        if d < 0 {
            d += 256;
            borrow = 1;
        }
        out[i] = u8::try_from(d).unwrap();
    }
    assert_eq!(borrow, 0);
    out
}

fn high_s(sig: &[u8]) -> Vec<u8> {
    let mut h = sig[..32].to_vec();
    h.extend_from_slice(&negate_s(&sig[32..64]));
    h
}

#[test]
fn high_s_is_rejected() {
    let n = note(42);
    let (text, line) = n.rsplit_once("\n\n").unwrap();
    let blob = B64
        .decode(line.trim_end().rsplit_once(' ').unwrap().1)
        .unwrap();
    let mut high = blob[..4].to_vec();
    high.extend_from_slice(&high_s(&blob[4..]));
    // It is the same signature's high-S twin.
    let mut twin = ecdsa::Signature::from_compact(&high[4..]).unwrap();
    assert_ne!(twin.serialize_compact()[..], blob[4..]);
    twin.normalize_s();
    assert_eq!(twin.serialize_compact()[..], blob[4..]);
    let forged = format!("{text}\n\n\u{2014} {ORIGIN} {}\n", B64.encode(&high));
    assert_eq!(
        vkey().verify(&forged),
        Err(CheckpointError::BadSignature(ORIGIN.into()))
    );
    assert!(!vkey().key().verifies(&[0u8; 32], &high[4..]));
}

/// Returns the high-S twin of a good signature.
struct HighSSigner;
impl AnyCheckpointSigner for HighSSigner {
    fn checkpoint_key(&self) -> CheckpointKey {
        signer().checkpoint_key()
    }
    fn sign_checkpoint(&self, msg: &[u8; 32]) -> Result<CheckpointSignature, SignerError> {
        let CheckpointSignature::Ecdsa(low) = signer().sign_checkpoint(msg)? else {
            panic!("not ecdsa");
        };
        let high = high_s(&low.serialize_compact());
        Ok(CheckpointSignature::Ecdsa(
            ecdsa::Signature::from_compact(&high).unwrap(),
        ))
    }
}

/// Claims an ECDSA key, returns a BIP-340 signature.
struct MixedSigner;
impl AnyCheckpointSigner for MixedSigner {
    fn checkpoint_key(&self) -> CheckpointKey {
        signer().checkpoint_key()
    }
    fn sign_checkpoint(&self, msg: &[u8; 32]) -> Result<CheckpointSignature, SignerError> {
        schnorr_signer().sign_checkpoint(msg)
    }
}

#[test]
fn signer_output_is_checked() {
    let cp = Checkpoint::new(ORIGIN, 1, ROOT, TIME).unwrap();
    for e in [cp.sign(&HighSSigner), cp.sign(&MixedSigner)] {
        let e = e.unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");
    }
}

#[test]
fn tampered_ecdsa_note_is_rejected() {
    let n = note(42);
    for (from, to) in [
        ("\n42\n", "\n43\n"),
        ("time 1764057600000", "time 1764057600001"),
        ("q6s=", "q6o="),
    ] {
        let altered = n.replace(from, to);
        assert_ne!(altered, n);
        assert_eq!(
            vkey().verify(&altered),
            Err(CheckpointError::BadSignature(ORIGIN.into())),
            "{from}"
        );
    }
    let (text, line) = n.rsplit_once("\n\n").unwrap();
    let blob = B64
        .decode(line.trim_end().rsplit_once(' ').unwrap().1)
        .unwrap();
    for i in [4, 35, 36, 67] {
        let mut b = blob.clone();
        b[i] ^= 1;
        let forged = format!("{text}\n\n\u{2014} {ORIGIN} {}\n", B64.encode(&b));
        assert_eq!(
            vkey().verify(&forged),
            Err(CheckpointError::BadSignature(ORIGIN.into())),
            "byte {i}"
        );
    }
    // Truncated or extended signature bytes under the right key id.
    for b in [blob[..67].to_vec(), [blob.clone(), vec![0]].concat()] {
        let forged = format!("{text}\n\n\u{2014} {ORIGIN} {}\n", B64.encode(&b));
        assert_eq!(
            vkey().verify(&forged),
            Err(CheckpointError::BadSignature(ORIGIN.into()))
        );
    }
}

#[test]
fn ecdsa_key_id_mismatch_is_refused() {
    let s = vkey().to_string();
    let parts: Vec<&str> = s.splitn(3, '+').collect();
    let wrong_id = format!("{}+00000000+{}", parts[0], parts[2]);
    assert!(VerifierKey::parse(&wrong_id)
        .unwrap_err()
        .to_string()
        .contains("key id"));
    // The BIP-340 key id of the same x coordinate is not the ECDSA key id.
    let schnorr_id = hex::encode(
        VerifierKey::of_signer(ORIGIN, &schnorr_signer())
            .unwrap()
            .key_id(),
    );
    assert_ne!(schnorr_id, parts[1]);
    let swapped = format!("{}+{schnorr_id}+{}", parts[0], parts[2]);
    assert!(VerifierKey::parse(&swapped)
        .unwrap_err()
        .to_string()
        .contains("key id"));
    let renamed = format!("other.example+{}+{}", parts[1], parts[2]);
    assert!(VerifierKey::parse(&renamed).is_err());
    // An uncompressed (65-byte) key under the ECDSA type is refused.
    let mut blob = ECDSA_SIGNATURE_TYPE.to_vec();
    blob.extend_from_slice(&signer().public().serialize_uncompressed());
    let uncompressed = format!("{}+{}+{}", parts[0], parts[1], B64.encode(&blob));
    assert!(VerifierKey::parse(&uncompressed)
        .unwrap_err()
        .to_string()
        .contains("compressed"));
    // A note whose signature line carries another key id is not by this key.
    let n = note(42);
    let (text, line) = n.rsplit_once("\n\n").unwrap();
    let mut b = B64
        .decode(line.trim_end().rsplit_once(' ').unwrap().1)
        .unwrap();
    b[0] ^= 1;
    let other_id = format!("{text}\n\n\u{2014} {ORIGIN} {}\n", B64.encode(&b));
    assert!(matches!(
        vkey().verify(&other_id),
        Err(CheckpointError::NoSignatureFromKey { .. })
    ));
}

#[test]
fn no_cross_type_confusion() {
    // Same secret, both types: different key ids, and neither accepts the other's note.
    let schnorr_vk = VerifierKey::of_signer(ORIGIN, &schnorr_signer()).unwrap();
    let ecdsa_vk = vkey();
    assert_eq!(schnorr_vk.kind(), SignatureKind::Bip340);
    assert_ne!(schnorr_vk.key_id(), ecdsa_vk.key_id());
    let cp = Checkpoint::new(ORIGIN, 42, ROOT, TIME).unwrap();
    let schnorr_note = cp.sign(&schnorr_signer()).unwrap();
    let ecdsa_note = cp.sign(&signer()).unwrap();
    assert!(matches!(
        schnorr_vk.verify(&ecdsa_note),
        Err(CheckpointError::NoSignatureFromKey { .. })
    ));
    assert!(matches!(
        ecdsa_vk.verify(&schnorr_note),
        Err(CheckpointError::NoSignatureFromKey { .. })
    ));
    // A signature line relabelled with the other type's key id is a bad signature.
    let relabel = |note: &str, id: [u8; 4]| {
        let (text, line) = note.rsplit_once("\n\n").unwrap();
        let mut b = B64
            .decode(line.trim_end().rsplit_once(' ').unwrap().1)
            .unwrap();
        b[..4].copy_from_slice(&id);
        format!("{text}\n\n\u{2014} {ORIGIN} {}\n", B64.encode(&b))
    };
    assert_eq!(
        schnorr_vk.verify(&relabel(&ecdsa_note, schnorr_vk.key_id())),
        Err(CheckpointError::BadSignature(ORIGIN.into()))
    );
    assert_eq!(
        ecdsa_vk.verify(&relabel(&schnorr_note, ecdsa_vk.key_id())),
        Err(CheckpointError::BadSignature(ORIGIN.into()))
    );
    // Both signatures on one note: each key finds its own and ignores the other.
    let both = format!(
        "{schnorr_note}{}",
        ecdsa_note.rsplit_once("\n\n").unwrap().1
    );
    assert_eq!(schnorr_vk.verify(&both).unwrap().size(), 42);
    assert_eq!(ecdsa_vk.verify(&both).unwrap().size(), 42);
    // A key blob with the BIP-340 type but a 33-byte key, or the ECDSA type with 32 bytes.
    let mut b = SIGNATURE_TYPE.to_vec();
    b.extend_from_slice(&signer().public().serialize());
    assert!(VerifierKey::parse(&format!("{ORIGIN}+00000000+{}", B64.encode(&b))).is_err());
    let mut b = ECDSA_SIGNATURE_TYPE.to_vec();
    b.extend_from_slice(&signer().public().x_only_public_key().0.serialize());
    assert!(VerifierKey::parse(&format!("{ORIGIN}+00000000+{}", B64.encode(&b))).is_err());
}

#[test]
fn ecdsa_garbage_never_panics() {
    use proptest::prelude::*;
    proptest!(|(s in "\\PC{0,200}", sig in proptest::collection::vec(any::<u8>(), 0..80))| {
        let _ = vkey().verify(&s);
        let _ = VerifierKey::parse(&s);
        let _ = vkey().key().verifies(&[1u8; 32], &sig);
    });
}
