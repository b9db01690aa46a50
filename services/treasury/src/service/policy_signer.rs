//! The policy key's signature through the policy signer process (ADR 0017, issue 16).
//!
//! Why like this: the service's database is untrusted for custody. The policy key signs only
//! in the signer process ([`::signer::SignerClient`]), which judges every request from its own
//! hash-chained state (its policy versions verified against the admin quorum, its freeze, the
//! first-seen times of approvals, the spends it signed for velocity). The service sends what
//! it knows (the request, its approvals, its PSBT, the tip) and records what comes back: the
//! signed PSBT, the `signature` ledger entry and the `spend_policy_signatures` row are the
//! service's own record, never an input to the signer.

use ::signer::core::SpendReceipt;
use ::signer::{ClientError, SignerClient};
use custody::ledger::Kind;
use custody::request::State;
use custody::vault::ledger_record;
use hsm::policy_signer::SpendAuthorization;
use serde_json::json;

use crate::actor::POLICY_SIGNER_ACTOR;
use crate::service::signing::{signed_psbt_write, SigningError};
use crate::service::spend::{At, SpendService, SpendServiceError, StoredRequest};
use crate::store::{SqlValue, Write};

/// Why the policy signature was not obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicySignError {
    /// The service's own steps (loading, re-evaluating, storing).
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// The signer refused: its code and its reason (the policy it holds, the freeze, a delay,
    /// velocity, missing approvals...).
    #[error("the policy signer refused ({code}): {reason}")]
    Refused {
        /// The signer's error code.
        code: String,
        /// The signer's reason.
        reason: String,
    },
    /// The signer could not be reached or answered unexpectedly.
    #[error("{0}")]
    Unavailable(ClientError),
}

impl From<SpendServiceError> for PolicySignError {
    fn from(e: SpendServiceError) -> Self {
        PolicySignError::Signing(SigningError::Spend(e))
    }
}

impl From<ClientError> for PolicySignError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused(body) => PolicySignError::Refused {
                code: body.code,
                reason: body.message,
            },
            other => PolicySignError::Unavailable(other),
        }
    }
}

type Result<T> = std::result::Result<T, PolicySignError>;

impl SpendService {
    /// The authorization the signer is sent for request `stored`: the request, its approvals
    /// and rejections, its change outputs and the service's velocity view (the signer keeps
    /// its own).
    async fn authorization(&self, stored: &StoredRequest) -> Result<SpendAuthorization> {
        let r = &stored.request;
        Ok(SpendAuthorization {
            request_id: r.id.clone(),
            vault: r.vault.clone(),
            initiator: r.initiator.clone(),
            created_ms: r.created_ms,
            created_height: r.created_height,
            requested_fee_rate: r.requested_fee_rate,
            subject: r.subject.clone(),
            change_outputs: stored
                .change_outputs
                .iter()
                .filter_map(|i| usize::try_from(*i).ok())
                .collect(),
            approvals: r.approvals.iter().chain(&r.rejections).cloned().collect(),
            history: self.velocity_history(&r.vault).await?,
        })
    }

    /// Tells the signer about request `id`'s approvals (the signer starts their delays from
    /// when it first sees them). Returns how many were new to it.
    ///
    /// # Errors
    /// [`PolicySignError`] when the request cannot be loaded or the signer is unreachable.
    pub async fn forward_approvals(&self, id: &str, signer: &SignerClient) -> Result<usize> {
        let stored = self.load(id).await?;
        let auth = self.authorization(&stored).await?;
        Ok(signer.observe(&auth).await?)
    }

    /// Asks the policy signer process to add the policy key's signature to request `id`'s
    /// PSBT. The request is evaluated again first; the signer then decides from its own
    /// state. Records a `signature` ledger entry (key, request, txid, tier, who counted) and
    /// the `spend_policy_signatures` row with the signed PSBT.
    ///
    /// # Errors
    /// [`PolicySignError::Refused`] with the signer's reason; [`PolicySignError::Signing`]
    /// ([`SigningError::WrongState`]) when the request is not ready to sign;
    /// [`PolicySignError::Unavailable`].
    pub async fn policy_sign(
        &self,
        id: &str,
        signer: &SignerClient,
        at: At,
    ) -> Result<SpendReceipt> {
        let stored = self.reevaluate(id, at).await?;
        let tip = match at.tip_height {
            Some(h) => h,
            None => self
                .vaults
                .vaults
                .load(&stored.request.vault)
                .await
                .map_err(SpendServiceError::from)?
                .tip_height(),
        };
        let auth = self.authorization(&stored).await?;
        let current = self.signed_psbt(id).await?;
        let r = &stored.request;
        // Asked even when the service does not think the request ready: the signer's own
        // reason is the most precise one, and it is the authority. A signature it gives for a
        // request the service holds back is discarded (the signer counted it for velocity:
        // the safe direction).
        let (psbt, receipt) = signer
            .sign_spend(&r.vault, &current.psbt, &auth, tip)
            .await?;
        if r.state != State::ReadyToSign {
            return Err(SigningError::WrongState {
                id: r.id.clone(),
                state: r.state.name(),
                why: "the policy key signs only a request that is ready to sign",
            }
            .into());
        }
        if psbt.unsigned_tx.compute_txid() != r.txid {
            return Err(PolicySignError::Unavailable(ClientError::Unexpected(
                "the signer returned a psbt for another transaction".to_owned(),
            )));
        }
        let s = &receipt.spend;
        let key = signer_key(signer).await;
        let body = json!({
            "request": s.request_id, "vault": s.vault, "txid": s.txid.to_string(),
            "key": key, "signer": signer.endpoint(), "inputs": s.inputs,
            "policy": s.policy.to_string(), "amount_sat": s.amount_sat,
            "tier": s.tier, "counted": s.counted, "signer_seq": receipt.seq,
        });
        let upsert = signed_psbt_write(id, &psbt, current.signatures, at);
        let record = Write::new(
            "INSERT INTO spend_policy_signatures (request_id, txid, key, signed_ms) \
             VALUES ($1, $2, $3, $4)",
            vec![
                SqlValue::Text(id.to_owned()),
                SqlValue::Text(s.txid.to_string()),
                SqlValue::Text(key),
                SqlValue::Int(at.now_ms),
            ],
        );
        let draft = ledger_record(Kind::Signature, POLICY_SIGNER_ACTOR, &body, at.now_ms)
            .map_err(SigningError::from)?;
        self.vaults
            .ledger
            .append_with_writes(vec![draft], &[upsert, record])
            .await
            .map_err(SigningError::from)?;
        Ok(receipt)
    }
}

/// The policy key the signer reports (`unknown` when its status cannot be read).
async fn signer_key(signer: &SignerClient) -> String {
    match signer.status().await {
        Ok(s) => s.policy_key,
        Err(_) => "unknown".to_owned(),
    }
}
