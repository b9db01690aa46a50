//! The chain, the Merkle log, embedded checkpoints and offline audits: tamper detection for
//! every field, proofs against checkpoints, malformed exports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use custody::ledger::{
    audit_consistency, audit_inclusion, audit_ledger, consistency_proof, entry_leaf_hashes,
    inclusion_proof, parse_json_lines, to_json_line, tree_root, verify_chain, Actor, AuditError,
    ChainFault, Checkpoint, CheckpointError, ConsistencyProofJson, Entry, EntryDraft,
    InclusionProofJson, KeyFileSigner, Kind, LedgerHead, Payload, ProofError, VerifierKey,
};
use proptest::prelude::*;

const ORIGIN: &str = "reserve.example/ledger";
const T0: i64 = 1_764_057_600_000;

fn signer() -> KeyFileSigner {
    KeyFileSigner::from_secret_bytes(&[0x42; 32]).unwrap()
}

fn vkey() -> VerifierKey {
    VerifierKey::of_signer(ORIGIN, &signer()).unwrap()
}

fn draft(i: u64) -> EntryDraft {
    if i.is_multiple_of(3) {
        EntryDraft::note(T0 + i as i64, "officer-1", &format!("note {i}")).unwrap()
    } else {
        EntryDraft {
            time_ms: T0 + i as i64,
            kind: Kind::DepositSeen,
            actor: Actor::new("sync").unwrap(),
            payload: Payload::bytes(i.to_be_bytes().to_vec()).unwrap(),
        }
    }
}

/// A log of `n` entries, with a signed checkpoint entry after every `every` entries (0: none).
fn log(n: u64, every: u64) -> (LedgerHead, Vec<Entry>) {
    let mut head = LedgerHead::genesis();
    let mut out = Vec::new();
    for i in 0..n {
        if every > 0 && i > 0 && head.size().is_multiple_of(every) {
            out.push(checkpoint_entry(&mut head));
        }
        out.push(head.append(draft(i)).unwrap());
    }
    (head, out)
}

fn checkpoint_entry(head: &mut LedgerHead) -> Entry {
    let note = head
        .checkpoint(ORIGIN, head.last_time_ms())
        .unwrap()
        .sign(&signer())
        .unwrap();
    head.append(EntryDraft {
        time_ms: head.last_time_ms(),
        kind: Kind::Checkpoint,
        actor: Actor::new("ledger").unwrap(),
        payload: Payload::checkpoint(note).unwrap(),
    })
    .unwrap()
}

fn note_of(head: &LedgerHead) -> String {
    head.checkpoint(ORIGIN, T0 + 1_000_000)
        .unwrap()
        .sign(&signer())
        .unwrap()
}

/// Rebuilds an entry with one field changed, keeping the stored hash (a tampered row).
fn with(e: &Entry, f: impl FnOnce(&mut Parts)) -> Entry {
    let mut p = Parts {
        seq: e.seq(),
        time_ms: e.time_ms(),
        kind: e.kind(),
        actor: e.actor().clone(),
        payload: e.payload().clone(),
        prev: *e.prev_hash(),
        hash: *e.entry_hash(),
    };
    f(&mut p);
    Entry::from_stored(p.seq, p.time_ms, p.kind, p.actor, p.payload, p.prev, p.hash).unwrap()
}

struct Parts {
    seq: u64,
    time_ms: i64,
    kind: Kind,
    actor: Actor,
    payload: Payload,
    prev: [u8; 32],
    hash: [u8; 32],
}

fn fault_at(entries: &[Entry]) -> (u64, ChainFault) {
    let e = verify_chain(entries, Some(&vkey())).unwrap_err();
    (e.seq, e.fault)
}

#[test]
fn appender_builds_a_linked_chain() {
    let (head, entries) = log(10, 0);
    assert_eq!(head.size(), 10);
    assert_eq!(head.next_seq(), 10);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq(), i as u64);
        assert!(e.check_hash());
        if i > 0 {
            assert_eq!(e.prev_hash(), entries[i - 1].entry_hash());
        }
    }
    assert_eq!(entries[0].prev_hash(), &[0u8; 32]);
    assert_eq!(head.last_hash(), entries[9].entry_hash());
    let v = verify_chain(&entries, None).unwrap();
    assert_eq!(v.head.size(), 10);
    assert_eq!(v.head.root(), head.root());
    assert_eq!(head.root(), tree_root(&entry_leaf_hashes(&entries)));
}

