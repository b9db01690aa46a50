//! The freeze state: any one admin can freeze the reserve (a signed order); only the admin quorum
//! (`admins.k` distinct admins) can lift it.
//!
//! Orders are bound to the policy version (its hash) and to the state's sequence number, so an old
//! lift cannot be replayed after a new freeze. Signatures are BIP-340 over the hashcore tagged
//! hash (tag [`FREEZE_TAG`]) of the order's canonical encoding.

use std::collections::BTreeSet;

use bitcoin::secp256k1::{schnorr, Keypair, Message, SecretKey, XOnlyPublicKey};
use serde::{Deserialize, Serialize};

use crate::approval::secp;
use crate::canonical::PolicyHash;
use crate::encode::{hex_array, Encoder};
use crate::model::{Group, Policy};

/// The tag of freeze order digests.
pub const FREEZE_TAG: &str = "strategic-reserve/freeze/v1";

/// Freeze or lift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezeAction {
    /// Stop all spends.
    Freeze,
    /// Resume spends.
    Lift,
}

/// A freeze or lift order, as signed by admins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeOrder {
    /// Freeze or lift.
    pub action: FreezeAction,
    /// The policy version in force.
    pub policy: PolicyHash,
    /// The sequence number of the state the order applies to.
    pub seq: u64,
    /// When it was issued (Unix milliseconds).
    pub issued_at_ms: i64,
    /// Why (free text, for the ledger).
    pub reason: String,
}

impl FreezeOrder {
    /// The digest admins sign.
    pub fn digest(&self) -> [u8; 32] {
        let mut e = Encoder::new();
        e.u8(match self.action {
            FreezeAction::Freeze => 1,
            FreezeAction::Lift => 2,
        })
        .fixed(&self.policy.0)
        .u64(self.seq)
        .i64(self.issued_at_ms)
        .str(&self.reason);
        hashcore::TaggedHash::new(FREEZE_TAG).hash(&e.finish())
    }

    /// Signs the order as `admin`.
    pub fn sign(&self, admin: &str, secret: &SecretKey) -> AdminSignature {
        AdminSignature::sign(self.digest(), admin, secret)
    }
}

/// An admin's BIP-340 signature of a digest (freeze orders, governance changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminSignature {
    /// The admin's person id.
    pub admin: String,
    /// The admin's key.
    #[serde(with = "hex_array")]
    pub pubkey: [u8; 32],
    /// The signature.
    #[serde(with = "hex_array")]
    pub signature: [u8; 64],
}

impl AdminSignature {
    /// Signs `digest` as `admin`.
    pub fn sign(digest: [u8; 32], admin: &str, secret: &SecretKey) -> Self {
        let keypair = Keypair::from_secret_key(secp(), secret);
        let sig = secp().sign_schnorr_no_aux_rand(&Message::from_digest(digest), &keypair);
        AdminSignature {
            admin: admin.to_owned(),
            pubkey: keypair.x_only_public_key().0.serialize(),
            signature: sig.serialize(),
        }
    }
}

/// Checks every signature against `admins`; returns the distinct admins who signed, or the
/// first admin whose signature is bad with the problem.
pub(crate) fn admin_signers(
    admins: &Group,
    digest: [u8; 32],
    sigs: &[AdminSignature],
) -> Result<BTreeSet<String>, (String, &'static str)> {
    let mut signers = BTreeSet::new();
    for s in sigs {
        let Some(member) = admins.members.iter().find(|m| m.person == s.admin) else {
            return Err((s.admin.clone(), "not an admin"));
        };
        let key =
            XOnlyPublicKey::from_slice(&s.pubkey).map_err(|_| (s.admin.clone(), "bad key"))?;
        if key != member.pubkey {
            return Err((s.admin.clone(), "key is not the admin's key"));
        }
        let sig = schnorr::Signature::from_slice(&s.signature)
            .map_err(|_| (s.admin.clone(), "bad signature"))?;
        secp()
            .verify_schnorr(&sig, &Message::from_digest(digest), &key)
            .map_err(|_| (s.admin.clone(), "bad signature"))?;
        signers.insert(s.admin.clone());
    }
    Ok(signers)
}

/// Why a freeze order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreezeError {
    /// The order names another policy version.
    #[error("order is for policy {order}, the policy in force is {policy}")]
    PolicyMismatch {
        /// The order's policy hash.
        order: PolicyHash,
        /// The policy in force.
        policy: PolicyHash,
    },
    /// The order applies to another state (stale or replayed).
    #[error("order applies to state {order}, the state is at {state}")]
    StaleOrder {
        /// The order's sequence number.
        order: u64,
        /// The state's.
        state: u64,
    },
    /// Freezing a frozen reserve.
    #[error("already frozen")]
    AlreadyFrozen,
    /// Lifting when not frozen.
    #[error("not frozen")]
    NotFrozen,
    /// A signature is not valid.
    #[error("signature of \"{admin}\": {problem}")]
    BadSignature {
        /// The signer named.
        admin: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Not enough distinct admins signed.
    #[error("{action:?} needs {need} admin signatures, has {have}")]
    NotEnoughAdmins {
        /// The action.
        action: FreezeAction,
        /// Needed.
        need: u32,
        /// Present.
        have: usize,
    },
}

/// Whether the reserve is frozen, with a sequence number that every applied order advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FreezeState {
    /// Frozen or not.
    pub frozen: bool,
    /// Orders applied so far.
    pub seq: u64,
    /// When the last order was issued.
    pub since_ms: Option<i64>,
}

impl FreezeState {
    /// Not frozen, no order applied.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a signed order: a freeze needs one admin, a lift the admin quorum.
    ///
    /// # Errors
    /// [`FreezeError`]: order for another policy or state, freezing a frozen or lifting an
    /// unfrozen reserve, a bad signature, too few admins.
    pub fn apply(
        &self,
        policy: &Policy,
        order: &FreezeOrder,
        sigs: &[AdminSignature],
    ) -> Result<FreezeState, FreezeError> {
        if order.policy != policy.hash() {
            return Err(FreezeError::PolicyMismatch {
                order: order.policy,
                policy: policy.hash(),
            });
        }
        if order.seq != self.seq {
            return Err(FreezeError::StaleOrder {
                order: order.seq,
                state: self.seq,
            });
        }
        match (order.action, self.frozen) {
            (FreezeAction::Freeze, true) => return Err(FreezeError::AlreadyFrozen),
            (FreezeAction::Lift, false) => return Err(FreezeError::NotFrozen),
            _ => {}
        }
        let signers = admin_signers(policy.admins(), order.digest(), sigs)
            .map_err(|(admin, problem)| FreezeError::BadSignature { admin, problem })?;
        let need = match order.action {
            FreezeAction::Freeze => 1,
            FreezeAction::Lift => policy.admins().k,
        };
        if signers.len() < need as usize {
            return Err(FreezeError::NotEnoughAdmins {
                action: order.action,
                need,
                have: signers.len(),
            });
        }
        Ok(FreezeState {
            frozen: order.action == FreezeAction::Freeze,
            seq: self.seq.saturating_add(1),
            since_ms: Some(order.issued_at_ms),
        })
    }
}
