//! The wire protocol: one request, one response, as length-prefixed JSON frames (a 4-byte
//! big-endian length, then that many bytes of JSON, at most [`MAX_FRAME`]) over any byte
//! stream. PSBTs travel as base64 of their BIP-174 serialization; errors as `{code, message}`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bitcoin::{Amount, FeeRate, OutPoint, Psbt, ScriptBuf, Txid};
use hsm::policy_signer::SpendAuthorization;
use policies::approval::{ApprovalSubject, Verdict};
use policies::evaluate::{PastSpend, ReceivedApproval, SpendState};
use policies::freeze::{AdminSignature, FreezeOrder, FreezeState};
use policies::governance::{Activation, ChangeOrder};
use policies::{Approval, PolicyHash};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::core::{ProofReceipt, SpendReceipt, Status};

/// The largest frame accepted (16 MiB).
pub const MAX_FRAME: usize = 16 << 20;

/// Why a frame or a message could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The stream failed.
    #[error("signer connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame is too large.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A message does not parse.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    /// A field does not decode.
    #[error("malformed field {field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Reads one frame; `None` at a clean end of stream.
///
/// # Errors
/// [`ProtoError::Io`], [`ProtoError::TooLarge`].
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, ProtoError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(ProtoError::TooLarge(n));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Writes one frame and flushes.
///
/// # Errors
/// [`ProtoError::Io`], [`ProtoError::TooLarge`].
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<(), ProtoError> {
    if bytes.len() > MAX_FRAME {
        return Err(ProtoError::TooLarge(bytes.len()));
    }
    let len = u32::try_from(bytes.len()).map_err(|_| ProtoError::TooLarge(bytes.len()))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(bytes).await?;
    w.flush().await?;
    Ok(())
}

/// A PSBT as base64 of its serialization.
pub fn psbt_to_wire(psbt: &Psbt) -> String {
    B64.encode(psbt.serialize())
}

/// The inverse of [`psbt_to_wire`].
///
/// # Errors
/// [`ProtoError::Field`].
pub fn psbt_from_wire(s: &str) -> Result<Psbt, ProtoError> {
    let bytes = B64.decode(s).map_err(|e| ProtoError::Field {
        field: "psbt",
        reason: e.to_string(),
    })?;
    Psbt::deserialize(&bytes).map_err(|e| ProtoError::Field {
        field: "psbt",
        reason: e.to_string(),
    })
}

/// [`ApprovalSubject`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSubject {
    /// The request.
    pub request_id: String,
    /// The vault.
    pub vault: String,
    /// The unsigned txid.
    pub txid: Txid,
    /// Inputs: outpoint and sat.
    pub inputs: Vec<(OutPoint, u64)>,
    /// Outputs: script hex and sat.
    pub outputs: Vec<(String, u64)>,
    /// The fee (sat).
    pub fee_sat: u64,
    /// The policy hash.
    pub policy: PolicyHash,
    /// Approve or reject.
    pub decision: Verdict,
    /// Expiry (Unix ms).
    pub expires_at_ms: i64,
    /// Expiry height.
    pub expires_at_height: Option<u32>,
}

/// A past spend on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePastSpend {
    /// The request.
    pub request_id: String,
    /// Its amount (sat).
    pub amount_sat: u64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// `pending`, `broadcast` or `confirmed`.
    pub state: String,
}

/// [`SpendAuthorization`] on the wire (the approvals' receive times are ignored by the
/// signer, which uses its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireAuthorization {
    /// The request.
    pub request_id: String,
    /// The vault.
    pub vault: String,
    /// The initiator.
    pub initiator: String,
    /// Created (Unix ms).
    pub created_ms: i64,
    /// The tip at creation.
    pub created_height: u32,
    /// The requested fee rate, sat per 1000 weight units.
    pub requested_fee_rate_sat_kwu: Option<u64>,
    /// The subject the approvers signed.
    pub subject: WireSubject,
    /// Indices of the change outputs.
    pub change_outputs: Vec<usize>,
    /// The approvals with the service's receive times.
    pub approvals: Vec<(Approval, i64)>,
    /// The caller's history.
    pub history: Vec<WirePastSpend>,
}

impl From<&SpendAuthorization> for WireAuthorization {
    fn from(a: &SpendAuthorization) -> Self {
        let s = &a.subject;
        WireAuthorization {
            request_id: a.request_id.clone(),
            vault: a.vault.clone(),
            initiator: a.initiator.clone(),
            created_ms: a.created_ms,
            created_height: a.created_height,
            requested_fee_rate_sat_kwu: a.requested_fee_rate.map(FeeRate::to_sat_per_kwu),
            subject: WireSubject {
                request_id: s.request_id.clone(),
                vault: s.vault.clone(),
                txid: s.txid,
                inputs: s.inputs.iter().map(|(o, v)| (*o, v.to_sat())).collect(),
                outputs: s
                    .outputs
                    .iter()
                    .map(|(sc, v)| (sc.to_hex_string(), v.to_sat()))
                    .collect(),
                fee_sat: s.fee.to_sat(),
                policy: s.policy,
                decision: s.decision,
                expires_at_ms: s.expires_at_ms,
                expires_at_height: s.expires_at_height,
            },
            change_outputs: a.change_outputs.clone(),
            approvals: a
                .approvals
                .iter()
                .map(|r| (r.approval.clone(), r.received_ms))
                .collect(),
            history: a
                .history
                .iter()
                .map(|p| WirePastSpend {
                    request_id: p.request_id.clone(),
                    amount_sat: p.amount.to_sat(),
                    at_ms: p.at_ms,
                    state: match p.state {
                        SpendState::Pending => "pending",
                        SpendState::Broadcast => "broadcast",
                        SpendState::Confirmed => "confirmed",
                    }
                    .to_owned(),
                })
                .collect(),
        }
    }
}

