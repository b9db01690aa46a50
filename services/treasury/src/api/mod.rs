//! The HTTPS API (`treasury serve`): integrators, officers and auditors reach the reserve
//! through it.
//!
//! Why it is built this way:
//! - Every route names the roles that may call it ([`auth::Role`]); a token belongs to a
//!   principal, whose name is the actor of every ledger entry the call writes.
//! - All state lives in the database (ledger, vaults, coin reservations, spend requests,
//!   tokens, idempotency keys), so several instances against one PostgreSQL database are one
//!   service; only rate-limit buckets live in a process (token lookups are not cached, so a
//!   revocation holds everywhere at once).
//! - Errors are RFC 9457 problems ([`problem`]) with stable `type` URIs; internals are logged
//!   with the request id, never sent.
//! - The handlers call the same service code as the CLIs (`spend`, `signing`, `vaults`,
//!   `governance`, the ledger store); the API adds authentication, limits and JSON.

pub mod auth;
pub mod config;
mod health;
pub mod json;
pub mod metrics;
mod middleware;
pub mod openapi;
pub mod policy_signer;
pub mod problem;
pub mod ratelimit;
pub mod routes;
pub mod server;
mod state;

use axum::routing::{get, post};
use axum::Router;

pub use auth::{issue_token, Principal, Role};
pub use config::ServeConfig;
pub use middleware::Caller;
pub use problem::{Problem, ProblemKind};
pub use server::{bind, bind_state, init_logging, ServeError, Server};
pub use state::{
    open_signer, AppState, AppStateBuilder, ConnInfo, Limits, RequestId, SharedSigner,
};

use health::{healthz, method_not_allowed, metrics_text, not_found, openapi_doc, readyz, whoami};
use middleware::{authenticate, request_context};

use routes::{ledger, policies, reserves, spends, tokens, vaults};

/// The `/v1` routes, each behind authentication.
fn v1_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/vaults", get(vaults::list))
        .route("/v1/vaults/{name}", get(vaults::show))
        .route("/v1/vaults/{name}/balance", get(vaults::balance))
        .route("/v1/vaults/{name}/utxos", get(vaults::utxos))
        .route("/v1/vaults/{name}/export", get(vaults::export))
        .route("/v1/vaults/{name}/addresses", post(vaults::next_address))
        .route(
            "/v1/vaults/{name}/addresses/{address}",
            get(vaults::verify_address),
        )
        .route("/v1/vaults/{name}/sync", post(vaults::sync))
        .route("/v1/spends", post(spends::create).get(spends::list))
        .route("/v1/spends/{id}", get(spends::show))
        .route("/v1/spends/{id}/approvals", post(spends::approve))
        .route("/v1/spends/{id}/psbts", post(spends::submit_psbt))
        .route("/v1/spends/{id}/policy-sign", post(spends::policy_sign))
        .route("/v1/spends/{id}/broadcast", post(spends::broadcast))
        .route("/v1/spends/{id}/follow", post(spends::follow))
        .route("/v1/spends/{id}/cancel", post(spends::cancel))
        .route("/v1/spends/{id}/bump", post(spends::bump))
        .route("/v1/policies", get(policies::list))
        .route("/v1/policies/active", get(policies::active))
        .route("/v1/policies/proposals", post(policies::propose))
        .route(
            "/v1/policies/proposals/{hash}/approvals",
            post(policies::approve),
        )
        .route("/v1/policies/simulate", post(policies::simulate))
        .route("/v1/ledger/entries", get(ledger::entries))
        .route("/v1/ledger/entries/{seq}", get(ledger::entry))
        .route("/v1/ledger/head", get(ledger::head))
        .route("/v1/ledger/checkpoints", post(ledger::checkpoint))
        .route(
            "/v1/ledger/checkpoints/latest",
            get(ledger::latest_checkpoint),
        )
        .route("/v1/ledger/proofs/inclusion", get(ledger::inclusion))
        .route("/v1/ledger/proofs/consistency", get(ledger::consistency))
        .route("/v1/events", get(ledger::events))
        .route(
            "/v1/reserves/proofs",
            post(reserves::request_proof).get(reserves::list_proofs),
        )
        .route("/v1/reserves/proofs/{id}", get(reserves::show_proof))
        .route(
            "/v1/reserves/proofs/{id}/psbt",
            get(reserves::proof_psbt).post(reserves::submit_proof_psbt),
        )
        .route(
            "/v1/reserves/proofs/{id}/policy-signature",
            post(reserves::policy_sign_proof),
        )
        .route(
            "/v1/reserves/proofs/{id}/finalize",
            post(reserves::finalize_proof),
        )
        .route("/v1/reserves/proofs/{id}/bundle", get(reserves::bundle))
        .route(
            "/v1/reserves/proofs/{id}/subject",
            get(reserves::proof_subject),
        )
        .route(
            "/v1/reserves/proofs/{id}/approvals",
            get(reserves::proof_approvals).post(reserves::approve_proof),
        )
        .route("/v1/tokens", get(tokens::list))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
}

/// The whole API: `/healthz`, `/readyz`, `/metrics` and the authenticated `/v1` routes.
pub fn app(state: AppState) -> Router {
    let limit = state.inner.limits.body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi_doc))
        .merge(v1_routes(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}
