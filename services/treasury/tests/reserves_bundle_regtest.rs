//! Proofs of reserves through the whole flow, on the real parts (a Bitcoin Core regtest node,
//! SQLite, the HSM policy key in a SoftHSM2 token): prove → the policy's proof quorum (three
//! officers) approves the proof subject (`treasury officer approve`, `treasury reserves
//! approve`) → officers sign (`treasury officer sign` with a keystore, or Core's
//! `descriptorprocesspsbt`) → the HSM policy key (where the vault has one; it refuses too few
//! approvals and approvals of another proof) → bundle → audit against the node. One proof binds
//! a ledger checkpoint signed by the SoftHSM2 checkpoint key (`--hsm-key-label`), and its
//! audit checks that signature. Three vaults: `wsh(sortedmulti)` with the HSM key (all through the
//! `treasury` binary), the policy key plus officers with a timelocked recovery path, and a
//! taproot policy-key vault. Then each way a bundle can be wrong, each failing the audit with
//! its own reason: a changed message, a commitment input that does not match, an extra
//! output, a non-zero fee, a forged and a truncated taproot witness, a UTXO spent before H, a
//! UTXO confirmed after H, a UTXO outside the declared descriptors, the wrong network,
//! liabilities above reserves, an altered sum in a liabilities tree node, a damaged file. The
//! policy signer refuses a "proof" that could be broadcast, and Core refuses the real one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{
    hsm_policy_key, ledger_key_file, node_config, officer, private_descriptors, rpc, Faucet,
    Officer, NET,
};
use std::process::Command;
use std::str::FromStr;

use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::{Amount, BlockHash, Network, OutPoint, Transaction, TxOut};
use custody::ledger::{KeyFileSigner, VerifierKey};
use custody::liabilities::{Account, AccountId, LiabilitiesTree};
use custody::reserves::file::{FinalProof, OutputMeta, ProofFile};
use custody::reserves::{build_proof, finalize_proof, ProofMessage, ReserveError};
use custody::vault::{Template, TemplateKey, VaultConfig, VaultDescriptor, VaultUtxo};
use hsm::policy_signer::PolicySignerError;
use hsm::{KdfParams, Pkcs11Config, Pkcs11Pin, Pkcs11Signer, SoftwareKeystore};
use policies::Approval;
use regtest::{node_or_skip, RegtestNode};
use serde_json::{json, Value};
use treasury::audit::bundle::{audit_bundle, BundleAudit};
use treasury::audit::problem::BundleProblem;
use treasury::audit::reserves::{ReserveProblem, SpendSearch, UtxoProblem};
use treasury::files::bundle::Bundle;
use treasury::service::reserves::{
    BundleOptions, CheckpointSource, ProofApprovals, ProveRequest, ReserveService,
    ReserveServiceError,
};
use treasury::service::spend::SpendService;
use treasury::service::vaults::VaultService;
use treasury::store::LedgerStore;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
const PIN: &str = "3141";
const ORIGIN: &str = "reserve.example/ledger";
const GAP: u32 = 40;
const SECRET: [u8; 32] = [7; 32];
const PASS: &str = "correct horse battery staple";

/// The example policy's approval key of `person` (hex).
fn example_key(person: &str) -> String {
    let needle = format!("person = \"{person}\", pubkey = \"");
    let start = EXAMPLE.find(&needle).unwrap() + needle.len();
    EXAMPLE[start..start + 64].to_owned()
}

/// The approval of proof `id` by the officer holding `ks`, over the subject the service
/// derives (what `treasury officer approve` signs).
async fn proof_approval(
    svc: &ReserveService,
    id: &str,
    who: &str,
    ks: &SoftwareKeystore,
    now: i64,
) -> Approval {
    let doc = svc.proof_subject(id, now).await.unwrap();
    let subject = doc.check().unwrap().clone();
    ks.with_approval_secret(|sk| subject.sign(who, sk)).unwrap()
}

/// Every officer of `officers` approves proof `id`; returns where the approvals stand.
async fn approve_proof(
    svc: &ReserveService,
    id: &str,
    officers: &[(&str, SoftwareKeystore, std::path::PathBuf)],
    now: i64,
) -> ProofApprovals {
    let mut last = None;
    for (who, ks, _) in officers {
        let a = proof_approval(svc, id, who, ks, now).await;
        last = Some(svc.add_approval(id, a, who, now).await.unwrap());
    }
    last.unwrap()
}

fn audit(node: &RegtestNode, b: &Bundle, key: &VerifierKey) -> BundleAudit {
    let client = node.new_client().unwrap();
    audit_bundle(b, &client, Some(key), GAP, SpendSearch::DescriptorActivity).unwrap()
}

fn proof_of(b: &Bundle) -> ProofFile {
    ProofFile::decode(b.get("proof.bin").unwrap()).unwrap()
}

/// The bundle with `f` as its proof file (both forms), resealed: what an attacker who
/// recomputes the manifest would hand over.
fn with_proof(b: &Bundle, f: &ProofFile) -> Bundle {
    let mut files = b.files().clone();
    files.insert("proof.bin".into(), f.encode());
    files.insert(
        "proof.json".into(),
        format!("{}\n", f.to_json_string().unwrap()).into_bytes(),
    );
    Bundle::seal(files).unwrap()
}

fn with_file(b: &Bundle, path: &str, bytes: Vec<u8>) -> Bundle {
    let mut files = b.files().clone();
    files.insert(path.into(), bytes);
    Bundle::seal(files).unwrap()
}

/// The same proof file with its one proof transaction replaced.
fn with_tx(f: &ProofFile, tx: Transaction) -> ProofFile {
    let metas = f.final_proofs()[0].output_metadata().to_vec();
    ProofFile::new(
        f.network(),
        f.message(),
        f.block_hash(),
        vec![FinalProof::new(tx, metas).unwrap()],
    )
    .unwrap()
}

