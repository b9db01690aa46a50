//! Spend requests end to end on a regtest node (Bitcoin Core over RPC), on SQLite and, when
//! `TREASURY_TEST_POSTGRES_URL` is set, on PostgreSQL: the example policy's tiers (1 approval,
//! 2 of 3, 3 of 5 plus the CFO group plus 24 h), allowlist and velocity denials, the freeze,
//! policy changes (a tightening at once, a loosening after its delay, a veto), and approvals
//! refused for tampering, replay, expiry and the initiator. The clock is the test's.
//!
//! The test policy is `policies/examples/strategic-reserve.toml` with the same keys (their
//! secrets are the fixed test secrets `[n; 32]`) and the same rules, with regtest addresses on
//! the allowlist and the amounts scaled by 1/100 (regtest coinbases halve every 150 blocks):
//! small up to 0.01 BTC, medium up to 0.5 BTC, velocity 1 BTC / 24 h, 2.5 BTC / 7 d,
//! 5 BTC / 30 d.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{rpc, Faucet, NET};
use std::str::FromStr;

use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bdk_wallet::bitcoin::secp256k1::{Secp256k1, SecretKey};
use bdk_wallet::bitcoin::{Address, Amount, FeeRate, Txid};
use custody::request::{RequestError, State};
use custody::vault::descriptor::with_checksum;
use custody::vault::spend::{FeeCaps, Payment};
use custody::vault::{Template, TemplateKey, VaultConfig};
use policies::approval::{sign, ApprovalError, ApprovalSubject, Verdict};
use policies::evaluate::{DenyReason, Missing};
use policies::freeze::{AdminSignature, FreezeAction, FreezeError};
use policies::Decision;
use rand::rngs::StdRng;
use rand::SeedableRng;
use regtest::{node_or_skip, RegtestNode};
use serde_json::{json, Value};
use treasury::node::{NodeAuth, NodeConfig};
use treasury::service::governance::{ApproveOutcome, GovernanceStoreError, VersionStatus};
use treasury::service::spend::{At, CreateSpend, SpendService, SpendServiceError};
use treasury::service::vaults::VaultService;
use treasury::store::LedgerStore;

const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
const T0: i64 = 1_800_000_000_000;
const HOUR: i64 = 3_600_000;

fn secret(person: &str) -> SecretKey {
    let n = match person {
        "alice" => 1,
        "bob" => 2,
        "carol" => 3,
        "dave" => 4,
        "erin" => 5,
        "frank" => 6,
        "grace" => 7,
        "heidi" => 8,
        "ivan" => 9,
        "judy" => 10,
        _ => 11,
    };
    SecretKey::from_slice(&[n; 32]).unwrap()
}

/// The example policy scaled for regtest (see the module docs), with `allow` on the allowlist.
fn test_policy(allow: &[Address; 3]) -> String {
    let mut p = EXAMPLE
        .replace("up_to_sat = 100_000_000", "up_to_sat = 1_000_000")
        .replace("up_to_sat = 5_000_000_000", "up_to_sat = 50_000_000")
        .replace("max_sat = 20_000_000_000", "max_sat = 100_000_000")
        .replace("max_sat = 50_000_000_000", "max_sat = 250_000_000")
        .replace("max_sat = 100_000_000_000", "max_sat = 500_000_000");
    for (old, new) in [
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
        "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
    ]
    .iter()
    .zip(allow)
    {
        assert!(p.contains(old));
        p = p.replace(old, &new.to_string());
    }
    assert_ne!(p, EXAMPLE);
    p
}

/// An officer's account key with origin: (public `[fp/48'/1'/0'/2']tpub`, same with tprv).
fn officer_strings(seed: u8) -> (String, String) {
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(NET, &[seed; 32]).unwrap();
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let acct = master.derive_priv(&secp, &path).unwrap();
    let xpub = Xpub::from_priv(&secp, &acct);
    let fp = master.fingerprint(&secp);
    (
        format!("[{fp}/48'/1'/0'/2']{xpub}"),
        format!("[{fp}/48'/1'/0'/2']{acct}"),
    )
}

fn officer_key(seed: u8) -> TemplateKey {
    TemplateKey::parse(&officer_strings(seed).0).unwrap()
}

struct World<'a> {
    node: &'a RegtestNode,
    svc: SpendService,
    faucet: Faucet,
    seed: u8,
    rng: StdRng,
}

