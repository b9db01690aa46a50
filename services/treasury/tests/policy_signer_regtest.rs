//! The path from an approved spend request to a confirmed transaction, on the real parts: a
//! Bitcoin Core regtest node, SQLite, and the policy key in a SoftHSM2 token (a temporary token
//! directory and our own SOFTHSM2_CONF, never a system token) held by the policy signer process
//! (`treasury signer serve`, ADR 0017), which decides from its own state.
//!
//! The vault is the policy key AND 2 of 3 officers, OR after 5 blocks 2 of 3 recovery keys. A
//! spend request of the service under the example policy (medium tier: 2 of 3 duty officers)
//! gets two approvals; the policy signer refuses before the quorum and signs after it
//! (`treasury spend sign-policy`); one officer signs through Bitcoin Core's
//! `descriptorprocesspsbt`, the other with `treasury officer sign`; `treasury spend submit-psbt`
//! verifies every partial signature on arrival and refuses a foreign or bad one; `treasury spend
//! broadcast` finalizes, has the node test it (`testmempoolaccept`) and broadcasts; `treasury
//! spend follow` records the confirmation and releases the coins; the ledger holds every step
//! and verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::signer::SpawnedSigner;
use common::{node_config, officer, rpc, NET};
use std::process::Command;
use std::str::FromStr;

use bdk_wallet::bitcoin::secp256k1::SecretKey;
use bdk_wallet::bitcoin::{Address, Amount, FeeRate, Psbt};
use custody::ledger::Kind;
use custody::request::State;
use custody::vault::descriptor::with_checksum;
use custody::vault::spend::{FeeCaps, Payment};
use custody::vault::{combine, Template, TemplateKey, VaultConfig};
use policies::approval::sign;
use rand::rngs::StdRng;
use rand::SeedableRng;
use regtest::node_or_skip;
use serde_json::{json, Value};
use treasury::service::policy_signer::PolicySignError;
use treasury::service::signing::SigningError;
use treasury::service::spend::{At, CreateSpend, SpendService};
use treasury::service::vaults::VaultService;
use treasury::store::LedgerStore;

const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
const PIN: &str = "2718";
const MODULE: &str = common::signer::MODULE;

