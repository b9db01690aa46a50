//! The `treasury ledger` and `treasury audit` commands, end to end on a SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

const ORIGIN: &str = "cli.example/ledger";

fn treasury(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_treasury"))
        .args(args)
        .env(
            "TREASURY_DB",
            format!("sqlite://{}", dir.join("l.db").display()),
        )
        .env("TREASURY_LEDGER_ORIGIN", ORIGIN)
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
fn ledger_and_audit_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let key = ok(d, &["ledger", "keygen", "--out", "ledger.key"])
        .trim()
        .to_owned();
    assert!(key.starts_with("cli.example/ledger+"), "{key}");
    assert_eq!(
        ok(d, &["ledger", "public-key", "--key-file", "ledger.key"]).trim(),
        key
    );
    assert!(fail(d, &["ledger", "keygen", "--out", "ledger.key"]).contains("cannot create"));

    for i in 0..5 {
        let out = ok(
            d,
            &[
                "ledger",
                "note",
                "--actor",
                "alice",
                "--text",
                &format!("note {i}"),
            ],
        );
        assert!(out.starts_with(&format!("appended seq {i} ")), "{out}");
    }
    let cp1 = ok(d, &["ledger", "checkpoint", "--key-file", "ledger.key"]);
    assert!(cp1.starts_with("cli.example/ledger\n5\n"), "{cp1}");
    std::fs::write(d.join("cp1.txt"), &cp1).unwrap();
    for i in 5..9 {
        ok(
            d,
            &[
                "ledger",
                "note",
                "--actor",
                "bob",
                "--text",
                &format!("note {i}"),
            ],
        );
    }
    let cp2 = ok(d, &["ledger", "checkpoint", "--key-file", "ledger.key"]);
    assert!(cp2.starts_with("cli.example/ledger\n10\n"), "{cp2}");
    std::fs::write(d.join("cp2.txt"), &cp2).unwrap();

    let v = ok(d, &["ledger", "verify", "--key", &key]);
    assert!(v.starts_with("ok: 11 entries, root "), "{v}");
    let v2 = ok(d, &["ledger", "verify", "--key-file", "ledger.key"]);
    assert_eq!(v, v2);
    let unkeyed = treasury(d, &["ledger", "verify"]);
    assert!(unkeyed.status.success());
    assert_eq!(String::from_utf8(unkeyed.stdout).unwrap(), v);
    let warn = String::from_utf8(unkeyed.stderr).unwrap();
    assert!(
        warn.contains("2 checkpoint signatures not checked"),
        "{warn}"
    );
    // A key for another log: the stored checkpoints are named.
    let other_key = ok(
        d,
        &[
            "ledger",
            "--origin",
            "x.example/log",
            "public-key",
            "--key-file",
            "ledger.key",
        ],
    );
    let e = fail(d, &["ledger", "verify", "--key", other_key.trim()]);
    assert!(
        e.contains("first bad seq 5: checkpoint: checkpoint is for origin"),
        "{e}"
    );

    let export = ok(d, &["ledger", "export"]);
    assert_eq!(export.lines().count(), 11);
    std::fs::write(d.join("export.jsonl"), &export).unwrap();
    let a = ok(
        d,
        &[
            "audit",
            "ledger",
            "--entries",
            "export.jsonl",
            "--checkpoint",
            "cp2.txt",
            "--key",
            &key,
        ],
    );
    assert!(a.starts_with("ok: 11 entries, root "), "{a}");

    let proof = ok(d, &["ledger", "prove", "--seq", "3", "--size", "10"]);
    std::fs::write(d.join("proof.json"), &proof).unwrap();
    std::fs::write(d.join("entry3.json"), export.lines().nth(3).unwrap()).unwrap();
    let i = ok(
        d,
        &[
            "audit",
            "inclusion",
            "--proof",
            "proof.json",
            "--checkpoint",
            "cp2.txt",
            "--key",
            &key,
            "--entry",
            "entry3.json",
        ],
    );
    assert!(
        i.starts_with("ok: seq 3 is in the log of 10 entries"),
        "{i}"
    );
    // The same proof against the older checkpoint: wrong size.
    let e = fail(
        d,
        &[
            "audit",
            "inclusion",
            "--proof",
            "proof.json",
            "--checkpoint",
            "cp1.txt",
            "--key",
            &key,
        ],
    );
    assert!(e.contains("proof mismatch"), "{e}");

    let cons = ok(d, &["ledger", "consistency", "--from", "5", "--to", "10"]);
    std::fs::write(d.join("cons.json"), &cons).unwrap();
    let c = ok(
        d,
        &[
            "audit",
            "consistency",
            "--proof",
            "cons.json",
            "--old",
            "cp1.txt",
            "--new",
            "cp2.txt",
            "--key",
            &key,
        ],
    );
    assert!(
        c.starts_with("ok: the log of 5 entries is a prefix of the log of 10 entries"),
        "{c}"
    );

    // Bad input.
    let e = fail(d, &["ledger", "prove", "--seq", "1", "--size", "99"]);
    assert!(
        e.contains("tree size 99 is beyond the log, which has 11 entries"),
        "{e}"
    );
    let e = fail(d, &["ledger", "consistency", "--from", "3", "--to", "99"]);
    assert!(e.contains("beyond the log"), "{e}");
    std::fs::write(
        d.join("bad.jsonl"),
        export.replacen("\"seq\":2", "\"seq\":\"2\"", 1),
    )
    .unwrap();
    let e = fail(
        d,
        &[
            "audit",
            "ledger",
            "--entries",
            "bad.jsonl",
            "--checkpoint",
            "cp2.txt",
            "--key",
            &key,
        ],
    );
    assert!(e.contains("export line 3"), "{e}");
    let other = ok(
        d,
        &[
            "ledger",
            "--origin",
            "other.example/log",
            "public-key",
            "--key-file",
            "ledger.key",
        ],
    );
    let e = fail(
        d,
        &[
            "audit",
            "ledger",
            "--entries",
            "export.jsonl",
            "--checkpoint",
            "cp2.txt",
            "--key",
            other.trim(),
        ],
    );
    assert!(e.contains("checkpoint is for origin"), "{e}");
    // A deleted tail: the export ends before the checkpoint.
    let short: String = export.lines().take(7).map(|l| format!("{l}\n")).collect();
    std::fs::write(d.join("short.jsonl"), short).unwrap();
    let e = fail(
        d,
        &[
            "audit",
            "ledger",
            "--entries",
            "short.jsonl",
            "--checkpoint",
            "cp2.txt",
            "--key",
            &key,
        ],
    );
    assert!(e.contains("first bad seq 7"), "{e}");
    // A tampered export line.
    let tampered = export.replacen("6e6f74652034", "6e6f74652058", 1);
    assert_ne!(tampered, export);
    std::fs::write(d.join("t.jsonl"), tampered).unwrap();
    let e = fail(
        d,
        &[
            "audit",
            "ledger",
            "--entries",
            "t.jsonl",
            "--checkpoint",
            "cp2.txt",
            "--key",
            &key,
        ],
    );
    assert!(e.contains("first bad seq"), "{e}");
    // The old subcommands are still there.
    assert!(ok(d, &["hashcore"]).contains("in use:"));
}

#[test]
fn verify_exits_non_zero_and_names_the_first_bad_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for i in 0..4 {
        ok(
            d,
            &[
                "ledger",
                "note",
                "--actor",
                "alice",
                "--text",
                &format!("n{i}"),
            ],
        );
    }
    assert!(ok(d, &["ledger", "verify"]).starts_with("ok: 4 entries, root "));
    let url = format!("sqlite://{}", d.join("l.db").display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::raw_sql(
                "DROP TRIGGER ledger_entries_no_update; \
                 UPDATE ledger_entries SET actor = 'mallory' WHERE seq = 2;",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        });
    let e = fail(d, &["ledger", "verify"]);
    assert!(
        e.starts_with("error: first bad seq 2: entry hash mismatch"),
        "{e}"
    );
}
