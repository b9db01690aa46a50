#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The spend-request state machine against the example policy.

use std::str::FromStr;

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::SecretKey;
use bitcoin::transaction::Version;
use bitcoin::{
    Address, Amount, FeeRate, Network, OutPoint, Psbt, ScriptBuf, Sequence, Transaction, TxIn,
    TxOut, Txid, WScriptHash, Witness,
};
use custody::ledger::Kind;
use custody::request::{Cause, Event, NewRequest, RequestError, SpendRequest, State, Transition};
use policies::approval::{sign, Approval, ApprovalError, ApprovalSubject, Verdict};
use policies::evaluate::{Context, DenyReason, Missing};
use policies::Policy;
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
const NOW: i64 = 1_800_000_000_000;
const TIP: u32 = 900_000;
const HOUR: i64 = 3_600_000;
/// Cold storage A (allowlisted).
const DEST: &str = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
const NOT_ALLOWLISTED: &str = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2";
const FEE: u64 = 50_000;

/// Persons of the example policy and the byte their fixed secret key repeats.
const PERSONS: &[(&str, u8)] = &[
    ("alice", 1),
    ("bob", 2),
    ("carol", 3),
    ("dave", 4),
    ("erin", 5),
    ("frank", 6),
    ("grace", 7),
    ("heidi", 8),
    ("ivan", 9),
    ("judy", 10),
    ("mallory", 11),
];

fn secret_of(person: &str) -> SecretKey {
    let b = PERSONS.iter().find(|(p, _)| *p == person).unwrap().1;
    SecretKey::from_slice(&[b; 32]).unwrap()
}

fn policy() -> Policy {
    Policy::from_toml(EXAMPLE).unwrap()
}

fn ctx(now_ms: i64) -> Context {
    Context {
        now_ms,
        tip_height: TIP + 1,
        frozen: false,
    }
}

fn script_of(addr: &str) -> ScriptBuf {
    Address::from_str(addr)
        .unwrap()
        .assume_checked()
        .script_pubkey()
}

fn change_script() -> ScriptBuf {
    ScriptBuf::new_p2wsh(&WScriptHash::from_byte_array([9; 32]))
}

/// One input paying `amount` to `dest`, the change and `fee`.
fn psbt(amount: Amount, dest: &str, fee: u64, lock: u32) -> Psbt {
    // The input is fixed; a higher fee (a bump) comes out of the change.
    let input_value = amount + Amount::from_sat(100_000_000 + FEE);
    let change = input_value - amount - Amount::from_sat(fee);
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::from_consensus(lock),
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([1; 32]), 0),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            ..TxIn::default()
        }],
        output: vec![
            TxOut {
                value: amount,
                script_pubkey: script_of(dest),
            },
            TxOut {
                value: change,
                script_pubkey: change_script(),
            },
        ],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    psbt.inputs[0].witness_utxo = Some(TxOut {
        value: input_value,
        script_pubkey: change_script(),
    });
    psbt
}

fn new_request_with(
    policy: &Policy,
    id: &str,
    amount: Amount,
    dest: &str,
    fee: u64,
    replaces: Option<&str>,
) -> SpendRequest {
    let (expires_at_ms, expires_at_height) = ApprovalSubject::max_expiry(policy, NOW, TIP);
    SpendRequest::new(NewRequest {
        id: id.into(),
        vault: "main".into(),
        initiator: "dave".into(),
        created_ms: NOW,
        created_height: TIP,
        psbt: psbt(amount, dest, fee, 0),
        network: Network::Bitcoin,
        change_scripts: vec![change_script()],
        fee_rate: FeeRate::from_sat_per_vb(20).unwrap(),
        requested_fee_rate: Some(FeeRate::from_sat_per_vb(20).unwrap()),
        policy: policy.hash(),
        expires_at_ms,
        expires_at_height,
        confirmations_required: 3,
        replaces: replaces.map(str::to_owned),
    })
    .unwrap()
}

fn new_request(policy: &Policy, id: &str, amount: Amount) -> SpendRequest {
    new_request_with(policy, id, amount, DEST, FEE, None)
}

fn approve(req: &SpendRequest, person: &str) -> Approval {
    sign(&req.subject, person, &secret_of(person))
}