impl World<'_> {
    /// A 3-of-3 vault `name` (two officers and the policy key, which signs every spend)
    /// funded with `coins` deposits of `each`, mined and synced; returns
    /// its descriptor and the seed of its first officer key (the others are +1 and +2).
    async fn vault(
        &mut self,
        name: &str,
        coins: usize,
        each: Amount,
    ) -> (custody::vault::VaultDescriptor, u8) {
        self.seed += 3;
        let t = Template::SortedMulti {
            k: 3,
            officers: vec![officer_key(self.seed), officer_key(self.seed + 1)],
            policy_key: officer_key(self.seed + 2),
        };
        let d = t.build(NET).unwrap();
        self.svc
            .vaults
            .create(VaultConfig::new(name, d.clone(), 0).unwrap(), "create")
            .await
            .unwrap();
        for _ in 0..coins {
            let addr = self.svc.vaults.next_address(name).await.unwrap().address;
            self.faucet.pay(self.node, &addr, each);
        }
        self.node.mine_blocks(1, &self.node.new_address()).unwrap();
        self.sync(name).await;
        (d, self.seed)
    }

    async fn sync(&self, name: &str) {
        let cfg = NodeConfig {
            url: self.node.rpc_url(),
            auth: NodeAuth::Cookie(self.node.cookie_file()),
        };
        self.svc.vaults.sync(name, &cfg).await.unwrap();
    }

    async fn create(
        &mut self,
        id: &str,
        vault: &str,
        initiator: &str,
        to: &Address,
        sat: u64,
        now: i64,
    ) -> Result<treasury::service::spend::StoredRequest, SpendServiceError> {
        let c = CreateSpend {
            id: Some(id.into()),
            vault: vault.into(),
            initiator: initiator.into(),
            payments: vec![Payment {
                address: to.as_unchecked().clone(),
                amount: Amount::from_sat(sat),
            }],
            fee_rate: FeeRate::from_sat_per_vb_u32(5),
            memo: None,
            confirmations_required: 1,
        };
        self.svc
            .create(&c, &FeeCaps::default(), At::ms(now), &mut self.rng)
            .await
    }

    /// `person`'s approval of the request's subject as stored.
    async fn approval(&self, id: &str, person: &str) -> policies::Approval {
        let r = self.svc.load(id).await.unwrap().request;
        sign(&r.subject, person, &secret(person))
    }

    async fn approve(
        &self,
        id: &str,
        person: &str,
        now: i64,
    ) -> Result<treasury::service::spend::StoredRequest, SpendServiceError> {
        let a = self.approval(id, person).await;
        self.svc.approve(id, a, At::ms(now)).await
    }

    async fn state(&self, id: &str) -> State {
        self.svc.load(id).await.unwrap().request.state
    }

    async fn reserved(&self, vault: &str) -> usize {
        self.svc
            .vaults
            .vaults
            .reserved(vault, T0)
            .await
            .unwrap()
            .len()
    }
}

