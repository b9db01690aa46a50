//! BIP-322 proofs of funds against a real regtest node: a wsh 3-of-3 vault (the policy key is
//! one of the three) and a taproot policy-key-with-recovery vault funded from outside and synced
//! by the `VaultService`; the `to_sign` PSBT built for the proof message at the tip, read by
//! Core's `decodepsbt`, signed by an officer and the policy key through Core's
//! `descriptorprocesspsbt` with private descriptors, finalized by us and by Core's
//! `finalizepsbt`, and verified against the spent outputs as the node reports them
//! (`gettxout`). Core's `testmempoolaccept` refuses it (its input 0 does not exist). Then each way
//! it can be wrong, each with its reason: a changed message, the wrong challenge, an extra
//! output, a forged or truncated witness.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{officer, private_descriptors, rpc, Faucet, Officer, NET};
use std::str::FromStr;

use bdk_wallet::bitcoin::consensus::encode::deserialize_hex;
use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::{Amount, ScriptBuf, Transaction, TxOut, Witness};
use custody::reserves::bip322::{
    build_proof_of_funds, decode_full, encode_full, finalize, to_spend, verify, Bip322Error,
    Challenge,
};
use custody::reserves::ProofMessage;
use custody::vault::{Template, TemplateKey, VaultConfig, VaultDescriptor};
use regtest::{node_or_skip, RegtestNode};
use serde_json::json;
use treasury::service::vaults::VaultService;
use treasury::store::LedgerStore;

