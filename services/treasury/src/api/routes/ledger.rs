//! `/v1/ledger` and `/v1/events`: entries (paginated), one entry, the head, checkpoints,
//! inclusion and consistency proofs, and the Server-Sent Events stream of entries.
//!
//! Why entries are served in the export format ([`custody::ledger::EntryJson`]): an auditor
//! feeds what the API returns straight into `treasury audit`. Why the event stream polls the
//! database: another instance may append, and the ledger (not a process) is the record, so
//! every instance streams the same entries in the same order, resumable from any seq.
// utoipa's path macro expands to fully qualified paths.
#![allow(unused_qualifications)]

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use custody::ledger::{
    consistency_proof, inclusion_proof, leaf_hashes, Actor, ConsistencyProofJson, Entry, EntryJson,
    InclusionProofJson, KeyFileSigner, Kind,
};
use futures_util::stream::Stream;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use crate::api::problem::{ApiResult, Problem};
use crate::api::{AppState, Caller, Role};
use crate::store::on_db;

/// Most entries per page.
pub const MAX_PAGE: u64 = 1000;

/// A ledger entry, as one line of `treasury ledger export`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntry {
    /// Sequence number.
    pub seq: u64,
    /// Unix time, milliseconds.
    pub time_ms: i64,
    /// Kind (`spend_requested`, `approval`, `signature`, `broadcast`, ...).
    pub kind: String,
    /// Who caused it (the API caller's principal for API calls).
    pub actor: String,
    /// Payload type (`bytes`, `note`, `checkpoint`).
    pub payload_type: String,
    /// Payload, hex.
    pub payload: String,
    /// Previous entry hash, hex.
    pub prev_hash: String,
    /// Entry hash, hex.
    pub entry_hash: String,
}

impl From<&Entry> for LedgerEntry {
    fn from(e: &Entry) -> Self {
        let j = EntryJson::from(e);
        LedgerEntry {
            seq: j.seq,
            time_ms: j.time_ms,
            kind: j.kind,
            actor: j.actor,
            payload_type: j.payload_type,
            payload: j.payload,
            prev_hash: j.prev_hash,
            entry_hash: j.entry_hash,
        }
    }
}

/// A page of entries.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EntryPage {
    /// The entries, in seq order.
    pub entries: Vec<LedgerEntry>,
    /// The `from` of the next page, when there are more entries.
    pub next: Option<u64>,
    /// Entries in the ledger.
    pub size: u64,
}

/// `?from=&limit=`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// First seq (default 0).
    pub from: Option<u64>,
    /// Entries per page (default 100, at most 1000).
    pub limit: Option<u64>,
}

/// The ledger head.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Head {
    /// Entries.
    pub size: u64,
    /// RFC 9162 root of the entry hashes, hex.
    pub root: String,
    /// Hash of the last entry, hex.
    pub last_hash: String,
}

/// A signed checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckpointView {
    /// The signed note (verify with the ledger's verifier key).
    pub note: String,
    /// The seq of the checkpoint entry.
    pub seq: u64,
}

/// `?seq=&size=`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The entry.
    pub seq: u64,
    /// The tree size (default: the whole log).
    pub size: Option<u64>,
}

/// `?from=&to=`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The old size.
    pub from: u64,
    /// The new size (default: the whole log).
    pub to: Option<u64>,
}

/// `?from=` of the event stream.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// First seq to send (default: after `Last-Event-ID`, else the next entry appended).
    pub from: Option<u64>,
}

const READERS: &[Role] = &[Role::Admin, Role::Officer, Role::Auditor, Role::Integrator];

/// The ledger covers every vault: a vault-scoped token may not read it.
fn require_unscoped(caller: &Caller) -> ApiResult<()> {
    caller.require(READERS)?;
    if caller.0.vaults.is_empty() {
        Ok(())
    } else {
        Err(Problem::forbidden(
            "the ledger covers every vault: a vault-scoped token cannot read it",
        ))
    }
}

/// Entries, paginated.
#[utoipa::path(get, path = "/v1/ledger/entries", tag = "ledger", params(PageQuery),
    responses((status = 200, body = EntryPage)), security(("bearer" = [])))]
