//! The reserve-proof subject: canonical encoding, strict parsing, PSBT terms, approvals and
//! the reserve-proof rule (`evaluate_proof`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use bitcoin::hashes::Hash as _;
use bitcoin::psbt::raw::ProprietaryKey;
use bitcoin::{Amount, Network, OutPoint, Psbt, Txid};
use common::*;
use policies::approval::{ApprovalError, Verdict};
use policies::evaluate::{
    evaluate_proof, Context, Decision, DenyReason, Ignored, ReceivedApproval,
};
use policies::proof::{
    outpoints_digest, verify_proof_approval, ProofSubject, ProofSubjectDocument, ProofTerms,
    SubjectError, TERMS_PREFIX, TERMS_SUBTYPE_EXPIRY, TERMS_SUBTYPE_REQUEST,
};
use policies::{Policy, PolicyHash};
use proptest::prelude::*;

const MESSAGE: &str = "strategic-reserve proof of reserves v1\nnetwork: regtest\nheight: 101\n";

fn op(b: u8, vout: u32) -> OutPoint {
    OutPoint::new(Txid::from_byte_array([b; 32]), vout)
}

fn terms(id: &str) -> ProofTerms {
    ProofTerms {
        request_id: id.into(),
        expires_at_ms: NOW + 3_600_000,
    }
}

fn subject(p: &Policy, id: &str) -> ProofSubject {
    ProofSubject::new(
        Network::Regtest,
        MESSAGE.as_bytes(),
        [op(1, 0), op(2, 3)],
        Amount::from_sat(150_000),
        &terms(id),
        p.hash(),
    )
    .unwrap()
}

fn approve(s: &ProofSubject, person: &str) -> ReceivedApproval {
    ReceivedApproval {
        approval: s.sign(person, &secret_of(person)),
        received_ms: NOW - 1000,
    }
}

fn ctx() -> Context {
    Context {
        now_ms: NOW,
        tip_height: TIP,
        frozen: false,
    }
}

#[test]
fn canonical_bytes_round_trip_and_outpoint_order_does_not_matter() {
    let p = example();
    let s = subject(&p, "por-1");
    let back = ProofSubject::from_canonical_bytes(&s.canonical_bytes()).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.digest(), s.digest());
    let reordered = ProofSubject::new(
        Network::Regtest,
        MESSAGE.as_bytes(),
        [op(2, 3), op(1, 0)],
        Amount::from_sat(150_000),
        &terms("por-1"),
        p.hash(),
    )
    .unwrap();
    assert_eq!(reordered.digest(), s.digest());
    // JSON round trip, strict about unknown fields.
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<ProofSubject>(&json).unwrap(), s);
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<ProofSubject>(v).is_err());
}

#[test]
fn parsing_is_strict() {
    let p = example();
    let good = subject(&p, "por-1").canonical_bytes();
    // Truncated anywhere, or a byte appended.
    for n in 0..good.len() {
        assert!(
            ProofSubject::from_canonical_bytes(&good[..n]).is_err(),
            "prefix {n}"
        );
    }
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        ProofSubject::from_canonical_bytes(&long),
        Err(SubjectError::Encoding(_))
    ));
    // Unknown version, network magic, decision; an amount above the supply.
    let mut b = good.clone();
    b[0] = 2;
    assert!(ProofSubject::from_canonical_bytes(&b).is_err());
    let mut b = good.clone();
    b[1] ^= 0xff;
    assert!(ProofSubject::from_canonical_bytes(&b).is_err());
    let mut b = good.clone();
    let dec = good.len() - 9;
    b[dec] = 3;
    assert!(ProofSubject::from_canonical_bytes(&b).is_err());
    let mut b = good.clone();
    b[69..77].copy_from_slice(&u64::MAX.to_be_bytes());
    assert!(matches!(
        ProofSubject::from_canonical_bytes(&b),
        Err(SubjectError::Amount(_))
    ));
}

#[test]
fn outpoint_sets_are_checked() {
    assert_eq!(outpoints_digest([]), Err(SubjectError::NoOutpoints));
    assert_eq!(
        outpoints_digest([op(1, 0), op(1, 0)]),
        Err(SubjectError::DuplicateOutpoint(op(1, 0)))
    );
    assert_ne!(
        outpoints_digest([op(1, 0)]).unwrap(),
        outpoints_digest([op(1, 1)]).unwrap()
    );
}

