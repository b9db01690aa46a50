//! Entry encoding: golden vectors, round trips, malformed input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use custody::ledger::{
    Actor, DecodeError, Entry, EntryDraft, EntryError, Kind, NotePayload, Payload, PayloadType,
    GENESIS_PREV_HASH,
};
use proptest::prelude::*;

const T0: i64 = 1_764_057_600_000;

fn golden_entries() -> Vec<Entry> {
    let e0 = Entry::new(
        0,
        EntryDraft::note(T0, "alice", "audit start").unwrap(),
        GENESIS_PREV_HASH,
    )
    .unwrap();
    let e1 = Entry::new(
        1,
        EntryDraft {
            time_ms: T0 + 1,
            kind: Kind::DepositSeen,
            actor: Actor::new("treasury-sync").unwrap(),
            payload: Payload::bytes(vec![0xde, 0xad, 0xbe, 0xef]).unwrap(),
        },
        *e0.entry_hash(),
    )
    .unwrap();
    let e2 = Entry::new(
        2,
        EntryDraft {
            time_ms: T0 + 60_000,
            kind: Kind::Checkpoint,
            actor: Actor::new("ledger").unwrap(),
            payload: Payload::checkpoint("reserve.example/ledger\n2\nAAAA\n\n\u{2014} x y\n")
                .unwrap(),
        },
        *e1.entry_hash(),
    )
    .unwrap();
    vec![e0, e1, e2]
}

/// Records (body || entry hash) of the golden entries, frozen: the encoding must never drift.
const GOLDEN_RECORDS: [&str; 3] = [
    "0100000000000000000000019aba06d000000e0005616c696365000100000010010000000b617564697420737461727400000000000000000000000000000000000000000000000000000000000000002bf8e3e2921c6340b6eb1f14a670138d5e89484f58632439ecb1816e3f0cca01",
    "0100000000000000010000019aba06d0010003000d74726561737572792d73796e63000000000004deadbeef2bf8e3e2921c6340b6eb1f14a670138d5e89484f58632439ecb1816e3f0cca0112db4d76edfbaf4933c8d2664e7d2f3fd082c077e99e1d58346aca9b3eed1b3d",
    "0100000000000000020000019aba07ba60000d00066c656467657200020000002c0100000027726573657276652e6578616d706c652f6c65646765720a320a414141410a0ae28094207820790a12db4d76edfbaf4933c8d2664e7d2f3fd082c077e99e1d58346aca9b3eed1b3d6a208d6ebdd89e0a108b0b154214a9c240dbf2f5e8bc02b7589cbbdb208dcfc7",
];
/// Their entry hashes.
const GOLDEN_HASHES: [&str; 3] = [
    "2bf8e3e2921c6340b6eb1f14a670138d5e89484f58632439ecb1816e3f0cca01",
    "12db4d76edfbaf4933c8d2664e7d2f3fd082c077e99e1d58346aca9b3eed1b3d",
    "6a208d6ebdd89e0a108b0b154214a9c240dbf2f5e8bc02b7589cbbdb208dcfc7",
];

#[test]
fn golden_vectors_are_frozen() {
    let entries = golden_entries();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            hex::encode(e.encode_record()),
            GOLDEN_RECORDS[i],
            "record {i}"
        );
        assert_eq!(hex::encode(e.entry_hash()), GOLDEN_HASHES[i], "hash {i}");
    }
}

#[test]
fn golden_records_decode_to_the_same_entries() {
    for (i, e) in golden_entries().iter().enumerate() {
        let bytes = hex::decode(GOLDEN_RECORDS[i]).unwrap();
        let d = Entry::decode_record(&bytes).unwrap();
        assert_eq!(&d, e);
        assert!(d.check_hash());
        assert_eq!(d.encode_record(), bytes);
    }
}

#[test]
fn body_layout_is_as_documented() {
    let e = &golden_entries()[0];
    let b = e.encode_body();
    assert_eq!(b[0], 1, "format version");
    assert_eq!(&b[1..9], &0u64.to_be_bytes(), "seq");
    assert_eq!(&b[9..17], &T0.to_be_bytes(), "time");
    assert_eq!(&b[17..19], &14u16.to_be_bytes(), "kind operator_note");
    assert_eq!(&b[19..21], &5u16.to_be_bytes(), "actor length");
    assert_eq!(&b[21..26], b"alice");
    assert_eq!(&b[26..28], &1u16.to_be_bytes(), "payload type note");
    assert_eq!(&b[28..32], &16u32.to_be_bytes(), "payload length");
    assert_eq!(b[32], 1, "note payload version");
    assert_eq!(&b[33..37], &11u32.to_be_bytes(), "note text length");
    assert_eq!(&b[37..48], b"audit start");
    assert_eq!(&b[48..80], &[0u8; 32], "prev hash");
    assert_eq!(b.len(), 80);
    // entry hash = SHA-256(SHA-256(tag) || SHA-256(tag) || body), computed independently.
    // (with the independent `sha2` crate, not hashcore).
    use sha2::Digest as _;
    let tag = sha2::Sha256::digest(b"strategic-reserve/ledger/entry/v1");
    let h = sha2::Sha256::new()
        .chain_update(tag)
        .chain_update(tag)
        .chain_update(&b)
        .finalize();
    assert_eq!(h.as_slice(), e.entry_hash());
}

