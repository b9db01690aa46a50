//! From an approved spend request to a confirmed transaction: the policy key's signature, the
//! officers' partial signatures, finalization, broadcast and confirmations.
//!
//! Why like this:
//! - The policy key signs only through [`hsm::PolicySigner`], which re-checks the request by
//!   itself (ADR 0008). The service builds the signer from what it stores (the active policy
//!   version, every vault whose descriptor holds the key, the freeze orders with their admin
//!   signatures, re-verified on replay, the approvals with their receive times, and the
//!   earlier policy signatures for velocity), then asks it to sign the request's current PSBT.
//! - Officers sign on their own devices (Core, hardware wallets, `treasury officer sign`); the
//!   service accepts their PSBTs only for the request's exact unsigned transaction, and
//!   verifies every new partial signature against its sighash on arrival
//!   ([`custody::vault::combine`]): a bad or foreign signature is refused, naming the input
//!   and key, and nothing is stored.
//! - Finalization goes through miniscript, whose interpreter checks every input (taproot
//!   included, with all spent outputs); then `testmempoolaccept` on the node; then broadcast.
//! - Every signature added, the finalization, the broadcast and the confirmations are ledger
//!   entries written in the same database transaction as the state they record.

use std::str::FromStr;

use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::Txid;
use custody::ledger::Kind;
use custody::request::{Event, State};
use custody::vault::{combine, ledger_record, spend};
use hsm::policy_signer::{PolicySignature, PolicySigner, PolicySignerError, SpendAuthorization};
use hsm::Signer;
use policies::evaluate::PastSpend;
use serde_json::json;
use sqlx::Row;

use crate::actor::POLICY_SIGNER_ACTOR;
use crate::node::NodeConfig;
use crate::service::spend::{At, SpendService, SpendServiceError, StoredRequest};
use crate::store::{on_db, SqlValue, Write};