fn btc(n: u64) -> Amount {
    Amount::from_sat(n * 100_000_000)
}

/// The signed transaction: the unsigned one with a witness (same txid).
fn signed_tx(req: &SpendRequest) -> Transaction {
    let mut tx = req.psbt.unsigned_tx.clone();
    tx.input[0].witness = Witness::from_slice(&[vec![1u8; 72], vec![2u8; 71]]);
    tx
}

fn step(req: &mut SpendRequest, p: &Policy, e: Event, now: i64) -> Vec<Transition> {
    req.apply(p, e, &ctx(now), &[]).unwrap()
}

fn assert_all_drafts(req: &SpendRequest) {
    for t in &req.transitions {
        let d = t.ledger_draft().unwrap();
        assert_eq!(d.kind, t.kind());
        assert_eq!(d.time_ms, t.at_ms);
    }
}

/// A request brought to `target` (one of the non-terminal states), small tier.
fn at_state(p: &Policy, target: &State) -> SpendRequest {
    let mut r = new_request(p, "r1", btc(1) / 2);
    if *target == State::Created {
        return r;
    }
    step(&mut r, p, Event::Submit, NOW + 1);
    if *target == State::PendingApproval {
        return r;
    }
    let a = approve(&r, "alice");
    step(&mut r, p, Event::AddApproval(a), NOW + 2);
    assert_eq!(r.state, State::ReadyToSign);
    if *target == State::ReadyToSign {
        return r;
    }
    let tx = signed_tx(&r);
    step(&mut r, p, Event::Finalized { tx }, NOW + 3);
    if *target == State::Finalized {
        return r;
    }
    step(&mut r, p, Event::Broadcast, NOW + 4);
    assert_eq!(r.state, *target);
    r
}

#[test]
fn small_tier_happy_path_to_confirmed() {
    let p = policy();
    let mut r = new_request(&p, "r-small", btc(1) / 2);
    assert_eq!(r.state, State::Created);
    assert_eq!(r.amount, btc(1) / 2);
    assert_eq!(r.subject.fee, Amount::from_sat(FEE));
    assert_eq!(r.txid, r.psbt.unsigned_tx.compute_txid());

    let ts = step(&mut r, &p, Event::Submit, NOW + 1);
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].from, State::Created);
    assert_eq!(ts[0].to, State::PendingApproval);
    assert_eq!(ts[0].kind(), Kind::SpendRequested);
    assert!(matches!(ts[0].missing[0], Missing::Approvals { .. }));
    assert_eq!(r.state, State::PendingApproval);

    let a = approve(&r, "alice");
    let ts = step(&mut r, &p, Event::AddApproval(a), NOW + 1_000);
    let path: Vec<_> = ts.iter().map(|t| t.to.clone()).collect();
    assert_eq!(
        path,
        vec![State::PendingApproval, State::Approved, State::ReadyToSign]
    );
    assert_eq!(ts[0].kind(), Kind::Approval);
    assert_eq!(ts[0].actor(), "alice");
    assert_eq!(ts[2].kind(), Kind::Signature);
    assert_eq!(r.ready_at_ms, Some(NOW + 1_000));

    let tx = signed_tx(&r);
    let ts = step(&mut r, &p, Event::Finalized { tx }, NOW + 2_000);
    assert_eq!(ts[0].to, State::Finalized);
    assert_eq!(ts[0].kind(), Kind::Signature);
    let ts = step(&mut r, &p, Event::Broadcast, NOW + 3_000);
    assert_eq!(ts[0].kind(), Kind::Broadcast);
    assert_eq!(r.state, State::Broadcast);

    let ts = step(&mut r, &p, Event::Confirmations(1), NOW + 4_000);
    assert_eq!(ts[0].to, State::Broadcast);
    assert_eq!(ts[0].kind(), Kind::Confirmation);
    // The same count again records nothing.
    assert!(step(&mut r, &p, Event::Confirmations(1), NOW + 4_500).is_empty());
    let ts = step(&mut r, &p, Event::Confirmations(3), NOW + 5_000);
    assert_eq!(ts[0].to, State::Confirmed);
    assert_eq!(ts[0].kind(), Kind::Confirmation);
    assert_eq!(r.state, State::Confirmed);
    assert!(r.state.is_terminal());
    assert_all_drafts(&r);
    assert_eq!(r.transitions.len(), 8);
}

