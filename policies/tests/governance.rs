#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use policies::freeze::{AdminSignature, FreezeAction, FreezeError, FreezeOrder, FreezeState};
use policies::governance::{activate, compare, propose, ChangeKind, ChangeOrder, GovernanceError};

fn changed(from: &str, to: &str) -> policies::Policy {
    parse(&next_version(&mutate(EXAMPLE, from, to)))
}

const LOOSE_DELAY_MS: i64 = 259_200_000;

#[test]
fn same_rules_new_version_is_a_tightening() {
    let cur = example();
    let new = parse(&next_version(EXAMPLE));
    assert_eq!(compare(&cur, &new).loosened, Vec::<String>::new());
    assert_eq!(propose(&cur, &new), ChangeKind::Tightening);
}

#[test]
fn tightenings() {
    let cur = example();
    let cases: &[(&str, &str)] = &[
        // raise a k
        ("{ group = \"duty-officers\", k = 1 }", "{ group = \"duty-officers\", k = 2 }"),
        ("name = \"officers\"\nk = 3", "name = \"officers\"\nk = 4"),
        // add a group requirement
        ("require = [\"duty-officers\"]", "require = [\"duty-officers\", \"cfo\"]"),
        // lower caps
        ("max_fee_sat = 2_000_000", "max_fee_sat = 1_000_000"),
        ("max_fee_rate_sat_vb = 500", "max_fee_rate_sat_vb = 300"),
        ("max_sat = 20_000_000_000", "max_sat = 10_000_000_000"),
        ("fee_rate_band_percent = 25", "fee_rate_band_percent = 10"),
        // longer delays, shorter approval lives
        ("delay_secs = 86400", "delay_secs = 172800"),
        ("max_age_secs = 172800", "max_age_secs = 86400"),
        ("max_age_blocks = 288", "max_age_blocks = 144"),
        ("loosening_delay_secs = 259200", "loosening_delay_secs = 604800"),
        // a lower tier boundary moves amounts up into a stricter tier (1 -> 2 duty officers)
        ("up_to_sat = 100_000_000", "up_to_sat = 50_000_000"),
        // drop an allowlist address; enforce the allowlist in the medium tier
        (
            "[[allowlist]]\nlabel = \"cold storage B\"\naddress = \"bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3\"\n",
            "",
        ),
        ("require = [\"duty-officers\"]", "require = [\"duty-officers\"]\nallowlist_only = true"),
        // add a velocity window; admins stricter
        (
            "[fees]",
            "[[velocity]]\nwindow_secs = 3600\nmax_sat = 1_000_000_000\n\n[fees]",
        ),
        ("[admins]\nk = 2", "[admins]\nk = 3"),
        // every new alternative implies the old single one
        ("require = [\"duty-officers\"]", "any_of = [[\"duty-officers\", \"cfo\"], [{ group = \"duty-officers\", k = 3 }]]"),
    ];
    for (from, to) in cases {
        let new = changed(from, to);
        let c = compare(&cur, &new);
        assert_eq!(
            c.kind,
            ChangeKind::Tightening,
            "{from:?} -> {to:?}: {:?}",
            c.loosened
        );
    }
}

