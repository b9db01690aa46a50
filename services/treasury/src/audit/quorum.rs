//! Check 6 of [`super::bundle`]: the reserve-proof rule (ADR 0013): the officers' approvals
//! in the ledger meet the policy's `proof_quorum` at the time the policy key signed.
//!
//! Why apart: it re-derives the proof subject and runs `policies::evaluate_proof`, the one
//! check that depends on the policy rather than on the chain or the ledger.

use bdk_wallet::bitcoin::Amount;
use custody::ledger::Entry;
use custody::reserves::file::ProofFile;
use serde_json::Value;

use crate::files::bundle::{Bundle, APPROVAL_TYPE, FINALIZED_TYPE, REQUESTED_TYPE, SIGNATURE_TYPE};

pub(super) fn body_of(e: &Entry) -> Option<Value> {
    serde_json::from_slice::<Value>(e.payload().as_bytes()).ok()
}

/// Step 6 of the audit: the reserve-proof rule of the policy the request names, over the
/// proven approval entries. Returns who was counted, the group and its threshold.
pub(super) fn check_proof_quorum(
    bundle: &Bundle,
    f: &ProofFile,
    commitment: &str,
    entries: &[&Entry],
) -> Result<(Vec<String>, String, u32), String> {
    use policies::evaluate::{evaluate_proof, Context, Decision, ReceivedApproval};
    use policies::proof::{ProofSubject, ProofTerms};
    let request = entries
        .iter()
        .filter_map(|e| body_of(e))
        .find(|b| b["type"] == REQUESTED_TYPE && b["commitment"] == commitment)
        .ok_or("no proven request entry to take the policy and the terms from")?;
    let id = request["proof_request"]
        .as_str()
        .ok_or("the request entry names no proof request")?
        .to_owned();
    let (Some(policy_hash), Some(expires_at_ms)) = (
        request["policy"].as_str(),
        request["approvals_expire_ms"].as_i64(),
    ) else {
        return Err(
            "the request entry names no policy and approval expiry (a proof requested before the reserve-proof rule was enforced)"
                .into(),
        );
    };
    let doc = bundle
        .text("policy.toml")
        .ok_or("the bundle carries no policy.toml")?;
    let policy = policies::Policy::from_toml(doc).map_err(|e| format!("policy.toml: {e}"))?;
    if policy.hash().to_string() != policy_hash {
        return Err(format!(
            "policy.toml is policy {}, the request entry names {policy_hash}",
            policy.hash()
        ));
    }
    let proof = f
        .final_proofs()
        .first()
        .ok_or("the proof file holds no final proof")?;
    let tx = proof.proof_tx();
    let mut amount = Amount::ZERO;
    for o in &tx.output {
        amount = amount.checked_add(o.value).ok_or("amounts overflow")?;
    }
    let terms = ProofTerms {
        request_id: id.clone(),
        expires_at_ms,
    };
    let subject = ProofSubject::new(
        f.network(),
        f.message().as_bytes(),
        tx.input.iter().skip(1).map(|i| i.previous_output),
        amount,
        &terms,
        policy.hash(),
    )
    .map_err(|e| e.to_string())?;
    let mut approvals = Vec::new();
    let mut signed_at = None;
    let mut finalized_at = None;
    for e in entries {
        let Some(b) = body_of(e) else { continue };
        if b["proof_request"] != id.as_str() {
            continue;
        }
        if b["type"] == SIGNATURE_TYPE && b["by"] == crate::actor::POLICY_SIGNER_ACTOR {
            signed_at = Some(e.time_ms());
        }
        if b["type"] == FINALIZED_TYPE {
            finalized_at = Some(e.time_ms());
        }
        if b["type"] != APPROVAL_TYPE {
            continue;
        }
        let hex32 = |k: &str| -> Option<[u8; 32]> {
            let mut out = [0u8; 32];
            hex::decode_to_slice(b[k].as_str()?, &mut out).ok()?;
            Some(out)
        };
        let mut signature = [0u8; 64];
        let (Some(approver), Some(pubkey), Some(digest), Some(sig)) = (
            b["approver"].as_str(),
            hex32("pubkey"),
            hex32("subject"),
            b["signature"].as_str(),
        ) else {
            return Err(format!("approval entry {} is malformed", e.seq()));
        };
        hex::decode_to_slice(sig, &mut signature)
            .map_err(|_| format!("approval entry {}: malformed signature", e.seq()))?;
        approvals.push(ReceivedApproval {
            approval: policies::Approval {
                request_id: id.clone(),
                approver: approver.to_owned(),
                pubkey,
                decision: policies::Verdict::Approve,
                digest,
                signature,
            },
            received_ms: e.time_ms(),
        });
    }
    let now_ms = signed_at
        .or(finalized_at)
        .ok_or("no policy-key signature or finalization entry to date the approvals")?;
    let ctx = Context {
        now_ms,
        tip_height: 0,
        frozen: false,
    };
    let group = policy.proof_quorum().to_owned();
    let k = policy.group(&group).map_or(1, |g| g.k);
    let ev = evaluate_proof(&policy, &subject, &approvals, &ctx);
    match ev.decision {
        Decision::Allow { .. } => Ok((ev.counted, group, k)),
        Decision::Deny { reasons } => Err(reasons
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")),
        Decision::Pending { .. } => {
            let ignored: Vec<String> = ev
                .ignored
                .iter()
                .map(|(p, why)| format!("{p}: {why:?}"))
                .collect();
            Err(format!(
                "{} of {k} approvals from group {group}{}",
                ev.counted.len(),
                if ignored.is_empty() {
                    String::new()
                } else {
                    format!(" (not counted: {})", ignored.join("; "))
                }
            ))
        }
    }
}
