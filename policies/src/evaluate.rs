//! Evaluating a spend request against a policy version: [`evaluate()`].
//!
//! Deterministic: the same inputs always give the same [`Evaluation`]. The rules, in order:
//!
//! 1. **Deny** (regardless of approvals) when any of these holds, listing every reason: the
//!    request's approval subject does not match the request or was built under another policy
//!    version; the subject's expiry is beyond the policy's approval max age; and, for spends
//!    only: the vault is frozen, a destination is not an address, a destination is not on the
//!    allowlist of an `allowlist_only` tier, a velocity window would be exceeded, the fee or fee
//!    rate is above its cap, the fee rate is outside the band around the requested rate.
//!    A spend whose subject expires before the tier delay could elapse is denied too.
//!    Reserve proofs are not blocked by a freeze (auditing must go on during an incident), and
//!    have no tier, allowlist or velocity: they need the quorum of the `proof_quorum` group.
//! 2. Approvals are verified ([`crate::approval::verify`]) against the request's subject (its
//!    approve or reject twin). Invalid ones are ignored and reported, as are approvals of the
//!    initiator (separation of duties) and repeated approvals of one person (the earliest
//!    counts).
//! 3. **Quorum**: the tier of the amount (`amount <= up_to`) names alternatives; an alternative is
//!    met when its group slots (`k` per requirement) can be filled by distinct approvers, each
//!    approver counted for one group only (a maximum matching). The quorum time is the earliest
//!    moment at which the approvals received so far met some alternative, i.e. the receive time
//!    of the last approval counted. **Allow** with `ready_at_ms = quorum time + tier delay`.
//! 4. Otherwise **Pending**, listing for each alternative how many more approvals each group
//!    needs (for one optimal assignment of the approvers present), and the tier delay that will
//!    follow.
//!
//! `Allow` says the quorum was met by approvals valid *now*; the policy signer evaluates again
//! when it signs (at or after `ready_at_ms`), and approvals that expired by then no longer count.
//!
//! **Rejections** are verified, recorded in [`Evaluation::rejections`] and reported; they do not
//! veto and do not cancel approvals. This keeps evaluation monotone (adding any approval never
//! turns Allow into Deny or Pending); acting on a rejection (cancelling the request) belongs to
//! the request state machine, which sees it here.
//!
//! **Velocity windows**: a past spend at `at_ms` is inside a window of `w` seconds at `now_ms` when
//! `now_ms - at_ms < w * 1000`; a spend exactly `w` old is outside. Spends dated after `now_ms`
//! count. Past spends carrying the evaluated request's id are skipped.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use bitcoin::address::NetworkUnchecked;
use bitcoin::{Address, Amount, FeeRate};
use serde::{Deserialize, Serialize};

use crate::approval::{secs_to_ms, verify, Approval, ApprovalError, ApprovalSubject, Verdict};
use crate::canonical::PolicyHash;
use crate::encode::amount_sat;
use crate::model::{GroupRequirement, Policy};
use crate::proof::{verify_proof_approval, ProofSubject};
use crate::quorum::cover;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A payment out of a vault.
    Spend,
    /// A BIP-127 reserve proof (never broadcastable).
    ReserveProof,
}

/// The facts of a spend request that the policy looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRequestFacts {
    /// The request id.
    pub id: String,
    /// The vault spent from.
    pub vault: String,
    /// The person who initiated the request (their approval never counts).
    pub initiator: String,
    /// The sum of the outputs to scripts that are not the vault's.
    pub amount: Amount,
    /// The destination addresses.
    pub destinations: Vec<String>,
    /// The fee.
    pub fee: Amount,
    /// The built transaction's fee rate.
    pub fee_rate: FeeRate,
    /// The fee rate the request asked for (checked against the policy's fee-rate band).
    pub requested_fee_rate: Option<FeeRate>,
    /// Spend or reserve proof.
    pub kind: RequestKind,
    /// Creation time (Unix milliseconds).
    pub created_ms: i64,
    /// The chain tip at creation.
    pub created_height: u32,
    /// The subject approvers sign (decision [`Verdict::Approve`]).
    pub subject: ApprovalSubject,
}

/// Where a past spend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendState {
    /// Approved, not yet broadcast.
    Pending,
    /// Broadcast, unconfirmed.
    Broadcast,
    /// Confirmed.
    Confirmed,
}

