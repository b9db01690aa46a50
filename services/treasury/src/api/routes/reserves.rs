//! `/v1/reserves`: proofs of reserves (BIP-127) through the API, on the proof store.
//!
//! Why like this:
//! - The handlers are thin layers over [`ReserveService`], the same service
//!   `treasury reserves ...` runs: a request made here can be signed with the CLI and the other
//!   way round, and there is one store of proofs, one set of ledger entries.
//! - Who may do what (docs/api.md has the table): an auditor (and an admin) asks for a proof
//!   and downloads its bundle; officers read it and submit their signed PSBTs; the policy key
//!   signs at an officer's or admin's request; finalizing needs no authority (it only
//!   assembles signatures already verified) so any reader may do it. Integrators have no part
//!   in reserve proofs. A token scoped to vaults sees only proofs over vaults it covers.
//! - Every step is a ledger entry written by the service in the same transaction as the row it
//!   changes; the API runs each request as its caller ([`crate::actor`]), so each entry
//!   names the principal who caused it.
//! - The bundle is served as one JSON document ([`Bundle::to_json`]) with its SHA-256 in a
//!   `Repr-Digest` header (RFC 9530); an auditor turns it back into files with
//!   [`Bundle::from_json`] and [`Bundle::write_to`] and runs `treasury audit reserves` against
//!   their own node. When the latest checkpoint does not cover the proof's entries and the
//!   service has the ledger key, the download signs a fresh checkpoint (itself a ledger entry
//!   with the caller as actor).
// utoipa's path macro expands to fully qualified paths.
#![allow(unused_qualifications)]

use std::str::FromStr;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bdk_wallet::bitcoin::psbt::Psbt;
use custody::ledger::{KeyFileSigner, VerifierKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::json::ApiJson;
use crate::api::json::{op_problem, signing_problem};
use crate::api::problem::{ApiResult, Problem, ProblemKind};
use crate::api::{AppState, Caller, Role};
use crate::files::bundle::{Bundle, ProofOutput};
use crate::service::reserves::{
    BundleOptions, CheckpointSource, ProofForm, ProofState, ProveRequest, ReserveService,
    ReserveServiceError, StoredProof,
};

/// Who may ask for a proof and download bundles.
const REQUESTERS: &[Role] = &[Role::Admin, Role::Auditor];
/// Who may read proofs (and finalize them).
const READERS: &[Role] = &[Role::Admin, Role::Officer, Role::Auditor];
/// Who may ask the policy key to sign.
const POLICY: &[Role] = &[Role::Admin, Role::Officer];

/// `POST /v1/reserves/proofs`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofRequest {
    /// The vaults to prove (one network; each named once).
    pub vaults: Vec<String>,
    /// The operator's statement carried in the BIP-127 message (default empty).
    #[serde(default)]
    pub statement: String,
    /// The request id (default: a random `por-...`).
    #[serde(default)]
    pub id: Option<String>,
}

/// `POST /v1/reserves/proofs/{id}/psbt`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofPsbtBody {
    /// The proof PSBT with the officer's partial signatures (base64).
    pub psbt: String,
}

/// One real input of a proof.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProofInput {
    /// `txid:vout`.
    pub outpoint: String,
    /// The vault it belongs to.
    pub vault: String,
    /// Its value, satoshis.
    pub value_sat: u64,
    /// The height of the block that created it.
    pub height: u32,
    /// That block's hash.
    pub block_hash: String,
}

impl From<&ProofOutput> for ProofInput {
    fn from(o: &ProofOutput) -> Self {
        ProofInput {
            outpoint: o.outpoint.clone(),
            vault: o.vault.clone(),
            value_sat: o.value_sat,
            height: o.height,
            block_hash: o.block_hash.clone(),
        }
    }
}

