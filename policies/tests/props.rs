#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use bitcoin::Amount;
use common::*;
use policies::evaluate::{
    evaluate, Context, Decision, Evaluation, PastSpend, ReceivedApproval, SpendRequestFacts,
    SpendState,
};
use policies::Policy;
use proptest::prelude::*;

const BTC: u64 = 100_000_000;
const DAY_MS: i64 = 86_400_000;

/// One approval to generate: person index into PERSONS, reject?, receive offset, for another
/// request (a replay)?
type Gen = (usize, bool, i64, bool);

fn gen_approval() -> impl Strategy<Value = Gen> {
    (
        0..PERSONS.len(),
        prop::bool::weighted(0.15),
        -100_000i64..0,
        prop::bool::weighted(0.1),
    )
}

fn make(p: &Policy, req: &SpendRequestFacts, g: &Gen) -> ReceivedApproval {
    let (i, rej, at, replay) = *g;
    let person = PERSONS[i].0;
    let target = if replay {
        request(p, "other", req.amount, &req.initiator)
    } else {
        req.clone()
    };
    let mut a = if rej {
        reject(&target, person, NOW + at)
    } else {
        approve(&target, person, NOW + at)
    };
    a.received_ms = NOW + at;
    a
}

fn scenario() -> impl Strategy<Value = (u64, usize, Vec<Gen>, Gen, bool, u64)> {
    (
        prop::sample::select(vec![BTC / 2, 10 * BTC, 60 * BTC, 120 * BTC]),
        0..PERSONS.len(),
        prop::collection::vec(gen_approval(), 0..8),
        gen_approval(),
        prop::bool::weighted(0.1),
        0u64..120,
    )
}