#[test]
fn appender_is_deterministic_and_batch_matches_single() {
    let (h1, e1) = log(25, 0);
    let mut h2 = LedgerHead::genesis();
    let e2 = h2.append_batch((0..25).map(draft)).unwrap();
    assert_eq!(e1, e2);
    assert_eq!(h1.root(), h2.root());
}

#[test]
fn failed_batch_leaves_the_head_unchanged() {
    let (mut head, _) = log(3, 0);
    let before = (head.size(), *head.last_hash(), head.root());
    let mut bad = draft(4);
    bad.kind = Kind::OperatorNote; // with an opaque payload: not allowed
    let r = head.append_batch(vec![draft(3), bad]);
    assert!(r.is_err());
    assert_eq!((head.size(), *head.last_hash(), head.root()), before);
}

#[test]
fn clock_going_back_is_clamped() {
    let mut head = LedgerHead::genesis();
    head.append(EntryDraft::note(T0, "a", "x").unwrap())
        .unwrap();
    let e = head
        .append(EntryDraft::note(T0 - 5, "a", "y").unwrap())
        .unwrap();
    assert_eq!(e.time_ms(), T0);
}

#[test]
fn empty_log_root_is_sha256_of_nothing() {
    assert_eq!(LedgerHead::genesis().root(), hashcore::sha256(b""));
    assert_eq!(verify_chain(&[], None).unwrap().head.size(), 0);
}

#[test]
fn head_round_trips_through_parts() {
    for n in [0, 1, 2, 3, 7, 8, 33] {
        let (head, entries) = log(n, 0);
        let back = LedgerHead::from_parts(
            head.size(),
            *head.last_hash(),
            head.last_time_ms(),
            head.frontier(),
        )
        .unwrap();
        assert_eq!(back.root(), head.root(), "n={n}");
        let mut a = back.clone();
        let mut b = head.clone();
        assert_eq!(a.append(draft(n)).unwrap(), b.append(draft(n)).unwrap());
        assert_eq!(a.root(), b.root());
        assert_eq!(
            LedgerHead::from_entries(&entries).unwrap().root(),
            head.root()
        );
    }
    assert!(LedgerHead::from_parts(5, [0; 32], 0, vec![]).is_err());
}

#[test]
fn tampered_payload_byte_is_named() {
    let (_, mut entries) = log(10, 4);
    let mut bytes = entries[5].payload().as_bytes().to_vec();
    bytes[3] ^= 0x40;
    let p = Payload::new(entries[5].payload().payload_type(), bytes).unwrap();
    entries[5] = with(&entries[5], |x| x.payload = p);
    let (seq, fault) = fault_at(&entries);
    assert_eq!(seq, 5);
    assert!(matches!(fault, ChainFault::HashMismatch { .. }), "{fault}");
}

#[test]
fn every_field_is_covered() {
    let (_, entries) = log(6, 0);
    let i = 4;
    let cases: Vec<(&str, Entry)> = vec![
        ("time", with(&entries[i], |x| x.time_ms += 1)),
        ("kind", with(&entries[i], |x| x.kind = Kind::Broadcast)),
        (
            "actor",
            with(&entries[i], |x| x.actor = Actor::new("mallory").unwrap()),
        ),
        (
            "payload",
            with(&entries[i], |x| {
                x.payload = Payload::bytes(vec![9]).unwrap()
            }),
        ),
        ("prev", with(&entries[i], |x| x.prev[0] ^= 1)),
        ("hash", with(&entries[i], |x| x.hash[31] ^= 1)),
    ];
    for (field, e) in cases {
        let mut t = entries.clone();
        t[i] = e;
        let (seq, fault) = fault_at(&t);
        assert_eq!(seq, i as u64, "{field}");
        assert!(
            matches!(fault, ChainFault::HashMismatch { .. }),
            "{field}: {fault}"
        );
    }
}

