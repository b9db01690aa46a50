//! `treasury demo` end to end, as a user runs it: the binary in a fresh directory builds every
//! part (regtest node, database, TLS certificate, HSM keys, officers, the vault under the
//! example policy, funds, tokens) and serves the API. The test checks `/healthz` over TLS
//! with the generated certificate, that a token works for its role and not beyond it, that
//! the vault is funded, then stops the demo with SIGINT (as Ctrl-C does) and checks that the
//! node is gone. A second run on the same directory must reuse everything: same tokens
//! accepted, the same funded vault, no new funding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use treasury::demo::Tokens;

/// The demo's funding: 5 coinbases of 50 BTC.
const FUNDED_SAT: u64 = 5 * 50 * 100_000_000;

struct DemoRun {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl DemoRun {
    fn start(dir: &Path) -> DemoRun {
        DemoRun::start_with(dir, &[])
    }

    fn start_with(dir: &Path, extra: &[&str]) -> DemoRun {
        let mut child = Command::new(env!("CARGO_BIN_EXE_treasury"))
            .args(["demo", "--dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("SOFTHSM2_CONF")
            .env_remove("TREASURY_DB")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let copy = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                copy.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(url) = line.strip_prefix("demo ready: ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let err = child.stderr.take().unwrap();
        let copy = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("  | {line}");
                copy.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        // The first run on a fresh machine may build bitcoind; the test runs after the test
        // set-up found it, so set-up is keys, chain and sync only.
        let url = match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "the demo did not get ready ({e}); stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        DemoRun {
            child,
            url,
            stderr,
            stdout,
        }
    }

    /// SIGINT, as Ctrl-C; the demo must exit on its own, successfully.
    fn interrupt(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let err = self.stderr.lock().unwrap().clone();
                assert!(
                    status.success(),
                    "demo exited with {status}; stderr:\n{err}"
                );
                return err;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("the demo did not stop within 60 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn client(dir: &Path) -> reqwest::Client {
    let pem = std::fs::read(dir.join("tls/cert.pem")).unwrap();
    let cert = reqwest::Certificate::from_pem(&pem).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(cert)
        .https_only(true)
        .build()
        .unwrap()
}

fn tokens(dir: &Path) -> Tokens {
    let path = dir.join("tokens.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "tokens.json must be private");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bitcoind_pid(dir: &Path) -> u32 {
    let text = std::fs::read_to_string(dir.join("bitcoind/regtest/bitcoind.pid")).unwrap();
    text.trim().parse().unwrap()
}

fn alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

async fn get(c: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = c.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The vault's confirmed balance, read by the CLI from the demo's database.
fn cli_balance(dir: &Path) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_treasury"))
        .args(["vault", "balance", "--vault", "reserve", "--db"])
        .arg(format!("sqlite://{}", dir.join("treasury.db").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["confirmed_sat"]
        .as_u64()
        .unwrap_or_else(|| panic!("no confirmed_sat in {v}"))
}

/// The checks of one running demo: TLS health, every token for its role, the funded vault.
async fn check_running(dir: &Path, url: &str, tokens: &Tokens) {
    let c = client(dir);
    let (status, _) = get(&c, &format!("{url}/healthz"), None).await;
    assert_eq!(status, 200, "healthz over TLS with the demo's certificate");
    let (status, body) = get(&c, &format!("{url}/readyz"), None).await;
    assert_eq!(status, 200, "readyz: database and node reachable: {body}");

    let whoami = format!("{url}/v1/whoami");
    for t in tokens.values() {
        let (status, body) = get(&c, &whoami, Some(&t.token)).await;
        assert_eq!(status, 200, "{}: {body}", t.principal);
        assert_eq!(body["principal"], t.principal.as_str(), "{body}");
        assert_eq!(body["role"], t.role.as_str(), "{body}");
    }
    let (status, _) = get(&c, &whoami, None).await;
    assert_eq!(status, 401, "no token");
    let (status, _) = get(&c, &whoami, Some("tsy_not-a-token")).await;
    assert_eq!(status, 401, "a wrong token");

    // Roles, on the routes of the API (docs/api.md): the integrator reads the funded vault's
    // balance but may not sign checkpoints; the auditor signs a checkpoint (the demo's ledger
    // key) but may not hand out deposit addresses.
    let integrator = &tokens["demo-integrator"].token;
    let auditor = &tokens["demo-auditor"].token;
    let (status, body) = get(
        &c,
        &format!("{url}/v1/vaults/reserve/balance"),
        Some(integrator),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["confirmed_sat"].as_u64(),
        Some(FUNDED_SAT),
        "the vault is funded: {body}"
    );
    let post = |path: &str, token: &str| {
        c.post(format!("{url}{path}"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    let status = post("/v1/ledger/checkpoints", integrator)
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403, "an integrator does not sign checkpoints");
    let resp = post("/v1/ledger/checkpoints", auditor).await.unwrap();
    let status = resp.status();
    assert!(
        status.is_success(),
        "the auditor signs a checkpoint: {status} {}",
        resp.text().await.unwrap()
    );
    let status = post("/v1/vaults/reserve/addresses", auditor)
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403, "an auditor hands out no deposit address");
    let (status, body) = get(
        &c,
        &format!("{url}/v1/vaults/reserve"),
        Some(&tokens["alice"].token),
    )
    .await;
    assert_eq!(status, 200, "an officer sees the vault: {body}");

    // A plain client without the demo's CA refuses the self-signed certificate.
    let plain = reqwest::Client::builder().build().unwrap();
    assert!(plain.get(format!("{url}/healthz")).send().await.is_err());

    assert_eq!(cli_balance(dir), FUNDED_SAT, "the vault is funded");

    // The configuration the demo wrote is one `treasury serve` accepts.
    treasury::api::config::ServeConfig::load(&dir.join("treasury.toml")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_then_a_second_run_reuses_everything() {
    if let Err(e) = regtest::find_bitcoind() {
        regtest::skip_or_fail("bitcoind", "demo", &e);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");

    // First run: everything is made.
    let run = DemoRun::start(&dir);
    let first_out = run.stdout.lock().unwrap().clone();
    let first_tokens = tokens(&dir);
    assert_eq!(
        first_tokens.len(),
        6,
        "admin, auditor, integrator, 3 officers"
    );
    for t in first_tokens.values() {
        assert!(
            first_out.contains(&t.token),
            "the walk-through prints every token"
        );
    }
    assert!(first_out.contains("curl"), "{first_out}");
    assert!(first_out.contains("--cacert"), "{first_out}");
    // The reserve proof walk-through includes the proof quorum's approvals, through the API.
    for step in [
        "/v1/reserves/proofs/$PROOF/subject",
        "treasury officer approve proof-subject.json",
        "/v1/reserves/proofs/$PROOF/approvals",
        "/v1/reserves/proofs/$PROOF/policy-signature",
    ] {
        assert!(first_out.contains(step), "{step}: {first_out}");
    }
    check_running(&dir, &run.url, &first_tokens).await;
    let node_pid = bitcoind_pid(&dir);
    assert!(alive(node_pid));
    let err = run.interrupt();
    assert!(err.contains("funding the vault"), "{err}");
    if regtest::require("softhsm") {
        assert!(
            !err.contains("SoftHSM2 is not installed"),
            "SoftHSM2 is required here: {err}"
        );
        assert!(dir.join("hsm/ceremony.json").exists());
    }
    let started = Instant::now();
    while alive(node_pid) && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(node_pid), "bitcoind {node_pid} outlived the demo");
    assert!(
        !dir.join("bitcoind/regtest/.cookie").exists(),
        "bitcoind shut down cleanly (it removes its cookie)"
    );

    // Second run: the same chain, database, keys, vault and tokens.
    let run = DemoRun::start(&dir);
    assert_eq!(tokens(&dir), first_tokens, "the tokens are kept");
    check_running(&dir, &run.url, &first_tokens).await;
    let err = run.interrupt();
    assert!(
        !err.contains("funding the vault"),
        "no second funding: {err}"
    );
    assert!(err.contains("(reused)"), "{err}");
    for fresh in [
        "officer keygen",
        "key ceremony",
        "vault create",
        "issuing an API token",
    ] {
        assert!(!err.contains(fresh), "{fresh} ran again: {err}");
    }
}

/// The walk-through runs as printed: a fresh demo is started and served, and every command it
/// prints (`walkthrough.sh`, rendered from the same steps as the printed text) runs in order
/// in a scratch directory, each one succeeding (`set -e`; curl fails on any HTTP error). At
/// the end the spend is confirmed and the reserve audit's verdict holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_runs_as_printed() {
    walkthrough_runs(&[]).await;
}

/// The same with the policy key in a software keystore (`--software-key`: what a machine
/// without SoftHSM2 gets): the printed commands name the keystore instead of the token, and
/// the spend and the reserve proof still go through to a confirmed spend and an OK audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_runs_with_a_software_policy_key() {
    walkthrough_runs(&["--software-key"]).await;
}

async fn walkthrough_runs(extra: &[&str]) {
    if let Err(e) = regtest::find_bitcoind() {
        regtest::skip_or_fail("bitcoind", "demo walkthrough", &e);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let run = DemoRun::start_with(&dir, extra);
    let software = extra.contains(&"--software-key");
    assert_eq!(
        dir.join("hsm/policy-key.json").exists(),
        software,
        "where the policy key is kept"
    );
    assert_eq!(dir.join("hsm/ceremony.json").exists(), !software);
    let printed = run.stdout.lock().unwrap().clone();
    let script = std::fs::read_to_string(dir.join("walkthrough.sh")).unwrap();
    // The script holds what was printed: every command line of the script is in the text.
    let mut commands = 0;
    for line in script.lines() {
        if line.starts_with("echo '+++ walkthrough command") || line.starts_with('#') {
            continue;
        }
        if line.is_empty()
            || line.starts_with("set -eo")
            || line.starts_with("echo '+++ walkthrough done")
        {
            continue;
        }
        commands += 1;
        assert!(
            printed.contains(line.trim_start()),
            "the script runs a line that was not printed: {line}"
        );
    }
    assert!(commands > 25, "only {commands} command lines");

    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = Command::new("bash")
        .arg(dir.join("walkthrough.sh"))
        .current_dir(&work)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("TREASURY_DB")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stderr
        .lines()
        .rfind(|l| l.starts_with("+++ walkthrough"))
        .unwrap_or("(none)")
        .to_owned();
    assert!(
        out.status.success() && last == "+++ walkthrough done",
        "the walk-through stopped at {last} ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let ran = stderr
        .lines()
        .filter(|l| l.starts_with("+++ walkthrough command"))
        .count();
    assert!(ran > 20, "only {ran} commands ran");

    // The final state: the spend is confirmed, the reserve proof finalized and audited.
    let spend: Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("spend.json")).unwrap()).unwrap();
    assert_eq!(spend["state"], "confirmed", "{spend}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("verdict:") && l.ends_with(" OK")),
        "no OK verdict in the audit report:\n{stdout}"
    );
    let toks = tokens(&dir);
    let c = client(&dir);
    let (status, proofs) = get(
        &c,
        &format!("{}/v1/reserves/proofs", run.url),
        Some(&toks["demo-auditor"].token),
    )
    .await;
    assert_eq!(status, 200, "{proofs}");
    assert_eq!(proofs[0]["state"], "finalized", "{proofs}");

    // `treasury reserves sign-policy` from the demo's env.sh finds the policy key where the demo
    // keeps it (token PIN file, or the software keystore) and the policy signer refuses a new
    // proof that no officer approved, naming what is missing; nothing is signed.
    let r = c
        .post(format!("{}/v1/reserves/proofs", run.url))
        .bearer_auth(&toks["demo-auditor"].token)
        .json(&serde_json::json!({"vaults": ["reserve"], "statement": "second audit"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let second: Value = r.json().await.unwrap();
    let id = second["id"].as_str().unwrap().to_owned();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". {} && treasury reserves sign-policy {id}",
            dir.join("env.sh").display()
        ))
        .env_remove("SOFTHSM2_CONF")
        .env_remove("TREASURY_DB")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unapproved proof was signed");
    assert!(
        err.contains("reserve proof approvals missing: 0 of"),
        "{err}"
    );
    let (_, again) = get(
        &c,
        &format!("{}/v1/reserves/proofs/{id}", run.url),
        Some(&toks["demo-auditor"].token),
    )
    .await;
    assert_eq!(again["signatures"], 0, "{again}");
    if software {
        // A missing or wrong passphrase file: a clear error, no panic, nothing signed.
        let wrong = tmp.path().join("wrong-passphrase");
        std::fs::write(&wrong, "not the passphrase\n").unwrap();
        for (file, says) in [(tmp.path().join("missing"), "missing"), (wrong, "keystore")] {
            let out = Command::new("bash")
                .arg("-c")
                .arg(format!(
                    ". {} && treasury reserves sign-policy {id} --passphrase-file {}",
                    dir.join("env.sh").display(),
                    file.display()
                ))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "signed with {}", file.display());
            assert!(err.contains(says) && !err.contains("panicked"), "{err}");
        }
        let (_, again) = get(
            &c,
            &format!("{}/v1/reserves/proofs/{id}", run.url),
            Some(&toks["demo-auditor"].token),
        )
        .await;
        assert_eq!(again["signatures"], 0, "{again}");
    }
    run.interrupt();
}
