#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use bitcoin::hashes::Hash as _;
use bitcoin::{Amount, OutPoint, ScriptBuf, Txid};
use common::*;
use policies::approval::{sign, verify, Approval, ApprovalError, ApprovalSubject, Verdict};
use policies::PolicyHash;

fn fixture() -> (policies::Policy, ApprovalSubject) {
    let p = example();
    let s = subject(&p, "req-1", Amount::from_sat(250_000_000));
    (p, s)
}

#[test]
fn signed_approval_verifies() {
    let (p, s) = fixture();
    let a = sign(&s, "alice", &secret_of("alice"));
    let v = verify(&p, &s, &a, NOW, TIP).unwrap();
    assert_eq!(v.person, "alice");
    assert_eq!(v.decision, Verdict::Approve);
    assert_eq!(a.digest, s.digest());
    assert_eq!(a.pubkey, xonly_of("alice").serialize());

    let r = s.with_decision(Verdict::Reject);
    let ra = sign(&r, "bob", &secret_of("bob"));
    assert_eq!(
        verify(&p, &r, &ra, NOW, TIP).unwrap().decision,
        Verdict::Reject
    );
    assert_ne!(r.digest(), s.digest());
}

#[test]
fn digest_is_the_tagged_hash_of_the_canonical_bytes() {
    let (_, s) = fixture();
    let expect =
        hashcore::TaggedHash::new("strategic-reserve/approval/v1").hash(&s.canonical_bytes());
    assert_eq!(s.digest(), expect);
}