#[test]
fn loosenings() {
    let cur = example();
    let cases: &[(&str, &str)] = &[
        ("name = \"officers\"\nk = 3", "name = \"officers\"\nk = 2"),
        ("require = [\"officers\", \"cfo\"]", "require = [\"officers\"]"),
        ("require = [\"duty-officers\"]", "any_of = [[\"duty-officers\"], [\"cfo\"]]"),
        // swapping one group for another unrelated one
        ("require = [\"duty-officers\"]", "require = [{ group = \"cfo\", k = 2 }]"),
        ("max_fee_sat = 2_000_000", "max_fee_sat = 3_000_000"),
        ("max_fee_rate_sat_vb = 500", "max_fee_rate_sat_vb = 501"),
        ("fee_rate_band_percent = 25\n", ""),
        ("max_sat = 20_000_000_000", "max_sat = 30_000_000_000"),
        ("[[velocity]]\nwindow_secs = 604800\nmax_sat = 50_000_000_000\n", ""),
        ("delay_secs = 86400", "delay_secs = 3600"),
        ("allowlist_only = true", "allowlist_only = false"),
        ("max_age_secs = 172800", "max_age_secs = 172801"),
        ("max_age_blocks = 288\n", ""),
        ("loosening_delay_secs = 259200", "loosening_delay_secs = 3600"),
        ("up_to_sat = 5_000_000_000", "up_to_sat = 6_000_000_000"),
        // Moving 10-50 BTC into the large tier is *not* a tightening: 3 officers + CFO do not
        // imply 2 duty officers (dave, erin and a CFO could approve what needed 2 duty officers).
        ("up_to_sat = 5_000_000_000", "up_to_sat = 1_000_000_000"),
        ("bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"),
        ("[admins]\nk = 2", "[admins]\nk = 1"),
        // a new member (mallory) in the cfo group
        (
            "    { person = \"grace\", pubkey = \"989c0b76cb563971fdc9bef31ec06c3560f3249d6ee9e5d83c57625596e05f6f\" },\n",
            "    { person = \"grace\", pubkey = \"989c0b76cb563971fdc9bef31ec06c3560f3249d6ee9e5d83c57625596e05f6f\" },\n    { person = \"mallory\", pubkey = \"552c630b64b54bf50210c9e253d38bd4949c72e22873500f6285c2bede312a84\" },\n",
        ),
        // grace's key rotated
        (
            "989c0b76cb563971fdc9bef31ec06c3560f3249d6ee9e5d83c57625596e05f6f",
            "552c630b64b54bf50210c9e253d38bd4949c72e22873500f6285c2bede312a84",
        ),
        ("proof_quorum = \"officers\"", "proof_quorum = \"cfo\""),
    ];
    for (from, to) in cases {
        let new = changed(from, to);
        let c = compare(&cur, &new);
        assert_eq!(c.kind, ChangeKind::Loosening, "{from:?} -> {to:?}");
        assert!(!c.loosened.is_empty());
    }
}

fn admin_sigs(order: &ChangeOrder, admins: &[&str]) -> Vec<AdminSignature> {
    admins
        .iter()
        .map(|a| AdminSignature::sign(order.digest(), a, &secret_of(a)))
        .collect()
}

#[test]
fn activation_times_and_admin_quorum() {
    let cur = example();
    let tight = changed("max_fee_sat = 2_000_000", "max_fee_sat = 1_000_000");
    let loose = changed("max_fee_sat = 2_000_000", "max_fee_sat = 3_000_000");

    for (new, kind, at) in [
        (&tight, ChangeKind::Tightening, NOW),
        (&loose, ChangeKind::Loosening, NOW + LOOSE_DELAY_MS),
    ] {
        let order = ChangeOrder {
            current: cur.hash(),
            proposed: new.hash(),
            issued_at_ms: NOW,
        };
        let a = activate(
            &cur,
            new,
            &order,
            &admin_sigs(&order, &["heidi", "judy"]),
            NOW,
        )
        .unwrap();
        assert_eq!(a.kind, kind);
        assert_eq!(a.activates_at_ms, at);
        assert_eq!(a.policy, new.hash());
        assert_eq!(a.version, 2);

        // One admin, or the same admin twice, is not a quorum.
        let err = activate(
            &cur,
            new,
            &order,
            &admin_sigs(&order, &["heidi", "heidi"]),
            NOW,
        )
        .unwrap_err();
        assert_eq!(err, GovernanceError::NotEnoughAdmins { need: 2, have: 1 });
        // Officers are not admins.
        let err = activate(
            &cur,
            new,
            &order,
            &admin_sigs(&order, &["heidi", "alice"]),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, GovernanceError::BadSignature { admin, .. } if admin == "alice"));
        // A signature over another order.
        let other = ChangeOrder {
            issued_at_ms: NOW + 1,
            ..order.clone()
        };
        let mut sigs = admin_sigs(&order, &["heidi"]);
        sigs.extend(admin_sigs(&other, &["judy"]));
        assert!(matches!(
            activate(&cur, new, &order, &sigs, NOW),
            Err(GovernanceError::BadSignature { .. })
        ));
    }

    // Version must increase; the order must name both versions.
    let same_version = parse(&mutate(
        EXAMPLE,
        "max_fee_sat = 2_000_000",
        "max_fee_sat = 1_000_000",
    ));
    let order = ChangeOrder {
        current: cur.hash(),
        proposed: same_version.hash(),
        issued_at_ms: NOW,
    };
    assert!(matches!(
        activate(
            &cur,
            &same_version,
            &order,
            &admin_sigs(&order, &["heidi", "ivan"]),
            NOW
        ),
        Err(GovernanceError::VersionNotIncreasing { .. })
    ));
    let order = ChangeOrder {
        current: cur.hash(),
        proposed: loose.hash(),
        issued_at_ms: NOW,
    };
    assert_eq!(
        activate(
            &cur,
            &tight,
            &order,
            &admin_sigs(&order, &["heidi", "ivan"]),
            NOW
        ),
        Err(GovernanceError::OrderMismatch)
    );
}

