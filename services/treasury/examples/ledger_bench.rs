//! Ledger benchmarks (issue 3): append throughput on SQLite (and PostgreSQL when
//! `TREASURY_TEST_POSTGRES_URL` is set), in-memory verification of 1,000,000 entries against
//! the bare hashcore cost of hashing the same bytes, and the tree head of 1,000,000 entries.
//!
//! Run: `cargo run --release -p treasury --example ledger_bench`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::time::{Duration, Instant};

use custody::ledger::{verify_chain, EntryDraft, LedgerHead, ENTRY_HASH_TAG};
use hashcore::merkle::rfc9162;
use hashcore::{Digest, Engine, TaggedHash};
use sqlx::postgres::PgPoolOptions;
use treasury::store::LedgerStore;

const T0: i64 = 1_764_057_600_000;
const SINGLE: usize = 2_000;
const BATCHES: usize = 50;
const BATCH: usize = 1_000;
const BIG: usize = 1_000_000;

fn draft(i: usize) -> EntryDraft {
    let t = T0 + i64::try_from(i).unwrap();
    EntryDraft::note(t, "bench", &format!("operator note number {i}")).unwrap()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn bench_store(name: &str, store: &LedgerStore) {
    let start = Instant::now();
    for i in 0..SINGLE {
        store.append(draft(i)).await.unwrap();
    }
    let d = start.elapsed();
    println!(
        "{name:<8} append single        {SINGLE:>9} entries {:>10.1} ms {:>10.0} entries/s",
        ms(d),
        rate(SINGLE, d)
    );

    let batches: Vec<Vec<EntryDraft>> = (0..BATCHES)
        .map(|b| (0..BATCH).map(|j| draft(SINGLE + b * BATCH + j)).collect())
        .collect();
    let start = Instant::now();
    for b in batches {
        store.append_batch(b).await.unwrap();
    }
    let d = start.elapsed();
    let n = BATCHES * BATCH;
    println!(
        "{name:<8} append batch of {BATCH}  {n:>9} entries {:>10.1} ms {:>10.0} entries/s",
        ms(d),
        rate(n, d)
    );

    let total = SINGLE + n;
    let start = Instant::now();
    let entries = store.entries().await.unwrap();
    let d_read = start.elapsed();
    assert_eq!(entries.len(), total);
    println!(
        "{name:<8} read all entries      {total:>9} entries {:>10.1} ms {:>10.0} entries/s",
        ms(d_read),
        rate(total, d_read)
    );
    let start = Instant::now();
    let report = store.verify(None).await.unwrap();
    let d = start.elapsed();
    println!(
        "{name:<8} store verify (r+v)    {total:>9} entries {:>10.1} ms {:>10.0} entries/s  ({report})",
        ms(d),
        rate(total, d)
    );
}

async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let store = LedgerStore::open(&url).await.unwrap();
    bench_store("sqlite", &store).await;
    store.close().await;
}

async fn postgres(url: &str) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = format!("ledger_bench_{}_{}", std::process::id(), t % 1_000_000_000);
    let store = LedgerStore::open_in_schema(url, Some(&schema))
        .await
        .unwrap();
    bench_store("postgres", &store).await;
    store.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

fn in_memory() {
    let engine = Engine::auto();
    let start = Instant::now();
    let mut head = LedgerHead::genesis();
    let entries = head.append_batch((0..BIG).map(draft)).unwrap();
    println!(
        "memory   build entries         {BIG:>9} entries {:>10.1} ms (setup, not a target)",
        ms(start.elapsed())
    );
    let expected_root = head.root();

    // The anchor's input, prepared outside the timing: every entry's canonical body bytes.
    let bodies: Vec<Vec<u8>> = entries.iter().map(|e| e.encode_body()).collect();
    let body_bytes: usize = bodies.iter().map(Vec::len).sum();
    let tagged = TaggedHash::new(ENTRY_HASH_TAG);

    // Warm-up of both paths.
    for b in bodies.iter().take(10_000) {
        std::hint::black_box(tagged.hash(b));
    }
    std::hint::black_box(verify_chain(&entries[..10_000], None).unwrap());

    let mut best_verify = Duration::MAX;
    let mut best_entry_anchor = Duration::MAX;
    let mut best_full_anchor = Duration::MAX;
    let mut best_head = Duration::MAX;
    for _ in 0..2 {
        // Verification: seq, entry hash recomputed, prev link, time, compact tree and root.
        let start = Instant::now();
        let log = verify_chain(&entries, None).unwrap();
        let root = log.head.root();
        best_verify = best_verify.min(start.elapsed());
        assert_eq!(root, expected_root);

        // Anchor A: the tagged entry hash of every body, once.
        let start = Instant::now();
        let hashes: Vec<Digest> = bodies.iter().map(|b| tagged.hash(b)).collect();
        let d_entry = start.elapsed();
        best_entry_anchor = best_entry_anchor.min(d_entry);

        // Anchor B: A plus the tree: batched leaf hashes of the entry hashes and the root.
        let start = Instant::now();
        let flat = hashes.concat();
        let leaves = rfc9162::leaf_hashes_fixed(engine, &flat, 32).unwrap();
        let root = rfc9162::root(engine, &leaves);
        best_full_anchor = best_full_anchor.min(d_entry + start.elapsed());
        assert_eq!(root, expected_root);

        // Tree head of 1,000,000 entries from their leaf hashes.
        let start = Instant::now();
        let root = rfc9162::root(engine, &leaves);
        best_head = best_head.min(start.elapsed());
        assert_eq!(root, expected_root);
    }
    println!(
        "memory   entry bytes           {BIG:>9} entries {:>10.1} MB body bytes",
        body_bytes as f64 / 1e6
    );
    println!(
        "memory   verify_chain + root   {BIG:>9} entries {:>10.1} ms {:>10.0} entries/s",
        ms(best_verify),
        rate(BIG, best_verify)
    );
    println!(
        "memory   anchor A: tagged hash {BIG:>9} entries {:>10.1} ms {:>10.0} entries/s  verify/A = {:.2}x",
        ms(best_entry_anchor),
        rate(BIG, best_entry_anchor),
        best_verify.as_secs_f64() / best_entry_anchor.as_secs_f64()
    );
    println!(
        "memory   anchor B: A + tree    {BIG:>9} entries {:>10.1} ms {:>10.0} entries/s  verify/B = {:.2}x",
        ms(best_full_anchor),
        rate(BIG, best_full_anchor),
        best_verify.as_secs_f64() / best_full_anchor.as_secs_f64()
    );
    println!(
        "memory   tree head (root)      {BIG:>9} entries {:>10.1} ms {:>10.0} leaves/s",
        ms(best_head),
        rate(BIG, best_head)
    );
}

#[tokio::main]
async fn main() {
    println!("engine: {:?}", Engine::auto().backend());
    sqlite().await;
    match std::env::var("TREASURY_TEST_POSTGRES_URL") {
        Ok(url) => postgres(&url).await,
        Err(_) => println!("postgres skipped: TREASURY_TEST_POSTGRES_URL not set"),
    }
    in_memory();
}
