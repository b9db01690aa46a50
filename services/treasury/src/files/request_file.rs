//! The spend request file officers review and approve offline (`treasury spend show --json`,
//! `GET /v1/spends/{id}` with `file`): the PSBT, the policy document and the facts the service
//! claims.
//!
//! Why in `files/`: the officer's offline tools read it without a database or a service; they
//! rebuild the approval subject from the PSBT itself ([`RequestFile::rebuild`]) and refuse a
//! file whose claims differ.

use std::str::FromStr;

use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::{Amount, FeeRate, Network, ScriptBuf};
use custody::request::NewRequest;
use custody::request::SpendRequest;
use policies::approval::{Approval, Verdict};
use policies::evaluate::ReceivedApproval;
use policies::evaluate::{PastSpend, SpendState};
use policies::{Policy, PolicyHash};
use serde::{Deserialize, Serialize};

/// A request file that is inconsistent with its own PSBT or policy, or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request file: {0}")]
pub struct RequestFileError(pub String);

type Result<T> = std::result::Result<T, RequestFileError>;

/// The format tag of a [`RequestFile`].
pub const REQUEST_FORMAT: &str = "strategic-reserve/spend-request/v1";

/// A past spend in a request file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePastSpend {
    /// The request.
    pub request_id: String,
    /// Its amount.
    pub amount_sat: u64,
    /// When it was approved.
    pub at_ms: i64,
    /// pending, broadcast or confirmed.
    pub state: String,
}

/// A received approval in a request file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileApproval {
    /// The signed approval.
    pub approval: Approval,
    /// When the service received it.
    pub received_ms: i64,
}

/// What officers review and approve offline (`treasury spend show --json`): the PSBT and the
/// policy document, which the officer's tools check, and the service's claims about them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFile {
    /// [`REQUEST_FORMAT`].
    pub format: String,
    /// The request id.
    pub request_id: String,
    /// The vault.
    pub vault: String,
    /// The initiator.
    pub initiator: String,
    /// The state at export.
    pub state: String,
    /// Creation time.
    pub created_ms: i64,
    /// Tip at creation.
    pub created_height: u32,
    /// The network.
    pub network: String,
    /// The unsigned PSBT (base64).
    pub psbt: String,
    /// Indexes of the outputs that go back to the vault (change).
    pub change_outputs: Vec<u32>,
    /// The built fee rate, sat/kwu.
    pub fee_rate_sat_kwu: u64,
    /// The requested fee rate, sat/kwu.
    pub requested_fee_rate_sat_kwu: Option<u64>,
    /// Approvals expire at this time.
    pub expires_at_ms: i64,
    /// ... or at this height.
    pub expires_at_height: Option<u32>,
    /// Confirmations required.
    pub confirmations_required: u32,
    /// The request this one replaces (a fee bump).
    #[serde(default)]
    pub replaces: Option<String>,
    /// The policy's hash.
    pub policy_hash: String,
    /// The policy document (TOML).
    pub policy_document: String,
    /// Claimed: the unsigned txid.
    pub txid: String,
    /// Claimed: the amount paid out (non-change outputs).
    pub amount_sat: u64,
    /// Claimed: the fee.
    pub fee_sat: u64,
    /// Approvals and rejections received so far.
    pub approvals: Vec<FileApproval>,
    /// The vault's past spends (velocity).
    pub history: Vec<FilePastSpend>,
    /// The service's clock at export.
    pub now_ms: i64,
    /// The tip at export.
    pub tip_height: u32,
    /// Whether the reserve was frozen at export.
    pub frozen: bool,
}

