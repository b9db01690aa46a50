#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use bitcoin::{Amount, FeeRate};
use common::*;
use policies::approval::ApprovalError;
use policies::evaluate::{
    evaluate, Context, Decision, DenyReason, Evaluation, Ignored, Missing, PastSpend,
    ReceivedApproval, RequestKind, Shortfall, SpendRequestFacts, SpendState,
};
use policies::Policy;

const BTC: u64 = 100_000_000;
const DAY_MS: i64 = 86_400_000;

fn ctx() -> Context {
    Context {
        now_ms: NOW,
        tip_height: TIP,
        frozen: false,
    }
}

fn eval(p: &Policy, req: &SpendRequestFacts, approvals: &[ReceivedApproval]) -> Evaluation {
    evaluate(p, req, &[], approvals, &ctx())
}

fn short(group: &str, more: u32, k: u32) -> Shortfall {
    Shortfall {
        group: group.into(),
        more,
        k,
    }
}

fn deny_reasons(e: &Evaluation) -> Vec<DenyReason> {
    match &e.decision {
        Decision::Deny { reasons } => reasons.clone(),
        d => panic!("expected deny, got {d:?}"),
    }
}

#[test]
fn small_tier_needs_one_duty_officer() {
    let p = example();
    let req = request(&p, "r1", Amount::from_sat(BTC / 2), "dave");
    let e = eval(&p, &req, &[]);
    assert_eq!(e.tier.as_deref(), Some("small"));
    assert_eq!(
        e.decision,
        Decision::Pending {
            missing: vec![Missing::Approvals {
                alternatives: vec![vec![short("duty-officers", 1, 1)]]
            }]
        }
    );
    // Erin is an officer but not on duty: valid, not counted.
    let e = eval(&p, &req, &[approve(&req, "erin", NOW - 5)]);
    assert!(matches!(e.decision, Decision::Pending { .. }));
    let e = eval(&p, &req, &[approve(&req, "alice", NOW - 1000)]);
    assert_eq!(
        e.decision,
        Decision::Allow {
            ready_at_ms: NOW - 1000
        }
    );
    assert_eq!(e.counted, ["alice"]);
}

#[test]
fn initiator_never_counts() {
    let p = example();
    let req = request(&p, "r1", Amount::from_sat(BTC / 2), "alice");
    let e = eval(&p, &req, &[approve(&req, "alice", NOW - 10)]);
    assert!(matches!(e.decision, Decision::Pending { .. }));
    assert_eq!(e.ignored, vec![("alice".to_owned(), Ignored::Initiator)]);
    let e = eval(
        &p,
        &req,
        &[
            approve(&req, "alice", NOW - 10),
            approve(&req, "bob", NOW - 5),
        ],
    );
    assert_eq!(
        e.decision,
        Decision::Allow {
            ready_at_ms: NOW - 5
        }
    );
    assert_eq!(e.counted, ["bob"]);
}

#[test]
fn medium_tier_reports_how_many_more() {
    let p = example();
    let req = request(&p, "r1", Amount::from_sat(10 * BTC), "dave");
    let e = eval(&p, &req, &[approve(&req, "alice", NOW - 30)]);
    assert_eq!(e.tier.as_deref(), Some("medium"));
    assert_eq!(
        e.decision,
        Decision::Pending {
            missing: vec![Missing::Approvals {
                alternatives: vec![vec![short("duty-officers", 1, 2)]]
            }]
        }
    );
    // Quorum time = the moment the quorum was first met (bob's), not the last approval.
    let e = eval(
        &p,
        &req,
        &[
            approve(&req, "carol", NOW - 10),
            approve(&req, "alice", NOW - 30),
            approve(&req, "bob", NOW - 20),
        ],
    );
    assert_eq!(
        e.decision,
        Decision::Allow {
            ready_at_ms: NOW - 20
        }
    );
    assert_eq!(e.counted, ["alice", "bob"]);
}

