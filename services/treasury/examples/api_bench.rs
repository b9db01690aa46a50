//! The API load benchmark's servers (docs/BENCHMARKS.md, "API"): the real API against a funded
//! regtest demo, and beside it a bare axum + rustls handler returning a fixed JSON body, both
//! on loopback with the same TLS configuration, accept loop and runtime (2 worker threads).
//!
//! It sets up (or reuses) a demo in `target/api-bench` with enough coins for the spend
//! creation measurement, measures the spend-request creation rate itself (POST through the API,
//! one and 16 clients), writes `target/api-bench/bench.env` (URLs, token, entry seq) and waits
//! for Ctrl-C while `scripts/bench-api` drives `wrk` against both servers.
//!
//! ```sh
//! scripts/bench-api            # builds this example in release mode and runs the whole matrix
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use axum::routing::get;
use axum::Router;
use bdk_wallet::bitcoin::Address;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use treasury::api::config::ServeConfig;
use treasury::demo::{self, DemoOptions, VAULT};
use treasury::node::{NodeAuth, NodeConfig};
use treasury::service::spend::{At, SpendService};
use treasury::service::vaults::VaultService;
use treasury::store::LedgerStore;

/// Coins the vault needs: every created request reserves one coinbase (48 per run; the run
/// cancels them at the end).
const COINS: usize = 260;
/// Spend requests created per measurement.
const CREATES: usize = 16;

/// The bare handler's body: the size of a balance answer.
const BARE_BODY: &str = r#"{"vault":"reserve","confirmed_sat":1300000000000,"pending_sat":0,"immature_sat":0,"reserved_sat":0,"tip_height":1234}"#;

async fn bare_server(cfg: &ServeConfig) -> SocketAddr {
    let tls = treasury::api::server::tls_config(&cfg.server).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route(
        "/bare",
        get(|| async { ([("content-type", "application/json")], BARE_BODY) }),
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = TowerToHyperService::new(router);
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// Mines coinbases to the vault until it holds `COINS` spendable coins.
async fn fund(setup: &demo::Setup) {
    let ledger = LedgerStore::open(&setup.layout.db_url()).await.unwrap();
    let svc = VaultService::new(ledger.clone());
    let node_cfg = NodeConfig {
        url: setup.node.rpc_url(),
        auth: NodeAuth::Cookie(setup.layout.cookie()),
    };
    let (vault, _) = svc.sync(VAULT, &node_cfg).await.unwrap();
    let have = vault.utxos().len();
    if have < COINS {
        eprintln!("[bench] mining {} coinbases to the vault", COINS - have);
        for i in have..COINS {
            if i % 50 == 0 {
                // Mined-to addresses count as used only after a sync (gap limit).
                svc.sync(VAULT, &node_cfg).await.unwrap();
            }
            let a = svc.next_address(VAULT).await.unwrap().address.to_string();
            let a = Address::from_str(&a).unwrap().assume_checked();
            setup.node.mine_blocks(1, &a).unwrap();
        }
        let (_, burn) = regtest::test_key("api bench / maturing");
        setup.node.mine_blocks(101, &burn).unwrap();
        svc.sync(VAULT, &node_cfg).await.unwrap();
    }
    ledger.close().await;
}

/// Cancels the requests the measurement created, so their coins serve the next run.
async fn cancel_open(setup: &demo::Setup) {
    let ledger = LedgerStore::open(&setup.layout.db_url()).await.unwrap();
    let svc = SpendService::new(VaultService::new(ledger.clone()));
    let now = treasury::clock::now_ms();
    for (id, _, state) in svc.list(Some(VAULT)).await.unwrap() {
        if state == "pending_approval" {
            svc.cancel(&id, "api-bench", At::ms(now)).await.unwrap();
        }
    }
    ledger.close().await;
}

/// Creates `CREATES` spend requests with `clients` concurrent clients; returns requests/s
/// (failures are printed and counted in the time).
async fn create_rate(url: &str, cert: &[u8], token: &str, clients: usize, run: &str) -> f64 {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert).unwrap())
        .build()
        .unwrap();
    let (_, dest) = regtest::test_key("api bench / destination");
    let body = serde_json::json!({
        "vault": VAULT,
        "payments": [{"address": dest.to_string(), "amount_sat": 100_000}],
        "fee_rate_sat_vb": 2,
    });
    let started = Instant::now();
    let per = CREATES / clients;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, body, url, token, run) = (
            client.clone(),
            body.clone(),
            url.to_string(),
            token.to_string(),
            run.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let resp = client
                    .post(format!("{url}/v1/spends"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", format!("bench-{run}-{c}-{i}"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let text = resp.text().await.unwrap();
                if !status.is_success() {
                    eprintln!("[bench] create: {status} {text}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (per * clients) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    // `BENCH_TRACE=treasury=debug` prints the service's timing events (spend creation phases,
    // vault loads) on stderr.
    if let Ok(filter) = std::env::var("BENCH_TRACE") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/api-bench"));
    let opts = DemoOptions {
        dir,
        listen: "127.0.0.1:0".parse().unwrap(),
        exit_after_setup: false,
        software_key: false,
    };
    let mut setup = demo::setup(&opts).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        fund(&setup).await;
        let text = demo::serve_config_text(
            &setup.layout,
            opts.listen,
            &setup.node.rpc_url(),
            &setup.holder,
        );
        let mut cfg = ServeConfig::from_toml_str(&text).unwrap();
        // The benchmark measures the server, not the per-token rate limit.
        cfg.server.rate_limit_per_minute = 1_000_000_000;
        cfg.server.rate_limit_burst = 1_000_000_000;
        let bare = bare_server(&cfg).await;
        let server = treasury::api::bind(cfg).await.unwrap();
        let real = server.local_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));
        let url = format!("https://localhost:{}", real.port());
        let token = setup.tokens["demo-integrator"].token.clone();
        let auditor = setup.tokens["demo-auditor"].token.clone();
        let cert = std::fs::read(setup.layout.tls_cert()).unwrap();

        let run = format!("{}", treasury::clock::now_ms());
        let one = create_rate(&url, &cert, &token, 1, &format!("{run}-1")).await;
        let four = create_rate(&url, &cert, &token, 4, &format!("{run}-4")).await;
        let sixteen = create_rate(&url, &cert, &token, 16, &format!("{run}-16")).await;
        println!("spend-request creation: {one:.1} req/s (1 client), {four:.1} req/s (4 clients), {sixteen:.1} req/s (16 clients), {CREATES} requests each");
        cancel_open(&setup).await;

        let env = format!(
            "BARE_URL=https://localhost:{}/bare\nBALANCE_URL={url}/v1/vaults/{VAULT}/balance\nENTRY_URL={url}/v1/ledger/entries/1\nTOKEN={token}\nTOKEN_AUDITOR={auditor}\nCREATE_1={one:.1}\nCREATE_4={four:.1}\nCREATE_16={sixteen:.1}\n",
            bare.port()
        );
        std::fs::write(setup.layout.dir.join("bench.env"), env).unwrap();
        println!("bench ready");
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(());
        let _ = serving.await;
    });
    drop(rt);
    setup.node.stop().unwrap();
}
