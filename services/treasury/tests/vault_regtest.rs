//! Vaults against a real Bitcoin Core regtest node (and SQLite and PostgreSQL): addresses
//! equal Core's `deriveaddresses`; a funded vault syncs to the right balance; a PSBT we build
//! passes `decodepsbt`/`analyzepsbt`, is signed by officers through Core's
//! `descriptorprocesspsbt`, finalized by our code, accepted by `testmempoolaccept`, mined, and
//! the vault follows; reorgs; reservations; the recovery path; a node that is down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use bdk_wallet::bitcoin::consensus::encode::serialize_hex;
use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::{Address, Amount, FeeRate, OutPoint};
use common::{node_config, officer, private_descriptors, rpc, Faucet, Officer, NET};
use custody::vault::combine;
use custody::vault::spend::{self, FeeCaps, Payment, SpendError, SpendPath, SpendRequest};
use custody::vault::{
    AllowWithoutPolicyKey, Keychain, Template, TemplateKey, VaultConfig, VaultEvent,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use regtest::{node_or_skip, RegtestNode};
use serde_json::{json, Value};
use treasury::node::SyncError;
use treasury::service::vaults::{OpError, VaultService};
use treasury::store::vaults::VaultStoreError;
use treasury::store::LedgerStore;

fn tkey(o: &Officer) -> TemplateKey {
    TemplateKey::parse(&o.public).unwrap()
}

/// Signs a PSBT with `signers`' private keys through Core's `descriptorprocesspsbt`.
fn core_sign(
    node: &RegtestNode,
    psbt: &Value,
    d: &custody::vault::VaultDescriptor,
    signers: &[&Officer],
    sighash: &str,
) -> Value {
    rpc(
        node,
        "descriptorprocesspsbt",
        &[
            psbt.clone(),
            json!(private_descriptors(d, signers)),
            json!(sighash),
            json!(true),
            json!(false),
        ],
    )
}

/// A vault `name` of `d` on SQLite, paid 1 BTC from outside, mined and synced.
async fn funded_vault(
    node: &RegtestNode,
    dir: &tempfile::TempDir,
    name: &str,
    d: &custody::vault::VaultDescriptor,
) -> VaultService {
    let svc = sqlite_service(dir).await;
    svc.create(VaultConfig::new(name, d.clone(), 0).unwrap(), "create")
        .await
        .unwrap();
    let mut faucet = Faucet::new(node, 1);
    let addr = svc.next_address(name).await.unwrap().address;
    faucet.pay(node, &addr, Amount::from_sat(1_0000_0000));
    node.mine_blocks(1, &node.new_address()).unwrap();
    svc.sync(name, &node_config(node)).await.unwrap();
    svc
}

async fn sqlite_service(dir: &tempfile::TempDir) -> VaultService {
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    VaultService::new(LedgerStore::open(&url).await.unwrap())
}

/// PostgreSQL in a fresh schema, or `None` (with a printed reason) when it is optional here.
async fn postgres_service(test: &str) -> Option<VaultService> {
    let Ok(url) = std::env::var("TREASURY_TEST_POSTGRES_URL") else {
        regtest::skip_or_fail("postgres", test, &"TREASURY_TEST_POSTGRES_URL is not set");
        return None;
    };
    let schema = format!("vault_{}_{}", std::process::id(), rand::random::<u32>());
    Some(VaultService::new(
        LedgerStore::open_in_schema(&url, Some(&schema))
            .await
            .unwrap(),
    ))
}

/// One vault of each template the service creates; each needs the policy key on every path
/// without a timelock ([`Template::build`] checks it).
fn templates(policy: &Officer) -> Vec<Template> {
    vec![
        // k = every key: the policy key signs every spend
        Template::SortedMulti {
            k: 3,
            officers: vec![tkey(&officer(1)), tkey(&officer(2))],
            policy_key: tkey(policy),
        },
        Template::PolicyWithRecovery {
            policy_key: tkey(policy),
            k: 2,
            officers: vec![tkey(&officer(1)), tkey(&officer(2)), tkey(&officer(3))],
            r: 2,
            recovery: vec![tkey(&officer(4)), tkey(&officer(5)), tkey(&officer(6))],
            older: 5,
        },
        Template::TaprootPolicyWithRecovery {
            policy_key: tkey(policy),
            k: 2,
            officers: vec![tkey(&officer(1)), tkey(&officer(2)), tkey(&officer(3))],
            r: 2,
            recovery: vec![tkey(&officer(4)), tkey(&officer(5)), tkey(&officer(6))],
            older: 5,
        },
    ]
}

/// The legacy shapes officers could spend without the policy key: refused by
/// [`Template::build`], built only through the loudly named opt-out (vaults created before the
/// rule still load and derive the same addresses).
fn legacy_templates_without_policy_key(policy: &Officer) -> Vec<Template> {
    vec![
        Template::SortedMulti {
            k: 2,
            officers: vec![tkey(&officer(1)), tkey(&officer(2))],
            policy_key: tkey(policy),
        },
        Template::TaprootMultiA {
            k: 2,
            keys: vec![tkey(&officer(1)), tkey(&officer(2)), tkey(&officer(3))],
        },
    ]
}

#[test]
fn first_twenty_addresses_equal_core_deriveaddresses() {
    let Some(node) = node_or_skip("first_twenty_addresses_equal_core_deriveaddresses") else {
        return;
    };
    let policy = officer(9);
    // An HSM-style single policy key with origin, too.
    let hsm = {
        let secp = Secp256k1::new();
        let sk = bdk_wallet::bitcoin::PrivateKey::from_slice(&[7; 32], NET).unwrap();
        let pk = sk.public_key(&secp);
        TemplateKey::parse(&format!("[0badc0de]{pk}")).unwrap()
    };
    let mut all: Vec<(Template, bool)> =
        templates(&policy).into_iter().map(|t| (t, false)).collect();
    all.push((
        Template::SortedMulti {
            k: 3,
            officers: vec![tkey(&officer(1)), tkey(&officer(2))],
            policy_key: hsm,
        },
        false,
    ));
    all.extend(
        legacy_templates_without_policy_key(&policy)
            .into_iter()
            .map(|t| (t, true)),
    );
    for (t, legacy) in all {
        let d = if legacy {
            assert!(matches!(
                t.build(NET),
                Err(custody::vault::DescriptorError::PolicyKey(_))
            ));
            t.build_without_policy_key_guard(
                NET,
                AllowWithoutPolicyKey::officers_can_spend_without_the_policy_key(),
            )
            .unwrap()
        } else {
            t.build(NET).unwrap()
        };
        let vault =
            custody::vault::Vault::create(VaultConfig::new("addr", d.clone(), 0).unwrap()).unwrap();
        for (keychain, desc) in [
            (Keychain::External, d.external_string()),
            (Keychain::Internal, d.internal_string()),
        ] {
            let core = rpc(&node, "deriveaddresses", &[json!(desc), json!([0, 19])]);
            let core: Vec<String> = core
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            let ours: Vec<String> = (0..20)
                .map(|i| vault.peek_address(keychain, i).address.to_string())
                .collect();
            assert_eq!(ours, core, "{desc}");
        }
        // Core agrees on the checksum of the canonical multipath form as well.
        let multi = d.multipath_string().unwrap();
        let info = rpc(&node, "getdescriptorinfo", &[json!(multi)]);
        assert_eq!(
            info["checksum"].as_str().unwrap(),
            multi.rsplit('#').next().unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fund_sync_build_sign_broadcast_on_sqlite_and_postgres() {
    let Some(node) = node_or_skip("fund_sync_build_sign_broadcast") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_service(&dir).await;
    end_to_end(&node, &sqlite, "e2e-sqlite", 20).await;
    if let Some(pg) = postgres_service("fund_sync_build_sign_broadcast_postgres").await {
        // other keys: the vaults must not share addresses on one node
        end_to_end(&node, &pg, "e2e-pg", 30).await;
    }
}

async fn end_to_end(node: &RegtestNode, svc: &VaultService, name: &'static str, seed: u8) {
    let cfgnode = node_config(node);
    let (o1, o2, policy) = (officer(seed + 1), officer(seed + 2), officer(seed + 9));
    // k = every key: the policy key signs every spend
    let t = Template::SortedMulti {
        k: 3,
        officers: vec![tkey(&o1), tkey(&o2)],
        policy_key: tkey(&policy),
    };
    let d = t.build(NET).unwrap();
    let birthday = u32::try_from(node.height().unwrap()).unwrap();
    svc.create(
        VaultConfig::new(name, d.clone(), birthday).unwrap(),
        "create",
    )
    .await
    .unwrap();
    // a second vault of the same name is refused and changes nothing
    assert!(matches!(
        svc.create(VaultConfig::new(name, d.clone(), 0).unwrap(), "create")
            .await,
        Err(OpError::Store(VaultStoreError::Exists(_)))
    ));

    // Deposits: three payments from outside.
    let mut faucet = Faucet::new(node, 3);
    let mut deposits = Vec::new();
    for amount in [2_0000_0000u64, 1_5000_0000, 7000_0000] {
        let a = svc.next_address(name).await.unwrap();
        let txid = faucet.pay(node, &a.address, Amount::from_sat(amount));
        deposits.push((txid, amount));
    }
    // in the mempool: pending
    let (v, events) = svc.sync(name, &cfgnode).await.unwrap();
    assert_eq!(
        v.balance().pending,
        Amount::from_sat(4_2000_0000),
        "{name}: {:?} {events:?} {deposits:?}",
        v.utxos()
    );
    assert_eq!(
        v.balance().confirmed,
        Amount::ZERO,
        "{:?} {:?}",
        v.balance(),
        v.utxos()
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, VaultEvent::Deposit { height: None, .. }))
            .count(),
        3
    );
    node.mine_blocks(1, &node.new_address()).unwrap();
    let (v, events) = svc.sync(name, &cfgnode).await.unwrap();
    assert_eq!(v.balance().confirmed, Amount::from_sat(4_2000_0000));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, VaultEvent::Confirmed { .. }))
            .count(),
        3
    );
    assert_eq!(v.utxos().len(), 3);
    // sync is idempotent
    let (_, events) = svc.sync(name, &cfgnode).await.unwrap();
    assert!(events.is_empty(), "{events:?}");

    // Refusals of the builder, with nothing reserved.
    let dest = node.new_address();
    let pay = |sats: u64| Payment {
        address: Address::from_str(&dest.to_string()).unwrap(),
        amount: Amount::from_sat(sats),
    };
    let caps = FeeCaps::default();
    let mut rng = StdRng::seed_from_u64(7);
    let rate = FeeRate::from_sat_per_vb_u32(2);
    let ttl = Duration::from_secs(600);
    let build = |req: SpendRequest, id: &'static str, caps: FeeCaps, seed: u64| {
        let svc = svc.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(seed);
            svc.build_psbt(name, id, &req, rate, &caps, ttl, &mut rng)
                .await
        }
    };
    let dust = SpendRequest {
        payments: vec![pay(100)],
        ..Default::default()
    };
    assert!(matches!(
        build(dust, "dust", caps, 1).await,
        Err(OpError::Spend(SpendError::Dust { .. }))
    ));
    let mainnet = SpendRequest {
        payments: vec![Payment {
            address: Address::from_str("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq").unwrap(),
            amount: Amount::from_sat(10_000),
        }],
        ..Default::default()
    };
    assert!(matches!(
        build(mainnet, "net", caps, 1).await,
        Err(OpError::Spend(SpendError::WrongNetwork { .. }))
    ));
    let absurd_rate = SpendRequest {
        payments: vec![pay(10_000)],
        fee_rate: Some(FeeRate::from_sat_per_vb_u32(5_000)),
        ..Default::default()
    };
    assert!(matches!(
        build(absurd_rate, "rate", caps, 1).await,
        Err(OpError::Spend(SpendError::FeeRateCap { .. }))
    ));
    let tight = FeeCaps {
        max_fee: Amount::from_sat(100),
        ..caps
    };
    assert!(matches!(
        build(
            SpendRequest {
                payments: vec![pay(10_000)],
                ..Default::default()
            },
            "cap",
            tight,
            1
        )
        .await,
        Err(OpError::Spend(SpendError::FeeCap { .. }))
    ));
    let too_much = SpendRequest {
        payments: vec![pay(5_0000_0000)],
        ..Default::default()
    };
    assert!(matches!(
        build(too_much, "much", caps, 1).await,
        Err(OpError::Spend(SpendError::InsufficientFunds { .. }))
    ));
    assert!(svc.vaults.reserved(name, 0).await.unwrap().is_empty());

    // Two concurrent requests never take the same coin.
    let r1 = SpendRequest {
        payments: vec![pay(5000_0000)],
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        build(r1.clone(), "req-a", caps, 11),
        build(r1.clone(), "req-b", caps, 12)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let ia: BTreeSet<OutPoint> = a.built.inputs.iter().copied().collect();
    let ib: BTreeSet<OutPoint> = b.built.inputs.iter().copied().collect();
    assert!(ia.is_disjoint(&ib), "{ia:?} {ib:?}");
    assert_eq!(
        svc.vaults.reserved(name, 0).await.unwrap().len(),
        ia.len() + ib.len()
    );
    assert_eq!(
        svc.vaults.release("req-a").await.unwrap() as usize,
        ia.len()
    );
    svc.vaults.release("req-b").await.unwrap();

    // The payment we will sign: a batch of two recipients and a memo.
    let req = SpendRequest {
        payments: vec![pay(1_0000_0000), pay(2500_0000)],
        memo: Some(b"reserve transfer 42".to_vec()),
        fee_rate: Some(FeeRate::from_sat_per_vb_u32(3)),
        ..Default::default()
    };
    let built = svc
        .build_psbt(name, "pay-1", &req, rate, &caps, ttl, &mut rng)
        .await
        .unwrap()
        .built;
    let psbt = built.psbt.clone();
    assert_eq!(psbt.xpub.len(), 3, "global xpubs");
    for input in &psbt.inputs {
        assert!(input.non_witness_utxo.is_some());
        assert!(input.witness_utxo.is_some());
        assert_eq!(input.bip32_derivation.len(), 3, "full key origins");
        for (fp, path) in input.bip32_derivation.values() {
            assert_eq!(path.len(), 6, "{fp} {path}");
        }
    }
    assert!(psbt
        .unsigned_tx
        .output
        .iter()
        .any(|o| o.script_pubkey.is_op_return()));
    // the change goes to the vault's change keychain
    let v = svc.vaults.load(name).await.unwrap();
    let change: Vec<_> = psbt
        .unsigned_tx
        .output
        .iter()
        .filter_map(|o| v.wallet().derivation_of_spk(o.script_pubkey.clone()))
        .collect();
    assert_eq!(change.len(), 1);
    assert_eq!(change[0].0, bdk_wallet::KeychainKind::Internal);

    // Core reads it.
    let b64 = psbt.to_string();
    let decoded = rpc(node, "decodepsbt", &[json!(b64)]);
    assert_eq!(
        decoded["tx"]["txid"].as_str().unwrap(),
        built.txid.to_string()
    );
    assert_eq!(
        Amount::from_btc(decoded["fee"].as_f64().unwrap()).unwrap(),
        built.fee
    );
    let analyzed = rpc(node, "analyzepsbt", &[json!(b64)]);
    assert_eq!(analyzed["next"].as_str().unwrap(), "signer");

    // A single signature does not finalize.
    let one = rpc(
        node,
        "descriptorprocesspsbt",
        &[json!(b64), json!(private_descriptors(&d, &[&o1]))],
    );
    assert_eq!(one["complete"], json!(false));
    let one_psbt = Psbt::from_str(one["psbt"].as_str().unwrap()).unwrap();
    assert!(matches!(
        spend::finalize(one_psbt.clone()),
        Err(SpendError::Finalize(_))
    ));
    // The second officer and the policy key sign the first officer's PSBT.
    let two = core_sign(node, &one["psbt"], &d, &[&o2, &policy], "ALL");
    let signed = Psbt::from_str(two["psbt"].as_str().unwrap()).unwrap();
    // A flipped byte in a signature is caught by our finalizer.
    let mut forged = signed.clone();
    if let Some((_, sig)) = forged.inputs[0].partial_sigs.iter_mut().next() {
        let mut bytes = sig.to_vec();
        bytes[10] ^= 1;
        if let Ok(s) = bdk_wallet::bitcoin::ecdsa::Signature::from_slice(&bytes) {
            *sig = s;
        }
    }
    assert!(spend::finalize(forged.clone()).is_err());
    // Combining verifies every signature on arrival: the forged one is refused, naming the
    // input and key, and nothing is merged.
    let mut base = built.psbt.clone();
    let e = combine::combine(&mut base, forged).unwrap_err();
    assert!(
        matches!(e, combine::CombineError::BadSignature { input: 0, .. }),
        "{e}"
    );
    assert_eq!(base, built.psbt);
    assert_eq!(
        combine::combine(&mut base, one_psbt).unwrap(),
        psbt.inputs.len()
    );
    combine::combine(&mut base, signed.clone()).unwrap();
    let tx = spend::finalize(base).unwrap();
    assert_eq!(tx.compute_txid(), built.txid);
    let hex = serialize_hex(&tx);
    let accept = rpc(node, "testmempoolaccept", &[json!([hex])]);
    assert_eq!(accept[0]["allowed"], json!(true), "{accept}");
    rpc(node, "sendrawtransaction", &[json!(hex)]);

    let (v, events) = svc.sync(name, &cfgnode).await.unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, VaultEvent::Spend { txid, height: None, .. } if *txid == built.txid)));
    // RBF: a replacement at a higher rate spends the same inputs and pays more.
    let mut v2 = svc.vaults.load(name).await.unwrap();
    let bumped = spend::bump_fee(
        &mut v2,
        built.txid,
        FeeRate::from_sat_per_vb_u32(10),
        &caps,
        &mut rng,
    )
    .unwrap();
    assert!(bumped.fee > built.fee);
    let old_inputs: BTreeSet<_> = built.inputs.iter().collect();
    assert!(bumped.inputs.iter().all(|i| old_inputs.contains(i)));
    assert!(matches!(
        spend::bump_fee(
            &mut v2,
            built.txid,
            FeeRate::from_sat_per_vb_u32(3),
            &caps,
            &mut rng
        ),
        Err(SpendError::Bump { .. })
    ));

    node.mine_blocks(1, &node.new_address()).unwrap();
    let before = v.balance();
    let (v, events) = svc.sync(name, &cfgnode).await.unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, VaultEvent::Confirmed { txid, .. } if *txid == built.txid)));
    let spent: Amount = tx
        .output
        .iter()
        .filter(|o| !v.wallet().is_mine(o.script_pubkey.clone()))
        .map(|o| o.value)
        .sum();
    assert_eq!(spent, Amount::from_sat(1_2500_0000));
    assert_eq!(
        v.balance().confirmed,
        Amount::from_sat(4_2000_0000) - spent - built.fee
    );
    assert_eq!(before.total(), v.balance().total());
    // the spent coins are gone and their reservation released
    for op in &built.inputs {
        assert!(v.utxo(*op).is_none());
    }
    assert!(svc.vaults.reserved(name, 0).await.unwrap().is_empty());

    // The ledger recorded every step and verifies.
    let entries = svc.ledger.entries().await.unwrap();
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind().name()).collect();
    for k in [
        "vault_created",
        "address_issued",
        "deposit_seen",
        "spend_requested",
        "confirmation",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    svc.ledger.verify(None).await.unwrap();

    // Reloading from the database gives the same vault.
    let reloaded = svc.vaults.load(name).await.unwrap();
    assert_eq!(reloaded.utxos(), v.utxos());
    assert_eq!(reloaded.balance(), v.balance());
    let _ = deposits;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorg_removes_a_deposit_until_it_is_mined_again() {
    let Some(node) = node_or_skip("reorg_removes_a_deposit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let svc = sqlite_service(&dir).await;
    let cfgnode = node_config(&node);
    let d = templates(&officer(9))[2].build(NET).unwrap();
    svc.create(VaultConfig::new("reorg", d, 0).unwrap(), "create")
        .await
        .unwrap();
    let addr = svc.next_address("reorg").await.unwrap().address;
    // A coinbase to the vault: when a longer branch orphans its block, it is gone.
    let hashes = node.mine_blocks(1, &addr).unwrap();
    node.mine_blocks(2, &node.new_address()).unwrap();
    let (v, _) = svc.sync("reorg", &cfgnode).await.unwrap();
    assert_eq!(v.balance().immature, Amount::from_btc(50.0).unwrap());
    rpc(&node, "invalidateblock", &[json!(hashes[0].to_string())]);
    node.mine_blocks(4, &node.new_address()).unwrap();
    let (v, events) = svc.sync("reorg", &cfgnode).await.unwrap();
    assert_eq!(v.balance().total(), Some(Amount::ZERO), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, VaultEvent::Removed { .. })),
        "{events:?}"
    );
    // A payment to the vault whose block is orphaned goes back to the mempool (pending), and
    // confirms again when re-mined.
    let mut faucet = Faucet::new(&node, 1);
    let addr2 = svc.next_address("reorg").await.unwrap().address;
    let txid = faucet.pay(&node, &addr2, Amount::from_sat(3_0000_0000));
    let blocks = node.mine_blocks(1, &node.new_address()).unwrap();
    let (v, _) = svc.sync("reorg", &cfgnode).await.unwrap();
    assert_eq!(v.balance().confirmed, Amount::from_sat(3_0000_0000));
    rpc(&node, "invalidateblock", &[json!(blocks[0].to_string())]);
    for _ in 0..2 {
        // blocks without the payment: the competing branch wins, the payment waits
        rpc(
            &node,
            "generateblock",
            &[json!(node.new_address().to_string()), json!([])],
        );
    }
    let (v, events) = svc.sync("reorg", &cfgnode).await.unwrap();
    assert_eq!(v.balance().confirmed, Amount::ZERO, "{events:?}");
    assert_eq!(v.balance().pending, Amount::from_sat(3_0000_0000));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, VaultEvent::Unconfirmed { txid: t } if *t == txid)),
        "{events:?}"
    );
    node.mine_blocks(1, &node.new_address()).unwrap();
    let (v, events) = svc.sync("reorg", &cfgnode).await.unwrap();
    assert_eq!(v.balance().confirmed, Amount::from_sat(3_0000_0000));
    assert!(events
        .iter()
        .any(|e| matches!(e, VaultEvent::Confirmed { txid: t, .. } if *t == txid)));
    let reorgs = svc
        .ledger
        .entries()
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind().name() == "chain_reorg")
        .count();
    assert!(reorgs >= 2, "{reorgs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_path_spends_only_after_its_timelock() {
    let Some(node) = node_or_skip("recovery_path_spends_only_after_its_timelock") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let policy = officer(9);
    let d = templates(&policy)[1].build(NET).unwrap();
    let svc = funded_vault(&node, &dir, "rec", &d).await;
    let cfgnode = node_config(&node);
    let req = SpendRequest {
        payments: vec![Payment {
            address: Address::from_str(&node.new_address().to_string()).unwrap(),
            amount: Amount::from_sat(5000_0000),
        }],
        fee_rate: Some(FeeRate::from_sat_per_vb_u32(2)),
        path: SpendPath::Recovery,
        ..Default::default()
    };
    let caps = FeeCaps::default();
    let mut rng = StdRng::seed_from_u64(3);
    let rate = FeeRate::from_sat_per_vb_u32(2);
    let ttl = Duration::from_secs(60);
    // 1 confirmation of 5: refused, and nothing is reserved.
    let e = svc
        .build_psbt("rec", "early", &req, rate, &caps, ttl, &mut rng)
        .await
        .unwrap_err();
    assert!(
        matches!(e, OpError::Spend(SpendError::InsufficientFunds { .. })),
        "{e}"
    );
    let utxo = svc.vaults.load("rec").await.unwrap().utxos()[0].outpoint;
    let early = SpendRequest {
        include: vec![utxo],
        ..req.clone()
    };
    let e = svc
        .build_psbt("rec", "early", &early, rate, &caps, ttl, &mut rng)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            OpError::Spend(SpendError::RecoveryNotMature {
                needed: 5,
                confirmations: 1,
                ..
            })
        ),
        "{e}"
    );
    assert!(svc.vaults.reserved("rec", 0).await.unwrap().is_empty());
    // After 5 confirmations the recovery keys alone spend.
    node.mine_blocks(4, &node.new_address()).unwrap();
    svc.sync("rec", &cfgnode).await.unwrap();
    let built = svc
        .build_psbt("rec", "late", &req, rate, &caps, ttl, &mut rng)
        .await
        .unwrap()
        .built;
    assert_eq!(built.psbt.unsigned_tx.input[0].sequence.0, 5);
    let (r1, r2) = (officer(4), officer(5));
    let mut b64 = built.psbt.to_string();
    for o in [&r1, &r2] {
        let out = core_sign(&node, &json!(b64), &d, &[o], "ALL");
        b64 = out["psbt"].as_str().unwrap().to_string();
    }
    let tx = spend::finalize(Psbt::from_str(&b64).unwrap()).unwrap();
    let accept = rpc(&node, "testmempoolaccept", &[json!([serialize_hex(&tx)])]);
    assert_eq!(accept[0]["allowed"], json!(true), "{accept}");
    // The primary path without the policy key does not finalize.
    let primary = SpendRequest {
        path: SpendPath::Primary,
        ..req
    };
    svc.vaults.release("late").await.unwrap();
    let built = svc
        .build_psbt("rec", "primary", &primary, rate, &caps, ttl, &mut rng)
        .await
        .unwrap()
        .built;
    let mut b64 = built.psbt.to_string();
    for o in [&officer(1), &officer(2)] {
        let out = core_sign(&node, &json!(b64), &d, &[o], "ALL");
        b64 = out["psbt"].as_str().unwrap().to_string();
    }
    assert!(spend::finalize(Psbt::from_str(&b64).unwrap()).is_err());
    let out = core_sign(&node, &json!(b64), &d, &[&policy], "ALL");
    let tx = spend::finalize(Psbt::from_str(out["psbt"].as_str().unwrap()).unwrap()).unwrap();
    let accept = rpc(&node, "testmempoolaccept", &[json!([serialize_hex(&tx)])]);
    assert_eq!(accept[0]["allowed"], json!(true), "{accept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_gives_a_clear_error_and_loses_nothing() {
    let Some(mut node) = node_or_skip("a_node_that_is_down") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let svc = sqlite_service(&dir).await;
    let cfgnode = node_config(&node);
    let d = templates(&officer(9))[0].build(NET).unwrap();
    svc.create(VaultConfig::new("down", d, 0).unwrap(), "create")
        .await
        .unwrap();
    let addr = svc.next_address("down").await.unwrap().address;
    node.mine_blocks(1, &addr).unwrap();
    svc.sync("down", &cfgnode).await.unwrap();
    node.stop().unwrap();
    let e = svc.sync("down", &cfgnode).await.unwrap_err();
    assert!(
        matches!(e, OpError::Sync(SyncError::Unreachable { attempts: 3, .. })),
        "{e}"
    );
    assert!(e.to_string().contains("unreachable"), "{e}");
    // the vault is intact
    let v = svc.vaults.load("down").await.unwrap();
    assert_eq!(v.balance().immature, Amount::from_btc(50.0).unwrap());
}

