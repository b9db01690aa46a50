//! The spend-request state machine: pure, synchronous and deterministic.
//!
//! A request moves through
//! `Created → PendingApproval → Approved → WaitingForDelay → ReadyToSign → Finalized →
//! Broadcast → Confirmed`, or ends in one of the terminal states `Rejected`, `Expired`,
//! `Cancelled` or `Replaced { by }`. Every change is a [`Transition`] (from, to, time, cause,
//! reason, and the evaluation's missing approvals or deny reasons), and every transition yields a
//! ledger draft ([`Transition::ledger_draft`]).
//!
//! The decisions come from [`policies::evaluate()`]: a `Deny` moves the request to `Rejected`
//! with the reasons; `Pending` keeps it in `PendingApproval` and reports what is `missing`;
//! `Allow { ready_at_ms }` moves it to `Approved`, then to `WaitingForDelay` until
//! `ready_at_ms`, then to `ReadyToSign`. Time only moves through the [`Context`] passed in (the
//! clock is the caller's), so a replay of the same events with the same contexts gives the same
//! transitions.
//!
//! Design choices:
//! - **Approvals** are verified with [`policies::verify`] against this request's subject when
//!   they arrive ([`Event::AddApproval`]); a tampered, foreign, replayed or expired approval is
//!   refused with the reason ([`RequestError::ApprovalRefused`]) and the state does not change.
//!   The initiator's own approval is refused too (separation of duties: it would never count).
//!   A person's second approval (same verdict) is refused as a duplicate.
//! - **Rejections** (approvals with [`Verdict::Reject`]) are verified, recorded and reported (a
//!   ledger entry); like [`policies::evaluate()`], they do not veto: acting on them is an
//!   operator's [`Event::Cancel`].
//! - **Expiry**: when the subject's expiry (time or height) is reached before the request was
//!   finalized, or the approvals that met the quorum no longer do, the request is `Expired`.
//! - **Freeze**: a frozen reserve is a policy `Deny`, so an evaluation while frozen rejects the
//!   request (fail-closed); after the freeze is lifted a new request is needed. Finalized and
//!   later states are not re-evaluated (the policy signer evaluated when it signed).
//! - **Cancel** is possible from every non-terminal state up to `Finalized`; a broadcast
//!   transaction cannot be called back, only replaced by a conflicting one ([`Event::ReplacedBy`]).
//! - **Fee bumps**: a bump is a new request with `replaces: Some(old id)`; its subject (txid,
//!   fee, outputs) differs, so earlier approvals are void. The policy has no rule for fee-only
//!   bumps under a cap, so **every bump needs a full set of new approvals**. When the new request
//!   is created, the old one receives [`Event::ReplacedBy`].
//! - The signed transaction's txid (which excludes witnesses) must be the request's unsigned
//!   txid ([`Event::Finalized`]).
//! - An input spent by another transaction ([`Event::InputSpent`], seen by the vault's sync)
//!   voids the approvals: a request still being approved is `Expired`.

use bitcoin::{Address, Amount, FeeRate, Network, OutPoint, Psbt, ScriptBuf, Transaction, Txid};
use policies::approval::{verify, Approval, ApprovalError, ApprovalSubject, Verdict};
use policies::evaluate::{
    evaluate, Context, Decision, DenyReason, Evaluation, Missing, PastSpend, ReceivedApproval,
    RequestKind, SpendRequestFacts,
};
use policies::{Policy, PolicyHash};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ledger::{Actor, EntryDraft, EntryError, Kind};
use crate::vault::ledger_record;

/// The actor of ledger entries the service records on its own (evaluations, chain events).
pub const SERVICE_ACTOR: &str = "custody";

/// Where a spend request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Built, not yet submitted for approval.
    Created,
    /// Submitted; the quorum is not met yet.
    PendingApproval,
    /// The quorum is met (transient: followed by `WaitingForDelay` or `ReadyToSign`).
    Approved,
    /// The quorum is met; the tier's delay runs.
    WaitingForDelay,
    /// The quorum is met and the delay elapsed: the signers may sign.
    ReadyToSign,
    /// Fully signed.
    Finalized,
    /// Broadcast to the network.
    Broadcast,
    /// Confirmed by the required number of blocks (terminal).
    Confirmed,
    /// Denied by the policy (terminal).
    Rejected,
    /// The approvals or the subject expired (terminal).
    Expired,
    /// Cancelled by a person (terminal).
    Cancelled,
    /// Replaced by another request (a fee bump; terminal).
    Replaced {
        /// The replacing request's id.
        by: String,
    },
}

