//! The tamper suite (issue 16): whoever can write the service's database must not change the
//! rules the policy key obeys. Each test makes a real request under the example policy (with
//! test admin keys, a delay on the small tier and a 3 BTC daily velocity cap), rewrites the
//! service's tables with raw SQL the way an attacker with database access would, and asks for
//! the policy signature: the policy signer process (SoftHSM2 token, its own state) refuses.
//! Then the honest flow still works. On SQLite and on PostgreSQL (a schema of its own).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::str::FromStr;

use bdk_wallet::bitcoin::secp256k1::{Keypair, Secp256k1, SecretKey};
use bdk_wallet::bitcoin::{Address, Amount, FeeRate};
use common::signer::SpawnedSigner;
use common::{node_config, officer, NET};
use custody::request::State;
use custody::vault::spend::{FeeCaps, Payment};
use custody::vault::{Template, TemplateKey, VaultConfig};
use policies::approval::sign;
use policies::freeze::{AdminSignature, FreezeAction, FreezeOrder};
use rand::rngs::StdRng;
use rand::SeedableRng;
use regtest::{node_or_skip, RegtestNode};
use treasury::service::policy_signer::PolicySignError;
use treasury::service::spend::{At, CreateSpend, SpendService};
use treasury::service::vaults::VaultService;
use treasury::store::LedgerStore;

const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
const ADMINS: [(&str, &str, u8); 3] = [
    (
        "heidi",
        "f991f944d1e1954a7fc8b9bf62e0d78f015f4c07762d505e20e6c45260a3661b",
        0x41,
    ),
    (
        "ivan",
        "56b328b30c8bf5839e24058747879408bdb36241dc9c2e7c619faa12b2920967",
        0x42,
    ),
    (
        "judy",
        "f76a39d05686e34a4420897e359371836145dd3973e3982568b60f8433adde6e",
        0x43,
    ),
];
const SMALL_DELAY_SECS: u64 = 4;

fn secret(n: u8) -> SecretKey {
    SecretKey::from_slice(&[n; 32]).unwrap()
}

fn approver_secret(person: &str) -> SecretKey {
    let n = ["alice", "bob", "carol"]
        .iter()
        .position(|p| *p == person)
        .unwrap();
    secret(u8::try_from(n + 1).unwrap())
}

fn admin_sig(order: &FreezeOrder, admin: &str) -> AdminSignature {
    let (_, _, n) = ADMINS.iter().find(|(a, _, _)| *a == admin).unwrap();
    order.sign(admin, &secret(*n))
}

/// The example policy with test admin keys, a delay on the small tier and a 3 BTC daily cap.
fn tamper_policy() -> String {
    let secp = Secp256k1::new();
    let mut doc = EXAMPLE.to_owned();
    for (_, pubkey, n) in ADMINS {
        let xonly = Keypair::from_secret_key(&secp, &secret(n))
            .x_only_public_key()
            .0
            .to_string();
        doc = doc.replace(pubkey, &xonly);
    }
    let small = "up_to_sat = 100_000_000\nrequire = [{ group = \"duty-officers\", k = 1 }]";
    assert!(doc.contains(small));
    doc = doc.replace(small, &format!("{small}\ndelay_secs = {SMALL_DELAY_SECS}"));
    assert!(doc.contains("max_sat = 20_000_000_000"));
    doc.replacen("max_sat = 20_000_000_000", "max_sat = 300_000_000", 1)
}

enum Db {
    Sqlite,
    Postgres,
}

struct World {
    _dir: tempfile::TempDir,
    node: RegtestNode,
    signer: SpawnedSigner,
    svc: SpendService,
    url: String,
    policy: String,
    rng: StdRng,
}

