//! The ledger store against real databases: SQLite temp files always, PostgreSQL at
//! `TREASURY_TEST_POSTGRES_URL` (default postgres://postgres@127.0.0.1:5432/test) in a fresh
//! schema per test. PostgreSQL tests skip with a printed reason when it is unreachable, unless
//! `TREASURY_REQUIRE_POSTGRES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use custody::ledger::{
    audit_ledger, Actor, ChainFault, CheckpointError, Entry, EntryDraft, KeyFileSigner, Kind,
    LedgerHead, Payload, VerifierKey,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePool;
use treasury::store::{LedgerStore, StoreError};

const ORIGIN: &str = "reserve.example/ledger";
const T0: i64 = 1_764_057_600_000;

fn signer() -> KeyFileSigner {
    KeyFileSigner::from_secret_bytes(&[0x42; 32]).unwrap()
}

fn vkey() -> VerifierKey {
    VerifierKey::of_signer(ORIGIN, &signer()).unwrap()
}

fn draft(i: u64) -> EntryDraft {
    EntryDraft {
        time_ms: T0 + i as i64,
        kind: Kind::DepositSeen,
        actor: Actor::new("sync").unwrap(),
        payload: Payload::bytes(i.to_be_bytes().to_vec()).unwrap(),
    }
}

