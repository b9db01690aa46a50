//! The path from an approved spend request to a confirmed transaction, on the real parts: a
//! Bitcoin Core regtest node, SQLite, and the policy key in a SoftHSM2 token (a temporary token
//! directory and our own SOFTHSM2_CONF, never a system token).
//!
//! The vault is the policy key AND 2 of 3 officers, OR after 5 blocks 2 of 3 recovery keys. A
//! spend request under the example policy (medium tier: 2 of 3 duty officers) gets two
//! approvals; the policy signer refuses before the quorum and signs after it; one officer signs
//! through Bitcoin Core's `descriptorprocesspsbt`, the other with `treasury officer sign`; every
//! partial signature is verified on arrival; our code finalizes; `testmempoolaccept` accepts;
//! it is broadcast, mined and confirmed; the ledger holds every step and verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bdk_wallet::bitcoin::secp256k1::{Secp256k1, SecretKey};
use bdk_wallet::bitcoin::{Address, Amount, FeeRate, Network, Psbt};
use custody::ledger::Kind;
use custody::request::{Event, NewRequest, SpendRequest as Request, State};
use custody::vault::descriptor::with_checksum;
use custody::vault::spend::{self, FeeCaps, Payment, SpendRequest};
use custody::vault::{combine, Keychain, Template, TemplateKey, VaultConfig};
use hsm::policy_signer::{PolicySignerError, SpendAuthorization};
use hsm::{Pkcs11Config, Pkcs11Pin, Pkcs11Signer, PolicySigner};
use policies::approval::sign;
use policies::evaluate::Context;
use policies::Policy;
use rand::rngs::StdRng;
use rand::SeedableRng;
use regtest::{node_or_skip, RegtestNode};
use serde_json::{json, Value};
use treasury::store::LedgerStore;
use treasury::vaults::{broadcast, NodeAuth, NodeConfig, VaultService};

const NET: Network = Network::Regtest;
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
const PIN: &str = "2718";

/// The example policy's fixed test secrets ([n; 32]).
fn approval_secret(person: &str) -> SecretKey {
    let n = ["alice", "bob", "carol"]
        .iter()
        .position(|p| *p == person)
        .unwrap();
    SecretKey::from_slice(&[u8::try_from(n + 1).unwrap(); 32]).unwrap()
}

struct Officer {
    public: String,
    private: String,
}

fn officer(seed: u8) -> Officer {
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(NET, &[seed; 32]).unwrap();
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let acct = master.derive_priv(&secp, &path).unwrap();
    let fp = master.fingerprint(&secp);
    Officer {
        public: format!("[{fp}/48'/1'/0'/2']{}", Xpub::from_priv(&secp, &acct)),
        private: format!("[{fp}/48'/1'/0'/2']{acct}"),
    }
}