impl RequestFile {
    /// Rebuilds the request from the file's PSBT and checks every claim against it: the
    /// policy document hashes to the stated hash, and the txid, amount and fee recomputed from
    /// the PSBT are the stated ones.
    ///
    /// # Errors
    /// [`RequestFileError`] naming the first mismatch or malformed field.
    pub fn rebuild(&self) -> Result<(SpendRequest, Policy)> {
        let bad = |m: String| RequestFileError(m);
        if self.format != REQUEST_FORMAT {
            return Err(bad(format!(
                "format {:?} is not {REQUEST_FORMAT}",
                self.format
            )));
        }
        let policy = Policy::from_toml(&self.policy_document)
            .map_err(|e| bad(format!("policy_document: {e}")))?;
        let hash = PolicyHash::from_str(&self.policy_hash)
            .map_err(|e| bad(format!("policy_hash: {e}")))?;
        if policy.hash() != hash {
            return Err(bad(format!(
                "the policy document hashes to {}, not the stated {hash}",
                policy.hash()
            )));
        }
        let psbt = Psbt::from_str(self.psbt.trim()).map_err(|e| bad(format!("psbt: {e}")))?;
        let network = Network::from_str(&self.network).map_err(|e| bad(format!("network: {e}")))?;
        let change_scripts = change_scripts(&psbt, &self.change_outputs)?;
        let mut request = SpendRequest::new(NewRequest {
            id: self.request_id.clone(),
            vault: self.vault.clone(),
            initiator: self.initiator.clone(),
            created_ms: self.created_ms,
            created_height: self.created_height,
            psbt,
            network,
            change_scripts,
            fee_rate: FeeRate::from_sat_per_kwu(self.fee_rate_sat_kwu),
            requested_fee_rate: self
                .requested_fee_rate_sat_kwu
                .map(FeeRate::from_sat_per_kwu),
            policy: hash,
            expires_at_ms: self.expires_at_ms,
            expires_at_height: self.expires_at_height,
            confirmations_required: self.confirmations_required,
            replaces: self.replaces.clone(),
        })
        .map_err(|e| bad(format!("psbt: {e}")))?;
        if request.txid.to_string() != self.txid {
            return Err(bad(format!(
                "the psbt's txid is {}, not the stated {}",
                request.txid, self.txid
            )));
        }
        if request.amount.to_sat() != self.amount_sat {
            return Err(bad(format!(
                "the psbt pays {} sat, not the stated {}",
                request.amount.to_sat(),
                self.amount_sat
            )));
        }
        if request.subject.fee.to_sat() != self.fee_sat {
            return Err(bad(format!(
                "the psbt's fee is {} sat, not the stated {}",
                request.subject.fee.to_sat(),
                self.fee_sat
            )));
        }
        // The stated rate is over the largest signed size; it can never exceed the rate over
        // the unsigned size.
        let upper = fee_rate_of(&request.psbt)?;
        if self.fee_rate_sat_kwu > upper.to_sat_per_kwu() {
            return Err(bad(format!(
                "the stated fee rate {} sat/kwu is above what the psbt can pay ({} sat/kwu)",
                self.fee_rate_sat_kwu,
                upper.to_sat_per_kwu()
            )));
        }
        for a in &self.approvals {
            let r = ReceivedApproval {
                approval: a.approval.clone(),
                received_ms: a.received_ms,
            };
            match a.approval.decision {
                Verdict::Approve => request.approvals.push(r),
                Verdict::Reject => request.rejections.push(r),
            }
        }
        Ok((request, policy))
    }

    /// The vault's past spends as the evaluator takes them.
    ///
    /// # Errors
    /// [`RequestFileError`] for an unknown state.
    pub fn past_spends(&self) -> Result<Vec<PastSpend>> {
        self.history
            .iter()
            .map(|h| {
                let state = match h.state.as_str() {
                    "pending" => SpendState::Pending,
                    "broadcast" => SpendState::Broadcast,
                    "confirmed" => SpendState::Confirmed,
                    s => {
                        return Err(RequestFileError(format!(
                            "history state {s:?} is not pending, broadcast or confirmed"
                        )))
                    }
                };
                Ok(PastSpend {
                    request_id: h.request_id.clone(),
                    amount: Amount::from_sat(h.amount_sat),
                    at_ms: h.at_ms,
                    state,
                })
            })
            .collect()
    }
}
/// The scripts of the PSBT's change outputs at `idx`.
///
/// # Errors
/// [`RequestFileError`] for an output that does not exist.
pub fn change_scripts(psbt: &Psbt, idx: &[u32]) -> Result<Vec<ScriptBuf>> {
    idx.iter()
        .map(|&i| {
            psbt.unsigned_tx
                .output
                .get(i as usize)
                .map(|o| o.script_pubkey.clone())
                .ok_or_else(|| RequestFileError(format!("change output {i} does not exist")))
        })
        .collect()
}

/// The fee rate of an unsigned PSBT over its unsigned size: an upper bound of the rate the
/// signed transaction pays (the builder's figure, over the largest signed size, is the lower
/// bound the policy checks).
/// The PSBT's fee rate.
///
/// # Errors
/// [`RequestFileError`] when the fee is unknown or the rate overflows.
pub fn fee_rate_of(psbt: &Psbt) -> Result<FeeRate> {
    let fee = psbt
        .fee()
        .map_err(|e| RequestFileError(format!("psbt fee: {e}")))?;
    let wu = psbt.unsigned_tx.weight().to_wu();
    fee.to_sat()
        .checked_mul(1000)
        .and_then(|x| x.checked_div(wu))
        .map(FeeRate::from_sat_per_kwu)
        .ok_or_else(|| RequestFileError("psbt fee rate overflows".into()))
}