#[test]
fn terms_in_the_psbt_are_strict() {
    let tx = bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![],
        output: vec![],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    assert!(matches!(
        ProofTerms::from_psbt(&psbt),
        Err(SubjectError::Terms(_))
    ));
    let t = terms("por-7");
    t.write_to(&mut psbt).unwrap();
    assert_eq!(ProofTerms::from_psbt(&psbt).unwrap(), t);
    // Survives a serialization round trip.
    let again = Psbt::deserialize(&psbt.serialize()).unwrap();
    assert_eq!(ProofTerms::from_psbt(&again).unwrap(), t);
    // A malformed expiry, an unknown subtype, an invalid request id are refused.
    let key = |subtype| ProprietaryKey {
        prefix: TERMS_PREFIX.to_vec(),
        subtype,
        key: vec![],
    };
    let mut bad = psbt.clone();
    bad.proprietary
        .insert(key(TERMS_SUBTYPE_EXPIRY), vec![1, 2, 3]);
    assert!(ProofTerms::from_psbt(&bad).is_err());
    let mut bad = psbt.clone();
    bad.proprietary.insert(key(0x7f), vec![]);
    assert!(ProofTerms::from_psbt(&bad).is_err());
    let mut bad = psbt.clone();
    bad.proprietary
        .insert(key(TERMS_SUBTYPE_REQUEST), b"two words".to_vec());
    assert!(matches!(
        ProofTerms::from_psbt(&bad),
        Err(SubjectError::RequestId(_))
    ));
}

#[test]
fn the_document_recomputes_every_digest() {
    let p = example();
    let s = subject(&p, "por-1");
    let doc = ProofSubjectDocument::new(s.clone(), MESSAGE.into(), [op(2, 3), op(1, 0)]);
    assert_eq!(doc.check().unwrap(), &s);
    let json = serde_json::to_string(&doc).unwrap();
    let back: ProofSubjectDocument = serde_json::from_str(&json).unwrap();
    assert_eq!(back.check().unwrap(), &s);
    let mut other = doc.clone();
    other.message.push_str("statement: more\n");
    assert_eq!(other.check(), Err(SubjectError::Mismatch("message")));
    let mut other = doc.clone();
    other.outpoints.push(op(3, 0));
    assert_eq!(other.check(), Err(SubjectError::Mismatch("outpoints")));
    let mut other = doc;
    other.kind = "spend".into();
    assert_eq!(other.check(), Err(SubjectError::Mismatch("kind")));
}

#[test]
fn approvals_verify_only_for_their_subject() {
    let p = example();
    let s = subject(&p, "por-1");
    let a = s.sign("alice", &secret_of("alice"));
    assert_eq!(
        verify_proof_approval(&p, &s, &a, NOW).unwrap().person,
        "alice"
    );
    // Another proof request: a replay.
    let other = subject(&p, "por-2");
    assert!(matches!(
        verify_proof_approval(&p, &other, &a, NOW),
        Err(ApprovalError::Replay { .. })
    ));
    // The same request over other UTXOs, or another message: the digest differs.
    let mut utxos = s.clone();
    utxos.outpoints = outpoints_digest([op(1, 0)]).unwrap();
    assert_eq!(
        verify_proof_approval(&p, &utxos, &a, NOW),
        Err(ApprovalError::DigestMismatch)
    );
    let mut message = s.clone();
    message.commitment = [9; 32];
    assert_eq!(
        verify_proof_approval(&p, &message, &a, NOW),
        Err(ApprovalError::DigestMismatch)
    );
    // Expired, wrong person, tampered signature.
    assert!(matches!(
        verify_proof_approval(&p, &s, &a, s.expires_at_ms),
        Err(ApprovalError::Expired { .. })
    ));
    let mut wrong = a.clone();
    wrong.approver = "bob".into();
    assert!(matches!(
        verify_proof_approval(&p, &s, &wrong, NOW),
        Err(ApprovalError::KeyNotOfPerson { .. })
    ));
    let mut forged = a.clone();
    forged.signature[10] ^= 1;
    assert_eq!(
        verify_proof_approval(&p, &s, &forged, NOW),
        Err(ApprovalError::BadSignature)
    );
    // A proof approval is not a spend approval (distinct tags).
    let spend = common::subject(&p, "por-1", Amount::from_sat(150_000));
    assert_ne!(spend.digest(), s.digest());
}