#[test]
fn large_tier_needs_officers_and_cfo_then_a_delay() {
    let p = example();
    let req = request(&p, "r1", Amount::from_sat(60 * BTC), "dave");
    let officers = [
        approve(&req, "alice", NOW - 300),
        approve(&req, "bob", NOW - 200),
        approve(&req, "erin", NOW - 100),
    ];
    let e = eval(&p, &req, &officers);
    assert_eq!(e.tier.as_deref(), Some("large"));
    assert_eq!(
        e.decision,
        Decision::Pending {
            missing: vec![
                Missing::Approvals {
                    alternatives: vec![vec![short("cfo", 1, 1)]]
                },
                Missing::DelayAfterQuorum { secs: 86_400 },
            ]
        }
    );
    let mut all = officers.to_vec();
    all.push(approve(&req, "grace", NOW - 50));
    let e = eval(&p, &req, &all);
    assert_eq!(
        e.decision,
        Decision::Allow {
            ready_at_ms: NOW - 50 + DAY_MS
        }
    );
    // The initiator (dave) approving does not replace a missing officer.
    let e = eval(
        &p,
        &req,
        &[
            approve(&req, "alice", NOW - 3),
            approve(&req, "dave", NOW - 3),
            approve(&req, "frank", NOW - 3),
        ],
    );
    assert_eq!(
        e.decision,
        Decision::Pending {
            missing: vec![
                Missing::Approvals {
                    alternatives: vec![vec![short("officers", 2, 3)]]
                },
                Missing::DelayAfterQuorum { secs: 86_400 },
            ]
        }
    );
}

fn overlap_policy(tier: &str) -> Policy {
    parse(&format!(
        r#"
version = 1
name = "overlap"
proof_quorum = "a"
loosening_delay_secs = 0
[admins]
k = 1
members = [{{ person = "heidi", pubkey = "{heidi}" }}]
[[groups]]
name = "a"
k = 1
members = [{{ person = "alice", pubkey = "{alice}" }}, {{ person = "bob", pubkey = "{bob}" }}]
[[groups]]
name = "b"
k = 1
members = [{{ person = "bob", pubkey = "{bob}" }}, {{ person = "carol", pubkey = "{carol}" }}]
[[groups]]
name = "c"
k = 1
members = [{{ person = "dave", pubkey = "{dave}" }}]
[[tiers]]
{tier}
[fees]
max_fee_sat = 1000000
max_fee_rate_sat_vb = 100
[approvals]
max_age_secs = 172800
"#,
        heidi = xonly_of("heidi"),
        alice = xonly_of("alice"),
        bob = xonly_of("bob"),
        carol = xonly_of("carol"),
        dave = xonly_of("dave"),
    ))
}

fn outstanding(e: &Evaluation) -> Vec<u32> {
    match &e.decision {
        Decision::Pending { missing } => match &missing[0] {
            Missing::Approvals { alternatives } => alternatives
                .iter()
                .map(|alt| alt.iter().map(|s| s.more).sum())
                .collect(),
            m => panic!("unexpected {m:?}"),
        },
        d => panic!("expected pending, got {d:?}"),
    }
}

#[test]
fn a_person_in_two_groups_counts_once() {
    let p = overlap_policy("require = [\"a\", \"b\"]");
    let req = request(&p, "r1", Amount::from_sat(BTC), "mallory");
    // Bob is in both groups: alone he fills one of the two slots.
    let e = eval(&p, &req, &[approve(&req, "bob", NOW - 9)]);
    assert_eq!(outstanding(&e), [1]);
    assert_eq!(e.counted, ["bob"]);
    // With carol, bob must be moved to group a (an assignment, not a greedy count).
    for other in ["alice", "carol"] {
        let e = eval(
            &p,
            &req,
            &[approve(&req, "bob", NOW - 9), approve(&req, other, NOW - 8)],
        );
        assert_eq!(
            e.decision,
            Decision::Allow {
                ready_at_ms: NOW - 8
            },
            "{other}"
        );
        assert_eq!(e.counted.len(), 2);
    }

    let p = overlap_policy("require = [{ group = \"a\", k = 2 }, \"b\"]");
    let req = request(&p, "r1", Amount::from_sat(BTC), "mallory");
    let e = eval(
        &p,
        &req,
        &[
            approve(&req, "alice", NOW - 9),
            approve(&req, "bob", NOW - 9),
        ],
    );
    assert_eq!(
        e.decision,
        Decision::Pending {
            missing: vec![Missing::Approvals {
                alternatives: vec![vec![short("b", 1, 1)]]
            }]
        }
    );
    let e = eval(
        &p,
        &req,
        &[
            approve(&req, "alice", NOW - 9),
            approve(&req, "bob", NOW - 9),
            approve(&req, "carol", NOW - 7),
        ],
    );
    assert_eq!(
        e.decision,
        Decision::Allow {
            ready_at_ms: NOW - 7
        }
    );
}