type Tamper = (&'static str, fn(&mut ApprovalSubject));

const TAMPERS: &[Tamper] = &[
    ("txid", |s| s.txid = Txid::from_byte_array([8; 32])),
    ("vault", |s| s.vault = "other".into()),
    ("input outpoint txid", |s| {
        s.inputs[0].0.txid = Txid::from_byte_array([3; 32])
    }),
    ("input outpoint vout", |s| s.inputs[1].0.vout = 4),
    ("input amount", |s| s.inputs[0].1 += Amount::from_sat(1)),
    ("input added", |s| {
        s.inputs.push((
            OutPoint::new(Txid::from_byte_array([5; 32]), 0),
            Amount::from_sat(1),
        ))
    }),
    ("input removed", |s| {
        s.inputs.pop();
    }),
    ("inputs reordered", |s| s.inputs.reverse()),
    ("output script", |s| {
        s.outputs[0].0 = ScriptBuf::from_bytes(vec![0x00, 0x14, 1, 2, 4])
    }),
    ("output amount", |s| s.outputs[0].1 += Amount::from_sat(1)),
    ("change amount", |s| s.outputs[1].1 -= Amount::from_sat(1)),
    ("output added", |s| {
        s.outputs.push((ScriptBuf::new(), Amount::ZERO))
    }),
    ("output removed", |s| {
        s.outputs.pop();
    }),
    ("outputs reordered", |s| s.outputs.reverse()),
    ("fee", |s| s.fee += Amount::from_sat(1)),
    ("policy hash", |s| s.policy = PolicyHash([9; 32])),
    ("decision", |s| s.decision = Verdict::Reject),
    ("expiry time", |s| s.expires_at_ms += 1),
    ("expiry height", |s| {
        s.expires_at_height = s.expires_at_height.map(|h| h + 1)
    }),
    ("expiry height removed", |s| s.expires_at_height = None),
    ("request id", |s| s.request_id = "req-2".into()),
];

#[test]
fn tampering_with_any_field_after_approval_is_refused() {
    let (p, s) = fixture();
    let a = sign(&s, "alice", &secret_of("alice"));
    for (what, tamper) in TAMPERS {
        let mut t = s.clone();
        tamper(&mut t);
        assert_ne!(t.digest(), s.digest(), "{what}: digest unchanged");
        let err = verify(&p, &t, &a, NOW, TIP).unwrap_err();
        let expected_kind = match *what {
            "policy hash" => matches!(err, ApprovalError::PolicyMismatch { .. }),
            "decision" => matches!(err, ApprovalError::DecisionMismatch { .. }),
            "request id" => matches!(err, ApprovalError::Replay { .. }),
            _ => err == ApprovalError::DigestMismatch,
        };
        assert!(expected_kind, "{what}: unexpected refusal {err}");
    }
}

#[test]
fn unknown_key_and_key_of_another_person_are_refused() {
    let (p, s) = fixture();
    let m = sign(&s, "mallory", &secret_of("mallory"));
    assert!(matches!(
        verify(&p, &s, &m, NOW, TIP),
        Err(ApprovalError::UnknownKey(_))
    ));
    // Mallory claims to be alice with her own key.
    let mut m2 = m.clone();
    m2.approver = "alice".into();
    assert!(matches!(
        verify(&p, &s, &m2, NOW, TIP),
        Err(ApprovalError::UnknownKey(_))
    ));
    // Bob signs and claims to be alice.
    let b = sign(&s, "alice", &secret_of("bob"));
    assert_eq!(
        verify(&p, &s, &b, NOW, TIP).unwrap_err(),
        ApprovalError::KeyNotOfPerson {
            approver: "alice".into(),
            owner: "bob".into()
        }
    );
    // Alice's key with bob's signature.
    let mut forged = sign(&s, "bob", &secret_of("bob"));
    forged.approver = "alice".into();
    forged.pubkey = xonly_of("alice").serialize();
    assert_eq!(
        verify(&p, &s, &forged, NOW, TIP).unwrap_err(),
        ApprovalError::BadSignature
    );
}

#[test]
fn bad_signature_is_refused() {
    let (p, s) = fixture();
    let mut a = sign(&s, "alice", &secret_of("alice"));
    a.signature[10] ^= 1;
    assert_eq!(
        verify(&p, &s, &a, NOW, TIP).unwrap_err(),
        ApprovalError::BadSignature
    );
    // A digest field swapped to the tampered subject's, signature unchanged.
    let mut t = s.clone();
    t.fee += Amount::from_sat(1);
    let mut b = sign(&s, "alice", &secret_of("alice"));
    b.digest = t.digest();
    assert_eq!(
        verify(&p, &t, &b, NOW, TIP).unwrap_err(),
        ApprovalError::BadSignature
    );
}

#[test]
fn expiry_by_time_and_by_height() {
    let (p, s) = fixture();
    let a = sign(&s, "alice", &secret_of("alice"));
    assert!(verify(&p, &s, &a, s.expires_at_ms - 1, TIP).is_ok());
    assert!(matches!(
        verify(&p, &s, &a, s.expires_at_ms, TIP),
        Err(ApprovalError::Expired { .. })
    ));
    let h = s.expires_at_height.unwrap();
    assert!(verify(&p, &s, &a, NOW, h - 1).is_ok());
    assert!(matches!(
        verify(&p, &s, &a, NOW, h),
        Err(ApprovalError::ExpiredHeight { .. })
    ));
}

#[test]
fn replay_on_another_request_is_refused() {
    let (p, s) = fixture();
    let a = sign(&s, "alice", &secret_of("alice"));
    let other = subject(&p, "req-2", Amount::from_sat(250_000_000));
    assert_eq!(
        verify(&p, &other, &a, NOW, TIP).unwrap_err(),
        ApprovalError::Replay {
            approved: "req-1".into(),
            request: "req-2".into()
        }
    );
    // Relabelled to the other request: the digest still names the first.
    let mut relabelled = a.clone();
    relabelled.request_id = "req-2".into();
    assert_eq!(
        verify(&p, &other, &relabelled, NOW, TIP).unwrap_err(),
        ApprovalError::DigestMismatch
    );
}

#[test]
fn subject_under_another_policy_version_is_refused() {
    let (_, s) = fixture();
    let a = sign(&s, "alice", &secret_of("alice"));
    let p2 = parse(&next_version(EXAMPLE));
    assert!(matches!(
        verify(&p2, &s, &a, NOW, TIP),
        Err(ApprovalError::PolicyMismatch { .. })
    ));
}

#[test]
fn approvals_round_trip_through_json() {
    let (p, s) = fixture();
    let a = sign(&s, "alice", &secret_of("alice"));
    let json = serde_json::to_string(&a).unwrap();
    assert!(json.contains("\"decision\":\"approve\""));
    assert!(json.contains(&hex::encode(a.signature)));
    let back: Approval = serde_json::from_str(&json).unwrap();
    assert_eq!(back, a);
    assert!(verify(&p, &s, &back, NOW, TIP).is_ok());
    let bad = json.replace(&hex::encode(a.pubkey), "abcd");
    assert!(serde_json::from_str::<Approval>(&bad).is_err());
}

#[test]
fn signing_is_deterministic() {
    let (_, s) = fixture();
    assert_eq!(
        sign(&s, "alice", &secret_of("alice")),
        sign(&s, "alice", &secret_of("alice"))
    );
}