/// A past spend of the vault (cancelled or failed spends are left out by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastSpend {
    /// Its request id.
    pub request_id: String,
    /// Its amount (as in [`SpendRequestFacts::amount`]).
    pub amount: Amount,
    /// When it was approved (Unix milliseconds).
    pub at_ms: i64,
    /// Its state (all states count towards velocity).
    pub state: SpendState,
}

/// An approval with the time the service received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedApproval {
    /// The signed approval.
    pub approval: Approval,
    /// When it was received (Unix milliseconds).
    pub received_ms: i64,
}

/// The state the evaluation runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Now (Unix milliseconds).
    pub now_ms: i64,
    /// The chain tip height.
    pub tip_height: u32,
    /// Whether the reserve is frozen (see [`crate::freeze::FreezeState`]).
    pub frozen: bool,
}

/// Why a request is denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// The reserve is frozen.
    Frozen,
    /// No tier covers the amount (cannot happen with a validated policy; kept fail-closed).
    NoTier,
    /// The approval subject does not describe this request.
    SubjectMismatch(String),
    /// The subject was built under another policy version.
    PolicyMismatch {
        /// The subject's policy hash.
        subject: PolicyHash,
        /// The evaluating policy's hash.
        policy: PolicyHash,
    },
    /// The subject expires later than the policy's max age allows.
    ExpiryTooLate(String),
    /// The subject expires before the tier's delay could elapse, so the spend could never
    /// become ready.
    ExpiresBeforeDelay {
        /// The subject's expiry.
        expires_at_ms: i64,
        /// The earliest possible ready time (creation + tier delay).
        earliest_ready_ms: i64,
    },
    /// A destination is not a valid address.
    BadDestination(String),
    /// A destination is not on the allowlist (the tier is allowlist-only).
    NotAllowlisted(String),
    /// A velocity window would be exceeded.
    Velocity {
        /// The window.
        window_secs: u64,
        /// Its limit.
        #[serde(with = "amount_sat")]
        max: Amount,
        /// Spent within the window already.
        #[serde(with = "amount_sat")]
        used: Amount,
        /// This request.
        #[serde(with = "amount_sat")]
        requested: Amount,
    },
    /// The fee is above the cap.
    FeeTooHigh {
        /// The fee.
        #[serde(with = "amount_sat")]
        fee: Amount,
        /// The cap.
        #[serde(with = "amount_sat")]
        max: Amount,
    },
    /// The fee rate is above the cap.
    FeeRateTooHigh {
        /// The rate in sat/vB (rounded up).
        sat_vb: u64,
        /// The cap in sat/vB.
        max_sat_vb: u64,
    },
    /// The fee rate is outside the band around the requested rate.
    FeeRateOutsideBand {
        /// The built rate, sat/kwu.
        sat_kwu: u64,
        /// The requested rate, sat/kwu.
        requested_sat_kwu: u64,
        /// The band, ± percent.
        percent: u32,
    },
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::Frozen => write!(f, "the reserve is frozen"),
            DenyReason::NoTier => write!(f, "no tier covers the amount"),
            DenyReason::SubjectMismatch(s) => write!(f, "approval subject does not match: {s}"),
            DenyReason::PolicyMismatch { subject, policy } => {
                write!(f, "subject bound to policy {subject}, evaluating {policy}")
            }
            DenyReason::ExpiryTooLate(s) => write!(f, "approval expiry too late: {s}"),
            DenyReason::ExpiresBeforeDelay {
                expires_at_ms,
                earliest_ready_ms,
            } => write!(
                f,
                "approvals expire at {expires_at_ms} ms, before the delay ends at {earliest_ready_ms} ms at the earliest"
            ),
            DenyReason::BadDestination(d) => write!(f, "destination \"{d}\" is not an address"),
            DenyReason::NotAllowlisted(d) => write!(f, "destination \"{d}\" is not allowlisted"),
            DenyReason::Velocity {
                window_secs,
                max,
                used,
                requested,
            } => write!(
                f,
                "velocity: {} + {} sat in {window_secs} s exceeds {} sat",
                used.to_sat(),
                requested.to_sat(),
                max.to_sat()
            ),
            DenyReason::FeeTooHigh { fee, max } => {
                write!(f, "fee {} sat above cap {} sat", fee.to_sat(), max.to_sat())
            }
            DenyReason::FeeRateTooHigh { sat_vb, max_sat_vb } => {
                write!(f, "fee rate {sat_vb} sat/vB above cap {max_sat_vb} sat/vB")
            }
            DenyReason::FeeRateOutsideBand {
                sat_kwu,
                requested_sat_kwu,
                percent,
            } => write!(
                f,
                "fee rate {sat_kwu} sat/kwu outside ±{percent}% of requested {requested_sat_kwu} sat/kwu"
            ),
        }
    }
}

