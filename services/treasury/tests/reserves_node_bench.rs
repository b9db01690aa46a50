//! The node's share of verifying a proof of reserves, measured on regtest: a wsh 2-of-3 vault
//! funded with N outputs (`RESERVES_NODE_BENCH_UTXOS`, default 200) in transactions of 10
//! outputs each, synced, proven (BIP-127, signed by Core's `descriptorprocesspsbt`), and
//! verified by `verify_reserves` against the node, which reports its node time (RPC round trips)
//! apart from its local time. The BIP-322 form of the same UTXOs is verified too, with the
//! node's `gettxout` per UTXO timed apart from the local verification. Prints ms per UTXO and a
//! clearly labelled linear extrapolation to 10,000 UTXOs (docs/BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{node_config, officer, private_descriptors, rpc, Faucet, NET};
use std::str::FromStr;
use std::time::{Duration, Instant};

use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::{Amount, BlockHash, ScriptBuf, TxOut};
use custody::reserves::bip322::{self, Challenge};
use custody::reserves::file::{FinalProof, OutputMeta, ProofFile};
use custody::reserves::{build_proof, finalize_proof, ProofMessage};
use custody::vault::{Template, TemplateKey, VaultConfig};
use regtest::{node_or_skip, RegtestNode};
use serde_json::json;
use treasury::audit::reserves::verify_reserves;
use treasury::service::vaults::VaultService;
use treasury::store::LedgerStore;

fn sign_with_core(node: &RegtestNode, psbt: &Psbt, private: Vec<String>) -> Psbt {
    let signed = rpc(
        node,
        "descriptorprocesspsbt",
        &[
            json!(psbt.to_string()),
            json!(private),
            json!("ALL"),
            json!(true),
            json!(false),
        ],
    );
    Psbt::from_str(signed["psbt"].as_str().unwrap()).unwrap()
}