impl State {
    /// Whether no event can move the request any more.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            State::Confirmed
                | State::Rejected
                | State::Expired
                | State::Cancelled
                | State::Replaced { .. }
        )
    }

    /// The snake_case name of the state.
    pub fn name(&self) -> &'static str {
        match self {
            State::Created => "created",
            State::PendingApproval => "pending_approval",
            State::Approved => "approved",
            State::WaitingForDelay => "waiting_for_delay",
            State::ReadyToSign => "ready_to_sign",
            State::Finalized => "finalized",
            State::Broadcast => "broadcast",
            State::Confirmed => "confirmed",
            State::Rejected => "rejected",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::Replaced { .. } => "replaced",
        }
    }

    /// Whether the request is still being approved (approvals are accepted and evaluated).
    fn in_approval(&self) -> bool {
        matches!(
            self,
            State::PendingApproval | State::Approved | State::WaitingForDelay | State::ReadyToSign
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Replaced { by } => write!(f, "replaced by {by}"),
            s => f.write_str(s.name()),
        }
    }
}

/// What happens to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Submit the created request for approval.
    Submit,
    /// An approval (or rejection) arrived.
    AddApproval(Approval),
    /// Time passed or the tip moved: evaluate again.
    Reevaluate,
    /// A person cancels the request.
    Cancel {
        /// Who cancels.
        by: String,
    },
    /// The transaction was fully signed.
    Finalized {
        /// The signed transaction.
        tx: Transaction,
    },
    /// The transaction was broadcast.
    Broadcast,
    /// The transaction has this many confirmations.
    Confirmations(u32),
    /// Another request (a fee bump) replaces this one.
    ReplacedBy(String),
    /// An input of the request was spent by another transaction: the approved transaction
    /// can never be valid any more, so its approvals are void.
    InputSpent(OutPoint),
}

impl Event {
    /// The snake_case name of the event (used in errors).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Submit => "submit",
            Event::AddApproval(_) => "add_approval",
            Event::Reevaluate => "reevaluate",
            Event::Cancel { .. } => "cancel",
            Event::Finalized { .. } => "finalized",
            Event::Broadcast => "broadcast",
            Event::Confirmations(_) => "confirmations",
            Event::ReplacedBy(_) => "replaced_by",
            Event::InputSpent(_) => "input_spent",
        }
    }
}

/// Why an event was refused. The request is unchanged after any error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The event is not allowed in the current state.
    #[error("illegal transition: {event} in state {from}")]
    IllegalTransition {
        /// The current state.
        from: State,
        /// The event's name.
        event: &'static str,
    },
    /// The approval does not verify against this request's subject.
    #[error("approval refused: {0}")]
    ApprovalRefused(ApprovalError),
    /// The initiator's own approval never counts.
    #[error("approval of the initiator \"{0}\" refused (separation of duties)")]
    InitiatorApproval(String),
    /// The person gave this verdict already.
    #[error("duplicate {verdict:?} of \"{person}\"")]
    DuplicateApproval {
        /// The person.
        person: String,
        /// The verdict.
        verdict: Verdict,
    },
    /// The signed transaction is not the approved one.
    #[error("finalized transaction {got} is not the request's transaction {expected}")]
    TxidMismatch {
        /// The request's txid.
        expected: Txid,
        /// The finalized transaction's txid.
        got: Txid,
    },
    /// A request cannot replace itself.
    #[error("request \"{0}\" cannot replace itself")]
    SelfReplacement(String),
    /// The policy is not the version the request is bound to.
    #[error("request is bound to policy {request}, not {policy}")]
    PolicyMismatch {
        /// The request's policy hash.
        request: PolicyHash,
        /// The policy passed in.
        policy: PolicyHash,
    },
    /// A PSBT input lacks its previous output (its amount is unknown).
    #[error("psbt input {0} has no previous output")]
    MissingInputAmount(usize),
    /// A PSBT input's `non_witness_utxo` is not the transaction its outpoint names, or its
    /// output disagrees with `witness_utxo` (a false amount).
    #[error("psbt input {0}: non_witness_utxo does not match the spent outpoint or witness_utxo")]
    UtxoMismatch(usize),
    /// The outputs spend more than the inputs.
    #[error("outputs exceed inputs")]
    NegativeFee,
    /// The canceller's name is not a valid ledger actor.
    #[error("invalid actor: {0}")]
    InvalidActor(EntryError),
    /// The outpoint is not an input of the request.
    #[error("{0} is not an input of the request")]
    NotAnInput(OutPoint),
    /// The number of required confirmations is zero.
    #[error("confirmations required must be at least 1")]
    ZeroConfirmations,
}