/// A group that needs more approvals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// The group.
    pub group: String,
    /// How many more distinct approvers of the group are needed.
    pub more: u32,
    /// The group's threshold in this requirement.
    pub k: u32,
}

/// What a pending request still needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// Approvals: satisfy any one of the alternatives (one entry for an all-of tier); each lists
    /// the groups short of their `k`.
    Approvals {
        /// The alternatives with their shortfalls.
        alternatives: Vec<Vec<Shortfall>>,
    },
    /// Once the quorum is reached, the tier's delay runs before the spend may proceed.
    DelayAfterQuorum {
        /// The delay.
        secs: u64,
    },
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The quorum is met; the spend may proceed from `ready_at_ms` on.
    Allow {
        /// Quorum time plus the tier delay.
        ready_at_ms: i64,
    },
    /// The request breaks a rule; approvals cannot change that.
    Deny {
        /// Every rule broken.
        reasons: Vec<DenyReason>,
    },
    /// More approvals are needed.
    Pending {
        /// What is missing.
        missing: Vec<Missing>,
    },
}

/// Why an approval was not counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ignored {
    /// It does not verify.
    Invalid(ApprovalError),
    /// It is the initiator's own (separation of duties).
    Initiator,
    /// The person approved already (the earliest approval counts).
    Repeated,
}

/// The decision with the bookkeeping behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The decision.
    pub decision: Decision,
    /// The tier applied (`None` for reserve proofs and subject-level denials).
    pub tier: Option<String>,
    /// The persons counted towards the quorum (when it is met: the assignment at the quorum
    /// time; otherwise the assignment of the best alternative).
    pub counted: Vec<String>,
    /// Persons whose valid rejection was received.
    pub rejections: Vec<String>,
    /// Approvals not counted, by approver, with the reason.
    pub ignored: Vec<(String, Ignored)>,
}