#[test]
fn rehashed_tamper_breaks_the_next_link() {
    // An attacker who recomputes the altered entry's hash breaks the next entry's prev link.
    let (_, mut entries) = log(6, 0);
    let e = &entries[2];
    let forged = Entry::new(
        2,
        EntryDraft {
            time_ms: e.time_ms(),
            kind: e.kind(),
            actor: Actor::new("mallory").unwrap(),
            payload: e.payload().clone(),
        },
        *e.prev_hash(),
    )
    .unwrap();
    entries[2] = forged;
    let (seq, fault) = fault_at(&entries);
    assert_eq!(seq, 3);
    assert!(matches!(fault, ChainFault::PrevMismatch { .. }), "{fault}");
    assert!(fault.to_string().starts_with("prev hash mismatch"));
}

#[test]
fn seq_gap_is_named() {
    let (_, mut entries) = log(10, 0);
    entries.remove(6);
    let (seq, fault) = fault_at(&entries);
    assert_eq!(seq, 6);
    assert_eq!(
        fault,
        ChainFault::Missing {
            expected: 6,
            found: 7
        }
    );
    assert_eq!(
        verify_chain(&entries, None).unwrap_err().to_string(),
        "first bad seq 6: missing: expected seq 6, found seq 7"
    );
}

#[test]
fn swapped_and_duplicated_entries_are_named() {
    let (_, entries) = log(10, 0);
    let mut swapped = entries.clone();
    swapped.swap(3, 4);
    assert_eq!(
        fault_at(&swapped),
        (
            3,
            ChainFault::OutOfOrder {
                expected: 3,
                found: 4
            }
        )
    );
    let mut dup = entries.clone();
    dup.insert(5, entries[4].clone());
    assert_eq!(
        fault_at(&dup),
        (
            5,
            ChainFault::OutOfOrder {
                expected: 5,
                found: 4
            }
        )
    );
    let mut first_missing = entries.clone();
    first_missing.remove(0);
    assert_eq!(fault_at(&first_missing).0, 0);
}

#[test]
fn time_going_back_is_named() {
    let mut head = LedgerHead::genesis();
    let e0 = head
        .append(EntryDraft::note(T0, "a", "x").unwrap())
        .unwrap();
    let e1 = Entry::new(
        1,
        EntryDraft::note(T0 - 1, "a", "y").unwrap(),
        *e0.entry_hash(),
    )
    .unwrap();
    let (seq, fault) = fault_at(&[e0, e1]);
    assert_eq!(seq, 1);
    assert_eq!(
        fault,
        ChainFault::TimeWentBack {
            previous: T0,
            found: T0 - 1
        }
    );
}

#[test]
fn embedded_checkpoints_verify() {
    let (_, entries) = log(20, 5);
    let v = verify_chain(&entries, Some(&vkey())).unwrap();
    let n = entries
        .iter()
        .filter(|e| e.kind() == Kind::Checkpoint)
        .count();
    assert_eq!(n, 4);
    assert_eq!(v.checkpoints.len(), n);
    for cp in &v.checkpoints {
        assert_eq!(cp.origin(), ORIGIN);
    }
    // Without a key, structure and roots are still checked.
    assert_eq!(verify_chain(&entries, None).unwrap().checkpoints.len(), n);
}

fn replace_checkpoint(entries: &mut [Entry], at: usize, note: String) {
    // A well-formed (rehashed) checkpoint entry whose note is wrong, relinked after it.
    let e = &entries[at];
    let forged = Entry::new(
        e.seq(),
        EntryDraft {
            time_ms: e.time_ms(),
            kind: Kind::Checkpoint,
            actor: e.actor().clone(),
            payload: Payload::checkpoint(note).unwrap(),
        },
        *e.prev_hash(),
    )
    .unwrap();
    entries[at] = forged;
    let mut head = LedgerHead::from_entries(&entries[..=at]).unwrap();
    for e in entries[at + 1..].iter_mut() {
        *e = head
            .append(EntryDraft {
                time_ms: e.time_ms(),
                kind: e.kind(),
                actor: e.actor().clone(),
                payload: e.payload().clone(),
            })
            .unwrap();
    }
}