/// What caused a transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "cause")]
pub enum Cause {
    /// The request was submitted.
    Submitted,
    /// A verified approval or rejection was recorded.
    Approval {
        /// The approver.
        approver: String,
        /// Approve or reject.
        verdict: Verdict,
    },
    /// The policy evaluation (or the clock) moved the request.
    Evaluated,
    /// A person cancelled.
    Cancelled {
        /// Who.
        by: String,
    },
    /// The transaction was finalized.
    Finalized,
    /// The transaction was broadcast.
    Broadcast,
    /// Confirmations were seen.
    Confirmations {
        /// How many.
        n: u32,
    },
    /// Another request replaces this one.
    Replaced {
        /// The replacing request.
        by: String,
    },
}

/// One recorded change of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The request id.
    pub request_id: String,
    /// The vault.
    pub vault: String,
    /// The unsigned txid.
    pub txid: Txid,
    /// The policy version.
    pub policy: PolicyHash,
    /// The state before.
    pub from: State,
    /// The state after (equal to `from` for recorded approvals and confirmation counts).
    pub to: State,
    /// When (the context's time, Unix milliseconds).
    pub at_ms: i64,
    /// What caused it.
    pub cause: Cause,
    /// A human-readable reason.
    pub reason: String,
    /// What the evaluation still missed (for pending requests).
    pub missing: Vec<Missing>,
    /// Why the policy denied (for rejected requests).
    pub deny: Vec<DenyReason>,
    /// When the request becomes ready to sign (when known).
    pub ready_at_ms: Option<i64>,
}

impl Transition {
    /// The ledger kind of this transition: `spend_requested` for a submission, `approval` for
    /// approvals, rejections, evaluations, expiry, cancellation and replacement, `signature` for
    /// ready-to-sign and finalized, `broadcast`, and `confirmation` for confirmation counts.
    pub fn kind(&self) -> Kind {
        match &self.cause {
            Cause::Submitted => Kind::SpendRequested,
            Cause::Finalized => Kind::Signature,
            Cause::Broadcast => Kind::Broadcast,
            Cause::Confirmations { .. } => Kind::Confirmation,
            Cause::Evaluated if self.to == State::ReadyToSign => Kind::Signature,
            Cause::Approval { .. }
            | Cause::Evaluated
            | Cause::Cancelled { .. }
            | Cause::Replaced { .. } => Kind::Approval,
        }
    }

    /// The actor of the ledger entry: the approver or canceller, else [`SERVICE_ACTOR`].
    pub fn actor(&self) -> &str {
        match &self.cause {
            Cause::Approval { approver, .. } => approver,
            Cause::Cancelled { by } => by,
            _ => SERVICE_ACTOR,
        }
    }

    /// The ledger draft of this transition: its kind ([`Transition::kind`]), actor, time and a
    /// canonical JSON payload with the request id, vault, txid, policy hash, from/to states,
    /// cause, reason, missing approvals and deny reasons.
    ///
    /// # Errors
    /// [`EntryError`] when the actor name or the payload is invalid (for example an empty
    /// canceller name).
    pub fn ledger_draft(&self) -> Result<EntryDraft, EntryError> {
        let body = json!({
            "request_id": self.request_id,
            "vault": self.vault,
            "txid": self.txid.to_string(),
            "policy": self.policy.to_string(),
            "from": self.from,
            "to": self.to,
            "cause": self.cause,
            "reason": self.reason,
            "missing": self.missing,
            "deny": self.deny,
            "ready_at_ms": self.ready_at_ms,
        });
        ledger_record(self.kind(), self.actor(), &body, self.at_ms)
    }
}

