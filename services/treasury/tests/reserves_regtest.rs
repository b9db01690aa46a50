//! BIP-127 proofs of reserves against a real regtest node: a wsh 3-of-3 vault (the policy key
//! signs) funded from outside and synced by the `VaultService`; a proof built at the tip H,
//! checked by Core's `decodepsbt`, signed by the officers and the policy key through Core's
//! `descriptorprocesspsbt`, finalized, written as a protobuf proof file, read back and verified against the node. Then each way it
//! can be wrong, each with its reason: a changed message, the wrong network, a UTXO outside the
//! declared descriptors, a UTXO confirmed after H, a UTXO spent before H. A spend after H does
//! not spoil a proof at H.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{node_config, officer, private_descriptors, rpc, Faucet, Officer, NET};
use std::str::FromStr;

use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::{Amount, BlockHash, Network, Transaction};
use custody::reserves::file::{FinalProof, OutputMeta, ProofFile};
use custody::reserves::{build_proof, finalize_proof, ProofMessage};
use custody::vault::{Template, TemplateKey, VaultConfig, VaultDescriptor, VaultUtxo};
use regtest::{node_or_skip, RegtestNode};
use serde_json::json;
use treasury::audit::reserves::{
    verify_reserves, verify_reserves_with, ReserveProblem, ReserveReport, SpendSearch, UtxoProblem,
};
use treasury::service::vaults::VaultService;
use treasury::store::LedgerStore;

const GAP: u32 = 30;

fn wsh_3_of_3(seed: u8) -> (VaultDescriptor, [Officer; 3]) {
    let o = [officer(seed), officer(seed + 1), officer(seed + 2)];
    // k = every key: the policy key (o[2]) signs every spend and every proof
    let t = Template::SortedMulti {
        k: 3,
        officers: vec![
            TemplateKey::parse(&o[0].public).unwrap(),
            TemplateKey::parse(&o[1].public).unwrap(),
        ],
        policy_key: TemplateKey::parse(&o[2].public).unwrap(),
    };
    (t.build(NET).unwrap(), o)
}

fn public_descriptors(d: &VaultDescriptor) -> Vec<String> {
    vec![d.external_string(), d.internal_string()]
}

/// Core checks the proof PSBT (`decodepsbt` sees the 0x09 field), then the officers and the policy key sign it
/// through `descriptorprocesspsbt`; we finalize it.
fn sign_and_finalize(
    node: &RegtestNode,
    psbt: &Psbt,
    private: Vec<String>,
    message: &ProofMessage,
) -> Transaction {
    let b64 = psbt.to_string();
    let decoded = rpc(node, "decodepsbt", &[json!(b64)]);
    assert_eq!(
        decoded["inputs"][0]["unknown"]["09"].as_str().unwrap(),
        hex::encode(message.encode())
    );
    let signed = rpc(
        node,
        "descriptorprocesspsbt",
        &[
            json!(b64),
            json!(private),
            json!("ALL"),
            json!(true),
            json!(false),
        ],
    );
    let signed = Psbt::from_str(signed["psbt"].as_str().unwrap()).unwrap();
    finalize_proof(signed, message.encode().as_bytes()).unwrap()
}