#[test]
fn any_of_reports_every_alternative() {
    let p = overlap_policy("any_of = [[{ group = \"a\", k = 2 }], [\"b\", \"c\"]]");
    let req = request(&p, "r1", Amount::from_sat(BTC), "mallory");
    let e = eval(&p, &req, &[approve(&req, "carol", NOW - 9)]);
    assert_eq!(
        e.decision,
        Decision::Pending {
            missing: vec![Missing::Approvals {
                alternatives: vec![vec![short("a", 2, 2)], vec![short("c", 1, 1)]]
            }]
        }
    );
    let e = eval(
        &p,
        &req,
        &[
            approve(&req, "carol", NOW - 9),
            approve(&req, "dave", NOW - 4),
        ],
    );
    assert_eq!(
        e.decision,
        Decision::Allow {
            ready_at_ms: NOW - 4
        }
    );
    let e = eval(
        &p,
        &req,
        &[
            approve(&req, "alice", NOW - 9),
            approve(&req, "bob", NOW - 6),
        ],
    );
    assert_eq!(
        e.decision,
        Decision::Allow {
            ready_at_ms: NOW - 6
        }
    );
}

#[test]
fn rejections_are_reported_not_counted_and_do_not_veto() {
    let p = example();
    let req = request(&p, "r1", Amount::from_sat(10 * BTC), "dave");
    let e = eval(
        &p,
        &req,
        &[
            reject(&req, "carol", NOW - 40),
            approve(&req, "alice", NOW - 30),
        ],
    );
    assert_eq!(e.rejections, ["carol"]);
    assert!(matches!(e.decision, Decision::Pending { .. }));
    let e = eval(
        &p,
        &req,
        &[
            reject(&req, "carol", NOW - 40),
            approve(&req, "alice", NOW - 30),
            approve(&req, "bob", NOW - 20),
        ],
    );
    assert_eq!(e.rejections, ["carol"]);
    assert_eq!(
        e.decision,
        Decision::Allow {
            ready_at_ms: NOW - 20
        }
    );
}

#[test]
fn repeated_and_invalid_approvals_are_ignored() {
    let p = example();
    let req = request(&p, "r1", Amount::from_sat(10 * BTC), "dave");
    let other = request(&p, "r2", Amount::from_sat(10 * BTC), "dave");
    let e = eval(
        &p,
        &req,
        &[
            approve(&req, "alice", NOW - 30),
            approve(&req, "alice", NOW - 10),
            approve(&req, "mallory", NOW - 10),
            approve(&other, "bob", NOW - 10),
        ],
    );
    assert!(matches!(e.decision, Decision::Pending { .. }));
    assert_eq!(e.ignored.len(), 3);
    assert!(e.ignored.contains(&("alice".into(), Ignored::Repeated)));
    assert!(e.ignored.iter().any(|(who, why)| who == "mallory"
        && matches!(why, Ignored::Invalid(ApprovalError::UnknownKey(_)))));
    assert!(e
        .ignored
        .iter()
        .any(|(who, why)| who == "bob"
            && matches!(why, Ignored::Invalid(ApprovalError::Replay { .. }))));

    // Expired by the time of evaluation.
    let late = Context {
        now_ms: req.subject.expires_at_ms,
        ..ctx()
    };
    let e = evaluate(
        &p,
        &req,
        &[],
        &[
            approve(&req, "alice", NOW - 30),
            approve(&req, "bob", NOW - 20),
        ],
        &late,
    );
    assert!(matches!(e.decision, Decision::Pending { .. }));
    assert!(e
        .ignored
        .iter()
        .all(|(_, why)| matches!(why, Ignored::Invalid(ApprovalError::Expired { .. }))));
}

fn full_quorum(req: &SpendRequestFacts) -> Vec<ReceivedApproval> {
    ["alice", "bob", "carol", "frank"]
        .iter()
        .map(|p| approve(req, p, NOW - 10))
        .collect()
}