/// What a new request is built from.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// The request id.
    pub id: String,
    /// The vault spent from.
    pub vault: String,
    /// The person who initiated it.
    pub initiator: String,
    /// Creation time (Unix milliseconds).
    pub created_ms: i64,
    /// Chain tip at creation.
    pub created_height: u32,
    /// The unsigned PSBT (every input with its previous output).
    pub psbt: Psbt,
    /// The network of the destination addresses.
    pub network: Network,
    /// The vault's own scripts among the outputs (change): not counted in the amount.
    pub change_scripts: Vec<ScriptBuf>,
    /// The built fee rate.
    pub fee_rate: FeeRate,
    /// The fee rate the initiator asked for.
    pub requested_fee_rate: Option<FeeRate>,
    /// The policy version the request is evaluated under.
    pub policy: PolicyHash,
    /// Approvals expire at this time (see [`ApprovalSubject::max_expiry`]).
    pub expires_at_ms: i64,
    /// Approvals expire at this height, when set.
    pub expires_at_height: Option<u32>,
    /// Confirmations after which the request is `Confirmed` (at least 1).
    pub confirmations_required: u32,
    /// The request this one replaces (a fee bump).
    pub replaces: Option<String>,
}

/// A spend request and its history.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRequest {
    /// The request id.
    pub id: String,
    /// The vault spent from.
    pub vault: String,
    /// The person who initiated it.
    pub initiator: String,
    /// Creation time (Unix milliseconds).
    pub created_ms: i64,
    /// Chain tip at creation.
    pub created_height: u32,
    /// The unsigned PSBT.
    pub psbt: Psbt,
    /// The approve subject (decision [`Verdict::Approve`]) approvers sign.
    pub subject: ApprovalSubject,
    /// The policy version.
    pub policy_hash: PolicyHash,
    /// The amount (outputs not to the vault's change scripts).
    pub amount: Amount,
    /// The destination addresses (or script hex when not an address).
    pub destinations: Vec<String>,
    /// The built fee rate.
    pub fee_rate: FeeRate,
    /// The requested fee rate.
    pub requested_fee_rate: Option<FeeRate>,
    /// The current state.
    pub state: State,
    /// Verified approvals, with their receive time.
    pub approvals: Vec<ReceivedApproval>,
    /// Verified rejections, with their receive time.
    pub rejections: Vec<ReceivedApproval>,
    /// Every transition so far.
    pub transitions: Vec<Transition>,
    /// The unsigned txid.
    pub txid: Txid,
    /// Confirmations after which the request is `Confirmed`.
    pub confirmations_required: u32,
    /// Confirmations seen so far.
    pub confirmations: u32,
    /// When the request becomes (or became) ready to sign, once the quorum is met.
    pub ready_at_ms: Option<i64>,
    /// The finalized transaction.
    pub final_tx: Option<Transaction>,
    /// The request this one replaces.
    pub replaces: Option<String>,
}

/// The amount an input spends. When the PSBT carries both the full previous transaction and
/// `witness_utxo`, they must agree (and the transaction must be the one the outpoint names).
fn prev_amount(psbt: &Psbt, i: usize, op: &OutPoint) -> Result<Amount, RequestError> {
    let input = psbt
        .inputs
        .get(i)
        .ok_or(RequestError::MissingInputAmount(i))?;
    let full = match &input.non_witness_utxo {
        Some(prev) => {
            let out = usize::try_from(op.vout)
                .ok()
                .and_then(|v| prev.output.get(v))
                .filter(|_| prev.compute_txid() == op.txid)
                .ok_or(RequestError::UtxoMismatch(i))?;
            Some(out)
        }
        None => None,
    };
    match (&input.witness_utxo, full) {
        (Some(w), Some(f)) if w != f => Err(RequestError::UtxoMismatch(i)),
        (Some(w), _) => Ok(w.value),
        (None, Some(f)) => Ok(f.value),
        (None, None) => Err(RequestError::MissingInputAmount(i)),
    }
}

