//! The in-process policy signer kept for reserve proofs (`reserves sign-policy`) only.
//!
//! Known limit (issue 16): it is rebuilt from the service's database like the spend path was
//! before ADR 0017. A proof transaction spends nothing (BIP-127 and BIP-322 proofs are
//! unspendable by construction, which [`hsm::PolicySigner`] checks itself), so a rewritten
//! policy here can at worst get a proof signed; moving it to the signer process
//! (`sign_proof`, `sign_proof_of_funds`) is the next step.

use hsm::policy_signer::PolicySigner;
use hsm::Signer;
use sqlx::Row;

use crate::service::signing::SigningError;
use crate::service::spend::{SpendService, SpendServiceError};
use crate::store::on_db;

type Result<T> = std::result::Result<T, SigningError>;

fn corrupt(e: impl std::fmt::Display) -> SigningError {
    SigningError::Corrupt(e.to_string())
}

impl SpendService {
    /// The in-process policy signer for reserve proofs only, built from what the service
    /// stores: the active policy version, every vault whose descriptors hold the key, the
    /// freeze orders (their admin signatures re-verified). A proof transaction cannot move
    /// coins; spends are signed only by the signer process
    /// ([`SpendService::policy_sign`]).
    ///
    /// # Errors
    /// [`SigningError::Refused`] when a stored freeze order does not verify, and store errors.
    pub async fn proof_signer<S: Signer>(
        &self,
        key: S,
        network: bdk_wallet::bitcoin::Network,
        now_ms: i64,
    ) -> Result<PolicySigner<S>> {
        let active = self
            .governance
            .active(now_ms)
            .await
            .map_err(SpendServiceError::from)?;
        let mut signer = PolicySigner::new(key, active.policy.clone(), network)?;
        for cfg in self
            .vaults
            .vaults
            .list()
            .await
            .map_err(SpendServiceError::from)?
        {
            // Vaults without the policy key are not the policy signer's.
            let _ = signer.add_vault(
                &cfg.name,
                &cfg.descriptor.external_string(),
                &cfg.descriptor.internal_string(),
            );
        }
        let q = "SELECT order_json, signatures FROM freeze_orders ORDER BY seq";
        let orders: Vec<(String, String)> = on_db!(self.vaults.ledger.db(), p => {
            sqlx::query(q)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<std::result::Result<_, sqlx::Error>>()?
        });
        for (order, sigs) in orders {
            let order: policies::freeze::FreezeOrder =
                serde_json::from_str(&order).map_err(corrupt)?;
            let sigs: Vec<policies::freeze::AdminSignature> =
                serde_json::from_str(&sigs).map_err(corrupt)?;
            if order.policy == active.hash {
                signer.apply_freeze(&order, &sigs)?;
            } else {
                // An order of an earlier policy version was verified under that version when
                // it was applied; the signer holds the active version only and resumes from
                // the state that order left.
                signer.resume_freeze(policies::freeze::FreezeState {
                    frozen: order.action == policies::freeze::FreezeAction::Freeze,
                    seq: order.seq.saturating_add(1),
                    since_ms: Some(order.issued_at_ms),
                });
            }
        }
        Ok(signer)
    }
}
