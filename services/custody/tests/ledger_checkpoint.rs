//! Checkpoints: the signed-note format, signing, verification, forgery and malformed notes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use base64::Engine as _;
use custody::ledger::checkpoint::{parse_note, SIGNATURE_TYPE};
use custody::ledger::{
    key_id, Checkpoint, CheckpointError, CheckpointSigner, KeyFileSigner, SignerError, VerifierKey,
};

const ORIGIN: &str = "reserve.example/ledger";
const KEY_FILE: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318\n";
const ROOT: [u8; 32] = [0xab; 32];
const TIME: i64 = 1_764_057_600_000;

fn signer() -> KeyFileSigner {
    KeyFileSigner::from_key_file(KEY_FILE).unwrap()
}

fn vkey() -> VerifierKey {
    VerifierKey::of_signer(ORIGIN, &signer()).unwrap()
}

fn note(size: u64) -> String {
    Checkpoint::new(ORIGIN, size, ROOT, TIME)
        .unwrap()
        .sign(&signer())
        .unwrap()
}

/// Frozen: the body format, key id and deterministic signature must never drift.
const GOLDEN_NOTE: &str = "reserve.example/ledger\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\ntime 1764057600000\n\n\u{2014} reserve.example/ledger E/7hP5gnAdMBNN2bkbrcOYjcYI6dt9nsuvweb3sWDxPkC5qUH4ueutYKxBEdiORkrW0NSpvb6ew5JWPJYDk3pe7W8hQ=\n";
const GOLDEN_VERIFIER_KEY: &str = "reserve.example/ledger+13fee13f+/3N0cmF0ZWdpYy1yZXNlcnZlL2JpcDM0MC1zZWNwMjU2azEvdjFOO4GvnCI0ytCdZ5zmA17ROSNHzmTOQF9dzTYiiiXebg==";

#[test]
fn golden_note_and_key_are_frozen() {
    assert_eq!(note(42), GOLDEN_NOTE);
    assert_eq!(vkey().to_string(), GOLDEN_VERIFIER_KEY);
    let cp = VerifierKey::parse(GOLDEN_VERIFIER_KEY)
        .unwrap()
        .verify(GOLDEN_NOTE)
        .unwrap();
    assert_eq!(
        (cp.origin(), cp.size(), cp.root(), cp.time_ms()),
        (ORIGIN, 42, &ROOT, TIME)
    );
}

#[test]
fn body_format() {
    let cp = Checkpoint::new(ORIGIN, 42, ROOT, TIME).unwrap();
    assert_eq!(
        cp.body(),
        "reserve.example/ledger\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\ntime 1764057600000\n"
    );
    assert_eq!(Checkpoint::parse_body(&cp.body()).unwrap(), cp);
    let n = note(42);
    let parsed = parse_note(&n).unwrap();
    assert_eq!(parsed.text, cp.body());
    assert_eq!(parsed.signatures.len(), 1);
    assert_eq!(parsed.signatures[0].name, ORIGIN);
    assert_eq!(parsed.signatures[0].signature.len(), 64);
    assert!(n.ends_with('\n'));
    assert!(n.contains("\n\n\u{2014} reserve.example/ledger "));
}

#[test]
fn key_id_is_sha256_of_name_newline_type_key() {
    use sha2::Digest as _;
    let pk = signer().public_key();
    let mut pre = ORIGIN.as_bytes().to_vec();
    pre.push(b'\n');
    pre.extend_from_slice(SIGNATURE_TYPE);
    pre.extend_from_slice(&pk.serialize());
    let d = sha2::Sha256::digest(&pre);
    assert_eq!(key_id(ORIGIN, &pk), d[..4]);
    assert_eq!(SIGNATURE_TYPE[0], 0xff);
}

#[test]
fn signature_is_bip340_over_the_tagged_hash_of_the_text() {
    use bitcoin::secp256k1::{schnorr, Message, Secp256k1};
    let n = note(7);
    let parsed = parse_note(&n).unwrap();
    let msg = hashcore::TaggedHash::new("strategic-reserve/ledger/checkpoint/v1")
        .hash(parsed.text.as_bytes());
    let sig = schnorr::Signature::from_slice(&parsed.signatures[0].signature).unwrap();
    Secp256k1::verification_only()
        .verify_schnorr(&sig, &Message::from_digest(msg), &signer().public_key())
        .unwrap();
}

#[test]
fn verify_round_trip() {
    let cp = vkey().verify(&note(0)).unwrap();
    assert_eq!(cp.size(), 0);
    let cp = vkey().verify(&note(u64::MAX)).unwrap();
    assert_eq!(cp.size(), u64::MAX);
}

