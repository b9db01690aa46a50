//! The public endpoints beside `/v1`: health and readiness checks, metrics, the OpenAPI
//! document, `whoami` and the fallbacks.
//!
//! Why apart: probes and scrapers call these without a token; they report on the service,
//! not on a resource.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::openapi;
use super::{AppState, Caller};
use super::{Problem, ProblemKind};

/// `GET /healthz`: the process is up.
pub(super) async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the database and (when configured) the node answer.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let db = state.inner.store.head().await.map(|h| h.size());
    let node = match state.inner.node.clone() {
        Some(n) => Some(
            tokio::task::spawn_blocking(move || {
                use bitcoincore_rpc::RpcApi;
                n.client()
                    .map_err(|e| e.to_string())?
                    .get_block_count()
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r),
        ),
        None => None,
    };
    let db_ok = db.is_ok();
    let node_ok = matches!(node, Some(Ok(_)));
    if let Err(e) = &db {
        tracing::warn!(error = %e, "readiness: database unreachable");
    }
    if let Some(Err(e)) = &node {
        tracing::warn!(error = %e, "readiness: node unreachable");
    }
    let body = serde_json::json!({
        "status": if db_ok && node_ok { "ready" } else { "not ready" },
        "database": if db_ok { "ok" } else { "unreachable" },
        "node": match &node { Some(Ok(_)) => "ok", Some(Err(_)) => "unreachable", None => "not configured" },
        "ledger_size": db.ok(),
        "node_height": node.and_then(|n| n.ok()),
    });
    let status = if db_ok && node_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text.
pub(super) async fn metrics_text(State(state): State<AppState>) -> Response {
    let size = state.inner.store.head().await.ok().map(|h| h.size());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.inner.metrics.render(size),
    )
        .into_response()
}

/// `GET /v1/openapi.json`: the OpenAPI 3.1 document (public, like the health checks).
pub(super) async fn openapi_doc() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::openapi_json(),
    )
        .into_response()
}

pub(super) async fn not_found() -> Problem {
    Problem::not_found("no such route")
}

pub(super) async fn method_not_allowed() -> Problem {
    Problem::new(
        ProblemKind::MethodNotAllowed,
        "the route does not take this method",
    )
}

/// `GET /v1/whoami`: the caller's principal, role and scopes.
pub(super) async fn whoami(caller: Caller) -> impl IntoResponse {
    Json(serde_json::json!({
        "principal": caller.0.name,
        "role": caller.0.role,
        "vaults": caller.0.vaults,
        "token_id": caller.0.token_id,
    }))
}