fn order(p: &policies::Policy, action: FreezeAction, seq: u64) -> FreezeOrder {
    FreezeOrder {
        action,
        policy: p.hash(),
        seq,
        issued_at_ms: NOW,
        reason: "incident 42".into(),
    }
}

#[test]
fn any_admin_freezes_only_the_quorum_lifts() {
    let p = example();
    let s0 = FreezeState::new();
    assert!(!s0.frozen);

    let f = order(&p, FreezeAction::Freeze, 0);
    // An officer cannot freeze.
    assert!(matches!(
        s0.apply(&p, &f, &[f.sign("alice", &secret_of("alice"))]),
        Err(FreezeError::BadSignature { .. })
    ));
    assert!(matches!(
        s0.apply(&p, &f, &[]),
        Err(FreezeError::NotEnoughAdmins { .. })
    ));
    let s1 = s0
        .apply(&p, &f, &[f.sign("ivan", &secret_of("ivan"))])
        .unwrap();
    assert!(s1.frozen);
    assert_eq!(s1.seq, 1);
    assert_eq!(s1.since_ms, Some(NOW));
    // Replaying the freeze on the new state is stale.
    assert!(matches!(
        s1.apply(&p, &f, &[f.sign("ivan", &secret_of("ivan"))]),
        Err(FreezeError::StaleOrder { .. })
    ));
    assert_eq!(
        s1.apply(&p, &order(&p, FreezeAction::Freeze, 1), &[]),
        Err(FreezeError::AlreadyFrozen)
    );

    let l = order(&p, FreezeAction::Lift, 1);
    assert_eq!(
        s1.apply(&p, &l, &[l.sign("ivan", &secret_of("ivan"))]),
        Err(FreezeError::NotEnoughAdmins {
            action: FreezeAction::Lift,
            need: 2,
            have: 1
        })
    );
    let s2 = s1
        .apply(
            &p,
            &l,
            &[
                l.sign("ivan", &secret_of("ivan")),
                l.sign("judy", &secret_of("judy")),
            ],
        )
        .unwrap();
    assert!(!s2.frozen);
    assert_eq!(s2.seq, 2);
    assert_eq!(
        s2.apply(&p, &order(&p, FreezeAction::Lift, 2), &[]),
        Err(FreezeError::NotFrozen)
    );

    // A freeze order for another policy version is refused.
    let p2 = parse(&next_version(EXAMPLE));
    let f2 = order(&p2, FreezeAction::Freeze, 2);
    assert!(matches!(
        s2.apply(&p, &f2, &[f2.sign("ivan", &secret_of("ivan"))]),
        Err(FreezeError::PolicyMismatch { .. })
    ));

    // Orders and signatures travel as JSON.
    let json = serde_json::to_string(&(&l, l.sign("ivan", &secret_of("ivan")))).unwrap();
    let (l2, sig): (FreezeOrder, AdminSignature) = serde_json::from_str(&json).unwrap();
    assert_eq!(l2, l);
    assert_eq!(sig.admin, "ivan");
}
