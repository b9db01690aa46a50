//! Spend requests in the service: build, persist, approve, evaluate, cancel.
//!
//! Why like this: the decisions belong to pure code (`custody::request`'s state machine over
//! `policies::evaluate`), so that an auditor can re-run them from the ledger; this module only
//! gathers their inputs (the PSBT from the vault's builder with its coin reservations, the active
//! policy version, the freeze state, the vault's past spends for the velocity windows, the
//! caller's clock and the chain tip) and stores their outputs. Every transition is written in
//! the same database transaction as its ledger entry, under an optimistic revision check, so
//! two service instances never both move one request and the ledger never misses a step.
//!
//! Before each evaluation the request's inputs are checked against the vault's last sync: an
//! input spent by another transaction voids the approvals (the request expires).
//!
//! The clock is the caller's ([`At`]): the CLI reads `--now-ms` / `TREASURY_NOW_MS` or the
//! system clock, tests move time by hand. When a new policy version activates, open requests
//! bound to the previous version are cancelled (by `governance`): their approvals signed the old
//! policy hash and can never count under the new one.
//!
//! [`RequestFile`] is what officers review and approve offline (`treasury spend show --json`):
//! the PSBT, the policy document, and the facts the service claims; the officer's tools rebuild
//! the approval subject from the PSBT itself and refuse a file whose claims differ.

use std::str::FromStr;
use std::time::Duration;

use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::{Amount, FeeRate, Network, Transaction};
use custody::ledger::{Actor, EntryDraft, EntryError};
use custody::request::{Cause, Event, NewRequest, RequestError, SpendRequest, State, Transition};
use custody::vault::ledger_record;
use custody::vault::spend::{FeeCaps, Payment, SpendRequest as BuildRequest};
use policies::approval::{Approval, ApprovalSubject, Verdict};
use policies::evaluate::{Context, Evaluation, PastSpend, ReceivedApproval, SpendState};
use policies::{Policy, PolicyHash};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

use crate::files::request_file::{
    change_scripts, FileApproval, FilePastSpend, RequestFile, RequestFileError, REQUEST_FORMAT,
};
use crate::service::governance::{Governance, GovernanceStoreError, GOVERNANCE_ACTOR};
use crate::service::vaults::{OpError, VaultService};
use crate::store::{on_db, Db, SqlValue, StoreError, Write};

/// Errors of the spend-request service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpendServiceError {
    /// The vault store, the builder or the node.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The ledger or a write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault store.
    #[error(transparent)]
    Vault(#[from] crate::store::vaults::VaultStoreError),
    /// Policies and freeze.
    #[error(transparent)]
    Governance(#[from] GovernanceStoreError),
    /// The state machine refused the event (nothing is stored).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A ledger entry could not be built.
    #[error("ledger entry: {0}")]
    Entry(#[from] EntryError),
    /// No request with this id.
    #[error("no spend request {0:?}")]
    NotFound(String),
    /// The id is taken.
    #[error("spend request {0:?} exists already")]
    Exists(String),
    /// The id or a name is not acceptable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The request is bound to a policy version that is not in force.
    #[error("request {id} is bound to policy {policy}, the policy in force is {active}: cancel it and create a new one")]
    PolicyNotActive {
        /// The request.
        id: String,
        /// Its policy.
        policy: PolicyHash,
        /// The active one.
        active: PolicyHash,
    },
    /// A request file is inconsistent with its own PSBT or policy.
    #[error("request file: {0}")]
    File(String),
    /// Stored rows do not decode.
    #[error("corrupt spend store: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, SpendServiceError>;

fn corrupt(e: impl std::fmt::Display) -> SpendServiceError {
    SpendServiceError::Corrupt(e.to_string())
}

/// The caller's clock and, optionally, the chain tip (default: the vault's last synced tip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// Now, Unix milliseconds.
    pub now_ms: i64,
    /// The chain tip height, when the caller knows better than the vault's last sync.
    pub tip_height: Option<u32>,
}

impl At {
    /// At `now_ms`, with the vault's synced tip.
    pub fn ms(now_ms: i64) -> Self {
        At {
            now_ms,
            tip_height: None,
        }
    }
}

/// What to build a spend request from.
#[derive(Debug, Clone)]
pub struct CreateSpend {
    /// Request id (an idempotency key); `None` for a random one.
    pub id: Option<String>,
    /// The vault to spend from.
    pub vault: String,
    /// Who asks (their approval never counts).
    pub initiator: String,
    /// Payments.
    pub payments: Vec<Payment>,
    /// The fee rate asked for.
    pub fee_rate: FeeRate,
    /// An OP_RETURN memo.
    pub memo: Option<Vec<u8>>,
    /// Confirmations after which the request is confirmed.
    pub confirmations_required: u32,
}

/// A fee bump of a request not yet signed ([`SpendService::bump`]).
#[derive(Debug, Clone)]
pub struct Bump {
    /// The request to replace.
    pub old_id: String,
    /// The new request's id (`None` for a random one).
    pub new_id: Option<String>,
    /// The new fee rate (above the old one).
    pub fee_rate: FeeRate,
    /// Who asks for the bump (their approval of the new request never counts).
    pub initiator: String,
}

/// The immutable part of a stored request (besides the PSBT).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spec {
    initiator: String,
    created_ms: i64,
    created_height: u32,
    network: String,
    change_outputs: Vec<u32>,
    fee_rate_sat_kwu: u64,
    requested_fee_rate_sat_kwu: Option<u64>,
    expires_at_ms: i64,
    expires_at_height: Option<u32>,
    confirmations_required: u32,
    replaces: Option<String>,
}

/// The mutable part of a stored request.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Status {
    state: State,
    confirmations: u32,
    ready_at_ms: Option<i64>,
    final_tx: Option<String>,
}