impl World {
    async fn new(test: &str, db: Db) -> Option<World> {
        let node = node_or_skip(test)?;
        let dir = tempfile::tempdir().unwrap();
        let policy = tamper_policy();
        let url = match db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("t.db").display()),
            Db::Postgres => {
                let Ok(base) = std::env::var("TREASURY_TEST_POSTGRES_URL") else {
                    regtest::skip_or_fail(
                        "postgres",
                        test,
                        &"TREASURY_TEST_POSTGRES_URL is not set",
                    );
                    return None;
                };
                let schema = format!("tamper_{}_{}", std::process::id(), rand::random::<u32>());
                LedgerStore::open_in_schema(&base, Some(&schema))
                    .await
                    .unwrap()
                    .close()
                    .await;
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}options=-c%20search_path%3D{schema}")
            }
        };
        let signer = SpawnedSigner::start(dir.path(), test, &policy).await?;
        let client = signer.client();
        let template = Template::PolicyWithRecovery {
            policy_key: signer.template_key(),
            k: 2,
            officers: [11, 12, 13]
                .iter()
                .map(|s| TemplateKey::parse(&officer(*s).public).unwrap())
                .collect(),
            r: 2,
            recovery: (21..24)
                .map(|s| TemplateKey::parse(&officer(s).public).unwrap())
                .collect(),
            older: 5,
        };
        let d = template.build(NET).unwrap();
        let ledger = LedgerStore::open(&url).await.unwrap();
        let svc = SpendService::new(VaultService::new(ledger));
        svc.vaults
            .create_registered(
                VaultConfig::new("reserve", d, 0).unwrap(),
                "create",
                Some(&client),
            )
            .await
            .unwrap();
        svc.governance
            .init(&policy, "admins", treasury::clock::now_ms())
            .await
            .unwrap();
        // Three coins of 50 BTC, so that several requests hold coins at once.
        for _ in 0..3 {
            let addr = svc.vaults.next_address("reserve").await.unwrap().address;
            let addr = Address::from_str(&addr.to_string())
                .unwrap()
                .assume_checked();
            node.mine_blocks(1, &addr).unwrap();
        }
        node.mine_blocks(100, &node.new_address()).unwrap();
        svc.vaults
            .sync("reserve", &node_config(&node))
            .await
            .unwrap();
        Some(World {
            _dir: dir,
            node,
            signer,
            svc,
            url,
            policy,
            rng: StdRng::seed_from_u64(16),
        })
    }

    /// Raw SQL on the service's database, as an attacker with write access.
    async fn raw(&self, sql: &str) {
        if self.url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
            pool.close().await;
        } else {
            let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }

    /// A request for `sat` to a node address.
    async fn request(&mut self, id: &str, sat: u64) {
        let dest = self.node.new_address();
        let create = CreateSpend {
            id: Some(id.into()),
            vault: "reserve".into(),
            initiator: "alice".into(),
            payments: vec![Payment {
                address: Address::from_str(&dest.to_string()).unwrap(),
                amount: Amount::from_sat(sat),
            }],
            fee_rate: FeeRate::from_sat_per_vb_u32(3),
            memo: None,
            confirmations_required: 1,
        };
        let now = treasury::clock::now_ms();
        let s = self
            .svc
            .create(&create, &FeeCaps::default(), At::ms(now), &mut self.rng)
            .await
            .unwrap();
        assert_eq!(s.request.state, State::PendingApproval, "{id}");
    }

    /// Approvals recorded by the service and forwarded to the signer (as the API and CLI do).
    async fn approve(&self, id: &str, who: &[&str]) -> State {
        let subject = self.svc.load(id).await.unwrap().request.subject.clone();
        let mut state = State::PendingApproval;
        for w in who {
            let now = treasury::clock::now_ms();
            state = self
                .svc
                .approve(id, sign(&subject, w, &approver_secret(w)), At::ms(now))
                .await
                .unwrap()
                .request
                .state;
        }
        self.svc
            .forward_approvals(id, &self.signer.client())
            .await
            .unwrap();
        state
    }

    async fn policy_sign(&self, id: &str) -> Result<(), PolicySignError> {
        let now = treasury::clock::now_ms();
        self.svc
            .policy_sign(id, &self.signer.client(), At::ms(now))
            .await
            .map(|_| ())
    }

    async fn refused(&self, id: &str, what: &str) -> String {
        match self.policy_sign(id).await {
            Err(PolicySignError::Refused { code, reason }) => format!("{code}: {reason}"),
            Err(e) => panic!("{what}: not a signer refusal: {e}"),
            Ok(()) => panic!("{what}: the signer signed"),
        }
    }

    async fn signed(&self, id: &str) {
        self.policy_sign(id).await.unwrap();
        assert_eq!(self.svc.signed_psbt(id).await.unwrap().signatures, 1);
    }
}

