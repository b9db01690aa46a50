//! Governance: comparing two policy versions and activating a new one.
//!
//! [`compare`] classifies a change as [`ChangeKind::Tightening`] only when the new version allows
//! no spend the current one forbids, judged rule by rule; anything else is a loosening. The rules
//! (each must hold; every one that fails is listed in [`Comparison::loosened`]):
//!
//! - **Tiers**: at every amount, the new tier's requirement implies the old one's, its delay is
//!   not shorter, and it is allowlist-only if the old one was. A requirement implies another when
//!   each of its alternatives implies some old alternative; an alternative implies an old one when
//!   every old group requirement `(G, k)` can be mapped to a distinct new requirement `(G', k')`
//!   with `k' >= k` and the members of `G'` (person and key) a subset of those of `G`. So raising
//!   a `k`, adding a required group, removing an alternative or a member are tightenings; adding a
//!   member, rotating a key, lowering a `k` are loosenings.
//! - **Allowlist**: the new scripts are a subset of the old.
//! - **Velocity**: every old window `(w, max)` is matched by a new one with a window at least `w`
//!   and a max at most `max`.
//! - **Fees**: caps not higher; a fee-rate band not wider (adding one tightens, removing one loosens).
//! - **Approvals**: max age not longer; a height limit not removed nor raised.
//! - **Proof quorum and admins**: members a subset, `k` not lower.
//! - **Loosening delay**: not shorter.
//!
//! Name and version changes are neutral; the version must increase.
//!
//! [`activate`] needs the admin quorum of the *current* version signing a [`ChangeOrder`];
//! a tightening activates at once, a loosening after the current `loosening_delay_secs`.

use std::collections::BTreeSet;

use bitcoin::Amount;
use serde::{Deserialize, Serialize};

use crate::approval::secs_to_ms;
use crate::canonical::PolicyHash;
use crate::encode::Encoder;
use crate::freeze::{admin_signers, AdminSignature};
use crate::model::{Group, GroupRequirement, Member, Policy, Requirement};
use crate::quorum::max_matching;

/// The tag of governance change digests.
pub const GOVERNANCE_TAG: &str = "strategic-reserve/governance/v1";

/// How a new version relates to the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Allows nothing the current version forbids: activates at once.
    Tightening,
    /// Anything else: activates after the loosening delay.
    Loosening,
}

/// The result of [`compare`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// Tightening when `loosened` is empty.
    pub kind: ChangeKind,
    /// Each rule that loosens, described.
    pub loosened: Vec<String>,
}

fn members_subset(new: &[Member], old: &[Member]) -> bool {
    new.iter().all(|m| old.contains(m))
}

fn group_req_implies(
    newp: &Policy,
    new: &GroupRequirement,
    oldp: &Policy,
    old: &GroupRequirement,
) -> bool {
    match (newp.group(&new.group), oldp.group(&old.group)) {
        (Some(ng), Some(og)) => new.k >= old.k && members_subset(&ng.members, &og.members),
        _ => false,
    }
}

