//! Approvals: BIP-340 signatures over a canonical digest of exactly what is approved.
//!
//! An officer approves (or rejects) one [`ApprovalSubject`]: the request, the unsigned
//! transaction's txid, every input outpoint and amount, every output, the fee, the hash of the
//! policy version, and an expiry. The digest is the hashcore tagged hash (tag [`APPROVAL_TAG`]) of
//! a length-prefixed encoding of every field, so any rebuild (RBF, new fee, another output, another
//! policy version, a longer expiry) changes it and voids earlier approvals.

use std::sync::OnceLock;

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{schnorr, All, Keypair, Message, Secp256k1, SecretKey, XOnlyPublicKey};
use bitcoin::{Amount, OutPoint, ScriptBuf, Txid};
use serde::{Deserialize, Serialize};

use crate::canonical::PolicyHash;
use crate::encode::{hex_array, Encoder};
use crate::model::Policy;

/// The tag of the approval digest.
pub const APPROVAL_TAG: &str = "strategic-reserve/approval/v1";

pub(crate) fn secp() -> &'static Secp256k1<All> {
    static CTX: OnceLock<Secp256k1<All>> = OnceLock::new();
    CTX.get_or_init(Secp256k1::new)
}

/// What an approver says about a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The approver agrees to the spend.
    Approve,
    /// The approver refuses the spend (recorded and reported; see [`crate::evaluate`](mod@crate::evaluate)).
    Reject,
}

impl Verdict {
    fn code(self) -> u8 {
        match self {
            Verdict::Approve => 1,
            Verdict::Reject => 2,
        }
    }
}

/// Exactly what one approval binds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSubject {
    /// The spend request's id.
    pub request_id: String,
    /// The vault spent from.
    pub vault: String,
    /// The unsigned transaction's txid.
    pub txid: Txid,
    /// Every input: outpoint and amount, in transaction order.
    pub inputs: Vec<(OutPoint, Amount)>,
    /// Every output: script and amount, in transaction order.
    pub outputs: Vec<(ScriptBuf, Amount)>,
    /// The fee.
    pub fee: Amount,
    /// The hash of the policy version the request is evaluated under.
    pub policy: PolicyHash,
    /// Approve or reject.
    pub decision: Verdict,
    /// The approval is valid while `now_ms < expires_at_ms` (Unix milliseconds).
    pub expires_at_ms: i64,
    /// When set, the approval is also valid only while the chain tip is below this height.
    pub expires_at_height: Option<u32>,
}

impl ApprovalSubject {
    /// The canonical encoding (preimage of [`ApprovalSubject::digest`] after the tag): a version
    /// byte, then every field in declaration order; strings, scripts and lists length-prefixed
    /// with a big-endian `u64`; txids as their 32 bytes in internal order; vouts `u32`, amounts
    /// `u64` satoshis, expiry `i64`, all big-endian; the decision as 1 (approve) or 2 (reject); the
    /// optional height as a presence byte and a `u64`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(1).str(&self.request_id).str(&self.vault);
        e.fixed(self.txid.as_byte_array());
        e.len(self.inputs.len());
        for (op, amount) in &self.inputs {
            e.fixed(op.txid.as_byte_array())
                .u32(op.vout)
                .u64(amount.to_sat());
        }
        e.len(self.outputs.len());
        for (script, amount) in &self.outputs {
            e.bytes(script.as_bytes()).u64(amount.to_sat());
        }
        e.u64(self.fee.to_sat()).fixed(&self.policy.0);
        e.u8(self.decision.code()).i64(self.expires_at_ms);
        e.opt_u64(self.expires_at_height.map(u64::from));
        e.finish()
    }

    /// The digest an approver signs.
    pub fn digest(&self) -> [u8; 32] {
        hashcore::TaggedHash::new(APPROVAL_TAG).hash(&self.canonical_bytes())
    }

    /// The same subject with another decision (the reject twin of an approve subject).
    pub fn with_decision(&self, decision: Verdict) -> Self {
        ApprovalSubject {
            decision,
            ..self.clone()
        }
    }

    /// The latest expiry `policy` allows for a request created at `created_ms` with the chain tip
    /// at `created_height`: `(created_ms + max_age_secs, created_height + max_age_blocks)`.
    pub fn max_expiry(policy: &Policy, created_ms: i64, created_height: u32) -> (i64, Option<u32>) {
        let rules = policy.approval_rules();
        let ms = created_ms.saturating_add(secs_to_ms(rules.max_age_secs));
        let height = rules
            .max_age_blocks
            .map(|b| created_height.saturating_add(b));
        (ms, height)
    }
}