async fn rewritten_active_policy_with_k1(db: Db, test: &str) {
    let Some(mut w) = World::new(test, db).await else {
        return;
    };
    let honest = w.policy.clone();
    let hash = policies::Policy::from_toml(&honest).unwrap().hash();
    // The attack: a policy nobody signed, medium tier 1 of the duty officers, promoted to
    // active in the service's table.
    let forged = honest.replacen(
        "require = [\"duty-officers\"]",
        "require = [{ group = \"duty-officers\", k = 1 }]",
        1,
    );
    assert_ne!(forged, honest);
    let forged_hash = policies::Policy::from_toml(&forged).unwrap().hash();
    let now = treasury::clock::now_ms();
    w.raw(&format!(
        "UPDATE policy_versions SET status = 'superseded' WHERE status = 'active';
         INSERT INTO policy_versions (hash, version, document, status, base_hash, kind, loosened,
           issued_at_ms, activates_at_ms, activated_ms, updated_ms)
         VALUES ('{forged_hash}', 2, '{}', 'active', '{hash}', NULL, '[]', {now}, {now}, {now}, {now});",
        forged.replace('\'', "''")
    ))
    .await;
    w.request("forged-1", 2_0000_0000).await;
    assert_eq!(
        w.approve("forged-1", &["bob"]).await,
        State::ReadyToSign,
        "the service believes the forged policy"
    );
    let why = w.refused("forged-1", "forged policy").await;
    assert_eq!(
        w.svc.signed_psbt("forged-1").await.unwrap().signatures,
        0,
        "{why}"
    );
    w.svc
        .cancel("forged-1", "alice", At::ms(treasury::clock::now_ms()))
        .await
        .unwrap();

    // Honest again: the signed policy back in force, two approvals, signed.
    w.raw(&format!(
        "DELETE FROM policy_versions WHERE hash = '{forged_hash}';
         UPDATE policy_versions SET status = 'active' WHERE hash = '{hash}';"
    ))
    .await;
    w.request("honest-1", 2_0000_0000).await;
    assert_eq!(
        w.approve("honest-1", &["bob", "carol"]).await,
        State::ReadyToSign
    );
    w.signed("honest-1").await;
}

async fn deleted_freeze_orders(db: Db, test: &str) {
    let Some(mut w) = World::new(test, db).await else {
        return;
    };
    let client = w.signer.client();
    w.request("f-1", 2_0000_0000).await;
    assert_eq!(
        w.approve("f-1", &["bob", "carol"]).await,
        State::ReadyToSign
    );
    // One admin freezes: the service and the signer both apply the order.
    let now = treasury::clock::now_ms();
    let order = w
        .svc
        .governance
        .freeze_order(FreezeAction::Freeze, "drill", now)
        .await
        .unwrap();
    let sigs = [admin_sig(&order, "heidi")];
    w.svc
        .governance
        .apply_freeze(&order, &sigs, now)
        .await
        .unwrap();
    assert!(client.submit_freeze(&order, &sigs).await.unwrap().frozen);
    // The attack: the freeze erased from the service's tables.
    w.raw("DELETE FROM freeze_orders; UPDATE freeze_state SET frozen = 0, since_ms = NULL;")
        .await;
    assert!(!w.svc.governance.freeze_state().await.unwrap().frozen);
    let why = w.refused("f-1", "deleted freeze").await;
    assert!(why.contains("frozen") || why.contains("freeze"), "{why}");
    assert_eq!(w.svc.signed_psbt("f-1").await.unwrap().signatures, 0);

    // Honest again: the admin quorum lifts the freeze at the signer; then it signs.
    let state = client.status().await.unwrap().freeze;
    let lift = FreezeOrder {
        action: FreezeAction::Lift,
        policy: policies::Policy::from_toml(&w.policy).unwrap().hash(),
        seq: state.seq,
        issued_at_ms: treasury::clock::now_ms(),
        reason: "drill over".into(),
    };
    let sigs = [admin_sig(&lift, "heidi"), admin_sig(&lift, "ivan")];
    assert!(!client.submit_freeze(&lift, &sigs).await.unwrap().frozen);
    w.signed("f-1").await;
    let _ = &mut w;
}

