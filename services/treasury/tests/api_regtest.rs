//! The whole flow over real TLS against running `treasury serve` instances on a regtest node:
//! an integrator creates a spend (idempotently), two officers approve with their own BIP-340
//! approvals and submit PSBTs signed with their own keys, the policy key on SoftHSM2 signs,
//! the transaction is broadcast and confirmed, the event stream shows each step, and an
//! auditor fetches a ledger consistency proof between two checkpoints and verifies it.
//! On SQLite with one instance, and on PostgreSQL (`TREASURY_TEST_POSTGRES_URL`, a fresh
//! schema) with two instances sharing the flow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::str::FromStr;
use std::time::Duration;

use bdk_wallet::bitcoin::secp256k1::SecretKey;
use bdk_wallet::bitcoin::Address;
use common::{node_config, officer, private_descriptors, rpc, softhsm_token, NET};
use custody::ledger::{audit_consistency, ConsistencyProofJson, KeyFileSigner, VerifierKey};
use custody::vault::{Template, TemplateKey, VaultConfig};
use futures_util::StreamExt;
use hsm::{Pkcs11Config, Pkcs11Pin, Pkcs11Signer};
use policies::approval::sign;
use regtest::{node_or_skip, RegtestNode};
use serde_json::{json, Value};
use treasury::api::{bind, issue_token, Role, ServeConfig};
use treasury::spend::SpendService;
use treasury::store::LedgerStore;
use treasury::vaults::VaultService;

const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "4321";
const ORIGIN: &str = "api-test.example/ledger";

fn approval_secret(person: &str) -> SecretKey {
    let n = ["alice", "bob", "carol"]
        .iter()
        .position(|p| *p == person)
        .unwrap();
    SecretKey::from_slice(&[u8::try_from(n + 1).unwrap(); 32]).unwrap()
}

struct Tls {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    pem: String,
}

fn tls_files(dir: &std::path::Path) -> Tls {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let pem = ck.cert.pem();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    Tls { cert, key, pem }
}

fn config(
    tls: &Tls,
    db: &str,
    node: &RegtestNode,
    signer: bool,
    key_file: &std::path::Path,
) -> ServeConfig {
    let mut text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
tls_cert = "{}"
tls_key = "{}"
events_poll_ms = 50
log_format = "json"
[database]
url = "{db}"
[node]
network = "regtest"
rpc_url = "{}"
cookie_file = "{}"
[ledger]
origin = "{ORIGIN}"
key_file = "{}"
"#,
        tls.cert.display(),
        tls.key.display(),
        node.rpc_url(),
        node.cookie_file().display(),
        key_file.display(),
    );
    if signer {
        text.push_str(&format!(
            "[signer]\nkind = \"pkcs11\"\nmodule = \"{MODULE}\"\ntoken_label = \"reserve\"\nkey_label = \"policy-key\"\npin_env = \"API_TEST_HSM_PIN\"\n"
        ));
    }
    ServeConfig::from_toml_str(&text).unwrap()
}

struct Client {
    http: reqwest::Client,
}

impl Client {
    fn new(pem: &str) -> Client {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        Client { http }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        body: Option<Value>,
        idem: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut r = self.http.request(method, url).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        if let Some(k) = idem {
            r = r.header("idempotency-key", k);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, v)
    }

    async fn get(&self, url: &str, token: &str) -> Value {
        let (s, _, v) = self
            .call(reqwest::Method::GET, url, token, None, None)
            .await;
        assert_eq!(s, 200, "GET {url}: {v}");
        v
    }