/// wsh(sortedmulti(3, o0, o1, policy key o2)): k = every key, so the policy key signs.
fn wsh_3_of_3(seed: u8) -> (VaultDescriptor, [Officer; 3]) {
    let o = [officer(seed), officer(seed + 1), officer(seed + 2)];
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

/// The taproot vault: the policy key o2 AND 1 of the officers o0, o1 in one leaf, the recovery
/// key o3 after 144 blocks in the other.
fn tr_policy_recovery(seed: u8) -> (VaultDescriptor, [Officer; 4]) {
    let o = [
        officer(seed),
        officer(seed + 1),
        officer(seed + 2),
        officer(seed + 3),
    ];
    let key = |o: &Officer| TemplateKey::parse(&o.public).unwrap();
    let t = Template::TaprootPolicyWithRecovery {
        policy_key: key(&o[2]),
        k: 1,
        officers: vec![key(&o[0]), key(&o[1])],
        r: 1,
        recovery: vec![key(&o[3])],
        older: 144,
    };
    (t.build(NET).unwrap(), o)
}

/// The outputs the node says `tx`'s inputs 1.. spend (each must be unspent now).
fn spent_from_node(node: &RegtestNode, tx: &Transaction) -> Vec<TxOut> {
    tx.input
        .iter()
        .skip(1)
        .map(|i| {
            let out = rpc(
                node,
                "gettxout",
                &[
                    json!(i.previous_output.txid.to_string()),
                    json!(i.previous_output.vout),
                ],
            );
            assert!(!out.is_null(), "{} is not unspent", i.previous_output);
            TxOut {
                value: Amount::from_btc(out["value"].as_f64().unwrap()).unwrap(),
                script_pubkey: ScriptBuf::from_hex(out["scriptPubKey"]["hex"].as_str().unwrap())
                    .unwrap(),
            }
        })
        .collect()
}

struct Case {
    tx: Transaction,
    message: String,
    challenge: ScriptBuf,
    spent: Vec<TxOut>,
    total: Amount,
}

/// Builds, has Core decode, sign and finalize, finalizes and verifies a proof of funds for
/// vault `name`; returns the signed `to_sign`.
async fn prove(
    node: &RegtestNode,
    svc: &VaultService,
    name: &str,
    d: &VaultDescriptor,
    signers: &[&Officer],
    taproot: bool,
) -> Case {
    let cfg = common::node_config(node);
    let (v, _) = svc.sync(name, &cfg).await.unwrap();
    let utxos = v.utxos();
    assert_eq!(utxos.len(), 2);
    let (h_hash, h) = node.tip().unwrap();
    let h = u32::try_from(h).unwrap();
    let msg = ProofMessage::for_vaults(
        &[&v],
        NET,
        h,
        h_hash,
        "checkpoint size=3 root=00ff sig=abcd",
    )
    .unwrap();
    let text = msg.encode();
    let built = build_proof_of_funds(&Challenge::first_receive(&v), &[(&v, &utxos)], &msg).unwrap();
    let b64 = built.psbt.to_string();

    // Core reads the PSBT: input 0 carries to_spend, every input its key origins.
    let decoded = rpc(node, "decodepsbt", &[json!(b64)]);
    assert_eq!(decoded["tx"]["version"], json!(0));
    assert_eq!(decoded["tx"]["vin"].as_array().unwrap().len(), 3);
    assert_eq!(
        decoded["inputs"][0]["non_witness_utxo"]["txid"],
        json!(built.to_spend.compute_txid().to_string())
    );
    assert_eq!(
        decoded["tx"]["vin"][0]["txid"],
        json!(built.to_spend.compute_txid().to_string())
    );
    for input in decoded["inputs"].as_array().unwrap() {
        let origins = if taproot {
            &input["taproot_bip32_derivs"]
        } else {
            &input["bip32_derivs"]
        };
        assert!(
            !origins.as_array().unwrap().is_empty(),
            "no key origins: {input}"
        );
    }

    let signed = rpc(
        node,
        "descriptorprocesspsbt",
        &[
            json!(b64),
            json!(private_descriptors(d, signers)),
            json!("ALL"),
            json!(true),
            json!(false),
        ],
    );
    let signed_b64 = signed["psbt"].as_str().unwrap().to_string();
    let signed = Psbt::from_str(&signed_b64).unwrap();
    let tx = finalize(signed, text.as_bytes(), &built.challenge).unwrap();

    // The node's view of the spent outputs, not the PSBT's.
    let spent = spent_from_node(node, &tx);
    assert_eq!(
        verify(&tx, text.as_bytes(), &built.challenge, &spent),
        Ok(built.total)
    );
    // Core finalizes the same signatures into a to_sign we verify too.
    let core = rpc(node, "finalizepsbt", &[json!(signed_b64), json!(true)]);
    assert_eq!(core["complete"], json!(true), "{core}");
    let core_tx: Transaction = deserialize_hex(core["hex"].as_str().unwrap()).unwrap();
    assert_eq!(core_tx.compute_txid(), tx.compute_txid());
    assert_eq!(
        verify(&core_tx, text.as_bytes(), &built.challenge, &spent),
        Ok(built.total)
    );
    // The full format round-trips.
    assert_eq!(decode_full(&encode_full(&tx)).unwrap(), tx);
    // It can never be mined: input 0 spends to_spend, which spends the null outpoint.
    let accept = rpc(
        node,
        "testmempoolaccept",
        &[json!([
            bdk_wallet::bitcoin::consensus::encode::serialize_hex(&tx)
        ])],
    );
    assert_eq!(accept[0]["allowed"], json!(false), "{accept}");
    assert_eq!(
        built.to_spend,
        to_spend(text.as_bytes(), &built.challenge),
        "to_spend is a function of message and challenge"
    );
    Case {
        tx,
        message: text,
        challenge: built.challenge,
        spent,
        total: built.total,
    }
}

fn refused(c: &Case, tx: &Transaction, message: &str, challenge: &ScriptBuf) -> Bip322Error {
    let e = verify(tx, message.as_bytes(), challenge, &c.spent).unwrap_err();
    println!("refused: {e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_of_funds_signed_by_core_verify_and_each_fault_is_named() {
    let Some(node) = node_or_skip("bip322_regtest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let svc = VaultService::new(LedgerStore::open(&url).await.unwrap());
    let (dw, ow) = wsh_3_of_3(111);
    let (dt, ot) = tr_policy_recovery(121);
    let birthday = u32::try_from(node.height().unwrap()).unwrap();
    for (name, d) in [("w", &dw), ("t", &dt)] {
        svc.create(VaultConfig::new(name, d.clone(), birthday).unwrap(), "t")
            .await
            .unwrap();
    }
    let mut faucet = Faucet::new(&node, 4);
    for (name, sat) in [
        ("w", 1_0000_0000u64),
        ("w", 2_5000_0000),
        ("t", 7_0000_0000),
        ("t", 3000_0000),
    ] {
        let addr = svc.next_address(name).await.unwrap().address;
        faucet.pay(&node, &addr, Amount::from_sat(sat));
    }
    node.mine_blocks(1, &node.new_address()).unwrap();

    let w = prove(&node, &svc, "w", &dw, &[&ow[0], &ow[1], &ow[2]], false).await;
    assert_eq!(w.total, Amount::from_sat(3_5000_0000));
    let t = prove(&node, &svc, "t", &dt, &[&ot[0], &ot[2]], true).await;
    assert_eq!(t.total, Amount::from_sat(7_3000_0000));

    for c in [&w, &t] {
        // A changed message.
        let changed = c.message.replace("sig=abcd", "sig=abce");
        let e = refused(c, &c.tx, &changed, &c.challenge);
        assert!(matches!(e, Bip322Error::NotToSpend { .. }), "{e}");
        assert!(e.to_string().contains("another message"), "{e}");
        // Input 0 re-pointed at the changed message's to_spend: its signatures fail.
        let mut moved = c.tx.clone();
        moved.input[0].previous_output.txid =
            to_spend(changed.as_bytes(), &c.challenge).compute_txid();
        let e = refused(c, &moved, &changed, &c.challenge);
        assert!(matches!(e, Bip322Error::Script { input: 0, .. }), "{e}");
        // An extra output.
        let mut extra = c.tx.clone();
        extra.output.push(c.spent[0].clone());
        let e = refused(c, &extra, &c.message, &c.challenge);
        assert_eq!(e, Bip322Error::OutputCount(2));
        // Forged and truncated witnesses on every input.
        for input in 0..c.tx.input.len() {
            let items = c.tx.input[input].witness.to_vec();
            let k = items.iter().position(|i| i.len() >= 64).unwrap();
            let mut forged_items = items.clone();
            forged_items[k][20] ^= 0x01;
            let mut forged = c.tx.clone();
            forged.input[input].witness = Witness::from_slice(&forged_items);
            let e = refused(c, &forged, &c.message, &c.challenge);
            assert!(
                matches!(e, Bip322Error::Script { input: i, .. } if i == input),
                "{e}"
            );
            let mut cut = c.tx.clone();
            cut.input[input].witness = Witness::from_slice(&items[1..]);
            let e = refused(c, &cut, &c.message, &c.challenge);
            assert!(
                matches!(e, Bip322Error::Script { input: i, .. } if i == input),
                "{e}"
            );
        }
    }
    // The wrong challenge: the other vault's address.
    let e = refused(&w, &w.tx, &w.message, &t.challenge);
    assert!(matches!(e, Bip322Error::NotToSpend { .. }), "{e}");
    // A proof whose UTXO was spent: the node no longer reports it (gettxout is null), and a
    // verifier fed a made-up spent output gets a script failure.
    let mut wrong_spent = w.spent.clone();
    wrong_spent[0].script_pubkey = t.challenge.clone();
    let e = verify(&w.tx, w.message.as_bytes(), &w.challenge, &wrong_spent).unwrap_err();
    assert!(matches!(e, Bip322Error::Script { input: 1, .. }), "{e}");
}