pub(crate) fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// A signed approval (or rejection), as exchanged with approvers (JSON via serde, keys, digest
/// and signature as hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The request the approver saw (the digest covers it too; kept in clear to name replays).
    pub request_id: String,
    /// The approver's person id.
    pub approver: String,
    /// The approver's x-only key.
    #[serde(with = "hex_array")]
    pub pubkey: [u8; 32],
    /// Approve or reject (covered by the digest).
    pub decision: Verdict,
    /// The subject digest that was signed.
    #[serde(with = "hex_array")]
    pub digest: [u8; 32],
    /// The BIP-340 signature of `digest`.
    #[serde(with = "hex_array")]
    pub signature: [u8; 64],
}

/// Signs `subject` as `approver` with `secret` (BIP-340, deterministic: no auxiliary randomness).
pub fn sign(subject: &ApprovalSubject, approver: &str, secret: &SecretKey) -> Approval {
    let keypair = Keypair::from_secret_key(secp(), secret);
    let digest = subject.digest();
    let sig = secp().sign_schnorr_no_aux_rand(&Message::from_digest(digest), &keypair);
    Approval {
        request_id: subject.request_id.clone(),
        approver: approver.to_owned(),
        pubkey: keypair.x_only_public_key().0.serialize(),
        decision: subject.decision,
        digest,
        signature: sig.serialize(),
    }
}

/// Why an approval was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalError {
    /// The key is not an approval key of the policy.
    #[error("unknown approval key {0}")]
    UnknownKey(String),
    /// The key belongs to another person than the one named.
    #[error("key is not the key of \"{approver}\" (it belongs to \"{owner}\")")]
    KeyNotOfPerson {
        /// The person named in the approval.
        approver: String,
        /// The person who holds the key.
        owner: String,
    },
    /// The approval was given for another request.
    #[error("approval for request \"{approved}\" replayed on request \"{request}\"")]
    Replay {
        /// The request it approved.
        approved: String,
        /// The request it was presented for.
        request: String,
    },
    /// The subject was built under another policy version than the one verifying.
    #[error("subject is bound to policy {subject}, not {policy}")]
    PolicyMismatch {
        /// The subject's policy hash.
        subject: PolicyHash,
        /// The verifying policy's hash.
        policy: PolicyHash,
    },
    /// The approval's decision is not the subject's.
    #[error("approval says {approval:?}, subject says {subject:?}")]
    DecisionMismatch {
        /// The approval's decision.
        approval: Verdict,
        /// The subject's decision.
        subject: Verdict,
    },
    /// The signed digest is not the subject's digest: something in the subject changed.
    #[error("approval digest does not match the subject (the transaction or its terms changed)")]
    DigestMismatch,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The approval expired by time.
    #[error("approval expired at {expires_at_ms} ms (now {now_ms} ms)")]
    Expired {
        /// The expiry.
        expires_at_ms: i64,
        /// The time of the check.
        now_ms: i64,
    },
    /// The approval expired by block height.
    #[error("approval expired at height {expires_at_height} (tip {tip_height})")]
    ExpiredHeight {
        /// The expiry height.
        expires_at_height: u32,
        /// The tip at the check.
        tip_height: u32,
    },
}