/// A stored request with the revision it was read at.
#[derive(Debug, Clone)]
pub struct StoredRequest {
    /// The request.
    pub request: SpendRequest,
    /// Indexes of the change outputs (the vault's own).
    pub change_outputs: Vec<u32>,
    /// The network.
    pub network: Network,
    /// The revision (bumped by every stored change).
    pub revision: i64,
}

/// A request as shown: the stored request and its evaluation now.
#[derive(Debug, Clone)]
pub struct EvaluatedSpend {
    /// The stored request.
    pub stored: StoredRequest,
    /// The policy it is bound to.
    pub policy: Policy,
    /// Its document (TOML).
    pub policy_document: String,
    /// The evaluation at the time asked (not stored).
    pub evaluation: Evaluation,
    /// The context of the evaluation.
    pub context: Context,
    /// The vault's past spends the evaluation counted.
    pub history: Vec<PastSpend>,
}

/// The spend-request service over the vault service and the governance store (one database).
#[derive(Debug, Clone)]
pub struct SpendService {
    /// Vaults, builder and ledger.
    pub vaults: VaultService,
    /// Policies and freeze.
    pub governance: Governance,
}

fn check_name(what: &'static str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SpendServiceError::Invalid {
            what,
            reason: format!("{s:?} must be 1 to 64 of A-Z a-z 0-9 . _ -"),
        })
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The ledger entry of a transition: the transition itself, and for a submission the whole
/// approval subject and PSBT, for an approval the signed approval and its receive time, so
/// that an auditor can verify every signature and re-run every evaluation from the ledger.
fn transition_draft(
    t: &Transition,
    req: &SpendRequest,
    approval: Option<&ReceivedApproval>,
) -> Result<EntryDraft> {
    let mut body = serde_json::to_value(t).map_err(corrupt)?;
    if let Some(obj) = body.as_object_mut() {
        match &t.cause {
            Cause::Submitted => {
                obj.insert("subject".into(), subject_json(&req.subject));
                obj.insert("psbt".into(), json!(req.psbt.to_string()));
                obj.insert("initiator".into(), json!(req.initiator));
                obj.insert("amount_sat".into(), json!(req.amount.to_sat()));
                obj.insert("destinations".into(), json!(req.destinations));
                obj.insert(
                    "fee_rate_sat_kwu".into(),
                    json!(req.fee_rate.to_sat_per_kwu()),
                );
                obj.insert(
                    "requested_fee_rate_sat_kwu".into(),
                    json!(req.requested_fee_rate.map(FeeRate::to_sat_per_kwu)),
                );
                obj.insert("created_ms".into(), json!(req.created_ms));
                obj.insert("replaces".into(), json!(req.replaces));
                obj.insert("created_height".into(), json!(req.created_height));
            }
            Cause::Approval { .. } => {
                if let Some(a) = approval {
                    obj.insert("approval".into(), json!(a.approval));
                    obj.insert("received_ms".into(), json!(a.received_ms));
                }
            }
            _ => {}
        }
    }
    Ok(ledger_record(t.kind(), t.actor(), &body, t.at_ms)?)
}

/// The approval subject as JSON (integer satoshis, hex scripts).
pub fn subject_json(s: &ApprovalSubject) -> serde_json::Value {
    json!({
        "request_id": s.request_id,
        "vault": s.vault,
        "txid": s.txid.to_string(),
        "inputs": s.inputs.iter().map(|(op, a)| json!({"outpoint": op.to_string(), "amount_sat": a.to_sat()})).collect::<Vec<_>>(),
        "outputs": s.outputs.iter().map(|(sc, a)| json!({"script_hex": sc.to_hex_string(), "amount_sat": a.to_sat()})).collect::<Vec<_>>(),
        "fee_sat": s.fee.to_sat(),
        "policy": s.policy.to_string(),
        "expires_at_ms": s.expires_at_ms,
        "expires_at_height": s.expires_at_height,
    })
}

/// Whether a request in `state` counts towards the vault's velocity windows.
fn past_state(state: &str) -> Option<SpendState> {
    match state {
        "approved" | "waiting_for_delay" | "ready_to_sign" | "finalized" => {
            Some(SpendState::Pending)
        }
        "broadcast" => Some(SpendState::Broadcast),
        "confirmed" => Some(SpendState::Confirmed),
        _ => None,
    }
}

/// Whether a request that reached `state` gives its coins back.
fn releases_coins(state: &State) -> bool {
    matches!(state, State::Rejected | State::Expired | State::Cancelled)
}

struct RequestRow {
    id: String,
    vault: String,
    policy_hash: String,
    psbt: String,
    spec: String,
    status: String,
    revision: i64,
}

impl SpendService {
    /// The service on the vault service's database.
    pub fn new(vaults: VaultService) -> Self {
        let governance = Governance::new(vaults.ledger.clone());
        SpendService { vaults, governance }
    }