fn block_at(node: &RegtestNode, height: u32) -> BlockHash {
    BlockHash::from_str(
        rpc(node, "getblockhash", &[json!(height)])
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

/// The proof file for `tx` over `utxos` (in proof order) at `message`'s block.
fn proof_file(
    node: &RegtestNode,
    network: Network,
    message: &str,
    h: BlockHash,
    tx: Transaction,
    utxos: &[VaultUtxo],
) -> ProofFile {
    let metas = utxos
        .iter()
        .map(|u| OutputMeta {
            outpoint: u.outpoint,
            block_hash: block_at(node, u.height.unwrap()),
        })
        .collect();
    ProofFile::new(
        network,
        message,
        h,
        vec![FinalProof::new(tx, metas).unwrap()],
    )
    .unwrap()
}

fn verify(node: &RegtestNode, file: &ProofFile, descriptors: &[String]) -> ReserveReport {
    let client = node.new_client().unwrap();
    verify_reserves(file, descriptors, &client, GAP).unwrap()
}

fn utxo_problems(r: &ReserveReport) -> Vec<UtxoProblem> {
    r.utxos.iter().flat_map(|u| u.problems.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_at_h_verifies_against_the_node_and_each_fault_is_named() {
    let Some(node) = node_or_skip("reserves_regtest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let svc = VaultService::new(LedgerStore::open(&url).await.unwrap());
    let cfg = node_config(&node);
    let (da, oa) = wsh_3_of_3(81);
    let (db, ob) = wsh_3_of_3(91);
    let birthday = u32::try_from(node.height().unwrap()).unwrap();
    for (name, d) in [("a", &da), ("b", &db)] {
        svc.create(VaultConfig::new(name, d.clone(), birthday).unwrap(), "t")
            .await
            .unwrap();
    }
    let mut faucet = Faucet::new(&node, 5);
    for (name, sat) in [
        ("a", 1_0000_0000u64),
        ("a", 2_5000_0000),
        ("b", 7_0000_0000),
    ] {
        let addr = svc.next_address(name).await.unwrap().address;
        faucet.pay(&node, &addr, Amount::from_sat(sat));
    }
    node.mine_blocks(1, &node.new_address()).unwrap();
    let (va, _) = svc.sync("a", &cfg).await.unwrap();
    let (vb, _) = svc.sync("b", &cfg).await.unwrap();
    let (ua, ub) = (va.utxos(), vb.utxos());
    assert_eq!(ua.len(), 2);
    assert_eq!(ub.len(), 1);

    // The proof at the tip H.
    let (h_hash, h) = node.tip().unwrap();
    let h = u32::try_from(h).unwrap();
    let checkpoint = "checkpoint size=3 root=00ff sig=abcd";
    let msg = ProofMessage::for_vaults(&[&va], NET, h, h_hash, checkpoint).unwrap();
    let built = build_proof(&[(&va, &ua)], &msg).unwrap();
    assert_eq!(built.total, Amount::from_sat(3_5000_0000));
    let tx = sign_and_finalize(
        &node,
        &built.psbt,
        private_descriptors(&da, &[&oa[0], &oa[1], &oa[2]]),
        &msg,
    );
    let file = proof_file(&node, NET, &msg.encode(), h_hash, tx.clone(), &ua);
    let path = dir.path().join("reserves.proof");
    std::fs::write(&path, file.encode()).unwrap();
    let file = ProofFile::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        ProofFile::from_json_str(&file.to_json_string().unwrap()).unwrap(),
        file
    );
    let declared = public_descriptors(&da);
    let r = verify(&node, &file, &declared);
    assert!(r.verdict(), "{:?}", r.reasons());
    assert_eq!(r.proven, Amount::from_sat(3_5000_0000));
    assert_eq!(r.height, Some(h));
    assert!(r.utxos.iter().all(|u| u.created_height == Some(h)));
    println!(
        "verified {} utxos: node {:?}, local {:?}",
        r.utxos.len(),
        r.node_time,
        r.local_time
    );

    // Output metadata naming a block that does not hold the transaction.
    let p = &file.final_proofs()[0];
    let mut metas = p.output_metadata().to_vec();
    metas[1].block_hash = block_at(&node, h - 1);
    let wrong_block = ProofFile::new(
        NET,
        file.message(),
        h_hash,
        vec![FinalProof::new(p.proof_tx().clone(), metas).unwrap()],
    )
    .unwrap();
    let r = verify(&node, &wrong_block, &declared);
    assert!(!r.verdict());
    assert_eq!(
        utxo_problems(&r),
        vec![UtxoProblem::NotInBlock(block_at(&node, h - 1))],
        "{:?}",
        r.reasons()
    );
    assert!(r
        .problems
        .iter()
        .any(|p| matches!(p, ReserveProblem::ProofUnchecked(0))));

    // A changed message: the commitment no longer matches.
    let changed = msg.encode().replace("sig=abcd", "sig=abce");
    let bad = ProofFile::new(NET, &changed, h_hash, file.final_proofs().to_vec()).unwrap();
    let r = verify(&node, &bad, &declared);
    assert!(!r.verdict());
    assert!(
        r.problems.iter().any(|p| matches!(
            p,
            ReserveProblem::Proof {
                error: custody::reserves::ReserveError::NotACommitment { .. },
                ..
            }
        )),
        "{:?}",
        r.reasons()
    );
    assert_eq!(r.proven, Amount::ZERO);

    // The wrong network: the same proofs under mainnet's magic.
    let mainnet = ProofFile::decode(
        &ProofFile::new(
            Network::Bitcoin,
            file.message(),
            h_hash,
            file.final_proofs().to_vec(),
        )
        .unwrap()
        .encode(),
    )
    .unwrap();
    let r = verify(&node, &mainnet, &declared);
    assert!(!r.verdict());
    assert!(
        r.problems.iter().any(|p| matches!(
            p,
            ReserveProblem::WrongNetwork {
                file: Network::Bitcoin,
                ..
            }
        )),
        "{:?}",
        r.reasons()
    );

    // A UTXO outside the declared descriptors: vault b's coin in a proof over a and b, with
    // only a's descriptors declared.
    let msg_ab = ProofMessage::for_vaults(&[&va, &vb], NET, h, h_hash, checkpoint).unwrap();
    let built = build_proof(&[(&va, &ua), (&vb, &ub)], &msg_ab).unwrap();
    let mut keys = private_descriptors(&da, &[&oa[0], &oa[1], &oa[2]]);
    keys.extend(private_descriptors(&db, &[&ob[0], &ob[1], &ob[2]]));
    let tx_ab = sign_and_finalize(&node, &built.psbt, keys, &msg_ab);
    let both: Vec<VaultUtxo> = ua.iter().chain(&ub).cloned().collect();
    let file_ab = proof_file(&node, NET, &msg_ab.encode(), h_hash, tx_ab, &both);
    let mut all = declared.clone();
    all.extend(public_descriptors(&db));
    let r = verify(&node, &file_ab, &all);
    assert!(r.verdict(), "{:?}", r.reasons());
    assert_eq!(r.proven, Amount::from_sat(10_5000_0000));
    let r = verify(&node, &file_ab, &declared);
    assert!(!r.verdict());
    let outside: Vec<_> = r
        .utxos
        .iter()
        .filter(|u| u.problems.contains(&UtxoProblem::OutsideDescriptors))
        .map(|u| u.outpoint)
        .collect();
    assert_eq!(outside, vec![ub[0].outpoint], "{:?}", r.reasons());
    assert!(r
        .problems
        .iter()
        .any(|p| matches!(p, ReserveProblem::UndeclaredDescriptor(_))));

    // A UTXO confirmed after H, in a proof that claims H.
    let addr = svc.next_address("a").await.unwrap().address;
    faucet.pay(&node, &addr, Amount::from_sat(5000_0000));
    node.mine_blocks(1, &node.new_address()).unwrap();
    let (va2, _) = svc.sync("a", &cfg).await.unwrap();
    let ua2 = va2.utxos();
    assert_eq!(ua2.len(), 3);
    let built = build_proof(&[(&va2, &ua2)], &msg).unwrap();
    let tx_late = sign_and_finalize(
        &node,
        &built.psbt,
        private_descriptors(&da, &[&oa[0], &oa[1], &oa[2]]),
        &msg,
    );
    let late = proof_file(&node, NET, &msg.encode(), h_hash, tx_late, &ua2);
    let r = verify(&node, &late, &declared);
    assert!(!r.verdict());
    assert_eq!(
        utxo_problems(&r),
        vec![UtxoProblem::CreatedAfterH { height: h + 1, h }],
        "{:?}",
        r.reasons()
    );

    // Spend one of the proven coins (Core only), mine: the proof at H still holds (the spend is
    // above H), a proof at the new tip claiming it fails.
    let spent = ua[0].clone();
    let to = node.new_address();
    let psbt = rpc(
        &node,
        "createpsbt",
        &[
            json!([{"txid": spent.outpoint.txid.to_string(), "vout": spent.outpoint.vout}]),
            json!([{ to.to_string(): (spent.value - Amount::from_sat(3_000)).to_btc() }]),
        ],
    );
    let psbt = rpc(&node, "utxoupdatepsbt", &[psbt, json!(declared.clone())]);
    let signed = rpc(
        &node,
        "descriptorprocesspsbt",
        &[
            psbt,
            json!(private_descriptors(&da, &[&oa[0], &oa[1], &oa[2]])),
        ],
    );
    rpc(&node, "sendrawtransaction", &[signed["hex"].clone()]);
    node.mine_blocks(1, &node.new_address()).unwrap();

    let r = verify(&node, &file, &declared);
    assert!(r.verdict(), "{:?}", r.reasons());
    let after: Vec<_> = r.utxos.iter().map(|u| u.spent_height).collect();
    assert!(after.contains(&Some(h + 2)), "{after:?}");
    // The block scan finds the same spend.
    let client = node.new_client().unwrap();
    let scan =
        verify_reserves_with(&file, &declared, &client, GAP, SpendSearch::BlockScan).unwrap();
    assert!(scan.verdict(), "{:?}", scan.reasons());
    assert_eq!(scan.utxos, r.utxos);

    let (h2_hash, h2) = node.tip().unwrap();
    let h2 = u32::try_from(h2).unwrap();
    let msg2 = ProofMessage::for_vaults(&[&va], NET, h2, h2_hash, checkpoint).unwrap();
    let built = build_proof(&[(&va, &ua)], &msg2).unwrap();
    let tx2 = sign_and_finalize(
        &node,
        &built.psbt,
        private_descriptors(&da, &[&oa[0], &oa[1], &oa[2]]),
        &msg2,
    );
    let stale = proof_file(&node, NET, &msg2.encode(), h2_hash, tx2, &ua);
    let r = verify(&node, &stale, &declared);
    assert!(!r.verdict());
    assert_eq!(
        utxo_problems(&r),
        vec![UtxoProblem::SpentAtOrBeforeH {
            height: None,
            h: h2
        }],
        "{:?}",
        r.reasons()
    );
    assert_eq!(r.proven, Amount::ZERO);
    let scan =
        verify_reserves_with(&stale, &declared, &client, GAP, SpendSearch::BlockScan).unwrap();
    assert_eq!(scan.utxos, r.utxos);
}
