//! The proof-of-reserves service on PostgreSQL (the production database) against a regtest
//! node: a taproot policy-key-with-recovery vault proven, approved by the policy's proof quorum
//! (migration 0007: a duplicate and a tampered approval refused, nothing stored), signed by an
//! officer and the policy key
//! through Core, refused a duplicate id and a foreign PSBT, bundled and audited; the ledger
//! (with the request, approval, signature and finalization entries written with their rows)
//! verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{node_config, officer, private_descriptors, rpc, Faucet, Officer, NET};
use std::str::FromStr;

use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::Amount;
use custody::ledger::{KeyFileSigner, VerifierKey};
use custody::vault::{Template, TemplateKey, VaultConfig};
use regtest::node_or_skip;
use serde_json::json;
use treasury::audit::bundle::audit_bundle;
use treasury::audit::reserves::SpendSearch;
use treasury::service::reserves::{
    BundleOptions, CheckpointSource, ProofState, ProveRequest, ReserveService, ReserveServiceError,
};
use treasury::service::spend::SpendService;
use treasury::service::vaults::VaultService;
use treasury::store::LedgerStore;

const ORIGIN: &str = "reserve.example/ledger";
const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");

/// The example policy's fixed test secret of `person` (alice 1, bob 2, carol 3).
fn test_secret(byte: u8) -> bdk_wallet::bitcoin::secp256k1::SecretKey {
    bdk_wallet::bitcoin::secp256k1::SecretKey::from_slice(&[byte; 32]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taproot_proof_on_postgres_bundles_and_audits() {
    let Ok(url) = std::env::var("TREASURY_TEST_POSTGRES_URL") else {
        regtest::skip_or_fail(
            "postgres",
            "a_taproot_proof_on_postgres_bundles_and_audits",
            &"TREASURY_TEST_POSTGRES_URL is not set",
        );
        return;
    };
    let Some(node) = node_or_skip("reserves_postgres_regtest") else {
        return;
    };
    let schema = format!("por_{}_{}", std::process::id(), rand::random::<u32>());
    let ledger = LedgerStore::open_in_schema(&url, Some(&schema))
        .await
        .unwrap();
    let svc = ReserveService::new(SpendService::new(VaultService::new(ledger.clone())));
    svc.spend
        .governance
        .init(EXAMPLE, "admins", treasury::clock::now_ms())
        .await
        .unwrap();
    let signer = KeyFileSigner::from_secret_bytes(&[5; 32]).unwrap();
    let vk = VerifierKey::of_signer(ORIGIN.to_string(), &signer).unwrap();
    let src = CheckpointSource::Sign {
        origin: ORIGIN,
        actor: "ledger",
        signer: &signer,
    };
    let o: Vec<Officer> = (121..125).map(officer).collect();
    let tk = |i: usize| TemplateKey::parse(&o[i].public).unwrap();
    // The taproot vault: the policy key o2 (Core signs for it here) AND 1 of o0, o1; recovery
    // by o3 after 144 blocks.
    let d = Template::TaprootPolicyWithRecovery {
        policy_key: tk(2),
        k: 1,
        officers: vec![tk(0), tk(1)],
        r: 1,
        recovery: vec![tk(3)],
        older: 144,
    }
    .build(NET)
    .unwrap();
    let birthday = u32::try_from(node.height().unwrap()).unwrap();
    svc.spend
        .vaults
        .create(VaultConfig::new("tr", d.clone(), birthday).unwrap(), "test")
        .await
        .unwrap();
    let mut faucet = Faucet::new(&node, 2);
    for sat in [2_0000_0000u64, 3_0000_0000] {
        let addr = svc.spend.vaults.next_address("tr").await.unwrap().address;
        faucet.pay(&node, &addr, Amount::from_sat(sat));
    }
    node.mine_blocks(1, &node.new_address()).unwrap();
    let now = treasury::clock::now_ms();
    let req = ProveRequest {
        id: Some("por-pg".into()),
        vaults: vec!["tr".into()],
        statement: "on postgres".into(),
        actor: "treasury".into(),
    };
    let p = svc
        .prove(&req, &node_config(&node), src, now)
        .await
        .unwrap();
    assert_eq!(p.total, Amount::from_sat(5_0000_0000));
    assert_eq!(p.state, ProofState::Signing);
    let err = svc
        .prove(&req, &node_config(&node), src, now)
        .await
        .unwrap_err();
    assert!(matches!(err, ReserveServiceError::Exists(_)), "{err}");

    // The proof quorum (3 of the example's officers) approves the subject derived from the
    // stored PSBT; a tampered and a repeated approval are refused and store nothing.
    let doc = svc.proof_subject("por-pg", now).await.unwrap();
    let subject = doc.check().unwrap().clone();
    assert_eq!(subject.amount, Amount::from_sat(5_0000_0000));
    assert_eq!(subject.request_id, "por-pg");
    let mut tampered = subject.sign("alice", &test_secret(1));
    tampered.signature[3] ^= 1;
    let err = svc
        .add_approval("por-pg", tampered, "alice", now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReserveServiceError::ApprovalRefused(_)),
        "{err}"
    );
    for (i, (who, byte)) in [("alice", 1u8), ("bob", 2), ("carol", 3)]
        .iter()
        .enumerate()
    {
        let st = svc
            .add_approval("por-pg", subject.sign(who, &test_secret(*byte)), who, now)
            .await
            .unwrap();
        assert_eq!(st.counted.len(), i + 1);
    }
    let size = ledger.head().await.unwrap().size();
    let err = svc
        .add_approval("por-pg", subject.sign("bob", &test_secret(2)), "bob", now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReserveServiceError::DuplicateApproval { .. }),
        "{err}"
    );
    assert_eq!(ledger.head().await.unwrap().size(), size);
    let st = svc.approvals("por-pg", now).await.unwrap();
    assert!(st.complete());
    assert_eq!(st.approvals.len(), 3);
    assert_eq!(st.approvals[1].actor, "bob");

    let signed = rpc(
        &node,
        "descriptorprocesspsbt",
        &[
            json!(p.psbt.to_string()),
            json!(private_descriptors(&d, &[&o[0], &o[2]])),
            json!("ALL"),
            json!(true),
            json!(false),
        ],
    );
    let signed = Psbt::from_str(signed["psbt"].as_str().unwrap()).unwrap();
    let mut foreign = signed.clone();
    foreign.unsigned_tx.lock_time = bdk_wallet::bitcoin::absolute::LockTime::from_consensus(1);
    let err = svc
        .submit_psbt("por-pg", foreign, "o", now + 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReserveServiceError::OtherTransaction { .. }),
        "{err}"
    );
    assert_eq!(svc.load("por-pg").await.unwrap().signatures, 0);
    assert_eq!(
        svc.submit_psbt("por-pg", signed.clone(), "officers", now + 1)
            .await
            .unwrap(),
        4
    );
    // The same signatures again add nothing and record nothing.
    let size = ledger.head().await.unwrap().size();
    assert_eq!(
        svc.submit_psbt("por-pg", signed, "officers", now + 2)
            .await
            .unwrap(),
        0
    );
    assert_eq!(ledger.head().await.unwrap().size(), size);

    let b = svc
        .bundle(
            "por-pg",
            &BundleOptions {
                checkpoint: src,
                ledger_key: Some(&vk),
                liabilities_dir: None,
            },
            now + 3,
        )
        .await
        .unwrap();
    assert_eq!(
        svc.list().await.unwrap(),
        vec![(
            "por-pg".to_string(),
            ProofState::Finalized,
            p.height,
            Amount::from_sat(5_0000_0000)
        )]
    );
    let client = node.new_client().unwrap();
    let a = audit_bundle(&b, &client, Some(&vk), 30, SpendSearch::BlockScan).unwrap();
    assert!(a.verdict(), "{:?}", a.reasons());
    assert_eq!(a.proven(), Amount::from_sat(5_0000_0000));
    // Request, three approvals, the officers' signatures, finalization.
    assert_eq!(a.entries_included, 6);
    let report = ledger.verify(Some(&vk)).await.unwrap();
    assert!(report.checkpoints >= 2, "{report}");
}
