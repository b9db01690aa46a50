//! Policy versions and the freeze in the database (no node needed), on SQLite and, when
//! `TREASURY_TEST_POSTGRES_URL` is set, PostgreSQL: refusals store nothing (no row, no ledger
//! entry), a tightening applies at once, a loosening after its delay, a veto stops it, the
//! freeze needs one admin and its lift the quorum; the ledger verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bdk_wallet::bitcoin::secp256k1::SecretKey;
use policies::freeze::{AdminSignature, FreezeAction, FreezeError};
use policies::governance::GovernanceError;
use treasury::service::governance::{
    ApproveOutcome, Governance, GovernanceStoreError, VersionStatus,
};
use treasury::store::LedgerStore;

const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
const T0: i64 = 1_800_000_000_000;
const HOUR: i64 = 3_600_000;

fn sig(digest: [u8; 32], admin: &str) -> AdminSignature {
    let n = match admin {
        "heidi" => 8,
        "ivan" => 9,
        "judy" => 10,
        _ => 1,
    };
    AdminSignature::sign(digest, admin, &SecretKey::from_slice(&[n; 32]).unwrap())
}

async fn size(g: &Governance) -> u64 {
    g.ledger.head().await.unwrap().size()
}

async fn scenario(g: &Governance) {
    assert!(matches!(
        g.active(T0).await,
        Err(GovernanceStoreError::NoActivePolicy)
    ));
    // A bad document is refused with the field named and stores nothing.
    let err = g
        .init(&EXAMPLE.replace("k = 3", "k = 9"), "operator", T0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("groups"), "{err}");
    assert_eq!(size(g).await, 0);
    let v1 = g.init(EXAMPLE, "operator", T0).await.unwrap();
    assert_eq!(g.active(T0).await.unwrap().hash, v1.hash);

    // A version that does not increase is refused.
    assert!(matches!(
        g.propose(EXAMPLE, "heidi", T0).await,
        Err(GovernanceStoreError::Governance(
            GovernanceError::VersionNotIncreasing { .. }
        ))
    ));
    // Tightening: the CFO group needs both members... (k 1 -> 2 in the large tier's group).
    let v2_doc = EXAMPLE
        .replace("version = 1", "version = 2")
        .replace("name = \"cfo\"\nk = 1", "name = \"cfo\"\nk = 2");
    assert_ne!(v2_doc, EXAMPLE.replace("version = 1", "version = 2"));
    let v2 = g.propose(&v2_doc, "heidi", T0 + 1).await.unwrap();
    assert_eq!(v2.kind, Some(policies::ChangeKind::Tightening));
    assert!(matches!(
        g.propose(&v2_doc, "heidi", T0 + 2).await,
        Err(GovernanceStoreError::AlreadyProposed(_))
    ));
    let o2 = v2.order().unwrap();
    // A bad signature stores nothing.
    let before = size(g).await;
    let mut forged = sig(o2.digest(), "heidi");
    forged.signature[0] ^= 1;
    assert!(matches!(
        g.approve(&o2, &[forged], T0 + 3).await,
        Err(GovernanceStoreError::Governance(
            GovernanceError::BadSignature { .. }
        ))
    ));
    assert_eq!(size(g).await, before);
    // An order with another issue time is not this proposal's.
    let mut other = o2.clone();
    other.issued_at_ms += 1;
    assert!(matches!(
        g.approve(&other, &[sig(other.digest(), "heidi")], T0 + 3)
            .await,
        Err(GovernanceStoreError::OrderMismatch(_))
    ));
    // The same admin twice is still one admin.
    let out = g
        .approve(
            &o2,
            &[sig(o2.digest(), "heidi"), sig(o2.digest(), "heidi")],
            T0 + 4,
        )
        .await
        .unwrap();
    assert!(matches!(out, ApproveOutcome::Waiting { ref signed, need: 2 } if signed.len() == 1));
    let out = g
        .approve(&o2, &[sig(o2.digest(), "judy")], T0 + 5)
        .await
        .unwrap();
    assert_eq!(out, ApproveOutcome::Activated);
    assert_eq!(g.active(T0 + 5).await.unwrap().hash, v2.hash);
    assert_eq!(
        g.version(&v1.hash).await.unwrap().status,
        VersionStatus::Superseded
    );
    // Approving an active version again is refused.
    assert!(matches!(
        g.approve(&o2, &[sig(o2.digest(), "ivan")], T0 + 6).await,
        Err(GovernanceStoreError::WrongStatus { .. })
    ));

    // Loosening (back to k = 1): waits 72 h; a veto during the wait stops it.
    let v3_doc = EXAMPLE.replace("version = 1", "version = 3");
    let v3 = g.propose(&v3_doc, "ivan", T0 + 10).await.unwrap();
    assert_eq!(v3.kind, Some(policies::ChangeKind::Loosening));
    let o3 = v3.order().unwrap();
    let out = g
        .approve(
            &o3,
            &[sig(o3.digest(), "ivan"), sig(o3.digest(), "judy")],
            T0 + 20,
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        ApproveOutcome::Accepted {
            activates_at_ms: T0 + 20 + 72 * HOUR
        }
    );
    assert_eq!(
        g.active(T0 + 20 + 72 * HOUR - 1).await.unwrap().hash,
        v2.hash
    );
    g.veto(&o3, &[sig(o3.veto_digest(), "heidi")], T0 + 30)
        .await
        .unwrap();
    assert_eq!(g.active(T0 + 100 * HOUR).await.unwrap().hash, v2.hash);
    assert!(matches!(
        g.veto(&o3, &[sig(o3.veto_digest(), "judy")], T0 + 40).await,
        Err(GovernanceStoreError::WrongStatus { .. })
    ));
    // Proposed again as version 4, not vetoed: activates exactly at its time.
    let v4_doc = EXAMPLE.replace("version = 1", "version = 4");
    let v4 = g.propose(&v4_doc, "ivan", T0 + 50).await.unwrap();
    let o4 = v4.order().unwrap();
    g.approve(
        &o4,
        &[sig(o4.digest(), "ivan"), sig(o4.digest(), "heidi")],
        T0 + 60,
    )
    .await
    .unwrap();
    assert!(g
        .activate_due(T0 + 60 + 72 * HOUR - 1)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        g.activate_due(T0 + 60 + 72 * HOUR).await.unwrap(),
        vec![(v2.hash, v4.hash)]
    );
    assert_eq!(g.active_stored().await.unwrap().hash, v4.hash);
    let history = g.history().await.unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(
        history
            .iter()
            .filter(|v| v.status == VersionStatus::Active)
            .count(),
        1
    );

    // Freeze: one admin; the lift needs two; stale orders are refused.
    let now = T0 + 80 * HOUR;
    let f = g
        .freeze_order(FreezeAction::Freeze, "drill", now)
        .await
        .unwrap();
    let before = size(g).await;
    assert!(matches!(
        g.apply_freeze(&f, &[sig(f.digest(), "alice")], now).await,
        Err(GovernanceStoreError::Freeze(
            FreezeError::BadSignature { .. }
        ))
    ));
    assert_eq!(size(g).await, before);
    assert!(
        g.apply_freeze(&f, &[sig(f.digest(), "judy")], now)
            .await
            .unwrap()
            .frozen
    );
    assert!(g.freeze_state().await.unwrap().frozen);
    let lift = g
        .freeze_order(FreezeAction::Lift, "drill over", now + 1)
        .await
        .unwrap();
    assert!(matches!(
        g.apply_freeze(&lift, &[sig(lift.digest(), "judy")], now + 1)
            .await,
        Err(GovernanceStoreError::Freeze(
            FreezeError::NotEnoughAdmins { .. }
        ))
    ));
    assert!(g.freeze_state().await.unwrap().frozen);
    let st = g
        .apply_freeze(
            &lift,
            &[sig(lift.digest(), "judy"), sig(lift.digest(), "ivan")],
            now + 2,
        )
        .await
        .unwrap();
    assert!(!st.frozen);
    assert_eq!(st.seq, 2);
    assert!(matches!(
        g.apply_freeze(&f, &[sig(f.digest(), "judy")], now + 3)
            .await,
        Err(GovernanceStoreError::Freeze(FreezeError::StaleOrder { .. }))
    ));

    let report = g.ledger.verify(None).await.unwrap();
    let kinds: Vec<String> = g
        .ledger
        .entries()
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind().name().to_string())
        .collect();
    assert_eq!(report.entries as usize, kinds.len());
    assert_eq!(kinds.iter().filter(|k| *k == "freeze").count(), 2);
    assert_eq!(kinds.iter().filter(|k| *k == "policy_vetoed").count(), 1);
    // installed, v2 at once, v4 after its delay
    assert_eq!(kinds.iter().filter(|k| *k == "policy_activated").count(), 3);
}

#[tokio::test]
async fn governance_and_freeze_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    let g = Governance::new(LedgerStore::open(&url).await.unwrap());
    scenario(&g).await;
}

#[tokio::test]
async fn governance_and_freeze_on_postgres() {
    let Ok(url) = std::env::var("TREASURY_TEST_POSTGRES_URL") else {
        regtest::skip_or_fail(
            "postgres",
            "governance_and_freeze_on_postgres",
            &"TREASURY_TEST_POSTGRES_URL is not set",
        );
        return;
    };
    let schema = format!("gov_{}_{}", std::process::id(), rand::random::<u32>());
    let g = Governance::new(
        LedgerStore::open_in_schema(&url, Some(&schema))
            .await
            .unwrap(),
    );
    scenario(&g).await;
}