    async fn post(&self, url: &str, token: &str, body: Value) -> (u16, Value) {
        let (s, _, v) = self
            .call(reqwest::Method::POST, url, token, Some(body), None)
            .await;
        (s, v)
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    dir_path: std::path::PathBuf,
    store: LedgerStore,
    descriptor: custody::vault::VaultDescriptor,
    key_file: std::path::PathBuf,
}

/// The vault (HSM policy key, 2 of 3 officers, recovery path), the example policy, funds.
async fn setup(
    node: &RegtestNode,
    db: &str,
    dir: tempfile::TempDir,
    hsm_key: &Pkcs11Signer,
) -> Setup {
    let (o1, o2, o3) = (officer(11), officer(12), officer(13));
    let template = Template::PolicyWithRecovery {
        policy_key: TemplateKey::parse(&hsm_key.descriptor_key()).unwrap(),
        k: 2,
        officers: vec![
            TemplateKey::parse(&o1.public).unwrap(),
            TemplateKey::parse(&o2.public).unwrap(),
            TemplateKey::parse(&o3.public).unwrap(),
        ],
        r: 2,
        recovery: (21..24)
            .map(|s| TemplateKey::parse(&officer(s).public).unwrap())
            .collect(),
        older: 5,
    };
    let d = template.build(NET).unwrap();
    let store = LedgerStore::open(db).await.unwrap();
    let svc = SpendService::new(VaultService::new(store.clone()));
    svc.vaults
        .create(VaultConfig::new("reserve", d.clone(), 0).unwrap(), "create")
        .await
        .unwrap();
    svc.governance
        .init(EXAMPLE, "admins", treasury::vaults::now_ms())
        .await
        .unwrap();
    let addr = svc.vaults.next_address("reserve").await.unwrap().address;
    let addr = Address::from_str(&addr.to_string())
        .unwrap()
        .assume_checked();
    node.mine_blocks(1, &addr).unwrap();
    node.mine_blocks(100, &node.new_address()).unwrap();
    svc.vaults
        .sync("reserve", &node_config(node))
        .await
        .unwrap();
    let key_file = dir.path().join("ledger.key");
    std::fs::write(&key_file, KeyFileSigner::key_file_text(&[9u8; 32]).as_str()).unwrap();
    Setup {
        dir_path: dir.path().to_owned(),
        _dir: dir,
        store,
        descriptor: d,
        key_file,
    }
}

/// Reads SSE events from `url` until one of kind `until` arrives; returns (seq, kind) pairs.
async fn collect_events(
    client: reqwest::Client,
    url: String,
    token: String,
    until: &'static str,
) -> Vec<(u64, String)> {
    let resp = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut kind = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse::<u64>().unwrap());
                }
                if let Some(v) = line.strip_prefix("event: ") {
                    kind = Some(v.to_owned());
                }
            }
            if let (Some(i), Some(k)) = (id, kind) {
                let done = k == until;
                out.push((i, k));
                if done {
                    return out;
                }
            }
        }
    }
    out
}