/// A stored proof request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProofView {
    /// The id.
    pub id: String,
    /// `signing` or `finalized`.
    pub state: String,
    /// The vaults, in proof order.
    pub vaults: Vec<String>,
    /// The network.
    pub network: String,
    /// Height of the block H the proof is for.
    pub height: u32,
    /// Hash of H.
    pub block_hash: String,
    /// The BIP-127 message.
    pub message: String,
    /// SHA-256 of `"Proof-of-Reserves: " + message` (hex): the commitment input's txid.
    pub commitment: String,
    /// The proof transaction's txid.
    pub txid: String,
    /// The proven amount, satoshis.
    pub total_sat: u64,
    /// Partial signatures accepted so far.
    pub signatures: usize,
    /// The real inputs.
    pub inputs: Vec<ProofInput>,
    /// Tree size of the ledger checkpoint the message binds.
    pub checkpoint_size: u64,
    /// The finalized transaction's wtxid, once finalized.
    pub final_wtxid: Option<String>,
    /// Created (Unix ms).
    pub created_ms: i64,
}

impl From<&StoredProof> for ProofView {
    fn from(p: &StoredProof) -> Self {
        ProofView {
            id: p.id.clone(),
            state: p.state.as_str().to_owned(),
            vaults: p.vaults.clone(),
            network: p.network.to_string(),
            height: p.height,
            block_hash: p.block_hash.to_string(),
            message: p.message.clone(),
            commitment: p.commitment_hex(),
            txid: p.txid().to_string(),
            total_sat: p.total.to_sat(),
            signatures: p.signatures,
            inputs: p.outputs.iter().map(ProofInput::from).collect(),
            checkpoint_size: p.checkpoint_size,
            final_wtxid: p.final_tx.as_ref().map(|t| t.compute_wtxid().to_string()),
            created_ms: p.created_ms,
        }
    }
}

/// One line of the proof list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProofSummary {
    /// The id.
    pub id: String,
    /// `signing` or `finalized`.
    pub state: String,
    /// Height of H.
    pub height: u32,
    /// The proven amount, satoshis.
    pub total_sat: u64,
    /// The vaults.
    pub vaults: Vec<String>,
}

/// The PSBT of a proof.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProofPsbt {
    /// The id.
    pub id: String,
    /// The proof PSBT with every signature accepted so far (base64): what an officer signs.
    pub psbt: String,
    /// Partial signatures in it.
    pub signatures: usize,
}

/// What a signature submission did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProofSigned {
    /// The id.
    pub id: String,
    /// Signatures the submission added.
    pub added: usize,
    /// Partial signatures the proof now holds.
    pub signatures: usize,
}

/// What the policy key signed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProofPolicySigned {
    /// The id.
    pub id: String,
    /// The policy key (x-only or compressed public key, hex).
    pub key: String,
    /// The inputs it signed.
    pub inputs: Vec<usize>,
    /// Partial signatures the proof now holds.
    pub signatures: usize,
}

fn service(state: &AppState) -> ReserveService {
    ReserveService::new(state.spend().clone())
}

/// The problem of a reserve-service error.
pub fn reserve_problem(e: &ReserveServiceError) -> Problem {
    use ReserveServiceError as R;
    match e {
        R::Invalid { .. } => Problem::validation(e.to_string()),
        R::NotFound(_) => Problem::not_found(e.to_string()),
        R::Exists(_)
        | R::ChainMoved(_)
        | R::StaleCheckpoint { .. }
        | R::NoCheckpoint
        | R::WrongState { .. }
        | R::OtherTransaction { .. } => Problem::new(ProblemKind::Conflict, e.to_string()),
        R::NoUtxos { .. } => Problem::validation(e.to_string()),
        R::Proof(_)
        | R::Bip322(_)
        | R::Refused(_)
        | R::Combine(_)
        | R::ApprovalRefused(_)
        | R::NotInProofQuorum { .. } => Problem::new(ProblemKind::Refused, e.to_string()),
        R::UnknownForm { .. } | R::Subject(_) => Problem::validation(e.to_string()),
        R::DuplicateApproval { .. } => Problem::new(ProblemKind::Conflict, e.to_string()),
        R::Op(o) => op_problem(o),
        R::Signing(s) => signing_problem(s),
        R::Node(_) => {
            tracing::warn!(error = %e, "node failed");
            Problem::unavailable("the bitcoin node is unreachable or failed")
        }
        R::Store(crate::store::StoreError::Conflict(_)) => Problem::new(
            ProblemKind::Conflict,
            "another request changed this at the same time; try again",
        ),
        _ => Problem::internal(e),
    }
}

