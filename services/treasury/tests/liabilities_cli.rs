//! `treasury reserves liabilities` and `treasury audit liability`, end to end on a SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

fn treasury(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_treasury"))
        .args(args)
        .env(
            "TREASURY_DB",
            format!("sqlite://{}", dir.join("l.db").display()),
        )
        .env_remove("TREASURY_LEDGER_KEY_FILE")
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = treasury(dir, args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fail(dir: &Path, args: &[&str]) -> String {
    let o = treasury(dir, args);
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn build_then_audit_liabilities() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("accounts.csv"),
        "account_id,balance_sat\nagency-a,100000\nagency-b,250000\nprogram-7,1\n",
    )
    .unwrap();
    let out = ok(
        d,
        &[
            "reserves",
            "liabilities",
            "--accounts",
            "accounts.csv",
            "--out",
            "liab",
            "--reserves",
            "350001",
        ],
    );
    assert!(out.contains("total 350001 sat over 3 accounts"), "{out}");
    assert!(out.contains("appended seq 0 "), "{out}");
    let root: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("liab/root.json")).unwrap()).unwrap();
    let hex = root["root_hash"].as_str().unwrap().to_owned();
    assert_eq!(root["root_sum_sat"], 350_001);

    // The ledger entry records the root.
    let export = ok(d, &["ledger", "export"]);
    assert!(export.contains("reserve_proof"), "{export}");

    for id in ["agency-a", "agency-b", "program-7"] {
        let p = format!("liab/proofs/{id}.json");
        let out = ok(d, &["audit", "liability", &p, "--root", &hex]);
        assert!(out.starts_with(&format!("ok: account {id} ")), "{out}");
        ok(
            d,
            &[
                "audit",
                "liability",
                &p,
                "--root",
                &hex,
                "--total",
                "350001",
                "--reserves",
                "350001",
            ],
        );
    }
    let p = "liab/proofs/agency-a.json";
    // Wrong total, reserves too small, wrong root.
    let e = fail(
        d,
        &["audit", "liability", p, "--root", &hex, "--total", "1"],
    );
    assert!(e.contains("not the published total"), "{e}");
    let e = fail(
        d,
        &[
            "audit",
            "liability",
            p,
            "--root",
            &hex,
            "--reserves",
            "350000",
        ],
    );
    assert!(e.contains("exceed the proven reserves"), "{e}");
    let e = fail(d, &["audit", "liability", p, "--root", &"00".repeat(32)]);
    assert!(e.contains("not the published root"), "{e}");

    // A tampered balance.
    let text = std::fs::read_to_string(d.join(p)).unwrap();
    let tampered = text.replace("\"balance_sat\": 100000", "\"balance_sat\": 100001");
    assert_ne!(tampered, text);
    std::fs::write(d.join("tampered.json"), tampered).unwrap();
    let e = fail(d, &["audit", "liability", "tampered.json", "--root", &hex]);
    assert!(e.contains("altered balance or sum"), "{e}");
    // Malformed JSON.
    std::fs::write(d.join("bad.json"), "{\"format\":").unwrap();
    let e = fail(d, &["audit", "liability", "bad.json", "--root", &hex]);
    assert!(e.contains("malformed proof"), "{e}");

    // Liabilities above the reserves: nothing is written.
    let e = fail(
        d,
        &[
            "reserves",
            "liabilities",
            "--accounts",
            "accounts.csv",
            "--out",
            "liab2",
            "--reserves",
            "350000",
        ],
    );
    assert!(e.contains("exceed the proven reserves"), "{e}");
    assert!(!d.join("liab2").exists());
    // Files are never overwritten.
    let e = fail(
        d,
        &[
            "reserves",
            "liabilities",
            "--accounts",
            "accounts.csv",
            "--out",
            "liab",
        ],
    );
    assert!(e.contains("cannot create"), "{e}");

    // JSON account list.
    std::fs::write(
        d.join("accounts.json"),
        r#"[{"account_id": "x", "balance_sat": 5}, {"account_id": "y", "balance_sat": 6}]"#,
    )
    .unwrap();
    let out = ok(
        d,
        &[
            "reserves",
            "liabilities",
            "--accounts",
            "accounts.json",
            "--out",
            "liab3",
        ],
    );
    assert!(out.contains("total 11 sat over 2 accounts"), "{out}");
}
