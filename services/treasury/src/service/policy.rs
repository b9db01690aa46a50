//! Simulating a spending policy on a hypothetical request: `treasury policy simulate` and the
//! API's `POST /v1/policies/simulate`.
//!
//! Why a service: the CLI and the API must give the same evaluation for the same input, so
//! both call [`simulate`]; the decision itself is `policies::evaluate` (pure).

use std::str::FromStr;

use bdk_wallet::bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Txid};
use policies::approval::Approval;
use policies::evaluate::{Context, PastSpend, ReceivedApproval, RequestKind, SpendState};
use policies::{ApprovalSubject, Policy, SpendRequestFacts, Verdict};
use serde::Deserialize;

/// A simulation input: integer satoshis, hex scripts, `txid:vout` outpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimInput {
    id: String,
    vault: String,
    initiator: String,
    amount_sat: u64,
    destinations: Vec<String>,
    fee_sat: u64,
    fee_rate_sat_vb: u32,
    #[serde(default)]
    requested_fee_rate_sat_vb: Option<u32>,
    #[serde(default)]
    reserve_proof: bool,
    created_ms: i64,
    created_height: u32,
    txid: String,
    inputs: Vec<SimTxIn>,
    outputs: Vec<SimTxOut>,
    expires_at_ms: i64,
    #[serde(default)]
    expires_at_height: Option<u32>,
    #[serde(default)]
    history: Vec<SimPast>,
    #[serde(default)]
    approvals: Vec<SimApproval>,
    now_ms: i64,
    tip_height: u32,
    #[serde(default)]
    frozen: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimTxIn {
    outpoint: String,
    amount_sat: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimTxOut {
    script_hex: String,
    amount_sat: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimPast {
    request_id: String,
    amount_sat: u64,
    at_ms: i64,
    state: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimApproval {
    approval: Approval,
    received_ms: i64,
}

fn facts(policy: &Policy, s: &SimInput) -> Result<SpendRequestFacts, String> {
    let txid = Txid::from_str(&s.txid).map_err(|e| format!("txid: {e}"))?;
    let inputs = s
        .inputs
        .iter()
        .enumerate()
        .map(|(i, x)| {
            OutPoint::from_str(&x.outpoint)
                .map(|op| (op, Amount::from_sat(x.amount_sat)))
                .map_err(|e| format!("inputs[{i}].outpoint: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = s
        .outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            ScriptBuf::from_hex(&o.script_hex)
                .map(|spk| (spk, Amount::from_sat(o.amount_sat)))
                .map_err(|e| format!("outputs[{i}].script_hex: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SpendRequestFacts {
        id: s.id.clone(),
        vault: s.vault.clone(),
        initiator: s.initiator.clone(),
        amount: Amount::from_sat(s.amount_sat),
        destinations: s.destinations.clone(),
        fee: Amount::from_sat(s.fee_sat),
        fee_rate: FeeRate::from_sat_per_vb_u32(s.fee_rate_sat_vb),
        requested_fee_rate: s
            .requested_fee_rate_sat_vb
            .map(FeeRate::from_sat_per_vb_u32),
        kind: if s.reserve_proof {
            RequestKind::ReserveProof
        } else {
            RequestKind::Spend
        },
        created_ms: s.created_ms,
        created_height: s.created_height,
        subject: ApprovalSubject {
            request_id: s.id.clone(),
            vault: s.vault.clone(),
            txid,
            inputs,
            outputs,
            fee: Amount::from_sat(s.fee_sat),
            policy: policy.hash(),
            decision: Verdict::Approve,
            expires_at_ms: s.expires_at_ms,
            expires_at_height: s.expires_at_height,
        },
    })
}

/// Evaluates the simulation input `request` (JSON, see docs/policies.md) under `p` and returns
/// the evaluation (the CLI's `policy simulate` and the API's simulate route).
///
/// # Errors
/// A message naming what is wrong with the input.
pub fn simulate(p: &Policy, request: &str) -> Result<serde_json::Value, String> {
    let sim: SimInput = serde_json::from_str(request).map_err(|e| e.to_string())?;
    let f = facts(p, &sim)?;
    let history = sim
        .history
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let state = match h.state.as_str() {
                "pending" => SpendState::Pending,
                "broadcast" => SpendState::Broadcast,
                "confirmed" => SpendState::Confirmed,
                other => {
                    return Err(format!(
                        "history[{i}].state: {other:?} is not pending, broadcast or confirmed"
                    ))
                }
            };
            Ok(PastSpend {
                request_id: h.request_id.clone(),
                amount: Amount::from_sat(h.amount_sat),
                at_ms: h.at_ms,
                state,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let approvals: Vec<ReceivedApproval> = sim
        .approvals
        .into_iter()
        .map(|a| ReceivedApproval {
            approval: a.approval,
            received_ms: a.received_ms,
        })
        .collect();
    let ctx = Context {
        now_ms: sim.now_ms,
        tip_height: sim.tip_height,
        frozen: sim.frozen,
    };
    let eval = policies::evaluate(p, &f, &history, &approvals, &ctx);
    serde_json::to_value(&eval).map_err(|e| format!("cannot print the evaluation: {e}"))
}