fn deny_checks(
    policy: &Policy,
    req: &SpendRequestFacts,
    history: &[PastSpend],
    ctx: &Context,
) -> Vec<DenyReason> {
    let mut reasons = Vec::new();
    let s = &req.subject;
    let mut mismatch = |what: &str| reasons.push(DenyReason::SubjectMismatch(what.to_owned()));
    if s.request_id != req.id {
        mismatch("request id");
    }
    if s.vault != req.vault {
        mismatch("vault");
    }
    if s.fee != req.fee {
        mismatch("fee");
    }
    if s.decision != Verdict::Approve {
        mismatch("decision must be approve");
    }
    if s.policy != policy.hash() {
        reasons.push(DenyReason::PolicyMismatch {
            subject: s.policy,
            policy: policy.hash(),
        });
    }
    let (max_ms, max_height) =
        ApprovalSubject::max_expiry(policy, req.created_ms, req.created_height);
    if s.expires_at_ms > max_ms {
        reasons.push(DenyReason::ExpiryTooLate(format!(
            "expires at {} ms, max {max_ms} ms",
            s.expires_at_ms
        )));
    }
    if let Some(max_h) = max_height {
        match s.expires_at_height {
            None => reasons.push(DenyReason::ExpiryTooLate(format!(
                "no expiry height, max {max_h}"
            ))),
            Some(h) if h > max_h => reasons.push(DenyReason::ExpiryTooLate(format!(
                "expires at height {h}, max {max_h}"
            ))),
            Some(_) => {}
        }
    }

    let fees = policy.fees();
    if req.fee > fees.max_fee {
        reasons.push(DenyReason::FeeTooHigh {
            fee: req.fee,
            max: fees.max_fee,
        });
    }
    let max_rate = FeeRate::from_sat_per_vb(fees.max_fee_rate_sat_vb).unwrap_or(FeeRate::MAX);
    if req.fee_rate > max_rate {
        reasons.push(DenyReason::FeeRateTooHigh {
            sat_vb: req.fee_rate.to_sat_per_vb_ceil(),
            max_sat_vb: fees.max_fee_rate_sat_vb,
        });
    }
    if let (Some(percent), Some(asked)) = (fees.fee_rate_band_percent, req.requested_fee_rate) {
        let a = u128::from(req.fee_rate.to_sat_per_kwu());
        let r = u128::from(asked.to_sat_per_kwu());
        if a.abs_diff(r) * 100 > r * u128::from(percent) {
            reasons.push(DenyReason::FeeRateOutsideBand {
                sat_kwu: req.fee_rate.to_sat_per_kwu(),
                requested_sat_kwu: asked.to_sat_per_kwu(),
                percent,
            });
        }
    }

    if req.kind == RequestKind::ReserveProof {
        return reasons;
    }
    if ctx.frozen {
        reasons.insert(0, DenyReason::Frozen);
    }
    let tier = policy.tier_for(req.amount);
    if let Some(t) = tier.filter(|t| t.delay_secs > 0) {
        let earliest_ready_ms = req.created_ms.saturating_add(secs_to_ms(t.delay_secs));
        if s.expires_at_ms <= earliest_ready_ms {
            reasons.push(DenyReason::ExpiresBeforeDelay {
                expires_at_ms: s.expires_at_ms,
                earliest_ready_ms,
            });
        }
    }
    let allowlist_only = tier.is_some_and(|t| t.allowlist_only);
    for d in &req.destinations {
        match Address::<NetworkUnchecked>::from_str(d) {
            Err(_) => reasons.push(DenyReason::BadDestination(d.clone())),
            Ok(a) => {
                let script = a.assume_checked().script_pubkey();
                if allowlist_only && !policy.allowlist().iter().any(|e| e.script_pubkey == script) {
                    reasons.push(DenyReason::NotAllowlisted(d.clone()));
                }
            }
        }
    }
    for v in policy.velocity() {
        let window = i128::from(secs_to_ms(v.window_secs));
        let used: u64 = history
            .iter()
            .filter(|h| h.request_id != req.id)
            .filter(|h| i128::from(ctx.now_ms) - i128::from(h.at_ms) < window)
            .fold(0u64, |acc, h| acc.saturating_add(h.amount.to_sat()));
        if used.saturating_add(req.amount.to_sat()) > v.max.to_sat() {
            reasons.push(DenyReason::Velocity {
                window_secs: v.window_secs,
                max: v.max,
                used: Amount::from_sat(used),
                requested: req.amount,
            });
        }
    }
    reasons
}

/// Evaluates `request` under `policy`, given the vault's past spends, the approvals received and
/// the context. See the [module documentation](self) for the rules.
pub fn evaluate(
    policy: &Policy,
    request: &SpendRequestFacts,
    history: &[PastSpend],
    approvals: &[ReceivedApproval],
    ctx: &Context,
) -> Evaluation {
    let rules: Rules = match request.kind {
        RequestKind::ReserveProof => proof_rules(policy),
        RequestKind::Spend => match policy.tier_for(request.amount) {
            Some(t) => (
                t.requirement.alternatives.clone(),
                t.delay_secs,
                Some(t.name.clone()),
            ),
            None => (Vec::new(), 0, None),
        },
    };
    let reasons = deny_checks(policy, request, history, ctx);
    decide(
        policy,
        rules,
        Some(&request.initiator),
        approvals,
        |a| {
            let subject = request.subject.with_decision(a.decision);
            verify(policy, &subject, a, ctx.now_ms, ctx.tip_height)
        },
        reasons,
    )
}

/// Evaluates the approvals of a reserve proof under the policy's reserve-proof rule
/// ([`RequestKind::ReserveProof`]: the quorum of the `proof_quorum` group, no tier, delay,
/// allowlist or velocity, not blocked by a freeze). Each approval is verified against `subject`
/// ([`verify_proof_approval`], its approve or reject twin); repeated approvals of one person
/// count once. Denied when the subject is not an approve subject, is bound to another policy
/// version, or expires later than the policy's approval max age from `ctx.now_ms`.
pub fn evaluate_proof(
    policy: &Policy,
    subject: &ProofSubject,
    approvals: &[ReceivedApproval],
    ctx: &Context,
) -> Evaluation {
    let mut reasons = Vec::new();
    if subject.decision != Verdict::Approve {
        reasons.push(DenyReason::SubjectMismatch(
            "decision must be approve".to_owned(),
        ));
    }
    if subject.policy != policy.hash() {
        reasons.push(DenyReason::PolicyMismatch {
            subject: subject.policy,
            policy: policy.hash(),
        });
    }
    let max_ms = ctx
        .now_ms
        .saturating_add(secs_to_ms(policy.approval_rules().max_age_secs));
    if subject.expires_at_ms > max_ms {
        reasons.push(DenyReason::ExpiryTooLate(format!(
            "expires at {} ms, max {max_ms} ms (now + max age)",
            subject.expires_at_ms
        )));
    }
    decide(
        policy,
        proof_rules(policy),
        None,
        approvals,
        |a| verify_proof_approval(policy, &subject.with_decision(a.decision), a, ctx.now_ms),
        reasons,
    )
}

