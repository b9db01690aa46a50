//! `/v1/reserves`: asking for a proof of reserves.
//!
//! What main offers today is the BIP-127 proof core (`custody::reserves`): this route builds
//! the unsigned proof PSBT over the vaults' UTXOs at their synced tip, committing to the block
//! hash and the latest ledger checkpoint, and records the request in the ledger with the
//! caller. Officers and the policy key sign it like a spend (it can never be broadcast). The
//! signed-bundle download waits for the reserve-proof store of the `por` branch.
// utoipa's path macro expands to fully qualified paths.
#![allow(unused_qualifications)]

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use custody::ledger::Kind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::json::ApiJson;
use super::problem::{ApiResult, Problem};
use super::{AppState, Caller, Role};

/// `POST /v1/reserves/proofs`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofRequest {
    /// The vaults to prove (one network).
    pub vaults: Vec<String>,
}

/// An unsigned proof of reserves.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProofDraft {
    /// The BIP-127 message (block, descriptors, checkpoint).
    pub message: String,
    /// The proof PSBT to sign (base64).
    pub psbt: String,
    /// The proven amount, satoshis.
    pub total_sat: u64,
    /// The UTXOs proven.
    pub inputs: Vec<String>,
    /// The ledger entry recording the request.
    pub seq: u64,
}

/// Build an unsigned BIP-127 proof of reserves for vaults (recorded in the ledger).
#[utoipa::path(post, path = "/v1/reserves/proofs", tag = "reserves", request_body = ProofRequest,
    responses((status = 201, body = ProofDraft), (status = 422, body = super::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn request_proof(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ProofRequest>,
) -> ApiResult<(StatusCode, Json<ProofDraft>)> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    if body.vaults.is_empty() {
        return Err(Problem::validation("vaults: at least one"));
    }
    for v in &body.vaults {
        caller.require_vault(v)?;
    }
    let checkpoint = super::ledger::latest_note(&state).await?.ok_or_else(|| {
        Problem::new(
            super::problem::ProblemKind::Conflict,
            "no ledger checkpoint yet: make one first (POST /v1/ledger/checkpoints)",
        )
    })?;
    let mut vaults = Vec::new();
    for name in &body.vaults {
        vaults.push(state.spend().vaults.vaults.load(name).await?);
    }
    let first = vaults
        .first()
        .ok_or_else(|| Problem::validation("vaults: at least one"))?;
    let (network, tip) = (first.network(), first.tip());
    if vaults.iter().any(|v| v.tip() != tip) {
        return Err(Problem::new(
            super::problem::ProblemKind::Conflict,
            "the vaults are synced to different blocks: sync them first",
        ));
    }
    let refs: Vec<&custody::vault::Vault> = vaults.iter().collect();
    let message = custody::reserves::ProofMessage::for_vaults(
        &refs,
        network,
        tip.height,
        tip.hash,
        &checkpoint,
    )
    .map_err(|e| Problem::validation(e.to_string()))?;
    let utxos: Vec<Vec<custody::vault::VaultUtxo>> = vaults.iter().map(|v| v.utxos()).collect();
    let pairs: Vec<(&custody::vault::Vault, &[custody::vault::VaultUtxo])> = vaults
        .iter()
        .zip(&utxos)
        .map(|(v, u)| (v, u.as_slice()))
        .collect();
    let proof = custody::reserves::build_proof(&pairs, &message)
        .map_err(|e| Problem::validation(e.to_string()))?;
    let text = message.encode();
    let record = serde_json::json!({
        "event": "reserve_proof_requested",
        "vaults": body.vaults,
        "height": tip.height,
        "block": tip.hash.to_string(),
        "total_sat": proof.total.to_sat(),
        "psbt_txid": proof.psbt.unsigned_tx.compute_txid().to_string(),
    });
    let draft = custody::vault::ledger_record(
        Kind::ReserveProof,
        &caller.0.name,
        &record,
        crate::vaults::now_ms(),
    )
    .map_err(Problem::internal)?;
    let e = state.store().append(draft).await?;
    state.metrics().ledger_appended(1);
    Ok((
        StatusCode::CREATED,
        Json(ProofDraft {
            message: text,
            psbt: proof.psbt.to_string(),
            total_sat: proof.total.to_sat(),
            inputs: proof.inputs.iter().map(ToString::to_string).collect(),
            seq: e.seq(),
        }),
    ))
}