/// A fresh SoftHSM2 token directory with a token "reserve"; `None` when SoftHSM2 is missing and
/// not required.
fn softhsm(dir: &Path) -> Option<PathBuf> {
    if !Path::new(MODULE).exists() {
        regtest::skip_or_fail(
            "softhsm",
            "policy_signer_regtest",
            &format!("{MODULE} is missing"),
        );
        return None;
    }
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", "reserve", "--pin", PIN])
        .args(["--so-pin", "31415"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(conf)
}

fn rpc(node: &RegtestNode, method: &str, params: &[Value]) -> Value {
    node.rpc(method, params)
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

fn cli(args: &[&str], db: &str, passphrase: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_treasury"));
    cmd.args(args)
        .env("TREASURY_DB", db)
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
}

async fn record(ledger: &LedgerStore, transitions: &[custody::request::Transition]) {
    for t in transitions {
        ledger.append(t.ledger_draft().unwrap()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_request_to_confirmed_transaction_with_the_hsm_policy_key() {
    let Some(node) = node_or_skip("approved_request_to_confirmed_transaction") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(conf) = softhsm(dir.path()) else {
        return;
    };
    // Before the first C_Initialize of this process (the only test of this binary).
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let hsm_cfg = Pkcs11Config::new(MODULE, "reserve", "policy", Pkcs11Pin::new(PIN));
    let hsm_key = Pkcs11Signer::generate(hsm_cfg).unwrap();

    // Officer 2's key lives in an encrypted keystore made by `treasury officer keygen`.
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
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
    let (ok, o2_public, err) = cli(&args, &db, Some("officer two"));
    assert!(ok, "{err}");
    let (o1, o3) = (officer(11), officer(13));
    let template = Template::PolicyWithRecovery {
        policy_key: TemplateKey::parse(&hsm_key.descriptor_key()).unwrap(),
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

    // The vault, funded by mining to its first address.
    let ledger = LedgerStore::open(&db).await.unwrap();
    let svc = VaultService::new(ledger.clone());
    svc.create(VaultConfig::new("reserve", d.clone(), 0).unwrap(), "create")
        .await
        .unwrap();
    let addr = svc.next_address("reserve").await.unwrap().address;
    let addr = Address::from_str(&addr.to_string())
        .unwrap()
        .assume_checked();
    node.mine_blocks(1, &addr).unwrap();
    node.mine_blocks(100, &node.new_address()).unwrap();
    let node_cfg = NodeConfig {
        url: node.rpc_url(),
        auth: NodeAuth::Cookie(node.cookie_file()),
    };
    svc.sync("reserve", &node_cfg).await.unwrap();
    let before = svc.vaults.load("reserve").await.unwrap().balance();
    assert_eq!(before.confirmed, Amount::from_sat(50_0000_0000));

    // A 2 BTC payment: the example policy's medium tier (2 of 3 duty officers).
    let dest = node.new_address();
    let req = SpendRequest {
        payments: vec![Payment {
            address: Address::from_str(&dest.to_string()).unwrap(),
            amount: Amount::from_sat(2_0000_0000),
        }],
        fee_rate: Some(FeeRate::from_sat_per_vb_u32(3)),
        ..Default::default()
    };
    let mut rng = StdRng::seed_from_u64(6);
    let built = svc
        .build_psbt(
            "reserve",
            "req-1",
            &req,
            FeeRate::from_sat_per_vb_u32(3),
            &FeeCaps::default(),
            Duration::from_secs(3600),
            &mut rng,
        )
        .await
        .unwrap()
        .built;

    let policy = Policy::from_toml(EXAMPLE).unwrap();
    let vault = svc.vaults.load("reserve").await.unwrap();
    let change_scripts: Vec<_> = built
        .psbt
        .unsigned_tx
        .output
        .iter()
        .filter(|o| {
            Address::from_script(&o.script_pubkey, NET)
                .ok()
                .and_then(|a| vault.verify_address(&a.to_string()).ok())
                .is_some_and(|own| own.keychain == Keychain::Internal)
        })
        .map(|o| o.script_pubkey.clone())
        .collect();
    assert_eq!(change_scripts.len(), 1);
    let change_outputs: Vec<usize> = built
        .psbt
        .unsigned_tx
        .output
        .iter()
        .enumerate()
        .filter(|(_, o)| change_scripts.contains(&o.script_pubkey))
        .map(|(i, _)| i)
        .collect();
    let now = treasury::vaults::now_ms();
    let tip = vault.tip_height();
    let (expires_ms, expires_height) = policies::ApprovalSubject::max_expiry(&policy, now, tip);
    let mut request = Request::new(NewRequest {
        id: "req-1".into(),
        vault: "reserve".into(),
        initiator: "alice".into(),
        created_ms: now,
        created_height: tip,
        psbt: built.psbt.clone(),
        network: NET,
        change_scripts,
        fee_rate: built.fee_rate,
        requested_fee_rate: Some(FeeRate::from_sat_per_vb_u32(3)),
        policy: policy.hash(),
        expires_at_ms: expires_ms,
        expires_at_height: expires_height,
        confirmations_required: 1,
        replaces: None,
    })
    .unwrap();
    let ctx = |now_ms: i64, tip_height: u32| Context {
        now_ms,
        tip_height,
        frozen: false,
    };
    let t = request
        .apply(&policy, Event::Submit, &ctx(now, tip), &[])
        .unwrap();
    record(&ledger, &t).await;
    assert_eq!(request.state, State::PendingApproval);

    // The policy signer, holding the HSM key, cosigns only this vault.
    let mut signer = PolicySigner::new(hsm_key, policy.clone(), NET).unwrap();
    signer
        .add_vault("reserve", &d.external_string(), &d.internal_string())
        .unwrap();
    let authorization = |r: &Request| SpendAuthorization {
        request_id: r.id.clone(),
        vault: r.vault.clone(),
        initiator: r.initiator.clone(),
        created_ms: r.created_ms,
        created_height: r.created_height,
        requested_fee_rate: r.requested_fee_rate,
        subject: r.subject.clone(),
        change_outputs: change_outputs.clone(),
        approvals: r.approvals.clone(),
        history: Vec::new(),
    };

    // One approval (bob): pending; the policy signer refuses and says what is missing.
    let a_bob = sign(&request.subject, "bob", &approval_secret("bob"));
    let t = request
        .apply(&policy, Event::AddApproval(a_bob), &ctx(now + 1, tip), &[])
        .unwrap();
    record(&ledger, &t).await;
    assert_eq!(request.state, State::PendingApproval);
    let mut psbt = built.psbt.clone();
    let err = signer
        .sign(&mut psbt, &authorization(&request), now + 2, tip)
        .unwrap_err();
    assert!(
        matches!(err, PolicySignerError::MissingApprovals { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("duty-officers"), "{err}");
    assert!(psbt.inputs.iter().all(|i| i.partial_sigs.is_empty()));

    // The second approval (carol): ready to sign; the policy key signs.
    let a_carol = sign(&request.subject, "carol", &approval_secret("carol"));
    let t = request
        .apply(
            &policy,
            Event::AddApproval(a_carol),
            &ctx(now + 3, tip),
            &[],
        )
        .unwrap();
    record(&ledger, &t).await;
    assert_eq!(request.state, State::ReadyToSign);
    signer.observe(&authorization(&request), now + 3);
    let sig = signer
        .sign(&mut psbt, &authorization(&request), now + 4, tip)
        .unwrap();
    assert_eq!(sig.txid, request.txid);
    assert_eq!(sig.tier.as_deref(), Some("medium"));
    assert_eq!(sig.inputs, vec![0]);
    let body = json!({
        "request": sig.request_id, "vault": sig.vault, "txid": sig.txid.to_string(),
        "key": sig.key, "inputs": sig.inputs, "policy": sig.policy.to_string(),
        "tier": sig.tier, "counted": sig.counted,
    });
    ledger
        .append(
            custody::vault::ledger_record(Kind::Signature, "policy-signer", &body, sig.at_ms)
                .unwrap(),
        )
        .await
        .unwrap();
    // The policy key's signature verifies on arrival.
    assert_eq!(combine::verify_partial_signatures(&psbt).unwrap(), 1);

    // Officer 1 signs through Core; officer 2 with `treasury officer sign`.
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
            json!(built.psbt.to_string()),
            json!(private),
            json!("ALL"),
            json!(true),
            json!(false),
        ],
    );
    let by_core = Psbt::from_str(out["psbt"].as_str().unwrap()).unwrap();
    let base = dir.path().join("base.psbt");
    std::fs::write(&base, built.psbt.to_string()).unwrap();
    let args = ["officer", "sign", "--key", ks_s, base.to_str().unwrap()];
    let (ok, by_cli, err) = cli(&args, &db, Some("officer two"));
    assert!(ok, "{err}");
    let by_cli = Psbt::from_str(&by_cli).unwrap();

    // Not enough yet: the policy key and one officer do not finalize.
    let mut partial = psbt.clone();
    combine::combine(&mut partial, by_core.clone()).unwrap();
    assert!(spend::finalize(partial.clone()).is_err());
    // A signature from a PSBT of another transaction is refused on arrival.
    let mut foreign = by_cli.clone();
    foreign.unsigned_tx.lock_time =
        bdk_wallet::bitcoin::absolute::LockTime::from_height(1).unwrap();
    assert!(combine::combine(&mut partial.clone(), foreign).is_err());
    combine::combine(&mut partial, by_cli).unwrap();
    let tx = spend::finalize(partial).unwrap();
    assert_eq!(tx.compute_txid(), request.txid);
    let t = request
        .apply(
            &policy,
            Event::Finalized { tx: tx.clone() },
            &ctx(now + 5, tip),
            &[],
        )
        .unwrap();
    record(&ledger, &t).await;

    // testmempoolaccept, broadcast, mine, confirm.
    let txid = broadcast(&node_cfg, NET, &tx).unwrap();
    assert_eq!(txid, request.txid);
    let t = request
        .apply(&policy, Event::Broadcast, &ctx(now + 6, tip), &[])
        .unwrap();
    record(&ledger, &t).await;
    node.mine_blocks(1, &node.new_address()).unwrap();
    svc.sync("reserve", &node_cfg).await.unwrap();
    let vault = svc.vaults.load("reserve").await.unwrap();
    let confs = vault
        .tx_height(txid)
        .flatten()
        .map(|h| vault.tip_height() - h + 1)
        .unwrap();
    let t = request
        .apply(
            &policy,
            Event::Confirmations(confs),
            &ctx(now + 7, vault.tip_height()),
            &[],
        )
        .unwrap();
    record(&ledger, &t).await;
    assert_eq!(request.state, State::Confirmed);
    let after = vault.balance();
    assert_eq!(
        after.confirmed,
        before.confirmed - Amount::from_sat(2_0000_0000) - built.fee
    );
    svc.vaults.release("req-1").await.unwrap();

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
    let sig_pos = kinds.iter().position(|k| *k == Kind::Signature).unwrap();
    let bc_pos = kinds.iter().rposition(|k| *k == Kind::Broadcast).unwrap();
    assert!(sig_pos < bc_pos);
    ledger.verify(None).await.unwrap();
}