#[test]
fn bad_embedded_checkpoints_are_named() {
    let (_, entries) = log(12, 5);
    let at = entries
        .iter()
        .position(|e| e.kind() == Kind::Checkpoint)
        .unwrap();
    let seq = entries[at].seq();
    let root = LedgerHead::from_entries(&entries[..at]).unwrap().root();

    let other = KeyFileSigner::from_secret_bytes(&[1; 32]).unwrap();
    let by_other = Checkpoint::new(ORIGIN, seq, root, T0)
        .unwrap()
        .sign(&other)
        .unwrap();
    let mut t = entries.clone();
    replace_checkpoint(&mut t, at, by_other);
    let (s, f) = fault_at(&t);
    assert_eq!(s, seq);
    assert!(
        matches!(
            f,
            ChainFault::Checkpoint(CheckpointError::NoSignatureFromKey { .. })
        ),
        "{f}"
    );

    let wrong_root = Checkpoint::new(ORIGIN, seq, [7; 32], T0)
        .unwrap()
        .sign(&signer())
        .unwrap();
    let mut t = entries.clone();
    replace_checkpoint(&mut t, at, wrong_root);
    let (s, f) = fault_at(&t);
    assert_eq!(s, seq);
    assert!(matches!(f, ChainFault::CheckpointRoot { .. }), "{f}");

    let wrong_size = Checkpoint::new(ORIGIN, seq - 1, root, T0)
        .unwrap()
        .sign(&signer())
        .unwrap();
    let mut t = entries.clone();
    replace_checkpoint(&mut t, at, wrong_size);
    assert_eq!(
        fault_at(&t),
        (seq, ChainFault::CheckpointSize { size: seq - 1, seq })
    );

    let mut t = entries.clone();
    replace_checkpoint(&mut t, at, "garbage".into());
    let (s, f) = fault_at(&t);
    assert_eq!(s, seq);
    assert!(
        matches!(f, ChainFault::Checkpoint(CheckpointError::MissingSeparator)),
        "{f}"
    );
}

#[test]
fn audit_passes_on_an_intact_log() {
    let (head, entries) = log(30, 7);
    let note = note_of(&head);
    let r = audit_ledger(&entries, &note, &vkey()).unwrap();
    assert_eq!(r.entries, head.size());
    assert_eq!(r.root, head.root());
    assert_eq!(r.embedded_checkpoints, 4);
    assert_eq!(
        r.to_string(),
        format!(
            "ok: {} entries, root {}",
            head.size(),
            hex::encode(head.root())
        )
    );
    // A checkpoint of an earlier size is fine too: the log grew after it.
    let early = LedgerHead::from_entries(&entries[..10]).unwrap();
    let r = audit_ledger(&entries, &note_of(&early), &vkey()).unwrap();
    assert_eq!(r.checkpoint.size(), 10);
    assert_eq!(r.entries, head.size());
}

#[test]
fn audit_detects_a_deleted_tail_behind_a_checkpoint() {
    let (head, entries) = log(30, 7);
    let note = note_of(&head);
    let cut = &entries[..entries.len() - 3];
    let e = audit_ledger(cut, &note, &vkey()).unwrap_err();
    let n = entries.len() as u64;
    assert_eq!(
        e,
        AuditError::Truncated {
            size: n,
            entries: n - 3
        }
    );
    assert!(
        e.to_string().contains(&format!("first bad seq {}", n - 3)),
        "{e}"
    );
}

#[test]
fn audit_detects_a_rewritten_history() {
    // A consistent chain that is not the one the checkpoint signed.
    let (head, entries) = log(10, 0);
    let note = note_of(&head);
    let mut other = LedgerHead::genesis();
    let rewritten: Vec<Entry> = (0..10)
        .map(|i| {
            other
                .append(EntryDraft::note(T0, "mallory", &format!("{i}")).unwrap())
                .unwrap()
        })
        .collect();
    let e = audit_ledger(&rewritten, &note, &vkey()).unwrap_err();
    assert!(
        matches!(e, AuditError::RootMismatch { size: 10, .. }),
        "{e}"
    );
    let _ = entries;
}

#[test]
fn audit_rejects_forged_and_foreign_checkpoints() {
    let (head, entries) = log(10, 0);
    let note = note_of(&head);
    let forged = note.replacen("\n10\n", "\n11\n", 1);
    assert_eq!(
        audit_ledger(&entries, &forged, &vkey()).unwrap_err(),
        AuditError::Checkpoint(CheckpointError::BadSignature(ORIGIN.into()))
    );
    let foreign = head
        .checkpoint("other.example/log", T0)
        .unwrap()
        .sign(&signer())
        .unwrap();
    let e = audit_ledger(&entries, &foreign, &vkey()).unwrap_err();
    assert!(
        matches!(
            e,
            AuditError::Checkpoint(CheckpointError::OriginMismatch { .. })
        ),
        "{e}"
    );
}

