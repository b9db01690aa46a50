//! `/v1/tokens`: listing and revoking API tokens (admin only).
//!
//! Why here and in the database: tokens live in the database, so a revocation made through
//! any instance (or `treasury token revoke`) holds on every instance: on the one that made it
//! from the next request on, on the others within their `token_recheck_ms` (ADR 0017); the
//! revocation is a ledger entry with the admin who made it as actor. Tokens are
//! created only with `treasury token create` on the database host (a token is shown once, and
//! an API that mints credentials would be one more thing to attack).
// utoipa's path macro expands to fully qualified paths.
#![allow(unused_qualifications)]

use axum::extract::{Path, State};
use axum::Json;

use crate::api::auth::{list_tokens, revoke_token, AuthError, TokenInfo};
use crate::api::problem::{ApiResult, Problem};
use crate::api::{AppState, Caller, Role};

fn auth_problem(e: AuthError) -> Problem {
    match e {
        AuthError::NotFound(_) => Problem::not_found(e.to_string()),
        AuthError::Store(s) => s.into(),
        other => Problem::internal(other),
    }
}

/// Every token (ids, principals, roles, scopes, creation and revocation times; never a secret).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = [TokenInfo])),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    caller.require(&[Role::Admin])?;
    Ok(Json(
        list_tokens(state.store()).await.map_err(auth_problem)?,
    ))
}

/// Revoke a token by its public id: refused on this instance from the next request on, on
/// every other within its `token_recheck_ms` (ledger: an operator note `api_token_revoked` with the caller as actor).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token's public id")),
    responses((status = 200, body = TokenInfo), (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    caller.require(&[Role::Admin])?;
    let t = revoke_token(state.store(), &id, &caller.0.name, crate::clock::now_ms())
        .await
        .map_err(auth_problem)?;
    state.tokens().invalidate();
    state.metrics().ledger_appended(1);
    Ok(Json(t))
}
