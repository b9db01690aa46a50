//! The ledger store (sqlx): SQLite as the embedded default, PostgreSQL for production and for
//! several service instances. Same behaviour on both:
//!
//! - append and batch append are one transaction each: entries, hashes and the head row (size,
//!   last hash and time, the RFC 9162 compact frontier) commit together or not at all;
//! - appenders serialize on the head: SQLite takes the write lock up front (`BEGIN IMMEDIATE`),
//!   PostgreSQL locks the head row (`SELECT ... FOR UPDATE`), so concurrent appenders (tasks or
//!   processes) never fork the chain or leave a gap;
//! - entries are never updated or deleted, and triggers reject UPDATE and DELETE.

use std::str::FromStr;
use std::time::Duration;

pub mod idempotency;
pub mod vaults;

use custody::ledger::{ChainError, CheckpointError, EntryError};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not sqlite:// or postgres://.
    #[error("unsupported database url {0:?} (expected sqlite:// or postgres://)")]
    UnsupportedUrl(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// An entry could not be built.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// A checkpoint could not be built or signed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Stored data is inconsistent (found while reading the head or entries).
    #[error("corrupt ledger: {0}")]
    Corrupt(String),
    /// Verification found tampering.
    #[error(transparent)]
    Tampered(#[from] ChainError),
    /// A write run with an append did not change the rows it had to (another writer won).
    #[error("conflict: {0}")]
    Conflict(String),
}

/// A value bound to a [`Write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    /// TEXT.
    Text(String),
    /// BIGINT (INTEGER on SQLite).
    Int(i64),
    /// TEXT or NULL.
    OptText(Option<String>),
    /// BIGINT or NULL.
    OptInt(Option<i64>),
}

/// A statement run in the same transaction as a ledger append ([`LedgerStore::append_with_writes`]):
/// the state change and its ledger entries commit together or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The SQL, with `$1`, `$2`, ... placeholders (both databases accept them).
    pub sql: String,
    /// The values of the placeholders.
    pub args: Vec<SqlValue>,
    /// When set, the statement must change exactly this many rows, else the whole
    /// transaction rolls back with [`StoreError::Conflict`] carrying `what`.
    pub expect_rows: Option<u64>,
    /// What the statement does (for the conflict message).
    pub what: String,
}

impl Write {
    /// A statement that may change any number of rows.
    pub fn new(sql: &str, args: Vec<SqlValue>) -> Self {
        Write {
            sql: sql.to_owned(),
            args,
            expect_rows: None,
            what: String::new(),
        }
    }

    /// The same statement, required to change exactly `n` rows.
    pub fn exactly(mut self, n: u64, what: &str) -> Self {
        self.expect_rows = Some(n);
        self.what = what.to_owned();
        self
    }
}

/// Runs `$body` with `$p` bound to the pool of whichever database `$db` is (the SQL is written
/// once, with `$1` placeholders both drivers accept).
macro_rules! on_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($p) => $body,
            $crate::store::Db::Postgres($p) => $body,
        }
    };
}
pub(crate) use on_db;

macro_rules! run_writes {
    ($tx:expr, $writes:expr) => {
        for w in $writes {
            let mut q = sqlx::query(&w.sql);
            for a in &w.args {
                q = match a {
                    SqlValue::Text(s) => q.bind(s.clone()),
                    SqlValue::Int(i) => q.bind(*i),
                    SqlValue::OptText(s) => q.bind(s.clone()),
                    SqlValue::OptInt(i) => q.bind(*i),
                };
            }
            let done = q.execute(&mut *$tx).await?;
            if let Some(n) = w.expect_rows {
                if done.rows_affected() != n {
                    return Err(StoreError::Conflict(w.what.clone()));
                }
            }
        }
    };
}

/// The database behind a store.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The reserve ledger in a database.
#[derive(Debug, Clone)]
pub struct LedgerStore {
    db: Db,
}

impl LedgerStore {
    /// Opens `url` (`sqlite://PATH` — created if missing — or `postgres://...`) and runs the
    /// migrations.
    ///
    /// # Errors
    /// [`StoreError::UnsupportedUrl`], [`StoreError::Db`], [`StoreError::Migrate`].
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_in_schema(url, None).await
    }

    /// As [`LedgerStore::open`]; on PostgreSQL, uses (and creates) `schema` (for tests and for
    /// several ledgers in one database). Ignored on SQLite.
    ///
    /// # Errors
    /// As [`LedgerStore::open`].
    pub async fn open_in_schema(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let db = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(60));
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(opts)
                .await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            Db::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let mut opts = PgConnectOptions::from_str(url)?;
            if let Some(schema) = schema {
                if !schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(StoreError::UnsupportedUrl(format!(
                        "bad schema name {schema:?}"
                    )));
                }
                let setup = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.clone())
                    .await?;
                sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                    .execute(&setup)
                    .await?;
                setup.close().await;
                opts = opts.options([("search_path", schema)]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .connect_with(opts)
                .await?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            Db::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        Ok(LedgerStore { db })
    }

    /// The database pool, shared with the vault store.
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

// After the macros above: `ledger` uses `run_writes!`.
pub mod ledger;