/// The flow, with `a` and `b` the base URLs of the instances (the same for one instance).
#[allow(clippy::too_many_lines)]
async fn flow(node: &RegtestNode, s: &Setup, pem: &str, a: &str, b: &str) {
    let now = 10_000;
    let tok = |p: &str, r: Role| {
        let store = s.store.clone();
        let p = p.to_owned();
        async move { issue_token(&store, &p, r, &[], now).await.unwrap() }
    };
    let integrator = tok("acme", Role::Integrator).await;
    let bob = tok("bob", Role::Officer).await;
    let carol = tok("carol", Role::Officer).await;
    let auditor = tok("audrey", Role::Auditor).await;
    let c = Client::new(pem);

    // The auditor's first checkpoint, and the event stream from the next entry on (on b).
    let (st, cp1) = c
        .post(&format!("{a}/v1/ledger/checkpoints"), &auditor, json!(null))
        .await;
    assert_eq!(st, 201, "{cp1}");
    let start = c.get(&format!("{b}/v1/ledger/head"), &auditor).await["size"]
        .as_u64()
        .unwrap();
    let events = tokio::spawn(collect_events(
        c.http.clone(),
        format!("{b}/v1/events?from={start}"),
        auditor.clone(),
        "confirmation",
    ));

    // The integrator's spend: 2 BTC, the example policy's medium tier (2 of 3 duty officers).
    let dest = node.new_address().to_string();
    let body = json!({"vault": "reserve", "payments": [{"address": dest, "amount_sat": 200_000_000u64}],
                      "fee_rate_sat_vb": 3, "confirmations": 1});
    let (st, h, created) = c
        .call(
            reqwest::Method::POST,
            &format!("{a}/v1/spends"),
            &integrator,
            Some(body.clone()),
            Some("k-1"),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    assert!(!h.contains_key("idempotent-replayed"));
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "pending_approval");
    assert_eq!(created["request"]["initiator"], "acme");
    // Same key and body, on the other instance: the same request.
    let (st, h, again) = c
        .call(
            reqwest::Method::POST,
            &format!("{b}/v1/spends"),
            &integrator,
            Some(body.clone()),
            Some("k-1"),
        )
        .await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(again["id"], id.as_str());
    // Same key, another body: 409, and nothing is stored.
    let before = s.store.head().await.unwrap().size();
    let mut other = body.clone();
    other["payments"][0]["amount_sat"] = json!(150_000_000u64);
    let (st, _, p) = c
        .call(
            reqwest::Method::POST,
            &format!("{b}/v1/spends"),
            &integrator,
            Some(other),
            Some("k-1"),
        )
        .await;
    assert_eq!(st, 409, "{p}");
    assert_eq!(
        p["type"],
        "https://reserve.invalid/problems/idempotency-conflict"
    );
    assert_eq!(s.store.head().await.unwrap().size(), before);
    assert_eq!(
        SpendService::new(VaultService::new(s.store.clone()))
            .list(None)
            .await
            .unwrap()
            .len(),
        1
    );

    // What is missing, then the officers' own approvals (bob on a, carol on b).
    let shown = c.get(&format!("{b}/v1/spends/{id}"), &integrator).await;
    assert!(
        shown["verdict"].as_str().unwrap().contains("duty-officers"),
        "{}",
        shown["verdict"]
    );
    let svc = SpendService::new(VaultService::new(s.store.clone()));
    let subject = svc.load(&id).await.unwrap().request.subject;
    // carol may not submit bob's approval
    let bob_approval =
        serde_json::to_value(sign(&subject, "bob", &approval_secret("bob"))).unwrap();
    let (st, _) = c
        .post(
            &format!("{a}/v1/spends/{id}/approvals"),
            &carol,
            bob_approval.clone(),
        )
        .await;
    assert_eq!(st, 403);
    let (st, v) = c
        .post(&format!("{a}/v1/spends/{id}/approvals"), &bob, bob_approval)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "pending_approval");
    let carol_approval =
        serde_json::to_value(sign(&subject, "carol", &approval_secret("carol"))).unwrap();
    let (st, v) = c
        .post(
            &format!("{b}/v1/spends/{id}/approvals"),
            &carol,
            carol_approval,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "ready_to_sign");

    // The policy key signs (on a, which holds the HSM signer).
    let (st, v) = c
        .post(
            &format!("{a}/v1/spends/{id}/policy-sign"),
            &bob,
            json!(null),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tier"], "medium");

    // Officers 1 and 3 sign the unsigned PSBT on their own devices (Core here) and submit.
    let unsigned = v_psbt(&c, b, &id, &integrator).await;
    for (officer_seed, token, base) in [(11u8, &bob, a), (13, &carol, b)] {
        let o = officer(officer_seed);
        let out = rpc(
            node,
            "descriptorprocesspsbt",
            &[
                json!(unsigned),
                json!(private_descriptors(&s.descriptor, &[&o])),
                json!("ALL"),
                json!(true),
                json!(false),
            ],
        );
        let (st, v) = c
            .post(
                &format!("{base}/v1/spends/{id}/psbts"),
                token,
                json!({"psbt": out["psbt"]}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    let shown = c.get(&format!("{a}/v1/spends/{id}"), &auditor).await;
    assert_eq!(shown["signatures"], 3, "{shown}");

    // Broadcast (integrator, on b), checked by the node; mined; followed to confirmed.
    let (st, v) = c
        .post(
            &format!("{b}/v1/spends/{id}/broadcast"),
            &integrator,
            json!(null),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let txid = v["txid"].as_str().unwrap().to_owned();
    let entry = rpc(node, "getmempoolentry", &[json!(txid)]);
    assert!(entry["vsize"].as_u64().unwrap() > 0);
    node.mine_blocks(1, &node.new_address()).unwrap();
    let (st, v) = c
        .post(
            &format!("{a}/v1/spends/{id}/follow"),
            &integrator,
            json!(null),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "confirmed", "{v}");

    // The event stream showed each step, in order, with the principals as actors.
    let seen = tokio::time::timeout(Duration::from_secs(30), events)
        .await
        .unwrap()
        .unwrap();
    let kinds: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
    let order = [
        "spend_requested",
        "approval",
        "approval",
        "signature",
        "signature",
        "signature",
        "broadcast",
        "confirmation",
    ];
    let mut it = kinds.iter();
    for want in order {
        assert!(
            it.any(|k| *k == want),
            "missing {want} in order in {kinds:?}"
        );
    }
    let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gaps in {seqs:?}"
    );
    assert_eq!(seqs[0], start);
    let entries = s
        .store
        .entries_range(start, seqs[seqs.len() - 1] + 1)
        .await
        .unwrap();
    let actors: Vec<&str> = entries.iter().map(|e| e.actor().as_str()).collect();
    for who in ["bob", "carol"] {
        assert!(
            actors.contains(&who),
            "{who} not among the actors {actors:?}"
        );
    }
    // The integrator is the request's recorded initiator (the service writes the submission
    // under its own actor).
    let initiator = entries.iter().any(|e| {
        String::from_utf8_lossy(e.payload().as_bytes()).contains("\"initiator\":\"acme\"")
    });
    assert!(initiator, "no entry names acme as the initiator");

    // The auditor: a second checkpoint, a consistency proof, verified offline.
    let (st, cp2) = c
        .post(&format!("{b}/v1/ledger/checkpoints"), &auditor, json!(null))
        .await;
    assert_eq!(st, 201, "{cp2}");
    let latest = c
        .get(&format!("{a}/v1/ledger/checkpoints/latest"), &auditor)
        .await;
    assert_eq!(latest["note"], cp2["note"]);
    let old_size = cp1["seq"].as_u64().unwrap();
    let new_size = cp2["seq"].as_u64().unwrap();
    let proof = c
        .get(
            &format!("{a}/v1/ledger/proofs/consistency?from={old_size}&to={new_size}"),
            &auditor,
        )
        .await;
    let proof = ConsistencyProofJson::parse(&proof.to_string()).unwrap();
    let key = VerifierKey::of_signer(
        ORIGIN.to_owned(),
        &KeyFileSigner::from_secret_bytes(&[9u8; 32]).unwrap(),
    )
    .unwrap();
    let (o, n) = audit_consistency(
        &proof,
        cp1["note"].as_str().unwrap(),
        cp2["note"].as_str().unwrap(),
        &key,
    )
    .unwrap();
    assert_eq!((o.size(), n.size()), (old_size, new_size));
    // A proof between other sizes does not verify against these checkpoints.
    let wrong = c
        .get(
            &format!(
                "{a}/v1/ledger/proofs/consistency?from={}&to={new_size}",
                old_size - 1
            ),
            &auditor,
        )
        .await;
    let wrong = ConsistencyProofJson::parse(&wrong.to_string()).unwrap();
    assert!(audit_consistency(
        &wrong,
        cp1["note"].as_str().unwrap(),
        cp2["note"].as_str().unwrap(),
        &key
    )
    .is_err());
    s.store.verify(Some(&key)).await.unwrap();
}

async fn v_psbt(c: &Client, base: &str, id: &str, token: &str) -> String {
    let v = c.get(&format!("{base}/v1/spends/{id}"), token).await;
    v["request"]["psbt"].as_str().unwrap().to_owned()
}

fn hsm(dir: &std::path::Path, test: &str) -> Option<Pkcs11Signer> {
    let conf = softhsm_token(dir, test, PIN)?;
    // Before the first C_Initialize of this process.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    std::env::set_var("API_TEST_HSM_PIN", PIN);
    let cfg = Pkcs11Config::new(MODULE, "reserve", "policy-key", Pkcs11Pin::new(PIN));
    Some(Pkcs11Signer::generate(cfg).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_flow_over_tls() {
    let Some(node) = node_or_skip("api full_flow_over_tls") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(hsm_key) = hsm(dir.path(), "api full_flow_over_tls") else {
        return;
    };
    let mut pg = None;
    if let Ok(url) = std::env::var("TREASURY_TEST_POSTGRES_URL") {
        pg = Some(url);
    } else {
        regtest::skip_or_fail(
            "postgres",
            "api two instances on postgres",
            &"TREASURY_TEST_POSTGRES_URL is not set",
        );
    }
    let db = format!("sqlite://{}", dir.path().join("api.db").display());
    let s = setup(&node, &db, dir, &hsm_key).await;
    let tls = tls_files(&s.dir_path);
    let server = bind(config(&tls, &db, &node, true, &s.key_file))
        .await
        .unwrap();
    let base = format!("https://localhost:{}", server.local_addr().port());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    // readiness over TLS
    let c = Client::new(&tls.pem);
    let r = c.http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // TLS 1.1 and below are not offered: a rustls client pinned to 1.2 works (1.3 default).
    flow(&node, &s, &tls.pem, &base, &base).await;
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    if let Some(url) = pg {
        two_instances_on_postgres(&node, &url, &hsm_key).await;
    }
}

/// Two instances against one PostgreSQL schema, the flow spread across them (the HSM signer
/// on the first only: PKCS#11 login state is per process).
async fn two_instances_on_postgres(node: &RegtestNode, url: &str, hsm_key: &Pkcs11Signer) {
    let schema = format!("apitest_{}_{}", std::process::id(), rand::random::<u32>());
    LedgerStore::open_in_schema(url, Some(&schema))
        .await
        .unwrap()
        .close()
        .await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let db = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    let dir = tempfile::tempdir().unwrap();
    // A fresh vault on the same HSM key; the node's chain moved on, so mine again.
    let s = setup(node, &db, dir, hsm_key).await;
    let tls = tls_files(&s.dir_path);
    let sa = bind(config(&tls, &db, node, true, &s.key_file))
        .await
        .unwrap();
    let sb = bind(config(&tls, &db, node, false, &s.key_file))
        .await
        .unwrap();
    let a = format!("https://localhost:{}", sa.local_addr().port());
    let b = format!("https://localhost:{}", sb.local_addr().port());
    let (ta, ra) = tokio::sync::oneshot::channel::<()>();
    let (tb, rb) = tokio::sync::oneshot::channel::<()>();
    let ja = tokio::spawn(sa.run(async move {
        let _ = ra.await;
    }));
    let jb = tokio::spawn(sb.run(async move {
        let _ = rb.await;
    }));
    flow(node, &s, &tls.pem, &a, &b).await;
    ta.send(()).unwrap();
    tb.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), ja)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), jb)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