impl TryFrom<WireAuthorization> for SpendAuthorization {
    type Error = ProtoError;

    fn try_from(w: WireAuthorization) -> Result<Self, ProtoError> {
        let s = w.subject;
        let outputs = s
            .outputs
            .into_iter()
            .map(|(h, v)| {
                ScriptBuf::from_hex(&h)
                    .map(|sc| (sc, Amount::from_sat(v)))
                    .map_err(|e| ProtoError::Field {
                        field: "subject.outputs",
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let history = w
            .history
            .into_iter()
            .map(|p| {
                let state = match p.state.as_str() {
                    "pending" => SpendState::Pending,
                    "broadcast" => SpendState::Broadcast,
                    "confirmed" => SpendState::Confirmed,
                    other => {
                        return Err(ProtoError::Field {
                            field: "history.state",
                            reason: format!("unknown state {other:?}"),
                        })
                    }
                };
                Ok(PastSpend {
                    request_id: p.request_id,
                    amount: Amount::from_sat(p.amount_sat),
                    at_ms: p.at_ms,
                    state,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SpendAuthorization {
            request_id: w.request_id,
            vault: w.vault,
            initiator: w.initiator,
            created_ms: w.created_ms,
            created_height: w.created_height,
            requested_fee_rate: w.requested_fee_rate_sat_kwu.map(FeeRate::from_sat_per_kwu),
            subject: ApprovalSubject {
                request_id: s.request_id,
                vault: s.vault,
                txid: s.txid,
                inputs: s
                    .inputs
                    .into_iter()
                    .map(|(o, v)| (o, Amount::from_sat(v)))
                    .collect(),
                outputs,
                fee: Amount::from_sat(s.fee_sat),
                policy: s.policy,
                decision: s.decision,
                expires_at_ms: s.expires_at_ms,
                expires_at_height: s.expires_at_height,
            },
            change_outputs: w.change_outputs,
            approvals: w
                .approvals
                .into_iter()
                .map(|(approval, received_ms)| ReceivedApproval {
                    approval,
                    received_ms,
                })
                .collect(),
            history,
        })
    }
}

/// A request to the signer: one per operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum Request {
    /// The signer's state.
    Status,
    /// Register a vault.
    RegisterVault {
        /// Its name.
        name: String,
        /// Receive descriptor.
        external: String,
        /// Change descriptor.
        internal: String,
    },
    /// Note approvals as seen.
    Observe {
        /// The authorization carrying them.
        auth: WireAuthorization,
    },
    /// Sign a spend.
    SignSpend {
        /// The vault.
        vault: String,
        /// The PSBT (base64).
        psbt: String,
        /// The authorization.
        auth: WireAuthorization,
        /// The chain tip height.
        tip_height: u32,
    },
    /// Sign a BIP-127 reserve proof.
    SignProof {
        /// The PSBT (base64).
        psbt: String,
        /// The proof request.
        request_id: String,
        /// The approvals.
        approvals: Vec<Approval>,
    },
    /// Sign a BIP-322 proof of funds.
    SignProofOfFunds {
        /// The `to_sign` PSBT (base64).
        psbt: String,
        /// The message (hex), when not carried by the PSBT.
        message: Option<String>,
        /// The challenge script (hex).
        challenge: String,
        /// The proof request.
        request_id: String,
        /// The approvals.
        approvals: Vec<Approval>,
    },
    /// Submit a signed policy change.
    SubmitPolicyChange {
        /// The new document (TOML).
        policy_toml: String,
        /// The order.
        order: ChangeOrder,
        /// The admins' signatures.
        signatures: Vec<AdminSignature>,
    },
    /// Veto the held change.
    VetoPolicyChange {
        /// The held change's order.
        order: ChangeOrder,
        /// One admin's signature of its veto digest.
        signature: AdminSignature,
    },
    /// Submit a freeze or lift order.
    SubmitFreeze {
        /// The order.
        order: FreezeOrder,
        /// The admins' signatures.
        signatures: Vec<AdminSignature>,
    },
    /// Sign a ledger checkpoint.
    SignCheckpoint {
        /// The tree size.
        size: u64,
        /// The root (hex).
        root: String,
        /// The consistency proof from the last signed checkpoint (hex digests).
        proof: Vec<String>,
    },
}

/// A refusal or failure, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A short machine code (`refused`, `frozen`, `rollback`, ...).
    pub code: String,
    /// The message.
    pub message: String,
}

/// A response: one per request kind, or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum Response {
    /// The state.
    Status {
        /// It.
        status: Status,
    },
    /// A vault registered.
    VaultRegistered,
    /// Approvals observed.
    Observed {
        /// How many were new.
        new: usize,
    },
    /// A spend signed.
    SpendSigned {
        /// The PSBT with the policy key's signatures (base64).
        psbt: String,
        /// The record.
        receipt: SpendReceipt,
    },
    /// A proof signed.
    ProofSigned {
        /// The PSBT with the policy key's signatures (base64).
        psbt: String,
        /// The record.
        receipt: ProofReceipt,
    },
    /// A policy change accepted.
    PolicyAccepted {
        /// The activation.
        activation: Activation,
    },
    /// The held change vetoed.
    PolicyVetoed,
    /// A freeze order applied.
    FreezeApplied {
        /// The new state.
        state: FreezeState,
    },
    /// A checkpoint signed.
    CheckpointSigned {
        /// The signed note.
        note: String,
    },
    /// Refused or failed.
    Error(ErrorBody),
}