/// Errors on the signing path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// The spend-request service.
    #[error(transparent)]
    Spend(#[from] SpendServiceError),
    /// The policy signer refused (the reason says why).
    #[error("the policy signer refused: {0}")]
    Refused(#[from] PolicySignerError),
    /// The request is not in a state that allows this step.
    #[error("request {id} is {state}: {why}")]
    WrongState {
        /// The request.
        id: String,
        /// Its state.
        state: &'static str,
        /// What the step needs.
        why: &'static str,
    },
    /// A submitted PSBT is for another transaction.
    #[error("the psbt is for transaction {got}, request {id} is {want}")]
    OtherTransaction {
        /// The request.
        id: String,
        /// The request's txid.
        want: Txid,
        /// The PSBT's txid.
        got: Txid,
    },
    /// A partial signature was refused on arrival, or the PSBTs do not combine.
    #[error("psbt refused: {0}")]
    Combine(#[from] combine::CombineError),
    /// Finalization failed (missing or invalid signatures).
    #[error("cannot finalize: {0}")]
    Finalize(#[from] spend::SpendError),
    /// The node refused the transaction or is unreachable.
    #[error(transparent)]
    Node(#[from] crate::node::SyncError),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The ledger.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A ledger entry could not be built.
    #[error("ledger entry: {0}")]
    Entry(#[from] custody::ledger::EntryError),
    /// Stored rows do not decode.
    #[error("corrupt signing store: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, SigningError>;

fn corrupt(e: impl std::fmt::Display) -> SigningError {
    SigningError::Corrupt(e.to_string())
}

fn wrong_state(s: &StoredRequest, why: &'static str) -> SigningError {
    SigningError::WrongState {
        id: s.request.id.clone(),
        state: s.request.state.name(),
        why,
    }
}

/// A request's PSBT as signed so far, and how many partial signatures it holds.
#[derive(Debug, Clone)]
pub struct SignedPsbt {
    /// The PSBT with every signature accepted so far.
    pub psbt: Psbt,
    /// Partial signatures across all inputs.
    pub signatures: usize,
}

/// Stores `psbt` as request `id`'s signed PSBT, provided it still holds the `before`
/// signatures it was read with (another writer's update makes the write a conflict).
fn signed_psbt_write(id: &str, psbt: &Psbt, before: usize, at: At) -> Write {
    Write::new(
        "INSERT INTO spend_signed_psbts (request_id, psbt, signatures, updated_ms) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO UPDATE SET psbt = $2, \
         signatures = $3, updated_ms = $4 WHERE spend_signed_psbts.signatures = $5",
        vec![
            SqlValue::Text(id.to_owned()),
            SqlValue::Text(psbt.to_string()),
            SqlValue::Int(i64::try_from(count_signatures(psbt)).unwrap_or(i64::MAX)),
            SqlValue::Int(at.now_ms),
            SqlValue::Int(i64::try_from(before).unwrap_or(i64::MAX)),
        ],
    )
    .exactly(
        1,
        "the request's psbt was changed by another writer; try again",
    )
}

fn count_signatures(psbt: &Psbt) -> usize {
    psbt.inputs
        .iter()
        .map(|i| {
            i.partial_sigs.len() + i.tap_script_sigs.len() + usize::from(i.tap_key_sig.is_some())
        })
        .sum()
}

impl SpendService {
    /// The request's PSBT with every signature accepted so far (the unsigned PSBT before any).
    ///
    /// # Errors
    /// [`SigningError::Spend`] for an unknown request, [`SigningError::Db`].
    pub async fn signed_psbt(&self, id: &str) -> Result<SignedPsbt> {
        let stored = self.load(id).await?;
        let q = "SELECT psbt FROM spend_signed_psbts WHERE request_id = $1";
        let row: Option<String> = on_db!(self.vaults.ledger.db(), p => {
            match sqlx::query(q).bind(id).fetch_optional(p).await? {
                Some(r) => Some(r.try_get(0)?),
                None => None,
            }
        });
        let psbt = match row {
            Some(text) => Psbt::from_str(&text).map_err(corrupt)?,
            None => stored.request.psbt.clone(),
        };
        let signatures = count_signatures(&psbt);
        Ok(SignedPsbt { psbt, signatures })
    }

    async fn store_signed(
        &self,
        id: &str,
        before: usize,
        psbt: &Psbt,
        body: serde_json::Value,
        actor: &str,
        at: At,
    ) -> Result<()> {
        let upsert = signed_psbt_write(id, psbt, before, at);
        let draft = ledger_record(Kind::Signature, actor, &body, at.now_ms)?;
        self.vaults
            .ledger
            .append_with_writes(vec![draft], &[upsert])
            .await?;
        Ok(())
    }

    /// Accepts an officer's PSBT for request `id`: it must be for the request's exact unsigned
    /// transaction, and every partial signature it adds is verified against its sighash before
    /// anything is stored. Records a `signature` ledger entry naming `by` and the keys added.
    /// Returns how many signatures were new.
    ///
    /// # Errors
    /// [`SigningError::OtherTransaction`], [`SigningError::Combine`] (naming the input and key
    /// of a bad signature), [`SigningError::WrongState`] when the request is not being signed.
    pub async fn submit_psbt(&self, id: &str, incoming: Psbt, by: &str, at: At) -> Result<usize> {
        let stored = self.load(id).await?;
        if !matches!(
            stored.request.state,
            State::PendingApproval | State::WaitingForDelay | State::ReadyToSign
        ) {
            return Err(wrong_state(
                &stored,
                "signatures are accepted only while it is being approved or signed",
            ));
        }
        let got = incoming.unsigned_tx.compute_txid();
        if got != stored.request.txid {
            return Err(SigningError::OtherTransaction {
                id: id.to_owned(),
                want: stored.request.txid,
                got,
            });
        }
        let current = self.signed_psbt(id).await?;
        let mut psbt = current.psbt.clone();
        let added = combine::combine(&mut psbt, incoming)?;
        if added == 0 {
            return Ok(0);
        }
        let keys: Vec<serde_json::Value> = psbt
            .inputs
            .iter()
            .zip(&current.psbt.inputs)
            .enumerate()
            .flat_map(|(i, (new, old))| {
                let ecdsa = new
                    .partial_sigs
                    .keys()
                    .filter(|k| !old.partial_sigs.contains_key(k))
                    .map(move |k| json!({"input": i, "key": k.to_string()}));
                let schnorr = new
                    .tap_script_sigs
                    .keys()
                    .filter(|k| !old.tap_script_sigs.contains_key(k))
                    .map(move |(k, leaf)| json!({"input": i, "key": k.to_string(), "leaf": leaf.to_string()}));
                ecdsa.chain(schnorr).collect::<Vec<_>>()
            })
            .collect();
        let body = json!({
            "request": id, "vault": stored.request.vault, "txid": stored.request.txid.to_string(),
            "by": by, "added": keys,
        });
        self.store_signed(id, current.signatures, &psbt, body, by, at)
            .await?;
        Ok(added)
    }

    /// The policy signer for `key`, built from what the service stores: the active policy
    /// version, every vault whose descriptors hold the key, the freeze orders (their admin
    /// signatures re-verified), and the spends the policy key signed before (for velocity).
    ///
    /// # Errors
    /// [`SigningError::Refused`] when a stored freeze order does not verify, and store errors.
    pub async fn policy_signer<S: Signer>(
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
        let q = "SELECT s.request_id, r.vault, r.amount_sat, s.signed_ms FROM spend_policy_signatures s \
                 JOIN spend_requests r ON r.id = s.request_id ORDER BY s.signed_ms";
        let past: Vec<(String, String, i64, i64)> = on_db!(self.vaults.ledger.db(), p => {
            sqlx::query(q)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                .collect::<std::result::Result<_, sqlx::Error>>()?
        });
        for (request_id, vault, amount, at_ms) in past {
            signer.record_signed(
                &vault,
                PastSpend {
                    request_id,
                    amount: bdk_wallet::bitcoin::Amount::from_sat(
                        u64::try_from(amount).map_err(corrupt)?,
                    ),
                    at_ms,
                    state: policies::evaluate::SpendState::Pending,
                },
            );
        }
        Ok(signer)
    }

    /// Asks the policy signer to add the policy key's signature to request `id`'s PSBT. The
    /// request is evaluated again first; the signer then checks everything itself. Records a
    /// `signature` ledger entry with the key, request, txid, tier and who counted.
    ///
    /// # Errors
    /// [`SigningError::Refused`] with the signer's reason; [`SigningError::WrongState`] when
    /// the request is not ready to sign.
    pub async fn policy_sign<S: Signer>(
        &self,
        id: &str,
        signer: &mut PolicySigner<S>,
        at: At,
    ) -> Result<PolicySignature> {
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
        let r = &stored.request;
        let auth = SpendAuthorization {
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
        };
        // The service received these approvals at the stored times (the signer runs in this
        // process and takes them as its own observations).
        for a in &auth.approvals {
            signer.observe(
                &SpendAuthorization {
                    approvals: vec![a.clone()],
                    ..auth.clone()
                },
                a.received_ms,
            );
        }
        let current = self.signed_psbt(id).await?;
        if r.state != State::ReadyToSign {
            // The signer's own reason is the most precise one.
            signer.check(&current.psbt, &auth, at.now_ms, tip)?;
            return Err(wrong_state(
                &stored,
                "the policy key signs only a request that is ready to sign",
            ));
        }
        let mut psbt = current.psbt.clone();
        let sig = signer.sign(&mut psbt, &auth, at.now_ms, tip)?;
        let body = json!({
            "request": sig.request_id, "vault": sig.vault, "txid": sig.txid.to_string(),
            "key": sig.key, "signer": sig.signer, "inputs": sig.inputs,
            "policy": sig.policy.to_string(), "amount_sat": sig.amount.to_sat(),
            "tier": sig.tier, "counted": sig.counted,
        });
        let upsert = signed_psbt_write(id, &psbt, current.signatures, at);
        let record = Write::new(
            "INSERT INTO spend_policy_signatures (request_id, txid, key, signed_ms) \
             VALUES ($1, $2, $3, $4)",
            vec![
                SqlValue::Text(id.to_owned()),
                SqlValue::Text(sig.txid.to_string()),
                SqlValue::Text(sig.key.clone()),
                SqlValue::Int(at.now_ms),
            ],
        );
        let draft = ledger_record(Kind::Signature, POLICY_SIGNER_ACTOR, &body, at.now_ms)?;
        self.vaults
            .ledger
            .append_with_writes(vec![draft], &[upsert, record])
            .await?;
        Ok(sig)
    }

    /// Finalizes request `id`'s fully signed PSBT (miniscript's interpreter checks every
    /// input), has the node test it (`testmempoolaccept`) and broadcasts it. Records the
    /// `finalized` and `broadcast` transitions.
    ///
    /// # Errors
    /// [`SigningError::Finalize`] when signatures are missing or invalid,
    /// [`SigningError::Node`] when the node refuses it or is down (the request stays
    /// finalized and the broadcast can be retried), [`SigningError::WrongState`].
    pub async fn broadcast(&self, id: &str, node: &NodeConfig, at: At) -> Result<Txid> {
        let mut stored = self.load(id).await?;
        if stored.request.state == State::ReadyToSign {
            let signed = self.signed_psbt(id).await?;
            let tx = spend::finalize(signed.psbt)?;
            stored = self.apply_event(id, Event::Finalized { tx }, at).await?;
        }
        if stored.request.state != State::Finalized {
            return Err(wrong_state(
                &stored,
                "only a request ready to sign or finalized is broadcast",
            ));
        }
        let tx = stored
            .request
            .final_tx
            .clone()
            .ok_or_else(|| corrupt("finalized request without a transaction"))?;
        let network = stored.network;
        let node = node.clone();
        let txid = tokio::task::spawn_blocking(move || crate::node::broadcast(&node, network, &tx))
            .await
            .map_err(|e| corrupt(format!("broadcast task: {e}")))??;
        self.apply_event(id, Event::Broadcast, at).await?;
        Ok(txid)
    }

    /// Syncs the request's vault from the node and records the transaction's confirmations;
    /// once it has the confirmations the request needs, it is `confirmed` and its coin
    /// reservation is released.
    ///
    /// # Errors
    /// [`SigningError::Spend`] when the node is down (nothing changes), [`SigningError::WrongState`].
    pub async fn follow(&self, id: &str, node: &NodeConfig, at: At) -> Result<StoredRequest> {
        let stored = self.load(id).await?;
        if stored.request.state != State::Broadcast {
            return Err(wrong_state(
                &stored,
                "only a broadcast request has confirmations to follow",
            ));
        }
        self.vaults
            .sync(&stored.request.vault, node)
            .await
            .map_err(SpendServiceError::from)?;
        let vault = self
            .vaults
            .vaults
            .load(&stored.request.vault)
            .await
            .map_err(SpendServiceError::from)?;
        let confirmations = match vault.tx_height(stored.request.txid).flatten() {
            Some(h) => vault.tip_height().saturating_sub(h).saturating_add(1),
            None => 0,
        };
        if confirmations == 0 {
            return Ok(stored);
        }
        let stored = self
            .apply_event(id, Event::Confirmations(confirmations), at)
            .await?;
        if stored.request.state == State::Confirmed {
            self.vaults
                .vaults
                .release(id)
                .await
                .map_err(SpendServiceError::from)?;
        }
        Ok(stored)
    }

    async fn apply_event(&self, id: &str, event: Event, at: At) -> Result<StoredRequest> {
        let stored = self.load(id).await?;
        let policy = self
            .governance
            .version(&stored.request.policy_hash)
            .await
            .map_err(SpendServiceError::from)?
            .policy;
        Ok(self
            .apply_and_store(stored, &policy, event, at, false)
            .await?)
    }
}