#[test]
fn rule_breaches_deny_even_with_a_full_quorum() {
    let p = example();
    let base = request(&p, "r1", Amount::from_sat(60 * BTC), "dave");
    assert!(matches!(
        eval(&p, &base, &full_quorum(&base)).decision,
        Decision::Allow { .. }
    ));

    let frozen = Context {
        frozen: true,
        ..ctx()
    };
    let e = evaluate(&p, &base, &[], &full_quorum(&base), &frozen);
    assert_eq!(deny_reasons(&e), [DenyReason::Frozen]);

    let mut req = base.clone();
    req.destinations = vec![DEST.into(), NOT_ALLOWLISTED.into(), "nonsense".into()];
    let e = eval(&p, &req, &full_quorum(&req));
    assert_eq!(
        deny_reasons(&e),
        [
            DenyReason::NotAllowlisted(NOT_ALLOWLISTED.into()),
            DenyReason::BadDestination("nonsense".into()),
        ]
    );
    // The medium tier is not allowlist-only.
    let mut medium = request(&p, "r1", Amount::from_sat(10 * BTC), "dave");
    medium.destinations = vec![NOT_ALLOWLISTED.into()];
    let e = eval(
        &p,
        &medium,
        &[approve(&medium, "alice", NOW), approve(&medium, "bob", NOW)],
    );
    assert!(matches!(e.decision, Decision::Allow { .. }));

    let mut req = base.clone();
    req.fee = Amount::from_sat(2_000_001);
    req.subject.fee = req.fee;
    let e = eval(&p, &req, &full_quorum(&req));
    assert_eq!(
        deny_reasons(&e),
        [DenyReason::FeeTooHigh {
            fee: Amount::from_sat(2_000_001),
            max: Amount::from_sat(2_000_000)
        }]
    );

    let mut req = base.clone();
    req.fee_rate = FeeRate::from_sat_per_vb(501).unwrap();
    req.requested_fee_rate = None;
    let e = eval(&p, &req, &full_quorum(&req));
    assert_eq!(
        deny_reasons(&e),
        [DenyReason::FeeRateTooHigh {
            sat_vb: 501,
            max_sat_vb: 500
        }]
    );

    // ±25 % band around the requested 20 sat/vB: 25 is inside, 25.25 outside, 15 inside.
    for (rate_kwu, ok) in [(6250, true), (6251, false), (3750, true), (3749, false)] {
        let mut req = base.clone();
        req.fee_rate = FeeRate::from_sat_per_kwu(rate_kwu);
        let e = eval(&p, &req, &full_quorum(&req));
        assert_eq!(
            matches!(e.decision, Decision::Allow { .. }),
            ok,
            "{rate_kwu}"
        );
    }

    let mut req = base.clone();
    req.subject.fee = Amount::from_sat(1);
    let e = eval(&p, &req, &full_quorum(&req));
    assert_eq!(
        deny_reasons(&e),
        [DenyReason::SubjectMismatch("fee".into())]
    );

    let mut req = base.clone();
    req.subject.expires_at_ms = req.created_ms + 172_800_000 + 1;
    let e = eval(&p, &req, &full_quorum(&req));
    assert!(matches!(
        deny_reasons(&e)[..],
        [DenyReason::ExpiryTooLate(_)]
    ));
    let mut req = base.clone();
    req.subject.expires_at_height = None;
    let e = eval(&p, &req, &full_quorum(&req));
    assert!(matches!(
        deny_reasons(&e)[..],
        [DenyReason::ExpiryTooLate(_)]
    ));

    let p2 = parse(&next_version(EXAMPLE));
    let e = eval(&p2, &base, &[]);
    assert!(matches!(
        deny_reasons(&e)[..],
        [DenyReason::PolicyMismatch { .. }]
    ));
}

#[test]
fn reserve_proofs_need_the_proof_quorum_and_ignore_a_freeze() {
    let p = example();
    let mut req = request(&p, "proof-1", Amount::ZERO, "alice");
    req.kind = RequestKind::ReserveProof;
    req.destinations = vec![];
    let frozen = Context {
        frozen: true,
        ..ctx()
    };
    let two = [
        approve(&req, "alice", NOW - 9),
        approve(&req, "bob", NOW - 8),
        approve(&req, "carol", NOW - 7),
    ];
    let e = evaluate(&p, &req, &[], &two, &frozen);
    assert_eq!(e.tier, None);
    assert_eq!(
        e.decision,
        Decision::Pending {
            missing: vec![Missing::Approvals {
                alternatives: vec![vec![short("officers", 1, 3)]]
            }]
        }
    );
    let mut more = two.to_vec();
    more.push(approve(&req, "erin", NOW - 6));
    let e = evaluate(&p, &req, &[], &more, &frozen);
    assert_eq!(
        e.decision,
        Decision::Allow {
            ready_at_ms: NOW - 6
        }
    );
}

fn past(id: &str, btc: u64, at_ms: i64) -> PastSpend {
    PastSpend {
        request_id: id.into(),
        amount: Amount::from_sat(btc * BTC),
        at_ms,
        state: SpendState::Confirmed,
    }
}