#[test]
fn kind_codes_are_stable() {
    let expected = [
        (Kind::VaultCreated, 1, "vault_created"),
        (Kind::AddressIssued, 2, "address_issued"),
        (Kind::DepositSeen, 3, "deposit_seen"),
        (Kind::SpendRequested, 4, "spend_requested"),
        (Kind::Approval, 5, "approval"),
        (Kind::Signature, 6, "signature"),
        (Kind::Broadcast, 7, "broadcast"),
        (Kind::Confirmation, 8, "confirmation"),
        (Kind::PolicyProposed, 9, "policy_proposed"),
        (Kind::PolicyActivated, 10, "policy_activated"),
        (Kind::KeyCeremony, 11, "key_ceremony"),
        (Kind::ReserveProof, 12, "reserve_proof"),
        (Kind::Checkpoint, 13, "checkpoint"),
        (Kind::OperatorNote, 14, "operator_note"),
        (Kind::ChainReorg, 15, "chain_reorg"),
        (Kind::Freeze, 16, "freeze"),
        (Kind::PolicyVetoed, 17, "policy_vetoed"),
    ];
    assert_eq!(Kind::ALL.len(), expected.len());
    for (k, code, name) in expected {
        assert_eq!(k.code(), code);
        assert_eq!(k.name(), name);
        assert_eq!(Kind::from_code(code), Some(k));
        assert_eq!(name.parse::<Kind>().unwrap(), k);
    }
    assert_eq!(Kind::from_code(0), None);
    assert_eq!(Kind::from_code(18), None);
    for (t, code) in [
        (PayloadType::Bytes, 0),
        (PayloadType::Note, 1),
        (PayloadType::Checkpoint, 2),
    ] {
        assert_eq!(t.code(), code);
        assert_eq!(PayloadType::from_code(code), Some(t));
    }
    assert_eq!(PayloadType::from_code(3), None);
}

#[test]
fn actor_validation() {
    assert_eq!(Actor::new(""), Err(EntryError::EmptyActor));
    assert_eq!(
        Actor::new("a".repeat(129)),
        Err(EntryError::ActorTooLong(129))
    );
    assert!(Actor::new("a".repeat(128)).is_ok());
    assert_eq!(Actor::new("bob\n"), Err(EntryError::ActorControlChar('\n')));
    assert_eq!(
        Actor::new("b\u{7f}"),
        Err(EntryError::ActorControlChar('\u{7f}'))
    );
    assert_eq!(
        Actor::new("b\u{85}"),
        Err(EntryError::ActorControlChar('\u{85}'))
    );
    assert!(Actor::new("officer:ジョン").is_ok());
}

#[test]
fn note_validation() {
    assert_eq!(NotePayload::new(""), Err(EntryError::EmptyNote));
    assert_eq!(
        NotePayload::new("a\u{0}"),
        Err(EntryError::NoteControlChar('\0'))
    );
    assert!(NotePayload::new("line 1\n\tline 2").is_ok());
    assert_eq!(
        NotePayload::new("x".repeat(65_537)),
        Err(EntryError::NoteTooLong(65_537))
    );
}

#[test]
fn kind_and_payload_type_must_agree() {
    let d = |kind, payload| EntryDraft {
        time_ms: T0,
        kind,
        actor: Actor::new("a").unwrap(),
        payload,
    };
    let note = Payload::note("hi").unwrap();
    let bytes = Payload::bytes(vec![1]).unwrap();
    let cp = Payload::checkpoint("x").unwrap();
    assert!(Entry::new(0, d(Kind::OperatorNote, bytes.clone()), [0; 32]).is_err());
    assert!(Entry::new(0, d(Kind::Checkpoint, note.clone()), [0; 32]).is_err());
    assert!(Entry::new(0, d(Kind::Approval, cp), [0; 32]).is_err());
    assert!(Entry::new(0, d(Kind::Approval, note), [0; 32]).is_ok());
    assert!(Entry::new(0, d(Kind::Approval, bytes), [0; 32]).is_ok());
}

#[test]
fn negative_time_is_rejected() {
    let r = Entry::new(0, EntryDraft::note(-1, "a", "b").unwrap(), [0; 32]);
    assert_eq!(r, Err(EntryError::NegativeTime(-1)));
}

fn record0() -> Vec<u8> {
    golden_entries()[0].encode_record()
}