pub async fn entries(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<EntryPage>> {
    require_unscoped(&caller)?;
    let from = q.from.unwrap_or(0);
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let size = state.store().head().await?.size();
    let to = from.saturating_add(limit).min(size);
    let entries = if from < to {
        state.store().entries_range(from, to).await?
    } else {
        Vec::new()
    };
    Ok(Json(EntryPage {
        entries: entries.iter().map(LedgerEntry::from).collect(),
        next: (to < size).then_some(to),
        size,
    }))
}

/// One entry.
#[utoipa::path(get, path = "/v1/ledger/entries/{seq}", tag = "ledger",
    params(("seq" = u64, Path, description = "Sequence number")),
    responses((status = 200, body = LedgerEntry), (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn entry(
    State(state): State<AppState>,
    caller: Caller,
    Path(seq): Path<u64>,
) -> ApiResult<Json<LedgerEntry>> {
    require_unscoped(&caller)?;
    let e = state
        .store()
        .entries_range(seq, seq.saturating_add(1))
        .await?;
    e.first()
        .map(|e| Json(LedgerEntry::from(e)))
        .ok_or_else(|| Problem::not_found(format!("no entry {seq}")))
}

/// The head: size and root.
#[utoipa::path(get, path = "/v1/ledger/head", tag = "ledger",
    responses((status = 200, body = Head)), security(("bearer" = [])))]
pub async fn head(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Head>> {
    require_unscoped(&caller)?;
    let h = state.store().head().await?;
    Ok(Json(Head {
        size: h.size(),
        root: hex::encode(h.root()),
        last_hash: hex::encode(h.last_hash()),
    }))
}

/// The latest signed checkpoint stored in the ledger.
#[utoipa::path(get, path = "/v1/ledger/checkpoints/latest", tag = "ledger",
    responses((status = 200, body = CheckpointView), (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn latest_checkpoint(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<CheckpointView>> {
    require_unscoped(&caller)?;
    let (seq, note) = latest(&state)
        .await?
        .ok_or_else(|| Problem::not_found("no checkpoint yet"))?;
    Ok(Json(CheckpointView { note, seq }))
}

/// The latest checkpoint entry's seq and note, if any.
async fn latest(state: &AppState) -> ApiResult<Option<(u64, String)>> {
    let q = "SELECT MAX(seq) FROM ledger_entries WHERE kind = $1";
    let code = i32::from(Kind::Checkpoint.code());
    let seq: Option<i64> = on_db!(state.store().db(), p => {
        sqlx::query(q)
            .bind(code)
            .fetch_one(p)
            .await
            .and_then(|r| r.try_get::<Option<i64>, _>(0))
            .map_err(Problem::internal)?
    });
    let Some(seq) = seq.and_then(|s| u64::try_from(s).ok()) else {
        return Ok(None);
    };
    let e = state.store().entries_range(seq, seq + 1).await?;
    let e = e
        .first()
        .ok_or_else(|| Problem::internal("checkpoint entry vanished"))?;
    let note = e
        .payload()
        .as_checkpoint()
        .map_err(Problem::internal)?
        .note()
        .to_owned();
    Ok(Some((seq, note)))
}

/// The latest signed checkpoint note, if any.
///
/// # Errors
/// A problem when the store fails.
pub async fn latest_note(state: &AppState) -> ApiResult<Option<String>> {
    Ok(latest(state).await?.map(|(_, n)| n))
}

/// Sign a checkpoint of the whole log with the ledger key and store it.
#[utoipa::path(post, path = "/v1/ledger/checkpoints", tag = "ledger",
    responses((status = 201, body = CheckpointView), (status = 503, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn checkpoint(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<(StatusCode, Json<CheckpointView>)> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let key = state
        .inner
        .ledger_key
        .clone()
        .ok_or_else(|| Problem::unavailable("no ledger key is configured"))?;
    let actor = Actor::new(caller.0.name.clone()).map_err(Problem::internal)?;
    let store = state.store().clone();
    let origin = state.inner.ledger_origin.clone();
    let handle = tokio::runtime::Handle::current();
    // The signer is not `Sync`: sign on a blocking thread that drives the append itself.
    let (note, e) = tokio::task::spawn_blocking(move || {
        let signer = KeyFileSigner::from_key_file(&key).map_err(Problem::internal)?;
        handle
            .block_on(store.checkpoint(&origin, &actor, crate::clock::now_ms(), &signer))
            .map_err(Problem::from)
    })
    .await
    .map_err(Problem::internal)??;
    state.metrics().ledger_appended(1);
    Ok((
        StatusCode::CREATED,
        Json(CheckpointView { note, seq: e.seq() }),
    ))
}

/// An inclusion proof of entry `seq` in the tree of `size` entries (the JSON
/// `treasury audit inclusion` takes).
#[utoipa::path(get, path = "/v1/ledger/proofs/inclusion", tag = "ledger", params(InclusionQuery),
    responses((status = 200, body = Object), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn inclusion(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<InclusionQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    require_unscoped(&caller)?;
    let head = state.store().head().await?;
    let size = q.size.unwrap_or(head.size());
    if size > head.size() {
        return Err(Problem::validation(format!(
            "tree size {size} is beyond the log, which has {} entries",
            head.size()
        )));
    }
    let hashes = state.store().entry_hashes(size).await?;
    let proof = inclusion_proof(&leaf_hashes(&hashes), q.seq, size)
        .map_err(|e| Problem::validation(e.to_string()))?;
    let entry_hash = usize::try_from(q.seq)
        .ok()
        .and_then(|i| hashes.get(i))
        .ok_or_else(|| Problem::validation(format!("seq {} is not in the tree", q.seq)))?;
    let text = InclusionProofJson::new(&proof, entry_hash).to_json();
    Ok(Json(
        serde_json::from_str(&text).map_err(Problem::internal)?,
    ))
}

/// A consistency proof from tree size `from` to `to` (the JSON `treasury audit consistency`
/// takes).
#[utoipa::path(get, path = "/v1/ledger/proofs/consistency", tag = "ledger", params(ConsistencyQuery),
    responses((status = 200, body = Object), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn consistency(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    require_unscoped(&caller)?;
    let head = state.store().head().await?;
    let to = q.to.unwrap_or(head.size());
    if to > head.size() {
        return Err(Problem::validation(format!(
            "tree size {to} is beyond the log, which has {} entries",
            head.size()
        )));
    }
    let hashes = state.store().entry_hashes(to).await?;
    let proof = consistency_proof(&leaf_hashes(&hashes), q.from, to)
        .map_err(|e| Problem::validation(e.to_string()))?;
    let text = ConsistencyProofJson::new(&proof).to_json();
    Ok(Json(
        serde_json::from_str(&text).map_err(Problem::internal)?,
    ))
}

/// Server-Sent Events: one event per ledger entry (`id` = seq, `event` = kind, `data` = the
/// entry as in the export). Resumes after `Last-Event-ID`, or from `?from=`; without either
/// it starts at the next entry appended.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this seq")),
    responses((status = 200, content_type = "text/event-stream", body = String)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    require_unscoped(&caller)?;
    let last = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| Problem::bad_request("Last-Event-ID must be a seq"))?,
        ),
        None => None,
    };
    let start = match (q.from, last) {
        (Some(f), _) => f,
        (None, Some(l)) => l.saturating_add(1),
        (None, None) => state.store().head().await?.size(),
    };
    let poll = state.limits().events_poll;
    let shutdown = state.shutdown_signal();
    let stream = futures_util::stream::unfold(
        (state, start, Vec::<Entry>::new().into_iter(), shutdown),
        move |(state, mut next, mut buffered, mut shutdown)| async move {
            loop {
                if let Some(e) = buffered.next() {
                    let ev = Event::default()
                        .id(e.seq().to_string())
                        .event(e.kind().name())
                        .data(custody::ledger::to_json_line(&e));
                    return Some((Ok(ev), (state, next, buffered, shutdown)));
                }
                if *shutdown.borrow() {
                    return None;
                }
                match state
                    .store()
                    .entries_range(next, next.saturating_add(100))
                    .await
                {
                    Ok(v) if !v.is_empty() => {
                        next = v.last().map_or(next, |e| e.seq() + 1);
                        buffered = v.into_iter();
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "event stream: cannot read the ledger"),
                }
                tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    _ = shutdown.changed() => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