    fn db(&self) -> &Db {
        self.vaults.ledger.db()
    }

    /// Activates due policy changes and cancels the open requests bound to an older version
    /// (recorded like any cancel, by `governance`). Returns the active policy.
    ///
    /// # Errors
    /// As [`Governance::active`].
    pub async fn sync_policy(
        &self,
        now_ms: i64,
    ) -> Result<crate::service::governance::PolicyVersion> {
        self.governance.activate_due(now_ms).await?;
        let active = self.governance.active_stored().await?;
        {
            let q = "SELECT id FROM spend_requests WHERE policy_hash <> $1 AND state IN \
                     ('created', 'pending_approval', 'approved', 'waiting_for_delay', 'ready_to_sign')";
            let ids: Vec<String> = on_db!(self.db(), p => {
                sqlx::query(q)
                    .bind(active.hash.to_string())
                    .fetch_all(p)
                    .await?
                    .iter()
                    .map(|r| r.try_get::<String, _>(0))
                    .collect::<std::result::Result<_, sqlx::Error>>()?
            });
            for id in ids {
                let stored = self.load(&id).await?;
                let old = self.governance.version(&stored.request.policy_hash).await?;
                self.apply_and_store(
                    stored,
                    &old.policy,
                    Event::Cancel {
                        by: GOVERNANCE_ACTOR.into(),
                    },
                    At::ms(now_ms),
                    false,
                )
                .await?;
            }
        }
        Ok(active)
    }

    async fn row(&self, id: &str) -> Result<RequestRow> {
        let q = "SELECT id, vault, policy_hash, psbt, spec, status, revision FROM spend_requests \
                 WHERE id = $1";
        let row: Option<RequestRow> = on_db!(self.db(), p => {
            match sqlx::query(q).bind(id).fetch_optional(p).await? {
                Some(r) => Some(RequestRow {
                    id: r.try_get(0)?,
                    vault: r.try_get(1)?,
                    policy_hash: r.try_get(2)?,
                    psbt: r.try_get(3)?,
                    spec: r.try_get(4)?,
                    status: r.try_get(5)?,
                    revision: r.try_get(6)?,
                }),
                None => None,
            }
        });
        row.ok_or_else(|| SpendServiceError::NotFound(id.to_owned()))
    }

    /// Loads a request with its approvals and transitions.
    ///
    /// # Errors
    /// [`SpendServiceError::NotFound`], [`SpendServiceError::Corrupt`], [`SpendServiceError::Db`].
    pub async fn load(&self, id: &str) -> Result<StoredRequest> {
        let row = self.row(id).await?;
        let spec: Spec = serde_json::from_str(&row.spec).map_err(corrupt)?;
        let status: Status = serde_json::from_str(&row.status).map_err(corrupt)?;
        let psbt = Psbt::from_str(&row.psbt).map_err(corrupt)?;
        let policy = PolicyHash::from_str(&row.policy_hash).map_err(corrupt)?;
        let network = Network::from_str(&spec.network).map_err(corrupt)?;
        let change_scripts = change_scripts(&psbt, &spec.change_outputs)?;
        let mut request = SpendRequest::new(NewRequest {
            id: row.id.clone(),
            vault: row.vault.clone(),
            initiator: spec.initiator.clone(),
            created_ms: spec.created_ms,
            created_height: spec.created_height,
            psbt,
            network,
            change_scripts,
            fee_rate: FeeRate::from_sat_per_kwu(spec.fee_rate_sat_kwu),
            requested_fee_rate: spec
                .requested_fee_rate_sat_kwu
                .map(FeeRate::from_sat_per_kwu),
            policy,
            expires_at_ms: spec.expires_at_ms,
            expires_at_height: spec.expires_at_height,
            confirmations_required: spec.confirmations_required,
            replaces: spec.replaces.clone(),
        })?;
        request.state = status.state;
        request.confirmations = status.confirmations;
        request.ready_at_ms = status.ready_at_ms;
        request.final_tx = match status.final_tx {
            Some(hex) => Some(
                bdk_wallet::bitcoin::consensus::encode::deserialize_hex::<Transaction>(&hex)
                    .map_err(corrupt)?,
            ),
            None => None,
        };
        let qa =
            "SELECT decision, approval, received_ms FROM spend_approvals WHERE request_id = $1 \
                  ORDER BY received_ms, approver";
        let approvals: Vec<(String, String, i64)> = on_db!(self.db(), p => {
            sqlx::query(qa)
                .bind(id)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<std::result::Result<_, sqlx::Error>>()?
        });
        for (decision, a, received_ms) in approvals {
            let approval: Approval = serde_json::from_str(&a).map_err(corrupt)?;
            let r = ReceivedApproval {
                approval,
                received_ms,
            };
            if decision == "reject" {
                request.rejections.push(r);
            } else {
                request.approvals.push(r);
            }
        }
        let qt = "SELECT transition FROM spend_transitions WHERE request_id = $1 ORDER BY seq";
        let ts: Vec<String> = on_db!(self.db(), p => {
            sqlx::query(qt)
                .bind(id)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<std::result::Result<_, sqlx::Error>>()?
        });
        for t in ts {
            request
                .transitions
                .push(serde_json::from_str(&t).map_err(corrupt)?);
        }
        Ok(StoredRequest {
            request,
            change_outputs: spec.change_outputs,
            network,
            revision: row.revision,
        })
    }