#[test]
fn medium_tier_needs_two_duty_officers() {
    let p = policy();
    let mut r = new_request(&p, "r-medium", btc(10));
    step(&mut r, &p, Event::Submit, NOW + 1);
    let a = approve(&r, "alice");
    let ts = step(&mut r, &p, Event::AddApproval(a), NOW + 10);
    assert_eq!(ts.len(), 1);
    assert_eq!(r.state, State::PendingApproval);
    match &ts[0].missing[0] {
        Missing::Approvals { alternatives } => {
            assert_eq!(alternatives[0][0].group, "duty-officers");
            assert_eq!(alternatives[0][0].more, 1);
        }
        m => panic!("unexpected {m:?}"),
    }
    // Officers outside the duty group do not count.
    let e = approve(&r, "erin");
    step(&mut r, &p, Event::AddApproval(e), NOW + 15);
    assert_eq!(r.state, State::PendingApproval);
    let b = approve(&r, "bob");
    step(&mut r, &p, Event::AddApproval(b), NOW + 20);
    assert_eq!(r.state, State::ReadyToSign);
    assert_all_drafts(&r);
}

#[test]
fn large_tier_waits_its_delay() {
    let p = policy();
    let mut r = new_request(&p, "r-large", btc(60));
    step(&mut r, &p, Event::Submit, NOW + 1);
    let a = approve(&r, "alice");
    let ts = step(&mut r, &p, Event::AddApproval(a), NOW + 10);
    assert!(ts[0]
        .missing
        .contains(&Missing::DelayAfterQuorum { secs: 86_400 }));
    for (i, who) in ["bob", "carol"].iter().enumerate() {
        let a = approve(&r, who);
        step(&mut r, &p, Event::AddApproval(a), NOW + 20 + i as i64);
        assert_eq!(r.state, State::PendingApproval);
    }
    let quorum = NOW + HOUR;
    let f = approve(&r, "frank");
    let ts = step(&mut r, &p, Event::AddApproval(f), quorum);
    let path: Vec<_> = ts.iter().map(|t| t.to.clone()).collect();
    assert_eq!(
        path,
        vec![
            State::PendingApproval,
            State::Approved,
            State::WaitingForDelay
        ]
    );
    let ready = quorum + 24 * HOUR;
    assert_eq!(r.ready_at_ms, Some(ready));

    // Too early: finalizing is illegal, reevaluating changes nothing.
    let tx = signed_tx(&r);
    let err = r
        .apply(
            &p,
            Event::Finalized { tx: tx.clone() },
            &ctx(ready - 1),
            &[],
        )
        .unwrap_err();
    assert!(matches!(err, RequestError::IllegalTransition { .. }));
    assert!(step(&mut r, &p, Event::Reevaluate, ready - 1).is_empty());
    assert_eq!(r.state, State::WaitingForDelay);

    let ts = step(&mut r, &p, Event::Reevaluate, ready);
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].from, State::WaitingForDelay);
    assert_eq!(ts[0].to, State::ReadyToSign);
    assert_eq!(ts[0].kind(), Kind::Signature);
    step(&mut r, &p, Event::Finalized { tx }, ready + 1);
    assert_eq!(r.state, State::Finalized);
    assert_all_drafts(&r);
}

#[test]
fn large_tier_expires_when_approvals_expire_during_the_delay() {
    let p = policy();
    let mut r = new_request(&p, "r-large", btc(60));
    step(&mut r, &p, Event::Submit, NOW + 1);
    for who in ["alice", "bob", "carol", "grace"] {
        let a = approve(&r, who);
        step(&mut r, &p, Event::AddApproval(a), NOW + 30 * HOUR);
    }
    assert_eq!(r.state, State::WaitingForDelay);
    // Ready at NOW + 54 h, but the subject expires at NOW + 48 h.
    let ts = step(&mut r, &p, Event::Reevaluate, NOW + 48 * HOUR);
    assert_eq!(ts[0].to, State::Expired);
    assert!(r.state.is_terminal());
    // Height expiry too.
    let mut r = new_request(&p, "r-small", btc(1) / 2);
    step(&mut r, &p, Event::Submit, NOW + 1);
    let c = Context {
        now_ms: NOW + 2,
        tip_height: TIP + 288,
        frozen: false,
    };
    let ts = r.apply(&p, Event::Reevaluate, &c, &[]).unwrap();
    assert_eq!(ts[0].to, State::Expired);
    assert_all_drafts(&r);
}

