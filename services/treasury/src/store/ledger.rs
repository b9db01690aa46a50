//! The reserve ledger's own tables: append (alone or with other writes in one transaction),
//! the head row, checkpoints, reading entries back, and verifying the chain.
//!
//! Why apart from `store/mod.rs`: opening the database, migrations and the `Db`/`Write`
//! helpers serve every table group; the ledger's append-only rules (one transaction per
//! append, the head row as the lock) are this file's alone.

use custody::ledger::{
    Actor, AnyCheckpointSigner, ChainError, ChainFault, ChainVerifier, Checkpoint, Entry,
    EntryDraft, Kind, LedgerHead, Payload, PayloadType, VerifierKey,
};
use hashcore::Digest;
use sqlx::Row;

use super::{Db, LedgerStore, SqlValue, StoreError, Write};

/// A row of `ledger_entries`, as stored.
#[derive(Debug, Clone)]
struct RawEntry {
    seq: i64,
    time_ms: i64,
    kind: i64,
    actor: String,
    payload_type: i64,
    payload: Vec<u8>,
    prev_hash: Vec<u8>,
    entry_hash: Vec<u8>,
}

impl RawEntry {
    fn from_row<R: Row>(row: &R) -> Result<Self, sqlx::Error>
    where
        for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> &'a str: sqlx::ColumnIndex<R>,
    {
        Ok(RawEntry {
            seq: row.try_get("seq")?,
            time_ms: row.try_get("time_ms")?,
            kind: row.try_get("kind")?,
            actor: row.try_get("actor")?,
            payload_type: row.try_get("payload_type")?,
            payload: row.try_get("payload")?,
            prev_hash: row.try_get("prev_hash")?,
            entry_hash: row.try_get("entry_hash")?,
        })
    }

    /// The entry, or what is wrong with the row.
    fn to_entry(&self) -> Result<Entry, String> {
        let seq = u64::try_from(self.seq).map_err(|_| format!("negative seq {}", self.seq))?;
        let kind = u16::try_from(self.kind)
            .ok()
            .and_then(Kind::from_code)
            .ok_or_else(|| format!("unknown kind code {}", self.kind))?;
        let ty = u16::try_from(self.payload_type)
            .ok()
            .and_then(PayloadType::from_code)
            .ok_or_else(|| format!("unknown payload type code {}", self.payload_type))?;
        let actor = Actor::new(self.actor.clone()).map_err(|e| e.to_string())?;
        let payload = Payload::new(ty, self.payload.clone()).map_err(|e| e.to_string())?;
        let prev: Digest = self
            .prev_hash
            .as_slice()
            .try_into()
            .map_err(|_| "prev_hash is not 32 bytes".to_owned())?;
        let hash: Digest = self
            .entry_hash
            .as_slice()
            .try_into()
            .map_err(|_| "entry_hash is not 32 bytes".to_owned())?;
        Entry::from_stored(seq, self.time_ms, kind, actor, payload, prev, hash)
            .map_err(|e| e.to_string())
    }
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{v} does not fit a BIGINT")))
}

/// The stored head row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeadRow {
    size: i64,
    last_hash: Vec<u8>,
    last_time_ms: i64,
    frontier: Vec<u8>,
}

impl HeadRow {
    fn of(head: &LedgerHead) -> Result<Self, StoreError> {
        Ok(HeadRow {
            size: to_i64(head.size())?,
            last_hash: head.last_hash().to_vec(),
            last_time_ms: head.last_time_ms(),
            frontier: head.frontier().concat(),
        })
    }

    fn to_head(&self) -> Result<LedgerHead, StoreError> {
        let corrupt = |m: &str| StoreError::Corrupt(format!("head row: {m}"));
        let size = u64::try_from(self.size).map_err(|_| corrupt("negative size"))?;
        let last_hash: Digest = self
            .last_hash
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("last_hash is not 32 bytes"))?;
        let (chunks, rest) = self.frontier.as_chunks::<32>();
        if !rest.is_empty() {
            return Err(corrupt("frontier is not whole digests"));
        }
        LedgerHead::from_parts(size, last_hash, self.last_time_ms, chunks.to_vec())
            .map_err(|e| corrupt(&e.to_string()))
    }
}

