//! `treasury hsm init|list` against a real SoftHSM2 token (a temporary token directory and our
//! own SOFTHSM2_CONF; never a system token). Skips with a printed reason when SoftHSM2 is not
//! installed, unless `TREASURY_REQUIRE_SOFTHSM=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use bdk_wallet::bitcoin::hashes::{sha256, Hash};
use bdk_wallet::bitcoin::secp256k1::{ecdsa, Message, Secp256k1};
use bdk_wallet::bitcoin::PublicKey;
use custody::vault::TemplateKey;
use serde_json::Value;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn token(dir: &Path) -> Option<std::path::PathBuf> {
    if !Path::new(MODULE).exists() {
        regtest::skip_or_fail("softhsm", "hsm_cli", &format!("{MODULE} is missing"));
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
        .args([
            "--init-token",
            "--free",
            "--label",
            "reserve",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(conf)
}

#[test]
fn key_ceremony_attests_lists_and_feeds_a_vault() {
    let dir = tempfile::tempdir().unwrap();
    let Some(conf) = token(dir.path()) else {
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