#[test]
fn tampered_approvals_are_refused_and_state_unchanged() {
    let p = policy();
    let mut r = new_request(&p, "r1", btc(1) / 2);
    step(&mut r, &p, Event::Submit, NOW + 1);
    let before = r.clone();

    let mut fee = r.subject.clone();
    fee.fee = Amount::from_sat(FEE + 1);
    let mut output = r.subject.clone();
    output.outputs[0].1 = btc(1);
    let mut dest = r.subject.clone();
    dest.outputs[0].0 = script_of(NOT_ALLOWLISTED);
    let mut expiry = r.subject.clone();
    expiry.expires_at_ms += 1;
    for s in [fee, output, dest, expiry] {
        let a = sign(&s, "alice", &secret_of("alice"));
        let err = r
            .apply(&p, Event::AddApproval(a), &ctx(NOW + 2), &[])
            .unwrap_err();
        assert_eq!(
            err,
            RequestError::ApprovalRefused(ApprovalError::DigestMismatch)
        );
        assert_eq!(r, before);
    }
    // A forged signature.
    let mut a = approve(&r, "alice");
    a.signature[0] ^= 1;
    let err = r
        .apply(&p, Event::AddApproval(a), &ctx(NOW + 2), &[])
        .unwrap_err();
    assert_eq!(
        err,
        RequestError::ApprovalRefused(ApprovalError::BadSignature)
    );
    // A key of nobody in the policy.
    let a = sign(&r.subject, "mallory", &secret_of("mallory"));
    let err = r
        .apply(&p, Event::AddApproval(a), &ctx(NOW + 2), &[])
        .unwrap_err();
    assert!(matches!(
        err,
        RequestError::ApprovalRefused(ApprovalError::UnknownKey(_))
    ));
    assert_eq!(r, before);
}

#[test]
fn foreign_and_replayed_approvals_are_refused() {
    let p = policy();
    let mut r = new_request(&p, "r1", btc(1) / 2);
    let other = new_request(&p, "r2", btc(1) / 2);
    step(&mut r, &p, Event::Submit, NOW + 1);
    let before = r.clone();
    let a = approve(&other, "alice");
    let err = r
        .apply(&p, Event::AddApproval(a), &ctx(NOW + 2), &[])
        .unwrap_err();
    assert!(matches!(
        err,
        RequestError::ApprovalRefused(ApprovalError::Replay { .. })
    ));
    assert_eq!(r, before);

    // The same approval twice: the second is refused.
    let mut r = new_request(&p, "r3", btc(10));
    step(&mut r, &p, Event::Submit, NOW + 1);
    let a = approve(&r, "alice");
    step(&mut r, &p, Event::AddApproval(a.clone()), NOW + 2);
    let before = r.clone();
    let err = r
        .apply(&p, Event::AddApproval(a), &ctx(NOW + 3), &[])
        .unwrap_err();
    assert!(matches!(err, RequestError::DuplicateApproval { .. }));
    assert_eq!(r, before);
}

#[test]
fn approval_after_expiry_is_refused() {
    let p = policy();
    let mut r = new_request(&p, "r1", btc(1) / 2);
    step(&mut r, &p, Event::Submit, NOW + 1);
    let before = r.clone();
    let a = approve(&r, "alice");
    let late = r.subject.expires_at_ms;
    let err = r
        .apply(&p, Event::AddApproval(a), &ctx(late), &[])
        .unwrap_err();
    assert!(matches!(
        err,
        RequestError::ApprovalRefused(ApprovalError::Expired { .. })
    ));
    assert_eq!(r, before);
}