#[test]
fn velocity_window_boundaries() {
    let p = example();
    let req = request(&p, "r1", Amount::from_sat(10 * BTC), "dave");
    let ok = [approve(&req, "alice", NOW), approve(&req, "bob", NOW)];
    let run = |history: &[PastSpend]| evaluate(&p, &req, history, &ok, &ctx()).decision;

    // 24 h window, 200 BTC. A spend exactly 24 h old is outside the window.
    assert!(matches!(
        run(&[past("old", 195, NOW - DAY_MS)]),
        Decision::Allow { .. }
    ));
    // One millisecond younger: inside.
    assert_eq!(
        run(&[past("old", 195, NOW - DAY_MS + 1)]),
        Decision::Deny {
            reasons: vec![DenyReason::Velocity {
                window_secs: 86_400,
                max: Amount::from_sat(200 * BTC),
                used: Amount::from_sat(195 * BTC),
                requested: Amount::from_sat(10 * BTC),
            }]
        }
    );
    // Reaching the limit exactly is allowed; one satoshi more is not.
    assert!(matches!(
        run(&[past("old", 190, NOW - 1)]),
        Decision::Allow { .. }
    ));
    let mut over = past("old", 190, NOW - 1);
    over.amount += Amount::from_sat(1);
    assert!(matches!(run(&[over]), Decision::Deny { .. }));
    // Pending and broadcast spends count; future-dated ones too; the request itself does not.
    let mut pending = past("p", 100, NOW - 5);
    pending.state = SpendState::Pending;
    let mut broadcast = past("b", 95, NOW + 5);
    broadcast.state = SpendState::Broadcast;
    assert!(matches!(
        run(&[pending.clone(), broadcast]),
        Decision::Deny { .. }
    ));
    assert!(matches!(
        run(&[pending, past("r1", 500, NOW)]),
        Decision::Allow { .. }
    ));

    // 7-day window, 500 BTC: spends older than a day but within 7 days count there only.
    let week = 7 * DAY_MS;
    let h = [
        past("a", 200, NOW - 2 * DAY_MS),
        past("b", 295, NOW - week + 1),
    ];
    assert!(matches!(run(&h), Decision::Deny { reasons } if reasons.len() == 1));
    let h = [past("a", 200, NOW - 2 * DAY_MS), past("b", 295, NOW - week)];
    assert!(matches!(run(&h), Decision::Allow { .. }));
}

#[test]
fn subject_expiring_before_the_delay_is_denied() {
    let p = example();
    let mut req = request(&p, "r1", Amount::from_sat(60 * BTC), "dave");
    req.subject.expires_at_ms = req.created_ms + DAY_MS;
    let e = eval(&p, &req, &full_quorum(&req));
    assert_eq!(
        deny_reasons(&e),
        [DenyReason::ExpiresBeforeDelay {
            expires_at_ms: req.created_ms + DAY_MS,
            earliest_ready_ms: req.created_ms + DAY_MS,
        }]
    );
    req.subject.expires_at_ms += 1;
    let e = eval(&p, &req, &full_quorum(&req));
    assert!(matches!(e.decision, Decision::Allow { .. }));
    // Tiers without a delay do not care.
    let mut small = request(&p, "r2", Amount::from_sat(BTC), "dave");
    small.subject.expires_at_ms = small.created_ms + 1;
    let e = eval(&p, &small, &[]);
    assert!(matches!(e.decision, Decision::Pending { .. }));
}

#[test]
fn evaluations_round_trip_through_json() {
    let p = example();
    let req = request(&p, "r1", Amount::from_sat(60 * BTC), "dave");
    let mut approvals = full_quorum(&req);
    approvals.push(approve(&req, "mallory", NOW));
    approvals.push(reject(&req, "erin", NOW));
    for frozen in [false, true] {
        let e = evaluate(
            &p,
            &req,
            &[past("x", 300, NOW)],
            &approvals,
            &Context { frozen, ..ctx() },
        );
        let json = serde_json::to_string(&e).unwrap();
        let back: Evaluation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
    let e = eval(&p, &req, &approvals[..1]);
    let json = serde_json::to_value(&e.decision).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"pending": {"missing": [
            {"approvals": {"alternatives": [[
                {"group": "cfo", "more": 1, "k": 1},
                {"group": "officers", "more": 2, "k": 3}
            ]]}},
            {"delay_after_quorum": {"secs": 86400}}
        ]}})
    );
}
