//! The spend lifecycle through the `treasury` binary on a regtest node and SQLite: officers'
//! keystores give the approval keys of the policy, the service creates a request, officers
//! review and approve the exported request file offline, a tampered file is refused, the
//! freeze is set by one admin and lifted by two, a request is cancelled, the ledger verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::str::FromStr;

use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::{Address, Network};
use regtest::node_or_skip;
use serde_json::Value;

const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
const T0: i64 = 1_800_000_000_000;

fn account_key(seed: u8) -> String {
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(Network::Regtest, &[seed; 32]).unwrap();
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let acct = master.derive_priv(&secp, &path).unwrap();
    let fp = master.fingerprint(&secp);
    format!("[{fp}/48'/1'/0'/2']{}", Xpub::from_priv(&secp, &acct))
}

/// The example's public key of `person` (its line in the document).
fn example_key(person: &str) -> String {
    let marker = format!("person = \"{person}\", pubkey = \"");
    let start = EXAMPLE.find(&marker).unwrap() + marker.len();
    EXAMPLE[start..start + 64].to_string()
}

#[test]
fn spend_request_through_the_cli_on_sqlite() {
    let Some(node) = node_or_skip("spend_request_through_the_cli_on_sqlite") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cli.db").display());
    cli_flow(&node, &dir, &db);
    assert!(Path::new(&dir.path().join("cli.db")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_request_through_the_cli_on_postgres() {
    let Ok(url) = std::env::var("TREASURY_TEST_POSTGRES_URL") else {
        regtest::skip_or_fail(
            "postgres",
            "spend_request_through_the_cli_on_postgres",
            &"TREASURY_TEST_POSTGRES_URL is not set",
        );
        return;
    };
    let Some(node) = node_or_skip("spend_request_through_the_cli_on_postgres") else {
        return;
    };
    // A fresh schema (created by opening it once), named in the URL for the binary.
    let schema = format!("spendcli_{}_{}", std::process::id(), rand::random::<u32>());
    treasury::store::LedgerStore::open_in_schema(&url, Some(&schema))
        .await
        .unwrap()
        .close()
        .await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let db = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    let dir = tempfile::tempdir().unwrap();
    tokio::task::spawn_blocking(move || cli_flow(&node, &dir, &db))
        .await
        .unwrap();
}

fn cli_flow(node: &regtest::RegtestNode, dir: &tempfile::TempDir, db: &str) {
    let run = |args: &[&str], now: i64| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_treasury"))
            .args(args)
            .env("TREASURY_DB", db)
            .env("TREASURY_RPC_URL", node.rpc_url())
            .env("TREASURY_RPC_COOKIE", node.cookie_file())
            .env("TREASURY_KEYSTORE_PASSPHRASE", "correct horse battery")
            .env("TREASURY_NOW_MS", now.to_string())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let ok = |args: &[&str], now: i64| {
        let (ok, out, err) = run(args, now);
        assert!(ok, "{args:?}: {out}{err}");
        out
    };
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap();
        path(name)
    };

    // Officers' and admins' keystores; their approval keys replace the example's.
    let mut policy = EXAMPLE
        .replace("up_to_sat = 100_000_000", "up_to_sat = 1_000_000")
        .replace("up_to_sat = 5_000_000_000", "up_to_sat = 50_000_000");
    for who in ["alice", "bob", "heidi", "ivan"] {
        let ks = path(&format!("{who}.json"));
        ok(
            &[
                "officer",
                "keygen",
                "--out",
                &ks,
                "--id",
                who,
                "--insecure-fast-kdf",
            ],
            T0,
        );
        let pk = ok(&["officer", "show", "--key", &ks, "--approval-key"], T0);
        let pk = pk.trim();
        assert_eq!(pk.len(), 64, "{pk}");
        policy = policy.replace(&example_key(who), pk);
    }
    let allowed = node.new_address();
    policy = policy.replace(
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
        &allowed.to_string(),
    );
    let policy_file = write("policy.toml", &policy);
    let out = ok(&["policy", "init", &policy_file, "--by", "operator"], T0);
    assert!(out.starts_with("active "), "{out}");
    let (okk, _, err) = run(&["policy", "init", &policy_file, "--by", "operator"], T0);
    assert!(!okk && err.contains("propose"), "{err}");

    // A vault funded by two coinbases, mature after 100 blocks.
    ok(
        &[
            "vault",
            "create",
            "--name",
            "main",
            "--template",
            "sortedmulti",
            "--k",
            "3",
            "--officer",
            &account_key(61),
            "--officer",
            &account_key(62),
            "--policy-key",
            &account_key(63),
        ],
        T0,
    );
    let addr = ok(&["vault", "address", "--vault", "main"], T0);
    let addr = addr
        .split_whitespace()
        .find_map(|w| Address::from_str(w).ok())
        .unwrap()
        .assume_checked();
    node.mine_blocks(2, &addr).unwrap();
    node.mine_blocks(100, &node.new_address()).unwrap();
    ok(&["vault", "sync", "--vault", "main"], T0);

    // The service creates a small request (0.005 BTC, not allowlisted: fine for small).
    let dest = node.new_address().to_string();
    let to = format!("{dest}:500000");
    let out = ok(
        &[
            "spend",
            "create",
            "--vault",
            "main",
            "--to",
            &to,
            "--fee-rate",
            "5",
            "--initiator",
            "dave",
            "--id",
            "c1",
        ],
        T0,
    );
    assert!(out.contains("state pending_approval"), "{out}");
    assert!(
        out.contains("needs 1 more approval from duty-officers"),
        "{out}"
    );
    // Bad input: no such vault; an amount that is not satoshis. Nothing is stored.
    let (okk, _, err) = run(
        &[
            "spend",
            "create",
            "--vault",
            "nope",
            "--to",
            &to,
            "--fee-rate",
            "5",
            "--initiator",
            "dave",
        ],
        T0,
    );
    assert!(!okk && err.contains("nope"), "{err}");
    let (okk, _, err) = run(
        &[
            "spend",
            "create",
            "--vault",
            "main",
            "--to",
            &format!("{dest}:0.5"),
            "--fee-rate",
            "5",
            "--initiator",
            "dave",
        ],
        T0,
    );
    assert!(!okk && err.contains("integer satoshis"), "{err}");
    let list = ok(&["spend", "list"], T0);
    assert_eq!(list.lines().count(), 1, "{list}");

    // Officers review and approve the exported file offline.
    let req = ok(&["spend", "show", "--id", "c1", "--json"], T0 + 1000);
    let req_file = write("c1.json", &req);
    let review = ok(&["officer", "review", &req_file], T0 + 1000);
    eprintln!("{out}\n{review}");
    assert!(review.contains("500000 sat to"), "{review}");
    assert!(review.contains("NOT on the allowlist"), "{review}");
    assert!(review.contains("back to the vault as change"), "{review}");
    assert!(review.contains("Tier: small."), "{review}");
    assert!(review.contains("Policy verdict: pending"), "{review}");
    // A file that claims another amount than its PSBT pays is refused.
    let mut v: Value = serde_json::from_str(&req).unwrap();
    v["amount_sat"] = Value::from(400_000u64);
    let forged = write("forged.json", &v.to_string());
    let (okk, _, err) = run(
        &["officer", "approve", &forged, "--key", &path("alice.json")],
        T0 + 1000,
    );
    assert!(!okk && err.contains("the psbt pays 500000 sat"), "{err}");
    // A key that is not in the policy is refused.
    ok(
        &[
            "officer",
            "keygen",
            "--out",
            &path("mallory.json"),
            "--id",
            "mallory",
            "--insecure-fast-kdf",
        ],
        T0,
    );
    let (okk, _, err) = run(
        &[
            "officer",
            "approve",
            &req_file,
            "--key",
            &path("mallory.json"),
        ],
        T0 + 1000,
    );
    assert!(!okk && err.contains("not an approver"), "{err}");
    let approval = ok(
        &[
            "officer",
            "approve",
            &req_file,
            "--key",
            &path("alice.json"),
        ],
        T0 + 1000,
    );
    let a: Value = serde_json::from_str(&approval).unwrap();
    assert_eq!(a["approver"], "alice");
    let a_file = write("alice-c1.json", &approval);
    let out = ok(&["spend", "approve", "--id", "c1", &a_file], T0 + 2000);
    assert!(out.contains("state ready_to_sign"), "{out}");
    assert!(out.contains("ready to sign"), "{out}");
    let review = ok(
        &[
            "officer",
            "review",
            &write(
                "c1b.json",
                &ok(&["spend", "show", "--id", "c1", "--json"], T0 + 3000),
            ),
        ],
        T0 + 3000,
    );
    assert!(review.contains("Approvals counted: alice."), "{review}");
    // A fee bump: a new request over the same coin, needing new approvals.
    let out = ok(
        &[
            "spend",
            "bump",
            "--id",
            "c1",
            "--fee-rate",
            "9",
            "--initiator",
            "dave",
            "--new-id",
            "c1b",
        ],
        T0 + 3500,
    );
    assert!(
        out.contains("request c1b") && out.contains("state pending_approval"),
        "{out}"
    );
    let out = ok(&["spend", "show", "--id", "c1"], T0 + 3500);
    assert!(out.contains("state replaced by c1b"), "{out}");
    let bumped = write(
        "c1b.json",
        &ok(&["spend", "show", "--id", "c1b", "--json"], T0 + 3500),
    );
    let review = ok(&["officer", "review", &bumped], T0 + 3500);
    assert!(review.contains("It replaces request c1"), "{review}");
    let (okk, _, err) = run(&["spend", "approve", "--id", "c1b", &a_file], T0 + 3600);
    assert!(!okk && err.contains("replayed"), "{err}");

    // Freeze by one admin; lift by two.
    let order = ok(
        &["freeze", "order", "--action", "freeze", "--reason", "drill"],
        T0 + 4000,
    );
    let order_file = write("freeze.json", &order);
    let hs = ok(
        &[
            "officer",
            "sign-order",
            &order_file,
            "--key",
            &path("heidi.json"),
            "--admin",
            "heidi",
        ],
        T0 + 4000,
    );
    let out = ok(
        &["freeze", "set", &order_file, &write("heidi-f.json", &hs)],
        T0 + 4000,
    );
    assert!(out.starts_with("frozen"), "{out}");
    let out = ok(&["freeze", "show"], T0 + 4500);
    assert!(out.starts_with("frozen"), "{out}");
    let lift = ok(
        &[
            "freeze",
            "order",
            "--action",
            "lift",
            "--reason",
            "drill over",
        ],
        T0 + 5000,
    );
    let lift_file = write("lift.json", &lift);
    let mut sigs = Vec::new();
    for who in ["heidi", "ivan"] {
        let s = ok(
            &[
                "officer",
                "sign-order",
                &lift_file,
                "--key",
                &path(&format!("{who}.json")),
                "--admin",
                who,
            ],
            T0 + 5000,
        );
        sigs.push(write(&format!("{who}-l.json"), &s));
    }
    let (okk, _, err) = run(&["freeze", "lift", &lift_file, &sigs[0]], T0 + 5000);
    assert!(!okk && err.contains("needs 2 admin signatures"), "{err}");
    let out = ok(
        &["freeze", "lift", &lift_file, &sigs[0], &sigs[1]],
        T0 + 5000,
    );
    assert!(out.starts_with("not frozen"), "{out}");

    // Another request, cancelled: its coin is released.
    let out = ok(
        &[
            "spend",
            "create",
            "--vault",
            "main",
            "--to",
            &format!("{dest}:300000"),
            "--fee-rate",
            "5",
            "--initiator",
            "dave",
            "--id",
            "c2",
        ],
        T0 + 6000,
    );
    assert!(out.contains("pending_approval"), "{out}");
    let out = ok(
        &["spend", "cancel", "--id", "c2", "--by", "dave"],
        T0 + 7000,
    );
    assert_eq!(out.trim(), "request c2 cancelled");
    let (okk, _, err) = run(
        &["spend", "cancel", "--id", "c2", "--by", "dave"],
        T0 + 8000,
    );
    assert!(!okk && err.contains("illegal transition"), "{err}");

    // Governance through the CLI: a tightening (the CFO group needs both) applies once two
    // admins signed; a loosening back is accepted for later and vetoed by one admin.
    let sign = |order: &str, who: &str, veto: bool, now: i64| {
        let key = path(&format!("{who}.json"));
        let mut args = vec![
            "officer",
            "sign-order",
            order,
            "--key",
            &key,
            "--admin",
            who,
        ];
        if veto {
            args.push("--veto");
        }
        let s = ok(&args, now);
        write(&format!("{who}-{}-{veto}.json", now), &s)
    };
    let v2 = write(
        "v2.toml",
        &policy
            .replace("version = 1", "version = 2")
            .replace("name = \"cfo\"\nk = 1", "name = \"cfo\"\nk = 2"),
    );
    let (okk, order2, err) = run(&["policy", "propose", &v2, "--by", "heidi"], T0 + 10_000);
    assert!(okk && err.contains("tightening"), "{err}");
    let order2 = write("order2.json", &order2);
    let h = sign(&order2, "heidi", false, T0 + 10_000);
    let out = ok(
        &["policy", "approve-proposal", "--order", &order2, &h],
        T0 + 10_000,
    );
    assert!(out.starts_with("waiting: signed by 1 of 2"), "{out}");
    let i = sign(&order2, "ivan", false, T0 + 10_000);
    let out = ok(
        &["policy", "approve-proposal", "--order", &order2, &i],
        T0 + 10_000,
    );
    assert!(out.starts_with("activated"), "{out}");
    let v3 = write("v3.toml", &policy.replace("version = 1", "version = 3"));
    let (okk, order3, err) = run(&["policy", "propose", &v3, "--by", "heidi"], T0 + 11_000);
    assert!(okk && err.contains("loosening"), "{err}");
    let order3 = write("order3.json", &order3);
    let (h, i) = (
        sign(&order3, "heidi", false, T0 + 11_000),
        sign(&order3, "ivan", false, T0 + 11_000),
    );
    let out = ok(
        &["policy", "approve-proposal", "--order", &order3, &h, &i],
        T0 + 11_000,
    );
    assert!(out.starts_with("accepted"), "{out}");
    let out = ok(&["policy", "active"], T0 + 12_000);
    assert!(
        out.starts_with("active ") && out.contains("accepted "),
        "{out}"
    );
    // a veto needs the veto digest: an approval signature is refused
    let (okk, _, err) = run(&["policy", "veto", "--order", &order3, &h], T0 + 12_000);
    assert!(!okk && err.contains("signature"), "{err}");
    let veto = sign(&order3, "heidi", true, T0 + 12_000);
    let out = ok(&["policy", "veto", "--order", &order3, &veto], T0 + 12_000);
    assert!(out.starts_with("vetoed"), "{out}");
    let out = ok(&["policy", "activate"], T0 + 100 * 3_600_000);
    assert_eq!(out.trim(), "nothing to activate");
    let history = ok(&["policy", "history"], T0 + 100 * 3_600_000);
    let statuses: Vec<&str> = history
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(statuses, ["superseded", "active", "vetoed"], "{history}");

    let out = ok(&["policy", "active"], T0 + 100 * 3_600_000);
    assert!(out.starts_with("active "), "{out}");
    let out = ok(&["ledger", "verify"], T0 + 9000);
    assert!(out.starts_with("ok:"), "{out}");
}
