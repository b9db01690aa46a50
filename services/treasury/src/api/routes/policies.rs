//! `/v1/policies`: the active version, the versions and proposals, proposing, approving a
//! proposal with admin signatures, and simulating a request under a policy.
//!
//! Why approvals carry only signatures: the change order is the stored proposal's own (the
//! service derives it), so an admin cannot approve a different order by mistake; each
//! signature is still the admin's own, made offline with `treasury officer sign-order`.
// utoipa's path macro expands to fully qualified paths.
#![allow(unused_qualifications)]

use std::str::FromStr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use policies::freeze::AdminSignature;
use policies::PolicyHash;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::json::ApiJson;
use crate::api::problem::{ApiResult, Problem};
use crate::api::{AppState, Caller, Role};
use crate::files::order_file::OrderFile;
use crate::service::governance::{ApproveOutcome, PolicyVersion};

/// A policy version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    /// Content hash.
    pub hash: String,
    /// Version number.
    pub version: u64,
    /// Name.
    pub name: String,
    /// `proposed`, `accepted`, `active`, `superseded` or `vetoed`.
    pub status: String,
    /// The version it changes.
    pub base: Option<String>,
    /// `tightening` or `loosening`.
    pub kind: Option<String>,
    /// What a loosening loosens.
    pub loosened: Vec<String>,
    /// Issue time.
    pub issued_at_ms: i64,
    /// When an accepted loosening activates.
    pub activates_at_ms: Option<i64>,
    /// When it became active.
    pub activated_ms: Option<i64>,
    /// The document (TOML).
    pub document: String,
    /// The change order admins sign (`{"change": ...}`), for a proposal.
    #[schema(value_type = Option<Object>)]
    pub order: Option<serde_json::Value>,
}

fn view(v: &PolicyVersion) -> ApiResult<PolicyView> {
    let order = match v.order() {
        Some(o) => Some(serde_json::to_value(OrderFile::Change(o)).map_err(Problem::internal)?),
        None => None,
    };
    Ok(PolicyView {
        hash: v.hash.to_string(),
        version: v.policy.version(),
        name: v.policy.name().to_owned(),
        status: v.status.as_str().to_owned(),
        base: v.base.as_ref().map(ToString::to_string),
        kind: v.kind.map(|k| format!("{k:?}").to_lowercase()),
        loosened: v.loosened.clone(),
        issued_at_ms: v.issued_at_ms,
        activates_at_ms: v.activates_at_ms,
        activated_ms: v.activated_ms,
        document: v.document.clone(),
        order,
    })
}

/// `POST /v1/policies/proposals`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeBody {
    /// The new policy document (TOML).
    pub document: String,
}

/// `POST /v1/policies/proposals/{hash}/approvals`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// Admin signatures of the proposal's change order (`treasury officer sign-order`).
    #[schema(value_type = Vec<Object>)]
    pub signatures: Vec<AdminSignature>,
}

/// The outcome of an approval.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApproveResult {
    /// `waiting`, `accepted` or `activated`.
    pub outcome: String,
    /// Admins who signed so far (waiting).
    pub signed: Vec<String>,
    /// Signatures needed (waiting).
    pub need: Option<u32>,
    /// Activation time (accepted).
    pub activates_at_ms: Option<i64>,
}

/// `POST /v1/policies/simulate`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateBody {
    /// The policy to evaluate under (default: the active version).
    pub policy_hash: Option<String>,
    /// The request, history, approvals and context (as `treasury policy simulate --request`).
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
}

const STAFF: &[Role] = &[Role::Admin, Role::Officer, Role::Auditor];

/// The active policy version.
#[utoipa::path(get, path = "/v1/policies/active", tag = "policies",
    responses((status = 200, body = PolicyView), (status = 409, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn active(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<PolicyView>> {
    caller.require(&[Role::Admin, Role::Officer, Role::Auditor, Role::Integrator])?;
    let v = state
        .spend()
        .governance
        .active(crate::clock::now_ms())
        .await?;
    Ok(Json(view(&v)?))
}

/// Every version (active, proposals, history).
#[utoipa::path(get, path = "/v1/policies", tag = "policies",
    responses((status = 200, body = [PolicyView])), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<PolicyView>>> {
    caller.require(STAFF)?;
    let vs = state.spend().governance.history().await?;
    Ok(Json(vs.iter().map(view).collect::<ApiResult<Vec<_>>>()?))
}

/// Propose a new version (admins then sign its change order).
#[utoipa::path(post, path = "/v1/policies/proposals", tag = "policies", request_body = ProposeBody,
    responses((status = 201, body = PolicyView), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn propose(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ProposeBody>,
) -> ApiResult<(StatusCode, Json<PolicyView>)> {
    caller.require(&[Role::Admin])?;
    let v = state
        .spend()
        .governance
        .propose(&body.document, &caller.0.name, crate::clock::now_ms())
        .await?;
    state.metrics().ledger_appended(1);
    Ok((StatusCode::CREATED, Json(view(&v)?)))
}

/// Approve a proposal with admin signatures of its change order.
#[utoipa::path(post, path = "/v1/policies/proposals/{hash}/approvals", tag = "policies",
    params(("hash" = String, Path, description = "The proposal's hash")),
    request_body = ApproveBody,
    responses((status = 200, body = ApproveResult), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(hash): Path<String>,
    ApiJson(body): ApiJson<ApproveBody>,
) -> ApiResult<Json<ApproveResult>> {
    caller.require(&[Role::Admin])?;
    let h = PolicyHash::from_str(&hash)
        .map_err(|_| Problem::not_found(format!("no proposal {hash:?}")))?;
    let g = &state.spend().governance;
    let v = g.version(&h).await?;
    let order = v
        .order()
        .ok_or_else(|| Problem::validation("this version is not a proposal"))?;
    let out = g
        .approve(&order, &body.signatures, crate::clock::now_ms())
        .await?;
    state.metrics().ledger_appended(1);
    Ok(Json(match out {
        ApproveOutcome::Waiting { signed, need } => ApproveResult {
            outcome: "waiting".into(),
            signed,
            need: Some(need),
            activates_at_ms: None,
        },
        ApproveOutcome::Accepted { activates_at_ms } => ApproveResult {
            outcome: "accepted".into(),
            signed: Vec::new(),
            need: None,
            activates_at_ms: Some(activates_at_ms),
        },
        ApproveOutcome::Activated => ApproveResult {
            outcome: "activated".into(),
            signed: Vec::new(),
            need: None,
            activates_at_ms: None,
        },
    }))
}

/// Evaluate a hypothetical request under a policy (nothing is stored).
#[utoipa::path(post, path = "/v1/policies/simulate", tag = "policies", request_body = SimulateBody,
    responses((status = 200, body = Object), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn simulate(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SimulateBody>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(&[Role::Admin, Role::Officer, Role::Auditor, Role::Integrator])?;
    let g = &state.spend().governance;
    let v = match &body.policy_hash {
        Some(h) => {
            let h = PolicyHash::from_str(h)
                .map_err(|_| Problem::not_found(format!("no policy {h:?}")))?;
            g.version(&h).await?
        }
        None => g.active(crate::clock::now_ms()).await?,
    };
    let text = serde_json::to_string(&body.request).map_err(Problem::internal)?;
    let eval = crate::service::policy::simulate(&v.policy, &text).map_err(Problem::validation)?;
    Ok(Json(eval))
}