#[test]
fn audit_names_the_first_bad_seq() {
    let (head, mut entries) = log(10, 0);
    let note = note_of(&head);
    entries[7] = with(&entries[7], |x| x.time_ms += 1);
    let e = audit_ledger(&entries, &note, &vkey()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("first bad seq 7: entry hash mismatch"),
        "{e}"
    );
}

#[test]
fn inclusion_proofs_verify_against_checkpoints() {
    let (_, entries) = log(13, 0);
    let leaves = entry_leaf_hashes(&entries);
    for size in 1..=13u64 {
        let head = LedgerHead::from_entries(&entries[..size as usize]).unwrap();
        let note = note_of(&head);
        for seq in 0..size {
            let p = inclusion_proof(&leaves, seq, size).unwrap();
            let json = InclusionProofJson::new(&p, entries[seq as usize].entry_hash());
            let back = InclusionProofJson::parse(&json.to_json()).unwrap();
            let cp = audit_inclusion(Some(&entries[seq as usize]), &back, &note, &vkey()).unwrap();
            assert_eq!(cp.size(), size);
        }
    }
}

#[test]
fn bad_inclusion_proofs_fail() {
    let (head, entries) = log(9, 0);
    let leaves = entry_leaf_hashes(&entries);
    let note = note_of(&head);
    let p = inclusion_proof(&leaves, 4, 9).unwrap();
    let good = InclusionProofJson::new(&p, entries[4].entry_hash());
    // Another entry under this proof.
    let e = audit_inclusion(Some(&entries[5]), &good, &note, &vkey()).unwrap_err();
    assert!(matches!(e, AuditError::ProofMismatch(_)), "{e}");
    // A modified path element.
    let mut bad = good.clone();
    bad.path[1] = hex::encode([0u8; 32]);
    let e = audit_inclusion(None, &bad, &note, &vkey()).unwrap_err();
    assert!(matches!(e, AuditError::ProofFailed(_)), "{e}");
    // A tampered entry (content no longer matches its hash).
    let tampered = with(&entries[4], |x| x.time_ms += 1);
    let e = audit_inclusion(Some(&tampered), &good, &note, &vkey()).unwrap_err();
    assert!(e.to_string().contains("entry hash mismatch"), "{e}");
    // A proof for another tree size than the checkpoint.
    let p8 = inclusion_proof(&leaves, 4, 8).unwrap();
    let e = audit_inclusion(
        None,
        &InclusionProofJson::new(&p8, entries[4].entry_hash()),
        &note,
        &vkey(),
    )
    .unwrap_err();
    assert!(matches!(e, AuditError::ProofMismatch(_)), "{e}");
    // Malformed JSON.
    assert!(matches!(
        InclusionProofJson::parse("{\"seq\":1}").unwrap_err(),
        AuditError::Json { .. }
    ));
    let mut badhex = good.clone();
    badhex.path[0] = "zz".into();
    assert!(matches!(
        audit_inclusion(None, &badhex, &note, &vkey()).unwrap_err(),
        AuditError::Json { .. }
    ));
}

#[test]
fn proofs_beyond_the_log_are_clear_errors() {
    let (_, entries) = log(5, 0);
    let leaves = entry_leaf_hashes(&entries);
    assert_eq!(
        inclusion_proof(&leaves, 1, 6).unwrap_err(),
        ProofError::SizeBeyondLog { size: 6, len: 5 }
    );
    assert_eq!(
        inclusion_proof(&leaves, 5, 5).unwrap_err(),
        ProofError::SeqBeyondSize { seq: 5, size: 5 }
    );
    assert_eq!(
        consistency_proof(&leaves, 2, 9).unwrap_err().to_string(),
        "tree size 9 is beyond the log, which has 5 entries"
    );
    assert_eq!(
        consistency_proof(&leaves, 4, 3).unwrap_err(),
        ProofError::OldAboveNew { old: 4, new: 3 }
    );
}