impl SpendRequest {
    /// A new request in state [`State::Created`], its approval subject built from the PSBT.
    ///
    /// # Errors
    /// [`RequestError::MissingInputAmount`] when an input lacks its previous output,
    /// [`RequestError::UtxoMismatch`] when its full previous transaction disagrees with its
    /// `witness_utxo` or outpoint,
    /// [`RequestError::NegativeFee`] when outputs exceed inputs,
    /// [`RequestError::ZeroConfirmations`] when `confirmations_required` is 0.
    pub fn new(n: NewRequest) -> Result<Self, RequestError> {
        if n.confirmations_required == 0 {
            return Err(RequestError::ZeroConfirmations);
        }
        let tx = &n.psbt.unsigned_tx;
        let mut inputs = Vec::with_capacity(tx.input.len());
        let mut total_in = Amount::ZERO;
        for (i, txin) in tx.input.iter().enumerate() {
            let amount = prev_amount(&n.psbt, i, &txin.previous_output)?;
            total_in = total_in
                .checked_add(amount)
                .ok_or(RequestError::NegativeFee)?;
            inputs.push((txin.previous_output, amount));
        }
        let mut outputs = Vec::with_capacity(tx.output.len());
        let mut total_out = Amount::ZERO;
        let mut amount = Amount::ZERO;
        let mut destinations = Vec::new();
        for o in &tx.output {
            total_out = total_out
                .checked_add(o.value)
                .ok_or(RequestError::NegativeFee)?;
            outputs.push((o.script_pubkey.clone(), o.value));
            if !n.change_scripts.contains(&o.script_pubkey) {
                amount = amount
                    .checked_add(o.value)
                    .ok_or(RequestError::NegativeFee)?;
                destinations.push(
                    Address::from_script(&o.script_pubkey, n.network)
                        .map_or_else(|_| o.script_pubkey.to_hex_string(), |a| a.to_string()),
                );
            }
        }
        let fee = total_in
            .checked_sub(total_out)
            .ok_or(RequestError::NegativeFee)?;
        let txid = tx.compute_txid();
        let subject = ApprovalSubject {
            request_id: n.id.clone(),
            vault: n.vault.clone(),
            txid,
            inputs,
            outputs,
            fee,
            policy: n.policy,
            decision: Verdict::Approve,
            expires_at_ms: n.expires_at_ms,
            expires_at_height: n.expires_at_height,
        };
        Ok(SpendRequest {
            id: n.id,
            vault: n.vault,
            initiator: n.initiator,
            created_ms: n.created_ms,
            created_height: n.created_height,
            psbt: n.psbt,
            subject,
            policy_hash: n.policy,
            amount,
            destinations,
            fee_rate: n.fee_rate,
            requested_fee_rate: n.requested_fee_rate,
            state: State::Created,
            approvals: Vec::new(),
            rejections: Vec::new(),
            transitions: Vec::new(),
            txid,
            confirmations_required: n.confirmations_required,
            confirmations: 0,
            ready_at_ms: None,
            final_tx: None,
            replaces: n.replaces,
        })
    }

    /// The facts the policy evaluates.
    pub fn facts(&self) -> SpendRequestFacts {
        SpendRequestFacts {
            id: self.id.clone(),
            vault: self.vault.clone(),
            initiator: self.initiator.clone(),
            amount: self.amount,
            destinations: self.destinations.clone(),
            fee: self.subject.fee,
            fee_rate: self.fee_rate,
            requested_fee_rate: self.requested_fee_rate,
            kind: RequestKind::Spend,
            created_ms: self.created_ms,
            created_height: self.created_height,
            subject: self.subject.clone(),
        }
    }

    /// The policy's evaluation of the request now (approvals and rejections received so far).
    pub fn evaluation(&self, policy: &Policy, ctx: &Context, history: &[PastSpend]) -> Evaluation {
        let received: Vec<ReceivedApproval> = self
            .approvals
            .iter()
            .chain(&self.rejections)
            .cloned()
            .collect();
        evaluate(policy, &self.facts(), history, &received, ctx)
    }

    /// Whether the subject expired (by time or height) at `ctx`.
    pub fn subject_expired(&self, ctx: &Context) -> bool {
        ctx.now_ms >= self.subject.expires_at_ms
            || self
                .subject
                .expires_at_height
                .is_some_and(|h| ctx.tip_height >= h)
    }

