//! The BIP-322 proof-of-funds form of a proof of reserves through the whole flow, on the real
//! parts (a Bitcoin Core regtest node, SQLite, the HSM policy key in a SoftHSM2 token):
//! `reserves prove` builds both forms over the same UTXOs and message; Core's `decodepsbt`
//! reads the `to_sign` PSBT; officers sign both forms through Core's `descriptorprocesspsbt`;
//! `reserves submit-psbt` tells the forms apart; `reserves sign-policy` has the HSM policy key
//! sign both; the bundle carries both; `treasury audit reserves` verifies both. Two vaults: a
//! `wsh(sortedmulti)` vault with the HSM key (all through the `treasury` binary) and a taproot
//! policy-key-with-recovery vault (through the service; its BIP-322 form half-signed first, which stops the
//! finalization). Then each way the BIP-322 form can be wrong, each failing the audit with its
//! own reason while the BIP-127 form still holds: other UTXOs than the BIP-127 proof, a changed
//! message, a forged and a truncated taproot witness in `to_sign`, an extra output, and the
//! form's files dropped from a bundle that lists it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{
    hsm_policy_key, ledger_key_file, node_config, officer, private_descriptors, rpc, Faucet,
    Officer, NET,
};
use std::process::Command;
use std::str::FromStr;

use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::{Amount, ScriptBuf, Transaction, TxOut, Witness};
use custody::ledger::VerifierKey;
use custody::reserves::bip322::{
    self, build_proof_of_funds, decode_full, encode_full, to_spend, Bip322Error, Challenge,
};
use custody::reserves::ProofMessage;
use custody::vault::{Template, TemplateKey, VaultConfig};
use regtest::{node_or_skip, RegtestNode};
use serde_json::json;
use treasury::audit::bip322::Bip322Problem;
use treasury::audit::bundle::{audit_bundle, BundleAudit};
use treasury::audit::reserves::SpendSearch;
use treasury::files::bundle::{Bip322ProofJson, Bundle, BIP322_FULL_PATH, BIP322_JSON_PATH};
use treasury::service::reserves::{
    Bip322State, BundleOptions, CheckpointSource, ProofForm, ProveRequest, ReserveService,
    ReserveServiceError,
};
use treasury::service::spend::SpendService;
use treasury::service::vaults::VaultService;
use treasury::store::LedgerStore;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
const PIN: &str = "2718";
const ORIGIN: &str = "reserve.example/ledger";
const GAP: u32 = 40;
const SECRET: [u8; 32] = [9; 32];

fn audit(node: &RegtestNode, b: &Bundle, key: &VerifierKey) -> BundleAudit {
    let client = node.new_client().unwrap();
    audit_bundle(b, &client, Some(key), GAP, SpendSearch::DescriptorActivity).unwrap()
}