#[test]
fn consistency_proofs_verify_between_checkpoints() {
    let (_, entries) = log(11, 0);
    let leaves = entry_leaf_hashes(&entries);
    let notes: Vec<String> = (0..=11)
        .map(|n| note_of(&LedgerHead::from_entries(&entries[..n]).unwrap()))
        .collect();
    for new in 1..=11u64 {
        for old in 1..=new {
            let p = consistency_proof(&leaves, old, new).unwrap();
            let json =
                ConsistencyProofJson::parse(&ConsistencyProofJson::new(&p).to_json()).unwrap();
            let (o, n) =
                audit_consistency(&json, &notes[old as usize], &notes[new as usize], &vkey())
                    .unwrap();
            assert_eq!((o.size(), n.size()), (old, new));
        }
    }
    // A forked log is not consistent with the original.
    let mut fork = LedgerHead::from_entries(&entries[..6]).unwrap();
    for i in 0..5 {
        fork.append(EntryDraft::note(T0 + 100, "mallory", &format!("fork {i}")).unwrap())
            .unwrap();
    }
    let p = consistency_proof(&leaves, 8, 11).unwrap();
    let e = audit_consistency(
        &ConsistencyProofJson::new(&p),
        &notes[8],
        &note_of(&fork),
        &vkey(),
    )
    .unwrap_err();
    assert!(matches!(e, AuditError::ProofFailed(_)), "{e}");
    // Sizes that do not match the checkpoints.
    let e = audit_consistency(
        &ConsistencyProofJson::new(&p),
        &notes[7],
        &notes[11],
        &vkey(),
    )
    .unwrap_err();
    assert!(matches!(e, AuditError::ProofMismatch(_)), "{e}");
}

#[test]
fn json_lines_round_trip() {
    let (head, entries) = log(15, 4);
    let text: String = entries.iter().map(|e| to_json_line(e) + "\n").collect();
    let back = parse_json_lines(&text).unwrap();
    assert_eq!(back, entries);
    assert!(audit_ledger(&back, &note_of(&head), &vkey()).is_ok());
}

#[test]
fn malformed_exports_name_the_line() {
    let (_, entries) = log(3, 0);
    let lines: Vec<String> = entries.iter().map(to_json_line).collect();
    let cases = [
        (
            lines[1].replace("\"seq\":1", "\"seq\":\"1\""),
            "invalid type",
        ),
        (
            lines[1].replace("deposit_seen", "deposit_stolen"),
            "unknown kind",
        ),
        (
            lines[1].replace("\"payload_type\":\"bytes\"", "\"payload_type\":\"x\""),
            "unknown payload type",
        ),
        (
            lines[1].replace("\"actor\":\"sync\"", "\"actor\":\"\""),
            "actor is empty",
        ),
        (
            lines[1].replace("\"prev_hash\":\"", "\"prev_hash\":\"00"),
            "prev_hash",
        ),
        (lines[1].replace('}', ",\"extra\":1}"), "unknown field"),
        ("{not json".to_owned(), "key must be a string"),
        (
            lines[1].replace("\"time_ms\":", "\"time_ms\":-"),
            "negative",
        ),
    ];
    for (bad, want) in cases {
        let text = format!("{}\n{}\n{}\n", lines[0], bad, lines[2]);
        let e = parse_json_lines(&text).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("export line 2: "), "{s}");
        assert!(s.contains(want), "{s} does not mention {want}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_single_byte_tamper_is_caught_at_its_seq(
        n in 2u64..24, pick in any::<prop::sample::Index>(), bit in 0u8..8, which in any::<prop::sample::Index>(),
    ) {
        let (_, mut entries) = log(n, 5);
        let i = pick.index(entries.len());
        let e = entries[i].clone();
        // Flip one bit anywhere in the record; if it still decodes, the chain must fail at i.
        let mut rec = e.encode_record();
        let j = which.index(rec.len());
        rec[j] ^= 1 << bit;
        if let Ok(t) = Entry::decode_record(&rec) {
            entries[i] = t;
            let err = verify_chain(&entries, Some(&vkey())).unwrap_err();
            // A changed seq is reported where the order breaks; everything else at i.
            prop_assert!(err.seq == e.seq(), "tamper at {} byte {}: {}", i, j, err);
        }
    }
}