#[test]
fn the_reserve_proof_rule_needs_k_distinct_members_of_proof_quorum() {
    let p = example();
    let s = subject(&p, "por-1");
    let k = p.group(p.proof_quorum()).unwrap().k;
    assert_eq!(k, 3);
    // Two officers and a repeated one: pending, one more needed.
    let ev = evaluate_proof(
        &p,
        &s,
        &[approve(&s, "alice"), approve(&s, "bob"), approve(&s, "bob")],
        &ctx(),
    );
    match &ev.decision {
        Decision::Pending { .. } => {}
        d => panic!("expected pending, got {d:?}"),
    }
    assert_eq!(ev.counted.len(), 2);
    assert!(ev
        .ignored
        .iter()
        .any(|(p, i)| p == "bob" && *i == Ignored::Repeated));
    // A non-member (the CFO) does not count.
    let ev = evaluate_proof(
        &p,
        &s,
        &[
            approve(&s, "alice"),
            approve(&s, "bob"),
            approve(&s, "frank"),
        ],
        &ctx(),
    );
    assert!(matches!(ev.decision, Decision::Pending { .. }));
    // Three officers: allowed, even while frozen (auditing goes on).
    let three = [
        approve(&s, "alice"),
        approve(&s, "bob"),
        approve(&s, "carol"),
    ];
    let frozen = Context {
        frozen: true,
        ..ctx()
    };
    let ev = evaluate_proof(&p, &s, &three, &frozen);
    assert!(matches!(ev.decision, Decision::Allow { .. }), "{ev:?}");
    assert_eq!(ev.counted.len(), 3);
    // Approvals of another proof do not count.
    let other = subject(&p, "por-2");
    let ev = evaluate_proof(&p, &other, &three, &ctx());
    assert!(matches!(ev.decision, Decision::Pending { .. }));
    assert_eq!(ev.counted.len(), 0);
    // A subject bound to another policy or expiring beyond the max age is denied.
    let mut foreign = s.clone();
    foreign.policy = PolicyHash([1; 32]);
    let ev = evaluate_proof(&p, &foreign, &[], &ctx());
    assert!(matches!(
        &ev.decision,
        Decision::Deny { reasons } if matches!(reasons[0], DenyReason::PolicyMismatch { .. })
    ));
    let mut late = s.clone();
    late.expires_at_ms = NOW + 365 * 86_400_000;
    let ev = evaluate_proof(&p, &late, &[], &ctx());
    assert!(matches!(ev.decision, Decision::Deny { .. }));
    // A reject subject is not something to approve.
    let ev = evaluate_proof(&p, &s.with_decision(Verdict::Reject), &[], &ctx());
    assert!(matches!(ev.decision, Decision::Deny { .. }));
}

fn arb_subject() -> impl Strategy<Value = ProofSubject> {
    (
        prop::sample::select(vec![
            Network::Bitcoin,
            Network::Testnet,
            Network::Signet,
            Network::Regtest,
        ]),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        0u64..=21_000_000 * 100_000_000,
        "[a-z0-9-]{1,40}",
        any::<[u8; 32]>(),
        any::<bool>(),
        any::<i64>(),
    )
        .prop_map(|(network, c, o, sat, id, pol, rej, exp)| ProofSubject {
            network,
            commitment: c,
            outpoints: o,
            amount: Amount::from_sat(sat),
            request_id: id,
            policy: PolicyHash(pol),
            decision: if rej {
                Verdict::Reject
            } else {
                Verdict::Approve
            },
            expires_at_ms: exp,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_subject_round_trips(s in arb_subject()) {
        let bytes = s.canonical_bytes();
        prop_assert_eq!(ProofSubject::from_canonical_bytes(&bytes).unwrap(), s);
    }

    #[test]
    fn any_change_of_a_field_changes_the_digest(s in arb_subject(), field in 0usize..8, bit in 0u8..8) {
        let mut t = s.clone();
        match field {
            0 => t.network = if s.network == Network::Regtest { Network::Signet } else { Network::Regtest },
            1 => t.commitment[usize::from(bit)] ^= 1 << bit,
            2 => t.outpoints[usize::from(bit) + 8] ^= 1 << bit,
            3 => t.amount = Amount::from_sat(s.amount.to_sat() ^ (1 << bit)),
            4 => t.request_id.push('x'),
            5 => t.policy.0[usize::from(bit)] ^= 1 << bit,
            6 => t.decision = if s.decision == Verdict::Approve { Verdict::Reject } else { Verdict::Approve },
            _ => t.expires_at_ms = s.expires_at_ms ^ (1 << bit),
        }
        prop_assert_ne!(t.digest(), s.digest());
        prop_assert_ne!(t.canonical_bytes(), s.canonical_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(s) = ProofSubject::from_canonical_bytes(&bytes) {
            prop_assert_eq!(s.canonical_bytes(), bytes);
        }
    }
}