/// The result of [`LedgerStore::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries verified.
    pub entries: u64,
    /// The root of all entries.
    pub root: Digest,
    /// Checkpoint entries verified.
    pub checkpoints: usize,
}

impl core::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "ok: {} entries, root {}",
            self.entries,
            hex::encode(self.root)
        )
    }
}

const PAGE: i64 = 10_000;

impl LedgerStore {
    /// The stored head (size, last hash, root).
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    pub async fn head(&self) -> Result<LedgerHead, StoreError> {
        let q = "SELECT size, last_hash, last_time_ms, frontier FROM ledger_head WHERE id = 1";
        let row = match &self.db {
            Db::Sqlite(p) => head_row(&sqlx::query(q).fetch_one(p).await?)?,
            Db::Postgres(p) => head_row(&sqlx::query(q).fetch_one(p).await?)?,
        };
        row.to_head()
    }

    /// Appends one entry.
    ///
    /// # Errors
    /// [`StoreError::Entry`] for an invalid draft, [`StoreError::Db`], [`StoreError::Corrupt`].
    pub async fn append(&self, draft: EntryDraft) -> Result<Entry, StoreError> {
        let mut v = self.append_batch(vec![draft]).await?;
        v.pop()
            .ok_or_else(|| StoreError::Corrupt("append returned no entry".into()))
    }

    /// Appends entries in one transaction, all or nothing. Inside
    /// [`crate::actor::acting_as`] (an API request), entries under a service actor get
    /// the acting principal as actor.
    ///
    /// # Errors
    /// [`StoreError::Entry`] for an invalid draft (nothing is written), [`StoreError::Db`],
    /// [`StoreError::Corrupt`].
    pub async fn append_batch(&self, drafts: Vec<EntryDraft>) -> Result<Vec<Entry>, StoreError> {
        let mut drafts = drafts;
        crate::actor::attribute(&mut drafts);
        self.append_with(&[], |head| Ok(head.append_batch(drafts)?))
            .await
    }

    /// Runs `writes` and appends `drafts` in one transaction, all or nothing: a state change
    /// and the ledger entries recording it. The writes run first, in order. Entries are
    /// attributed to the acting principal as in [`LedgerStore::append_batch`].
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a write did not change the rows it expected (nothing is
    /// written), and as [`LedgerStore::append_batch`].
    pub async fn append_with_writes(
        &self,
        drafts: Vec<EntryDraft>,
        writes: &[Write],
    ) -> Result<Vec<Entry>, StoreError> {
        let mut drafts = drafts;
        crate::actor::attribute(&mut drafts);
        self.append_with(writes, |head| Ok(head.append_batch(drafts)?))
            .await
    }

    /// Signs a checkpoint of the whole log with `signer` and appends it as a checkpoint entry,
    /// in one transaction; returns the signed note and the entry.
    ///
    /// # Errors
    /// [`StoreError::Checkpoint`] when signing fails, and as [`LedgerStore::append`].
    pub async fn checkpoint(
        &self,
        origin: &str,
        actor: &Actor,
        time_ms: i64,
        signer: &dyn AnyCheckpointSigner,
    ) -> Result<(String, Entry), StoreError> {
        let mut note = String::new();
        let entries = self
            .append_with(&[], |head| {
                let cp: Checkpoint = head.checkpoint(origin, time_ms)?;
                note = cp.sign(signer)?;
                let e = head.append(EntryDraft {
                    time_ms: cp.time_ms(),
                    kind: Kind::Checkpoint,
                    actor: actor.clone(),
                    payload: Payload::checkpoint(note.clone())?,
                })?;
                Ok(vec![e])
            })
            .await?;
        let e = entries
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt("checkpoint returned no entry".into()))?;
        Ok((note, e))
    }