/// The alternatives, the delay and the tier name that apply.
type Rules = (Vec<Vec<GroupRequirement>>, u64, Option<String>);

/// The reserve-proof rule: `k` of the `proof_quorum` group, no delay, no tier.
fn proof_rules(policy: &Policy) -> Rules {
    let k = policy.group(policy.proof_quorum()).map_or(1, |g| g.k);
    (
        vec![vec![GroupRequirement {
            group: policy.proof_quorum().to_owned(),
            k,
        }]],
        0,
        None,
    )
}

/// Verifies the approvals (earliest first), then applies the deny reasons and the quorum.
fn decide(
    policy: &Policy,
    (alternatives, delay_secs, tier): Rules,
    initiator: Option<&str>,
    approvals: &[ReceivedApproval],
    verify_one: impl Fn(&Approval) -> Result<crate::approval::Verified, ApprovalError>,
    mut reasons: Vec<DenyReason>,
) -> Evaluation {
    // Verify approvals: earliest first, one per person and verdict.
    let mut order: Vec<&ReceivedApproval> = approvals.iter().collect();
    order.sort_by(|a, b| {
        (a.received_ms, &a.approval.approver, a.approval.signature).cmp(&(
            b.received_ms,
            &b.approval.approver,
            b.approval.signature,
        ))
    });
    let mut ignored = Vec::new();
    let mut approvers: Vec<(String, i64)> = Vec::new();
    let mut rejections: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeSet<(String, Verdict)> = BTreeSet::new();
    for ra in order {
        let a = &ra.approval;
        match verify_one(a) {
            Err(e) => ignored.push((a.approver.clone(), Ignored::Invalid(e))),
            Ok(v) => {
                if !seen.insert((v.person.clone(), v.decision)) {
                    ignored.push((v.person, Ignored::Repeated));
                } else if v.decision == Verdict::Reject {
                    rejections.insert(v.person);
                } else if initiator == Some(v.person.as_str()) {
                    ignored.push((v.person, Ignored::Initiator));
                } else {
                    approvers.push((v.person, ra.received_ms));
                }
            }
        }
    }
    let rejections: Vec<String> = rejections.into_iter().collect();

    if alternatives.is_empty() {
        reasons.push(DenyReason::NoTier);
    }
    if !reasons.is_empty() {
        return Evaluation {
            decision: Decision::Deny { reasons },
            tier,
            counted: Vec::new(),
            rejections,
            ignored,
        };
    }

    // The earliest prefix of approvals (by receive time) that meets an alternative.
    let mut present: BTreeSet<&str> = BTreeSet::new();
    for (person, at) in &approvers {
        present.insert(person);
        if let Some(c) = alternatives
            .iter()
            .map(|alt| cover(policy, alt, &present))
            .find(|c| c.met())
        {
            return Evaluation {
                decision: Decision::Allow {
                    ready_at_ms: at.saturating_add(secs_to_ms(delay_secs)),
                },
                tier,
                counted: c.counted,
                rejections,
                ignored,
            };
        }
    }

    let mut best: Vec<String> = Vec::new();
    let mut alts = Vec::with_capacity(alternatives.len());
    for alt in &alternatives {
        let c = cover(policy, alt, &present);
        if c.counted.len() > best.len() {
            best.clone_from(&c.counted);
        }
        alts.push(
            alt.iter()
                .zip(&c.more)
                .filter(|(_, m)| **m > 0)
                .map(|(r, m)| Shortfall {
                    group: r.group.clone(),
                    more: *m,
                    k: r.k,
                })
                .collect(),
        );
    }
    let mut missing = vec![Missing::Approvals { alternatives: alts }];
    if delay_secs > 0 {
        missing.push(Missing::DelayAfterQuorum { secs: delay_secs });
    }
    Evaluation {
        decision: Decision::Pending { missing },
        tier,
        counted: best,
        rejections,
        ignored,
    }
}