fn pg_url() -> String {
    std::env::var("TREASURY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn pg_required() -> bool {
    std::env::var("TREASURY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        t % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Raw access to the tables, as an attacker with file or superuser access has.
enum Raw {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

impl Raw {
    async fn exec(&self, sql: &str) {
        match self {
            Raw::Sqlite(p) => {
                sqlx::raw_sql(sql).execute(p).await.unwrap();
            }
            Raw::Pg(p) => {
                sqlx::raw_sql(sql).execute(p).await.unwrap();
            }
        }
    }

    async fn try_exec(&self, sql: &str) -> Result<(), String> {
        match self {
            Raw::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            Raw::Pg(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        }
        .map_err(|e| e.to_string())
    }

    async fn drop_triggers(&self) {
        match self {
            Raw::Sqlite(_) => {
                self.exec(
                    "DROP TRIGGER ledger_entries_no_update; DROP TRIGGER ledger_entries_no_delete;",
                )
                .await
            }
            Raw::Pg(_) => {
                self.exec("DROP TRIGGER ledger_entries_no_update_delete ON ledger_entries")
                    .await
            }
        }
    }

    async fn set_blob(&self, seq: i64, column: &str, value: Vec<u8>) {
        let q = format!("UPDATE ledger_entries SET {column} = $1 WHERE seq = $2");
        match self {
            Raw::Sqlite(p) => {
                sqlx::query(&q)
                    .bind(value)
                    .bind(seq)
                    .execute(p)
                    .await
                    .unwrap();
            }
            Raw::Pg(p) => {
                sqlx::query(&q)
                    .bind(value)
                    .bind(seq)
                    .execute(p)
                    .await
                    .unwrap();
            }
        }
    }

    async fn insert(&self, e: &Entry) {
        let q = "INSERT INTO ledger_entries (seq, time_ms, kind, actor, payload_type, payload, \
                 prev_hash, entry_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        macro_rules! run {
            ($p:expr) => {
                sqlx::query(q)
                    .bind(e.seq() as i64)
                    .bind(e.time_ms())
                    .bind(i32::from(e.kind().code()))
                    .bind(e.actor().as_str())
                    .bind(i32::from(e.payload().payload_type().code()))
                    .bind(e.payload().as_bytes().to_vec())
                    .bind(e.prev_hash().to_vec())
                    .bind(e.entry_hash().to_vec())
                    .execute($p)
                    .await
                    .unwrap()
            };
        }
        match self {
            Raw::Sqlite(p) => {
                run!(p);
            }
            Raw::Pg(p) => {
                run!(p);
            }
        }
    }

    async fn set_head(&self, head: &LedgerHead) {
        let q = "UPDATE ledger_head SET size = $1, last_hash = $2, last_time_ms = $3, \
                 frontier = $4 WHERE id = 1";
        let frontier: Vec<u8> = head.frontier().concat();
        macro_rules! run {
            ($p:expr) => {
                sqlx::query(q)
                    .bind(head.size() as i64)
                    .bind(head.last_hash().to_vec())
                    .bind(head.last_time_ms())
                    .bind(frontier.clone())
                    .execute($p)
                    .await
                    .unwrap()
            };
        }
        match self {
            Raw::Sqlite(p) => {
                run!(p);
            }
            Raw::Pg(p) => {
                run!(p);
            }
        }
    }
}

struct Db {
    name: &'static str,
    url: String,
    schema: Option<String>,
    store: LedgerStore,
    raw: Raw,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    /// Drops the test's PostgreSQL schema (SQLite files go with their temp dir).
    async fn cleanup(self) {
        self.store.close().await;
        if let (Raw::Pg(p), Some(schema)) = (&self.raw, &self.schema) {
            sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(p)
                .await
                .unwrap();
        }
    }

    async fn reopen(&self) -> LedgerStore {
        LedgerStore::open_in_schema(&self.url, self.schema.as_deref())
            .await
            .unwrap()
    }
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let store = LedgerStore::open(&url).await.unwrap();
    let raw = Raw::Sqlite(SqlitePool::connect(&url).await.unwrap());
    Db {
        name: "sqlite",
        url,
        schema: None,
        store,
        raw,
        _dir: Some(dir),
    }
}

async fn postgres() -> Option<Db> {
    let url = pg_url();
    let schema = unique("ledger_test");
    let store = match LedgerStore::open_in_schema(&url, Some(&schema)).await {
        Ok(s) => s,
        Err(e) => {
            if pg_required() {
                panic!("TREASURY_REQUIRE_POSTGRES=1 but PostgreSQL at {url} failed: {e}");
            }
            eprintln!("skipping the PostgreSQL half: {url} unreachable ({e})");
            return None;
        }
    };
    let opts = PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let raw = Raw::Pg(
        PgPoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .unwrap(),
    );
    Some(Db {
        name: "postgres",
        url,
        schema: Some(schema),
        store,
        raw,
        _dir: None,
    })
}

async fn both() -> Vec<Db> {
    let mut v = vec![sqlite().await];
    v.extend(postgres().await);
    v
}

fn tampered(r: Result<impl std::fmt::Debug, StoreError>) -> (u64, ChainFault) {
    match r {
        Err(StoreError::Tampered(e)) => (e.seq, e.fault),
        other => panic!("expected tampering, got {other:?}"),
    }
}

async fn fill(db: &Db, n: u64) -> Vec<Entry> {
    let mut out = Vec::new();
    for i in 0..n {
        if i > 0 && i % 7 == 0 {
            out.push(
                db.store
                    .checkpoint(ORIGIN, &Actor::new("ledger").unwrap(), T0, &signer())
                    .await
                    .unwrap()
                    .1,
            );
        }
        out.push(db.store.append(draft(i)).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_batch_verify() {
    for db in both().await {
        let mut entries = Vec::new();
        entries.push(db.store.append(draft(0)).await.unwrap());
        entries.extend(
            db.store
                .append_batch((1..1500).map(draft).collect())
                .await
                .unwrap(),
        );
        let (note, cp_entry) = db
            .store
            .checkpoint(ORIGIN, &Actor::new("ledger").unwrap(), T0, &signer())
            .await
            .unwrap();
        entries.push(cp_entry);
        let stored = db.store.entries().await.unwrap();
        assert_eq!(stored, entries, "{}", db.name);
        let model = LedgerHead::from_entries(&entries).unwrap();
        let head = db.store.head().await.unwrap();
        assert_eq!(head.size(), 1501);
        assert_eq!(head.root(), model.root());
        let cp = vkey().verify(&note).unwrap();
        assert_eq!(cp.size(), 1500);
        let r = db.store.verify(Some(&vkey())).await.unwrap();
        assert_eq!(r.entries, 1501);
        assert_eq!(r.checkpoints, 1);
        assert_eq!(
            r.to_string(),
            format!("ok: 1501 entries, root {}", hex::encode(model.root()))
        );
        // Reopening (migrations again) keeps everything.
        let again = db.reopen().await;
        assert_eq!(again.head().await.unwrap().size(), 1501);
        // An invalid draft writes nothing.
        let mut bad = draft(9);
        bad.kind = Kind::OperatorNote;
        assert!(db.store.append_batch(vec![draft(8), bad]).await.is_err());
        assert_eq!(db.store.head().await.unwrap().size(), 1501, "{}", db.name);
        assert_eq!(db.store.entries().await.unwrap().len(), 1501);
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_reject_update_and_delete() {
    for db in both().await {
        fill(&db, 3).await;
        for sql in [
            "UPDATE ledger_entries SET actor = 'mallory' WHERE seq = 1",
            "DELETE FROM ledger_entries WHERE seq = 2",
        ] {
            let e = db.raw.try_exec(sql).await.unwrap_err();
            assert!(e.contains("append-only"), "{}: {e}", db.name);
        }
        if db.name == "postgres" {
            let e = db
                .raw
                .try_exec("TRUNCATE ledger_entries")
                .await
                .unwrap_err();
            assert!(e.contains("append-only"), "{e}");
        }
        db.store.verify(Some(&vkey())).await.unwrap();
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_columns_are_named() {
    for db in both().await {
        let entries = fill(&db, 20).await;
        db.raw.drop_triggers().await;
        // A payload byte.
        let mut p = entries[5].payload().as_bytes().to_vec();
        p[2] ^= 1;
        db.raw.set_blob(5, "payload", p).await;
        let (seq, f) = tampered(db.store.verify(Some(&vkey())).await);
        assert_eq!(seq, 5, "{}", db.name);
        assert!(matches!(f, ChainFault::HashMismatch { .. }), "{f}");
        db.raw
            .set_blob(5, "payload", entries[5].payload().as_bytes().to_vec())
            .await;
        db.store.verify(Some(&vkey())).await.unwrap();
        // A hash.
        let mut h = entries[9].entry_hash().to_vec();
        h[0] ^= 1;
        db.raw.set_blob(9, "entry_hash", h).await;
        let (seq, f) = tampered(db.store.verify(Some(&vkey())).await);
        assert_eq!(seq, 9);
        assert!(matches!(f, ChainFault::HashMismatch { .. }), "{f}");
        db.raw
            .set_blob(9, "entry_hash", entries[9].entry_hash().to_vec())
            .await;
        // Other columns.
        for (sql, undo, at) in [
            (
                "UPDATE ledger_entries SET time_ms = time_ms + 1 WHERE seq = 3",
                "UPDATE ledger_entries SET time_ms = time_ms - 1 WHERE seq = 3",
                3,
            ),
            (
                "UPDATE ledger_entries SET actor = 'mallory' WHERE seq = 4",
                "UPDATE ledger_entries SET actor = 'sync' WHERE seq = 4",
                4,
            ),
            (
                "UPDATE ledger_entries SET kind = 7 WHERE seq = 6",
                "UPDATE ledger_entries SET kind = 3 WHERE seq = 6",
                6,
            ),
        ] {
            db.raw.exec(sql).await;
            let (seq, _) = tampered(db.store.verify(Some(&vkey())).await);
            assert_eq!(seq, at, "{}: {sql}", db.name);
            db.raw.exec(undo).await;
        }
        db.store.verify(Some(&vkey())).await.unwrap();
        // A malformed row (unknown kind code) is named, not a crash.
        db.raw
            .exec("UPDATE ledger_entries SET kind = 999 WHERE seq = 2")
            .await;
        let (seq, f) = tampered(db.store.verify(Some(&vkey())).await);
        assert_eq!(seq, 2);
        assert!(f.to_string().contains("unknown kind code 999"), "{f}");
        db.raw
            .exec("UPDATE ledger_entries SET kind = 3 WHERE seq = 2")
            .await;
        // Swapped rows.
        db.raw
            .exec(
                "UPDATE ledger_entries SET seq = 1000000 WHERE seq = 11; \
                   UPDATE ledger_entries SET seq = 11 WHERE seq = 12; \
                   UPDATE ledger_entries SET seq = 12 WHERE seq = 1000000;",
            )
            .await;
        let (seq, _) = tampered(db.store.verify(Some(&vkey())).await);
        assert_eq!(seq, 11, "{}", db.name);
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_and_deleted_tails_are_named() {
    for db in both().await {
        let entries = fill(&db, 20).await;
        let n = entries.len() as u64;
        let head_before = db.store.head().await.unwrap();
        let note = head_before
            .checkpoint(ORIGIN, T0)
            .unwrap()
            .sign(&signer())
            .unwrap();
        db.raw.drop_triggers().await;
        db.raw
            .exec("DELETE FROM ledger_entries WHERE seq = 10")
            .await;
        let (seq, f) = tampered(db.store.verify(Some(&vkey())).await);
        assert_eq!(
            (seq, f),
            (
                10,
                ChainFault::Missing {
                    expected: 10,
                    found: 11
                }
            ),
            "{}",
            db.name
        );
        db.raw.insert(&entries[10]).await;
        db.store.verify(Some(&vkey())).await.unwrap();
        // Delete the tail, behind the checkpoint held by an auditor.
        db.raw
            .exec(&format!(
                "DELETE FROM ledger_entries WHERE seq >= {}",
                n - 4
            ))
            .await;
        let (seq, _) = tampered(db.store.verify(Some(&vkey())).await);
        assert_eq!(seq, n - 4, "{}", db.name);
        // An attacker who also rewinds the head row fools the database alone...
        let rewound = LedgerHead::from_entries(&entries[..(n - 4) as usize]).unwrap();
        db.raw.set_head(&rewound).await;
        db.store.verify(Some(&vkey())).await.unwrap();
        // ...but not the auditor's checkpoint.
        let export = db.store.entries().await.unwrap();
        let e = audit_ledger(&export, &note, &vkey()).unwrap_err();
        assert!(
            e.to_string().contains(&format!("first bad seq {}", n - 4)),
            "{}: {e}",
            db.name
        );
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_checkpoint_signature_is_named() {
    for db in both().await {
        let entries = fill(&db, 12).await;
        let at = entries
            .iter()
            .position(|e| e.kind() == Kind::Checkpoint)
            .unwrap();
        // The attacker rewrites the log from the checkpoint on, with a checkpoint signed by
        // their own key, every hash and link recomputed, the head row updated.
        let mut head = LedgerHead::from_entries(&entries[..at]).unwrap();
        let mallory = KeyFileSigner::from_secret_bytes(&[0x66; 32]).unwrap();
        let note = head.checkpoint(ORIGIN, T0).unwrap().sign(&mallory).unwrap();
        let mut forged = vec![head
            .append(EntryDraft {
                time_ms: T0,
                kind: Kind::Checkpoint,
                actor: Actor::new("ledger").unwrap(),
                payload: Payload::checkpoint(note).unwrap(),
            })
            .unwrap()];
        for e in &entries[at + 1..] {
            forged.push(
                head.append(EntryDraft {
                    time_ms: e.time_ms(),
                    kind: e.kind(),
                    actor: e.actor().clone(),
                    payload: e.payload().clone(),
                })
                .unwrap(),
            );
        }
        db.raw.drop_triggers().await;
        db.raw
            .exec(&format!("DELETE FROM ledger_entries WHERE seq >= {at}"))
            .await;
        for e in &forged {
            db.raw.insert(e).await;
        }
        db.raw.set_head(&head).await;
        // Without the key the forgery is consistent; with it, the checkpoint is named.
        db.store.verify(None).await.unwrap();
        let (seq, f) = tampered(db.store.verify(Some(&vkey())).await);
        assert_eq!(seq, at as u64, "{}", db.name);
        assert!(
            matches!(
                f,
                ChainFault::Checkpoint(CheckpointError::NoSignatureFromKey { .. })
            ),
            "{f}"
        );
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_serialize() {
    for db in both().await {
        let tasks = 8;
        let per = if db.name == "sqlite" { 100 } else { 250 };
        let mut handles = Vec::new();
        for t in 0..tasks {
            let store = db.store.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..per {
                    store
                        .append(
                            EntryDraft::note(T0, &format!("task-{t}"), &format!("{i}")).unwrap(),
                        )
                        .await
                        .unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let r = db.store.verify(None).await.unwrap();
        assert_eq!(r.entries, tasks * per, "{}", db.name);
        db.cleanup().await;
    }
}

/// Not a test on its own: the child process of the multi-process and crash tests.
#[test]
#[ignore = "child process of the multi-process and crash tests"]
fn child_appender() {
    let Ok(url) = std::env::var("TREASURY_CHILD_DB") else {
        return;
    };
    let schema = std::env::var("TREASURY_CHILD_SCHEMA").ok();
    let tasks: u64 = std::env::var("TREASURY_CHILD_TASKS")
        .unwrap()
        .parse()
        .unwrap();
    let per: u64 = std::env::var("TREASURY_CHILD_APPENDS")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = LedgerStore::open_in_schema(&url, schema.as_deref())
            .await
            .unwrap();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..per {
                    let d = EntryDraft::note(
                        T0,
                        &format!("p{}-t{t}", std::process::id()),
                        &format!("{i}"),
                    )
                    .unwrap();
                    let e = store.append(d).await.unwrap();
                    // Reported success: the parent checks these are all present after a kill.
                    println!("APPENDED {} {}", e.seq(), hex::encode(e.entry_hash()));
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
}

fn spawn_child(url: &str, schema: Option<&str>, tasks: u64, per: u64) -> std::process::Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "child_appender",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("TREASURY_CHILD_DB", url)
    .env("TREASURY_CHILD_TASKS", tasks.to_string())
    .env("TREASURY_CHILD_APPENDS", per.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(s) = schema {
        c.env("TREASURY_CHILD_SCHEMA", s);
    }
    c.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_postgres_make_one_chain() {
    let Some(db) = postgres().await else { return };
    let per = 1000;
    let mut a = spawn_child(&db.url, db.schema.as_deref(), 8, per);
    let mut b = spawn_child(&db.url, db.schema.as_deref(), 8, per);
    let ok_a = tokio::task::spawn_blocking(move || {
        let n = BufReader::new(a.stdout.take().unwrap())
            .lines()
            .filter(|l| l.as_ref().is_ok_and(|l| l.contains("APPENDED ")))
            .count();
        (a.wait().unwrap(), n)
    });
    let ok_b = tokio::task::spawn_blocking(move || {
        let n = BufReader::new(b.stdout.take().unwrap())
            .lines()
            .filter(|l| l.as_ref().is_ok_and(|l| l.contains("APPENDED ")))
            .count();
        (b.wait().unwrap(), n)
    });
    let (sa, na) = ok_a.await.unwrap();
    let (sb, nb) = ok_b.await.unwrap();
    assert!(sa.success() && sb.success());
    assert_eq!(na + nb, 16_000);
    let r = db.store.verify(None).await.unwrap();
    assert_eq!(r.entries, 16_000);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_loses_a_reported_append() {
    let mut dbs = vec![sqlite().await];
    dbs.extend(postgres().await);
    for db in dbs {
        let mut reported: Vec<(u64, String)> = Vec::new();
        for round in 0..20u64 {
            let mut child = spawn_child(&db.url, db.schema.as_deref(), 2, 1_000_000);
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| {
                        let mut p = l.split("APPENDED ").nth(1)?.split(' ');
                        Some((p.next()?.parse::<u64>().ok()?, p.next()?.to_owned()))
                    })
                    .collect::<Vec<_>>()
            });
            // Let it start and append for a pseudo-random while, then SIGKILL it.
            let ms = 150 + (round * 7919 + 13) % 350;
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            child.kill().unwrap();
            child.wait().unwrap();
            reported.extend(reader.join().unwrap());
        }
        let r = db.store.verify(None).await.unwrap();
        let entries = db.store.entries().await.unwrap();
        assert!(
            !reported.is_empty(),
            "{}: no child appended anything",
            db.name
        );
        for (seq, hash) in &reported {
            let e = &entries[*seq as usize];
            assert_eq!(&hex::encode(e.entry_hash()), hash, "{} seq {seq}", db.name);
        }
        eprintln!(
            "{}: {} entries after 20 kills, {} reported appends present",
            db.name,
            r.entries,
            reported.len()
        );
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_are_clear_errors() {
    let e = LedgerStore::open("mysql://x").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported database url \"mysql://x\" (expected sqlite:// or postgres://)"
    );
}