impl From<ReserveServiceError> for Problem {
    fn from(e: ReserveServiceError) -> Self {
        reserve_problem(&e)
    }
}

/// Loads proof `id`, 404 when unknown, 403 unless the token covers every vault of it.
async fn scoped(svc: &ReserveService, caller: &Caller, id: &str) -> ApiResult<StoredProof> {
    let p = svc.load(id).await?;
    for v in &p.vaults {
        caller.require_vault(v)?;
    }
    Ok(p)
}

/// Runs the future `f` makes on a blocking thread, as the caller. The checkpoint signer is
/// not `Sync` behind the store's `&dyn` signer, so the futures that sign a checkpoint are not
/// `Send`; a blocking thread drives them (as `POST /v1/ledger/checkpoints` does).
async fn as_caller_blocking<T, F, Fut>(caller: &Caller, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ApiResult<T>>,
{
    let actor = custody::ledger::Actor::new(caller.0.name.clone()).map_err(Problem::internal)?;
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(crate::actor::acting_as(actor, f())))
        .await
        .map_err(Problem::internal)?
}

/// The ledger key as a signer, when the service has one.
fn ledger_signer(state: &AppState) -> ApiResult<Option<KeyFileSigner>> {
    match &state.inner.ledger_key {
        Some(k) => Ok(Some(
            KeyFileSigner::from_key_file(k).map_err(Problem::internal)?,
        )),
        None => Ok(None),
    }
}

/// Ask for a proof of reserves over vaults: the service syncs them, takes H = their tip and
/// every confirmed UTXO, binds the signed ledger checkpoint (a fresh one when the service has
/// the ledger key, else the latest, which must be the last entry) and stores the BIP-127
/// PSBT to sign (ledger: `reserve_proof`).
#[utoipa::path(post, path = "/v1/reserves/proofs", tag = "reserves", request_body = ProofRequest,
    responses((status = 201, body = ProofView), (status = 409, body = crate::api::problem::ProblemBody),
        (status = 422, body = crate::api::problem::ProblemBody), (status = 503, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn request_proof(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ProofRequest>,
) -> ApiResult<(StatusCode, Json<ProofView>)> {
    caller.require(REQUESTERS)?;
    if body.vaults.is_empty() {
        return Err(Problem::validation("vaults: name at least one"));
    }
    for v in &body.vaults {
        caller.require_vault(v)?;
    }
    let node = state
        .node()
        .cloned()
        .ok_or_else(|| Problem::unavailable("no bitcoin node is configured"))?;
    let req = ProveRequest {
        id: body.id.clone(),
        vaults: body.vaults.clone(),
        statement: body.statement.clone(),
        actor: caller.0.name.clone(),
    };
    let st = state.clone();
    let p = as_caller_blocking(&caller, move || async move {
        let signer = ledger_signer(&st)?;
        let origin = st.inner.ledger_origin.clone();
        let source = match &signer {
            Some(s) => CheckpointSource::Sign {
                origin: &origin,
                actor: &req.actor,
                signer: s,
            },
            None => CheckpointSource::Latest,
        };
        Ok(service(&st)
            .prove(&req, &node, source, crate::clock::now_ms())
            .await?)
    })
    .await?;
    state.metrics().ledger_appended(1);
    Ok((StatusCode::CREATED, Json(ProofView::from(&p))))
}

/// Every proof request over vaults the token covers.
#[utoipa::path(get, path = "/v1/reserves/proofs", tag = "reserves",
    responses((status = 200, body = [ProofSummary])),
    security(("bearer" = [])))]