fn per_utxo(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e3 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_round_trips_of_the_verifier_per_utxo() {
    let Some(node) = node_or_skip("reserves_node_bench") else {
        return;
    };
    let n: usize = std::env::var("RESERVES_NODE_BENCH_UTXOS")
        .ok()
        .map_or(200, |v| v.parse().unwrap());
    let per_tx = 10usize;
    assert!(
        n.is_multiple_of(per_tx) && n > 0,
        "utxos must be a multiple of {per_tx}"
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let svc = VaultService::new(LedgerStore::open(&url).await.unwrap());
    let cfg = node_config(&node);
    let o = [officer(131), officer(132), officer(133)];
    // k = every key: the policy key signs every spend (and every proof)
    let t = Template::SortedMulti {
        k: 3,
        officers: vec![
            TemplateKey::parse(&o[0].public).unwrap(),
            TemplateKey::parse(&o[1].public).unwrap(),
        ],
        policy_key: TemplateKey::parse(&o[2].public).unwrap(),
    };
    let d = t.build(NET).unwrap();
    let birthday = u32::try_from(node.height().unwrap()).unwrap();
    svc.create(VaultConfig::new("bench", d.clone(), birthday).unwrap(), "t")
        .await
        .unwrap();
    let mut addrs = Vec::new();
    for _ in 0..per_tx {
        addrs.push(svc.next_address("bench").await.unwrap().address);
    }
    let mut faucet = Faucet::new(&node, n / per_tx);
    let started = Instant::now();
    for b in 0..n / per_tx {
        let outs: Vec<_> = addrs
            .iter()
            .enumerate()
            .map(|(k, a)| {
                (
                    a.clone(),
                    Amount::from_sat(100_000 + (b * per_tx + k) as u64),
                )
            })
            .collect();
        faucet.pay_many(&node, &outs);
    }
    node.mine_blocks(1, &node.new_address()).unwrap();
    let t_fund = started.elapsed();
    let started = Instant::now();
    let (v, _) = svc.sync("bench", &cfg).await.unwrap();
    let t_sync = started.elapsed();
    let utxos = v.utxos();
    assert_eq!(utxos.len(), n);

    let (h_hash, h) = node.tip().unwrap();
    let h = u32::try_from(h).unwrap();
    let msg = ProofMessage::for_vaults(&[&v], NET, h, h_hash, "checkpoint size=1 root=00 sig=00")
        .unwrap();
    let text = msg.encode();
    let private = private_descriptors(&d, &[&o[0], &o[1], &o[2]]);

    // BIP-127 through the full node-side verifier.
    let built = build_proof(&[(&v, &utxos)], &msg).unwrap();
    let started = Instant::now();
    let signed = sign_with_core(&node, &built.psbt, private.clone());
    let t_core_sign = started.elapsed();
    let tx = finalize_proof(signed, text.as_bytes()).unwrap();
    let block =
        BlockHash::from_str(rpc(&node, "getblockhash", &[json!(h)]).as_str().unwrap()).unwrap();
    let metas = utxos
        .iter()
        .map(|u| OutputMeta {
            outpoint: u.outpoint,
            block_hash: block,
        })
        .collect();
    let file = ProofFile::new(
        NET,
        &text,
        h_hash,
        vec![FinalProof::new(tx, metas).unwrap()],
    )
    .unwrap();
    let declared = vec![d.external_string(), d.internal_string()];
    let client = node.new_client().unwrap();
    let started = Instant::now();
    let r = verify_reserves(&file, &declared, &client, 30).unwrap();
    let t_total = started.elapsed();
    assert!(r.verdict(), "{:?}", r.reasons());
    assert_eq!(r.proven, built.total);

    // BIP-322 of the same UTXOs: gettxout per UTXO, then the local check.
    let challenge = Challenge::first_receive(&v);
    let b322 = bip322::build_proof_of_funds(&challenge, &[(&v, &utxos)], &msg).unwrap();
    let signed = sign_with_core(&node, &b322.psbt, private);
    let tx322 = bip322::finalize(signed, text.as_bytes(), &b322.challenge).unwrap();
    let started = Instant::now();
    let spent: Vec<TxOut> = tx322
        .input
        .iter()
        .skip(1)
        .map(|i| {
            let out = rpc(
                &node,
                "gettxout",
                &[
                    json!(i.previous_output.txid.to_string()),
                    json!(i.previous_output.vout),
                ],
            );
            TxOut {
                value: Amount::from_btc(out["value"].as_f64().unwrap()).unwrap(),
                script_pubkey: ScriptBuf::from_hex(out["scriptPubKey"]["hex"].as_str().unwrap())
                    .unwrap(),
            }
        })
        .collect();
    let t_gettxout = started.elapsed();
    let started = Instant::now();
    let total = bip322::verify(&tx322, text.as_bytes(), &b322.challenge, &spent).unwrap();
    let t_local322 = started.elapsed();
    assert_eq!(total, built.total);

    println!("utxos {n}: fund {t_fund:?} (setup), vault sync {t_sync:?}, core descriptorprocesspsbt {t_core_sign:?}");
    println!(
        "bip127 verify_reserves: total {t_total:?}, node {:?} ({:.3} ms/utxo), local {:?} ({:.3} ms/utxo)",
        r.node_time,
        per_utxo(r.node_time, n),
        r.local_time,
        per_utxo(r.local_time, n)
    );
    println!(
        "bip322: gettxout {t_gettxout:?} ({:.3} ms/utxo), local verify {t_local322:?} ({:.3} ms/utxo)",
        per_utxo(t_gettxout, n),
        per_utxo(t_local322, n)
    );
    println!(
        "EXTRAPOLATED (linear, not measured) to 10,000 utxos: bip127 node time {:.1} s, bip322 gettxout {:.1} s",
        per_utxo(r.node_time, n) * 10.0,
        per_utxo(t_gettxout, n) * 10.0
    );
}