#[test]
fn forged_signature_is_rejected() {
    let n = note(42);
    let (text, sig_line) = n.rsplit_once("\n\n").unwrap();
    let b64 = sig_line.trim_end().rsplit_once(' ').unwrap().1;
    let mut blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    for i in [4, 20, 40, 67] {
        let mut b = blob.clone();
        b[i] ^= 1;
        let forged = format!(
            "{text}\n\n\u{2014} {ORIGIN} {}\n",
            base64::engine::general_purpose::STANDARD.encode(&b)
        );
        assert_eq!(
            vkey().verify(&forged),
            Err(CheckpointError::BadSignature(ORIGIN.into())),
            "byte {i}"
        );
    }
    // A changed body under the old signature.
    let altered = n.replace("\n42\n", "\n43\n");
    assert_eq!(
        vkey().verify(&altered),
        Err(CheckpointError::BadSignature(ORIGIN.into()))
    );
    // A changed key id: the signature is then by an unknown key, which is ignored.
    blob[0] ^= 1;
    let other_id = format!(
        "{text}\n\n\u{2014} {ORIGIN} {}\n",
        base64::engine::general_purpose::STANDARD.encode(&blob)
    );
    assert!(matches!(
        vkey().verify(&other_id),
        Err(CheckpointError::NoSignatureFromKey { .. })
    ));
}

#[test]
fn signature_by_another_key_is_rejected() {
    let other = KeyFileSigner::from_secret_bytes(&[7u8; 32]).unwrap();
    let n = Checkpoint::new(ORIGIN, 42, ROOT, TIME)
        .unwrap()
        .sign(&other)
        .unwrap();
    let e = vkey().verify(&n).unwrap_err();
    assert!(
        matches!(e, CheckpointError::NoSignatureFromKey { .. }),
        "{e}"
    );
    assert!(e
        .to_string()
        .starts_with("no signature by key reserve.example/ledger"));
}

#[test]
fn unknown_cosignatures_are_ignored() {
    let n = note(42);
    let other = KeyFileSigner::from_secret_bytes(&[7u8; 32]).unwrap();
    let cosig = Checkpoint::new(ORIGIN, 42, ROOT, TIME)
        .unwrap()
        .sign(&other)
        .unwrap();
    let witness_line = cosig
        .rsplit_once("\n\n")
        .unwrap()
        .1
        .replace(ORIGIN, "witness.example");
    let both = format!("{n}{witness_line}");
    assert_eq!(vkey().verify(&both).unwrap().size(), 42);
}

#[test]
fn checkpoint_for_another_origin_is_rejected() {
    let other_origin = Checkpoint::new("other.example/log", 42, ROOT, TIME)
        .unwrap()
        .sign(&signer())
        .unwrap();
    let e = vkey().verify(&other_origin).unwrap_err();
    assert_eq!(
        e.to_string(),
        "checkpoint is for origin \"other.example/log\", expected \"reserve.example/ledger\""
    );
}

#[test]
fn malformed_notes_give_clear_errors() {
    let good = note(42);
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "no blank line"),
        (good.replace("\n\n", "\n"), "no blank line"),
        (good.trim_end().to_owned(), "does not end in a newline"),
        (
            format!("{}\n\n", good.split("\n\n").next().unwrap()),
            "no signatures",
        ),
        (good.replace('\u{2014}', "-"), "em dash"),
        (good.replace("time ", "time\u{7}"), "control character"),
        (good.replace("\n42\n", "\n042\n"), "tree size"),
        (good.replace("\n42\n", "\n-1\n"), "tree size"),
        (
            good.replace("\n42\n", "\n99999999999999999999\n"),
            "tree size",
        ),
        (good.replace("q6s=", "q6s"), "root hash"),
        (good.replace("q6s=", "q6t="), "root hash"),
        (good.replace("time 1764057600000", "when 1"), "fourth line"),
        (good.replace("time 1764057600000\n", ""), "expected 4 lines"),
        (
            good.replace("reserve.example/ledger\n42", "reserve example\n42"),
            "white space",
        ),
    ];
    for (n, want) in cases {
        let e = vkey().verify(&n).unwrap_err().to_string();
        assert!(
            e.contains(want),
            "note {n:?}: error {e:?} does not mention {want:?}"
        );
    }
}