async fn backdated_approvals(db: Db, test: &str) {
    let Some(mut w) = World::new(test, db).await else {
        return;
    };
    // A small payment: one duty officer, then a delay of SMALL_DELAY_SECS.
    w.request("d-1", 5000_0000).await;
    w.approve("d-1", &["bob"]).await;
    // The attack: the approval (and the request's approval time) moved a day back, so that
    // the service sees the delay over.
    w.raw(
        "UPDATE spend_approvals SET received_ms = received_ms - 86400000 WHERE request_id = 'd-1';
         UPDATE spend_requests SET approved_ms = approved_ms - 86400000 WHERE id = 'd-1';",
    )
    .await;
    let why = w.refused("d-1", "back-dated approval").await;
    assert!(why.contains("delay"), "{why}");
    assert_eq!(w.svc.signed_psbt("d-1").await.unwrap().signatures, 0);
    // Honest: once the delay is over at the signer, it signs.
    tokio::time::sleep(std::time::Duration::from_secs(SMALL_DELAY_SECS + 1)).await;
    w.signed("d-1").await;
    let _ = &mut w;
}

async fn deleted_policy_signatures(db: Db, test: &str) {
    let Some(mut w) = World::new(test, db).await else {
        return;
    };
    // 2 BTC signed: the 3 BTC daily cap has 1 BTC left.
    w.request("v-1", 2_0000_0000).await;
    assert_eq!(
        w.approve("v-1", &["bob", "carol"]).await,
        State::ReadyToSign
    );
    w.signed("v-1").await;
    // The attack: the service's record of that spend erased, so its velocity window is empty.
    w.raw(
        "DELETE FROM spend_policy_signatures;
         UPDATE spend_requests SET approved_ms = NULL WHERE id = 'v-1';",
    )
    .await;
    w.request("v-2", 2_0000_0000).await;
    assert_eq!(
        w.approve("v-2", &["bob", "carol"]).await,
        State::ReadyToSign,
        "the service sees an empty window"
    );
    let why = w.refused("v-2", "emptied velocity window").await;
    assert!(why.contains("velocity"), "{why}");
    assert_eq!(w.svc.signed_psbt("v-2").await.unwrap().signatures, 0);
    // Honest: the refused request cancelled (the signer also counts what the service reports
    // as approved: the safe direction), a small payment within what is left of the cap, after
    // its delay.
    w.svc
        .cancel("v-2", "alice", At::ms(treasury::clock::now_ms()))
        .await
        .unwrap();
    w.request("v-3", 5000_0000).await;
    w.approve("v-3", &["bob"]).await;
    tokio::time::sleep(std::time::Duration::from_secs(SMALL_DELAY_SECS + 1)).await;
    w.signed("v-3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rewritten_active_policy_with_k1_is_refused() {
    rewritten_active_policy_with_k1(Db::Sqlite, "tamper sqlite policy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rewritten_active_policy_with_k1_is_refused() {
    rewritten_active_policy_with_k1(Db::Postgres, "tamper postgres policy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deleted_freeze_orders_are_refused_as_frozen() {
    deleted_freeze_orders(Db::Sqlite, "tamper sqlite freeze").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deleted_freeze_orders_are_refused_as_frozen() {
    deleted_freeze_orders(Db::Postgres, "tamper postgres freeze").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backdated_approvals_are_refused_for_the_delay() {
    backdated_approvals(Db::Sqlite, "tamper sqlite delay").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backdated_approvals_are_refused_for_the_delay() {
    backdated_approvals(Db::Postgres, "tamper postgres delay").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deleted_policy_signatures_are_refused_for_velocity() {
    deleted_policy_signatures(Db::Sqlite, "tamper sqlite velocity").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deleted_policy_signatures_are_refused_for_velocity() {
    deleted_policy_signatures(Db::Postgres, "tamper postgres velocity").await;
}
