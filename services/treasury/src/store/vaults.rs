//! Vault storage (sqlx, SQLite and PostgreSQL) and coin reservations.
//!
//! Why like this: bdk's `ChangeSet`s are stored append-only as JSON rows per vault (not
//! bdk's rusqlite store: it links a second SQLite and pins an sqlx with a known advisory), and
//! a vault is the merge of its rows. Reservations live in a table whose primary key is the
//! outpoint, so two builders, in one process or in several instances on one PostgreSQL, can
//! never reserve the same coin.
//!
//! Loading a vault parses and merges every changeset row, which grows with the vault's
//! history (hundreds of rows after a few hundred deposits) and was most of the cost of a spend
//! request. [`VaultStore`] therefore keeps, per vault, the merge of the rows it has read and
//! the last row's `seq`, and reads only the rows after it. Rows are append-only and a row's
//! `seq` is `MAX(seq) + 1` under the `(vault, seq)` primary key, so a row becomes visible only
//! after every lower one: rows another instance appended are never missed. The cache holds no
//! decision: reservations stay in the database and are taken with an insert that fails on
//! conflict.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bdk_wallet::bitcoin::{Network, OutPoint, Txid};
use bdk_wallet::chain::Merge;
use bdk_wallet::ChangeSet;
use custody::vault::{Vault, VaultConfig, VaultDescriptor, VaultError};
use sqlx::Row;

use crate::store::{on_db, Db, LedgerStore};

/// Errors of the vault store and of sync.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultStoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The vault refused (validation, loading).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// No vault of that name.
    #[error("no vault named {0:?}")]
    NotFound(String),
    /// A vault of that name exists.
    #[error("a vault named {0:?} already exists")]
    Exists(String),
    /// Stored rows do not decode.
    #[error("corrupt vault store: {0}")]
    Corrupt(String),
    /// Another request holds a coin.
    #[error("outpoint {0} is already reserved by another request")]
    Reserved(OutPoint),
}

/// The vault store, on the same database as the ledger.
#[derive(Debug, Clone)]
pub struct VaultStore {
    db: Db,
    cache: ChangesetCache,
}

/// What one vault's rows merge to, up to a row.
struct Merged {
    config: VaultConfig,
    /// `seq` of the last row merged.
    seq: i64,
    changeset: ChangeSet,
}

/// Per vault, the merge of the changeset rows read so far (see the module docs).
#[derive(Clone, Default)]
struct ChangesetCache(Arc<Mutex<HashMap<String, Arc<Merged>>>>);

impl std::fmt::Debug for ChangesetCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().unwrap_or_else(PoisonError::into_inner).len();
        write!(f, "ChangesetCache({n} vaults)")
    }
}

impl ChangesetCache {
    fn get(&self, name: &str) -> Option<Arc<Merged>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Keeps `m` unless a merge of more rows is already there.
    fn put(&self, name: &str, m: Merged) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(name).is_none_or(|old| old.seq < m.seq) {
            map.insert(name.to_owned(), Arc::new(m));
        }
    }
}

/// A unique or primary-key violation. sqlx maps SQLite's SQLITE_CONSTRAINT_UNIQUE (2067) to
/// a unique violation but not SQLITE_CONSTRAINT_PRIMARYKEY (1555), which a text primary key
/// raises; PostgreSQL reports both as 23505.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d.is_unique_violation() || d.code().as_deref() == Some("1555"),
        _ => false,
    }
}

impl VaultStore {
    /// The vault store on the ledger's database.
    pub fn new(ledger: &LedgerStore) -> Self {
        VaultStore {
            db: ledger.db().clone(),
            cache: ChangesetCache::default(),
        }
    }

