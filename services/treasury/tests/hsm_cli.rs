//! `treasury hsm init|list` against a real SoftHSM2 token (a temporary token directory and our
//! own SOFTHSM2_CONF; never a system token). Skips with a printed reason when SoftHSM2 is not
//! installed, unless `TREASURY_REQUIRE_SOFTHSM=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::softhsm_token;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use bdk_wallet::bitcoin::hashes::{sha256, Hash};
use bdk_wallet::bitcoin::secp256k1::{ecdsa, Message, Secp256k1};
use bdk_wallet::bitcoin::PublicKey;
use custody::vault::TemplateKey;
use serde_json::Value;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[test]
fn key_ceremony_attests_lists_and_feeds_a_vault() {
    let dir = tempfile::tempdir().unwrap();
    let Some(conf) = softhsm_token(dir.path(), "hsm_cli", "1234") else {
        return;
    };
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let run = |args: &[&str], pin: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_treasury"));
        cmd.args(args)
            .env("SOFTHSM2_CONF", &conf)
            .env("TREASURY_DB", &db)
            .env("TREASURY_HSM_MODULE", MODULE)
            .env("TREASURY_HSM_TOKEN", "reserve")
            .env_remove("TREASURY_HSM_PIN");
        if let Some(p) = pin {
            cmd.env("TREASURY_HSM_PIN", p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = run(&["hsm", "init", "--key-label", "policy-key"], Some("1234"));
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    // the attestation is the key's own signature over the statement
    let pk = PublicKey::from_str(v["public_key"].as_str().unwrap()).unwrap();
    let statement = v["attestation"]["statement"].as_str().unwrap();
    assert!(statement.contains(&pk.to_string()));
    let digest = sha256::Hash::hash(statement.as_bytes()).to_byte_array();
    let sig = ecdsa::Signature::from_der(
        &hex::decode(v["attestation"]["signature_der"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    Secp256k1::verification_only()
        .verify_ecdsa(&Message::from_digest(digest), &sig, &pk.inner)
        .unwrap();
    // the descriptor key is usable as a vault's policy key
    let key = v["descriptor_key"].as_str().unwrap();
    TemplateKey::parse(key).unwrap();
    // list shows it
    let (ok, list, err) = run(&["hsm", "list"], Some("1234"));
    assert!(ok, "{err}");
    assert!(list.contains("policy-key") && list.contains(key), "{list}");
    // a second key with the same label is refused; a wrong or missing PIN is a clear error
    let (ok, _, err) = run(&["hsm", "init", "--key-label", "policy-key"], Some("1234"));
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, _, err) = run(&["hsm", "list"], Some("9999"));
    assert!(
        !ok && err.to_lowercase().contains("pin") && !err.contains("9999"),
        "{err}"
    );
    let (ok, _, err) = run(&["hsm", "list"], None);
    assert!(!ok && err.contains("TREASURY_HSM_PIN"), "{err}");
    // the ceremony is in the ledger
    let (ok, export, err) = run(&["ledger", "export"], None);
    assert!(ok, "{err}");
    assert!(export.contains("key_ceremony"), "{export}");
}

const ORIGIN: &str = "hsm.example/ledger";

/// Runs the treasury binary against the test token and database; returns (success, stdout,
/// stderr).
fn treasury(conf: &Path, db: &str, args: &[&str], pin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_treasury"));
    cmd.args(args)
        .env("SOFTHSM2_CONF", conf)
        .env("TREASURY_DB", db)
        .env("TREASURY_HSM_MODULE", MODULE)
        .env("TREASURY_HSM_TOKEN", "reserve")
        .env("TREASURY_LEDGER_ORIGIN", ORIGIN)
        .env_remove("TREASURY_HSM_PIN")
        .env_remove("TREASURY_HSM_PIN_FILE")
        .env_remove("TREASURY_LEDGER_KEY_FILE");
    if let Some(p) = pin {
        cmd.env("TREASURY_HSM_PIN", p);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn verify_der(digest: [u8; 32], der_hex: &str, key: &str) {
    let pk = PublicKey::from_str(key).unwrap();
    let sig = ecdsa::Signature::from_der(&hex::decode(der_hex).unwrap()).unwrap();
    Secp256k1::verification_only()
        .verify_ecdsa(&Message::from_digest(digest), &sig, &pk.inner)
        .unwrap();
}

#[test]
fn hsm_checkpoint_key_signs_checkpoints_that_verify_and_audit() {
    use custody::ledger::{SignatureKind, VerifierKey};
    let dir = tempfile::tempdir().unwrap();
    let Some(conf) = softhsm_token(dir.path(), "hsm_cli", "1234") else {
        return;
    };
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let run = |args: &[&str], pin: Option<&str>| treasury(&conf, &db, args, pin);
    let path = |name: &str| dir.path().join(name).display().to_string();

    // The ceremony makes both keys and prints the checkpoint verifier key beside the policy key.
    let (ok, out, err) = run(&["hsm", "init"], Some("1234"));
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["key_label"], "policy-key");
    assert_eq!(v["checkpoint"]["key_label"], "ledger-checkpoint");
    assert_eq!(v["checkpoint"]["origin"], ORIGIN);
    let vk_text = v["checkpoint"]["verifier_key"].as_str().unwrap().to_owned();
    let vk = VerifierKey::parse(&vk_text).unwrap();
    assert_eq!(vk.kind(), SignatureKind::Ecdsa);
    assert_eq!(vk.name(), ORIGIN);
    // The attestation names both keys and is signed by both.
    let statement = v["attestation"]["statement"].as_str().unwrap();
    let policy_pk = v["public_key"].as_str().unwrap();
    let checkpoint_pk = v["checkpoint"]["public_key"].as_str().unwrap();
    assert_ne!(policy_pk, checkpoint_pk);
    for needle in [policy_pk, checkpoint_pk, vk_text.as_str()] {
        assert!(statement.contains(needle), "{statement}");
    }
    let digest = sha256::Hash::hash(statement.as_bytes()).to_byte_array();
    assert_eq!(v["attestation"]["sha256"], hex::encode(digest));
    verify_der(
        digest,
        v["attestation"]["signature_der"].as_str().unwrap(),
        policy_pk,
    );
    verify_der(
        digest,
        v["attestation"]["checkpoint_signature_der"]
            .as_str()
            .unwrap(),
        checkpoint_pk,
    );
    // The token lists both keys; public-key prints the same verifier key.
    let (ok, list, err) = run(&["hsm", "list"], Some("1234"));
    assert!(ok, "{err}");
    assert!(
        list.contains("policy-key") && list.contains("ledger-checkpoint"),
        "{list}"
    );
    let (ok, printed, err) = run(
        &[
            "ledger",
            "public-key",
            "--hsm-key-label",
            "ledger-checkpoint",
        ],
        Some("1234"),
    );
    assert!(ok, "{err}");
    assert_eq!(printed.trim(), vk_text);

    // Sign a checkpoint with the token key.
    for i in 0..2 {
        let (ok, _, err) = run(
            &[
                "ledger",
                "note",
                "--actor",
                "alice",
                "--text",
                &format!("n{i}"),
            ],
            None,
        );
        assert!(ok, "{err}");
    }
    let (ok, note, err) = run(
        &[
            "ledger",
            "checkpoint",
            "--hsm-key-label",
            "ledger-checkpoint",
        ],
        Some("1234"),
    );
    assert!(ok, "{err}");
    assert!(note.starts_with(&format!("{ORIGIN}\n3\n")), "{note}");
    assert_eq!(vk.verify(&note).unwrap().size(), 3);
    std::fs::write(path("cp.txt"), &note).unwrap();

    // The ceremony entry records both keys.
    let (ok, export, err) = run(&["ledger", "export"], None);
    assert!(ok, "{err}");
    std::fs::write(path("entries.jsonl"), &export).unwrap();
    let first: Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "key_ceremony");
    let payload = hex::decode(first["payload"].as_str().unwrap()).unwrap();
    let payload = String::from_utf8_lossy(&payload);
    assert!(
        payload.contains(&vk_text) && payload.contains(policy_pk),
        "{payload}"
    );

    // ledger verify and audit ledger accept it with the printed key.
    let (ok, out, err) = run(&["ledger", "verify", "--key", &vk_text], None);
    assert!(ok, "{err}");
    assert!(out.starts_with("ok: 4 entries"), "{out}");
    let audit = |key: &str| {
        run(
            &[
                "audit",
                "ledger",
                "--entries",
                &path("entries.jsonl"),
                "--checkpoint",
                &path("cp.txt"),
                "--key",
                key,
            ],
            None,
        )
    };
    let (ok, out, err) = audit(&vk_text);
    assert!(ok, "{err}");
    assert!(out.contains("checkpoint size 3 verified"), "{out}");

    // A wrong key is refused: a BIP-340 key file key, and another token key (ECDSA).
    let (ok, schnorr_key, err) = run(&["ledger", "keygen", "--out", &path("other.key")], None);
    assert!(ok, "{err}");
    std::fs::write(path("pin"), "1234\n").unwrap();
    let (ok, other, err) = run(
        &[
            "hsm",
            "init",
            "--key-label",
            "policy-2",
            "--checkpoint-label",
            "checkpoint-2",
            "--pin-file",
            &path("pin"),
        ],
        None,
    );
    assert!(ok, "{err}");
    let other: Value = serde_json::from_str(&other).unwrap();
    let other_vk = other["checkpoint"]["verifier_key"].as_str().unwrap();
    assert_ne!(other_vk, vk_text);
    for wrong in [schnorr_key.trim(), other_vk] {
        let (ok, _, err) = run(&["ledger", "verify", "--key", wrong], None);
        assert!(
            !ok && err.contains("first bad seq 3") && err.contains("no signature by key"),
            "{err}"
        );
        let (ok, _, err) = audit(wrong);
        assert!(!ok && err.contains("no signature by key"), "{err}");
    }
    // A tampered checkpoint is refused.
    std::fs::write(path("cp.txt"), note.replace("\n3\n", "\n2\n")).unwrap();
    let (ok, _, err) = audit(&vk_text);
    assert!(!ok && err.contains("does not verify"), "{err}");

    // The same key from a PIN file; errors: both key sources, no key, wrong PIN, taken labels.
    let (ok, note2, err) = run(
        &[
            "ledger",
            "checkpoint",
            "--hsm-key-label",
            "ledger-checkpoint",
            "--hsm-pin-file",
            &path("pin"),
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(vk.verify(&note2).unwrap().size(), 5);
    let (ok, _, err) = run(
        &[
            "ledger",
            "checkpoint",
            "--hsm-key-label",
            "ledger-checkpoint",
            "--key-file",
            &path("other.key"),
        ],
        Some("1234"),
    );
    assert!(!ok && err.contains("not both"), "{err}");
    let (ok, _, err) = run(&["ledger", "checkpoint"], Some("1234"));
    assert!(!ok && err.contains("no ledger key"), "{err}");
    let (ok, _, err) = run(
        &[
            "ledger",
            "checkpoint",
            "--hsm-key-label",
            "ledger-checkpoint",
        ],
        Some("9999"),
    );
    assert!(
        !ok && err.to_lowercase().contains("pin") && !err.contains("9999"),
        "{err}"
    );
    let (ok, _, err) = run(
        &[
            "ledger",
            "checkpoint",
            "--hsm-key-label",
            "ledger-checkpoint",
        ],
        None,
    );
    assert!(!ok && err.contains("TREASURY_HSM_PIN"), "{err}");
    let (ok, _, err) = run(
        &[
            "hsm",
            "init",
            "--key-label",
            "policy-3",
            "--checkpoint-label",
            "checkpoint-2",
        ],
        Some("1234"),
    );
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, list, _) = run(&["hsm", "list"], Some("1234"));
    assert!(ok && !list.contains("policy-3"), "no half ceremony: {list}");
    let (ok, _, err) = run(
        &[
            "hsm",
            "init",
            "--key-label",
            "same",
            "--checkpoint-label",
            "same",
        ],
        Some("1234"),
    );
    assert!(!ok && err.contains("different labels"), "{err}");
    // Still verifies with the printed key: every stored checkpoint.
    let (ok, out, err) = run(&["ledger", "verify", "--key", &vk_text], None);
    assert!(ok, "{err}");
    assert!(out.starts_with("ok: 6 entries"), "{out}");
}