fn proof_errors(a: &BundleAudit) -> Vec<ReserveError> {
    a.reserves
        .as_ref()
        .unwrap()
        .problems
        .iter()
        .filter_map(|p| match p {
            ReserveProblem::Proof { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect()
}

fn utxo_problems(a: &BundleAudit) -> Vec<UtxoProblem> {
    a.reserves
        .as_ref()
        .unwrap()
        .utxos
        .iter()
        .flat_map(|u| u.problems.clone())
        .collect()
}

fn fails(a: &BundleAudit, what: &str) {
    assert!(!a.verdict(), "{what}: the audit should fail");
    assert_eq!(a.proven(), Amount::ZERO, "{what}");
    assert!(!a.reasons().is_empty(), "{what}");
    assert!(a.render().contains("verdict:        FAILED"), "{what}");
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

fn block_at(node: &RegtestNode, height: u32) -> BlockHash {
    BlockHash::from_str(
        rpc(node, "getblockhash", &[json!(height)])
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

/// A proof file over `utxos` of `vault` for `message`, signed by `signers` through Core.
fn signed_file(
    node: &RegtestNode,
    vault: &custody::vault::Vault,
    d: &VaultDescriptor,
    utxos: &[VaultUtxo],
    message: &ProofMessage,
    signers: &[&Officer],
) -> ProofFile {
    let built = build_proof(&[(vault, utxos)], message).unwrap();
    let signed = core_sign(node, &built.psbt, private_descriptors(d, signers));
    let tx = finalize_proof(signed, message.encode().as_bytes()).unwrap();
    let metas = utxos
        .iter()
        .map(|u| OutputMeta {
            outpoint: u.outpoint,
            block_hash: block_at(node, u.height.unwrap()),
        })
        .collect();
    ProofFile::new(
        NET,
        &message.encode(),
        message.block_hash(),
        vec![FinalProof::new(tx, metas).unwrap()],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_of_three_vaults_bundle_and_audit_and_every_fault_is_named() {
    let Some(node) = node_or_skip("reserves_bundle_regtest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Before the first C_Initialize of this process (the only test of this binary).
    let Some((conf, policy_key)) = hsm_policy_key(dir.path(), "reserves_bundle_regtest", PIN)
    else {
        return;
    };
    let hsm_cfg = || Pkcs11Config::new(MODULE, "reserve", "policy-key", Pkcs11Pin::new(PIN));

    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let (key_file, ledger_signer, vk) = ledger_key_file(dir.path(), &SECRET, ORIGIN);
    // The officers of the policy's proof quorum hold keystores (approval key and account key):
    // their approval keys replace the example's, and alice's account key is in the wsh vault.
    let account = bdk_wallet::bitcoin::bip32::DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let mut policy_text = EXAMPLE.to_owned();
    let mut officers: Vec<(&str, SoftwareKeystore, std::path::PathBuf)> = Vec::new();
    for who in ["alice", "bob", "carol"] {
        let ks = SoftwareKeystore::generate(
            who,
            bdk_wallet::bitcoin::NetworkKind::Test,
            account.clone(),
        )
        .unwrap();
        let file = dir.path().join(format!("{who}.keystore"));
        ks.save(&file, PASS, KdfParams::insecure_for_tests())
            .unwrap();
        policy_text = policy_text.replace(
            &example_key(who),
            &ks.approval_public_key().unwrap().to_string(),
        );
        officers.push((who, ks, file));
    }
    let cli_with = |args: &[&str], ledger_key_file: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_treasury"));
        cmd.args(args)
            .env("TREASURY_DB", &db)
            .env("TREASURY_RPC_URL", node.rpc_url())
            .env("TREASURY_RPC_COOKIE", node.cookie_file())
            .env("TREASURY_KEYSTORE_PASSPHRASE", PASS);
        if ledger_key_file {
            cmd.env("TREASURY_LEDGER_KEY_FILE", &key_file);
        }
        let out = cmd
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
    let cli = |args: &[&str]| cli_with(args, true);

    // The three vaults, funded from outside (two coins each), and the example policy.
    let ledger = LedgerStore::open(&db).await.unwrap();
    let svc = ReserveService::new(SpendService::new(VaultService::new(ledger.clone())));
    let now = treasury::clock::now_ms();
    svc.spend
        .governance
        .init(&policy_text, "admins", now)
        .await
        .unwrap();
    let o: Vec<Officer> = (101..110).map(officer).collect();
    let tk = |i: usize| TemplateKey::parse(&o[i].public).unwrap();
    let alice_key = TemplateKey::parse(&officers[0].1.descriptor_key()).unwrap();
    // k = every key (alice, o1 and the HSM policy key): the policy key signs every spend.
    let d_wsh = Template::SortedMulti {
        k: 3,
        officers: vec![alice_key, tk(1)],
        policy_key: policy_key.clone(),
    }
    .build(NET)
    .unwrap();
    let d_rec = Template::PolicyWithRecovery {
        policy_key,
        k: 2,
        officers: vec![tk(2), tk(3), tk(4)],
        r: 2,
        recovery: vec![tk(5), tk(6)],
        older: 10,
    }
    .build(NET)
    .unwrap();
    // The taproot vault: o8 stands in for the policy key (a taproot policy key signs BIP-340,
    // which the SoftHSM ECDSA key does not; Core signs for it here) AND 1 of o6, o7; recovery
    // by o0 after 144 blocks.
    let d_tr = Template::TaprootPolicyWithRecovery {
        policy_key: tk(8),
        k: 1,
        officers: vec![tk(6), tk(7)],
        r: 1,
        recovery: vec![tk(0)],
        older: 144,
    }
    .build(NET)
    .unwrap();
    let birthday = u32::try_from(node.height().unwrap()).unwrap();
    for (name, d) in [("wsh", &d_wsh), ("recovery", &d_rec), ("taproot", &d_tr)] {
        svc.spend
            .vaults
            .create(VaultConfig::new(name, d.clone(), birthday).unwrap(), "test")
            .await
            .unwrap();
    }
    let mut faucet = Faucet::new(&node, 10);
    for (name, sat) in [
        ("wsh", 1_0000_0000u64),
        ("wsh", 2_0000_0000),
        ("recovery", 3_0000_0000),
        ("recovery", 4_0000_0000),
        ("taproot", 5_0000_0000),
        ("taproot", 6_0000_0000),
    ] {
        let addr = svc.spend.vaults.next_address(name).await.unwrap().address;
        faucet.pay(&node, &addr, Amount::from_sat(sat));
    }
    node.mine_blocks(1, &node.new_address()).unwrap();
    let cfg = node_config(&node);

    // A liabilities root in the ledger (1.5 BTC over three accounts), its files on disk.
    let accounts: Vec<Account> = [
        ("agency-a", 5000_0000u64),
        ("agency-b", 7000_0000),
        ("program-c", 3000_0000),
    ]
    .iter()
    .enumerate()
    .map(|(i, (id, sat))| {
        Account::new(
            AccountId::new(*id).unwrap(),
            Amount::from_sat(*sat),
            [u8::try_from(i).unwrap() + 1; 32],
        )
        .unwrap()
    })
    .collect();
    let tree = LiabilitiesTree::build(accounts).unwrap();
    let root = tree.root();
    let ldir = dir.path().join("liabilities");
    std::fs::create_dir_all(ldir.join("proofs")).unwrap();
    std::fs::write(ldir.join("root.json"), root.to_json()).unwrap();
    for i in 0..tree.len() as u64 {
        let p = tree.proof(i).unwrap();
        std::fs::write(
            ldir.join("proofs").join(format!("{}.json", p.account_id)),
            p.to_json(),
        )
        .unwrap();
    }
    ledger
        .append(root.ledger_draft("liabilities", now).unwrap())
        .await
        .unwrap();

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
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("por-wsh"));
    let psbt = Psbt::from_str(lines.next().unwrap()).unwrap();
    assert!(err.contains("utxos: 2"), "{err}");
    // Core sees the BIP-127 field and the zero fee.
    let decoded = rpc(&node, "decodepsbt", &[json!(psbt.to_string())]);
    let stored = svc.load("por-wsh").await.unwrap();
    assert_eq!(
        decoded["inputs"][0]["unknown"]["09"].as_str().unwrap(),
        hex::encode(&stored.message)
    );
    assert!(stored
        .message
        .contains("\nstatement: Q4 2026 attestation\n"));
    assert_eq!(stored.total, Amount::from_sat(3_0000_0000));
    // The proof quorum approves, offline: the subject file, reviewed and signed with each
    // officer's keystore through the binary, submitted with `reserves approve`.
    let subject_file = dir.path().join("por-wsh-subject.json");
    let (ok, out, err) = cli(&["reserves", "subject", "por-wsh"]);
    assert!(ok, "{err}");
    std::fs::write(&subject_file, &out).unwrap();
    let (ok, out, err) = cli(&["officer", "review", subject_file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Reserve proof request por-wsh on regtest: it proves 300000000 sat"),
        "{out}"
    );
    assert!(out.contains("3 approval(s) of group officers"), "{out}");
    assert!(out.contains("| statement: Q4 2026 attestation"), "{out}");
    // The policy key refuses before the quorum: no approvals at all.
    let (ok, _, err) = cli(&["reserves", "sign-policy", "por-wsh"]);
    assert!(!ok);
    assert!(
        err.contains("0 of 3 approvals from group officers"),
        "{err}"
    );
    for (i, (who, _, ks_file)) in officers.iter().enumerate() {
        let (ok, approval, err) = cli(&[
            "officer",
            "approve",
            subject_file.to_str().unwrap(),
            "--key",
            ks_file.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let afile = dir.path().join(format!("por-wsh-approval-{who}.json"));
        std::fs::write(&afile, &approval).unwrap();
        let (ok, out, err) = cli(&[
            "reserves",
            "approve",
            "por-wsh",
            "--approval",
            afile.to_str().unwrap(),
            "--actor",
            who,
        ]);
        assert!(ok, "{err}");
        assert!(
            out.contains(&format!("{} of 3 approvals from group officers", i + 1)),
            "{out}"
        );
        if i == 1 {
            // Two of three: the policy key still refuses, naming what is missing.
            let (ok, _, err) = cli(&["reserves", "sign-policy", "por-wsh"]);
            assert!(!ok);
            assert!(
                err.contains("2 of 3 approvals from group officers"),
                "{err}"
            );
        }
        if i == 2 {
            assert!(out.contains("the reserve-proof rule is met"), "{out}");
            // The same approval twice is refused and changes nothing.
            let (ok, _, err) = cli(&[
                "reserves",
                "approve",
                "por-wsh",
                "--approval",
                afile.to_str().unwrap(),
            ]);
            assert!(!ok);
            assert!(err.contains("already approved"), "{err}");
        }
    }
    // A person of the policy outside the proof quorum (the CFO, the example's test key) is
    // refused on arrival.
    let doc = svc.proof_subject("por-wsh", now).await.unwrap();
    let frank = doc.check().unwrap().sign(
        "frank",
        &bdk_wallet::bitcoin::secp256k1::SecretKey::from_slice(&[6; 32]).unwrap(),
    );
    let err = svc
        .add_approval("por-wsh", frank, "frank", now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReserveServiceError::NotInProofQuorum { .. }),
        "{err}"
    );
    assert_eq!(svc.stored_approvals("por-wsh").await.unwrap().len(), 3);
    // Alice signs the proof PSBT with her keystore through `treasury officer sign` (not
    // Core), then the HSM policy key signs through the policy signer.
    let pfile = dir.path().join("por-wsh.psbt");
    let (ok, out, err) = cli(&["reserves", "psbt", "por-wsh"]);
    assert!(ok, "{err}");
    std::fs::write(&pfile, out.trim()).unwrap();
    let (ok, signed, err) = cli(&[
        "officer",
        "sign",
        "--key",
        officers[0].2.to_str().unwrap(),
        pfile.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("signed inputs [1, 2]"), "{err}");
    let sfile = dir.path().join("por-wsh-alice.psbt");
    std::fs::write(&sfile, signed.trim()).unwrap();
    let (ok, out, err) = cli(&[
        "reserves",
        "submit-psbt",
        "por-wsh",
        "--psbt",
        sfile.to_str().unwrap(),
        "--by",
        "alice",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("accepted 2 new signatures"), "{out}");
    // The second officer (o1) signs through Core: the vault needs every key.
    let unsigned = Psbt::from_str(std::fs::read_to_string(&pfile).unwrap().trim()).unwrap();
    let signed1 = core_sign(&node, &unsigned, private_descriptors(&d_wsh, &[&o[1]]));
    assert_eq!(
        svc.submit_psbt("por-wsh", signed1, "officer-1", now)
            .await
            .unwrap(),
        2
    );
    let (ok, _, err) = cli(&["reserves", "sign-policy", "por-wsh"]);
    assert!(ok, "{err}");
    assert!(err.contains("signed inputs [1, 2]"), "{err}");
    let bdir = dir.path().join("bundle-wsh");
    let (ok, out, err) = cli(&[
        "reserves",
        "bundle",
        "por-wsh",
        "--out",
        bdir.to_str().unwrap(),
        "--liabilities",
        ldir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote the bundle"), "{out}");
    for f in [
        "manifest.json",
        "descriptors.json",
        "proof.bin",
        "proof.json",
        "block.json",
        "ledger/checkpoint.txt",
        "ledger/message-checkpoint.txt",
        "ledger/consistency.json",
        "ledger/entries.jsonl",
        "ledger/verifier-key.txt",
        "liabilities/root.json",
        "liabilities/proofs/agency-a.json",
    ] {
        assert!(bdir.join(f).is_file(), "{f} is missing");
    }
    let descriptors = std::fs::read_to_string(bdir.join("descriptors.json")).unwrap();
    assert!(
        descriptors.contains(&officers[0].1.descriptor_key()),
        "key origins: {descriptors}"
    );
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
    assert!(out.contains("verdict:        OK"), "{out}");
    assert!(out.contains("proven amount:  300000000 sat"), "{out}");
    assert!(
        out.contains("liabilities:    150000000 sat over 3 accounts"),
        "{out}"
    );
    assert!(out.contains("3 account proofs verified"), "{out}");
    let wsh = Bundle::read_from(&bdir).unwrap();
    let a = audit(&node, &wsh, &vk);
    assert!(a.verdict(), "{:?}", a.reasons());
    assert_eq!(a.proven(), Amount::from_sat(3_0000_0000));
    // The entries proven: request, three approvals, three signatures (the wsh vault is 3-of-3
    // with the policy key), finalization, and the liabilities root.
    assert_eq!(a.entries_included, 9);
    // The auditor's side of the reserve-proof rule: the bundle carries the policy the request
    // names, and the proven approval entries meet its proof quorum.
    assert_eq!(
        a.approvals,
        (
            vec!["alice".to_owned(), "bob".to_owned(), "carol".to_owned()],
            "officers".to_owned(),
            3
        )
    );
    assert!(
        out.contains("approvals:      alice, bob, carol of group officers (k = 3)"),
        "{out}"
    );
    assert_eq!(wsh.text("policy.toml"), Some(policy_text.as_str()));
    // Another policy in the bundle than the one the ledger names: refused.
    let a = audit(
        &node,
        &with_file(&wsh, "policy.toml", EXAMPLE.as_bytes().to_vec()),
        &vk,
    );
    assert!(!a.verdict());
    assert!(
        a.problems.iter().any(
            |p| matches!(p, BundleProblem::ProofQuorum(m) if m.contains("the request entry names"))
        ),
        "{:?}",
        a.reasons()
    );
    // An approval entry left out of the bundle: 2 of 3, refused.
    let entries = wsh.text("ledger/entries.jsonl").unwrap();
    let kept: String = {
        let mut dropped = false;
        entries
            .lines()
            .filter(|l| {
                let drop = !dropped && l.contains("\"kind\":\"approval\"");
                dropped |= drop;
                !drop
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert_ne!(kept, entries);
    let a = audit(
        &node,
        &with_file(&wsh, "ledger/entries.jsonl", kept.into_bytes()),
        &vk,
    );
    assert!(!a.verdict());
    assert!(
        a.problems.iter().any(|p| matches!(p, BundleProblem::ProofQuorum(m) if m.contains("2 of 3 approvals from group officers"))),
        "{:?}",
        a.reasons()
    );

    // A damaged copy (one byte of the proof changed, manifest not recomputed) fails, and the
    // binary exits non-zero with the report.
    let damaged = dir.path().join("bundle-damaged");
    let mut files = wsh.files().clone();
    files.get_mut("block.json").unwrap().push(b' ');
    Bundle::from_files(files).write_to(&damaged).unwrap();
    let (ok, out, err) = cli(&[
        "audit",
        "reserves",
        damaged.to_str().unwrap(),
        "--bitcoind-url",
        &node.rpc_url(),
        "--rpc-cookie",
        node.cookie_file().to_str().unwrap(),
        "--ledger-key",
        &vk.to_string(),
    ]);
    assert!(!ok);
    assert!(
        out.contains("manifest: block.json: sha-256 or length differs"),
        "{out}"
    );
    assert!(err.contains("does not verify"), "{err}");

    // --- 2. The policy key AND 2 of 3 officers, OR after 10 blocks 2 recovery keys.
    let sign_src = CheckpointSource::Sign {
        origin: ORIGIN,
        actor: "ledger",
        signer: &ledger_signer,
    };
    let req = |id: &str, vault: &str| ProveRequest {
        id: Some(id.into()),
        vaults: vec![vault.into()],
        statement: String::new(),
        actor: "auditor-liaison".into(),
    };
    // Without a ledger key the latest checkpoint is bound only if it is the last entry: the
    // sync of the recovery vault appends its deposits after it, so the request is refused.
    let err = svc
        .prove(
            &req("por-rec", "recovery"),
            &cfg,
            CheckpointSource::Latest,
            now + 1,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReserveServiceError::StaleCheckpoint { .. }),
        "{err}"
    );
    assert!(svc.load("por-rec").await.is_err());
    let p = svc
        .prove(&req("por-rec", "recovery"), &cfg, sign_src, now + 1)
        .await
        .unwrap();
    assert_eq!(p.total, Amount::from_sat(7_0000_0000));
    let signed = core_sign(&node, &p.psbt, private_descriptors(&d_rec, &[&o[2], &o[3]]));
    assert_eq!(
        svc.submit_psbt("por-rec", signed, "officers", now + 2)
            .await
            .unwrap(),
        4
    );
    // Without the policy key the proof does not finalize.
    let err = svc.finalize("por-rec", now + 3).await.unwrap_err();
    assert!(
        matches!(
            err,
            ReserveServiceError::Proof(ReserveError::Finalize { .. })
        ),
        "{err}"
    );
    let key = Pkcs11Signer::open(hsm_cfg()).unwrap();
    let mut signer = svc.policy_signer(key, NET, now + 3).await.unwrap();
    // Approvals of another proof (por-wsh's, replayed) and too few approvals are refused.
    let replay = svc.stored_approvals("por-wsh").await.unwrap()[0]
        .approval
        .clone();
    let err = svc
        .add_approval("por-rec", replay.clone(), "x", now + 3)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReserveServiceError::ApprovalRefused(_)),
        "{err}"
    );
    let a = proof_approval(&svc, "por-rec", "bob", &officers[1].1, now + 3).await;
    let st = svc
        .add_approval("por-rec", a, "bob", now + 3)
        .await
        .unwrap();
    assert_eq!((st.counted.len(), st.need, st.complete()), (1, 3, false));
    let err = svc
        .policy_sign("por-rec", &mut signer, now + 3)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReserveServiceError::Refused(PolicySignerError::ProofApprovalsMissing {
                have: 1,
                need: 3,
                ..
            })
        ),
        "{err}"
    );
    // The policy signer itself, handed por-wsh's approvals for this proof: none count.
    let wsh_approvals: Vec<Approval> = svc
        .stored_approvals("por-wsh")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.approval)
        .collect();
    let mut q = svc.load("por-rec").await.unwrap().signed;
    let before = q.clone();
    let err = signer
        .sign_proof(&mut q, "por-rec", &wsh_approvals, now + 3)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("0 of 3 approvals from group officers"),
        "{err}"
    );
    assert!(err.to_string().contains("replayed on request"), "{err}");
    assert_eq!(q, before);
    for (who, ks, _) in [&officers[0], &officers[2]] {
        let a = proof_approval(&svc, "por-rec", who, ks, now + 3).await;
        svc.add_approval("por-rec", a, who, now + 3).await.unwrap();
    }
    let rec_approvals: Vec<Approval> = svc
        .stored_approvals("por-rec")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.approval)
        .collect();
    assert_eq!(rec_approvals.len(), 3);
    // The policy signer refuses a "proof" that could be broadcast: a real outpoint in
    // position 0, a second output, a fee; the PSBT is left unsigned.
    let current = svc.load("por-rec").await.unwrap().signed;
    let mut real0 = current.clone();
    real0.unsigned_tx.input[0].previous_output = real0.unsigned_tx.input[1].previous_output;
    let mut two_outputs = current.clone();
    two_outputs.unsigned_tx.output[0].value -= Amount::from_sat(50_000);
    two_outputs.unsigned_tx.output.push(TxOut {
        value: Amount::from_sat(50_000),
        script_pubkey: node.new_address().script_pubkey(),
    });
    two_outputs.outputs.push(Default::default());
    let mut fee = current.clone();
    fee.unsigned_tx.output[0].value -= Amount::from_sat(1_000);
    for (mut bad, want) in [
        (real0, "not the commitment outpoint"),
        (two_outputs, "exactly one output"),
        (fee, "a proof pays no fee"),
    ] {
        let before = bad.clone();
        let err = signer
            .sign_proof(&mut bad, "por-rec", &rec_approvals, now + 3)
            .unwrap_err();
        assert!(matches!(err, PolicySignerError::NotAProof(_)), "{err}");
        assert!(err.to_string().contains(want), "{err}");
        assert_eq!(bad, before);
    }
    // The service refuses a PSBT of another transaction.
    let err = svc
        .submit_psbt("por-rec", fee_psbt(&current), "x", now + 3)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReserveServiceError::OtherTransaction { .. }),
        "{err}"
    );
    let sig = svc
        .policy_sign("por-rec", &mut signer, now + 4)
        .await
        .unwrap();
    assert_eq!(sig.inputs, vec![1, 2]);
    assert_eq!(sig.counted, vec!["alice", "bob", "carol"]);
    drop(signer);
    let opts = BundleOptions {
        checkpoint: sign_src,
        ledger_key: Some(&vk),
        liabilities_dir: None,
    };
    let rec = svc.bundle("por-rec", &opts, now + 5).await.unwrap();
    let a = audit(&node, &rec, &vk);
    assert!(a.verdict(), "{:?}", a.reasons());
    assert_eq!(a.proven(), Amount::from_sat(7_0000_0000));
    // The bundle also travels as one JSON document (the API's download).
    assert_eq!(Bundle::from_json(&rec.to_json()).unwrap(), rec);

    // --- 3. tr(NUMS, {pk(o8) AND 1 of o6, o7; recovery by o0}).
    let p = svc
        .prove(&req("por-tr", "taproot"), &cfg, sign_src, now + 6)
        .await
        .unwrap();
    // The policy key here is o8 (signed through Core); the auditor still checks the proof quorum.
    assert!(approve_proof(&svc, "por-tr", &officers, now + 6)
        .await
        .complete());
    let vt = svc.spend.vaults.vaults.load("taproot").await.unwrap();
    let signed = core_sign(&node, &p.psbt, private_descriptors(&d_tr, &[&o[6], &o[8]]));
    assert_eq!(
        svc.submit_psbt("por-tr", signed, "officers", now + 7)
            .await
            .unwrap(),
        4
    );
    let tr = svc.bundle("por-tr", &opts, now + 8).await.unwrap();
    let a = audit(&node, &tr, &vk);
    assert!(a.verdict(), "{:?}", a.reasons());
    assert_eq!(a.proven(), Amount::from_sat(11_0000_0000));
    // The latest checkpoint (the one that bundle signed) covers everything: a bundle without
    // the key binds it and audits the same.
    let latest = BundleOptions {
        checkpoint: CheckpointSource::Latest,
        ledger_key: Some(&vk),
        liabilities_dir: None,
    };
    let again = svc.bundle("por-tr", &latest, now + 8).await.unwrap();
    assert_eq!(
        again.get("ledger/checkpoint.txt"),
        tr.get("ledger/checkpoint.txt")
    );
    assert!(audit(&node, &again, &vk).verdict());
    // Core agrees the proof can never be broadcast.
    let final_tx = svc.load("por-tr").await.unwrap().final_tx.unwrap();
    let test = rpc(
        &node,
        "testmempoolaccept",
        &[json!([
            bdk_wallet::bitcoin::consensus::encode::serialize_hex(&final_tx)
        ])],
    );
    assert_eq!(test[0]["allowed"], json!(false), "{test}");

    // --- Each fault, with its reason.
    let good = proof_of(&wsh);
    // A changed message (the transaction commits to the old one).
    let changed = good.message().replace("Q4 2026", "Q3 2026");
    let f = ProofFile::new(
        NET,
        &changed,
        good.block_hash(),
        good.final_proofs().to_vec(),
    )
    .unwrap();
    let a = audit(&node, &with_proof(&wsh, &f), &vk);
    fails(&a, "changed message");
    assert!(
        proof_errors(&a)
            .iter()
            .any(|e| matches!(e, ReserveError::NotACommitment { .. })),
        "{:?}",
        a.reasons()
    );
    assert!(a
        .problems
        .iter()
        .any(|p| matches!(p, BundleProblem::MissingEntry(_))));
    // A commitment input that does not match (input 0 spends another outpoint).
    let mut tx = good.final_proofs()[0].proof_tx().clone();
    tx.input[0].previous_output = OutPoint {
        txid: custody::reserves::commitment_txid(b"another message"),
        vout: 0,
    };
    let a = audit(&node, &with_proof(&wsh, &with_tx(&good, tx)), &vk);
    fails(&a, "commitment input");
    assert!(
        proof_errors(&a)
            .iter()
            .any(|e| matches!(e, ReserveError::NotACommitment { .. })),
        "{:?}",
        a.reasons()
    );
    // An extra output.
    let mut tx = good.final_proofs()[0].proof_tx().clone();
    tx.output.push(TxOut {
        value: Amount::ZERO,
        script_pubkey: bdk_wallet::bitcoin::ScriptBuf::new_op_return([1u8; 4]),
    });
    let a = audit(&node, &with_proof(&wsh, &with_tx(&good, tx)), &vk);
    fails(&a, "extra output");
    assert_eq!(proof_errors(&a), vec![ReserveError::OutputCount(2)]);
    // A non-zero fee.
    let mut tx = good.final_proofs()[0].proof_tx().clone();
    tx.output[0].value -= Amount::from_sat(1);
    let a = audit(&node, &with_proof(&wsh, &with_tx(&good, tx)), &vk);
    fails(&a, "fee");
    assert!(
        matches!(proof_errors(&a).as_slice(), [ReserveError::Fee { .. }]),
        "{:?}",
        a.reasons()
    );
    // A forged and a truncated witness on a taproot input.
    let tgood = proof_of(&tr);
    let mut tx = tgood.final_proofs()[0].proof_tx().clone();
    let mut w: Vec<Vec<u8>> = tx.input[1].witness.iter().map(<[u8]>::to_vec).collect();
    let sig = w
        .iter()
        .position(|e| e.len() == 64 || e.len() == 65)
        .unwrap();
    w[sig][10] ^= 1;
    tx.input[1].witness = bdk_wallet::bitcoin::Witness::from_slice(&w);
    let a = audit(&node, &with_proof(&tr, &with_tx(&tgood, tx)), &vk);
    fails(&a, "forged taproot signature");
    assert!(
        matches!(
            proof_errors(&a).as_slice(),
            [ReserveError::Script { input: 1, .. }]
        ),
        "{:?}",
        a.reasons()
    );
    let mut tx = tgood.final_proofs()[0].proof_tx().clone();
    let mut w: Vec<Vec<u8>> = tx.input[2].witness.iter().map(<[u8]>::to_vec).collect();
    w.remove(0);
    tx.input[2].witness = bdk_wallet::bitcoin::Witness::from_slice(&w);
    let a = audit(&node, &with_proof(&tr, &with_tx(&tgood, tx)), &vk);
    fails(&a, "truncated taproot witness");
    assert!(
        matches!(
            proof_errors(&a).as_slice(),
            [ReserveError::Script { input: 2, .. }]
        ),
        "{:?}",
        a.reasons()
    );
    // The wrong network.
    let f = ProofFile::new(
        Network::Bitcoin,
        good.message(),
        good.block_hash(),
        good.final_proofs().to_vec(),
    )
    .unwrap();
    let a = audit(&node, &with_proof(&wsh, &f), &vk);
    fails(&a, "wrong network");
    assert!(
        a.reserves
            .as_ref()
            .unwrap()
            .problems
            .iter()
            .any(|p| matches!(
                p,
                ReserveProblem::WrongNetwork {
                    file: Network::Bitcoin,
                    ..
                }
            )),
        "{:?}",
        a.reasons()
    );
    // A UTXO outside the declared descriptors: the recovery vault's descriptors declared for
    // the wsh vault's proof.
    let rec_descriptors = rec.get("descriptors.json").unwrap().to_vec();
    let a = audit(
        &node,
        &with_file(&wsh, "descriptors.json", rec_descriptors),
        &vk,
    );
    fails(&a, "outside the descriptors");
    assert_eq!(
        utxo_problems(&a),
        vec![
            UtxoProblem::OutsideDescriptors,
            UtxoProblem::OutsideDescriptors
        ],
        "{:?}",
        a.reasons()
    );
    // An altered sum in a liabilities tree node.
    let text = wsh.text("liabilities/proofs/agency-a.json").unwrap();
    let mut v: Value = serde_json::from_str(text).unwrap();
    let s = v["path"][0]["sum_sat"].as_u64().unwrap();
    v["path"][0]["sum_sat"] = json!(s + 1);
    let a = audit(
        &node,
        &with_file(
            &wsh,
            "liabilities/proofs/agency-a.json",
            v.to_string().into_bytes(),
        ),
        &vk,
    );
    fails_liabilities(&a, "agency-a.json");
    // Another ledger key: both checkpoints fail.
    let other = VerifierKey::of_signer(
        ORIGIN.to_string(),
        &KeyFileSigner::from_secret_bytes(&[8; 32]).unwrap(),
    )
    .unwrap();
    let a = audit(&node, &wsh, &other);
    assert!(!a.verdict());
    assert!(
        a.problems.iter().any(|p| matches!(
            p,
            BundleProblem::Checkpoint {
                which: "message",
                ..
            }
        )),
        "{:?}",
        a.reasons()
    );

    // A UTXO confirmed after H: a new coin of the taproot vault in a proof claiming H.
    let addr = svc
        .spend
        .vaults
        .next_address("taproot")
        .await
        .unwrap()
        .address;
    faucet.pay(&node, &addr, Amount::from_sat(1_0000_0000));
    node.mine_blocks(1, &node.new_address()).unwrap();
    let (vt2, _) = svc.spend.vaults.sync("taproot", &cfg).await.unwrap();
    let all = vt2.utxos();
    assert_eq!(all.len(), 3);
    let tmsg = ProofMessage::parse(tgood.message()).unwrap();
    let late = signed_file(&node, &vt2, &d_tr, &all, &tmsg, &[&o[7], &o[8]]);
    let a = audit(&node, &with_proof(&tr, &late), &vk);
    fails(&a, "confirmed after h");
    assert_eq!(
        utxo_problems(&a),
        vec![UtxoProblem::CreatedAfterH {
            height: tmsg.height() + 1,
            h: tmsg.height()
        }],
        "{:?}",
        a.reasons()
    );

    // A UTXO spent before H: spend one of the proven taproot coins, then claim it at a later H.
    let coin = vt.utxos()[0].clone();
    let to = node.new_address();
    let spend = rpc(
        &node,
        "createpsbt",
        &[
            json!([{"txid": coin.outpoint.txid.to_string(), "vout": coin.outpoint.vout}]),
            json!([{ to.to_string(): (coin.value - Amount::from_sat(5_000)).to_btc() }]),
        ],
    );
    let public: Vec<String> = vec![d_tr.external_string(), d_tr.internal_string()];
    let spend = rpc(&node, "utxoupdatepsbt", &[spend, json!(public)]);
    let spend = rpc(
        &node,
        "descriptorprocesspsbt",
        &[spend, json!(private_descriptors(&d_tr, &[&o[7], &o[8]]))],
    );
    rpc(&node, "sendrawtransaction", &[spend["hex"].clone()]);
    node.mine_blocks(1, &node.new_address()).unwrap();
    let (h2_hash, h2) = node.tip().unwrap();
    let h2 = u32::try_from(h2).unwrap();
    let msg2 = ProofMessage::for_vaults(&[&vt], NET, h2, h2_hash, tmsg.checkpoint()).unwrap();
    let stale = signed_file(&node, &vt, &d_tr, &vt.utxos(), &msg2, &[&o[6], &o[8]]);
    let mut forged = with_proof(&tr, &stale);
    let mut block: Value = serde_json::from_slice(forged.get("block.json").unwrap()).unwrap();
    block["hash"] = json!(h2_hash.to_string());
    block["height"] = json!(h2);
    forged = with_file(&forged, "block.json", block.to_string().into_bytes());
    let a = audit(&node, &forged, &vk);
    fails(&a, "spent before h");
    assert_eq!(
        utxo_problems(&a),
        vec![UtxoProblem::SpentAtOrBeforeH {
            height: None,
            h: h2
        }],
        "{:?}",
        a.reasons()
    );
    // The original taproot proof at H still holds: the spend is above H.
    let a = audit(&node, &tr, &vk);
    assert!(a.verdict(), "{:?}", a.reasons());

    // Liabilities above reserves: a new root of 4 BTC, then a new bundle of the wsh proof
    // (3 BTC) carries it and fails.
    let big = LiabilitiesTree::build(vec![Account::new(
        AccountId::new("agency-z").unwrap(),
        Amount::from_sat(4_0000_0000),
        [9; 32],
    )
    .unwrap()])
    .unwrap()
    .root();
    ledger
        .append(big.ledger_draft("liabilities", now + 9).unwrap())
        .await
        .unwrap();
    let over = svc.bundle("por-wsh", &opts, now + 10).await.unwrap();
    let a = audit(&node, &over, &vk);
    assert!(!a.verdict());
    assert_eq!(
        a.problems,
        vec![BundleProblem::LiabilitiesExceedReserves {
            liabilities: Amount::from_sat(4_0000_0000),
            reserves: Amount::from_sat(3_0000_0000),
        }],
        "{:?}",
        a.reasons()
    );
    assert!(a.reserves.as_ref().unwrap().verdict());

    // The ledger still verifies with every step recorded.
    let report = ledger.verify(Some(&vk)).await.unwrap();
    assert!(report.checkpoints >= 4, "{report}");

    // --- 5. Last (its checkpoints are signed by another key than the ledger's so far): the
    // message binds a checkpoint signed by the SoftHSM2 ledger checkpoint key
    // (`--hsm-key-label`), and the audit checks that signature under the token key's verifier
    // key (and fails under another key).
    let (ok, out, err) = cli(&[
        "hsm",
        "init",
        "--key-label",
        "policy-key-ceremony",
        "--checkpoint-label",
        "ledger-checkpoint",
    ]);
    assert!(ok, "{err}");
    let ceremony: Value = serde_json::from_str(&out).unwrap();
    let hsm_vk_text = ceremony["checkpoint"]["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let hsm_vk = VerifierKey::parse(&hsm_vk_text).unwrap();
    let (ok, out, err) = cli_with(
        &[
            "reserves",
            "prove",
            "--vault",
            "wsh",
            "--vault",
            "recovery",
            "--id",
            "por-hsm",
            "--message",
            "token checkpoint",
            "--hsm-key-label",
            "ledger-checkpoint",
        ],
        false,
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().next(), Some("por-hsm"));
    let p = svc.load("por-hsm").await.unwrap();
    let note = p.message_checkpoint().unwrap();
    assert!(hsm_vk.verify(&note).is_ok(), "{note}");
    assert!(vk.verify(&note).is_err());
    // On the system clock, as the binary that requested it (the expiry is now + max age).
    let t = treasury::clock::now_ms();
    let st = approve_proof(&svc, "por-hsm", &officers, t).await;
    assert!(st.complete(), "{st:?}");
    // Both vaults (10 BTC: above the 4 BTC of liabilities recorded last), signed through Core.
    assert_eq!(p.total, Amount::from_sat(10_0000_0000));
    let mut private = private_descriptors(&d_wsh, &[&o[1]]);
    private.extend(private_descriptors(&d_rec, &[&o[2], &o[3]]));
    let signed = core_sign(&node, &p.psbt, private);
    assert_eq!(
        svc.submit_psbt("por-hsm", signed, "officers", now + 9)
            .await
            .unwrap(),
        6
    );
    // Alice signs the wsh inputs with her keystore: the wsh vault needs every key.
    let mut by_alice = p.psbt.clone();
    let report = hsm::Signer::sign_psbt(&officers[0].1, &mut by_alice).unwrap();
    assert!(!report.is_empty());
    assert_eq!(
        svc.submit_psbt("por-hsm", by_alice, "alice", now + 9)
            .await
            .unwrap(),
        report.signed.len()
    );
    let (ok, _, err) = cli(&["reserves", "sign-policy", "por-hsm"]);
    assert!(ok, "{err}");
    let hdir = dir.path().join("bundle-hsm");
    let (ok, _, err) = cli_with(
        &[
            "reserves",
            "bundle",
            "por-hsm",
            "--out",
            hdir.to_str().unwrap(),
            "--hsm-key-label",
            "ledger-checkpoint",
        ],
        false,
    );
    assert!(ok, "{err}");
    let audit_cli = |key: &str| {
        cli(&[
            "audit",
            "reserves",
            hdir.to_str().unwrap(),
            "--bitcoind-url",
            &node.rpc_url(),
            "--rpc-cookie",
            node.cookie_file().to_str().unwrap(),
            "--ledger-key",
            key,
        ])
    };
    let (ok, out, err) = audit_cli(&hsm_vk_text);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("verdict:        OK"), "{out}");
    assert!(out.contains("proven amount:  1000000000 sat"), "{out}");
    assert!(
        out.contains("approvals:      alice, bob, carol of group officers"),
        "{out}"
    );
    let (ok, out, _) = audit_cli(&vk.to_string());
    assert!(!ok, "{out}");
    assert!(out.contains("verdict:        FAILED"), "{out}");
    // The ledger's chain still verifies (checkpoints now under two keys: checked without one).
    assert!(ledger.verify(None).await.is_ok());
}

fn fails_liabilities(a: &BundleAudit, file: &str) {
    assert!(!a.verdict());
    assert!(
        a.problems
            .iter()
            .any(|p| matches!(p, BundleProblem::Liabilities(m) if m.contains(file))),
        "{:?}",
        a.reasons()
    );
    // The reserves themselves still hold: only the liabilities part fails.
    assert!(a.reserves.as_ref().unwrap().verdict());
}

/// A PSBT of another transaction (the proof's with one satoshi less in the output).
fn fee_psbt(p: &Psbt) -> Psbt {
    let mut q = p.clone();
    q.unsigned_tx.output[0].value -= Amount::from_sat(1);
    q
}
