//! API tokens: who is calling, with which role, over which vaults.
//!
//! Why this shape: a token is 32 random bytes shown once to whoever created it; the database
//! keeps only its SHA-256 (a token is high-entropy, so a plain hash is enough: no salt or slow
//! KDF is needed to stop guessing, and a lookup by hash needs no constant-time compare). The
//! first bytes of the hash are the token's public id, for logs and the ledger. Creating a token
//! writes its row and a ledger entry in one transaction, so every credential that can change
//! state is itself on the record. Tokens live in the database, not in a process, so every
//! `treasury serve` instance against it accepts the same tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use custody::ledger::{Actor, EntryDraft};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use zeroize::Zeroizing;

use crate::store::{on_db, LedgerStore, SqlValue, StoreError, Write};

/// The prefix of every token (lets secret scanners find leaked tokens).
pub const TOKEN_PREFIX: &str = "trsy_";

/// The actor recorded on token ledger entries.
pub const TOKENS_ACTOR: &str = "api-tokens";

/// Errors of the token store.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The principal name cannot be a ledger actor.
    #[error("invalid principal name: {0}")]
    Principal(String),
    /// A vault scope is empty or repeated.
    #[error("invalid vault scope: {0}")]
    Scope(String),
    /// The role name is unknown.
    #[error("unknown role {0:?} (expected admin, officer, auditor or integrator)")]
    Role(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored token row is inconsistent.
    #[error("corrupt token row: {0}")]
    Corrupt(String),
    /// No live token has this id.
    #[error("no live token with id {0:?}")]
    NotFound(String),
}

impl From<sqlx::Error> for AuthError {
    fn from(e: sqlx::Error) -> Self {
        AuthError::Store(StoreError::Db(e))
    }
}

/// What a caller may do (docs/api.md has the route × role table).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Operates the service: vaults, policy proposals, checkpoints, everything an officer sees.
    Admin,
    /// A treasury officer: reviews, approves and signs spend requests.
    Officer,
    /// Reads everything, changes nothing but asking for proofs.
    Auditor,
    /// A system integrating with the reserve: deposit addresses, balances, spend requests.
    Integrator,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Officer, Role::Auditor, Role::Integrator];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Officer => "officer",
            Role::Auditor => "auditor",
            Role::Integrator => "integrator",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, AuthError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AuthError::Role(s.to_owned()))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal's name (recorded as the actor of what they change).
    pub name: String,
    /// The role.
    pub role: Role,
    /// The vaults the token is limited to (empty: every vault).
    pub vaults: Vec<String>,
    /// The token's public id (first 8 bytes of its hash, hex).
    pub token_id: String,
}

impl Principal {
    /// Whether the token covers vault `name`.
    pub fn may_see_vault(&self, name: &str) -> bool {
        self.vaults.is_empty() || self.vaults.iter().any(|v| v == name)
    }

    /// Whether the token has one of `roles`.
    pub fn has_role(&self, roles: &[Role]) -> bool {
        roles.contains(&self.role)
    }
}

/// The SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(hashcore::sha256(token.as_bytes()))
}

fn check_principal(principal: &str) -> Result<(), AuthError> {
    Actor::new(principal).map_err(|e| AuthError::Principal(e.to_string()))?;
    if principal.trim() != principal {
        return Err(AuthError::Principal(
            "leading or trailing white space".into(),
        ));
    }
    Ok(())
}

fn check_vaults(vaults: &[String]) -> Result<(), AuthError> {
    let mut seen = std::collections::HashSet::new();
    for v in vaults {
        if v.is_empty() || v.chars().any(char::is_control) {
            return Err(AuthError::Scope(format!("bad vault name {v:?}")));
        }
        if !seen.insert(v) {
            return Err(AuthError::Scope(format!("vault {v:?} given twice")));
        }
    }
    Ok(())
}

/// Creates a random token for `principal` with `role` over `vaults` (empty: every vault),
/// stores its hash and records its creation in the ledger (one transaction); returns the
/// token, which is shown once and never stored.
///
/// # Errors
/// [`AuthError::Principal`] or [`AuthError::Scope`] for bad input (nothing is stored),
/// [`AuthError::Store`].
pub async fn issue_token(
    store: &LedgerStore,
    principal: &str,
    role: Role,
    vaults: &[String],
    now_ms: i64,
) -> Result<String, AuthError> {
    check_principal(principal)?;
    check_vaults(vaults)?;
    let mut secret = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut secret[..]);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(&secret[..]));
    let hash = token_hash(&token);
    let token_id = hash[..16].to_owned();
    let vaults_json =
        serde_json::to_string(vaults).map_err(|e| AuthError::Corrupt(e.to_string()))?;
    let text = serde_json::json!({
        "event": "api_token_created",
        "token_id": token_id,
        "principal": principal,
        "role": role.as_str(),
        "vaults": vaults,
    })
    .to_string();
    let draft = EntryDraft::note(now_ms, TOKENS_ACTOR, &text)
        .map_err(|e| AuthError::Store(StoreError::Entry(e)))?;
    let write = Write::new(
        "INSERT INTO api_tokens (token_hash, token_id, principal, role, vaults, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        vec![
            SqlValue::Text(hash),
            SqlValue::Text(token_id),
            SqlValue::Text(principal.to_owned()),
            SqlValue::Text(role.as_str().to_owned()),
            SqlValue::Text(vaults_json),
            SqlValue::Int(now_ms),
        ],
    )
    .exactly(1, "insert the token");
    store.append_with_writes(vec![draft], &[write]).await?;
    Ok(token)
}