#[test]
fn verifier_key_text_round_trip_and_errors() {
    let k = vkey();
    let s = k.to_string();
    assert!(s.starts_with("reserve.example/ledger+"));
    assert_eq!(VerifierKey::parse(&s).unwrap(), k);
    assert_eq!(s.parse::<VerifierKey>().unwrap(), k);
    let parts: Vec<&str> = s.split('+').collect();
    let wrong_id = format!("{}+00000000+{}", parts[0], parts[2]);
    assert!(VerifierKey::parse(&wrong_id)
        .unwrap_err()
        .to_string()
        .contains("key id"));
    let renamed = format!("other.example+{}+{}", parts[1], parts[2]);
    assert!(VerifierKey::parse(&renamed).is_err());
    assert!(VerifierKey::parse("nonsense").is_err());
    assert!(VerifierKey::parse(&format!("{}+{}+AAAA", parts[0], parts[1])).is_err());
}

#[test]
fn verifier_keys_with_plus_in_their_base64_parse() {
    let mut with_plus = 0;
    for b in 1..=40u8 {
        let k =
            VerifierKey::of_signer(ORIGIN, &KeyFileSigner::from_secret_bytes(&[b; 32]).unwrap())
                .unwrap();
        let s = k.to_string();
        with_plus += usize::from(s.matches('+').count() > 2);
        assert_eq!(VerifierKey::parse(&s).unwrap(), k, "{s}");
    }
    assert!(with_plus > 0, "no key with '+' in its base64 was tried");
}

#[test]
fn key_file_parsing() {
    assert!(KeyFileSigner::from_key_file(KEY_FILE.trim()).is_ok());
    assert!(KeyFileSigner::from_key_file("zz").is_err());
    assert!(
        KeyFileSigner::from_key_file(&"0".repeat(64)).is_err(),
        "zero key"
    );
    assert!(
        KeyFileSigner::from_key_file(&"f".repeat(64)).is_err(),
        "key above n"
    );
    assert!(KeyFileSigner::from_key_file(&format!("{}00", KEY_FILE.trim())).is_err());
    let text = KeyFileSigner::key_file_text(&[7u8; 32]);
    assert_eq!(
        KeyFileSigner::from_key_file(&text).unwrap().public_key(),
        KeyFileSigner::from_secret_bytes(&[7u8; 32])
            .unwrap()
            .public_key()
    );
}

#[test]
fn debug_does_not_print_the_secret() {
    let d = format!("{:?}", signer());
    assert!(d.contains("redacted"));
    assert!(!d.contains("4c0883a6"));
    assert!(!d.contains("76, 8, 131"));
}

struct FailingSigner;
impl CheckpointSigner for FailingSigner {
    fn public_key(&self) -> bitcoin::secp256k1::XOnlyPublicKey {
        signer().public_key()
    }
    fn sign(&self, _: &[u8; 32]) -> Result<bitcoin::secp256k1::schnorr::Signature, SignerError> {
        Err(SignerError("token not present".into()))
    }
}

struct LyingSigner;
impl CheckpointSigner for LyingSigner {
    fn public_key(&self) -> bitcoin::secp256k1::XOnlyPublicKey {
        signer().public_key()
    }
    fn sign(&self, msg: &[u8; 32]) -> Result<bitcoin::secp256k1::schnorr::Signature, SignerError> {
        KeyFileSigner::from_secret_bytes(&[9u8; 32])
            .unwrap()
            .sign(msg)
    }
}

#[test]
fn signer_failures_surface() {
    let cp = Checkpoint::new(ORIGIN, 1, ROOT, TIME).unwrap();
    assert_eq!(
        cp.sign(&FailingSigner).unwrap_err().to_string(),
        "checkpoint signer failed: token not present"
    );
    assert!(cp
        .sign(&LyingSigner)
        .unwrap_err()
        .to_string()
        .contains("does not verify"));
}

#[test]
fn origin_rules() {
    for bad in ["", "a b", "a+b", "a\tb", "a\u{2003}b"] {
        assert!(Checkpoint::new(bad, 0, ROOT, 0).is_err(), "{bad:?}");
    }
    assert!(Checkpoint::new("x".repeat(256), 0, ROOT, 0).is_err());
    assert!(Checkpoint::new(ORIGIN, 0, ROOT, -1).is_err());
}

#[test]
fn garbage_never_panics() {
    use proptest::prelude::*;
    proptest!(|(s in "\\PC{0,200}")| {
        let _ = vkey().verify(&s);
        let _ = VerifierKey::parse(&s);
        let _ = KeyFileSigner::from_key_file(&s);
    });
}