    /// Runs `build` on the locked head inside one transaction and stores what it built.
    async fn append_with<F>(&self, writes: &[Write], build: F) -> Result<Vec<Entry>, StoreError>
    where
        F: FnOnce(&mut LedgerHead) -> Result<Vec<Entry>, StoreError>,
    {
        let head_q = "SELECT size, last_hash, last_time_ms, frontier FROM ledger_head WHERE id = 1";
        match &self.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                run_writes!(tx, writes);
                let old = head_row(&sqlx::query(head_q).fetch_one(&mut *tx).await?)?;
                let mut head = old.to_head()?;
                let entries = build(&mut head)?;
                for chunk in entries.chunks(1000) {
                    let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(INSERT);
                    qb.push_values(chunk, |mut b, e| {
                        b.push_bind(e.seq() as i64)
                            .push_bind(e.time_ms())
                            .push_bind(i64::from(e.kind().code()))
                            .push_bind(e.actor().as_str().to_owned())
                            .push_bind(i64::from(e.payload().payload_type().code()))
                            .push_bind(e.payload().as_bytes().to_vec())
                            .push_bind(e.prev_hash().to_vec())
                            .push_bind(e.entry_hash().to_vec());
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                let new = HeadRow::of(&head)?;
                let done = sqlx::query(UPDATE_HEAD)
                    .bind(new.size)
                    .bind(new.last_hash)
                    .bind(new.last_time_ms)
                    .bind(new.frontier)
                    .bind(old.size)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Corrupt("head moved during append".into()));
                }
                tx.commit().await?;
                Ok(entries)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let q = format!("{head_q} FOR UPDATE");
                // Lock the head first: appenders (and their writes) serialize on it.
                let locked = sqlx::query(&q).fetch_one(&mut *tx).await?;
                drop(locked);
                run_writes!(tx, writes);
                let old = head_row(&sqlx::query(&q).fetch_one(&mut *tx).await?)?;
                let mut head = old.to_head()?;
                let entries = build(&mut head)?;
                for chunk in entries.chunks(1000) {
                    let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(INSERT);
                    qb.push_values(chunk, |mut b, e| {
                        b.push_bind(e.seq() as i64)
                            .push_bind(e.time_ms())
                            .push_bind(i32::from(e.kind().code()))
                            .push_bind(e.actor().as_str().to_owned())
                            .push_bind(i32::from(e.payload().payload_type().code()))
                            .push_bind(e.payload().as_bytes().to_vec())
                            .push_bind(e.prev_hash().to_vec())
                            .push_bind(e.entry_hash().to_vec());
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                let new = HeadRow::of(&head)?;
                let done = sqlx::query(UPDATE_HEAD_PG)
                    .bind(new.size)
                    .bind(new.last_hash)
                    .bind(new.last_time_ms)
                    .bind(new.frontier)
                    .bind(old.size)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Corrupt("head moved during append".into()));
                }
                tx.commit().await?;
                Ok(entries)
            }
        }
    }

    async fn query_rows(&self, q: &str, a: i64, b: i64) -> Result<Vec<RawEntry>, StoreError> {
        Ok(match &self.db {
            Db::Sqlite(p) => sqlx::query(q)
                .bind(a)
                .bind(b)
                .fetch_all(p)
                .await?
                .iter()
                .map(RawEntry::from_row)
                .collect::<Result<_, _>>()?,
            Db::Postgres(p) => sqlx::query(q)
                .bind(a)
                .bind(b)
                .fetch_all(p)
                .await?
                .iter()
                .map(RawEntry::from_row)
                .collect::<Result<_, _>>()?,
        })
    }

    async fn page(&self, from: i64, to: i64) -> Result<Vec<RawEntry>, StoreError> {
        let q = format!("{SELECT_ENTRIES} WHERE seq >= $1 AND seq < $2 ORDER BY seq");
        self.query_rows(&q, from, to).await
    }

    /// Calls `f` on every stored row in seq order (as an entry, or the seq and what is wrong
    /// with the row), page by page.
    async fn for_each_row<F>(&self, mut f: F) -> Result<(), StoreError>
    where
        F: FnMut(i64, Result<Entry, String>) -> Result<bool, StoreError>,
    {
        let mut from = i64::MIN;
        loop {
            let rows = self.keyset_page(from).await?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            from = last.seq.saturating_add(1);
            for r in &rows {
                if !f(r.seq, r.to_entry())? {
                    return Ok(());
                }
            }
            if last.seq == i64::MAX {
                return Ok(());
            }
        }
    }

    async fn keyset_page(&self, from: i64) -> Result<Vec<RawEntry>, StoreError> {
        let q = format!("{SELECT_ENTRIES} WHERE seq >= $1 ORDER BY seq LIMIT $2");
        self.query_rows(&q, from, PAGE).await
    }