pub async fn list_proofs(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ProofSummary>>> {
    caller.require(READERS)?;
    let svc = service(&state);
    let mut out = Vec::new();
    for (id, st, height, total) in svc.list().await? {
        let p = svc.load(&id).await?;
        if p.vaults.iter().all(|v| caller.0.may_see_vault(v)) {
            out.push(ProofSummary {
                id,
                state: st.as_str().to_owned(),
                height,
                total_sat: total.to_sat(),
                vaults: p.vaults,
            });
        }
    }
    Ok(Json(out))
}

/// Show a proof request: H, message, inputs, signatures so far, state.
#[utoipa::path(get, path = "/v1/reserves/proofs/{id}", tag = "reserves",
    params(("id" = String, Path, description = "Proof request id")),
    responses((status = 200, body = ProofView), (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn show_proof(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ProofView>> {
    caller.require(READERS)?;
    let p = scoped(&service(&state), &caller, &id).await?;
    Ok(Json(ProofView::from(&p)))
}

/// `?form=` of `GET /v1/reserves/proofs/{id}/psbt`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FormQuery {
    /// `bip127` (the commitment-input proof, the default) or `bip322` (the proof-of-funds
    /// `to_sign` over the same UTXOs and message).
    #[serde(default)]
    pub form: Option<String>,
}

/// The proof PSBT of one form with every signature accepted so far (what an officer signs):
/// BIP-127 by default, `?form=bip322` for the BIP-322 proof of funds over the same UTXOs.
#[utoipa::path(get, path = "/v1/reserves/proofs/{id}/psbt", tag = "reserves",
    params(("id" = String, Path, description = "Proof request id"), FormQuery),
    responses((status = 200, body = ProofPsbt), (status = 404, body = crate::api::problem::ProblemBody),
        (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn proof_psbt(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<FormQuery>,
) -> ApiResult<Json<ProofPsbt>> {
    caller.require(READERS)?;
    let form = match q.form.as_deref() {
        None => ProofForm::Bip127,
        Some(f) => ProofForm::from_str(f)?,
    };
    let p = scoped(&service(&state), &caller, &id).await?;
    let psbt = p.signed_psbt(form)?.to_string();
    let signatures = match form {
        ProofForm::Bip127 => p.signatures,
        ProofForm::Bip322 => p.bip322_form()?.signatures,
    };
    Ok(Json(ProofPsbt {
        id: p.id.clone(),
        psbt,
        signatures,
    }))
}

/// What officers review and approve offline for a proof (`treasury officer review` and
/// `treasury officer approve` read it): the subject under the active policy (re-derived from
/// the stored PSBT: message commitment, outpoints, amount, request, expiry), the PSBT it is
/// derived from and the policy document.
#[utoipa::path(get, path = "/v1/reserves/proofs/{id}/subject", tag = "reserves",
    params(("id" = String, Path, description = "Proof request id")),
    responses((status = 200, body = Object, description = "The proof subject file (what `treasury reserves subject` prints)"),
        (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn proof_subject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require(READERS)?;
    let svc = service(&state);
    scoped(&svc, &caller, &id).await?;
    let file = svc.subject_file(&id, crate::clock::now_ms()).await?;
    let body = serde_json::to_string_pretty(&file).map_err(Problem::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Where a proof's approvals stand.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProofApprovalsView {
    /// The proof request.
    pub id: String,
    /// The policy's `proof_quorum` group.
    pub group: String,
    /// Its threshold.
    pub need: u32,
    /// The subject digest under the active policy (hex).
    pub subject: String,
    /// The members whose approvals count now.
    pub counted: Vec<String>,
    /// True when the reserve-proof rule is met.
    pub complete: bool,
}

impl From<&crate::service::reserves::ProofApprovals> for ProofApprovalsView {
    fn from(a: &crate::service::reserves::ProofApprovals) -> Self {
        ProofApprovalsView {
            id: a.id.clone(),
            group: a.group.clone(),
            need: a.need,
            subject: a.subject.clone(),
            counted: a.counted.clone(),
            complete: a.complete(),
        }
    }
}

/// Where the proof's approvals stand under the policy's reserve-proof rule (`proof_quorum`).
#[utoipa::path(get, path = "/v1/reserves/proofs/{id}/approvals", tag = "reserves",
    params(("id" = String, Path, description = "Proof request id")),
    responses((status = 200, body = ProofApprovalsView), (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn proof_approvals(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ProofApprovalsView>> {
    caller.require(READERS)?;
    let svc = service(&state);
    scoped(&svc, &caller, &id).await?;
    let a = svc.approvals(&id, crate::clock::now_ms()).await?;
    Ok(Json(ProofApprovalsView::from(&a)))
}

/// Submit the calling officer's own approval of the proof (as `treasury officer approve`
/// writes it from the subject file): verified on arrival (this proof, this exact subject, a
/// member of the `proof_quorum` group, not expired, not a duplicate; ledger: `approval`).
#[utoipa::path(post, path = "/v1/reserves/proofs/{id}/approvals", tag = "reserves",
    params(("id" = String, Path, description = "Proof request id")),
    request_body(content = Object, description = "The signed approval (policies::approval::Approval JSON)"),
    responses((status = 200, body = ProofApprovalsView), (status = 403, body = crate::api::problem::ProblemBody),
        (status = 409, body = crate::api::problem::ProblemBody), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn approve_proof(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(approval): ApiJson<policies::Approval>,
) -> ApiResult<Json<ProofApprovalsView>> {
    caller.require(&[Role::Officer])?;
    let svc = service(&state);
    scoped(&svc, &caller, &id).await?;
    if approval.approver != caller.0.name {
        return Err(Problem::forbidden(
            "an officer submits only their own approval (approver must be the token's principal)",
        ));
    }
    if approval.request_id != id {
        return Err(Problem::validation("the approval is for another request"));
    }
    let a = svc
        .add_approval(&id, approval, &caller.0.name, crate::clock::now_ms())
        .await?;
    state.metrics().ledger_appended(1);
    Ok(Json(ProofApprovalsView::from(&a)))
}

/// Submit the calling officer's signed proof PSBT: it must be for the proof's transaction,
/// every partial signature is verified on arrival and the proof's shape re-checked
/// (ledger: `signature`).
#[utoipa::path(post, path = "/v1/reserves/proofs/{id}/psbt", tag = "reserves",
    params(("id" = String, Path, description = "Proof request id")),
    request_body = ProofPsbtBody,
    responses((status = 200, body = ProofSigned), (status = 409, body = crate::api::problem::ProblemBody),
        (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn submit_proof_psbt(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ProofPsbtBody>,
) -> ApiResult<Json<ProofSigned>> {
    caller.require(&[Role::Officer])?;
    let svc = service(&state);
    scoped(&svc, &caller, &id).await?;
    let psbt =
        Psbt::from_str(body.psbt.trim()).map_err(|e| Problem::validation(format!("psbt: {e}")))?;
    let added = svc
        .submit_psbt(&id, psbt, &caller.0.name, crate::clock::now_ms())
        .await?;
    if added > 0 {
        state.metrics().ledger_appended(1);
    }
    let p = svc.load(&id).await?;
    Ok(Json(ProofSigned {
        id,
        added,
        signatures: p.signatures,
    }))
}

/// Ask the policy key (HSM) to sign the proof: the policy signer checks the proof's shape
/// itself and refuses anything that could be broadcast (ledger: `signature`).
#[utoipa::path(post, path = "/v1/reserves/proofs/{id}/policy-signature", tag = "reserves",
    params(("id" = String, Path, description = "Proof request id")),
    responses((status = 200, body = ProofPolicySigned), (status = 422, body = crate::api::problem::ProblemBody),
        (status = 503, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn policy_sign_proof(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ProofPolicySigned>> {
    caller.require(POLICY)?;
    let svc = service(&state);
    let p = scoped(&svc, &caller, &id).await?;
    let key = state
        .inner
        .policy_signer
        .clone()
        .ok_or_else(|| Problem::unavailable("no policy signer is configured"))?;
    let network = p.network;
    let handle = tokio::runtime::Handle::current();
    let actor = custody::ledger::Actor::new(caller.0.name.clone()).map_err(Problem::internal)?;
    let rid = id.clone();
    let svc2 = svc.clone();
    // PKCS#11 calls block: the whole signing step runs on a blocking thread, still as the
    // caller (a new task does not inherit the request's principal).
    let sig = tokio::task::spawn_blocking(move || {
        handle.block_on(crate::actor::acting_as(actor, async move {
            let now = crate::clock::now_ms();
            let mut signer = svc2
                .policy_signer(crate::api::routes::spends::SharedKey(key), network, now)
                .await?;
            svc2.policy_sign(&rid, &mut signer, now).await
        }))
    })
    .await
    .map_err(Problem::internal)??;
    state.metrics().ledger_appended(1);
    let p = svc.load(&id).await?;
    Ok(Json(ProofPolicySigned {
        id,
        key: sig.key,
        inputs: sig.inputs,
        signatures: p.signatures,
    }))
}

/// Finalize a fully signed proof (every real input finalized and verified, taproot
/// included; ledger: `reserve_proof`). A finalized proof is returned as it is.
#[utoipa::path(post, path = "/v1/reserves/proofs/{id}/finalize", tag = "reserves",
    params(("id" = String, Path, description = "Proof request id")),
    responses((status = 200, body = ProofView), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn finalize_proof(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ProofView>> {
    caller.require(READERS)?;
    let svc = service(&state);
    let before = scoped(&svc, &caller, &id).await?;
    let p = svc.finalize(&id, crate::clock::now_ms()).await?;
    if before.state == ProofState::Signing {
        state.metrics().ledger_appended(1);
    }
    Ok(Json(ProofView::from(&p)))
}

/// The `Repr-Digest` header value (RFC 9530) of `body`.
pub fn repr_digest(body: &[u8]) -> String {
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(hashcore::sha256(body))
    )
}

/// Download the auditor's bundle of a finalized (or fully signed) proof as one JSON
/// document (`Bundle::to_json`), with its SHA-256 in `Repr-Digest`. An auditor writes it
/// out with `Bundle::from_json` and `write_to` and runs `treasury audit reserves`.
#[utoipa::path(get, path = "/v1/reserves/proofs/{id}/bundle", tag = "reserves",
    params(("id" = String, Path, description = "Proof request id")),
    responses((status = 200, body = Object, description = "The bundle: {\"format\", \"files\": {path: base64}}"),
        (status = 409, body = crate::api::problem::ProblemBody), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn bundle(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require(REQUESTERS)?;
    let svc = service(&state);
    scoped(&svc, &caller, &id).await?;
    let st = state.clone();
    let actor = caller.0.name.clone();
    let rid = id.clone();
    let b: Bundle = as_caller_blocking(&caller, move || async move {
        let signer = ledger_signer(&st)?;
        let origin = st.inner.ledger_origin.clone();
        let vk = match &signer {
            Some(s) => Some(VerifierKey::of_signer(origin.clone(), s).map_err(Problem::internal)?),
            None => None,
        };
        let latest = BundleOptions {
            checkpoint: CheckpointSource::Latest,
            ledger_key: vk.as_ref(),
            liabilities_dir: None,
        };
        let now = crate::clock::now_ms();
        match (svc.bundle(&rid, &latest, now).await, &signer) {
            (Ok(b), _) => Ok(b),
            (Err(ReserveServiceError::StaleCheckpoint { .. }), Some(s))
            | (Err(ReserveServiceError::NoCheckpoint), Some(s)) => {
                let fresh = BundleOptions {
                    checkpoint: CheckpointSource::Sign {
                        origin: &origin,
                        actor: &actor,
                        signer: s,
                    },
                    ..latest
                };
                st.metrics().ledger_appended(1);
                Ok(svc.bundle(&rid, &fresh, now).await?)
            }
            (Err(e), _) => Err(e.into()),
        }
    })
    .await?;
    let text = b.to_json();
    let digest = repr_digest(text.as_bytes());
    let mut resp = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&digest) {
        resp.headers_mut().insert("repr-digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}.bundle.json\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