/// A verified approval: who said what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The approver's person id.
    pub person: String,
    /// Approve or reject.
    pub decision: Verdict,
}

/// Verifies `approval` for `subject` under `policy` at time `now_ms` and chain tip `tip_height`.
///
/// # Errors
/// [`ApprovalError`]: unknown key, key of another person, replay from another request, subject
/// bound to another policy, decision or digest mismatch (anything in the subject changed), bad
/// signature, expired by time (`now_ms >= expires_at_ms`) or height
/// (`tip_height >= expires_at_height`).
pub fn verify(
    policy: &Policy,
    subject: &ApprovalSubject,
    approval: &Approval,
    now_ms: i64,
    tip_height: u32,
) -> Result<Verified, ApprovalError> {
    let verified = verify_terms(
        policy,
        &Terms {
            request_id: &subject.request_id,
            policy: subject.policy,
            decision: subject.decision,
            digest: subject.digest(),
            expires_at_ms: subject.expires_at_ms,
        },
        approval,
        now_ms,
    )?;
    if let Some(h) = subject.expires_at_height {
        if tip_height >= h {
            return Err(ApprovalError::ExpiredHeight {
                expires_at_height: h,
                tip_height,
            });
        }
    }
    Ok(verified)
}

/// What any approved subject (a spend's or a reserve proof's) fixes for the checks every
/// approval goes through.
pub(crate) struct Terms<'a> {
    /// The request the subject is for.
    pub(crate) request_id: &'a str,
    /// The policy the subject is bound to.
    pub(crate) policy: PolicyHash,
    /// Approve or reject.
    pub(crate) decision: Verdict,
    /// The subject's digest (what the approver signs).
    pub(crate) digest: [u8; 32],
    /// Valid while `now_ms < expires_at_ms`.
    pub(crate) expires_at_ms: i64,
}

/// The checks shared by spend and reserve-proof approvals: the key is the named person's in
/// `policy`, same request, same policy, same decision, same digest, a valid signature, not
/// expired by time.
pub(crate) fn verify_terms(
    policy: &Policy,
    terms: &Terms<'_>,
    approval: &Approval,
    now_ms: i64,
) -> Result<Verified, ApprovalError> {
    let unknown = || ApprovalError::UnknownKey(hex::encode(approval.pubkey));
    let key = XOnlyPublicKey::from_slice(&approval.pubkey).map_err(|_| unknown())?;
    let owner = policy.person_of(&key).ok_or_else(unknown)?;
    if owner != approval.approver {
        return Err(ApprovalError::KeyNotOfPerson {
            approver: approval.approver.clone(),
            owner: owner.to_owned(),
        });
    }
    if approval.request_id != terms.request_id {
        return Err(ApprovalError::Replay {
            approved: approval.request_id.clone(),
            request: terms.request_id.to_owned(),
        });
    }
    if terms.policy != policy.hash() {
        return Err(ApprovalError::PolicyMismatch {
            subject: terms.policy,
            policy: policy.hash(),
        });
    }
    if approval.decision != terms.decision {
        return Err(ApprovalError::DecisionMismatch {
            approval: approval.decision,
            subject: terms.decision,
        });
    }
    let digest = terms.digest;
    if digest != approval.digest {
        return Err(ApprovalError::DigestMismatch);
    }
    let sig = schnorr::Signature::from_slice(&approval.signature)
        .map_err(|_| ApprovalError::BadSignature)?;
    secp()
        .verify_schnorr(&sig, &Message::from_digest(digest), &key)
        .map_err(|_| ApprovalError::BadSignature)?;
    if now_ms >= terms.expires_at_ms {
        return Err(ApprovalError::Expired {
            expires_at_ms: terms.expires_at_ms,
            now_ms,
        });
    }
    Ok(Verified {
        person: owner.to_owned(),
        decision: approval.decision,
    })
}