fn refused(r: Result<treasury::service::spend::StoredRequest, SpendServiceError>) -> RequestError {
    match r {
        Err(SpendServiceError::Request(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn admin_sig(digest: [u8; 32], admin: &str) -> AdminSignature {
    AdminSignature::sign(digest, admin, &secret(admin))
}

async fn ledger_kinds(ledger: &LedgerStore) -> Vec<String> {
    ledger
        .entries()
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind().name().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_lifecycle_on_sqlite_and_postgres() {
    let Some(node) = node_or_skip("spend_lifecycle") else {
        return;
    };
    let faucet = Faucet::new(&node, 24);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("spend.db").display());
    let sqlite = SpendService::new(VaultService::new(LedgerStore::open(&url).await.unwrap()));
    let mut w = World {
        node: &node,
        svc: sqlite,
        faucet,
        seed: 40,
        rng: StdRng::seed_from_u64(7),
    };
    lifecycle(&mut w, "s").await;
    match std::env::var("TREASURY_TEST_POSTGRES_URL") {
        Ok(url) => {
            let schema = format!("spend_{}_{}", std::process::id(), rand::random::<u32>());
            let pg = LedgerStore::open_in_schema(&url, Some(&schema))
                .await
                .unwrap();
            w.svc = SpendService::new(VaultService::new(pg));
            w.seed = 120;
            lifecycle(&mut w, "p").await;
        }
        Err(_) => regtest::skip_or_fail(
            "postgres",
            "spend_lifecycle_postgres",
            &"TREASURY_TEST_POSTGRES_URL is not set",
        ),
    }
}

/// Every scenario on one database; `p` prefixes vault names (vaults of both databases live on
/// one node).
async fn lifecycle(w: &mut World<'_>, p: &str) {
    let allow = [
        w.node.new_address(),
        w.node.new_address(),
        w.node.new_address(),
    ];
    let outside = w.node.new_address();
    let policy_v1 = test_policy(&allow);
    let g = w.svc.governance.clone();
    // Nothing works before a policy is installed, and nothing is reserved by the refusal.
    w.vault(&format!("{p}-small"), 3, Amount::from_sat(2_000_000))
        .await;
    let small = format!("{p}-small");
    let err = w
        .create(&format!("{p}-r0"), &small, "bob", &outside, 500_000, T0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no active policy"), "{err}");
    assert_eq!(w.reserved(&small).await, 0);
    let v1 = g.init(&policy_v1, "operator", T0).await.unwrap();
    assert_eq!(v1.status, VersionStatus::Active);
    assert!(matches!(
        g.init(&policy_v1, "operator", T0).await,
        Err(GovernanceStoreError::AlreadyInitialized(_))
    ));

    // --- Small: one duty officer; the initiator's own approval never counts.
    let r1 = format!("{p}-r1");
    let s = w
        .create(&r1, &small, "bob", &outside, 500_000, T0)
        .await
        .unwrap();
    assert_eq!(s.request.state, State::PendingApproval);
    assert_eq!(s.request.policy_hash, v1.hash);
    let view = w.svc.show(&r1, At::ms(T0)).await.unwrap();
    match &view.evaluation.decision {
        Decision::Pending { missing } => assert_eq!(
            missing,
            &vec![Missing::Approvals {
                alternatives: vec![vec![policies::evaluate::Shortfall {
                    group: "duty-officers".into(),
                    more: 1,
                    k: 1
                }]]
            }]
        ),
        d => panic!("expected pending, got {d:?}"),
    }
    assert_eq!(view.evaluation.tier.as_deref(), Some("small"));
    assert!(matches!(
        refused(w.approve(&r1, "bob", T0 + 1000).await),
        RequestError::InitiatorApproval(_)
    ));
    // A tampered subject (another amount to the destination) is refused: digest mismatch.
    let mut tampered = w.svc.load(&r1).await.unwrap().request.subject;
    tampered.outputs[0].1 += Amount::from_sat(1);
    let bad = sign(&tampered, "alice", &secret("alice"));
    assert!(matches!(
        refused(w.svc.approve(&r1, bad, At::ms(T0 + 1000)).await),
        RequestError::ApprovalRefused(ApprovalError::DigestMismatch)
    ));
    // A rejection by carol is recorded, does not veto.
    let rej = {
        let r = w.svc.load(&r1).await.unwrap().request;
        sign(
            &r.subject.with_decision(Verdict::Reject),
            "carol",
            &secret("carol"),
        )
    };
    let s = w.svc.approve(&r1, rej, At::ms(T0 + 1500)).await.unwrap();
    assert_eq!(s.request.rejections.len(), 1);
    assert_eq!(s.request.state, State::PendingApproval);
    let alice_r1 = w.approval(&r1, "alice").await;
    let s = w
        .svc
        .approve(&r1, alice_r1.clone(), At::ms(T0 + 2000))
        .await
        .unwrap();
    assert_eq!(s.request.state, State::ReadyToSign);
    // stored: reload gives the same state, approvals and transitions
    let again = w.svc.load(&r1).await.unwrap();
    assert_eq!(again.request, s.request);
    // A duplicate is refused.
    assert!(matches!(
        refused(
            w.svc
                .approve(&r1, alice_r1.clone(), At::ms(T0 + 2500))
                .await
        ),
        RequestError::IllegalTransition { .. } | RequestError::DuplicateApproval { .. }
    ));
    // A replay of alice's approval on another request is refused.
    let r2 = format!("{p}-r2");
    w.create(&r2, &small, "bob", &outside, 400_000, T0 + 3000)
        .await
        .unwrap();
    assert!(matches!(
        refused(w.svc.approve(&r2, alice_r1, At::ms(T0 + 3500)).await),
        RequestError::ApprovalRefused(ApprovalError::Replay { .. })
    ));
    // An approval arriving after the subject's expiry (48 h) is refused.
    let late = w.approve(&r2, "alice", T0 + 49 * HOUR).await;
    assert!(matches!(
        refused(late),
        RequestError::ApprovalRefused(ApprovalError::Expired { .. })
    ));
    assert_eq!(w.state(&r2).await, State::PendingApproval);
    // Re-evaluated after expiry, the request expires and gives its coins back.
    let held = w.reserved(&small).await;
    let s = w.svc.reevaluate(&r2, At::ms(T0 + 49 * HOUR)).await.unwrap();
    assert_eq!(s.request.state, State::Expired);
    assert_eq!(w.reserved(&small).await, held - 1);
    // Cancel releases the coins too, and a cancelled request cannot be approved.
    let r3 = format!("{p}-r3");
    w.create(&r3, &small, "bob", &outside, 300_000, T0 + 4000)
        .await
        .unwrap();
    let held = w.reserved(&small).await;
    let s = w.svc.cancel(&r3, "bob", At::ms(T0 + 5000)).await.unwrap();
    assert_eq!(s.request.state, State::Cancelled);
    assert_eq!(w.reserved(&small).await, held - 1);
    assert!(matches!(
        refused(w.approve(&r3, "alice", T0 + 6000).await),
        RequestError::IllegalTransition { .. }
    ));
    // An id is an idempotency key: a second create with it is refused, nothing is reserved.
    let held = w.reserved(&small).await;
    assert!(matches!(
        w.create(&r3, &small, "bob", &outside, 300_000, T0 + 7000)
            .await,
        Err(SpendServiceError::Exists(_))
    ));
    assert_eq!(w.reserved(&small).await, held);

    // --- Medium: 2 of the 3 duty officers.
    let medium = format!("{p}-medium");
    w.vault(&medium, 1, Amount::from_sat(40_000_000)).await;
    let r4 = format!("{p}-r4");
    w.create(&r4, &medium, "dave", &outside, 30_000_000, T0)
        .await
        .unwrap();
    // Two approvals arriving at the same moment (two tasks, one database): both are kept
    // (the loser of the revision check re-applies on the new state).
    let (a, e) = (
        w.approval(&r4, "alice").await,
        w.approval(&r4, "erin").await,
    );
    let (s1, s2) = (w.svc.clone(), w.svc.clone());
    let (id1, id2) = (r4.clone(), r4.clone());
    let j1 = tokio::spawn(async move { s1.approve(&id1, a, At::ms(T0 + 1000)).await });
    let j2 = tokio::spawn(async move { s2.approve(&id2, e, At::ms(T0 + 1000)).await });
    j1.await.unwrap().unwrap();
    j2.await.unwrap().unwrap();
    let s = w.svc.load(&r4).await.unwrap();
    assert_eq!(s.request.approvals.len(), 2);
    assert_eq!(s.revision, 2);
    assert_eq!(s.request.state, State::PendingApproval);
    let view = w.svc.show(&r4, At::ms(T0 + 1000)).await.unwrap();
    assert_eq!(view.evaluation.tier.as_deref(), Some("medium"));
    assert!(matches!(&view.evaluation.decision,
        Decision::Pending { missing } if matches!(&missing[0],
            Missing::Approvals { alternatives } if alternatives[0][0].more == 1 && alternatives[0][0].k == 2)));
    // erin is an officer but not on duty: she does not count for this tier
    assert_eq!(view.evaluation.counted, vec!["alice".to_string()]);
    let s = w.approve(&r4, "bob", T0 + 2000).await.unwrap();
    assert_eq!(s.request.state, State::ReadyToSign);
    // A fee bump before signing is a new request over the same coin: new approvals needed,
    // the old one is replaced, old approvals do not carry over.
    let old_subject = s.request.subject.clone();
    let bob_r4 = w.approval(&r4, "bob").await;
    let low = treasury::service::spend::Bump {
        old_id: r4.clone(),
        new_id: Some(format!("{p}-r4b")),
        fee_rate: FeeRate::from_sat_per_vb_u32(5),
        initiator: "dave".into(),
    };
    assert!(matches!(
        w.svc
            .bump(&low, &FeeCaps::default(), At::ms(T0 + 2500), &mut w.rng)
            .await,
        Err(SpendServiceError::Invalid {
            what: "fee rate",
            ..
        })
    ));
    assert_eq!(w.state(&r4).await, State::ReadyToSign);
    let bump = treasury::service::spend::Bump {
        fee_rate: FeeRate::from_sat_per_vb_u32(12),
        ..low
    };
    let r4b = format!("{p}-r4b");
    let nb = w
        .svc
        .bump(&bump, &FeeCaps::default(), At::ms(T0 + 3000), &mut w.rng)
        .await
        .unwrap();
    assert_eq!(nb.request.id, r4b);
    assert_eq!(nb.request.state, State::PendingApproval);
    assert_eq!(nb.request.replaces.as_deref(), Some(r4.as_str()));
    assert!(nb.request.subject.fee > old_subject.fee);
    assert_eq!(nb.request.subject.inputs[0].0, old_subject.inputs[0].0);
    assert_eq!(nb.request.amount, Amount::from_sat(30_000_000));
    assert_eq!(w.state(&r4).await, State::Replaced { by: r4b.clone() });
    assert!(matches!(
        refused(w.svc.approve(&r4b, bob_r4, At::ms(T0 + 3500)).await),
        RequestError::ApprovalRefused(ApprovalError::Replay { .. })
    ));
    w.approve(&r4b, "alice", T0 + 4000).await.unwrap();
    let s = w.approve(&r4b, "bob", T0 + 4500).await.unwrap();
    assert_eq!(s.request.state, State::ReadyToSign);
    assert_eq!(
        w.reserved(&medium).await,
        1,
        "the coin passed to the replacement"
    );

    // --- Large: 3 of 5 officers and the CFO group, allowlisted only, 24 h after the quorum.
    let large = format!("{p}-large");
    w.vault(&large, 3, Amount::from_sat(90_000_000)).await;
    let r5 = format!("{p}-r5");
    let held = w.reserved(&large).await;
    let s = w
        .create(&r5, &large, "dave", &outside, 80_000_000, T0)
        .await
        .unwrap();
    assert_eq!(s.request.state, State::Rejected);
    assert!(s
        .request
        .transitions
        .last()
        .unwrap()
        .deny
        .iter()
        .any(|d| matches!(d, DenyReason::NotAllowlisted(a) if *a == outside.to_string())));
    assert_eq!(
        w.reserved(&large).await,
        held,
        "a denied request holds no coin"
    );
    let r6 = format!("{p}-r6");
    w.create(&r6, &large, "dave", &allow[0], 80_000_000, T0)
        .await
        .unwrap();
    for (who, at) in [("alice", 1), ("bob", 2), ("carol", 3)] {
        let s = w.approve(&r6, who, T0 + at * 1000).await.unwrap();
        assert_eq!(s.request.state, State::PendingApproval, "after {who}");
    }
    let view = w.svc.show(&r6, At::ms(T0 + 3000)).await.unwrap();
    assert_eq!(view.evaluation.tier.as_deref(), Some("large"));
    assert!(matches!(&view.evaluation.decision,
        Decision::Pending { missing } if missing.iter().any(|m| matches!(m,
            Missing::Approvals { alternatives } if alternatives[0].iter().any(|s| s.group == "cfo" && s.more == 1)))
            && missing.contains(&Missing::DelayAfterQuorum { secs: 86_400 })));
    let quorum = T0 + 4000;
    let s = w.approve(&r6, "frank", quorum).await.unwrap();
    assert_eq!(s.request.state, State::WaitingForDelay);
    assert_eq!(s.request.ready_at_ms, Some(quorum + 24 * HOUR));
    // Velocity: 0.8 BTC approved in the last 24 h; another 0.3 BTC exceeds 1 BTC / 24 h.
    let r7 = format!("{p}-r7");
    let s = w
        .create(&r7, &large, "dave", &outside, 30_000_000, T0 + 5000)
        .await
        .unwrap();
    assert_eq!(s.request.state, State::Rejected);
    assert!(s
        .request
        .transitions
        .last()
        .unwrap()
        .deny
        .iter()
        .any(|d| matches!(
            d,
            DenyReason::Velocity { window_secs: 86_400, used, .. } if used.to_sat() == 80_000_000
        )));
    // The delay: not ready one second before, ready at the time.
    let s = w
        .svc
        .reevaluate(&r6, At::ms(quorum + 24 * HOUR - 1000))
        .await
        .unwrap();
    assert_eq!(s.request.state, State::WaitingForDelay);
    // The periodic tick moves exactly the requests whose time has come.
    let changed = w
        .svc
        .reevaluate_open(At::ms(quorum + 24 * HOUR))
        .await
        .unwrap();
    assert!(
        changed.contains(&(r6.clone(), State::ReadyToSign)),
        "{changed:?}"
    );
    assert!(changed.iter().all(|(id, _)| *id != r1), "{changed:?}");
    assert_eq!(w.state(&r6).await, State::ReadyToSign);

    // An auditor re-runs the large request's decision from the ledger alone: the policy
    // document, the subject and every approval with its receive time are in the entries.
    auditor_reruns(&w.svc.vaults.ledger, &r6, quorum + 24 * HOUR).await;

    // --- An input spent by another transaction (the officers signed something else) voids
    // the approvals: the request expires when next evaluated and its coin reservation goes.
    let spent = format!("{p}-spent");
    let (d, seed) = w.vault(&spent, 1, Amount::from_sat(2_000_000)).await;
    let r12 = format!("{p}-r12");
    let s = w
        .create(&r12, &spent, "bob", &outside, 500_000, T0 + 8000)
        .await
        .unwrap();
    let coin = s.request.subject.inputs[0].0;
    let mut vault = w.svc.vaults.vaults.load(&spent).await.unwrap();
    let other = custody::vault::spend::build(
        &mut vault,
        &custody::vault::spend::SpendRequest {
            payments: vec![Payment {
                address: outside.as_unchecked().clone(),
                amount: Amount::from_sat(700_000),
            }],
            include: vec![coin],
            only_included: true,
            ..Default::default()
        },
        &std::collections::BTreeSet::new(),
        FeeRate::from_sat_per_vb_u32(5),
        &FeeCaps::default(),
        &mut w.rng,
    )
    .unwrap();
    let private: Vec<String> = [d.external_string(), d.internal_string()]
        .iter()
        .map(|s| {
            let mut body = s.split('#').next().unwrap().to_string();
            // the two officers and the policy key
            for k in [seed, seed + 1, seed + 2] {
                let (public, private) = officer_strings(k);
                body = body.replace(&public, &private);
            }
            with_checksum(&body)
        })
        .collect();
    let signed = rpc(
        w.node,
        "descriptorprocesspsbt",
        &[
            json!(other.psbt.to_string()),
            json!(private),
            json!("ALL"),
            json!(true),
            json!(true),
        ],
    );
    assert_eq!(signed["complete"], true, "{signed}");
    rpc(w.node, "sendrawtransaction", &[signed["hex"].clone()]);
    w.node.mine_blocks(1, &w.node.new_address()).unwrap();
    w.sync(&spent).await;
    let s = w.svc.reevaluate(&r12, At::ms(T0 + 9000)).await.unwrap();
    assert_eq!(s.request.state, State::Expired);
    let last = s.request.transitions.last().unwrap();
    assert!(last.reason.contains(&coin.to_string()), "{}", last.reason);
    assert!(w
        .svc
        .vaults
        .vaults
        .reserved(&spent, T0)
        .await
        .unwrap()
        .is_empty());

    // --- Freeze: one admin sets it, a single admin cannot lift it, the quorum does.
    let frz = format!("{p}-freeze");
    w.vault(&frz, 2, Amount::from_sat(2_000_000)).await;
    let r8 = format!("{p}-r8");
    w.create(&r8, &frz, "bob", &outside, 500_000, T0 + 10_000)
        .await
        .unwrap();
    let order = g
        .freeze_order(FreezeAction::Freeze, "incident 7", T0 + 11_000)
        .await
        .unwrap();
    // a non-admin (alice) cannot freeze
    assert!(matches!(
        g.apply_freeze(&order, &[admin_sig(order.digest(), "alice")], T0 + 11_000)
            .await,
        Err(GovernanceStoreError::Freeze(
            FreezeError::BadSignature { .. }
        ))
    ));
    let st = g
        .apply_freeze(&order, &[admin_sig(order.digest(), "heidi")], T0 + 11_000)
        .await
        .unwrap();
    assert!(st.frozen);
    // replaying the same order is refused (stale sequence)
    assert!(g
        .apply_freeze(&order, &[admin_sig(order.digest(), "heidi")], T0 + 11_500)
        .await
        .is_err());
    // while frozen: a new request is denied, a pending one is rejected on evaluation
    let r9 = format!("{p}-r9");
    let s = w
        .create(&r9, &frz, "bob", &outside, 500_000, T0 + 12_000)
        .await
        .unwrap();
    assert_eq!(s.request.state, State::Rejected);
    assert!(s
        .request
        .transitions
        .last()
        .unwrap()
        .deny
        .contains(&DenyReason::Frozen));
    let s = w.approve(&r8, "alice", T0 + 12_500).await.unwrap();
    assert_eq!(s.request.state, State::Rejected);
    let lift = g
        .freeze_order(FreezeAction::Lift, "resolved", T0 + 13_000)
        .await
        .unwrap();
    assert!(matches!(
        g.apply_freeze(&lift, &[admin_sig(lift.digest(), "heidi")], T0 + 13_000)
            .await,
        Err(GovernanceStoreError::Freeze(FreezeError::NotEnoughAdmins {
            need: 2,
            have: 1,
            ..
        }))
    ));
    assert!(g.freeze_state().await.unwrap().frozen);
    let st = g
        .apply_freeze(
            &lift,
            &[
                admin_sig(lift.digest(), "heidi"),
                admin_sig(lift.digest(), "ivan"),
            ],
            T0 + 13_000,
        )
        .await
        .unwrap();
    assert!(!st.frozen);
    let r10 = format!("{p}-r10");
    let s = w
        .create(&r10, &frz, "bob", &outside, 500_000, T0 + 14_000)
        .await
        .unwrap();
    assert_eq!(s.request.state, State::PendingApproval);

    // --- Policy changes. A tightening (small needs 2 duty officers) applies at once and
    // cancels the requests bound to the old version.
    let t1 = T0 + 20_000;
    let v2_doc = policy_v1.replace("version = 1", "version = 2").replace(
        "require = [{ group = \"duty-officers\", k = 1 }]",
        "require = [{ group = \"duty-officers\", k = 2 }]",
    );
    let v2 = g.propose(&v2_doc, "heidi", t1).await.unwrap();
    assert_eq!(v2.status, VersionStatus::Proposed);
    assert_eq!(v2.kind, Some(policies::ChangeKind::Tightening));
    let o2 = v2.order().unwrap();
    let out = g
        .approve(&o2, &[admin_sig(o2.digest(), "heidi")], t1)
        .await
        .unwrap();
    assert!(matches!(out, ApproveOutcome::Waiting { need: 2, .. }));
    assert_eq!(g.active(t1).await.unwrap().hash, v1.hash);
    // a veto signature is not an approval
    assert!(g
        .approve(&o2, &[admin_sig(o2.veto_digest(), "ivan")], t1)
        .await
        .is_err());
    let out = g
        .approve(&o2, &[admin_sig(o2.digest(), "ivan")], t1 + 1)
        .await
        .unwrap();
    assert_eq!(out, ApproveOutcome::Activated);
    assert_eq!(g.active(t1 + 1).await.unwrap().hash, v2.hash);
    // r10 (bound to v1, pending) is cancelled when v2 activates (on the next service call)
    let r11 = format!("{p}-r11");
    let s = w
        .create(&r11, &frz, "bob", &outside, 500_000, t1 + 2000)
        .await
        .unwrap();
    assert_eq!(s.request.policy_hash, v2.hash);
    assert_eq!(w.state(&r10).await, State::Cancelled);
    let s = w.approve(&r11, "alice", t1 + 3000).await.unwrap();
    assert_eq!(
        s.request.state,
        State::PendingApproval,
        "v2: one is not enough"
    );
    let s = w.approve(&r11, "carol", t1 + 4000).await.unwrap();
    assert_eq!(s.request.state, State::ReadyToSign);

    // A loosening (24 h velocity limit raised) waits for the loosening delay (72 h).
    let v3_doc = v2_doc
        .replace("version = 2", "version = 3")
        .replace("max_sat = 100_000_000", "max_sat = 200_000_000");
    let v3 = g.propose(&v3_doc, "heidi", t1 + 5000).await.unwrap();
    assert_eq!(v3.kind, Some(policies::ChangeKind::Loosening));
    assert!(!v3.loosened.is_empty());
    let o3 = v3.order().unwrap();
    let accepted_at = t1 + 6000;
    let out = g
        .approve(
            &o3,
            &[
                admin_sig(o3.digest(), "ivan"),
                admin_sig(o3.digest(), "judy"),
            ],
            accepted_at,
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        ApproveOutcome::Accepted {
            activates_at_ms: accepted_at + 72 * HOUR
        }
    );
    assert_eq!(
        g.active(accepted_at + 72 * HOUR - 1).await.unwrap().hash,
        v2.hash
    );
    let t2 = accepted_at + 72 * HOUR;
    assert_eq!(g.active(t2).await.unwrap().hash, v3.hash);
    // A second loosening is vetoed by one admin during its delay and never activates.
    let v4_doc = v3_doc
        .replace("version = 3", "version = 4")
        .replace("max_sat = 200_000_000", "max_sat = 300_000_000");
    let v4 = g.propose(&v4_doc, "heidi", t2 + 1000).await.unwrap();
    let o4 = v4.order().unwrap();
    g.approve(
        &o4,
        &[
            admin_sig(o4.digest(), "heidi"),
            admin_sig(o4.digest(), "ivan"),
        ],
        t2 + 2000,
    )
    .await
    .unwrap();
    // an approval signature is not a veto; a non-admin cannot veto
    assert!(g
        .veto(&o4, &[admin_sig(o4.digest(), "judy")], t2 + 3000)
        .await
        .is_err());
    assert!(g
        .veto(&o4, &[admin_sig(o4.veto_digest(), "alice")], t2 + 3000)
        .await
        .is_err());
    g.veto(&o4, &[admin_sig(o4.veto_digest(), "judy")], t2 + 3000)
        .await
        .unwrap();
    assert_eq!(g.active(t2 + 100 * HOUR).await.unwrap().hash, v3.hash);
    assert_eq!(
        g.version(&v4.hash).await.unwrap().status,
        VersionStatus::Vetoed
    );

    // Expiry by height: 288 blocks after creation a request's approvals lapse, even though
    // its time has not come; the next evaluation expires it and frees its coin.
    let r13 = format!("{p}-r13");
    w.sync(&small).await; // the tip at creation is the vault's last sync
    let s = w
        .create(&r13, &small, "bob", &outside, 500_000, t2 + 4000)
        .await
        .unwrap();
    assert_eq!(s.request.state, State::PendingApproval);
    let created = s.request.created_height;
    assert_eq!(s.request.subject.expires_at_height, Some(created + 288));
    w.node.mine_blocks(287, &w.node.new_address()).unwrap();
    w.sync(&small).await;
    let s = w.svc.reevaluate(&r13, At::ms(t2 + 4500)).await.unwrap();
    assert_eq!(s.request.state, State::PendingApproval, "one block to go");
    w.node.mine_blocks(1, &w.node.new_address()).unwrap();
    w.sync(&small).await;
    let held = w.reserved(&small).await;
    let s = w.svc.reevaluate(&r13, At::ms(t2 + 5000)).await.unwrap();
    assert_eq!(
        s.request.state,
        State::Expired,
        "{:?}",
        s.request.transitions.last()
    );
    assert_eq!(w.reserved(&small).await, held - 1);

    // The ledger holds every step and verifies.
    let ledger = &w.svc.vaults.ledger;
    let report = ledger.verify(None).await.unwrap();
    assert!(report.entries > 50, "{report}");
    let kinds = ledger_kinds(ledger).await;
    for k in [
        "spend_requested",
        "approval",
        "signature",
        "freeze",
        "policy_proposed",
        "policy_activated",
        "policy_vetoed",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} entry");
    }
    let freezes = kinds.iter().filter(|k| *k == "freeze").count();
    assert_eq!(freezes, 2, "one freeze, one lift");
}

/// The subject's expiry is what the policy allows at creation: a subject made to outlive it is
/// denied by the evaluator. (A pure check of the binding the service relies on.)
#[test]
fn subject_expiry_follows_the_policy() {
    let allow = [
        Address::from_str("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080")
            .unwrap()
            .assume_checked(),
        Address::from_str("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080")
            .unwrap()
            .assume_checked(),
        Address::from_str("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080")
            .unwrap()
            .assume_checked(),
    ];
    // Three equal addresses are a duplicate allowlist entry: refused with the field named.
    let err = policies::Policy::from_toml(&test_policy(&allow)).unwrap_err();
    assert!(err.to_string().contains("allowlist"), "{err}");
    let p = policies::Policy::from_toml(EXAMPLE).unwrap();
    let (ms, h) = ApprovalSubject::max_expiry(&p, T0, 100);
    assert_eq!(ms, T0 + 48 * HOUR);
    assert_eq!(h, Some(388));
}

/// Rebuilds the request's subject and facts from its `spend_requested` entry, the policy from
/// the `policy_activated` entry that installed it, verifies every approval entry and evaluates.
async fn auditor_reruns(ledger: &LedgerStore, id: &str, ready_at: i64) {
    use bdk_wallet::bitcoin::{OutPoint, ScriptBuf};
    use policies::evaluate::{Context, ReceivedApproval, RequestKind, SpendRequestFacts};
    let bodies: Vec<(String, Value)> = ledger
        .entries()
        .await
        .unwrap()
        .iter()
        .filter_map(|e| {
            let v: Value = serde_json::from_slice(e.payload().as_bytes()).ok()?;
            Some((e.kind().name().to_string(), v))
        })
        .collect();
    let doc = bodies
        .iter()
        .find(|(k, v)| k == "policy_activated" && v["event"] == "installed")
        .map(|(_, v)| v["document"].as_str().unwrap().to_string())
        .unwrap();
    let policy = policies::Policy::from_toml(&doc).unwrap();
    let (_, sub) = bodies
        .iter()
        .find(|(k, v)| {
            k == "spend_requested" && v["request_id"] == id && v["cause"]["cause"] == "submitted"
        })
        .unwrap();
    let s = &sub["subject"];
    let subject = ApprovalSubject {
        request_id: id.into(),
        vault: s["vault"].as_str().unwrap().into(),
        txid: Txid::from_str(s["txid"].as_str().unwrap()).unwrap(),
        inputs: s["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    OutPoint::from_str(i["outpoint"].as_str().unwrap()).unwrap(),
                    Amount::from_sat(i["amount_sat"].as_u64().unwrap()),
                )
            })
            .collect(),
        outputs: s["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    ScriptBuf::from_hex(o["script_hex"].as_str().unwrap()).unwrap(),
                    Amount::from_sat(o["amount_sat"].as_u64().unwrap()),
                )
            })
            .collect(),
        fee: Amount::from_sat(s["fee_sat"].as_u64().unwrap()),
        policy: s["policy"].as_str().unwrap().parse().unwrap(),
        decision: Verdict::Approve,
        expires_at_ms: s["expires_at_ms"].as_i64().unwrap(),
        expires_at_height: s["expires_at_height"].as_u64().map(|h| h as u32),
    };
    assert_eq!(subject.policy, policy.hash());
    let approvals: Vec<ReceivedApproval> = bodies
        .iter()
        .filter(|(k, v)| k == "approval" && v["request_id"] == id && v["approval"].is_object())
        .map(|(_, v)| ReceivedApproval {
            approval: serde_json::from_value(v["approval"].clone()).unwrap(),
            received_ms: v["received_ms"].as_i64().unwrap(),
        })
        .collect();
    assert_eq!(approvals.len(), 4, "alice, bob, carol, frank");
    for a in &approvals {
        policies::verify(&policy, &subject, &a.approval, a.received_ms, 0).unwrap();
    }
    let facts = SpendRequestFacts {
        id: id.into(),
        vault: subject.vault.clone(),
        initiator: sub["initiator"].as_str().unwrap().into(),
        amount: Amount::from_sat(sub["amount_sat"].as_u64().unwrap()),
        destinations: serde_json::from_value(sub["destinations"].clone()).unwrap(),
        fee: subject.fee,
        fee_rate: FeeRate::from_sat_per_kwu(sub["fee_rate_sat_kwu"].as_u64().unwrap()),
        requested_fee_rate: sub["requested_fee_rate_sat_kwu"]
            .as_u64()
            .map(FeeRate::from_sat_per_kwu),
        kind: RequestKind::Spend,
        created_ms: sub["created_ms"].as_i64().unwrap(),
        created_height: sub["created_height"].as_u64().unwrap() as u32,
        subject,
    };
    let ctx = Context {
        now_ms: ready_at,
        tip_height: facts.created_height,
        frozen: false,
    };
    let ev = policies::evaluate(&policy, &facts, &[], &approvals, &ctx);
    assert_eq!(
        ev.decision,
        Decision::Allow {
            ready_at_ms: ready_at
        }
    );
}
