//! The HTTPS API's handlers through `app().oneshot()` on SQLite (no node): the route × role
//! matrix (the table below is the one in docs/api.md), problem+json errors, bad input that
//! persists nothing, rate limits, tokens, and the committed OpenAPI document.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::Network;
use custody::ledger::KeyFileSigner;
use custody::vault::{Template, TemplateKey, VaultConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use treasury::api::{app, issue_token, AppState, Limits, Role};
use treasury::store::LedgerStore;

const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");

fn officer_key(seed: u8) -> TemplateKey {
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(Network::Regtest, &[seed; 32]).unwrap();
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let acct = master.derive_priv(&secp, &path).unwrap();
    let fp = master.fingerprint(&secp);
    TemplateKey::parse(&format!(
        "[{fp}/48'/1'/0'/2']{}",
        Xpub::from_priv(&secp, &acct)
    ))
    .unwrap()
}

struct World {
    _dir: tempfile::TempDir,
    store: LedgerStore,
    state: AppState,
    tokens: Vec<(Role, String)>,
}

impl World {
    async fn new(limits: Limits) -> World {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("api.db").display());
        let store = LedgerStore::open(&url).await.unwrap();
        World::on(limits, store, dir).await
    }

    /// The same world on `store` (e.g. a PostgreSQL schema).
    async fn on(limits: Limits, store: LedgerStore, dir: tempfile::TempDir) -> World {
        let svc = treasury::service::vaults::VaultService::new(store.clone());
        // k = every key: the policy key signs every spend
        let t = Template::SortedMulti {
            k: 3,
            officers: vec![officer_key(1), officer_key(2)],
            policy_key: officer_key(3),
        };
        let d = t.build(Network::Regtest).unwrap();
        svc.create(VaultConfig::new("v1", d, 0).unwrap(), "create")
            .await
            .unwrap();
        treasury::service::governance::Governance::new(store.clone())
            .init(EXAMPLE, "admin", 1_000)
            .await
            .unwrap();
        let key = KeyFileSigner::key_file_text(&[7u8; 32]);
        let state = AppState::builder()
            .ledger("test.example/ledger", Some(key))
            .limits(limits)
            .build(store.clone());
        let mut tokens = Vec::new();
        for role in Role::ALL {
            let t = issue_token(&store, &format!("{role}-1"), role, &[], 2_000)
                .await
                .unwrap();
            tokens.push((role, t));
        }
        World {
            _dir: dir,
            store,
            state,
            tokens,
        }
    }

    fn token(&self, role: Role) -> &str {
        &self.tokens.iter().find(|(r, _)| *r == role).unwrap().1
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, http::HeaderMap, Vec<u8>) {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(s) => b
                .header("content-type", "application/json")
                .body(Body::from(s))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, bytes)
    }

    async fn head(&self) -> (u64, [u8; 32]) {
        let h = self.store.head().await.unwrap();
        (h.size(), h.root())
    }
}

fn problem_type(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["type"].as_str().unwrap().to_owned()
}

/// Roles by initial: A admin, O officer, U auditor, I integrator.
fn roles(s: &str) -> Vec<Role> {
    s.chars()
        .map(|c| match c {
            'A' => Role::Admin,
            'O' => Role::Officer,
            'U' => Role::Auditor,
            'I' => Role::Integrator,
            _ => panic!("bad role letter {c}"),
        })
        .collect()
}