#[test]
fn initiators_approval_is_not_counted() {
    let p = policy();
    let mut r = new_request(&p, "r1", btc(1) / 2);
    r.initiator = "alice".into();
    step(&mut r, &p, Event::Submit, NOW + 1);
    let before = r.clone();
    let a = approve(&r, "alice");
    let err = r
        .apply(&p, Event::AddApproval(a), &ctx(NOW + 2), &[])
        .unwrap_err();
    assert_eq!(err, RequestError::InitiatorApproval("alice".into()));
    assert_eq!(r, before);
    assert_eq!(r.state, State::PendingApproval);
    // Another duty officer's does.
    let b = approve(&r, "bob");
    step(&mut r, &p, Event::AddApproval(b), NOW + 3);
    assert_eq!(r.state, State::ReadyToSign);
}

#[test]
fn rejections_are_recorded_not_vetoes() {
    let p = policy();
    let mut r = new_request(&p, "r1", btc(10));
    step(&mut r, &p, Event::Submit, NOW + 1);
    let no = sign(
        &r.subject.with_decision(Verdict::Reject),
        "carol",
        &secret_of("carol"),
    );
    let ts = step(&mut r, &p, Event::AddApproval(no), NOW + 2);
    assert_eq!(ts.len(), 1);
    assert_eq!(
        ts[0].cause,
        Cause::Approval {
            approver: "carol".into(),
            verdict: Verdict::Reject
        }
    );
    assert_eq!(ts[0].kind(), Kind::Approval);
    assert_eq!(r.rejections.len(), 1);
    assert_eq!(r.state, State::PendingApproval);
    assert_all_drafts(&r);
}

#[test]
fn policy_deny_rejects_with_reasons() {
    let p = policy();
    // Large tier to a destination off the allowlist.
    let mut r = new_request_with(&p, "r1", btc(60), NOT_ALLOWLISTED, FEE, None);
    let ts = step(&mut r, &p, Event::Submit, NOW + 1);
    assert_eq!(ts.last().unwrap().to, State::Rejected);
    assert!(ts
        .last()
        .unwrap()
        .deny
        .contains(&DenyReason::NotAllowlisted(NOT_ALLOWLISTED.into())));
    assert!(r.state.is_terminal());
    // A frozen reserve rejects a pending request on reevaluation.
    let mut r = new_request(&p, "r2", btc(1) / 2);
    step(&mut r, &p, Event::Submit, NOW + 1);
    let frozen = Context {
        now_ms: NOW + 2,
        tip_height: TIP + 1,
        frozen: true,
    };
    let ts = r.apply(&p, Event::Reevaluate, &frozen, &[]).unwrap();
    assert_eq!(ts[0].to, State::Rejected);
    assert_eq!(ts[0].deny, vec![DenyReason::Frozen]);
    assert_all_drafts(&r);
}

#[test]
fn cancel_from_each_non_terminal_state() {
    let p = policy();
    for s in [
        State::Created,
        State::PendingApproval,
        State::ReadyToSign,
        State::Finalized,
    ] {
        let mut r = at_state(&p, &s);
        let ts = step(&mut r, &p, Event::Cancel { by: "bob".into() }, NOW + 10);
        assert_eq!(ts.len(), 1);
        assert_eq!(ts[0].from, s);
        assert_eq!(ts[0].to, State::Cancelled);
        assert_eq!(ts[0].actor(), "bob");
        assert_all_drafts(&r);
        // Terminal: nothing moves it any more.
        let err = r
            .apply(&p, Event::Cancel { by: "bob".into() }, &ctx(NOW + 11), &[])
            .unwrap_err();
        assert!(matches!(err, RequestError::IllegalTransition { .. }));
    }
    // WaitingForDelay.
    let mut r = new_request(&p, "r-large", btc(60));
    step(&mut r, &p, Event::Submit, NOW + 1);
    for who in ["alice", "bob", "carol", "frank"] {
        let a = approve(&r, who);
        step(&mut r, &p, Event::AddApproval(a), NOW + 2);
    }
    assert_eq!(r.state, State::WaitingForDelay);
    step(&mut r, &p, Event::Cancel { by: "frank".into() }, NOW + 3);
    assert_eq!(r.state, State::Cancelled);
    // The canceller must be a valid ledger actor.
    let mut r = at_state(&p, &State::PendingApproval);
    let err = r
        .apply(&p, Event::Cancel { by: String::new() }, &ctx(NOW + 10), &[])
        .unwrap_err();
    assert!(matches!(err, RequestError::InvalidActor(_)));
    assert_eq!(r.state, State::PendingApproval);
    // A broadcast transaction cannot be called back, only replaced.
    let mut r = at_state(&p, &State::Broadcast);
    let err = r
        .apply(&p, Event::Cancel { by: "bob".into() }, &ctx(NOW + 10), &[])
        .unwrap_err();
    assert_eq!(
        err,
        RequestError::IllegalTransition {
            from: State::Broadcast,
            event: "cancel"
        }
    );
}