    /// Every entry, in seq order.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a row that is not an entry, [`StoreError::Db`].
    pub async fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        self.for_each_row(|seq, e| {
            out.push(e.map_err(|m| StoreError::Corrupt(format!("row seq {seq}: {m}")))?);
            Ok(true)
        })
        .await?;
        Ok(out)
    }

    /// Entries `from..to` (seq), in order.
    ///
    /// # Errors
    /// As [`LedgerStore::entries`].
    pub async fn entries_range(&self, from: u64, to: u64) -> Result<Vec<Entry>, StoreError> {
        let rows = self.page(to_i64(from)?, to_i64(to)?).await?;
        rows.iter()
            .map(|r| {
                r.to_entry()
                    .map_err(|m| StoreError::Corrupt(format!("row seq {}: {m}", r.seq)))
            })
            .collect()
    }

    /// Recomputes every hash, the chain, the Merkle root and every stored checkpoint (its
    /// signature too, when `key` is given), and compares the head row with the result.
    ///
    /// # Errors
    /// [`StoreError::Tampered`] naming the first bad seq and what is wrong;
    /// [`StoreError::Db`]; [`StoreError::Corrupt`] when the head row does not match.
    pub async fn verify(&self, key: Option<&VerifierKey>) -> Result<VerifyReport, StoreError> {
        let mut v = ChainVerifier::new(key.cloned());
        self.for_each_row(|seq, e| {
            let expected = v.head().next_seq();
            match e {
                Ok(e) => v.push(&e)?,
                Err(reason) => {
                    return Err(StoreError::Tampered(ChainError {
                        seq: expected,
                        fault: ChainFault::Malformed(format!("row seq {seq}: {reason}")),
                    }))
                }
            }
            Ok(true)
        })
        .await?;
        let log = v.finish();
        let stored = self.head().await?;
        if stored.size() > log.head.size() {
            return Err(StoreError::Tampered(ChainError {
                seq: log.head.size(),
                fault: ChainFault::Missing {
                    expected: log.head.size(),
                    found: stored.size(),
                },
            }));
        }
        if stored.size() != log.head.size()
            || stored.last_hash() != log.head.last_hash()
            || stored.root() != log.head.root()
        {
            return Err(StoreError::Corrupt(format!(
                "head row records {} entries with root {}, the entries give {} with root {}",
                stored.size(),
                hex::encode(stored.root()),
                log.head.size(),
                hex::encode(log.head.root())
            )));
        }
        Ok(VerifyReport {
            entries: log.head.size(),
            root: log.head.root(),
            checkpoints: log.checkpoints.len(),
        })
    }

    /// The stored entry hashes of seq `0..size`.
    ///
    /// # Errors
    /// As [`LedgerStore::entries`].
    pub async fn entry_hashes(&self, size: u64) -> Result<Vec<Digest>, StoreError> {
        let mut out = Vec::new();
        self.for_each_row(|seq, e| {
            if out.len() as u64 >= size {
                return Ok(false);
            }
            let e = e.map_err(|m| StoreError::Corrupt(format!("row seq {seq}: {m}")))?;
            out.push(*e.entry_hash());
            Ok(true)
        })
        .await?;
        Ok(out)
    }
}

/// Both databases read the small integer columns as BIGINT, so one row decoder serves both.
const SELECT_ENTRIES: &str = "SELECT seq, time_ms, CAST(kind AS BIGINT) AS kind, actor, \
    CAST(payload_type AS BIGINT) AS payload_type, payload, prev_hash, entry_hash \
    FROM ledger_entries";
const INSERT: &str = "INSERT INTO ledger_entries \
    (seq, time_ms, kind, actor, payload_type, payload, prev_hash, entry_hash) ";
const UPDATE_HEAD: &str = "UPDATE ledger_head SET size = ?1, last_hash = ?2, last_time_ms = ?3, \
    frontier = ?4 WHERE id = 1 AND size = ?5";
const UPDATE_HEAD_PG: &str = "UPDATE ledger_head SET size = $1, last_hash = $2, \
    last_time_ms = $3, frontier = $4 WHERE id = 1 AND size = $5";

fn head_row<R: Row>(row: &R) -> Result<HeadRow, sqlx::Error>
where
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    Ok(HeadRow {
        size: row.try_get("size")?,
        last_hash: row.try_get("last_hash")?,
        last_time_ms: row.try_get("last_time_ms")?,
        frontier: row.try_get("frontier")?,
    })
}
