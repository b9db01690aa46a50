//! `/v1/spends`: spend requests through the API: create (idempotent), show, approvals,
//! signed PSBTs, the policy key's signature, broadcast, confirmations, cancel, fee bump.
//!
//! Why idempotency lives in the database: a client that retries after a timeout may reach
//! another instance. The key row (principal, key, body hash, request id) is inserted before
//! the request is built, so two instances racing on one key cannot both build; a failed build
//! removes it, so the retry can succeed. The body hash is over the parsed body re-serialized
//! (field order and white space do not matter; any value that changes the request does).
// utoipa's path macro expands to fully qualified paths.
#![allow(unused_qualifications)]

use std::str::FromStr;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bdk_wallet::bitcoin::address::NetworkUnchecked;
use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::{Address, Amount, FeeRate};
use custody::vault::spend::Payment;
use policies::approval::Approval;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::json::ApiJson;
use crate::api::problem::{ApiResult, Problem, ProblemKind};
use crate::api::{AppState, Caller, Role};
use crate::service::render::verdict_text;
use crate::service::spend::{At, Bump, CreateSpend};
use crate::store::idempotency;

/// The header carrying an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a response that replays an earlier creation.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// A key row without its request, older than this, is taken to be a crashed attempt.
const STALE_KEY_MS: i64 = 60_000;
/// Highest fee rate accepted in a body (sat/vB) before the service's own caps apply.
const MAX_FEE_RATE_SAT_VB: u32 = 100_000;

/// One payment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentBody {
    /// Recipient address (of the vault's network).
    pub address: String,
    /// Amount, integer satoshis (at least 1, at most 21 000 000 BTC).
    pub amount_sat: u64,
}

/// `POST /v1/spends`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSpendBody {
    /// The vault to pay from.
    pub vault: String,
    /// Payments (a batch).
    pub payments: Vec<PaymentBody>,
    /// Fee rate, sat/vB.
    pub fee_rate_sat_vb: u32,
    /// OP_RETURN memo (UTF-8, at most 80 bytes).
    #[serde(default)]
    pub memo: Option<String>,
    /// Confirmations after which the request is confirmed (default 6).
    #[serde(default)]
    pub confirmations: Option<u32>,
}

/// `POST /v1/spends/{id}/psbts`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PsbtBody {
    /// The PSBT with the officer's partial signatures (base64).
    pub psbt: String,
}

/// `POST /v1/spends/{id}/bump`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BumpBody {
    /// The new fee rate, sat/vB (above the request's).
    pub fee_rate_sat_vb: u32,
}

/// A body that must be an empty JSON object (`{}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// A spend request as shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SpendView {
    /// Request id.
    pub id: String,
    /// State (`pending_approval`, `ready_to_sign`, `broadcast`, ...).
    pub state: String,
    /// The verdict now, in words (what is missing).
    pub verdict: String,
    /// The policy evaluation now (decision, tier, counted, ignored approvals).
    #[schema(value_type = Object)]
    pub evaluation: serde_json::Value,
    /// The PSBT with every partial signature accepted so far (base64).
    pub signed_psbt: String,
    /// Partial signatures accepted so far.
    pub signatures: usize,
    /// The request file officers review and approve (`treasury officer approve` takes it).
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
}

/// A request in a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SpendSummary {
    /// Request id.
    pub id: String,
    /// Vault.
    pub vault: String,
    /// State.
    pub state: String,
}

/// `?vault=`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this vault.
    pub vault: Option<String>,
}

/// The result of a broadcast.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Broadcasted {
    /// Request id.
    pub id: String,
    /// The transaction id.
    pub txid: String,
}

/// The result of the policy key's signature.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicySigned {
    /// Request id.
    pub id: String,
    /// The key that signed.
    pub key: String,
    /// Inputs signed.
    pub inputs: usize,
    /// The tier applied.
    pub tier: Option<String>,
    /// The approvers who counted.
    pub counted: Vec<String>,
}

fn now() -> At {
    At::ms(crate::clock::now_ms())
}