#[test]
fn illegal_transitions_are_refused() {
    let p = policy();
    let mut r = at_state(&p, &State::PendingApproval);
    let tx = signed_tx(&r);
    let before = r.clone();
    let err = r
        .apply(&p, Event::Finalized { tx: tx.clone() }, &ctx(NOW + 5), &[])
        .unwrap_err();
    assert_eq!(
        err,
        RequestError::IllegalTransition {
            from: State::PendingApproval,
            event: "finalized"
        }
    );
    assert_eq!(r, before);

    let mut r = at_state(&p, &State::ReadyToSign);
    let err = r
        .apply(&p, Event::Broadcast, &ctx(NOW + 5), &[])
        .unwrap_err();
    assert_eq!(
        err,
        RequestError::IllegalTransition {
            from: State::ReadyToSign,
            event: "broadcast"
        }
    );
    let err = r
        .apply(&p, Event::Confirmations(3), &ctx(NOW + 5), &[])
        .unwrap_err();
    assert!(matches!(err, RequestError::IllegalTransition { .. }));
    let err = r.apply(&p, Event::Submit, &ctx(NOW + 5), &[]).unwrap_err();
    assert!(matches!(err, RequestError::IllegalTransition { .. }));
    // Approvals before submission.
    let mut c = at_state(&p, &State::Created);
    let a = approve(&c, "alice");
    let err = c
        .apply(&p, Event::AddApproval(a), &ctx(NOW + 5), &[])
        .unwrap_err();
    assert!(matches!(err, RequestError::IllegalTransition { .. }));
    // Another policy version.
    let other = Policy::from_toml(&EXAMPLE.replacen("version = 1\n", "version = 2\n", 1)).unwrap();
    let err = r
        .apply(&other, Event::Reevaluate, &ctx(NOW + 5), &[])
        .unwrap_err();
    assert!(matches!(err, RequestError::PolicyMismatch { .. }));
}

#[test]
fn an_input_spent_elsewhere_expires_the_request() {
    let p = policy();
    for target in [State::PendingApproval, State::ReadyToSign] {
        let mut r = at_state(&p, &target);
        let before = r.clone();
        let foreign = OutPoint::new(Txid::from_byte_array([0xee; 32]), 7);
        assert_eq!(
            r.apply(&p, Event::InputSpent(foreign), &ctx(NOW + 5), &[])
                .unwrap_err(),
            RequestError::NotAnInput(foreign)
        );
        assert_eq!(r, before);
        let input = r.subject.inputs[0].0;
        let ts = step(&mut r, &p, Event::InputSpent(input), NOW + 6);
        assert_eq!(ts.len(), 1);
        assert_eq!(ts[0].from, target);
        assert_eq!(r.state, State::Expired);
        assert!(
            ts[0].reason.contains(&input.to_string()),
            "{}",
            ts[0].reason
        );
        assert_all_drafts(&r);
    }
    // Once finalized, the request's own transaction spends its inputs: not an event any more.
    let mut r = at_state(&p, &State::Finalized);
    let input = r.subject.inputs[0].0;
    assert!(matches!(
        r.apply(&p, Event::InputSpent(input), &ctx(NOW + 7), &[]),
        Err(RequestError::IllegalTransition { .. })
    ));
}

#[test]
fn finalized_with_another_txid_is_refused() {
    let p = policy();
    let mut r = at_state(&p, &State::ReadyToSign);
    let before = r.clone();
    let mut tx = signed_tx(&r);
    tx.output[0].value -= Amount::from_sat(1);
    let got = tx.compute_txid();
    let err = r
        .apply(&p, Event::Finalized { tx }, &ctx(NOW + 5), &[])
        .unwrap_err();
    assert_eq!(
        err,
        RequestError::TxidMismatch {
            expected: r.txid,
            got
        }
    );
    assert_eq!(r, before);
    assert_eq!(r.state, State::ReadyToSign);
}