fn run(
    p: &Policy,
    req: &SpendRequestFacts,
    approvals: &[ReceivedApproval],
    frozen: bool,
    used_btc: u64,
) -> Evaluation {
    let history = [PastSpend {
        request_id: "past".into(),
        amount: Amount::from_sat(used_btc * BTC),
        at_ms: NOW - 3_600_000,
        state: SpendState::Confirmed,
    }];
    let ctx = Context {
        now_ms: NOW,
        tip_height: TIP,
        frozen,
    };
    evaluate(p, req, &history, approvals, &ctx)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Adding an approval never turns Allow into Deny or Pending (nor delays readiness);
    /// equivalently, removing one never turns Deny or Pending into Allow.
    #[test]
    fn adding_an_approval_is_monotone((amount, initiator, gens, extra, frozen, used) in scenario()) {
        let p = example();
        let req = request(&p, "r1", Amount::from_sat(amount), PERSONS[initiator].0);
        let base: Vec<ReceivedApproval> = gens.iter().map(|g| make(&p, &req, g)).collect();
        let mut more = base.clone();
        more.push(make(&p, &req, &extra));
        let before = run(&p, &req, &base, frozen, used);
        let after = run(&p, &req, &more, frozen, used);
        if let Decision::Allow { ready_at_ms: r1 } = before.decision {
            match &after.decision {
                Decision::Allow { ready_at_ms: r2 } => prop_assert!(*r2 <= r1),
                d => prop_assert!(false, "adding an approval turned Allow into {:?}", d),
            }
        }
        if !matches!(after.decision, Decision::Allow { .. }) {
            let allowed = matches!(before.decision, Decision::Allow { .. });
            prop_assert!(!allowed, "removing an approval turned Pending/Deny into Allow");
        }
    }

    /// Removing any one approval never turns Deny or Pending into Allow.
    #[test]
    fn removing_an_approval_is_monotone(
        (amount, initiator, gens, _extra, frozen, used) in scenario(),
        pick in any::<prop::sample::Index>(),
    ) {
        let p = example();
        let req = request(&p, "r1", Amount::from_sat(amount), PERSONS[initiator].0);
        let all: Vec<ReceivedApproval> = gens.iter().map(|g| make(&p, &req, g)).collect();
        let before = run(&p, &req, &all, frozen, used);
        if !all.is_empty() && !matches!(before.decision, Decision::Allow { .. }) {
            let mut fewer = all.clone();
            fewer.remove(pick.index(all.len()));
            let after = run(&p, &req, &fewer, frozen, used);
            let allowed = matches!(after.decision, Decision::Allow { .. });
            prop_assert!(!allowed, "removing an approval turned Pending/Deny into Allow");
        }
    }

    /// The initiator's approvals never change the decision.
    #[test]
    fn initiator_never_counts((amount, initiator, gens, _extra, frozen, used) in scenario()) {
        let p = example();
        let who = PERSONS[initiator].0;
        let req = request(&p, "r1", Amount::from_sat(amount), who);
        let others: Vec<ReceivedApproval> = gens
            .iter()
            .filter(|g| PERSONS[g.0].0 != who)
            .map(|g| make(&p, &req, g))
            .collect();
        let mut with = others.clone();
        with.push(approve(&req, who, NOW - 1));
        prop_assert_eq!(
            run(&p, &req, &others, frozen, used).decision,
            run(&p, &req, &with, frozen, used).decision
        );
    }

    /// The order approvals are listed in does not matter.
    #[test]
    fn evaluation_ignores_approval_order(
        (amount, initiator, gens, _extra, frozen, used) in scenario(),
        seed in any::<u64>(),
    ) {
        let p = example();
        let req = request(&p, "r1", Amount::from_sat(amount), PERSONS[initiator].0);
        let list: Vec<ReceivedApproval> = gens.iter().map(|g| make(&p, &req, g)).collect();
        let mut shuffled = list.clone();
        // A deterministic permutation from the seed.
        let n = shuffled.len();
        for i in (1..n).rev() {
            let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
            shuffled.swap(i, j);
        }
        prop_assert_eq!(run(&p, &req, &list, frozen, used), run(&p, &req, &shuffled, frozen, used));
    }

    /// A past spend `d` ms younger than the 24 h window edge counts iff `d > 0`.
    #[test]
    fn velocity_boundary(d in -5_000i64..5_000) {
        let p = example();
        let req = request(&p, "r1", Amount::from_sat(10 * BTC), "dave");
        let ok = [approve(&req, "alice", NOW), approve(&req, "bob", NOW)];
        let history = [PastSpend {
            request_id: "old".into(),
            amount: Amount::from_sat(195 * BTC),
            at_ms: NOW - DAY_MS + d,
            state: SpendState::Broadcast,
        }];
        let ctx = Context { now_ms: NOW, tip_height: TIP, frozen: false };
        let e = evaluate(&p, &req, &history, &ok, &ctx);
        prop_assert_eq!(matches!(e.decision, Decision::Deny { .. }), d > 0);
    }

    /// The canonical hash does not depend on the order of members, groups or velocity windows.
    #[test]
    fn hash_ignores_list_order(
        members in Just(vec!["alice", "bob", "carol", "dave", "erin"]).prop_shuffle(),
        windows in Just(vec![(86_400u64, 20_000_000_000u64), (604_800, 50_000_000_000), (2_592_000, 100_000_000_000)]).prop_shuffle(),
    ) {
        let officers_old: String = ["alice", "bob", "carol", "dave", "erin"]
            .iter()
            .map(|m| format!("    {{ person = \"{m}\", pubkey = \"{}\" }},\n", xonly_of(m)))
            .collect();
        let officers_new: String = members
            .iter()
            .map(|m| format!("    {{ person = \"{m}\", pubkey = \"{}\" }},\n", xonly_of(m)))
            .collect();
        let mut text = mutate(EXAMPLE, &officers_old, &officers_new);
        let velocity_old: String = [(86_400u64, "20_000_000_000"), (604_800, "50_000_000_000"), (2_592_000, "100_000_000_000")]
            .iter()
            .map(|(w, m)| format!("[[velocity]]\nwindow_secs = {w}\nmax_sat = {m}\n"))
            .collect::<Vec<_>>()
            .join("\n");
        let velocity_new: String = windows
            .iter()
            .map(|(w, m)| format!("[[velocity]]\nwindow_secs = {w}\nmax_sat = {m}\n"))
            .collect::<Vec<_>>()
            .join("\n");
        text = mutate(&text, &velocity_old, &velocity_new);
        prop_assert_eq!(parse(&text).hash(), example().hash());
    }
}