const CREATORS: &[Role] = &[Role::Admin, Role::Officer, Role::Integrator];
const ALL: &[Role] = &[Role::Admin, Role::Officer, Role::Auditor, Role::Integrator];

/// The request's vault, checked against the token's scope (404 for an unknown request).
async fn scoped(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<crate::service::spend::StoredRequest> {
    let stored = state.spend().load(id).await?;
    caller.require_vault(&stored.request.vault)?;
    Ok(stored)
}

/// Everything shown about a request.
async fn view(state: &AppState, id: &str) -> ApiResult<SpendView> {
    let at = now();
    let v = state.spend().show(id, at).await?;
    let signed = state.spend().signed_psbt(id).await?;
    let file = v.request_file();
    Ok(SpendView {
        id: v.stored.request.id.clone(),
        state: v.stored.request.state.name().to_owned(),
        verdict: verdict_text(&v.evaluation, at.now_ms),
        evaluation: serde_json::to_value(&v.evaluation).map_err(Problem::internal)?,
        signed_psbt: signed.psbt.to_string(),
        signatures: signed.signatures,
        request: serde_json::to_value(&file).map_err(Problem::internal)?,
    })
}

fn check_key(key: &str) -> ApiResult<()> {
    let ok = !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Problem::bad_request(
            "Idempotency-Key must be 1 to 128 printable ASCII characters",
        ))
    }
}

/// Parses and checks a creation body against the vault's network (422 on any bad value).
fn payments(
    body: &CreateSpendBody,
    network: bdk_wallet::bitcoin::Network,
) -> ApiResult<Vec<Payment>> {
    if body.payments.is_empty() {
        return Err(Problem::validation("payments: at least one payment"));
    }
    if body.fee_rate_sat_vb == 0 || body.fee_rate_sat_vb > MAX_FEE_RATE_SAT_VB {
        return Err(Problem::validation(format!(
            "fee_rate_sat_vb must be 1 to {MAX_FEE_RATE_SAT_VB}"
        )));
    }
    if body.memo.as_ref().is_some_and(|m| m.len() > 80) {
        return Err(Problem::validation("memo: at most 80 bytes"));
    }
    let mut total = Amount::ZERO;
    let mut out = Vec::new();
    for (i, p) in body.payments.iter().enumerate() {
        let amount = Amount::from_sat(p.amount_sat);
        if amount == Amount::ZERO || amount > Amount::MAX_MONEY {
            return Err(Problem::validation(format!(
                "payments[{i}].amount_sat must be 1 to {}",
                Amount::MAX_MONEY.to_sat()
            )));
        }
        total = total
            .checked_add(amount)
            .filter(|t| *t <= Amount::MAX_MONEY)
            .ok_or_else(|| {
                Problem::validation("the payments add up to more than 21 000 000 BTC")
            })?;
        let address = Address::<NetworkUnchecked>::from_str(p.address.trim())
            .map_err(|e| Problem::validation(format!("payments[{i}].address: {e}")))?;
        if !address.is_valid_for_network(network) {
            return Err(Problem::validation(format!(
                "payments[{i}].address is not a {network} address"
            )));
        }
        out.push(Payment { address, amount });
    }
    Ok(out)
}

fn random_id() -> String {
    use rand_core::{OsRng, RngCore};
    let mut b = [0u8; 10];
    OsRng.fill_bytes(&mut b);
    format!("req-{}", hex::encode(b))
}

enum KeyState {
    /// The key is new: it is now held for this request id.
    Fresh(String),
    /// The key was used with the same body for this request.
    Replay(String),
}