/// The example policy's fixed test secrets ([n; 32]).
fn approval_secret(person: &str) -> SecretKey {
    let n = ["alice", "bob", "carol"]
        .iter()
        .position(|p| *p == person)
        .unwrap();
    SecretKey::from_slice(&[u8::try_from(n + 1).unwrap(); 32]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_request_to_confirmed_transaction_with_the_hsm_policy_key() {
    let Some(node) = node_or_skip("approved_request_to_confirmed_transaction") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(spawned) = SpawnedSigner::start(dir.path(), "policy_signer_regtest", EXAMPLE).await
    else {
        return;
    };
    let conf = spawned.softhsm_conf.clone();
    let client = spawned.client();
    let socket = spawned.socket().to_str().unwrap().to_owned();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let cli = |args: &[&str], passphrase: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_treasury"));
        cmd.args(args)
            .env("TREASURY_DB", &db)
            .env("TREASURY_RPC_URL", node.rpc_url())
            .env("TREASURY_RPC_COOKIE", node.cookie_file())
            .env("SOFTHSM2_CONF", &conf)
            .env("TREASURY_HSM_MODULE", MODULE)
            .env("TREASURY_HSM_TOKEN", "reserve")
            .env("TREASURY_HSM_PIN", PIN)
            .env_remove("TREASURY_NOW_MS")
            .env_remove("TREASURY_KEYSTORE_PASSPHRASE");
        if let Some(p) = passphrase {
            cmd.env("TREASURY_KEYSTORE_PASSPHRASE", p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // Officer 2's key lives in an encrypted keystore made by `treasury officer keygen`.
    let ks = dir.path().join("o2.json");
    let ks_s = ks.to_str().unwrap();
    let args = [
        "officer",
        "keygen",
        "--out",
        ks_s,
        "--id",
        "o2",
        "--insecure-fast-kdf",
    ];
    let (ok, o2_public, err) = cli(&args, Some("officer two"));
    assert!(ok, "{err}");
    let (o1, o3) = (officer(11), officer(13));
    let template = Template::PolicyWithRecovery {
        policy_key: spawned.template_key(),
        k: 2,
        officers: vec![
            TemplateKey::parse(&o1.public).unwrap(),
            TemplateKey::parse(&o2_public).unwrap(),
            TemplateKey::parse(&o3.public).unwrap(),
        ],
        r: 2,
        recovery: (21..24)
            .map(|s| TemplateKey::parse(&officer(s).public).unwrap())
            .collect(),
        older: 5,
    };
    let d = template.build(NET).unwrap();

    // The vault, funded by mining to its first address, and the example policy.
    let ledger = LedgerStore::open(&db).await.unwrap();
    let svc = SpendService::new(VaultService::new(ledger.clone()));
    let now = treasury::clock::now_ms();
    svc.vaults
        .create_registered(
            VaultConfig::new("reserve", d.clone(), 0).unwrap(),
            "create",
            Some(&client),
        )
        .await
        .unwrap();
    svc.governance.init(EXAMPLE, "admins", now).await.unwrap();
    let addr = svc.vaults.next_address("reserve").await.unwrap().address;
    let addr = Address::from_str(&addr.to_string())
        .unwrap()
        .assume_checked();
    node.mine_blocks(1, &addr).unwrap();
    node.mine_blocks(100, &node.new_address()).unwrap();
    let node_cfg = node_config(&node);
    svc.vaults.sync("reserve", &node_cfg).await.unwrap();
    let before = svc.vaults.vaults.load("reserve").await.unwrap().balance();
    assert_eq!(before.confirmed, Amount::from_sat(50_0000_0000));

    // A 2 BTC payment: the example policy's medium tier (2 of 3 duty officers).
    let dest = node.new_address();
    let create = CreateSpend {
        id: Some("req-1".into()),
        vault: "reserve".into(),
        initiator: "alice".into(),
        payments: vec![Payment {
            address: Address::from_str(&dest.to_string()).unwrap(),
            amount: Amount::from_sat(2_0000_0000),
        }],
        fee_rate: FeeRate::from_sat_per_vb_u32(3),
        memo: None,
        confirmations_required: 1,
    };
    let mut rng = StdRng::seed_from_u64(6);
    let stored = svc
        .create(&create, &FeeCaps::default(), At::ms(now), &mut rng)
        .await
        .unwrap();
    assert_eq!(stored.request.state, State::PendingApproval);
    let unsigned = stored.request.psbt.clone();

    // One approval (bob): the policy signer refuses and says what is missing.
    let subject = stored.request.subject.clone();
    svc.approve(
        "req-1",
        sign(&subject, "bob", &approval_secret("bob")),
        At::ms(now + 1),
    )
    .await
    .unwrap();
    assert_eq!(svc.forward_approvals("req-1", &client).await.unwrap(), 1);
    let err = svc
        .policy_sign("req-1", &client, At::ms(now + 2))
        .await
        .unwrap_err();
    assert!(matches!(err, PolicySignError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("duty-officers"), "{err}");
    assert_eq!(svc.signed_psbt("req-1").await.unwrap().signatures, 0);

    // The second approval (carol): ready to sign; the policy key signs through the CLI.
    let s = svc
        .approve(
            "req-1",
            sign(&subject, "carol", &approval_secret("carol")),
            At::ms(now + 3),
        )
        .await
        .unwrap();
    assert_eq!(s.request.state, State::ReadyToSign);
    let (ok, signed_b64, err) = cli(
        &["spend", "sign-policy", "--id", "req-1", "--signer", &socket],
        None,
    );
    assert!(ok, "{err}");
    assert!(err.contains("tier medium"), "{err}");
    assert!(!err.contains(PIN) && !signed_b64.contains(PIN));
    let policy_signed = Psbt::from_str(&signed_b64).unwrap();
    assert_eq!(
        combine::verify_partial_signatures(&policy_signed).unwrap(),
        1
    );
    assert_eq!(svc.signed_psbt("req-1").await.unwrap().signatures, 1);

    // Officer 1 signs through Core; officer 2 with `treasury officer sign` (both on the
    // unsigned PSBT, as on their own devices).
    let private: Vec<String> = [d.external_string(), d.internal_string()]
        .iter()
        .map(|s| {
            with_checksum(
                &s.split('#')
                    .next()
                    .unwrap()
                    .replace(&o1.public, &o1.private),
            )
        })
        .collect();
    let out = rpc(
        &node,
        "descriptorprocesspsbt",
        &[
            json!(unsigned.to_string()),
            json!(private),
            json!("ALL"),
            json!(true),
            json!(false),
        ],
    );
    let core_file = dir.path().join("o1.psbt");
    std::fs::write(&core_file, out["psbt"].as_str().unwrap()).unwrap();
    let base = dir.path().join("base.psbt");
    std::fs::write(&base, unsigned.to_string()).unwrap();
    let args = ["officer", "sign", "--key", ks_s, base.to_str().unwrap()];
    let (ok, by_cli, err) = cli(&args, Some("officer two"));
    assert!(ok, "{err}");
    let cli_file = dir.path().join("o2.psbt");
    std::fs::write(&cli_file, &by_cli).unwrap();

    // A PSBT of another transaction, and a signature that does not verify: refused on arrival,
    // naming the input, and nothing is stored.
    let mut other = Psbt::from_str(&by_cli).unwrap();
    other.unsigned_tx.lock_time = bdk_wallet::bitcoin::absolute::LockTime::from_height(1).unwrap();
    let err = svc
        .submit_psbt("req-1", other, "mallory", At::ms(now + 4))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SigningError::OtherTransaction { .. }),
        "{err}"
    );
    let mut bad = Psbt::from_str(&by_cli).unwrap();
    let sig = bad.inputs[0].partial_sigs.values_mut().next().unwrap();
    let mut der = sig.signature.serialize_compact();
    der[10] ^= 1;
    sig.signature = bdk_wallet::bitcoin::secp256k1::ecdsa::Signature::from_compact(&der).unwrap();
    let err = svc
        .submit_psbt("req-1", bad, "mallory", At::ms(now + 4))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("input 0"), "{err}");
    assert_eq!(svc.signed_psbt("req-1").await.unwrap().signatures, 1);

    // Not complete with one officer: the broadcast refuses and nothing moves.
    let (ok, _, err) = cli(
        &[
            "spend",
            "submit-psbt",
            "--id",
            "req-1",
            "--by",
            "o1",
            core_file.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["spend", "broadcast", "--id", "req-1"], None);
    assert!(!ok && err.contains("finalize"), "{err}");
    let (ok, _, err) = cli(
        &[
            "spend",
            "submit-psbt",
            "--id",
            "req-1",
            "--by",
            "o2",
            cli_file.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(svc.signed_psbt("req-1").await.unwrap().signatures, 3);

    // Finalize, testmempoolaccept, broadcast; mine; follow to confirmed.
    let (ok, txid, err) = cli(&["spend", "broadcast", "--id", "req-1"], None);
    assert!(ok, "{err}");
    assert_eq!(txid, stored.request.txid.to_string());
    let mempool = rpc(&node, "getrawmempool", &[]);
    assert!(
        mempool
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == &json!(txid)),
        "{mempool}"
    );
    node.mine_blocks(1, &node.new_address()).unwrap();
    let (ok, out, err) = cli(&["spend", "follow", "--id", "req-1"], None);
    assert!(ok, "{err}");
    assert!(out.contains("confirmed"), "{out}");
    let s = svc.load("req-1").await.unwrap();
    assert_eq!(s.request.state, State::Confirmed);
    let vault = svc.vaults.vaults.load("reserve").await.unwrap();
    let fee = stored.request.subject.fee;
    assert_eq!(
        vault.balance().confirmed,
        before.confirmed - Amount::from_sat(2_0000_0000) - fee
    );
    assert!(svc
        .vaults
        .vaults
        .reserved("reserve", now)
        .await
        .unwrap()
        .is_empty());

    // The ledger holds every step, in order, and verifies.
    let entries = ledger.entries().await.unwrap();
    let kinds: Vec<Kind> = entries.iter().map(|e| e.kind()).collect();
    for k in [
        Kind::VaultCreated,
        Kind::DepositSeen,
        Kind::SpendRequested,
        Kind::Approval,
        Kind::Signature,
        Kind::Broadcast,
        Kind::Confirmation,
    ] {
        assert!(kinds.contains(&k), "no {k:?} entry in {kinds:?}");
    }
    // One signature entry per signer that added signatures (besides the request's own
    // transitions, which are signature entries too once it is ready to sign and finalized).
    for actor in ["policy-signer", "o1", "o2"] {
        let n = entries
            .iter()
            .filter(|e| e.kind() == Kind::Signature && e.actor().as_str() == actor)
            .count();
        assert_eq!(n, 1, "{actor}: {kinds:?}");
    }
    let policy_sig = entries
        .iter()
        .find(|e| e.kind() == Kind::Signature && e.actor().as_str() == "policy-signer")
        .unwrap();
    let body: Value = serde_json::from_slice(policy_sig.payload().as_bytes()).unwrap();
    assert_eq!(body["txid"], json!(txid));
    assert_eq!(body["tier"], json!("medium"));
    let last_sig = kinds.iter().rposition(|k| *k == Kind::Signature).unwrap();
    let bc_pos = kinds.iter().rposition(|k| *k == Kind::Broadcast).unwrap();
    assert!(last_sig < bc_pos);
    ledger.verify(None).await.unwrap();
}