#[test]
fn fee_bump_is_a_new_request_that_replaces_the_old() {
    let p = policy();
    let mut old = at_state(&p, &State::Broadcast);
    let mut bump = new_request_with(&p, "r1-bump", btc(1) / 2, DEST, FEE * 2, Some("r1"));
    assert_eq!(bump.replaces.as_deref(), Some("r1"));
    assert_ne!(bump.txid, old.txid);
    step(&mut bump, &p, Event::Submit, NOW + 10);
    // The old request's approvals do not carry over.
    let old_approval = old.approvals[0].approval.clone();
    let err = bump
        .apply(&p, Event::AddApproval(old_approval), &ctx(NOW + 11), &[])
        .unwrap_err();
    assert!(matches!(err, RequestError::ApprovalRefused(_)));
    let a = approve(&bump, "alice");
    step(&mut bump, &p, Event::AddApproval(a), NOW + 12);
    assert_eq!(bump.state, State::ReadyToSign);

    let ts = step(&mut old, &p, Event::ReplacedBy("r1-bump".into()), NOW + 13);
    assert_eq!(
        ts[0].to,
        State::Replaced {
            by: "r1-bump".into()
        }
    );
    assert_eq!(ts[0].kind(), Kind::Approval);
    assert!(old.state.is_terminal());
    assert_all_drafts(&old);
    let err = old
        .apply(&p, Event::Confirmations(3), &ctx(NOW + 14), &[])
        .unwrap_err();
    assert!(matches!(err, RequestError::IllegalTransition { .. }));
    // A request cannot replace itself.
    let mut r = at_state(&p, &State::PendingApproval);
    let err = r
        .apply(&p, Event::ReplacedBy("r1".into()), &ctx(NOW + 5), &[])
        .unwrap_err();
    assert_eq!(err, RequestError::SelfReplacement("r1".into()));
}

#[test]
fn states_and_transitions_serialize_snake_case() {
    assert_eq!(
        serde_json::to_string(&State::PendingApproval).unwrap(),
        "\"pending_approval\""
    );
    assert_eq!(
        serde_json::to_string(&State::WaitingForDelay).unwrap(),
        "\"waiting_for_delay\""
    );
    assert_eq!(
        serde_json::to_string(&State::Replaced { by: "x".into() }).unwrap(),
        r#"{"replaced":{"by":"x"}}"#
    );
    let p = policy();
    let r = at_state(&p, &State::Broadcast);
    for t in &r.transitions {
        let json = serde_json::to_string(t).unwrap();
        let back: Transition = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, t);
        let d = t.ledger_draft().unwrap();
        let body: serde_json::Value = serde_json::from_slice(d.payload.as_bytes()).unwrap();
        assert_eq!(body["request_id"], "r1");
        assert_eq!(body["vault"], "main");
        assert_eq!(body["txid"], r.txid.to_string());
        assert_eq!(body["policy"], p.hash().to_string());
        assert_eq!(body["to"], serde_json::to_value(&t.to).unwrap());
    }
}

#[test]
fn new_request_needs_input_amounts() {
    let p = policy();
    let (expires_at_ms, expires_at_height) = ApprovalSubject::max_expiry(&p, NOW, TIP);
    let mut ps = psbt(btc(1), DEST, FEE, 0);
    ps.inputs[0].witness_utxo = None;
    let err = SpendRequest::new(NewRequest {
        id: "r".into(),
        vault: "main".into(),
        initiator: "dave".into(),
        created_ms: NOW,
        created_height: TIP,
        psbt: ps,
        network: Network::Bitcoin,
        change_scripts: vec![],
        fee_rate: FeeRate::from_sat_per_vb(20).unwrap(),
        requested_fee_rate: None,
        policy: p.hash(),
        expires_at_ms,
        expires_at_height,
        confirmations_required: 1,
        replaces: None,
    })
    .unwrap_err();
    assert_eq!(err, RequestError::MissingInputAmount(0));
}

