//! Vault benchmarks against a real regtest node and SQLite:
//!
//! - syncing 1,000 blocks that each carry a deposit of 10 outputs to the vault;
//! - loading the vault (10,000 revealed addresses, 10,000 UTXOs) from the database;
//! - building a PSBT on the vault holding 10,000 UTXOs.
//!
//! Run: `cargo run --release -p treasury --example vault_bench` (needs bitcoind: see
//! `regtest-node ensure`). Prints the median of repeated runs where repeating makes sense.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::str::FromStr;
use std::time::{Duration, Instant};

use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::{Address, Amount, FeeRate, Network, Txid};
use custody::vault::descriptor::with_checksum;
use custody::vault::spend::{self, FeeCaps, Payment, SpendRequest};
use custody::vault::{Template, TemplateKey, VaultConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;
use regtest::RegtestNode;
use serde_json::json;
use treasury::node::{NodeAuth, NodeConfig};
use treasury::service::vaults::VaultService;
use treasury::store::LedgerStore;

const BLOCKS: usize = 1_000;
const OUTPUTS_PER_BLOCK: usize = 10;

fn key(seed: u8) -> TemplateKey {
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(Network::Regtest, &[seed; 32]).unwrap();
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let xpub = Xpub::from_priv(&secp, &master.derive_priv(&secp, &path).unwrap());
    TemplateKey::parse(&format!(
        "[{}/48'/1'/0'/2']{xpub}",
        master.fingerprint(&secp)
    ))
    .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let node = RegtestNode::start().expect("bitcoind (run `regtest-node ensure`)");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let svc = VaultService::new(LedgerStore::open(&url).await.unwrap());
    // k = every key: the policy key signs every spend
    let d = Template::SortedMulti {
        k: 3,
        officers: vec![key(1), key(2)],
        policy_key: key(3),
    }
    .build(Network::Regtest)
    .unwrap();
    let mut cfg = VaultConfig::new("bench", d, 0).unwrap();
    cfg.gap_limit = 20_000;
    svc.create(cfg, "create").await.unwrap();

    // Reveal the addresses the deposits go to (persisted like any handed-out address).
    let mut vault = svc.vaults.load("bench").await.unwrap();
    let mut addrs = Vec::new();
    for _ in 0..BLOCKS * OUTPUTS_PER_BLOCK {
        addrs.push(vault.next_receive_address().unwrap().address);
    }
    svc.vaults.persist(&mut vault).await.unwrap();

    // A faucet key with one mature coinbase, then a chain of deposits, one block each.
    let (fkey, faddr) = node.new_key();
    let hash = node.mine_blocks(1, &faddr).unwrap()[0];
    node.mine_blocks(100, &node.new_address()).unwrap();
    let block = node
        .rpc("getblock", &[json!(hash.to_string()), json!(2)])
        .unwrap();
    let mut prev = (
        block["tx"][0]["txid"].as_str().unwrap().to_string(),
        0u32,
        Amount::from_btc(block["tx"][0]["vout"][0]["value"].as_f64().unwrap()).unwrap(),
    );
    let fdesc = with_checksum(&format!("wpkh({})", fkey.to_wif()));
    let each = Amount::from_sat(100_000);
    let fee = Amount::from_sat(3_000);
    let started = Instant::now();
    for b in 0..BLOCKS {
        let mut outputs = Vec::new();
        for a in &addrs[b * OUTPUTS_PER_BLOCK..(b + 1) * OUTPUTS_PER_BLOCK] {
            outputs.push(json!({ a.to_string(): each.to_btc() }));
        }
        let change = prev.2 - each * OUTPUTS_PER_BLOCK as u64 - fee;
        outputs.push(json!({ faddr.to_string(): change.to_btc() }));
        let psbt = node
            .rpc(
                "createpsbt",
                &[json!([{"txid": prev.0, "vout": prev.1}]), json!(outputs)],
            )
            .unwrap();
        let psbt = node
            .rpc("utxoupdatepsbt", &[psbt, json!([fdesc.clone()])])
            .unwrap();
        let signed = node
            .rpc("descriptorprocesspsbt", &[psbt, json!([fdesc.clone()])])
            .unwrap();
        let txid = node
            .rpc("sendrawtransaction", &[signed["hex"].clone()])
            .unwrap();
        node.mine_blocks(1, &node.new_address()).unwrap();
        prev = (
            txid.as_str().unwrap().to_string(),
            OUTPUTS_PER_BLOCK as u32,
            change,
        );
        let _ = Txid::from_str(txid.as_str().unwrap()).unwrap();
    }
    eprintln!(
        "funded {} UTXOs in {BLOCKS} blocks in {:.1?}",
        BLOCKS * OUTPUTS_PER_BLOCK,
        started.elapsed()
    );

    let cfgnode = NodeConfig {
        url: node.rpc_url(),
        auth: NodeAuth::Cookie(node.cookie_file()),
    };
    let t = Instant::now();
    let (v, events) = svc.sync("bench", &cfgnode).await.unwrap();
    let sync = t.elapsed();
    assert_eq!(v.utxos().len(), BLOCKS * OUTPUTS_PER_BLOCK);
    println!(
        "sync {} blocks ({} wallet txs, {} ledger events, incl. persist): {:.1?}",
        node.height().unwrap(),
        BLOCKS,
        events.len(),
        sync
    );

    let mut loads = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let v = svc.vaults.load("bench").await.unwrap();
        loads.push(t.elapsed());
        assert_eq!(v.utxos().len(), BLOCKS * OUTPUTS_PER_BLOCK);
    }
    println!(
        "load vault (10,000 revealed addresses, 10,000 UTXOs) from SQLite: median {:.1?}",
        median(loads)
    );

    let dest = Address::from_str(&node.new_address().to_string()).unwrap();
    let mut builds = Vec::new();
    let mut consolidations = Vec::new();
    let none = Default::default();
    for i in 0..5 {
        let mut v = svc.vaults.load("bench").await.unwrap();
        let req = SpendRequest {
            payments: vec![Payment {
                address: dest.clone(),
                amount: Amount::from_sat(2_500_000),
            }],
            fee_rate: Some(FeeRate::from_sat_per_vb_u32(2)),
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(i);
        let t = Instant::now();
        let built = spend::build(
            &mut v,
            &req,
            &none,
            FeeRate::from_sat_per_vb_u32(2),
            &FeeCaps::default(),
            &mut rng,
        )
        .unwrap();
        builds.push(t.elapsed());
        assert!(!built.inputs.is_empty());
        let req = SpendRequest {
            consolidate: true,
            include: v.utxos().iter().take(500).map(|u| u.outpoint).collect(),
            only_included: true,
            fee_rate: Some(FeeRate::from_sat_per_vb_u32(2)),
            ..Default::default()
        };
        let t = Instant::now();
        let built = spend::build(
            &mut v,
            &req,
            &none,
            FeeRate::from_sat_per_vb_u32(2),
            &FeeCaps {
                max_fee: Amount::from_sat(10_000_000),
                ..FeeCaps::default()
            },
            &mut rng,
        )
        .unwrap();
        consolidations.push(t.elapsed());
        assert_eq!(built.inputs.len(), 500);
    }
    println!(
        "psbt build, payment, vault of 10,000 UTXOs: median {:.1?}",
        median(builds)
    );
    println!(
        "psbt build, consolidation of 500 chosen UTXOs: median {:.1?}",
        median(consolidations)
    );
}