    /// The ids of the requests of a vault (or of every vault), oldest first.
    ///
    /// # Errors
    /// [`SpendServiceError::Db`].
    pub async fn list(&self, vault: Option<&str>) -> Result<Vec<(String, String, String)>> {
        let q = match vault {
            Some(_) => "SELECT id, vault, state FROM spend_requests WHERE vault = $1 ORDER BY created_ms, id",
            None => "SELECT id, vault, state FROM spend_requests ORDER BY created_ms, id",
        };
        let rows = on_db!(self.db(), p => {
            let mut query = sqlx::query(q);
            if let Some(v) = vault {
                query = query.bind(v.to_owned());
            }
            query
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// The vault's past spends that count towards its velocity windows: requests whose quorum
    /// was met and that are pending, broadcast or confirmed, dated at their approval.
    ///
    /// # Errors
    /// [`SpendServiceError::Db`].
    pub async fn velocity_history(&self, vault: &str) -> Result<Vec<PastSpend>> {
        let q = "SELECT id, amount_sat, approved_ms, state FROM spend_requests \
                 WHERE vault = $1 AND approved_ms IS NOT NULL ORDER BY approved_ms, id";
        let rows: Vec<(String, i64, i64, String)> = on_db!(self.db(), p => {
            sqlx::query(q)
                .bind(vault)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                .collect::<std::result::Result<_, sqlx::Error>>()?
        });
        let mut out = Vec::new();
        for (id, amount, at_ms, state) in rows {
            if let Some(state) = past_state(&state) {
                out.push(PastSpend {
                    request_id: id,
                    amount: Amount::from_sat(u64::try_from(amount).map_err(corrupt)?),
                    at_ms,
                    state,
                });
            }
        }
        Ok(out)
    }

    async fn context(&self, vault: &str, at: At) -> Result<Context> {
        let frozen = self.governance.freeze_state().await?.frozen;
        let tip_height = match at.tip_height {
            Some(h) => h,
            None => self.vaults.vaults.tip_height(vault).await?,
        };
        Ok(Context {
            now_ms: at.now_ms,
            tip_height,
            frozen,
        })
    }

    /// Builds the PSBT (reserving its coins), binds the approval subject to the active policy
    /// and submits the request for approval; stores it and its ledger entries in one
    /// transaction. A request the policy denies at once is stored `rejected` with the reasons
    /// and its coins are released.
    ///
    /// # Errors
    /// [`SpendServiceError::Invalid`] for a bad id or initiator, [`SpendServiceError::Exists`],
    /// [`SpendServiceError::Op`] for every refusal of the builder (funds, dust, caps...),
    /// [`GovernanceStoreError::NoActivePolicy`]. Nothing is stored (and no coin stays
    /// reserved) on error.
    pub async fn create(
        &self,
        c: &CreateSpend,
        caps: &FeeCaps,
        at: At,
        rng: &mut (impl rand_core::RngCore + Send),
    ) -> Result<StoredRequest> {
        self.create_inner(c, caps, at, rng, None).await
    }

    /// A fee bump before signing: a new request paying the same outputs from the same coins
    /// (and more coins if the higher fee needs them) at a higher fee rate. It needs a full set
    /// of new approvals (its subject differs); the old request becomes `replaced` and its
    /// coins pass to the new one.
    ///
    /// # Errors
    /// [`SpendServiceError::Invalid`] when the old request is past approval (finalized,
    /// broadcast or terminal), the rate is not higher, or an output cannot be paid again;
    /// as [`SpendService::create`]. When building fails the old request keeps its coins.
    pub async fn bump(
        &self,
        b: &Bump,
        caps: &FeeCaps,
        at: At,
        rng: &mut (impl rand_core::RngCore + Send),
    ) -> Result<StoredRequest> {
        let (old_id, fee_rate) = (b.old_id.as_str(), b.fee_rate);
        let old = self.load(old_id).await?;
        let r = &old.request;
        if !matches!(
            r.state,
            State::Created
                | State::PendingApproval
                | State::Approved
                | State::WaitingForDelay
                | State::ReadyToSign
        ) {
            return Err(SpendServiceError::Invalid {
                what: "request",
                reason: format!(
                    "{old_id} is {}: only a request not yet signed is bumped here",
                    r.state
                ),
            });
        }
        let old_rate = r.requested_fee_rate.unwrap_or(r.fee_rate);
        if fee_rate <= old_rate {
            return Err(SpendServiceError::Invalid {
                what: "fee rate",
                reason: format!(
                    "{} sat/vB is not above the request's {} sat/vB",
                    fee_rate.to_sat_per_vb_floor(),
                    old_rate.to_sat_per_vb_floor()
                ),
            });
        }
        let mut payments = Vec::new();
        let mut memo = None;
        for (i, o) in r.psbt.unsigned_tx.output.iter().enumerate() {
            if old.change_outputs.iter().any(|&c| c as usize == i) {
                continue;
            }
            if o.script_pubkey.is_op_return() {
                let data = o
                    .script_pubkey
                    .instructions()
                    .filter_map(|ins| match ins {
                        Ok(bdk_wallet::bitcoin::script::Instruction::PushBytes(b)) => {
                            Some(b.as_bytes().to_vec())
                        }
                        _ => None,
                    })
                    .next()
                    .unwrap_or_default();
                memo = Some(data);
                continue;
            }
            let address = bdk_wallet::bitcoin::Address::from_script(&o.script_pubkey, old.network)
                .map_err(|e| SpendServiceError::Invalid {
                    what: "output",
                    reason: format!("output {i} cannot be paid again: {e}"),
                })?;
            payments.push(Payment {
                address: address.into_unchecked(),
                amount: o.value,
            });
        }
        let c = CreateSpend {
            id: b.new_id.clone(),
            vault: r.vault.clone(),
            initiator: b.initiator.clone(),
            payments,
            fee_rate,
            memo,
            confirmations_required: r.confirmations_required,
        };
        let new = self.create_inner(&c, caps, at, rng, Some(&old)).await?;
        self.with_retry(old_id, Event::ReplacedBy(new.request.id.clone()), at, false)
            .await?;
        Ok(new)
    }

    async fn create_inner(
        &self,
        c: &CreateSpend,
        caps: &FeeCaps,
        at: At,
        rng: &mut (impl rand_core::RngCore + Send),
        replaces: Option<&StoredRequest>,
    ) -> Result<StoredRequest> {
        let id = match &c.id {
            Some(id) => id.clone(),
            None => {
                let mut b = [0u8; 12];
                rng.fill_bytes(&mut b);
                hex::encode(b)
            }
        };
        check_name("request id", &id)?;
        if c.confirmations_required == 0 {
            return Err(SpendServiceError::Invalid {
                what: "confirmations",
                reason: "at least 1 is needed".into(),
            });
        }
        Actor::new(c.initiator.as_str()).map_err(|e| SpendServiceError::Invalid {
            what: "initiator",
            reason: e.to_string(),
        })?;
        if c.payments.is_empty() {
            return Err(SpendServiceError::Invalid {
                what: "payments",
                reason: "at least one payment is needed".into(),
            });
        }
        let started = std::time::Instant::now();
        let phase = |name: &str| {
            tracing::debug!(
                request = id.as_str(),
                phase = name,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "spend creation"
            );
        };
        match self.row(&id).await {
            Ok(_) => return Err(SpendServiceError::Exists(id.clone())),
            Err(SpendServiceError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let active = self.sync_policy(at.now_ms).await?;
        phase("policy synced");
        let tip = match at.tip_height {
            Some(h) => h,
            None => self.vaults.vaults.tip_height(&c.vault).await?,
        };
        phase("tip read");
        let (expires_at_ms, _) = ApprovalSubject::max_expiry(&active.policy, at.now_ms, tip);
        // Coins stay reserved while the request can still be approved, and a week beyond.
        let ttl_ms = expires_at_ms
            .saturating_sub(at.now_ms)
            .saturating_add(7 * 86_400_000)
            .max(0);
        let req = BuildRequest {
            payments: c.payments.clone(),
            fee_rate: Some(c.fee_rate),
            memo: c.memo.clone(),
            include: replaces
                .map(|o| o.request.subject.inputs.iter().map(|(op, _)| *op).collect())
                .unwrap_or_default(),
            ..BuildRequest::default()
        };
        let ttl = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
        if let Some(old) = replaces {
            // The replacement spends the same coins: they pass from the old request.
            self.vaults.vaults.release(&old.request.id).await?;
        }
        let built = match self
            .vaults
            .build_psbt_at(&c.vault, &id, &req, c.fee_rate, caps, ttl, rng, at.now_ms)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                if let Some(old) = replaces {
                    let r = &old.request;
                    let ops: Vec<_> = r.subject.inputs.iter().map(|(op, _)| *op).collect();
                    // Best effort: give the coins back to the old request.
                    let _ = self
                        .vaults
                        .vaults
                        .reserve(
                            &r.vault,
                            &r.id,
                            r.txid,
                            &ops,
                            at.now_ms,
                            at.now_ms.saturating_add(ttl_ms),
                        )
                        .await;
                }
                return Err(e.into());
            }
        };
        phase("built and reserved");
        let result = self
            .submit_built(
                c,
                &id,
                built.built,
                &active,
                tip,
                at,
                replaces.map(|o| o.request.id.as_str()),
            )
            .await;
        if result.is_err() {
            // Best effort: the reservation would expire anyway.
            let _ = self.vaults.vaults.release(&id).await;
        }
        phase("submitted and stored");
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn submit_built(
        &self,
        c: &CreateSpend,
        id: &str,
        built: custody::vault::spend::BuiltPsbt,
        active: &crate::service::governance::PolicyVersion,
        tip: u32,
        at: At,
        replaces: Option<&str>,
    ) -> Result<StoredRequest> {
        let (psbt, fee_rate) = (built.psbt, built.fee_rate);
        let vault = self.vaults.vaults.load(&c.vault).await?;
        let mut change_outputs = Vec::new();
        for (i, o) in psbt.unsigned_tx.output.iter().enumerate() {
            if vault.wallet().is_mine(o.script_pubkey.clone()) {
                change_outputs.push(u32::try_from(i).map_err(corrupt)?);
            }
        }
        let change = change_scripts(&psbt, &change_outputs)?;
        let (expires_at_ms, expires_at_height) =
            ApprovalSubject::max_expiry(&active.policy, at.now_ms, tip);
        let mut request = SpendRequest::new(NewRequest {
            id: id.to_owned(),
            vault: c.vault.clone(),
            initiator: c.initiator.clone(),
            created_ms: at.now_ms,
            created_height: tip,
            psbt,
            network: vault.network(),
            change_scripts: change,
            fee_rate,
            requested_fee_rate: Some(c.fee_rate),
            policy: active.hash,
            expires_at_ms,
            expires_at_height,
            confirmations_required: c.confirmations_required,
            replaces: replaces.map(str::to_owned),
        })?;
        // The request being replaced does not count against its own replacement.
        let history: Vec<PastSpend> = self
            .velocity_history(&c.vault)
            .await?
            .into_iter()
            .filter(|h| Some(h.request_id.as_str()) != replaces)
            .collect();
        let ctx = Context {
            now_ms: at.now_ms,
            tip_height: tip,
            frozen: self.governance.freeze_state().await?.frozen,
        };
        let transitions = request.apply(&active.policy, Event::Submit, &ctx, &history)?;
        let spec = Spec {
            initiator: c.initiator.clone(),
            created_ms: at.now_ms,
            created_height: tip,
            network: vault.network().to_string(),
            change_outputs: change_outputs.clone(),
            fee_rate_sat_kwu: fee_rate.to_sat_per_kwu(),
            requested_fee_rate_sat_kwu: Some(c.fee_rate.to_sat_per_kwu()),
            expires_at_ms,
            expires_at_height,
            confirmations_required: c.confirmations_required,
            replaces: replaces.map(str::to_owned),
        };
        let mut writes = vec![Write::new(
            "INSERT INTO spend_requests (id, vault, initiator, state, policy_hash, txid, \
             amount_sat, fee_sat, created_ms, approved_ms, psbt, spec, status, revision, \
             updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0, $9)",
            vec![
                SqlValue::Text(id.to_owned()),
                SqlValue::Text(c.vault.clone()),
                SqlValue::Text(c.initiator.clone()),
                SqlValue::Text(request.state.name().to_owned()),
                SqlValue::Text(active.hash.to_string()),
                SqlValue::Text(request.txid.to_string()),
                SqlValue::Int(to_i64(request.amount.to_sat())),
                SqlValue::Int(to_i64(request.subject.fee.to_sat())),
                SqlValue::Int(at.now_ms),
                SqlValue::OptInt(approved_at(&transitions)),
                SqlValue::Text(request.psbt.to_string()),
                SqlValue::Text(serde_json::to_string(&spec).map_err(corrupt)?),
                SqlValue::Text(status_json(&request)?),
            ],
        )];
        writes.extend(transition_writes(&request, 0, &transitions)?);
        if releases_coins(&request.state) {
            writes.push(release_write(id));
        }
        let drafts = transitions
            .iter()
            .map(|t| transition_draft(t, &request, None))
            .collect::<Result<Vec<_>>>()?;
        self.vaults
            .ledger
            .append_with_writes(drafts, &writes)
            .await
            .map_err(|e| match e {
                StoreError::Db(d) if is_unique(&d) => SpendServiceError::Exists(id.to_owned()),
                e => e.into(),
            })?;
        Ok(StoredRequest {
            request,
            change_outputs,
            network: vault.network(),
            revision: 0,
        })
    }

    /// Applies `event` to a stored request under `policy` and stores the result (with its
    /// ledger entries, in one transaction, at the revision read).
    pub(crate) async fn apply_and_store(
        &self,
        stored: StoredRequest,
        policy: &Policy,
        event: Event,
        at: At,
        check_active: bool,
    ) -> Result<StoredRequest> {
        let mut stored = stored;
        if check_active {
            let active = self.governance.active_stored().await?;
            if active.hash != stored.request.policy_hash && !matches!(event, Event::Cancel { .. }) {
                return Err(SpendServiceError::PolicyNotActive {
                    id: stored.request.id.clone(),
                    policy: stored.request.policy_hash,
                    active: active.hash,
                });
            }
        }
        let ctx = self.context(&stored.request.vault, at).await?;
        let history = self.velocity_history(&stored.request.vault).await?;
        let new_approval = match &event {
            Event::AddApproval(a) => Some(a.clone()),
            _ => None,
        };
        let before = stored.request.transitions.len();
        let transitions = stored.request.apply(policy, event, &ctx, &history)?;
        if transitions.is_empty() {
            return Ok(stored);
        }
        let req = &stored.request;
        let received = new_approval.as_ref().and_then(|a| {
            req.approvals
                .iter()
                .chain(&req.rejections)
                .find(|r| r.approval == *a)
                .cloned()
        });
        let mut writes = vec![Write::new(
            "UPDATE spend_requests SET state = $1, approved_ms = COALESCE(approved_ms, $2), \
             status = $3, revision = revision + 1, updated_ms = $4 \
             WHERE id = $5 AND revision = $6",
            vec![
                SqlValue::Text(req.state.name().to_owned()),
                SqlValue::OptInt(approved_at(&transitions)),
                SqlValue::Text(status_json(req)?),
                SqlValue::Int(at.now_ms),
                SqlValue::Text(req.id.clone()),
                SqlValue::Int(stored.revision),
            ],
        )
        .exactly(1, "the request was changed by another writer; try again")];
        if let Some(r) = &received {
            writes.push(Write::new(
                "INSERT INTO spend_approvals (request_id, approver, decision, approval, \
                 received_ms) VALUES ($1, $2, $3, $4, $5)",
                vec![
                    SqlValue::Text(req.id.clone()),
                    SqlValue::Text(r.approval.approver.clone()),
                    SqlValue::Text(
                        match r.approval.decision {
                            Verdict::Approve => "approve",
                            Verdict::Reject => "reject",
                        }
                        .into(),
                    ),
                    SqlValue::Text(serde_json::to_string(&r.approval).map_err(corrupt)?),
                    SqlValue::Int(r.received_ms),
                ],
            ));
        }
        writes.extend(transition_writes(req, before, &transitions)?);
        if releases_coins(&req.state) {
            writes.push(release_write(&req.id));
        }
        let drafts = transitions
            .iter()
            .map(|t| transition_draft(t, req, received.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        self.vaults
            .ledger
            .append_with_writes(drafts, &writes)
            .await?;
        stored.revision += 1;
        Ok(stored)
    }

    /// An input of a request still being approved that the vault (as of its last sync) no
    /// longer holds unspent, unless the request's own transaction spent it.
    async fn spent_input(
        &self,
        stored: &StoredRequest,
    ) -> Result<Option<bdk_wallet::bitcoin::OutPoint>> {
        let r = &stored.request;
        if !matches!(
            r.state,
            State::Created
                | State::PendingApproval
                | State::Approved
                | State::WaitingForDelay
                | State::ReadyToSign
        ) {
            return Ok(None);
        }
        let vault = self.vaults.vaults.load(&r.vault).await?;
        if vault.transaction(r.txid).is_some() {
            return Ok(None);
        }
        Ok(r.subject
            .inputs
            .iter()
            .map(|(op, _)| *op)
            .find(|op| vault.utxo(*op).is_none()))
    }

    async fn policy_of(&self, stored: &StoredRequest) -> Result<Policy> {
        Ok(self
            .governance
            .version(&stored.request.policy_hash)
            .await?
            .policy)
    }

    /// Submits an approval (or rejection): verified against the request's subject (a tampered,
    /// foreign, replayed, expired, duplicate or initiator's approval is refused and nothing is
    /// stored), then the request is evaluated.
    ///
    /// # Errors
    /// [`SpendServiceError::Request`] with the reason of a refusal, [`SpendServiceError::NotFound`],
    /// [`SpendServiceError::PolicyNotActive`].
    pub async fn approve(&self, id: &str, approval: Approval, at: At) -> Result<StoredRequest> {
        self.sync_policy(at.now_ms).await?;
        self.with_retry(id, Event::AddApproval(approval), at, true)
            .await
    }

    /// Loads, applies and stores; when another writer moved the request in between (the
    /// revision check failed), loads again and re-applies (the event is verified again against
    /// the new state), up to three times.
    async fn with_retry(
        &self,
        id: &str,
        event: Event,
        at: At,
        check_active: bool,
    ) -> Result<StoredRequest> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let stored = self.load(id).await?;
            if matches!(event, Event::Reevaluate) && stored.request.state.is_terminal() {
                return Ok(stored);
            }
            let policy = self.policy_of(&stored).await?;
            if matches!(event, Event::Reevaluate | Event::AddApproval(_)) {
                if let Some(op) = self.spent_input(&stored).await? {
                    match self
                        .apply_and_store(stored, &policy, Event::InputSpent(op), at, false)
                        .await
                    {
                        Ok(s) if matches!(event, Event::Reevaluate) => return Ok(s),
                        // The approval now meets an expired request: refused below.
                        Ok(_) => continue,
                        Err(SpendServiceError::Store(StoreError::Conflict(_))) if attempt < 3 => {
                            continue
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            match self
                .apply_and_store(stored, &policy, event.clone(), at, check_active)
                .await
            {
                Err(SpendServiceError::Store(StoreError::Conflict(_))) if attempt < 3 => {}
                other => return other,
            }
        }
    }

    /// Evaluates the request again at `at` (time passed, the tip moved, the freeze changed).
    ///
    /// # Errors
    /// As [`SpendService::approve`].
    pub async fn reevaluate(&self, id: &str, at: At) -> Result<StoredRequest> {
        self.sync_policy(at.now_ms).await?;
        self.with_retry(id, Event::Reevaluate, at, true).await
    }

    /// Evaluates every open request again (a periodic tick: delays end, approvals and subjects
    /// expire, inputs are spent elsewhere). Returns the requests whose state changed, with
    /// their new state.
    ///
    /// # Errors
    /// As [`SpendService::reevaluate`], for the first request that fails.
    pub async fn reevaluate_open(&self, at: At) -> Result<Vec<(String, State)>> {
        self.sync_policy(at.now_ms).await?;
        let q = "SELECT id, state FROM spend_requests WHERE state IN \
                 ('pending_approval', 'approved', 'waiting_for_delay', 'ready_to_sign') \
                 ORDER BY created_ms, id";
        let rows: Vec<(String, String)> = on_db!(self.db(), p => {
            sqlx::query(q)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<std::result::Result<_, sqlx::Error>>()?
        });
        let mut changed = Vec::new();
        for (id, before) in rows {
            let s = self.with_retry(&id, Event::Reevaluate, at, true).await?;
            if s.request.state.name() != before {
                changed.push((id, s.request.state));
            }
        }
        Ok(changed)
    }

    /// Cancels the request and releases its coins.
    ///
    /// # Errors
    /// [`SpendServiceError::Request`] when it cannot be cancelled any more (broadcast or
    /// terminal) or the name is not a valid actor.
    pub async fn cancel(&self, id: &str, by: &str, at: At) -> Result<StoredRequest> {
        self.with_retry(id, Event::Cancel { by: by.to_owned() }, at, false)
            .await
    }

    /// The request and its evaluation at `at` (nothing is stored).
    ///
    /// # Errors
    /// [`SpendServiceError::NotFound`], [`SpendServiceError::Db`].
    pub async fn show(&self, id: &str, at: At) -> Result<EvaluatedSpend> {
        let stored = self.load(id).await?;
        let version = self.governance.version(&stored.request.policy_hash).await?;
        let context = self.context(&stored.request.vault, at).await?;
        let history = self.velocity_history(&stored.request.vault).await?;
        let evaluation = stored
            .request
            .evaluation(&version.policy, &context, &history);
        Ok(EvaluatedSpend {
            stored,
            policy: version.policy,
            policy_document: version.document,
            evaluation,
            context,
            history,
        })
    }
}

fn is_unique(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d.is_unique_violation() || d.code().as_deref() == Some("1555"),
        _ => false,
    }
}

fn release_write(id: &str) -> Write {
    Write::new(
        "DELETE FROM utxo_reservations WHERE request = $1",
        vec![SqlValue::Text(id.to_owned())],
    )
}

fn approved_at(ts: &[Transition]) -> Option<i64> {
    ts.iter().find(|t| t.to == State::Approved).map(|t| t.at_ms)
}

fn status_json(r: &SpendRequest) -> Result<String> {
    serde_json::to_string(&Status {
        state: r.state.clone(),
        confirmations: r.confirmations,
        ready_at_ms: r.ready_at_ms,
        final_tx: r
            .final_tx
            .as_ref()
            .map(bdk_wallet::bitcoin::consensus::encode::serialize_hex),
    })
    .map_err(corrupt)
}

fn transition_writes(r: &SpendRequest, first: usize, ts: &[Transition]) -> Result<Vec<Write>> {
    ts.iter()
        .enumerate()
        .map(|(i, t)| {
            Ok(Write::new(
                "INSERT INTO spend_transitions (request_id, seq, at_ms, from_state, to_state, \
                 transition) VALUES ($1, $2, $3, $4, $5, $6)",
                vec![
                    SqlValue::Text(r.id.clone()),
                    SqlValue::Int(to_i64((first + i) as u64)),
                    SqlValue::Int(t.at_ms),
                    SqlValue::Text(t.from.name().to_owned()),
                    SqlValue::Text(t.to.name().to_owned()),
                    SqlValue::Text(serde_json::to_string(t).map_err(corrupt)?),
                ],
            ))
        })
        .collect()
}

impl EvaluatedSpend {
    /// The file officers review for this request ([`RequestFile`]).
    pub fn request_file(&self) -> RequestFile {
        let v = self;
        let r = &v.stored.request;
        RequestFile {
            format: REQUEST_FORMAT.into(),
            request_id: r.id.clone(),
            vault: r.vault.clone(),
            initiator: r.initiator.clone(),
            state: r.state.name().into(),
            created_ms: r.created_ms,
            created_height: r.created_height,
            network: v.stored.network.to_string(),
            psbt: r.psbt.to_string(),
            change_outputs: v.stored.change_outputs.clone(),
            fee_rate_sat_kwu: r.fee_rate.to_sat_per_kwu(),
            requested_fee_rate_sat_kwu: r.requested_fee_rate.map(FeeRate::to_sat_per_kwu),
            expires_at_ms: r.subject.expires_at_ms,
            expires_at_height: r.subject.expires_at_height,
            confirmations_required: r.confirmations_required,
            replaces: r.replaces.clone(),
            policy_hash: r.policy_hash.to_string(),
            policy_document: v.policy_document.clone(),
            txid: r.txid.to_string(),
            amount_sat: r.amount.to_sat(),
            fee_sat: r.subject.fee.to_sat(),
            approvals: r
                .approvals
                .iter()
                .chain(&r.rejections)
                .map(|a| FileApproval {
                    approval: a.approval.clone(),
                    received_ms: a.received_ms,
                })
                .collect(),
            history: v
                .history
                .iter()
                .map(|h| FilePastSpend {
                    request_id: h.request_id.clone(),
                    amount_sat: h.amount.to_sat(),
                    at_ms: h.at_ms,
                    state: match h.state {
                        SpendState::Pending => "pending",
                        SpendState::Broadcast => "broadcast",
                        SpendState::Confirmed => "confirmed",
                    }
                    .into(),
                })
                .collect(),
            now_ms: v.context.now_ms,
            tip_height: v.context.tip_height,
            frozen: v.context.frozen,
        }
    }
}

impl From<RequestFileError> for SpendServiceError {
    fn from(e: RequestFileError) -> Self {
        SpendServiceError::File(e.0)
    }
}