#[test]
fn new_request_refuses_a_previous_transaction_that_disagrees_with_witness_utxo() {
    let p = policy();
    let (expires_at_ms, expires_at_height) = ApprovalSubject::max_expiry(&p, NOW, TIP);
    let new = |ps: Psbt| {
        SpendRequest::new(NewRequest {
            id: "r".into(),
            vault: "main".into(),
            initiator: "dave".into(),
            created_ms: NOW,
            created_height: TIP,
            psbt: ps,
            network: Network::Bitcoin,
            change_scripts: vec![],
            fee_rate: FeeRate::from_sat_per_vb(20).unwrap(),
            requested_fee_rate: None,
            policy: p.hash(),
            expires_at_ms,
            expires_at_height,
            confirmations_required: 1,
            replaces: None,
        })
    };
    let mut ps = psbt(btc(1), DEST, FEE, 0);
    let utxo = ps.inputs[0].witness_utxo.clone().unwrap();
    let prev = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn::default()],
        output: vec![utxo.clone()],
    };
    ps.unsigned_tx.input[0].previous_output = OutPoint::new(prev.compute_txid(), 0);
    ps.inputs[0].non_witness_utxo = Some(prev.clone());
    new(ps.clone()).unwrap();
    // witness_utxo claims another amount than the previous transaction's output
    let mut lie = ps.clone();
    lie.inputs[0].witness_utxo.as_mut().unwrap().value += Amount::from_sat(1);
    assert_eq!(new(lie).unwrap_err(), RequestError::UtxoMismatch(0));
    // the previous transaction is not the one the outpoint names
    let mut other = ps.clone();
    let mut wrong = prev.clone();
    wrong.lock_time = LockTime::from_consensus(1);
    other.inputs[0].non_witness_utxo = Some(wrong);
    assert_eq!(new(other).unwrap_err(), RequestError::UtxoMismatch(0));
    // only the previous transaction: its output gives the amount
    let mut full_only = ps;
    full_only.inputs[0].witness_utxo = None;
    new(full_only).unwrap();
}

fn arb_event() -> impl Strategy<Value = (u8, u8, i64)> {
    // Mostly short steps (so quorums form before the 48 h expiry), sometimes long ones.
    let dt = prop_oneof![4 => 0i64..(2 * HOUR), 1 => 0i64..(60 * HOUR)];
    (0u8..9, 0u8..6, dt)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_events_never_panic_or_leave_terminal(
        amount_btc in prop::sample::select(vec![0u64, 10, 60]),
        events in prop::collection::vec(arb_event(), 0..24),
    ) {
        let p = policy();
        let amount = if amount_btc == 0 { btc(1) / 2 } else { btc(amount_btc) };
        let mut r = new_request(&p, "r1", amount);
        let people = ["alice", "bob", "carol", "dave", "frank", "grace"];
        let approvals: Vec<Approval> = people.iter().map(|w| approve(&r, w)).collect();
        let mut now = NOW;
        let mut was_terminal = false;
        let mut seen_ready = false;
        for (kind, who, dt) in events {
            now += dt;
            let who = usize::from(who) % people.len();
            let event = match kind {
                0 => Event::Submit,
                1 | 2 => Event::AddApproval(approvals[who].clone()),
                3 => Event::Reevaluate,
                4 => Event::Cancel { by: people[who].into() },
                5 => Event::Finalized { tx: signed_tx(&r) },
                6 => Event::Broadcast,
                7 => Event::Confirmations(u32::from(who as u8)),
                _ => Event::ReplacedBy("r2".into()),
            };
            let before = r.clone();
            match r.apply(&p, event, &ctx(now), &[]) {
                Ok(ts) => {
                    prop_assert_eq!(&r.transitions[before.transitions.len()..], &ts[..]);
                    for t in &ts {
                        prop_assert!(t.ledger_draft().is_ok());
                    }
                }
                Err(_) => prop_assert_eq!(&r, &before),
            }
            if was_terminal {
                prop_assert_eq!(&r.state, &before.state);
            }
            was_terminal = r.state.is_terminal();
            seen_ready |= r.state == State::ReadyToSign;
            // Finalized and later states are reached only through ReadyToSign.
            if matches!(r.state, State::Finalized | State::Broadcast | State::Confirmed) {
                prop_assert!(seen_ready);
            }
        }
    }
}