    /// Applies `event` under `policy` at `ctx`, given the vault's past spends. Returns the
    /// transitions it caused (possibly none), which are also appended to
    /// [`SpendRequest::transitions`]. Deterministic; on error the request is unchanged.
    ///
    /// # Errors
    /// [`RequestError::IllegalTransition`] when the event is not allowed in the state;
    /// [`RequestError::PolicyMismatch`] when `policy` is not the request's version;
    /// [`RequestError::ApprovalRefused`], [`RequestError::InitiatorApproval`] or
    /// [`RequestError::DuplicateApproval`] for an approval that is not accepted;
    /// [`RequestError::TxidMismatch`] for a finalized transaction that is not the request's;
    /// [`RequestError::SelfReplacement`] when replaced by itself;
    /// [`RequestError::InvalidActor`] when the canceller's name is not a valid ledger actor.
    pub fn apply(
        &mut self,
        policy: &Policy,
        event: Event,
        ctx: &Context,
        history: &[PastSpend],
    ) -> Result<Vec<Transition>, RequestError> {
        if policy.hash() != self.policy_hash {
            return Err(RequestError::PolicyMismatch {
                request: self.policy_hash,
                policy: policy.hash(),
            });
        }
        let illegal = |s: &State, e: &Event| RequestError::IllegalTransition {
            from: s.clone(),
            event: e.name(),
        };
        let start = self.transitions.len();
        match event {
            Event::Submit => {
                if self.state != State::Created {
                    return Err(illegal(&self.state, &Event::Submit));
                }
                let ev = self.evaluation(policy, ctx, history);
                self.push(
                    ctx,
                    State::PendingApproval,
                    Cause::Submitted,
                    "submitted for approval".into(),
                    &ev,
                );
                self.settle(ctx, &ev);
            }
            Event::AddApproval(a) => {
                if !self.state.in_approval() {
                    return Err(illegal(&self.state, &Event::AddApproval(a)));
                }
                let subject = self.subject.with_decision(a.decision);
                let v = verify(policy, &subject, &a, ctx.now_ms, ctx.tip_height)
                    .map_err(RequestError::ApprovalRefused)?;
                if v.decision == Verdict::Approve && v.person == self.initiator {
                    return Err(RequestError::InitiatorApproval(v.person));
                }
                let list = match v.decision {
                    Verdict::Approve => &self.approvals,
                    Verdict::Reject => &self.rejections,
                };
                if list.iter().any(|r| r.approval.approver == v.person) {
                    return Err(RequestError::DuplicateApproval {
                        person: v.person,
                        verdict: v.decision,
                    });
                }
                let received = ReceivedApproval {
                    approval: a,
                    received_ms: ctx.now_ms,
                };
                match v.decision {
                    Verdict::Approve => self.approvals.push(received),
                    Verdict::Reject => self.rejections.push(received),
                }
                let ev = self.evaluation(policy, ctx, history);
                let reason = match v.decision {
                    Verdict::Approve => format!("approval of {}", v.person),
                    Verdict::Reject => format!("rejection of {}", v.person),
                };
                let to = self.state.clone();
                self.push(
                    ctx,
                    to,
                    Cause::Approval {
                        approver: v.person,
                        verdict: v.decision,
                    },
                    reason,
                    &ev,
                );
                self.settle(ctx, &ev);
            }
            Event::Reevaluate => {
                if self.state.in_approval() {
                    let ev = self.evaluation(policy, ctx, history);
                    self.settle(ctx, &ev);
                } else if self.state == State::Created {
                    return Err(illegal(&self.state, &Event::Reevaluate));
                }
                // Finalized, broadcast and terminal requests: nothing to evaluate.
            }
            Event::Cancel { by } => {
                if self.state.is_terminal() || self.state == State::Broadcast {
                    return Err(illegal(&self.state, &Event::Cancel { by }));
                }
                Actor::new(by.as_str()).map_err(RequestError::InvalidActor)?;
                let reason = format!("cancelled by {by}");
                self.push_plain(ctx, State::Cancelled, Cause::Cancelled { by }, reason);
            }
            Event::Finalized { tx } => {
                if self.state != State::ReadyToSign {
                    return Err(illegal(&self.state, &Event::Finalized { tx }));
                }
                let got = tx.compute_txid();
                if got != self.txid {
                    return Err(RequestError::TxidMismatch {
                        expected: self.txid,
                        got,
                    });
                }
                self.final_tx = Some(tx);
                self.push_plain(
                    ctx,
                    State::Finalized,
                    Cause::Finalized,
                    "transaction fully signed".into(),
                );
            }
            Event::Broadcast => {
                if self.state != State::Finalized {
                    return Err(illegal(&self.state, &Event::Broadcast));
                }
                self.push_plain(
                    ctx,
                    State::Broadcast,
                    Cause::Broadcast,
                    "transaction broadcast".into(),
                );
            }
            Event::Confirmations(n) => {
                if self.state != State::Broadcast {
                    return Err(illegal(&self.state, &Event::Confirmations(n)));
                }
                if n != self.confirmations {
                    self.confirmations = n;
                    let (to, reason) = if n >= self.confirmations_required {
                        (
                            State::Confirmed,
                            format!("{n} of {} confirmations", self.confirmations_required),
                        )
                    } else {
                        (
                            State::Broadcast,
                            format!("{n} of {} confirmations", self.confirmations_required),
                        )
                    };
                    self.push_plain(ctx, to, Cause::Confirmations { n }, reason);
                }
            }
            Event::ReplacedBy(by) => {
                if self.state.is_terminal() {
                    return Err(illegal(&self.state, &Event::ReplacedBy(by)));
                }
                if by == self.id {
                    return Err(RequestError::SelfReplacement(by));
                }
                let reason = format!("replaced by request {by}");
                self.push_plain(
                    ctx,
                    State::Replaced { by: by.clone() },
                    Cause::Replaced { by },
                    reason,
                );
            }
            Event::InputSpent(op) => {
                if !self.state.in_approval() && self.state != State::Created {
                    return Err(illegal(&self.state, &Event::InputSpent(op)));
                }
                if !self.subject.inputs.iter().any(|(o, _)| *o == op) {
                    return Err(RequestError::NotAnInput(op));
                }
                self.push_plain(
                    ctx,
                    State::Expired,
                    Cause::Evaluated,
                    format!("input {op} was spent by another transaction"),
                );
            }
        }
        Ok(self.transitions.get(start..).unwrap_or_default().to_vec())
    }