    /// Stores a new vault and its first changeset in one transaction.
    ///
    /// # Errors
    /// [`VaultStoreError::Exists`] for a taken name; nothing is written on any error.
    pub async fn create(&self, vault: &mut Vault, now_ms: i64) -> Result<(), VaultStoreError> {
        let cfg = vault.config().clone();
        let changes = vault.take_changes().unwrap_or_default();
        let json =
            serde_json::to_string(&changes).map_err(|e| VaultStoreError::Corrupt(e.to_string()))?;
        let insert = "INSERT INTO vaults (name, network, external_descriptor, internal_descriptor, birthday, gap_limit, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";
        let cs = "INSERT INTO vault_changesets (vault, seq, changeset) VALUES ($1, 0, $2)";
        // An async block, so that `?` stops here and a taken name is told apart below.
        let result: Result<(), sqlx::Error> = on_db!(&self.db, p => async {
            let mut tx = p.begin().await?;
            sqlx::query(insert)
                .bind(&cfg.name)
                .bind(cfg.descriptor.network.to_string())
                .bind(cfg.descriptor.external_string())
                .bind(cfg.descriptor.internal_string())
                .bind(i64::from(cfg.birthday))
                .bind(i64::from(cfg.gap_limit))
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            sqlx::query(cs).bind(&cfg.name).bind(&json).execute(&mut *tx).await?;
            tx.commit().await
        }.await);
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(VaultStoreError::Exists(cfg.name)),
            Err(e) => Err(e.into()),
        }
    }

    /// The configs of every vault, by name.
    ///
    /// # Errors
    /// [`VaultStoreError::Db`], [`VaultStoreError::Corrupt`].
    pub async fn list(&self) -> Result<Vec<VaultConfig>, VaultStoreError> {
        let q = "SELECT name, network, external_descriptor, internal_descriptor, birthday, gap_limit FROM vaults ORDER BY name";
        let rows: Vec<ConfigRow> = on_db!(&self.db, p => {
            sqlx::query(q)
                .fetch_all(p)
                .await?
                .iter()
                .map(ConfigRow::read)
                .collect::<Result<_, sqlx::Error>>()?
        });
        rows.into_iter().map(ConfigRow::into_config).collect()
    }

    /// The config of one vault.
    ///
    /// # Errors
    /// [`VaultStoreError::NotFound`], [`VaultStoreError::Db`], [`VaultStoreError::Corrupt`].
    pub async fn config(&self, name: &str) -> Result<VaultConfig, VaultStoreError> {
        let q = "SELECT name, network, external_descriptor, internal_descriptor, birthday, gap_limit FROM vaults WHERE name = $1";
        let row: Option<ConfigRow> = on_db!(&self.db, p => {
            match sqlx::query(q).bind(name).fetch_optional(p).await? {
                Some(r) => Some(ConfigRow::read(&r)?),
                None => None,
            }
        });
        row.ok_or_else(|| VaultStoreError::NotFound(name.to_string()))?
            .into_config()
    }

    /// The merge of a vault's changesets: the cached merge plus the rows appended since (see
    /// the module docs), which it then caches.
    async fn merged(&self, name: &str) -> Result<Arc<Merged>, VaultStoreError> {
        let started = Instant::now();
        let cached = self.cache.get(name);
        let after = cached.as_ref().map_or(-1, |c| c.seq);
        let q = "SELECT seq, changeset FROM vault_changesets WHERE vault = $1 AND seq > $2 \
                 ORDER BY seq";
        let rows: Vec<(i64, String)> = on_db!(&self.db, p => {
            sqlx::query(q)
                .bind(name)
                .bind(after)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?)))
                .collect::<Result<_, sqlx::Error>>()?
        });
        let cached = match cached {
            Some(c) if rows.is_empty() => return Ok(c),
            Some(c) => c,
            None => Arc::new(Merged {
                config: self.config(name).await?,
                seq: -1,
                changeset: ChangeSet::default(),
            }),
        };
        let mut changeset = cached.changeset.clone();
        let mut seq = cached.seq;
        for (at, row) in &rows {
            let cs: ChangeSet = serde_json::from_str(row).map_err(|e| {
                VaultStoreError::Corrupt(format!("vault {name} changeset {at}: {e}"))
            })?;
            changeset.merge(cs);
            seq = *at;
        }
        let merged = Merged {
            config: cached.config.clone(),
            seq,
            changeset,
        };
        tracing::debug!(
            vault = name,
            new_rows = rows.len(),
            seq,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "vault changesets read"
        );
        if rows.is_empty() {
            return Ok(Arc::new(merged));
        }
        self.cache.put(name, merged);
        // What is cached now (this or a merge of more rows another task put there).
        self.cache
            .get(name)
            .ok_or_else(|| VaultStoreError::Corrupt("vault cache lost an entry".into()))
    }

    /// Loads a vault: its config and the merge of its changesets. Only the rows appended since
    /// this store last read the vault are read and parsed (see the module docs).
    ///
    /// # Errors
    /// As [`VaultStore::config`], and [`VaultStoreError::Vault`] when the state does not load.
    pub async fn load(&self, name: &str) -> Result<Vault, VaultStoreError> {
        let m = self.merged(name).await?;
        let started = Instant::now();
        let vault = Vault::load(m.config.clone(), m.changeset.clone())?;
        tracing::debug!(
            vault = name,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "vault loaded"
        );
        Ok(vault)
    }

    /// The height of the vault's chain tip, as [`Vault::tip_height`] of [`VaultStore::load`]
    /// would say, from the merged changesets without building the wallet.
    ///
    /// # Errors
    /// As [`VaultStore::load`].
    pub async fn tip_height(&self, name: &str) -> Result<u32, VaultStoreError> {
        let m = self.merged(name).await?;
        Ok(m.changeset
            .local_chain
            .blocks
            .iter()
            .rev()
            .find(|(_, hash)| hash.is_some())
            .map_or(0, |(height, _)| *height))
    }

    /// Persists the vault's staged changes (if any) as its next changeset row.
    ///
    /// # Errors
    /// [`VaultStoreError::Db`] (also when other writers kept taking the next row, eight times
    /// in a row).
    pub async fn persist(&self, vault: &mut Vault) -> Result<bool, VaultStoreError> {
        let Some(changes) = vault.take_changes() else {
            return Ok(false);
        };
        if changes.is_empty() {
            return Ok(false);
        }
        let json =
            serde_json::to_string(&changes).map_err(|e| VaultStoreError::Corrupt(e.to_string()))?;
        let q = "INSERT INTO vault_changesets (vault, seq, changeset) SELECT $1, COALESCE(MAX(seq) + 1, 0), $2 FROM vault_changesets WHERE vault = $1";
        // Two instances appending at once compute the same next seq and one insert fails on
        // the primary key; the row does not depend on its seq, so it is appended again after
        // the other.
        let mut attempts = 0u32;
        loop {
            let r: Result<(), sqlx::Error> = on_db!(&self.db, p => {
                sqlx::query(q).bind(vault.name()).bind(&json).execute(p).await.map(|_| ())
            });
            match r {
                Ok(()) => return Ok(true),
                Err(e) if is_unique_violation(&e) && attempts < 8 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Outpoints reserved by unexpired requests of a vault.
    ///
    /// # Errors
    /// [`VaultStoreError::Db`], [`VaultStoreError::Corrupt`].
    pub async fn reserved(
        &self,
        vault: &str,
        now_ms: i64,
    ) -> Result<BTreeSet<OutPoint>, VaultStoreError> {
        let q = "SELECT outpoint FROM utxo_reservations WHERE vault = $1 AND expires_ms > $2";
        let rows: Vec<String> = on_db!(&self.db, p => {
            sqlx::query(q)
                .bind(vault)
                .bind(now_ms)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<_, sqlx::Error>>()?
        });
        rows.iter()
            .map(|s| {
                OutPoint::from_str(s)
                    .map_err(|e| VaultStoreError::Corrupt(format!("outpoint {s}: {e}")))
            })
            .collect()
    }

    /// Reserves the inputs of a built transaction for `request` until `expires_ms`, all or
    /// nothing. Expired reservations are dropped first.
    ///
    /// # Errors
    /// [`VaultStoreError::Reserved`] naming the first coin another request holds.
    pub async fn reserve(
        &self,
        vault: &str,
        request: &str,
        txid: Txid,
        outpoints: &[OutPoint],
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<(), VaultStoreError> {
        let purge = "DELETE FROM utxo_reservations WHERE expires_ms <= $1";
        let insert = "INSERT INTO utxo_reservations (outpoint, vault, request, txid, expires_ms) VALUES ($1, $2, $3, $4, $5)";
        let conflict: Option<OutPoint> = on_db!(&self.db, p => {
            sqlx::query(purge).bind(now_ms).execute(p).await?;
            let mut tx = p.begin().await?;
            let mut conflict = None;
            for op in outpoints {
                let r = sqlx::query(insert)
                    .bind(op.to_string())
                    .bind(vault)
                    .bind(request)
                    .bind(txid.to_string())
                    .bind(expires_ms)
                    .execute(&mut *tx)
                    .await;
                match r {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => {
                        conflict = Some(*op);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if conflict.is_none() {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            conflict
        });
        match conflict {
            Some(op) => Err(VaultStoreError::Reserved(op)),
            None => Ok(()),
        }
    }

    /// Releases every coin of a request (on cancel). Returns how many were released.
    ///
    /// # Errors
    /// [`VaultStoreError::Db`].
    pub async fn release(&self, request: &str) -> Result<u64, VaultStoreError> {
        let q = "DELETE FROM utxo_reservations WHERE request = $1";
        let n =
            on_db!(&self.db, p => sqlx::query(q).bind(request).execute(p).await?.rows_affected());
        Ok(n)
    }

    /// Releases reservations of coins the vault no longer has unspent (their spend confirmed
    /// or was seen). Returns how many were released.
    ///
    /// # Errors
    /// [`VaultStoreError::Db`], [`VaultStoreError::Corrupt`].
    pub async fn release_spent(&self, vault: &Vault) -> Result<u64, VaultStoreError> {
        let held = self.reserved(vault.name(), i64::MIN).await?;
        let q = "DELETE FROM utxo_reservations WHERE outpoint = $1";
        let unspent: BTreeSet<OutPoint> = vault.utxos().iter().map(|u| u.outpoint).collect();
        let mut n = 0;
        for op in held {
            if !unspent.contains(&op) {
                n += on_db!(&self.db, p => sqlx::query(q).bind(op.to_string()).execute(p).await?.rows_affected());
            }
        }
        Ok(n)
    }
}

struct ConfigRow {
    name: String,
    network: String,
    external: String,
    internal: String,
    birthday: i64,
    gap_limit: i64,
}

impl ConfigRow {
    fn read<R: Row>(r: &R) -> Result<Self, sqlx::Error>
    where
        for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        Ok(ConfigRow {
            name: r.try_get(0)?,
            network: r.try_get(1)?,
            external: r.try_get(2)?,
            internal: r.try_get(3)?,
            birthday: r.try_get(4)?,
            gap_limit: r.try_get(5)?,
        })
    }

    fn into_config(self) -> Result<VaultConfig, VaultStoreError> {
        let corrupt = |what: &str| VaultStoreError::Corrupt(format!("vault {}: {what}", self.name));
        let network = Network::from_str(&self.network).map_err(|_| corrupt("network"))?;
        let descriptor = VaultDescriptor::parse(&self.external, Some(&self.internal), network)
            .map_err(|e| corrupt(&e.to_string()))?;
        let mut cfg = VaultConfig::new(
            &self.name,
            descriptor,
            u32::try_from(self.birthday).map_err(|_| corrupt("birthday"))?,
        )?;
        cfg.gap_limit = u32::try_from(self.gap_limit).map_err(|_| corrupt("gap limit"))?;
        Ok(cfg)
    }
}