async fn claim_key(
    state: &AppState,
    principal: &str,
    key: &str,
    body_hash: &str,
) -> ApiResult<KeyState> {
    let store = state.store();
    for _ in 0..3 {
        let row = idempotency::find_key(store, principal, key)
            .await
            .map_err(Problem::internal)?;
        if let Some((hash, id, created)) = row {
            if hash != body_hash {
                return Err(Problem::new(
                    ProblemKind::IdempotencyConflict,
                    "this Idempotency-Key was used with another request body",
                ));
            }
            match state.spend().load(&id).await {
                Ok(_) => return Ok(KeyState::Replay(id)),
                Err(crate::service::spend::SpendServiceError::NotFound(_)) => {
                    if crate::clock::now_ms().saturating_sub(created) < STALE_KEY_MS {
                        return Err(Problem::new(
                            ProblemKind::IdempotencyInProgress,
                            "a request with this Idempotency-Key is being created; retry shortly",
                        ));
                    }
                    // A crashed attempt: take the key over.
                    release_key(state, principal, key, &id).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let id = random_id();
        let n = idempotency::insert_key(
            store,
            principal,
            key,
            body_hash,
            &id,
            crate::clock::now_ms(),
        )
        .await
        .map_err(Problem::internal)?;
        if n == 1 {
            return Ok(KeyState::Fresh(id));
        }
    }
    Err(Problem::new(
        ProblemKind::IdempotencyInProgress,
        "a request with this Idempotency-Key is being created; retry shortly",
    ))
}

async fn release_key(state: &AppState, principal: &str, key: &str, id: &str) {
    let r = idempotency::delete_key(state.store(), principal, key, id).await;
    if let Err(e) = r {
        tracing::error!(error = %e, "cannot release an idempotency key");
    }
}

fn created(v: SpendView, replay: bool) -> Response {
    let status = if replay {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut resp = (status, Json(v)).into_response();
    if replay {
        resp.headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

/// Create a spend request: build the PSBT (reserving coins), bind it to the active policy and
/// submit it for approval. With an `Idempotency-Key`, the same key and body return the same
/// request (200, `Idempotent-Replayed: true`); the same key with another body is 409.
#[utoipa::path(post, path = "/v1/spends", tag = "spends",
    request_body = CreateSpendBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses(
        (status = 201, body = SpendView, description = "Created"),
        (status = 200, body = SpendView, description = "Replayed (same key and body)"),
        (status = 409, body = crate::api::problem::ProblemBody),
        (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateSpendBody>,
) -> ApiResult<Response> {
    caller.require(CREATORS)?;
    caller.require_vault(&body.vault)?;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| Problem::bad_request("Idempotency-Key is not ASCII"))?
                .to_owned();
            check_key(&k)?;
            Some(k)
        }
        None => None,
    };
    let cfg = state.spend().vaults.vaults.config(&body.vault).await?;
    let payments = payments(&body, cfg.descriptor.network)?;
    let principal = caller.0.name.clone();
    let (id, claimed) = match &key {
        Some(k) => {
            let canonical = serde_json::to_vec(&body).map_err(Problem::internal)?;
            let hash = hex::encode(hashcore::sha256(&canonical));
            match claim_key(&state, &principal, k, &hash).await? {
                KeyState::Replay(id) => return Ok(created(view(&state, &id).await?, true)),
                KeyState::Fresh(id) => (id, true),
            }
        }
        None => (random_id(), false),
    };
    let c = CreateSpend {
        id: Some(id.clone()),
        vault: body.vault.clone(),
        initiator: principal.clone(),
        payments,
        fee_rate: FeeRate::from_sat_per_vb_u32(body.fee_rate_sat_vb),
        memo: body.memo.clone().map(String::into_bytes),
        confirmations_required: body.confirmations.unwrap_or(6),
    };
    let mut rng = rand::rngs::OsRng;
    let result = state
        .spend()
        .create(&c, &state.inner.fee_caps, now(), &mut rng)
        .await;
    match result {
        Ok(_) => {
            state.metrics().ledger_appended(1);
            Ok(created(view(&state, &id).await?, false))
        }
        Err(e) => {
            if let (true, Some(k)) = (claimed, &key) {
                release_key(&state, &principal, k, &id).await;
            }
            Err(e.into())
        }
    }
}

/// List spend requests (of the vaults the token covers).
#[utoipa::path(get, path = "/v1/spends", tag = "spends", params(ListQuery),
    responses((status = 200, body = [SpendSummary])),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<SpendSummary>>> {
    caller.require(ALL)?;
    if let Some(v) = &q.vault {
        caller.require_vault(v)?;
    }
    let rows = state.spend().list(q.vault.as_deref()).await?;
    Ok(Json(
        rows.into_iter()
            .filter(|(_, vault, _)| caller.0.may_see_vault(vault))
            .map(|(id, vault, state)| SpendSummary { id, vault, state })
            .collect(),
    ))
}

/// Show a request: state, PSBT signed so far, the policy verdict and what is missing.
#[utoipa::path(get, path = "/v1/spends/{id}", tag = "spends",
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = SpendView), (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SpendView>> {
    caller.require(ALL)?;
    scoped(&state, &caller, &id).await?;
    Ok(Json(view(&state, &id).await?))
}

/// Submit the calling officer's own approval (or rejection), as `treasury officer approve`
/// writes it; it is verified against the request and the policy on arrival.
#[utoipa::path(post, path = "/v1/spends/{id}/approvals", tag = "spends",
    params(("id" = String, Path, description = "Request id")),
    request_body(content = Object, description = "The signed approval (policies::approval::Approval JSON)"),
    responses((status = 200, body = SpendView), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(approval): ApiJson<Approval>,
) -> ApiResult<Json<SpendView>> {
    caller.require(&[Role::Officer])?;
    scoped(&state, &caller, &id).await?;
    if approval.approver != caller.0.name {
        return Err(Problem::forbidden(
            "an officer submits only their own approval (approver must be the token's principal)",
        ));
    }
    if approval.request_id != id {
        return Err(Problem::validation("the approval is for another request"));
    }
    state.spend().approve(&id, approval, now()).await?;
    state.metrics().ledger_appended(1);
    if let Some(client) = state.signer_client() {
        // The approval is recorded; a signer that cannot be told now counts it from when it
        // first sees it (the safe direction).
        if let Err(e) = state.spend().forward_approvals(&id, client).await {
            tracing::warn!(request = %id, error = %e, "the policy signer was not told about an approval");
        }
    }
    Ok(Json(view(&state, &id).await?))
}

/// Submit a PSBT with the officer's partial signatures (each verified on arrival).
#[utoipa::path(post, path = "/v1/spends/{id}/psbts", tag = "spends",
    params(("id" = String, Path, description = "Request id")),
    request_body = PsbtBody,
    responses((status = 200, body = SpendView), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn submit_psbt(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PsbtBody>,
) -> ApiResult<Json<SpendView>> {
    caller.require(&[Role::Officer])?;
    scoped(&state, &caller, &id).await?;
    let psbt =
        Psbt::from_str(body.psbt.trim()).map_err(|e| Problem::validation(format!("psbt: {e}")))?;
    state
        .spend()
        .submit_psbt(&id, psbt, &caller.0.name, now())
        .await?;
    state.metrics().ledger_appended(1);
    Ok(Json(view(&state, &id).await?))
}

/// A shared signer as a signer (the policy signer takes one by value).
pub(crate) struct SharedKey(pub(crate) crate::api::SharedSigner);

impl hsm::Signer for SharedKey {
    fn id(&self) -> &str {
        self.0.id()
    }
    fn public_keys(&self) -> Result<Vec<hsm::HeldKey>, hsm::HsmError> {
        self.0.public_keys()
    }
    fn sign_psbt(&self, psbt: &mut Psbt) -> Result<hsm::SignReport, hsm::HsmError> {
        self.0.sign_psbt(psbt)
    }
}

/// Ask the policy key (HSM) to sign: the policy signer re-checks the approvals, the quorum,
/// delays, expiry and the freeze itself before it signs.
#[utoipa::path(post, path = "/v1/spends/{id}/policy-sign", tag = "spends",
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = PolicySigned), (status = 422, body = crate::api::problem::ProblemBody),
        (status = 503, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn policy_sign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PolicySigned>> {
    caller.require(&[Role::Admin, Role::Officer])?;
    scoped(&state, &caller, &id).await?;
    let client = state
        .inner
        .signer_client
        .clone()
        .ok_or_else(|| Problem::unavailable("no policy signer is configured"))?;
    let actor = custody::ledger::Actor::new(caller.0.name.clone()).map_err(Problem::internal)?;
    let receipt = crate::actor::acting_as(actor, state.spend().policy_sign(&id, &client, now()))
        .await
        .map_err(|e| crate::api::policy_signer::policy_sign_problem(&e))?;
    state.metrics().ledger_appended(1);
    let key = match client.status().await {
        Ok(s) => s.policy_key,
        Err(_) => "unknown".to_owned(),
    };
    let s = receipt.spend;
    Ok(Json(PolicySigned {
        id,
        key,
        inputs: s.inputs.len(),
        tier: s.tier,
        counted: s.counted,
    }))
}

/// Finalize (every input verified), test with the node and broadcast.
#[utoipa::path(post, path = "/v1/spends/{id}/broadcast", tag = "spends",
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = Broadcasted), (status = 422, body = crate::api::problem::ProblemBody),
        (status = 503, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn broadcast(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Broadcasted>> {
    caller.require(CREATORS)?;
    scoped(&state, &caller, &id).await?;
    let node = state
        .node()
        .cloned()
        .ok_or_else(|| Problem::unavailable("no bitcoin node is configured"))?;
    let txid = state.spend().broadcast(&id, &node, now()).await?;
    state.metrics().ledger_appended(1);
    Ok(Json(Broadcasted {
        id,
        txid: txid.to_string(),
    }))
}

/// Sync the request's vault and record its transaction's confirmations.
#[utoipa::path(post, path = "/v1/spends/{id}/follow", tag = "spends",
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = SpendView), (status = 503, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn follow(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SpendView>> {
    caller.require(CREATORS)?;
    scoped(&state, &caller, &id).await?;
    let node = state
        .node()
        .cloned()
        .ok_or_else(|| Problem::unavailable("no bitcoin node is configured"))?;
    state.spend().follow(&id, &node, now()).await?;
    Ok(Json(view(&state, &id).await?))
}

/// Cancel a request and release its coins (an integrator cancels only its own requests).
#[utoipa::path(post, path = "/v1/spends/{id}/cancel", tag = "spends",
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = SpendView), (status = 409, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SpendView>> {
    caller.require(CREATORS)?;
    let stored = scoped(&state, &caller, &id).await?;
    if caller.0.role == Role::Integrator && stored.request.initiator != caller.0.name {
        return Err(Problem::forbidden(
            "an integrator cancels only the requests it created",
        ));
    }
    state.spend().cancel(&id, &caller.0.name, now()).await?;
    state.metrics().ledger_appended(1);
    Ok(Json(view(&state, &id).await?))
}

/// Replace a request not yet signed by one at a higher fee rate (new approvals needed).
#[utoipa::path(post, path = "/v1/spends/{id}/bump", tag = "spends",
    params(("id" = String, Path, description = "Request id")),
    request_body = BumpBody,
    responses((status = 201, body = SpendView), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn bump(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BumpBody>,
) -> ApiResult<(StatusCode, Json<SpendView>)> {
    caller.require(CREATORS)?;
    scoped(&state, &caller, &id).await?;
    if body.fee_rate_sat_vb == 0 || body.fee_rate_sat_vb > MAX_FEE_RATE_SAT_VB {
        return Err(Problem::validation(format!(
            "fee_rate_sat_vb must be 1 to {MAX_FEE_RATE_SAT_VB}"
        )));
    }
    let b = Bump {
        old_id: id,
        new_id: Some(random_id()),
        fee_rate: FeeRate::from_sat_per_vb_u32(body.fee_rate_sat_vb),
        initiator: caller.0.name.clone(),
    };
    let mut rng = rand::rngs::OsRng;
    let stored = state
        .spend()
        .bump(&b, &state.inner.fee_caps, now(), &mut rng)
        .await?;
    state.metrics().ledger_appended(1);
    Ok((
        StatusCode::CREATED,
        Json(view(&state, &stored.request.id).await?),
    ))
}