fn alt_implies(
    newp: &Policy,
    new: &[GroupRequirement],
    oldp: &Policy,
    old: &[GroupRequirement],
) -> bool {
    let adj: Vec<Vec<usize>> = old
        .iter()
        .map(|o| {
            new.iter()
                .enumerate()
                .filter(|(_, n)| group_req_implies(newp, n, oldp, o))
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    max_matching(&adj, new.len()).iter().all(Option::is_some)
}

fn requirement_implies(newp: &Policy, new: &Requirement, oldp: &Policy, old: &Requirement) -> bool {
    new.alternatives.iter().all(|na| {
        old.alternatives
            .iter()
            .any(|oa| alt_implies(newp, na, oldp, oa))
    })
}

fn group_tighter(new: &Group, old: &Group) -> bool {
    new.k >= old.k && members_subset(&new.members, &old.members)
}

/// Compares `new` against `current` (see the [module documentation](self) for the rules).
pub fn compare(current: &Policy, new: &Policy) -> Comparison {
    let mut loosened = Vec::new();

    // Tiers: sample every interval of the merged partition of amounts.
    let bounds: BTreeSet<u64> = current
        .tiers()
        .iter()
        .chain(new.tiers())
        .filter_map(|t| t.up_to.map(|a| a.to_sat()))
        .collect();
    let mut samples: Vec<u64> = bounds.iter().copied().collect();
    samples.push(
        bounds
            .last()
            .map_or(Some(0), |b| b.checked_add(1))
            .unwrap_or(u64::MAX),
    );
    for s in samples {
        let amount = Amount::from_sat(s);
        let (Some(o), Some(n)) = (current.tier_for(amount), new.tier_for(amount)) else {
            continue;
        };
        if !requirement_implies(new, &n.requirement, current, &o.requirement) {
            loosened.push(format!(
                "approvals for {s} sat no longer imply the current ones"
            ));
        }
        if n.delay_secs < o.delay_secs {
            loosened.push(format!("delay for {s} sat shortened"));
        }
        if o.allowlist_only && !n.allowlist_only {
            loosened.push(format!("allowlist no longer enforced for {s} sat"));
        }
    }

    if !new.allowlist().iter().all(|n| {
        current
            .allowlist()
            .iter()
            .any(|o| o.script_pubkey == n.script_pubkey)
    }) {
        loosened.push("allowlist gained addresses".into());
    }
    for o in current.velocity() {
        if !new
            .velocity()
            .iter()
            .any(|n| n.window_secs >= o.window_secs && n.max <= o.max)
        {
            loosened.push(format!(
                "velocity window {} s loosened or removed",
                o.window_secs
            ));
        }
    }
    let (of, nf) = (current.fees(), new.fees());
    if nf.max_fee > of.max_fee {
        loosened.push("fee cap raised".into());
    }
    if nf.max_fee_rate_sat_vb > of.max_fee_rate_sat_vb {
        loosened.push("fee-rate cap raised".into());
    }
    match (of.fee_rate_band_percent, nf.fee_rate_band_percent) {
        (Some(_), None) => loosened.push("fee-rate band removed".into()),
        (Some(o), Some(n)) if n > o => loosened.push("fee-rate band widened".into()),
        _ => {}
    }
    let (oa, na) = (current.approval_rules(), new.approval_rules());
    if na.max_age_secs > oa.max_age_secs {
        loosened.push("approval max age lengthened".into());
    }
    match (oa.max_age_blocks, na.max_age_blocks) {
        (Some(_), None) => loosened.push("approval height limit removed".into()),
        (Some(o), Some(n)) if n > o => loosened.push("approval height limit raised".into()),
        _ => {}
    }
    match (
        current.group(current.proof_quorum()),
        new.group(new.proof_quorum()),
    ) {
        (Some(o), Some(n)) if group_tighter(n, o) => {}
        _ => loosened.push("proof quorum loosened".into()),
    }
    if !group_tighter(new.admins(), current.admins()) {
        loosened.push("admins loosened".into());
    }
    if new.loosening_delay_secs() < current.loosening_delay_secs() {
        loosened.push("loosening delay shortened".into());
    }

    Comparison {
        kind: if loosened.is_empty() {
            ChangeKind::Tightening
        } else {
            ChangeKind::Loosening
        },
        loosened,
    }
}

/// Classifies the change from `current` to `new` (shorthand for `compare(..).kind`).
pub fn propose(current: &Policy, new: &Policy) -> ChangeKind {
    compare(current, new).kind
}

/// The order admins sign to replace the current version by a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeOrder {
    /// The current version's hash.
    pub current: PolicyHash,
    /// The proposed version's hash.
    pub proposed: PolicyHash,
    /// When it was issued (Unix milliseconds).
    pub issued_at_ms: i64,
}

impl ChangeOrder {
    /// The digest admins sign (hashcore tagged hash, tag [`GOVERNANCE_TAG`]).
    pub fn digest(&self) -> [u8; 32] {
        let mut e = Encoder::new();
        e.fixed(&self.current.0)
            .fixed(&self.proposed.0)
            .i64(self.issued_at_ms);
        hashcore::TaggedHash::new(GOVERNANCE_TAG).hash(&e.finish())
    }
}

/// The tag of veto digests.
pub const VETO_TAG: &str = "strategic-reserve/veto/v1";

impl ChangeOrder {
    /// The digest an admin signs to veto this change while it waits for its delay (hashcore
    /// tagged hash, tag [`VETO_TAG`], of the change digest): a signature of the change itself
    /// can never be taken for a veto, nor the other way round.
    pub fn veto_digest(&self) -> [u8; 32] {
        hashcore::TaggedHash::new(VETO_TAG).hash(&self.digest())
    }
}

/// Verifies admin signatures of `digest` against the admins of `policy`; returns the distinct
/// admins who signed.
///
/// # Errors
/// [`GovernanceError::BadSignature`] naming the first signer who is not an admin, whose key is
/// not the admin's, or whose signature does not verify.
pub fn verify_admin_signatures(
    policy: &Policy,
    digest: [u8; 32],
    sigs: &[AdminSignature],
) -> Result<BTreeSet<String>, GovernanceError> {
    admin_signers(policy.admins(), digest, sigs)
        .map_err(|(admin, problem)| GovernanceError::BadSignature { admin, problem })
}

/// An accepted change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    /// Tightening or loosening.
    pub kind: ChangeKind,
    /// What loosens.
    pub loosened: Vec<String>,
    /// When the new version takes effect (Unix milliseconds).
    pub activates_at_ms: i64,
    /// The new version's hash.
    pub policy: PolicyHash,
    /// The new version's number.
    pub version: u64,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GovernanceError {
    /// The new version number is not above the current one.
    #[error("version {new} must be above the current {current}")]
    VersionNotIncreasing {
        /// Current.
        current: u64,
        /// New.
        new: u64,
    },
    /// The signed order names other versions.
    #[error("the change order does not name the current and proposed policies")]
    OrderMismatch,
    /// A signature is not valid.
    #[error("signature of \"{admin}\": {problem}")]
    BadSignature {
        /// The signer named.
        admin: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Not enough distinct admins of the current version signed.
    #[error("change needs {need} admin signatures, has {have}")]
    NotEnoughAdmins {
        /// Needed.
        need: u32,
        /// Present.
        have: usize,
    },
}

/// Accepts the change from `current` to `new` signed by admins at `now_ms`.
///
/// # Errors
/// [`GovernanceError`]: version not increasing, order naming other versions, a bad signature,
/// fewer than `k` admins of the current version.
pub fn activate(
    current: &Policy,
    new: &Policy,
    order: &ChangeOrder,
    sigs: &[AdminSignature],
    now_ms: i64,
) -> Result<Activation, GovernanceError> {
    if new.version() <= current.version() {
        return Err(GovernanceError::VersionNotIncreasing {
            current: current.version(),
            new: new.version(),
        });
    }
    if order.current != current.hash() || order.proposed != new.hash() {
        return Err(GovernanceError::OrderMismatch);
    }
    let signers = admin_signers(current.admins(), order.digest(), sigs)
        .map_err(|(admin, problem)| GovernanceError::BadSignature { admin, problem })?;
    let need = current.admins().k;
    if signers.len() < need as usize {
        return Err(GovernanceError::NotEnoughAdmins {
            need,
            have: signers.len(),
        });
    }
    let c = compare(current, new);
    let activates_at_ms = match c.kind {
        ChangeKind::Tightening => now_ms,
        ChangeKind::Loosening => now_ms.saturating_add(secs_to_ms(current.loosening_delay_secs())),
    };
    Ok(Activation {
        kind: c.kind,
        loosened: c.loosened,
        activates_at_ms,
        policy: new.hash(),
        version: new.version(),
    })
}
