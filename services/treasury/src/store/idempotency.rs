//! The API's idempotency keys (`api_idempotency`): which request a principal's key created,
//! with the hash of the body it came with.
//!
//! Why in the store: the key is claimed with an insert that does nothing on conflict, so two
//! instances on one database never both create a request for one key; the rules around it
//! (replay, conflict, a stale key taken over) stay in `api/routes/spends.rs`.

use sqlx::Row;

use super::{on_db, LedgerStore};

/// A key's row: the body hash, the request id it holds and when it was claimed.
pub type KeyRow = (String, String, i64);

/// The row of `principal`'s `key`, if claimed.
///
/// # Errors
/// The database's.
pub async fn find_key(
    store: &LedgerStore,
    principal: &str,
    key: &str,
) -> Result<Option<KeyRow>, sqlx::Error> {
    let q = "SELECT body_hash, request_id, created_ms FROM api_idempotency \
             WHERE principal = $1 AND idem_key = $2";
    Ok(on_db!(store.db(), p => {
        match sqlx::query(q).bind(principal).bind(key).fetch_optional(p).await? {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
            None => None,
        }
    }))
}

/// Claims `key` for request `id`; returns the rows inserted (0 when another claim won).
///
/// # Errors
/// The database's.
pub async fn insert_key(
    store: &LedgerStore,
    principal: &str,
    key: &str,
    body_hash: &str,
    id: &str,
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    let ins =
        "INSERT INTO api_idempotency (principal, idem_key, body_hash, request_id, created_ms) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
    Ok(on_db!(store.db(), p => {
        sqlx::query(ins)
            .bind(principal)
            .bind(key)
            .bind(body_hash)
            .bind(id)
            .bind(now_ms)
            .execute(p)
            .await?
            .rows_affected()
    }))
}

/// Releases `key` if it still holds request `id`.
///
/// # Errors
/// The database's.
pub async fn delete_key(
    store: &LedgerStore,
    principal: &str,
    key: &str,
    id: &str,
) -> Result<(), sqlx::Error> {
    let q =
        "DELETE FROM api_idempotency WHERE principal = $1 AND idem_key = $2 AND request_id = $3";
    on_db!(store.db(), p => {
        sqlx::query(q).bind(principal).bind(key).bind(id).execute(p).await.map(|_| ())
    })
}