/// Officers sign `psbt` through Core's `descriptorprocesspsbt` with their private descriptors.
fn core_sign(node: &RegtestNode, psbt: &Psbt, private: Vec<String>) -> Psbt {
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

/// The proof_quorum officers' approvals of proof `id` (the example policy's alice, bob and
/// carol, keys from the fixed test secrets), over the subject the service re-derives from the
/// BIP-127 PSBT (the BIP-322 form gives the same subject), submitted through the service.
async fn approve_proof(svc: &ReserveService, id: &str) {
    let now = treasury::clock::now_ms();
    let subject = svc.proof_subject(id, now).await.unwrap().subject;
    for (who, b) in [("alice", 1u8), ("bob", 2), ("carol", 3)] {
        let secret = bdk_wallet::bitcoin::secp256k1::SecretKey::from_slice(&[b; 32]).unwrap();
        svc.add_approval(id, subject.sign(who, &secret), who, now)
            .await
            .unwrap();
    }
}

fn bip322_doc(b: &Bundle) -> Bip322ProofJson {
    serde_json::from_str(b.text(BIP322_JSON_PATH).unwrap()).unwrap()
}

fn bip322_tx(b: &Bundle) -> Transaction {
    decode_full(b.text(BIP322_FULL_PATH).unwrap()).unwrap()
}

/// The bundle with `tx` as its BIP-322 form and `edit` applied to the JSON rendering (kept
/// consistent with `tx`), resealed: what an attacker who recomputes the manifest would hand
/// over.
fn with_bip322(b: &Bundle, tx: &Transaction, edit: impl Fn(&mut Bip322ProofJson)) -> Bundle {
    let mut doc = bip322_doc(b);
    doc.to_sign_txid = tx.compute_txid().to_string();
    edit(&mut doc);
    let mut files = b.files().clone();
    files.insert(
        BIP322_FULL_PATH.into(),
        format!("{}\n", encode_full(tx)).into_bytes(),
    );
    files.insert(
        BIP322_JSON_PATH.into(),
        serde_json::to_string_pretty(&doc).unwrap().into_bytes(),
    );
    Bundle::seal(files).unwrap()
}

fn bip322_problems(a: &BundleAudit) -> Vec<Bip322Problem> {
    a.bip322.as_ref().expect("a bip-322 audit").problems.clone()
}

/// The BIP-322 form fails with problems matching `want`, while the BIP-127 form holds.
fn only_bip322_fails(a: &BundleAudit, what: &str, want: impl Fn(&Bip322Problem) -> bool) {
    assert!(!a.verdict(), "{what}: the audit should fail");
    assert!(
        a.reserves.as_ref().unwrap().verdict(),
        "{what}: {:?}",
        a.reasons()
    );
    assert!(a.problems.is_empty(), "{what}: {:?}", a.problems);
    let p = bip322_problems(a);
    assert!(!p.is_empty() && p.iter().any(&want), "{what}: {p:?}");
    let text = a.render();
    assert!(text.contains("bip-127 form:   OK"), "{what}: {text}");
    assert!(text.contains("bip-322 form:   FAILED"), "{what}: {text}");
    assert!(text.contains("verdict:        FAILED"), "{what}: {text}");
    assert!(
        a.reasons().iter().any(|r| r.starts_with("bip-322 form: ")),
        "{what}: {:?}",
        a.reasons()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_forms_are_signed_bundled_and_audited_and_each_bip322_fault_is_named() {
    let Some(node) = node_or_skip("reserves_bip322_regtest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Before the first C_Initialize of this process (the only test of this binary).
    let Some((conf, policy_key)) = hsm_policy_key(dir.path(), "reserves_bip322_regtest", PIN)
    else {
        return;
    };

    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let (key_file, ledger_signer, vk) = ledger_key_file(dir.path(), &SECRET, ORIGIN);
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_treasury"))
            .args(args)
            .env("TREASURY_DB", &db)
            .env("TREASURY_RPC_URL", node.rpc_url())
            .env("TREASURY_RPC_COOKIE", node.cookie_file())
            .env("TREASURY_LEDGER_KEY_FILE", &key_file)
            .env("TREASURY_LEDGER_ORIGIN", ORIGIN)
            .env("SOFTHSM2_CONF", &conf)
            .env("TREASURY_HSM_MODULE", MODULE)
            .env("TREASURY_HSM_TOKEN", "reserve")
            .env("TREASURY_HSM_PIN", PIN)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let ledger = LedgerStore::open(&db).await.unwrap();
    let svc = ReserveService::new(SpendService::new(VaultService::new(ledger.clone())));
    let now = treasury::clock::now_ms();
    svc.spend
        .governance
        .init(EXAMPLE, "admins", now)
        .await
        .unwrap();
    let o: Vec<Officer> = (121..130).map(officer).collect();
    let tk = |i: usize| TemplateKey::parse(&o[i].public).unwrap();
    // k = every key (officer o0 and the HSM policy key): the policy key signs every spend.
    let d_wsh = Template::SortedMulti {
        k: 2,
        officers: vec![tk(0)],
        policy_key,
    }
    .build(NET)
    .unwrap();
    // The taproot vault: o8 stands in for the policy key (a taproot policy key signs BIP-340,
    // which the SoftHSM ECDSA key above does not; Core signs for it here), AND 1 of o6, o7;
    // recovery by o5 after 144 blocks.
    let d_tr = Template::TaprootPolicyWithRecovery {
        policy_key: tk(8),
        k: 1,
        officers: vec![tk(6), tk(7)],
        r: 1,
        recovery: vec![tk(5)],
        older: 144,
    }
    .build(NET)
    .unwrap();
    let birthday = u32::try_from(node.height().unwrap()).unwrap();
    for (name, d) in [("wsh", &d_wsh), ("taproot", &d_tr)] {
        svc.spend
            .vaults
            .create(VaultConfig::new(name, d.clone(), birthday).unwrap(), "test")
            .await
            .unwrap();
    }
    let mut faucet = Faucet::new(&node, 6);
    for (name, sat) in [
        ("wsh", 1_0000_0000u64),
        ("wsh", 2_0000_0000),
        ("taproot", 5_0000_0000),
        ("taproot", 6_0000_0000),
    ] {
        let addr = svc.spend.vaults.next_address(name).await.unwrap().address;
        faucet.pay(&node, &addr, Amount::from_sat(sat));
    }
    node.mine_blocks(1, &node.new_address()).unwrap();
    let cfg = node_config(&node);

    // --- 1. wsh(sortedmulti(2, officer, officer, HSM)) through the `treasury` binary.
    let (ok, out, err) = cli(&[
        "reserves",
        "prove",
        "--vault",
        "wsh",
        "--id",
        "por-wsh",
        "--message",
        "Q4 2026 attestation",
    ]);
    assert!(ok, "{err}");
    let psbt127 = Psbt::from_str(out.lines().nth(1).unwrap()).unwrap();
    assert!(err.contains("bip-322 form: unsigned"), "{err}");
    let (ok, out, err) = cli(&["reserves", "psbt", "por-wsh", "--form", "bip322"]);
    assert!(ok, "{err}");
    let psbt322 = Psbt::from_str(out.trim()).unwrap();
    let stored = svc.load("por-wsh").await.unwrap();
    let form = stored.bip322.clone().unwrap();
    assert_eq!(form.challenge_vault, "wsh");
    // The challenge: the vault's first receive address.
    let vault = svc.spend.vaults.vaults.load("wsh").await.unwrap();
    assert_eq!(
        form.challenge,
        Challenge::first_receive(&vault).script_pubkey()
    );
    assert_eq!(stored.form_of(&psbt127).unwrap(), ProofForm::Bip127);
    assert_eq!(stored.form_of(&psbt322).unwrap(), ProofForm::Bip322);
    // Exactly the same UTXOs as the BIP-127 proof, in the same order.
    let outs = |p: &Psbt| -> Vec<String> {
        p.unsigned_tx
            .input
            .iter()
            .skip(1)
            .map(|i| i.previous_output.to_string())
            .collect()
    };
    assert_eq!(outs(&psbt322), outs(&psbt127));
    assert_eq!(outs(&psbt322).len(), 2);
    // Core reads the to_sign PSBT: input 0 spends to_spend:0, one OP_RETURN output of 0, the
    // message in the proprietary field, no fee field it could object to.
    let decoded = rpc(&node, "decodepsbt", &[json!(psbt322.to_string())]);
    let to_spend_txid = to_spend(stored.message.as_bytes(), &form.challenge).compute_txid();
    assert_eq!(
        decoded["tx"]["vin"][0]["txid"].as_str().unwrap(),
        to_spend_txid.to_string()
    );
    assert_eq!(decoded["tx"]["vin"][0]["vout"], json!(0));
    assert_eq!(decoded["tx"]["vout"].as_array().unwrap().len(), 1);
    assert_eq!(decoded["tx"]["vout"][0]["value"], json!(0.0));
    assert_eq!(
        decoded["tx"]["vout"][0]["scriptPubKey"]["asm"]
            .as_str()
            .unwrap(),
        "OP_RETURN"
    );
    let message_field = decoded["proprietary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["identifier"] == hex::encode(b"strategic-reserve/bip322"))
        .unwrap();
    assert_eq!(
        message_field["value"].as_str().unwrap(),
        hex::encode(&stored.message)
    );
    assert_eq!(
        decoded["inputs"][0]["witness_utxo"]["scriptPubKey"]["hex"]
            .as_str()
            .unwrap(),
        form.challenge.to_hex_string()
    );

    // One officer signs both forms through Core; the binary tells them apart.
    let submit = |psbt: &Psbt, name: &str, by: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, psbt.to_string()).unwrap();
        cli(&[
            "reserves",
            "submit-psbt",
            "por-wsh",
            "--psbt",
            file.to_str().unwrap(),
            "--by",
            by,
        ])
    };
    let signed127 = core_sign(&node, &psbt127, private_descriptors(&d_wsh, &[&o[0]]));
    let (ok, out, err) = submit(&signed127, "o0-127.psbt", "officer-0");
    assert!(ok, "{err}");
    assert!(out.contains("accepted 2 new signatures"), "{out}");
    assert!(out.contains("(bip127 form)"), "{out}");
    let signed322 = core_sign(&node, &psbt322, private_descriptors(&d_wsh, &[&o[0]]));
    // A PSBT of neither form is refused, naming why.
    let mut neither = signed322.clone();
    neither.unsigned_tx.input[0].previous_output = neither.unsigned_tx.input[1].previous_output;
    let (ok, _, err) = submit(&neither, "neither.psbt", "officer-0");
    assert!(!ok);
    assert!(err.contains("neither form"), "{err}");
    let (ok, out, err) = submit(&signed322, "o0-322.psbt", "officer-0");
    assert!(ok, "{err}");
    assert!(out.contains("accepted 3 new signatures"), "{out}");
    assert!(out.contains("(bip322 form)"), "{out}");
    assert_eq!(
        svc.load("por-wsh").await.unwrap().bip322.unwrap().state,
        Bip322State::Signing
    );
    // Without the proof_quorum's approvals the policy key signs neither form.
    let (ok, _, err) = cli(&["reserves", "sign-policy", "por-wsh"]);
    assert!(!ok);
    assert!(
        err.contains("0 of 3 approvals from group officers"),
        "{err}"
    );
    // With them, it signs both forms (input 0, the challenge, too in the BIP-322 form): one
    // set of approvals of the one subject covers both.
    approve_proof(&svc, "por-wsh").await;
    let (ok, _, err) = cli(&["reserves", "sign-policy", "por-wsh"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("signed inputs [1, 2] of proof") && err.contains("bip127 form"),
        "{err}"
    );
    assert!(
        err.contains("signed inputs [0, 1, 2] of proof") && err.contains("bip322 form"),
        "{err}"
    );
    let bdir = dir.path().join("bundle-wsh");
    let (ok, out, err) = cli(&[
        "reserves",
        "bundle",
        "por-wsh",
        "--out",
        bdir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote the bundle"), "{out}");
    for f in [BIP322_FULL_PATH, BIP322_JSON_PATH] {
        assert!(bdir.join(f).is_file(), "{f} is missing");
    }
    let manifest = std::fs::read_to_string(bdir.join("manifest.json")).unwrap();
    assert!(manifest.contains(BIP322_FULL_PATH), "{manifest}");
    assert!(manifest.contains(BIP322_JSON_PATH), "{manifest}");
    let (ok, out, err) = cli(&[
        "audit",
        "reserves",
        bdir.to_str().unwrap(),
        "--bitcoind-url",
        &node.rpc_url(),
        "--rpc-cookie",
        node.cookie_file().to_str().unwrap(),
        "--ledger-key",
        &vk.to_string(),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("bip-127 form:   OK"), "{out}");
    assert!(out.contains("bip-322 form:   OK"), "{out}");
    assert!(out.contains("verdict:        OK"), "{out}");
    let wsh = Bundle::read_from(&bdir).unwrap();
    let a = audit(&node, &wsh, &vk);
    assert!(a.verdict(), "{:?}", a.reasons());
    let b = a.bip322.as_ref().unwrap();
    assert_eq!(b.proven, Amount::from_sat(3_0000_0000));
    let doc = bip322_doc(&wsh);
    assert_eq!(doc.message, stored.message);
    assert_eq!(doc.to_spend_txid, to_spend_txid.to_string());
    assert_eq!(doc.challenge_address, form.challenge_address);
    // Core agrees the final to_sign can never be broadcast.
    let final322 = bip322_tx(&wsh);
    let test = rpc(
        &node,
        "testmempoolaccept",
        &[json!([
            bdk_wallet::bitcoin::consensus::encode::serialize_hex(&final322)
        ])],
    );
    assert_eq!(test[0]["allowed"], json!(false), "{test}");

    // --- 2. tr(NUMS, {pk(o8) AND 1 of o6, o7; recovery}) through the service; the BIP-322 form
    // half-signed first.
    let sign_src = CheckpointSource::Sign {
        origin: ORIGIN,
        actor: "ledger",
        signer: &ledger_signer,
    };
    let req = ProveRequest {
        id: Some("por-tr".into()),
        vaults: vec!["taproot".into()],
        statement: String::new(),
        actor: "auditor-liaison".into(),
    };
    let p = svc.prove(&req, &cfg, sign_src, now + 1).await.unwrap();
    let f322 = p.bip322.clone().unwrap();
    // The proof quorum's approvals (the auditor checks them for any proof).
    approve_proof(&svc, "por-tr").await;
    let signed = core_sign(&node, &p.psbt, private_descriptors(&d_tr, &[&o[6], &o[8]]));
    assert_eq!(
        svc.submit_psbt("por-tr", signed, "officers", now + 2)
            .await
            .unwrap(),
        4
    );
    let half = core_sign(&node, &f322.psbt, private_descriptors(&d_tr, &[&o[6]]));
    let (form, added) = svc
        .submit_psbt_form("por-tr", half, "officer-6", now + 3)
        .await
        .unwrap();
    assert_eq!((form, added), (ProofForm::Bip322, 3));
    // A forged signature is refused on arrival and nothing is stored.
    let mut forged = core_sign(&node, &f322.psbt, private_descriptors(&d_tr, &[&o[8]]));
    for s in forged.inputs[1].tap_script_sigs.values_mut() {
        let mut bytes = s.signature.serialize();
        bytes[5] ^= 1;
        if let Ok(sig) = bdk_wallet::bitcoin::secp256k1::schnorr::Signature::from_slice(&bytes) {
            s.signature = sig;
        }
    }
    let err = svc
        .submit_psbt("por-tr", forged, "officer-8", now + 3)
        .await
        .unwrap_err();
    assert!(matches!(err, ReserveServiceError::Combine(_)), "{err}");
    // Half-signed, the BIP-322 form stops the finalization with its reason.
    let err = svc.finalize("por-tr", now + 4).await.unwrap_err();
    assert!(
        matches!(
            err,
            ReserveServiceError::Bip322(Bip322Error::Finalize { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("bip-322 form: input"), "{err}");
    let rest = core_sign(&node, &f322.psbt, private_descriptors(&d_tr, &[&o[8]]));
    assert_eq!(
        svc.submit_psbt("por-tr", rest, "officer-8", now + 5)
            .await
            .unwrap(),
        3
    );
    let opts = BundleOptions {
        checkpoint: sign_src,
        ledger_key: Some(&vk),
        liabilities_dir: None,
    };
    let tr = svc.bundle("por-tr", &opts, now + 6).await.unwrap();
    let stored_tr = svc.load("por-tr").await.unwrap();
    assert_eq!(
        stored_tr.bip322.as_ref().unwrap().state,
        Bip322State::Finalized
    );
    let a = audit(&node, &tr, &vk);
    assert!(a.verdict(), "{:?}", a.reasons());
    assert_eq!(a.proven(), Amount::from_sat(11_0000_0000));
    assert_eq!(
        a.bip322.as_ref().unwrap().proven,
        Amount::from_sat(11_0000_0000)
    );
    // The ledger has each step with its actor: request, signatures of both forms by each
    // signer, finalization naming the BIP-322 txid.
    let entries = ledger.entries().await.unwrap();
    let bodies: Vec<serde_json::Value> = entries
        .iter()
        .filter_map(|e| serde_json::from_slice(e.payload().as_bytes()).ok())
        .filter(|b: &serde_json::Value| b["proof_request"] == "por-tr")
        .collect();
    assert!(bodies
        .iter()
        .any(|b| b["form"] == "bip322" && b["by"] == "officer-6"));
    assert!(bodies
        .iter()
        .any(|b| b["form"] == "bip322" && b["by"] == "officer-8"));
    assert!(bodies.iter().any(|b| b["type"] == "reserve_proof_finalized"
        && b["bip322"]["txid"] == bip322_tx(&tr).compute_txid().to_string()));

    // --- Each fault of the BIP-322 form, with its reason (the BIP-127 form still holds).
    let tgood = bip322_tx(&tr);
    let message = ProofMessage::parse(&stored_tr.message).unwrap();
    let vt = svc.spend.vaults.vaults.load("taproot").await.unwrap();
    let utxos: Vec<_> = vt
        .utxos()
        .into_iter()
        .filter(|u| u.height.is_some())
        .collect();
    assert_eq!(utxos.len(), 2);
    let sign_funds = |msg: &ProofMessage, us: &[custody::vault::VaultUtxo]| -> Transaction {
        let built =
            build_proof_of_funds(&Challenge::first_receive(&vt), &[(&vt, us)], msg).unwrap();
        let signed = core_sign(
            &node,
            &built.psbt,
            private_descriptors(&d_tr, &[&o[6], &o[8]]),
        );
        bip322::finalize(signed, msg.encode().as_bytes(), &built.challenge).unwrap()
    };
    // A BIP-322 form over other UTXOs than the BIP-127 proof (validly signed, one coin only).
    let fewer = sign_funds(&message, &utxos[..1]);
    let kept = fewer.input[1].previous_output.to_string();
    let a = audit(
        &node,
        &with_bip322(&tr, &fewer, |d| d.utxos.retain(|u| u.outpoint == kept)),
        &vk,
    );
    only_bip322_fails(&a, "other utxos", |p| {
        matches!(p, Bip322Problem::OtherUtxos(_))
    });
    // A changed message (validly signed over it).
    let changed = message.clone().with_statement("another statement").unwrap();
    let other = sign_funds(&changed, &utxos);
    let a = audit(
        &node,
        &with_bip322(&tr, &other, |d| {
            d.message = changed.encode();
            d.to_spend_txid = to_spend(changed.encode().as_bytes(), &f322.challenge)
                .compute_txid()
                .to_string();
        }),
        &vk,
    );
    only_bip322_fails(&a, "changed message", |p| {
        matches!(p, Bip322Problem::OtherMessage)
    });
    // The BIP-127 message kept in the rendering but the other message's to_sign: the
    // signatures are over another to_spend.
    let a = audit(&node, &with_bip322(&tr, &other, |_| {}), &vk);
    only_bip322_fails(&a, "to_sign of another message", |p| {
        matches!(p, Bip322Problem::Verify(Bip322Error::NotToSpend { .. }))
    });
    // A forged taproot signature in to_sign.
    let mut tx = tgood.clone();
    let mut w: Vec<Vec<u8>> = tx.input[1].witness.iter().map(<[u8]>::to_vec).collect();
    let sig = w
        .iter()
        .position(|e| e.len() == 64 || e.len() == 65)
        .unwrap();
    w[sig][10] ^= 1;
    tx.input[1].witness = Witness::from_slice(&w);
    let a = audit(&node, &with_bip322(&tr, &tx, |_| {}), &vk);
    only_bip322_fails(&a, "forged taproot witness", |p| {
        matches!(
            p,
            Bip322Problem::Verify(Bip322Error::Script { input: 1, .. })
        )
    });
    // A truncated taproot witness in to_sign.
    let mut tx = tgood.clone();
    let mut w: Vec<Vec<u8>> = tx.input[2].witness.iter().map(<[u8]>::to_vec).collect();
    w.remove(0);
    tx.input[2].witness = Witness::from_slice(&w);
    let a = audit(&node, &with_bip322(&tr, &tx, |_| {}), &vk);
    only_bip322_fails(&a, "truncated taproot witness", |p| {
        matches!(
            p,
            Bip322Problem::Verify(Bip322Error::Script { input: 2, .. })
        )
    });
    // A to_sign with an extra output.
    let mut tx = tgood.clone();
    tx.output.push(TxOut {
        value: Amount::ZERO,
        script_pubkey: ScriptBuf::new_op_return([1u8; 4]),
    });
    let a = audit(&node, &with_bip322(&tr, &tx, |_| {}), &vk);
    only_bip322_fails(&a, "extra output", |p| {
        matches!(p, Bip322Problem::Verify(Bip322Error::OutputCount(2)))
    });
    // The form's files dropped from a bundle whose block.json lists it.
    let mut files = tr.files().clone();
    files.remove(BIP322_FULL_PATH);
    files.remove(BIP322_JSON_PATH);
    let a = audit(&node, &Bundle::seal(files).unwrap(), &vk);
    only_bip322_fails(&a, "dropped form", |p| {
        matches!(p, Bip322Problem::Missing(_))
    });
    // The untouched bundles still audit OK.
    assert!(audit(&node, &tr, &vk).verdict());
}