#[test]
fn truncated_records_error_and_never_panic() {
    let rec = record0();
    for n in 0..rec.len() {
        let err = Entry::decode_record(&rec[..n]).unwrap_err();
        assert!(
            matches!(err, DecodeError::Truncated { .. }),
            "prefix {n}: {err}"
        );
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut rec = record0();
    rec.push(0);
    assert_eq!(
        Entry::decode_record(&rec),
        Err(DecodeError::TrailingBytes(1))
    );
    let mut body = golden_entries()[0].encode_body();
    body.push(7);
    assert_eq!(
        Entry::decode_body(&body),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn malformed_fields_are_rejected() {
    let rec = record0();
    let set = |off: usize, bytes: &[u8]| {
        let mut r = rec.clone();
        r[off..off + bytes.len()].copy_from_slice(bytes);
        Entry::decode_record(&r)
    };
    let e = set(0, &[2]).unwrap_err();
    assert!(
        matches!(e, DecodeError::UnsupportedVersion { found: 2, .. }),
        "{e}"
    );
    assert_eq!(e.to_string(), "unsupported entry version 2 (expected 1)");
    let e = set(9, &(-5i64).to_be_bytes()).unwrap_err();
    assert!(e.to_string().contains("negative"), "{e}");
    let e = set(17, &[0, 99]).unwrap_err();
    assert_eq!(e.to_string(), "invalid kind: unknown code 99");
    let e = set(19, &[0, 200]).unwrap_err();
    assert_eq!(e.to_string(), "actor length 200 exceeds the limit of 128");
    let e = set(21, b"\n").unwrap_err();
    assert!(e.to_string().contains("control character"), "{e}");
    let e = set(21, &[0xff]).unwrap_err();
    assert!(e.to_string().contains("not utf-8"), "{e}");
    let e = set(26, &[0, 9]).unwrap_err();
    assert_eq!(e.to_string(), "invalid payload type: unknown code 9");
    // Kind operator_note with an opaque payload: the payload type must agree with the kind.
    let e = set(26, &[0, 0]).unwrap_err();
    assert!(e.to_string().contains("cannot carry"), "{e}");
    let e = set(28, &[0x10, 0, 0, 1]).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::TooLong {
                field: "payload",
                ..
            }
        ),
        "{e}"
    );
    // Inner note payload: version byte and inner length.
    let e = set(32, &[9]).unwrap_err();
    assert!(
        e.to_string().contains("unsupported note payload version 9"),
        "{e}"
    );
    let e = set(33, &[0, 0, 0, 10]).unwrap_err();
    assert!(e.to_string().contains("trailing"), "{e}");
    let e = set(33, &[0, 0, 0, 12]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn the_hash_covers_every_field() {
    let base = golden_entries()[0].clone();
    let h = *base.entry_hash();
    let rec = base.encode_record();
    // Flip each body byte where the result still decodes: the hash must change.
    let body_len = rec.len() - 32;
    let mut decoded_variants = 0;
    for i in 0..body_len {
        let mut r = rec.clone();
        r[i] ^= 0x01;
        if let Ok(e) = Entry::decode_record(&r) {
            decoded_variants += 1;
            assert!(!e.check_hash(), "byte {i} is not covered by the hash");
            assert_ne!(e.compute_hash(), h);
        }
    }
    assert!(decoded_variants > 40, "{decoded_variants}");
}

fn arb_kind_payload() -> impl Strategy<Value = (Kind, Payload)> {
    prop_oneof![
        "[a-z \\n]{1,40}".prop_map(|t| (Kind::OperatorNote, Payload::note(t).unwrap())),
        "[ -~\\n]{0,80}".prop_map(|t| (Kind::Checkpoint, Payload::checkpoint(t).unwrap())),
        (1u16..=12, proptest::collection::vec(any::<u8>(), 0..200))
            .prop_map(|(k, b)| { (Kind::from_code(k).unwrap(), Payload::bytes(b).unwrap()) }),
    ]
}

proptest! {
    #[test]
    fn round_trip(
        seq in any::<u64>(),
        time in 0i64..=i64::MAX,
        actor in "[^\\p{C}]{1,32}",
        (kind, payload) in arb_kind_payload(),
        prev in any::<[u8; 32]>(),
    ) {
        prop_assume!(actor.len() <= 128);
        let e = Entry::new(seq, EntryDraft { time_ms: time, kind, actor: Actor::new(actor).unwrap(), payload }, prev).unwrap();
        let rec = e.encode_record();
        let d = Entry::decode_record(&rec).unwrap();
        prop_assert_eq!(&d, &e);
        prop_assert!(d.check_hash());
        // The streamed hash is the tagged hash of exactly the encoded body.
        let tagged = hashcore::TaggedHash::new("strategic-reserve/ledger/entry/v1");
        prop_assert_eq!(e.entry_hash(), &tagged.hash(&e.encode_body()));
        prop_assert_eq!(Entry::decode_body(&e.encode_body()).unwrap(), e);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Entry::decode_record(&bytes);
        let _ = Entry::decode_body(&bytes);
        let _ = NotePayload::decode(&bytes);
    }

    #[test]
    fn mutated_records_never_panic(i in 0usize..80, b in any::<u8>(), cut in 0usize..112) {
        let mut rec = record0();
        let i = i % rec.len();
        rec[i] = b;
        rec.truncate(cut.max(1));
        let _ = Entry::decode_record(&rec);
    }
}