/// Looks up the principal of `token`; `None` when no live token has that hash.
///
/// # Errors
/// [`AuthError::Store`], [`AuthError::Corrupt`].
pub async fn lookup_token(
    store: &LedgerStore,
    token: &str,
) -> Result<Option<Principal>, AuthError> {
    if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
        return Ok(None);
    }
    let hash = token_hash(token);
    let q = "SELECT token_id, principal, role, vaults FROM api_tokens \
             WHERE token_hash = $1 AND revoked_ms IS NULL";
    let row: Option<(String, String, String, String)> = on_db!(store.db(), p => {
        match sqlx::query(q).bind(&hash).fetch_optional(p).await? {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)),
            None => None,
        }
    });
    let Some((token_id, name, role, vaults)) = row else {
        return Ok(None);
    };
    let role = role
        .parse()
        .map_err(|_| AuthError::Corrupt(format!("token {token_id}: role {role:?}")))?;
    let vaults: Vec<String> = serde_json::from_str(&vaults)
        .map_err(|e| AuthError::Corrupt(format!("token {token_id}: vaults: {e}")))?;
    Ok(Some(Principal {
        name,
        role,
        vaults,
        token_id,
    }))
}

/// A token as listed (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// The public id (first 8 bytes of the hash, hex).
    pub token_id: String,
    /// The principal.
    pub principal: String,
    /// The role.
    pub role: Role,
    /// The vault scope (empty: every vault).
    pub vaults: Vec<String>,
    /// Created (Unix ms).
    pub created_ms: i64,
    /// Revoked (Unix ms), if it is.
    pub revoked_ms: Option<i64>,
}

/// Every token, oldest first.
///
/// # Errors
/// [`AuthError::Store`], [`AuthError::Corrupt`].
pub async fn list_tokens(store: &LedgerStore) -> Result<Vec<TokenInfo>, AuthError> {
    let q = "SELECT token_id, principal, role, vaults, created_ms, revoked_ms FROM api_tokens \
             ORDER BY created_ms, token_id";
    type Row6 = (String, String, String, String, i64, Option<i64>);
    let rows: Vec<Row6> = on_db!(store.db(), p => {
        sqlx::query(q)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?
    });
    rows.into_iter()
        .map(
            |(token_id, principal, role, vaults, created_ms, revoked_ms)| {
                let role = role
                    .parse()
                    .map_err(|_| AuthError::Corrupt(format!("token {token_id}: role {role:?}")))?;
                let vaults = serde_json::from_str(&vaults)
                    .map_err(|e| AuthError::Corrupt(format!("token {token_id}: vaults: {e}")))?;
                Ok(TokenInfo {
                    token_id,
                    principal,
                    role,
                    vaults,
                    created_ms,
                    revoked_ms,
                })
            },
        )
        .collect()
}

/// Revokes the token with public id `token_id`: its row is marked and the revocation is a
/// ledger entry (an operator note naming the token and its principal, with `by` as actor), in
/// one transaction. The caller's instance refuses the token from the next request on once it
/// calls [`TokenCache::invalidate`]; every other instance within its re-check interval (see
/// [`TokenCache`]).
///
/// # Errors
/// [`AuthError::NotFound`] when no live token has that id (nothing is written),
/// [`AuthError::Principal`] for a bad `by`, [`AuthError::Store`].
pub async fn revoke_token(
    store: &LedgerStore,
    token_id: &str,
    by: &str,
    now_ms: i64,
) -> Result<TokenInfo, AuthError> {
    check_principal(by)?;
    let found = list_tokens(store)
        .await?
        .into_iter()
        .find(|t| t.token_id == token_id && t.revoked_ms.is_none())
        .ok_or_else(|| AuthError::NotFound(token_id.to_owned()))?;
    let text = serde_json::json!({
        "event": "api_token_revoked",
        "token_id": found.token_id,
        "principal": found.principal,
        "role": found.role.as_str(),
        "revoked_by": by,
    })
    .to_string();
    let draft =
        EntryDraft::note(now_ms, by, &text).map_err(|e| AuthError::Store(StoreError::Entry(e)))?;
    let write = Write::new(
        "UPDATE api_tokens SET revoked_ms = $1 WHERE token_id = $2 AND revoked_ms IS NULL",
        vec![SqlValue::Int(now_ms), SqlValue::Text(token_id.to_owned())],
    )
    .exactly(1, "the token was revoked by another request");
    store.append_with_writes(vec![draft], &[write]).await?;
    Ok(TokenInfo {
        revoked_ms: Some(now_ms),
        ..found
    })
}