/// The route × role matrix (docs/api.md has the same table): method, path, body, the roles
/// allowed, and the status an allowed role gets in this world (one vault `v1`, an active
/// policy, no spend request: request routes answer 404 once authorized). Every other role
/// gets 403; no token and an unknown token get 401.
const MATRIX: &[(&str, &str, Option<&str>, &str, u16)] = &[
    ("GET", "/v1/whoami", None, "AOUI", 200),
    ("GET", "/v1/vaults", None, "AOUI", 200),
    ("GET", "/v1/vaults/v1", None, "AOUI", 200),
    ("GET", "/v1/vaults/v1/balance", None, "AOUI", 200),
    ("GET", "/v1/vaults/v1/utxos", None, "AOUI", 200),
    ("GET", "/v1/vaults/v1/export?format=bsms", None, "AOU", 200),
    ("POST", "/v1/vaults/v1/addresses", None, "AI", 201),
    (
        "GET",
        "/v1/vaults/v1/addresses/bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
        None,
        "AOUI",
        422,
    ),
    ("POST", "/v1/vaults/v1/sync", None, "AO", 503),
    (
        "POST",
        "/v1/spends",
        Some(
            r#"{"vault":"v1","payments":[{"address":"bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080","amount_sat":1000}],"fee_rate_sat_vb":2}"#,
        ),
        "AOI",
        422,
    ),
    ("GET", "/v1/spends", None, "AOUI", 200),
    ("GET", "/v1/spends/nope", None, "AOUI", 404),
    (
        "POST",
        "/v1/spends/nope/approvals",
        Some(
            r#"{"request_id":"nope","approver":"officer-1","pubkey":"0000000000000000000000000000000000000000000000000000000000000000","decision":"approve","digest":"0000000000000000000000000000000000000000000000000000000000000000","signature":"00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"}"#,
        ),
        "O",
        404,
    ),
    (
        "POST",
        "/v1/spends/nope/psbts",
        Some(r#"{"psbt":"cHNidP8="}"#),
        "O",
        404,
    ),
    ("POST", "/v1/spends/nope/policy-sign", None, "AO", 404),
    ("POST", "/v1/spends/nope/broadcast", None, "AOI", 404),
    ("POST", "/v1/spends/nope/follow", None, "AOI", 404),
    ("POST", "/v1/spends/nope/cancel", None, "AOI", 404),
    (
        "POST",
        "/v1/spends/nope/bump",
        Some(r#"{"fee_rate_sat_vb":10}"#),
        "AOI",
        404,
    ),
    ("GET", "/v1/policies", None, "AOU", 200),
    ("GET", "/v1/policies/active", None, "AOUI", 200),
    (
        "POST",
        "/v1/policies/proposals",
        Some(r#"{"document":"not a policy"}"#),
        "A",
        422,
    ),
    (
        "POST",
        "/v1/policies/proposals/00/approvals",
        Some(r#"{"signatures":[]}"#),
        "A",
        404,
    ),
    (
        "POST",
        "/v1/policies/simulate",
        Some(r#"{"request":{}}"#),
        "AOUI",
        422,
    ),
    (
        "GET",
        "/v1/ledger/entries?from=0&limit=5",
        None,
        "AOUI",
        200,
    ),
    ("GET", "/v1/ledger/entries/0", None, "AOUI", 200),
    ("GET", "/v1/ledger/head", None, "AOUI", 200),
    ("POST", "/v1/ledger/checkpoints", None, "AU", 201),
    ("GET", "/v1/ledger/checkpoints/latest", None, "AOUI", 200),
    (
        "GET",
        "/v1/ledger/proofs/inclusion?seq=0",
        None,
        "AOUI",
        200,
    ),
    (
        "GET",
        "/v1/ledger/proofs/consistency?from=1",
        None,
        "AOUI",
        200,
    ),
    (
        "POST",
        "/v1/reserves/proofs",
        Some(r#"{"vaults":["v1"]}"#),
        "AU",
        503,
    ),
    ("GET", "/v1/reserves/proofs", None, "AOU", 200),
    ("GET", "/v1/reserves/proofs/nope", None, "AOU", 404),
    ("GET", "/v1/reserves/proofs/nope/psbt", None, "AOU", 404),
    (
        "POST",
        "/v1/reserves/proofs/nope/psbt",
        Some(r#"{"psbt":"cHNidP8="}"#),
        "O",
        404,
    ),
    (
        "POST",
        "/v1/reserves/proofs/nope/policy-signature",
        None,
        "AO",
        404,
    ),
    (
        "POST",
        "/v1/reserves/proofs/nope/finalize",
        None,
        "AOU",
        404,
    ),
    ("GET", "/v1/reserves/proofs/nope/bundle", None, "AU", 404),
    (
        "GET",
        "/v1/reserves/proofs/nope/psbt?form=bip322",
        None,
        "AOU",
        404,
    ),
    ("GET", "/v1/reserves/proofs/nope/subject", None, "AOU", 404),
    (
        "GET",
        "/v1/reserves/proofs/nope/approvals",
        None,
        "AOU",
        404,
    ),
    (
        "POST",
        "/v1/reserves/proofs/nope/approvals",
        Some(
            r#"{"request_id":"nope","approver":"officer-1","pubkey":"0000000000000000000000000000000000000000000000000000000000000000","decision":"approve","digest":"0000000000000000000000000000000000000000000000000000000000000000","signature":"00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"}"#,
        ),
        "O",
        404,
    ),
    ("GET", "/v1/tokens", None, "A", 200),
    ("DELETE", "/v1/tokens/nope", None, "A", 404),
];

#[tokio::test]
async fn route_role_matrix() {
    let w = World::new(Limits {
        per_minute: 100_000,
        burst: 100_000,
        ..Limits::default()
    })
    .await;
    // A checkpoint first, so "latest" exists for every role.
    let (s, _, _) = w
        .call(
            "POST",
            "/v1/ledger/checkpoints",
            Some(w.token(Role::Admin)),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for (method, path, body, allowed, ok) in MATRIX {
        let allowed = roles(allowed);
        for role in Role::ALL {
            let (s, h, b) = w
                .call(method, path, Some(w.token(role)), body.map(str::to_owned))
                .await;
            if allowed.contains(&role) {
                assert_eq!(
                    s.as_u16(),
                    *ok,
                    "{method} {path} as {role}: {}",
                    String::from_utf8_lossy(&b)
                );
            } else {
                assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path} as {role}");
                assert_eq!(
                    problem_type(&b),
                    "https://reserve.invalid/problems/forbidden"
                );
            }
            if !s.is_success() {
                assert_eq!(
                    h["content-type"], "application/problem+json",
                    "{method} {path}"
                );
            }
        }
        for token in [None, Some("trsy_0000"), Some("not-a-token")] {
            let (s, h, b) = w.call(method, path, token, body.map(str::to_owned)).await;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert_eq!(
                problem_type(&b),
                "https://reserve.invalid/problems/unauthorized"
            );
            assert!(h.contains_key("www-authenticate"));
        }
    }
    // The table covers every documented route (and the docs hold the same table).
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md")).unwrap();
    for (method, path, _, allowed, _) in MATRIX {
        let route = path.split('?').next().unwrap();
        let line = format!("| {method} | `{}` | {allowed} |", template(route));
        assert!(doc.contains(&line), "docs/api.md lacks the row {line}");
    }
}

/// The documented template of a concrete path of the matrix.
fn template(path: &str) -> String {
    let segs: Vec<&str> = path.split('/').collect();
    let mut out = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let prev = if i > 0 { segs[i - 1] } else { "" };
        out.push(match (prev, *s) {
            ("vaults", _) => "{name}".to_owned(),
            ("addresses", _) => "{address}".to_owned(),
            ("spends", _) | ("tokens", _) => "{id}".to_owned(),
            ("proofs", _) if i >= 2 && segs[i - 2] == "reserves" => "{id}".to_owned(),
            ("proposals", x) if !x.is_empty() => "{hash}".to_owned(),
            ("entries", _) => "{seq}".to_owned(),
            _ => (*s).to_owned(),
        });
    }
    out.join("/")
}

#[tokio::test]
async fn bad_input_is_a_problem_and_persists_nothing() {
    let w = World::new(Limits {
        body_bytes: 2048,
        per_minute: 100_000,
        burst: 100_000,
        ..Limits::default()
    })
    .await;
    let before = w.head().await;
    let tok = w.token(Role::Integrator);
    let addr = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "bad-request"),
        (json!({"vault": "v1"}).to_string(), 422, "validation"),
        (json!({"vault": "v1", "payments": [{"address": addr, "amount_sat": 1000}], "fee_rate_sat_vb": 2, "fee": 1}).to_string(), 422, "validation"),
        (json!({"vault": "v1", "payments": [{"address": addr, "amount_sat": -5}], "fee_rate_sat_vb": 2}).to_string(), 422, "validation"),
        (r#"{"vault":"v1","payments":[{"address":"ADDR","amount_sat":18446744073709551616}],"fee_rate_sat_vb":2}"#.replace("ADDR", addr), 422, "validation"),
        (json!({"vault": "v1", "payments": [{"address": addr, "amount_sat": 2_100_000_000_000_001u64}], "fee_rate_sat_vb": 2}).to_string(), 422, "validation"),
        (json!({"vault": "v1", "payments": [{"address": addr, "amount_sat": 2_000_000_000_000_000u64}, {"address": addr, "amount_sat": 2_000_000_000_000_000u64}], "fee_rate_sat_vb": 2}).to_string(), 422, "validation"),
        (json!({"vault": "v1", "payments": [{"address": addr, "amount_sat": 0}], "fee_rate_sat_vb": 2}).to_string(), 422, "validation"),
        // mainnet address for a regtest vault
        (json!({"vault": "v1", "payments": [{"address": "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "amount_sat": 1000}], "fee_rate_sat_vb": 2}).to_string(), 422, "validation"),
        (json!({"vault": "v1", "payments": [{"address": addr, "amount_sat": 1000}], "fee_rate_sat_vb": 0}).to_string(), 422, "validation"),
        (json!({"vault": "v1", "payments": [{"address": addr, "amount_sat": 1000}], "fee_rate_sat_vb": 2, "memo": "x".repeat(3000)}).to_string(), 413, "payload-too-large"),
        (json!({"vault": "nope", "payments": [{"address": addr, "amount_sat": 1000}], "fee_rate_sat_vb": 2}).to_string(), 404, "not-found"),
    ];
    for (body, status, ty) in cases {
        let (s, h, b) = w
            .call("POST", "/v1/spends", Some(tok), Some(body.clone()))
            .await;
        assert_eq!(
            s.as_u16(),
            status,
            "{body}: {}",
            String::from_utf8_lossy(&b)
        );
        assert_eq!(h["content-type"], "application/problem+json");
        assert_eq!(
            problem_type(&b),
            format!("https://reserve.invalid/problems/{ty}")
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["status"], status);
        // never internals
        let detail = v["detail"].as_str().unwrap();
        assert!(
            !detail.contains("sqlite") && !detail.contains("SELECT"),
            "{detail}"
        );
        assert_eq!(w.head().await, before, "{body} changed the ledger");
    }
    // No content type: 415.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/spends")
        .header("authorization", format!("Bearer {tok}"))
        .body(Body::from("{}"))
        .unwrap();
    let resp = app(w.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Bad query values and unknown query fields are 400 problems.
    let (s, _, b) = w
        .call("GET", "/v1/ledger/entries?from=-1", Some(tok), None)
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let (s, _, _) = w.call("GET", "/v1/nowhere", Some(tok), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, b) = w.call("DELETE", "/v1/vaults", Some(tok), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        problem_type(&b),
        "https://reserve.invalid/problems/method-not-allowed"
    );
    assert_eq!(w.head().await, before);
}

#[tokio::test]
async fn vault_scopes_and_rate_limits() {
    let w = World::new(Limits {
        per_minute: 60,
        burst: 3,
        ..Limits::default()
    })
    .await;
    let scoped = issue_token(
        &w.store,
        "partner",
        Role::Integrator,
        &["other".into()],
        3_000,
    )
    .await
    .unwrap();
    let (s, _, b) = w
        .call("GET", "/v1/vaults/v1/balance", Some(&scoped), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        problem_type(&b),
        "https://reserve.invalid/problems/forbidden"
    );
    let (s, _, b) = w.call("GET", "/v1/vaults", Some(&scoped), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap(), json!([]));
    let (s, _, _) = w.call("GET", "/v1/ledger/head", Some(&scoped), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // burst of 2 more (one used above on the list... each token has its own bucket)
    let tok = w.token(Role::Auditor).to_owned();
    for _ in 0..3 {
        let (s, _, _) = w.call("GET", "/v1/vaults", Some(&tok), None).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, h, b) = w.call("GET", "/v1/vaults", Some(&tok), None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        problem_type(&b),
        "https://reserve.invalid/problems/rate-limited"
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // another token is not limited by that one
    let (s, _, _) = w
        .call("GET", "/v1/vaults", Some(w.token(Role::Admin)), None)
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn tokens_are_hashed_and_recorded() {
    let w = World::new(Limits::default()).await;
    let before = w.head().await.0;
    let t = issue_token(&w.store, "ops-7", Role::Officer, &["v1".into()], 5_000)
        .await
        .unwrap();
    assert!(t.starts_with("trsy_") && t.len() == 5 + 64);
    let entries = w.store.entries().await.unwrap();
    assert_eq!(entries.len() as u64, before + 1);
    let last = entries.last().unwrap();
    let note = last.payload().as_note().unwrap();
    assert!(note.text().contains("\"principal\":\"ops-7\""));
    assert!(note.text().contains("\"role\":\"officer\""));
    assert!(
        !note.text().contains(&t[5..]),
        "the token itself must not be in the ledger"
    );
    let whoami = w.call("GET", "/v1/whoami", Some(&t), None).await;
    assert_eq!(whoami.0, StatusCode::OK);
    let v: Value = serde_json::from_slice(&whoami.2).unwrap();
    assert_eq!(v["principal"], "ops-7");
    assert_eq!(v["vaults"], json!(["v1"]));
    // bad names persist nothing
    assert!(issue_token(&w.store, "", Role::Admin, &[], 1)
        .await
        .is_err());
    assert!(
        issue_token(&w.store, "x", Role::Admin, &["a".into(), "a".into()], 1)
            .await
            .is_err()
    );
    assert_eq!(w.store.head().await.unwrap().size(), before + 1);
}

/// Status of `GET /v1/whoami` with `token` on `state` (an instance).
async fn whoami_on(state: &AppState, token: &str) -> StatusCode {
    let req = Request::builder()
        .uri("/v1/whoami")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    app(state.clone()).oneshot(req).await.unwrap().status()
}

/// The token cache (ADR 0016) with two instances on one database: the instance that revokes a
/// token refuses it from the next request; another instance keeps its cached answer only until
/// its next revocation check (so with an hour's interval it still answers 200, and with 50 ms
/// it refuses within a bounded wait); with the cache off, at once.
#[tokio::test]
async fn token_cache_honours_revocations() {
    revocations_reach_every_instance(World::new(recheck(3_600_000)).await).await;
}

/// The same with the instances on one PostgreSQL schema (the multi-instance deployment).
#[tokio::test]
async fn token_cache_honours_revocations_on_postgres() {
    let Ok(url) = std::env::var("TREASURY_TEST_POSTGRES_URL") else {
        regtest::skip_or_fail(
            "postgres",
            "token_cache_honours_revocations_on_postgres",
            &"TREASURY_TEST_POSTGRES_URL is not set",
        );
        return;
    };
    let schema = format!("tokens_{}_{}", std::process::id(), rand::random::<u32>());
    let store = LedgerStore::open_in_schema(&url, Some(&schema))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    revocations_reach_every_instance(World::on(recheck(3_600_000), store, dir).await).await;
}

fn recheck(ms: u64) -> Limits {
    Limits {
        token_recheck: Duration::from_millis(ms),
        ..Limits::default()
    }
}

/// `w` re-checks revocations every hour; three more instances on its store.
async fn revocations_reach_every_instance(w: World) {
    let limits = recheck;
    let slow = AppState::builder()
        .limits(limits(3_600_000))
        .build(w.store.clone());
    let quick = AppState::builder()
        .limits(limits(50))
        .build(w.store.clone());
    let uncached = AppState::builder().limits(limits(0)).build(w.store.clone());
    let victim = issue_token(&w.store, "leaky", Role::Integrator, &[], 3_000)
        .await
        .unwrap();
    let unseen = issue_token(&w.store, "other", Role::Integrator, &[], 3_000)
        .await
        .unwrap();
    for st in [&w.state, &slow, &quick, &uncached] {
        assert_eq!(whoami_on(st, &victim).await, StatusCode::OK);
    }
    // Revoked through instance w's API.
    let id = treasury::api::auth::token_hash(&victim)[..16].to_owned();
    let (s, _, b) = w
        .call(
            "DELETE",
            &format!("/v1/tokens/{id}"),
            Some(w.token(Role::Admin)),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        whoami_on(&w.state, &victim).await,
        StatusCode::UNAUTHORIZED,
        "the revoking instance still accepts the token"
    );
    assert_eq!(
        whoami_on(&uncached, &victim).await,
        StatusCode::UNAUTHORIZED
    );
    // The hour-long instance answers from its cache: the cache is really used...
    assert_eq!(whoami_on(&slow, &victim).await, StatusCode::OK);
    // ...but only for answers it has: another token revoked elsewhere is looked up.
    treasury::api::auth::revoke_token(
        &w.store,
        &treasury::api::auth::token_hash(&unseen)[..16],
        "ops",
        4_000,
    )
    .await
    .unwrap();
    assert_eq!(whoami_on(&slow, &unseen).await, StatusCode::UNAUTHORIZED);
    // The 50 ms instance refuses the revoked token after its next check.
    let mut refused = false;
    for _ in 0..100 {
        if whoami_on(&quick, &victim).await == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "a 50 ms instance accepted a revoked token for 2 s");
    // Live tokens are unaffected by the invalidation.
    for st in [&w.state, &slow, &quick, &uncached] {
        assert_eq!(whoami_on(st, w.token(Role::Auditor)).await, StatusCode::OK);
    }
}

#[tokio::test]
async fn health_metrics_and_events_resume() {
    let w = World::new(Limits {
        events_poll: Duration::from_millis(20),
        ..Limits::default()
    })
    .await;
    let (s, _, _) = w.call("GET", "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    // no node configured: not ready
    let (s, _, b) = w.call("GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["database"], "ok");
    assert_eq!(v["node"], "not configured");
    let (s, _, b) = w.call("GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(b).unwrap();
    assert!(
        text.contains(
            "treasury_http_requests_total{method=\"GET\",route=\"/readyz\",status=\"503\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains(&format!("treasury_ledger_size {}", w.head().await.0)));
    // Events from seq 2: the stream yields entries 2.. in order with id = seq.
    let size = w.head().await.0;
    let req = Request::builder()
        .uri("/v1/events")
        .header(
            "authorization",
            format!("Bearer {}", w.token(Role::Auditor)),
        )
        .header("last-event-id", "1")
        .body(Body::empty())
        .unwrap();
    let resp = app(w.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut text = String::new();
    let want = size - 2;
    while text.lines().filter(|l| l.starts_with("id: ")).count() < want as usize {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(d) = frame.into_data() {
            text.push_str(std::str::from_utf8(&d).unwrap());
        }
    }
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids, (2..size).collect::<Vec<_>>());
    // a new entry shows up on the open stream
    issue_token(&w.store, "late", Role::Auditor, &[], 9_000)
        .await
        .unwrap();
    let mut more = String::new();
    while !more.contains(&format!("id: {size}")) {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(d) = frame.into_data() {
            more.push_str(std::str::from_utf8(&d).unwrap());
        }
    }
    assert!(more.contains("event: operator_note"));
    // shutdown ends the stream
    w.state.begin_shutdown();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(f) = body.frame().await {
            f.unwrap();
        }
    })
    .await;
    assert!(end.is_ok(), "the stream did not end at shutdown");
}

#[test]
fn openapi_document_is_committed() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let generated = treasury::api::openapi::openapi_json();
    if std::env::var("TREASURY_REGENERATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the code: run TREASURY_REGENERATE_OPENAPI=1 cargo test -p treasury --test api openapi (or treasury openapi > docs/openapi.json)"
    );
    let v: Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(v["openapi"], "3.1.0");
    for (method, path, ..) in MATRIX {
        let route = template(path.split('?').next().unwrap());
        if route == "/v1/whoami" {
            continue;
        }
        assert!(
            v["paths"][&route][method.to_lowercase()].is_object(),
            "{method} {route} is not in the OpenAPI document"
        );
    }
}

#[test]
fn fee_caps_are_configurable_and_checked() {
    use treasury::api::ServeConfig;
    let base = "[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n[database]\nurl = \"sqlite://x.db\"\n";
    let caps = ServeConfig::from_toml_str(base)
        .unwrap()
        .fees
        .caps()
        .unwrap();
    assert_eq!(caps.max_fee.to_sat(), 1_000_000, "the CLI's default");
    assert_eq!(
        caps.max_fee_rate,
        bdk_wallet::bitcoin::FeeRate::from_sat_per_vb(500).unwrap()
    );
    let cfg = ServeConfig::from_toml_str(&format!(
        "{base}[fees]\nmax_fee_sat = 5000\nmax_fee_rate_sat_vb = 20\n"
    ))
    .unwrap();
    let caps = cfg.fees.caps().unwrap();
    assert_eq!(caps.max_fee.to_sat(), 5000);
    assert_eq!(
        caps.max_fee_rate,
        bdk_wallet::bitcoin::FeeRate::from_sat_per_vb(20).unwrap()
    );
    for (bad, says) in [
        ("max_fee_sat = 0", "fees.max_fee_sat"),
        ("max_fee_sat = 2100000000000001", "fees.max_fee_sat"),
        ("max_fee_rate_sat_vb = 0", "fees.max_fee_rate_sat_vb"),
        ("max_fee_rate_sat_vb = 100001", "fees.max_fee_rate_sat_vb"),
        ("max_fee_sat = -1", "max_fee_sat"),
        ("max_fee = 1", "max_fee"),
    ] {
        let err = ServeConfig::from_toml_str(&format!("{base}[fees]\n{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}