    /// Moves the request (in an approval state) according to the evaluation and the clock.
    fn settle(&mut self, ctx: &Context, ev: &Evaluation) {
        if !self.state.in_approval() {
            return;
        }
        match &ev.decision {
            Decision::Deny { .. } => {
                self.push(
                    ctx,
                    State::Rejected,
                    Cause::Evaluated,
                    "denied by the policy".into(),
                    ev,
                );
            }
            _ if self.subject_expired(ctx) => {
                self.push(
                    ctx,
                    State::Expired,
                    Cause::Evaluated,
                    "the approval subject expired".into(),
                    ev,
                );
            }
            Decision::Pending { .. } => {
                if self.state != State::PendingApproval {
                    self.push(
                        ctx,
                        State::Expired,
                        Cause::Evaluated,
                        "approvals of the quorum expired".into(),
                        ev,
                    );
                }
            }
            Decision::Allow { ready_at_ms } => {
                let ready_at_ms = *ready_at_ms;
                self.ready_at_ms = Some(ready_at_ms);
                if self.state == State::PendingApproval {
                    self.push(
                        ctx,
                        State::Approved,
                        Cause::Evaluated,
                        "quorum met".into(),
                        ev,
                    );
                }
                if ctx.now_ms >= ready_at_ms {
                    if self.state != State::ReadyToSign {
                        self.push(
                            ctx,
                            State::ReadyToSign,
                            Cause::Evaluated,
                            "ready to sign".into(),
                            ev,
                        );
                    }
                } else if self.state == State::Approved {
                    self.push(
                        ctx,
                        State::WaitingForDelay,
                        Cause::Evaluated,
                        format!("delay runs until {ready_at_ms} ms"),
                        ev,
                    );
                }
            }
        }
    }

    fn push(&mut self, ctx: &Context, to: State, cause: Cause, reason: String, ev: &Evaluation) {
        let (missing, deny) = match &ev.decision {
            Decision::Pending { missing } => (missing.clone(), Vec::new()),
            Decision::Deny { reasons } => (Vec::new(), reasons.clone()),
            Decision::Allow { .. } => (Vec::new(), Vec::new()),
        };
        let ready_at_ms = match ev.decision {
            Decision::Allow { ready_at_ms } => Some(ready_at_ms),
            _ => None,
        };
        self.record(ctx, to, cause, reason, missing, deny, ready_at_ms);
    }

    fn push_plain(&mut self, ctx: &Context, to: State, cause: Cause, reason: String) {
        let ready = self.ready_at_ms;
        self.record(ctx, to, cause, reason, Vec::new(), Vec::new(), ready);
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        ctx: &Context,
        to: State,
        cause: Cause,
        reason: String,
        missing: Vec<Missing>,
        deny: Vec<DenyReason>,
        ready_at_ms: Option<i64>,
    ) {
        let from = std::mem::replace(&mut self.state, to.clone());
        self.transitions.push(Transition {
            request_id: self.id.clone(),
            vault: self.vault.clone(),
            txid: self.txid,
            policy: self.policy_hash,
            from,
            to,
            at_ms: ctx.now_ms,
            cause,
            reason,
            missing,
            deny,
            ready_at_ms,
        });
    }
}