/// An in-process cache of token lookups (positive answers only), so a busy token does not cost
/// a database round trip per request, without letting a revoked token live on.
///
/// Every cached answer belongs to a *generation*. The generation moves on when this instance
/// revokes a token ([`TokenCache::invalidate`], at once) and when a check of the database finds
/// that the set of revoked tokens changed (another instance or `treasury token revoke`). That
/// check is one small query, made by the first request after `recheck` has passed since the
/// last one (the other requests meanwhile wait for it), so a revocation holds on this instance
/// from the next request and on every other instance within `recheck`. A zero `recheck` turns
/// the cache off: every request looks its token up (ADR 0017).
#[derive(Debug, Clone)]
pub struct TokenCache {
    recheck: Duration,
    inner: Arc<CacheInner>,
}

#[derive(Debug)]
struct CacheInner {
    /// Token hash -> (generation, principal).
    map: Mutex<HashMap<String, (u64, Principal)>>,
    generation: AtomicU64,
    /// When the last revocation check started (`None`: never).
    checked: Mutex<Option<Instant>>,
    /// One check at a time; holds the revocation marker it last saw.
    check: tokio::sync::Mutex<Option<(i64, i64)>>,
}

/// Most cached tokens per instance (the cache starts over above it).
const CACHE_MAX: usize = 10_000;

impl TokenCache {
    /// A cache that re-checks revocations every `recheck` (zero: no cache).
    pub fn new(recheck: Duration) -> Self {
        TokenCache {
            recheck,
            inner: Arc::new(CacheInner {
                map: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                checked: Mutex::new(None),
                check: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Forgets every cached answer (after this instance revoked a token).
    pub fn invalidate(&self) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn fresh(&self) -> bool {
        let checked = *self
            .inner
            .checked
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        checked.is_some_and(|at| at.elapsed() < self.recheck)
    }

    /// Re-reads the revocation marker when the last check is older than `recheck`.
    async fn ensure_fresh(&self, store: &LedgerStore) -> Result<(), AuthError> {
        if self.fresh() {
            return Ok(());
        }
        let mut seen = self.inner.check.lock().await;
        if self.fresh() {
            return Ok(());
        }
        let started = Instant::now();
        let marker = revocation_marker(store).await?;
        if *seen != Some(marker) {
            if seen.is_some() {
                self.invalidate();
            }
            *seen = Some(marker);
        }
        *self
            .inner
            .checked
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(started);
        Ok(())
    }

    /// The principal of `token`, from the cache or the store.
    ///
    /// # Errors
    /// As [`lookup_token`].
    pub async fn principal(
        &self,
        store: &LedgerStore,
        token: &str,
    ) -> Result<Option<Principal>, AuthError> {
        if self.recheck.is_zero() {
            return lookup_token(store, token).await;
        }
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
            return Ok(None);
        }
        self.ensure_fresh(store).await?;
        let hash = token_hash(token);
        // The generation before the lookup: an answer read before a revocation that the next
        // check notices is never stored under the newer generation.
        let generation = self.inner.generation.load(Ordering::SeqCst);
        {
            let map = self
                .inner
                .map
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((g, p)) = map.get(&hash) {
                if *g == generation {
                    return Ok(Some(p.clone()));
                }
            }
        }
        let found = lookup_token(store, token).await?;
        let mut map = self
            .inner
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &found {
            Some(p) => {
                if map.len() >= CACHE_MAX {
                    map.clear();
                }
                map.insert(hash, (generation, p.clone()));
            }
            None => {
                map.remove(&hash);
            }
        }
        Ok(found)
    }
}

/// What changes whenever a token is revoked: how many are, and the latest revocation time.
async fn revocation_marker(store: &LedgerStore) -> Result<(i64, i64), AuthError> {
    let q = "SELECT COUNT(revoked_ms), COALESCE(MAX(revoked_ms), 0) FROM api_tokens";
    let marker: (i64, i64) = on_db!(store.db(), p => {
        let r = sqlx::query(q).fetch_one(p).await?;
        (r.try_get(0)?, r.try_get(1)?)
    });
    Ok(marker)
}
