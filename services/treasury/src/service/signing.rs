//! From an approved spend request to a confirmed transaction: the policy key's signature, the
//! officers' partial signatures, finalization, broadcast and confirmations.
//!
//! Why like this:
//! - The policy key signs only in the policy signer process, from its own state
//!   ([`crate::service::policy_signer`], ADR 0017): the service's database is not an input to
//!   the rules the policy key obeys.
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
use hsm::policy_signer::PolicySignerError;
use serde_json::json;
use sqlx::Row;

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
pub(crate) fn signed_psbt_write(id: &str, psbt: &Psbt, before: usize, at: At) -> Write {
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