#[test]
fn cli_create_address_sync_balance_build() {
    let Some(node) = node_or_skip("cli_create_address_sync_balance_build") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cli.db").display());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_treasury"))
            .args(args)
            .env("TREASURY_DB", &db)
            .env("TREASURY_RPC_URL", node.rpc_url())
            .env("TREASURY_RPC_COOKIE", node.cookie_file())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (o1, o2, p) = (officer(1), officer(2), officer(9));
    let (ok, out, err) = run(&[
        "vault",
        "create",
        "--name",
        "cli",
        "--template",
        "sortedmulti",
        "--k",
        "3",
        "--officer",
        &o1.public,
        "--officer",
        &o2.public,
        "--policy-key",
        &p.public,
    ]);
    assert!(ok, "{out}{err}");
    assert!(!err.contains("WARNING"), "{err}");
    // a private key is refused with a clear message, and nothing is stored
    let (ok, _, err) = run(&[
        "vault",
        "create",
        "--name",
        "bad",
        "--template",
        "sortedmulti",
        "--k",
        "2",
        "--officer",
        &o1.private,
        "--officer",
        &o2.public,
        "--policy-key",
        &p.public,
    ]);
    assert!(!ok);
    assert!(err.contains("watch-only"), "{err}");
    let (_, list, _) = run(&["vault", "list"]);
    assert_eq!(list.lines().count(), 1, "{list}");
    let (ok, _, err) = run(&[
        "vault",
        "create",
        "--name",
        "cli",
        "--template",
        "taproot-recovery",
        "--policy-key",
        &p.public,
        "--k",
        "1",
        "--officer",
        &o1.public,
        "--r",
        "1",
        "--recovery-key",
        &o2.public,
        "--older",
        "10",
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");
    // every export imports as the same vault
    let (_, shown, _) = run(&["vault", "show", "--vault", "cli"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    for format in ["descriptor", "bsms", "caravan", "coldcard"] {
        let (ok, text, err) = run(&["vault", "export", "--vault", "cli", "--format", format]);
        assert!(ok, "{format}: {err}");
        let f = dir.path().join(format!("export.{format}"));
        std::fs::write(&f, text).unwrap();
        let name = format!("imported-{format}");
        let (ok, out, err) = run(&[
            "vault",
            "import",
            "--name",
            &name,
            "--format",
            format,
            "--policy-key",
            &p.public,
            f.to_str().unwrap(),
        ]);
        assert!(ok, "{format}: {err}");
        let imported: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(imported["external"], shown["external"], "{format}");
        assert_eq!(imported["internal"], shown["internal"], "{format}");
    }
    let (_, list, _) = run(&["vault", "list"]);
    assert_eq!(list.lines().count(), 5, "{list}");
    let (ok, addr, err) = run(&["vault", "address", "--vault", "cli"]);
    assert!(ok, "{err}");
    let addr = addr.trim().to_string();
    let (ok, verify, err) = run(&["vault", "address", "--vault", "cli", "--verify", &addr]);
    assert!(ok, "{err}");
    let verify: Value = serde_json::from_str(&verify).unwrap();
    assert_eq!(verify["keychain"], json!("receive"));
    assert_eq!(verify["index"], json!(0));
    assert_eq!(verify["keys"].as_array().unwrap().len(), 3);
    let address = Address::from_str(&addr).unwrap().assume_checked();
    node.mine_blocks(1, &address).unwrap();
    node.mine_blocks(100, &node.new_address()).unwrap();
    let (ok, out, err) = run(&["vault", "sync", "--vault", "cli"]);
    assert!(ok, "{out}{err}");
    let (_, bal, _) = run(&["vault", "balance", "--vault", "cli"]);
    let bal: Value = serde_json::from_str(&bal).unwrap();
    assert_eq!(bal["confirmed_sat"], json!(50_0000_0000u64));
    let to = format!("{}:100000000", node.new_address());
    let (ok, b64, err) = run(&[
        "psbt",
        "build",
        "--vault",
        "cli",
        "--to",
        &to,
        "--fee-rate",
        "2",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("request"), "{err}");
    let decoded = rpc(&node, "decodepsbt", &[json!(b64.trim())]);
    assert_eq!(decoded["tx"]["vout"].as_array().unwrap().len(), 2);
    // Both officers and the policy key sign (through Core), the service combines, verifies and
    // broadcasts.
    let d = Template::SortedMulti {
        k: 3,
        officers: vec![tkey(&o1), tkey(&o2)],
        policy_key: tkey(&p),
    }
    .build(NET)
    .unwrap();
    let base = dir.path().join("base.psbt");
    std::fs::write(&base, b64.trim()).unwrap();
    let mut files = Vec::new();
    for (i, o) in [&o1, &o2, &p].iter().enumerate() {
        let out = core_sign(&node, &json!(b64.trim()), &d, &[o], "ALL");
        let f = dir.path().join(format!("s{i}.psbt"));
        std::fs::write(&f, out["psbt"].as_str().unwrap()).unwrap();
        files.push(f);
    }
    let (ok, combined, err) = run(&[
        "psbt",
        "combine",
        base.to_str().unwrap(),
        files[0].to_str().unwrap(),
        files[1].to_str().unwrap(),
        files[2].to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("signatures verified"), "{err}");
    let cfile = dir.path().join("combined.psbt");
    std::fs::write(&cfile, combined.trim()).unwrap();
    let (ok, txid, err) = run(&["psbt", "broadcast", cfile.to_str().unwrap()]);
    assert!(ok, "{err}");
    let mempool = rpc(&node, "getrawmempool", &[]);
    assert!(
        mempool.as_array().unwrap().contains(&json!(txid.trim())),
        "{mempool}"
    );
    // broadcasting again is refused by testmempoolaccept with its reason
    let (ok, _, err) = run(&["psbt", "broadcast", cfile.to_str().unwrap()]);
    assert!(!ok && err.contains("testmempoolaccept"), "{err}");
    // a base PSBT alone does not finalize
    let (ok, _, err) = run(&["psbt", "finalize", base.to_str().unwrap()]);
    assert!(!ok && err.contains("finalized"), "{err}");

    // the one coin is reserved now: a second build fails clearly
    let (ok, _, err) = run(&[
        "psbt",
        "build",
        "--vault",
        "cli",
        "--to",
        &to,
        "--fee-rate",
        "2",
    ]);
    assert!(!ok);
    assert!(err.contains("insufficient funds"), "{err}");
    // malformed input
    let (ok, _, err) = run(&[
        "psbt",
        "build",
        "--vault",
        "cli",
        "--to",
        "nonsense",
        "--fee-rate",
        "2",
    ]);
    assert!(!ok && err.contains("ADDRESS:SATS"), "{err}");
    let (ok, _, err) = run(&["vault", "show", "--vault", "nope"]);
    assert!(!ok && err.contains("no vault named"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taproot_vault_spend_signed_by_core_and_finalized_by_us() {
    let Some(node) = node_or_skip("taproot_vault_spend") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = templates(&officer(9))[2].build(NET).unwrap();
    let svc = funded_vault(&node, &dir, "tr", &d).await;
    let req = SpendRequest {
        payments: vec![Payment {
            address: Address::from_str(&node.new_address().to_string()).unwrap(),
            amount: Amount::from_sat(4000_0000),
        }],
        fee_rate: Some(FeeRate::from_sat_per_vb_u32(2)),
        ..Default::default()
    };
    let mut rng = StdRng::seed_from_u64(5);
    let built = svc
        .build_psbt(
            "tr",
            "tr-1",
            &req,
            FeeRate::from_sat_per_vb_u32(2),
            &FeeCaps::default(),
            Duration::from_secs(60),
            &mut rng,
        )
        .await
        .unwrap()
        .built;
    assert!(!built.psbt.inputs[0].tap_key_origins.is_empty());
    let mut b64 = built.psbt.to_string();
    // Core decodes the taproot fields (its analyzepsbt does not work out multi_a
    // satisfactions and stops at "updater", so signing below is the real check).
    let decoded = rpc(&node, "decodepsbt", &[json!(b64)]);
    assert_eq!(
        decoded["inputs"][0]["taproot_internal_key"],
        json!(custody::vault::descriptor::NUMS_POINT)
    );
    // two leaves: the policy key with the officers, and the timelocked recovery
    assert_eq!(
        decoded["inputs"][0]["taproot_scripts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    for o in [&officer(1), &officer(3), &officer(9)] {
        let out = core_sign(&node, &json!(b64), &d, &[o], "DEFAULT");
        b64 = out["psbt"].as_str().unwrap().to_string();
    }
    let signed = Psbt::from_str(&b64).unwrap();
    // a flipped bit in a Schnorr signature is refused by our finalizer
    let mut forged = signed.clone();
    if let Some(sig) = forged.inputs[0].tap_script_sigs.values_mut().next() {
        let mut bytes = sig.to_vec();
        bytes[5] ^= 1;
        *sig = bdk_wallet::bitcoin::taproot::Signature::from_slice(&bytes).unwrap();
    }
    assert!(spend::finalize(forged.clone()).is_err());
    let mut base = built.psbt.clone();
    assert!(matches!(
        combine::combine(&mut base, forged),
        Err(combine::CombineError::BadSignature { .. })
    ));
    combine::combine(&mut base, signed.clone()).unwrap();
    let tx = spend::finalize(signed).unwrap();
    let accept = rpc(&node, "testmempoolaccept", &[json!([serialize_hex(&tx)])]);
    assert_eq!(accept[0]["allowed"], json!(true), "{accept}");
}

#[test]
fn officer_keygen_and_sign_with_the_cli_then_core_cosigns() {
    let Some(node) = node_or_skip("officer_keygen_and_sign") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("off.db").display());
    let run = |args: &[&str], pass: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_treasury"));
        cmd.args(args)
            .env("TREASURY_DB", &db)
            .env("TREASURY_RPC_URL", node.rpc_url())
            .env("TREASURY_RPC_COOKIE", node.cookie_file())
            .env_remove("TREASURY_KEYSTORE_PASSPHRASE");
        if let Some(p) = pass {
            cmd.env("TREASURY_KEYSTORE_PASSPHRASE", p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let ks = dir.path().join("alice.json");
    let ks_s = ks.to_str().unwrap();
    let (ok, alice, err) = run(
        &[
            "officer",
            "keygen",
            "--out",
            ks_s,
            "--id",
            "alice",
            "--insecure-fast-kdf",
        ],
        Some("correct horse"),
    );
    assert!(ok, "{err}");
    assert!(alice.starts_with('[') && alice.contains("tpub"), "{alice}");
    // never overwritten; no passphrase or a wrong one is refused without leaking anything
    let (ok, _, _) = run(
        &[
            "officer",
            "keygen",
            "--out",
            ks_s,
            "--id",
            "alice",
            "--insecure-fast-kdf",
        ],
        Some("x"),
    );
    assert!(!ok);
    let (ok, _, err) = run(&["officer", "show", "--key", ks_s], None);
    assert!(!ok && err.contains("TREASURY_KEYSTORE_PASSPHRASE"), "{err}");
    let (ok, _, err) = run(&["officer", "show", "--key", ks_s], Some("hunter2-bad"));
    assert!(
        !ok && err.contains("passphrase") && !err.contains("hunter2"),
        "{err}"
    );
    let file = std::fs::read_to_string(&ks).unwrap();
    assert!(!file.contains("tprv") && !file.contains("correct horse"));

    let (bob, policy) = (officer(42), officer(43));
    let (ok, _, err) = run(
        &[
            "vault",
            "create",
            "--name",
            "off",
            "--template",
            "sortedmulti",
            "--k",
            "3",
            "--officer",
            &alice,
            "--officer",
            &bob.public,
            "--policy-key",
            &policy.public,
        ],
        None,
    );
    assert!(ok, "{err}");
    let (_, addr, _) = run(&["vault", "address", "--vault", "off"], None);
    let address = Address::from_str(&addr).unwrap().assume_checked();
    node.mine_blocks(1, &address).unwrap();
    node.mine_blocks(100, &node.new_address()).unwrap();
    let (ok, _, err) = run(&["vault", "sync"], None);
    assert!(ok, "{err}");
    let to = format!("{}:700000000", node.new_address());
    let (ok, b64, err) = run(
        &[
            "psbt",
            "build",
            "--vault",
            "off",
            "--to",
            &to,
            "--fee-rate",
            "3",
        ],
        None,
    );
    assert!(ok, "{err}");
    let base = dir.path().join("base.psbt");
    std::fs::write(&base, &b64).unwrap();
    // alice signs with her keystore
    let (ok, signed, err) = run(
        &["officer", "sign", "--key", ks_s, base.to_str().unwrap()],
        Some("correct horse"),
    );
    assert!(ok, "{err}");
    let a_file = dir.path().join("alice.psbt");
    std::fs::write(&a_file, &signed).unwrap();
    let cfg = VaultConfig::new(
        "x",
        Template::SortedMulti {
            k: 3,
            officers: vec![TemplateKey::parse(&alice).unwrap(), tkey(&bob)],
            policy_key: tkey(&policy),
        }
        .build(NET)
        .unwrap(),
        0,
    )
    .unwrap();
    // bob and the policy key sign through Core (k = every key)
    let out = core_sign(&node, &json!(b64), &cfg.descriptor, &[&bob, &policy], "ALL");
    let b_file = dir.path().join("bob.psbt");
    std::fs::write(&b_file, out["psbt"].as_str().unwrap()).unwrap();
    let (ok, combined, err) = run(
        &[
            "psbt",
            "combine",
            base.to_str().unwrap(),
            a_file.to_str().unwrap(),
            b_file.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let c_file = dir.path().join("combined.psbt");
    std::fs::write(&c_file, &combined).unwrap();
    let (ok, txid, err) = run(&["psbt", "broadcast", c_file.to_str().unwrap()], None);
    assert!(ok, "{err}");
    node.mine_blocks(1, &node.new_address()).unwrap();
    let tx = rpc(&node, "getrawtransaction", &[json!(txid), json!(true)]);
    assert!(tx["confirmations"].as_u64().unwrap() >= 1, "{tx}");
    let (ok, _, err) = run(&["vault", "sync", "--vault", "off"], None);
    assert!(ok, "{err}");
    let (_, bal, _) = run(&["vault", "balance", "--vault", "off"], None);
    let bal: Value = serde_json::from_str(&bal).unwrap();
    let confirmed = bal["confirmed_sat"].as_u64().unwrap();
    assert!(
        confirmed < 43_0000_0000 && confirmed > 42_9000_0000,
        "{bal}"
    );
}

/// The policy-key rule at the command line: a vault some keys can spend without the policy key
/// is refused with the library's message naming them (sortedmulti with k at most the officers,
/// taproot multi_a without the policy key, an imported `tr(<officer key>, …)` whose key path
/// an officer spends alone), and created only with `--allow-without-policy-key`, which warns
/// and is recorded in the ledger. The taproot-recovery template derives the addresses Core
/// derives and receives funds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_vaults_without_the_policy_key_unless_loudly_allowed() {
    let Some(node) = node_or_skip("cli_refuses_vaults_without_the_policy_key") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("pk.db").display());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_treasury"))
            .args(args)
            .env("TREASURY_DB", &db)
            .env("TREASURY_RPC_URL", node.rpc_url())
            .env("TREASURY_RPC_COOKIE", node.cookie_file())
            .env_remove("TREASURY_POLICY_KEY")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (o1, o2, p, rk) = (officer(61), officer(62), officer(69), officer(64));
    // The account keys as the error names them: `[fp/48'/1'/0'/2']tpub…/<0;1>/*` holds the
    // origin; the message names the origin and key.
    let named = |o: &Officer| o.public.split(']').nth(1).unwrap().to_string();
    let loud = "--allow-without-policy-key";

    // 1. sortedmulti(2, o1, o2, p): o1 and o2 spend alone.
    let sorted = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "vault",
            "create",
            "--name",
            name,
            "--template",
            "sortedmulti",
            "--k",
            "2",
            "--officer",
            &o1.public,
            "--officer",
            &o2.public,
            "--policy-key",
            &p.public,
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (ok, _, err) = sorted("sorted", &[]);
    assert!(!ok);
    assert!(err.contains("can spend without the policy key"), "{err}");
    assert!(
        err.contains(&named(&o1)) && err.contains(&named(&o2)),
        "{err}"
    );
    assert!(!err.contains(&named(&p)), "{err}");
    assert!(err.contains(loud), "{err}");
    let (ok, out, err) = sorted("sorted", &[loud]);
    assert!(ok, "{err}");
    assert!(err.contains("WARNING") && err.contains(loud), "{err}");
    assert!(err.contains("can spend without the policy key"), "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert!(created["external"]
        .as_str()
        .unwrap()
        .starts_with("wsh(sortedmulti(2,"));

    // 2. tr(NUMS, multi_a(2, o1, o2)): no policy key at all.
    let taproot = |extra: &[&str]| {
        let mut args = vec![
            "vault",
            "create",
            "--name",
            "multi-a",
            "--template",
            "taproot",
            "--k",
            "2",
            "--officer",
            &o1.public,
            "--officer",
            &o2.public,
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (ok, _, err) = taproot(&[]);
    assert!(!ok);
    assert!(err.contains("can spend without the policy key"), "{err}");
    assert!(
        err.contains(&named(&o1)) && err.contains(&named(&o2)),
        "{err}"
    );
    let (ok, _, err) = taproot(&[loud]);
    assert!(ok, "{err}");
    assert!(err.contains("WARNING"), "{err}");

    // 3. An imported tr(<o1>, and_v(v:pk(p), pk(o2))): o1 spends alone by the key path.
    let ranged = |o: &Officer| format!("{}/<0;1>/*", o.public);
    let text = custody::vault::descriptor::with_checksum(&format!(
        "tr({},and_v(v:pk({}),pk({})))",
        ranged(&o1),
        ranged(&p),
        ranged(&o2)
    ));
    let file = dir.path().join("keypath.txt");
    std::fs::write(&file, format!("{text}\n")).unwrap();
    let import = |extra: &[&str]| {
        let mut args = vec![
            "vault",
            "import",
            "--name",
            "keypath",
            "--format",
            "descriptor",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    // without a policy key to check against: refused, asking for it
    let (ok, _, err) = import(&[]);
    assert!(!ok);
    assert!(err.contains("--policy-key"), "{err}");
    let (ok, _, err) = import(&["--policy-key", &p.public]);
    assert!(!ok);
    assert!(err.contains("key path"), "{err}");
    assert!(err.contains(&named(&o1)), "{err}");
    // the same check on `vault create --descriptor`
    let (ok, _, err) = run(&[
        "vault",
        "create",
        "--name",
        "keypath",
        "--descriptor",
        &text,
        "--policy-key",
        &p.public,
    ]);
    assert!(!ok);
    assert!(
        err.contains("key path") && err.contains(&named(&o1)),
        "{err}"
    );
    let (ok, _, err) = import(&["--policy-key", &p.public, loud]);
    assert!(ok, "{err}");
    assert!(err.contains("WARNING") && err.contains("key path"), "{err}");

    // Each opt-out is in the ledger's vault_created entry; nothing else is.
    let ledger = LedgerStore::open(&db).await.unwrap();
    let bodies: Vec<Value> = ledger
        .entries()
        .await
        .unwrap()
        .iter()
        .filter_map(|e| serde_json::from_slice(e.payload().as_bytes()).ok())
        .filter(|b: &Value| b.get("policy_key_guard").is_some())
        .collect();
    let names: Vec<&str> = bodies.iter().filter_map(|b| b["vault"].as_str()).collect();
    assert_eq!(names, ["sorted", "multi-a", "keypath"], "{bodies:?}");
    for b in &bodies {
        assert_eq!(
            b["policy_key_guard"]["disabled"],
            json!("officers can spend without the policy key"),
            "{b}"
        );
    }
    ledger.close().await;

    // 4. The taproot-recovery template: no warning, Core derives the same addresses, and it
    // receives funds.
    let (ok, out, err) = run(&[
        "vault",
        "create",
        "--name",
        "tr-recovery",
        "--template",
        "taproot-recovery",
        "--policy-key",
        &p.public,
        "--k",
        "1",
        "--officer",
        &o1.public,
        "--officer",
        &o2.public,
        "--r",
        "1",
        "--recovery-key",
        &rk.public,
        "--older",
        "144",
    ]);
    assert!(ok, "{err}");
    assert!(!err.contains("WARNING"), "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let external = created["external"].as_str().unwrap().to_string();
    assert!(
        external.starts_with(&format!("tr({}", custody::vault::descriptor::NUMS_POINT)),
        "{external}"
    );
    assert!(external.contains("older(144)"), "{external}");
    let core = rpc(&node, "deriveaddresses", &[json!(external), json!([0, 19])]);
    let core: Vec<String> = core
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut ours = Vec::new();
    for _ in 0..20 {
        let (ok, addr, err) = run(&["vault", "address", "--vault", "tr-recovery"]);
        assert!(ok, "{err}");
        ours.push(addr.trim().to_string());
    }
    assert_eq!(ours, core);
    let mut faucet = Faucet::new(&node, 1);
    let to = Address::from_str(&ours[0]).unwrap().assume_checked();
    faucet.pay(&node, &to, Amount::from_sat(1_2345_0000));
    node.mine_blocks(1, &node.new_address()).unwrap();
    let (ok, out, err) = run(&["vault", "sync", "--vault", "tr-recovery"]);
    assert!(ok, "{out}{err}");
    let (_, bal, _) = run(&["vault", "balance", "--vault", "tr-recovery"]);
    let bal: Value = serde_json::from_str(&bal).unwrap();
    assert_eq!(bal["confirmed_sat"], json!(1_2345_0000u64));
}
