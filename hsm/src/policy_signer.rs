//! The policy signer: the gate in front of the policy key.
//!
//! Why it exists: the policy key is part of every vault's descriptor, so no spend can happen
//! without it. If the service alone decided when that key signs, a compromised service (or
//! database) could move the reserve. The policy signer therefore re-checks **by itself**, from
//! the PSBT it is asked to sign, everything the policy requires, and signs only then:
//!
//! - the request is bound to the policy version the signer holds as active
//!   ([`PolicySigner::activate`] changes it only through [`policies::governance::activate`],
//!   signed by the admin quorum);
//! - the reserve is not frozen (the signer keeps its own [`FreezeState`], changed only by signed
//!   orders, [`PolicySigner::apply_freeze`]);
//! - the approval subject is rebuilt from the PSBT itself (unsigned txid, every input outpoint and
//!   amount, every output script and amount, the fee) and must equal the subject the approvers
//!   signed, field by field: a swapped output or a raised fee is named;
//! - every input spends a script of the declared vault (derived from its descriptor at the index
//!   the PSBT states), and every output the request calls change is proven to be the vault's
//!   change script, so the amount that picks the tier cannot be understated;
//! - the fee rate is recomputed from the worst-case satisfaction weight of the vault's
//!   descriptor, not taken from the caller;
//! - [`policies::evaluate`] allows the request now: the quorum is met by approvals that verify
//!   against this exact subject, nothing has expired, and the tier's delay has elapsed.
//!
//! Two facts a caller could misstate are pinned by the signer's own records:
//! - **receive times**: the delay runs from when the quorum was reached, and the signer counts
//!   an approval as received no earlier than when the signer itself first saw it
//!   ([`PolicySigner::observe`]); an approval it never saw counts as received now;
//! - **velocity**: the spends the signer signed are added to the history the caller supplies
//!   (by request id), so leaving a spend out of the history does not lift a velocity limit.
//!
//! What it cannot check alone, and relies on the caller for: the chain tip height (height
//! expiry), the initiator's identity (separation of duties), and spends signed before its records
//! began ([`PolicySigner::record_signed`] seeds them from the ledger at start).
//!
//! Reserve proofs (BIP-127) are refused by the spend path ([`PolicySigner::sign`]) and take
//! their own path, [`PolicySigner::sign_proof`], under the policy's reserve-proof rule: no
//! spend approvals, not blocked by a freeze (auditing goes on during an incident), but the
//! signer checks the proof's shape itself with [`policies::proof::check_proof_shape`] and
//! refuses anything that could be broadcast: a real outpoint in position 0, a commitment that
//! does not match the message in the PSBT, a second output or a spendable one, any fee, any
//! sighash type but `ALL`, a message for another network, an input outside its vaults. And what
//! the proof proves needs the quorum of the policy's `proof_quorum` group (ADR 0013, amending
//! ADR 0010): the signer re-derives the form-independent [`ProofSubject`] from the PSBT alone
//! (network, commitment, the set of real outpoints, amount, request id and expiry) and counts
//! only approvals that verify against it, from distinct members of that group
//! ([`PolicySigner::check_proof_approvals`], which the BIP-322 form's signer calls too).
//!
//! The BIP-322 proof-of-funds form of the same proof (`to_sign`, ADR 0014) takes
//! [`PolicySigner::sign_proof_of_funds`] under the same rule: the shape is checked with
//! [`policies::proof_of_funds::check_proof_of_funds_psbt`] (input 0 spends `to_spend:0` of
//! exactly this message and challenge, one `OP_RETURN` output of value 0, `SIGHASH_ALL` only),
//! every input (the challenge included) must be a script of the signer's vaults, and the same
//! [`ProofSubject`] is re-derived from the `to_sign` PSBT (message commitment, sorted outpoints,
//! amount, the proof terms it carries) and checked with the same quorum.

use std::collections::BTreeMap;
use std::str::FromStr;

use bitcoin::bip32::{ChildNumber, KeySource};
use bitcoin::{Address, Amount, FeeRate, Network, OutPoint, Psbt, Script, ScriptBuf, Txid, Weight};
use miniscript::descriptor::{DescriptorPublicKey, SinglePubKey};
use miniscript::{Descriptor, ForEachKey};
use policies::approval::{Approval, ApprovalSubject, Verdict};
use policies::evaluate::{
    evaluate, evaluate_proof, Context, Decision, DenyReason, Ignored, Missing, PastSpend,
    ReceivedApproval, RequestKind, SpendRequestFacts, SpendState,
};
use policies::freeze::{AdminSignature, FreezeError, FreezeOrder, FreezeState};
use policies::governance::{activate, Activation, ChangeOrder, GovernanceError};
use policies::proof::{
    check_proof_shape, message_network, verify_proof_approval, ProofError, ProofSubject,
    ProofTerms, SubjectError, PSBT_IN_POR_COMMITMENT,
};
use policies::proof_of_funds::{
    check_proof_of_funds_psbt, proven_outpoints, psbt_message, Bip322Error,
};
use policies::{Policy, PolicyHash};

use crate::{HeldKey, HsmError, SignReport, Signer};

/// Why the policy signer refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicySignerError {
    /// The request names a vault the signer does not cosign for.
    #[error("unknown vault {0:?}: the policy signer does not cosign for it")]
    UnknownVault(String),
    /// A vault descriptor could not be parsed or used.
    #[error("vault {vault:?}: {reason}")]
    Descriptor {
        /// The vault.
        vault: String,
        /// Why.
        reason: String,
    },
    /// The vault's descriptor does not contain the policy key.
    #[error("vault {0:?}: its descriptor does not contain the policy key")]
    KeyNotInVault(String),
    /// A path of the vault without a relative timelock does not need the policy key (or a
    /// taproot key path is not NUMS): the signer does not cosign for, and never signs for, it.
    #[error("vault {vault:?} refused: {source}")]
    PolicyKeyBypass {
        /// The vault.
        vault: String,
        /// The path that spends without the policy key.
        #[source]
        source: policies::policy_key::PolicyKeyError,
    },
    /// The request is bound to another policy version than the active one.
    #[error("request is bound to policy {request}, but the active policy is {active}")]
    PolicyNotActive {
        /// The request's policy hash.
        request: PolicyHash,
        /// The active policy hash.
        active: PolicyHash,
    },
    /// The reserve is frozen.
    #[error("the reserve is frozen (order {seq}); nothing is signed until the admins lift it")]
    Frozen {
        /// The freeze state's sequence number.
        seq: u64,
    },
    /// The PSBT does not match what the approvers signed.
    #[error("the transaction differs from the approved one: {0}")]
    NotTheApprovedTransaction(String),
    /// An input cannot be checked or does not belong to the vault.
    #[error("input {input}: {reason}")]
    Input {
        /// The input index.
        input: usize,
        /// Why.
        reason: String,
    },
    /// The request claims an output is change, but it is not the vault's change script.
    #[error("output {0} is declared change but is not a change script of the vault")]
    NotChange(usize),
    /// Amounts overflow or outputs exceed inputs.
    #[error("amounts do not add up: {0}")]
    Amounts(String),
    /// The approval subject expired.
    #[error("the approval subject expired ({0})")]
    Expired(String),
    /// The policy denies the request.
    #[error("the policy denies the request: {}", join(.0))]
    Denied(Vec<DenyReason>),
    /// The quorum is not met.
    #[error("approvals missing: {}{}", describe_missing(.missing), ignored_note(.ignored))]
    MissingApprovals {
        /// What is missing.
        missing: Vec<Missing>,
        /// Approvals that did not count, with why.
        ignored: Vec<(String, String)>,
    },
    /// The quorum is met but the tier's delay has not elapsed.
    #[error(
        "the delay after the quorum has not elapsed: ready at {ready_at_ms} ms, now {now_ms} ms"
    )]
    DelayNotElapsed {
        /// When the request becomes ready (Unix ms).
        ready_at_ms: i64,
        /// Now (Unix ms).
        now_ms: i64,
    },
    /// Not a spend this signer handles (e.g. a reserve proof).
    #[error("not a spend request: {0}")]
    NotASpend(String),
    /// Asked to sign a reserve proof that is not a well-formed, unbroadcastable proof.
    #[error("not a well-formed reserve proof: {0}")]
    NotAProof(#[from] ProofError),
    /// The proof's subject (request id, expiry) cannot be derived from the PSBT.
    #[error("reserve proof subject: {0}")]
    ProofSubject(SubjectError),
    /// The proof PSBT is for another proof request than the one named.
    #[error("the psbt is for proof request {psbt:?}, not {asked:?}")]
    ProofRequestMismatch {
        /// The request id the PSBT carries.
        psbt: String,
        /// The request id the caller named.
        asked: String,
    },
    /// The reserve-proof rule is not met: too few valid approvals from the `proof_quorum`
    /// group.
    #[error("reserve proof approvals missing: {have} of {need} approvals from group {group}{}", ignored_note(.ignored))]
    ProofApprovalsMissing {
        /// Distinct members of the group whose approvals counted.
        have: usize,
        /// The group's threshold.
        need: u32,
        /// The `proof_quorum` group.
        group: String,
        /// Approvals that did not count, with why.
        ignored: Vec<(String, String)>,
    },
    /// Asked to sign a BIP-322 proof of funds that is not a well-formed `to_sign`.
    #[error("not a well-formed bip-322 proof of funds: {0}")]
    NotAProofOfFunds(#[from] Bip322Error),
    /// The policy key signed no input.
    #[error("the policy key signs no input of this transaction")]
    NothingSigned,
    /// The policy key could sign some of the inputs it must sign but not these (their PSBT
    /// maps do not name it): nothing is signed.
    #[error("the policy key cannot sign inputs {0:?}: their psbt maps do not name it")]
    Unsigned(Vec<usize>),
    /// A freeze order was refused.
    #[error("freeze order refused: {0}")]
    Freeze(#[from] FreezeError),
    /// A policy change was refused.
    #[error("policy change refused: {0}")]
    Governance(#[from] GovernanceError),
    /// A policy activation is not due yet.
    #[error("policy version {version} activates at {activates_at_ms} ms, now {now_ms} ms")]
    NotYetActive {
        /// The new version.
        version: u64,
        /// When it activates.
        activates_at_ms: i64,
        /// Now.
        now_ms: i64,
    },
    /// The underlying key failed.
    #[error(transparent)]
    Signer(#[from] HsmError),
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_missing(missing: &[Missing]) -> String {
    let mut parts = Vec::new();
    for m in missing {
        match m {
            Missing::Approvals { alternatives } => {
                let alts: Vec<String> = alternatives
                    .iter()
                    .map(|alt| {
                        alt.iter()
                            .map(|s| {
                                format!("{} more of group {:?} (k = {})", s.more, s.group, s.k)
                            })
                            .collect::<Vec<_>>()
                            .join(" and ")
                    })
                    .collect();
                parts.push(alts.join(", or "));
            }
            Missing::DelayAfterQuorum { secs } => {
                parts.push(format!("then a delay of {secs} s after the quorum"));
            }
        }
    }
    parts.join("; ")
}

fn ignored_note(ignored: &[(String, String)]) -> String {
    if ignored.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = ignored
            .iter()
            .map(|(p, why)| format!("{p}: {why}"))
            .collect();
        format!(" (not counted: {})", parts.join("; "))
    }
}

/// What the service presents with a PSBT for the policy key to sign.
#[derive(Debug, Clone)]
pub struct SpendAuthorization {
    /// The spend request's id.
    pub request_id: String,
    /// The vault spent from.
    pub vault: String,
    /// Who initiated the request (their approval never counts).
    pub initiator: String,
    /// When the request was created (Unix ms).
    pub created_ms: i64,
    /// The chain tip at creation.
    pub created_height: u32,
    /// The fee rate the request asked for, when it stated one.
    pub requested_fee_rate: Option<FeeRate>,
    /// The subject the approvers signed (decision approve).
    pub subject: ApprovalSubject,
    /// Indices of the outputs that are the vault's change.
    pub change_outputs: Vec<usize>,
    /// The approvals (and rejections) received, with the service's receive times.
    pub approvals: Vec<ReceivedApproval>,
    /// The vault's past spends as the service knows them.
    pub history: Vec<PastSpend>,
}

/// A signature the policy key made: the record for the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySignature {
    /// The signer's id.
    pub signer: String,
    /// The policy key, as in descriptors.
    pub key: String,
    /// The request.
    pub request_id: String,
    /// The vault.
    pub vault: String,
    /// The unsigned txid.
    pub txid: Txid,
    /// The inputs signed.
    pub inputs: Vec<usize>,
    /// The policy version it was signed under.
    pub policy: PolicyHash,
    /// The amount counted against the policy.
    pub amount: Amount,
    /// The tier that applied.
    pub tier: Option<String>,
    /// The people whose approvals counted.
    pub counted: Vec<String>,
    /// When (Unix ms, the signer's clock).
    pub at_ms: i64,
}

/// A reserve proof the policy key signed: the record for the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofSignature {
    /// The signer's id.
    pub signer: String,
    /// The policy key, as in descriptors.
    pub key: String,
    /// The proof request.
    pub request_id: String,
    /// The proof transaction's (unsigned) txid.
    pub txid: Txid,
    /// The inputs signed.
    pub inputs: Vec<usize>,
    /// The amount the proof would prove (the sum of the real inputs).
    pub amount: Amount,
    /// The commitment hash of the message (hex), naming what was signed.
    pub commitment: String,
    /// The policy version in force when it signed.
    pub policy: PolicyHash,
    /// The digest of the proof subject the approvals signed ([`ProofSubject::digest`]).
    pub subject: [u8; 32],
    /// The people of the `proof_quorum` group whose approvals counted.
    pub counted: Vec<String>,
    /// When (Unix ms, the signer's clock).
    pub at_ms: i64,
}

/// What the checks established (see [`PolicySigner::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The amount that picked the tier (outputs other than proven change).
    pub amount: Amount,
    /// The fee.
    pub fee: Amount,
    /// The fee rate at worst-case satisfaction weight.
    pub fee_rate: FeeRate,
    /// The tier that applied.
    pub tier: Option<String>,
    /// The people whose approvals counted.
    pub counted: Vec<String>,
}

struct VaultScripts {
    external: Descriptor<DescriptorPublicKey>,
    internal: Descriptor<DescriptorPublicKey>,
}

/// The x-only public key a descriptor key stands for (an extended key's own key).
fn x_only_of(k: &DescriptorPublicKey) -> [u8; 32] {
    match k {
        DescriptorPublicKey::Single(s) => match s.key {
            SinglePubKey::FullKey(pk) => pk.inner.x_only_public_key().0.serialize(),
            SinglePubKey::XOnly(x) => x.serialize(),
        },
        DescriptorPublicKey::XPub(x) => x.xkey.public_key.x_only_public_key().0.serialize(),
        DescriptorPublicKey::MultiXPub(x) => x.xkey.public_key.x_only_public_key().0.serialize(),
    }
}

/// The largest derivation index the signer derives (BIP-32 normal indices are below 2^31).
const MAX_INDEX: u32 = (1 << 31) - 1;

/// The gate in front of a policy key: see the [module documentation](self).
pub struct PolicySigner<S: Signer> {
    key: S,
    key_text: String,
    held: Vec<HeldKey>,
    policy: Policy,
    pending: Option<(Policy, Activation)>,
    network: Network,
    vaults: BTreeMap<String, VaultScripts>,
    freeze: FreezeState,
    seen: BTreeMap<(String, String, [u8; 64]), i64>,
    signed: BTreeMap<String, (String, PastSpend)>,
}

impl<S: Signer> std::fmt::Debug for PolicySigner<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySigner")
            .field("key", &self.key_text)
            .field("policy", &self.policy.hash())
            .field("network", &self.network)
            .field("vaults", &self.vaults.keys().collect::<Vec<_>>())
            .field("freeze", &self.freeze)
            .finish_non_exhaustive()
    }
}

impl<S: Signer> PolicySigner<S> {
    /// A policy signer for `key` under the `active` policy on `network`.
    ///
    /// # Errors
    /// [`PolicySignerError::Signer`] when the key's public keys cannot be read.
    pub fn new(key: S, active: Policy, network: Network) -> Result<Self, PolicySignerError> {
        let held = key.public_keys()?;
        let key_text = held
            .iter()
            .map(HeldKey::descriptor_key)
            .collect::<Vec<_>>()
            .join(",");
        Ok(PolicySigner {
            key,
            key_text,
            held,
            policy: active,
            pending: None,
            network,
            vaults: BTreeMap::new(),
            freeze: FreezeState::new(),
            seen: BTreeMap::new(),
            signed: BTreeMap::new(),
        })
    }

    /// The active policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The freeze state the signer holds.
    pub fn freeze_state(&self) -> FreezeState {
        self.freeze
    }

    /// Registers a vault the policy key cosigns for, from its public descriptors (receive and
    /// change keychains).
    ///
    /// Every spending path without a relative timelock must need the policy key, and a taproot
    /// internal key must be the NUMS point ([`policies::policy_key::require_policy_key`]): a
    /// vault some keys could spend from without the policy key is refused, never registered,
    /// so the signer never signs for it (nor counts it in a reserve proof).
    ///
    /// # Errors
    /// [`PolicySignerError::Descriptor`] for a descriptor that does not parse or has no wildcard;
    /// [`PolicySignerError::KeyNotInVault`] when the policy key is not in it;
    /// [`PolicySignerError::PolicyKeyBypass`] naming the keys that could spend without it.
    pub fn add_vault(
        &mut self,
        name: &str,
        external: &str,
        internal: &str,
    ) -> Result<(), PolicySignerError> {
        let parse = |text: &str| {
            let d = Descriptor::<DescriptorPublicKey>::from_str(text).map_err(|e| {
                PolicySignerError::Descriptor {
                    vault: name.to_owned(),
                    reason: e.to_string(),
                }
            })?;
            if !d.has_wildcard() || d.is_multipath() {
                return Err(PolicySignerError::Descriptor {
                    vault: name.to_owned(),
                    reason: "a single-path ranged descriptor (with /*) is needed".to_owned(),
                });
            }
            // Taproot scripts compare x-only keys; segwit v0 scripts the full key.
            let taproot = matches!(d, Descriptor::Tr(_));
            let ours = |k: &DescriptorPublicKey| {
                if taproot {
                    self.holds_x_only(k)
                } else {
                    self.holds(k)
                }
            };
            if !d.for_any_key(ours) {
                return Err(PolicySignerError::KeyNotInVault(name.to_owned()));
            }
            policies::policy_key::require_policy_key(&d, ours, |k| {
                matches!(k, DescriptorPublicKey::Single(_))
                    && policies::policy_key::is_nums(&x_only_of(k))
            })
            .map_err(|source| PolicySignerError::PolicyKeyBypass {
                vault: name.to_owned(),
                source,
            })?;
            Ok(d)
        };
        let external = parse(external)?;
        let internal = parse(internal)?;
        self.vaults
            .insert(name.to_owned(), VaultScripts { external, internal });
        Ok(())
    }

    fn holds(&self, k: &DescriptorPublicKey) -> bool {
        self.held.iter().any(|h| match (h, k) {
            (HeldKey::Single { key, .. }, DescriptorPublicKey::Single(s)) => {
                s.key == SinglePubKey::FullKey(*key)
            }
            (HeldKey::Extended { xpub, .. }, DescriptorPublicKey::XPub(x)) => x.xkey == *xpub,
            _ => false,
        })
    }

    /// Whether `k` is a key we hold, compared by x-only key (the way taproot scripts compare).
    fn holds_x_only(&self, k: &DescriptorPublicKey) -> bool {
        let x = x_only_of(k);
        self.held.iter().any(|h| match (h, k) {
            (HeldKey::Single { key, .. }, DescriptorPublicKey::Single(_)) => {
                key.inner.x_only_public_key().0.serialize() == x
            }
            (HeldKey::Extended { xpub, .. }, DescriptorPublicKey::XPub(d)) => {
                d.xkey.public_key == xpub.public_key
            }
            _ => false,
        })
    }

    /// Applies a signed freeze or lift order (one admin freezes; the admin quorum lifts).
    ///
    /// # Errors
    /// [`PolicySignerError::Freeze`] with the reason the order is refused.
    pub fn apply_freeze(
        &mut self,
        order: &FreezeOrder,
        sigs: &[AdminSignature],
    ) -> Result<FreezeState, PolicySignerError> {
        self.freeze = self.freeze.apply(&self.policy, order, sigs)?;
        Ok(self.freeze)
    }

    /// Resumes from a freeze state left by orders of earlier policy versions, which this
    /// signer (holding the active version only) cannot verify again. Orders under the active
    /// version go through [`PolicySigner::apply_freeze`].
    pub fn resume_freeze(&mut self, state: FreezeState) {
        self.freeze = state;
    }

    /// Accepts a policy change signed by the admin quorum of the active version. A tightening
    /// change applies at once; a loosening one is held until its activation time and applied by
    /// [`PolicySigner::activate_due`].
    ///
    /// # Errors
    /// [`PolicySignerError::Governance`] when the change is refused.
    pub fn activate(
        &mut self,
        new: Policy,
        order: &ChangeOrder,
        sigs: &[AdminSignature],
        now_ms: i64,
    ) -> Result<Activation, PolicySignerError> {
        let a = activate(&self.policy, &new, order, sigs, now_ms)?;
        if a.activates_at_ms <= now_ms {
            self.policy = new;
            self.pending = None;
        } else {
            self.pending = Some((new, a.clone()));
        }
        Ok(a)
    }

    /// Drops a held (not yet active) policy change: the veto.
    pub fn veto_pending(&mut self) -> Option<Activation> {
        self.pending.take().map(|(_, a)| a)
    }

    /// Applies a held loosening change whose time has come; returns its activation.
    ///
    /// # Errors
    /// [`PolicySignerError::NotYetActive`] when one is held but not due.
    pub fn activate_due(&mut self, now_ms: i64) -> Result<Option<Activation>, PolicySignerError> {
        match self.pending.take() {
            None => Ok(None),
            Some((p, a)) if a.activates_at_ms <= now_ms => {
                self.policy = p;
                Ok(Some(a))
            }
            Some((p, a)) => {
                let err = PolicySignerError::NotYetActive {
                    version: a.version,
                    activates_at_ms: a.activates_at_ms,
                    now_ms,
                };
                self.pending = Some((p, a));
                Err(err)
            }
        }
    }

    /// Records a spend signed before this signer's records began (seeded from the ledger).
    pub fn record_signed(&mut self, vault: &str, spend: PastSpend) {
        self.signed
            .insert(spend.request_id.clone(), (vault.to_owned(), spend));
    }

    /// Notes the approvals of `auth` that the signer has not seen before as received at
    /// `now_ms` (its own clock). Call as approvals arrive: the delay after the quorum runs from
    /// these times. Returns how many were new.
    pub fn observe(&mut self, auth: &SpendAuthorization, now_ms: i64) -> usize {
        let mut new = 0;
        for ra in &auth.approvals {
            let k = (
                auth.request_id.clone(),
                ra.approval.approver.clone(),
                ra.approval.signature,
            );
            if let std::collections::btree_map::Entry::Vacant(e) = self.seen.entry(k) {
                e.insert(now_ms);
                new += 1;
            }
        }
        new
    }

    /// Runs every check without signing.
    ///
    /// # Errors
    /// A [`PolicySignerError`] naming the first check that fails.
    pub fn check(
        &self,
        psbt: &Psbt,
        auth: &SpendAuthorization,
        now_ms: i64,
        tip_height: u32,
    ) -> Result<Checked, PolicySignerError> {
        if psbt_is_reserve_proof(psbt) {
            return Err(PolicySignerError::NotASpend(
                "the psbt is a proof of reserves (bip-127 commitment or bip-322 to_sign)"
                    .to_owned(),
            ));
        }
        let vault = self
            .vaults
            .get(&auth.vault)
            .ok_or_else(|| PolicySignerError::UnknownVault(auth.vault.clone()))?;
        if auth.subject.policy != self.policy.hash() {
            return Err(PolicySignerError::PolicyNotActive {
                request: auth.subject.policy,
                active: self.policy.hash(),
            });
        }
        if self.freeze.frozen {
            return Err(PolicySignerError::Frozen {
                seq: self.freeze.seq,
            });
        }
        let built = self.rebuild_subject(psbt, auth)?;
        compare_subjects(&auth.subject, &built)?;
        if now_ms >= built.expires_at_ms {
            return Err(PolicySignerError::Expired(format!(
                "expired at {} ms, now {now_ms} ms",
                built.expires_at_ms
            )));
        }
        if let Some(h) = built.expires_at_height {
            if tip_height >= h {
                return Err(PolicySignerError::Expired(format!(
                    "expired at height {h}, tip {tip_height}"
                )));
            }
        }

        let (amount, destinations) = self.amount_and_destinations(psbt, vault, auth)?;
        let weight = worst_case_weight(psbt, vault)?;
        let fee_rate = built
            .fee
            .to_sat()
            .checked_mul(1000)
            .and_then(|sat| sat.checked_div(weight.to_wu()))
            .map(FeeRate::from_sat_per_kwu)
            .ok_or_else(|| PolicySignerError::Amounts("fee rate out of range".to_owned()))?;

        let facts = SpendRequestFacts {
            id: auth.request_id.clone(),
            vault: auth.vault.clone(),
            initiator: auth.initiator.clone(),
            amount,
            destinations,
            fee: built.fee,
            fee_rate,
            requested_fee_rate: auth.requested_fee_rate,
            kind: RequestKind::Spend,
            created_ms: auth.created_ms,
            created_height: auth.created_height,
            subject: built,
        };
        let approvals: Vec<ReceivedApproval> = auth
            .approvals
            .iter()
            .map(|ra| {
                let k = (
                    auth.request_id.clone(),
                    ra.approval.approver.clone(),
                    ra.approval.signature,
                );
                let seen = self.seen.get(&k).copied().unwrap_or(now_ms);
                ReceivedApproval {
                    approval: ra.approval.clone(),
                    received_ms: ra.received_ms.max(seen),
                }
            })
            .collect();
        let history = self.history_with_own(&auth.vault, &auth.request_id, &auth.history);
        let ctx = Context {
            now_ms,
            tip_height,
            frozen: self.freeze.frozen,
        };
        let ev = evaluate(&self.policy, &facts, &history, &approvals, &ctx);
        match ev.decision {
            Decision::Deny { reasons } => Err(PolicySignerError::Denied(reasons)),
            Decision::Pending { missing } => Err(PolicySignerError::MissingApprovals {
                missing,
                ignored: ev
                    .ignored
                    .iter()
                    .map(|(p, why)| (p.clone(), ignored_text(why)))
                    .collect(),
            }),
            Decision::Allow { ready_at_ms } if ready_at_ms > now_ms => {
                Err(PolicySignerError::DelayNotElapsed {
                    ready_at_ms,
                    now_ms,
                })
            }
            Decision::Allow { .. } => Ok(Checked {
                amount,
                fee: facts.fee,
                fee_rate,
                tier: ev.tier,
                counted: ev.counted,
            }),
        }
    }

    /// Checks (see [`PolicySigner::check`]) and, when everything holds, adds the policy key's
    /// signatures to `psbt` and records the spend for velocity.
    ///
    /// # Errors
    /// A [`PolicySignerError`] naming the check that fails; then the PSBT is unchanged.
    pub fn sign(
        &mut self,
        psbt: &mut Psbt,
        auth: &SpendAuthorization,
        now_ms: i64,
        tip_height: u32,
    ) -> Result<PolicySignature, PolicySignerError> {
        let checked = self.check(psbt, auth, now_ms, tip_height)?;
        let mut copy = psbt.clone();
        let report: SignReport = self.key.sign_psbt(&mut copy)?;
        // Every input of a spend is the vault's (checked above) and needs the policy key.
        signed_all(&report, 0..psbt.inputs.len())?;
        *psbt = copy;
        self.record_signed(
            &auth.vault,
            PastSpend {
                request_id: auth.request_id.clone(),
                amount: checked.amount,
                at_ms: now_ms,
                state: SpendState::Pending,
            },
        );
        Ok(PolicySignature {
            signer: self.key.id().to_owned(),
            key: self.key_text.clone(),
            request_id: auth.request_id.clone(),
            vault: auth.vault.clone(),
            txid: psbt.unsigned_tx.compute_txid(),
            inputs: report.inputs(),
            policy: self.policy.hash(),
            amount: checked.amount,
            tier: checked.tier,
            counted: checked.counted,
            at_ms: now_ms,
        })
    }

    /// Checks that `psbt` is a well-formed reserve proof this key may sign, without signing:
    /// input 0 carries `PSBT_IN_POR_COMMITMENT` and the message there is for the signer's
    /// network; the shape holds for exactly that message ([`check_proof_shape`]: commitment
    /// outpoint in position 0 and empty, one `OP_RETURN` output, zero fee, `SIGHASH_ALL` only);
    /// every real input spends a script of a vault the signer cosigns for, at the index its
    /// key paths state. Returns the amount the proof would prove.
    ///
    /// # Errors
    /// [`PolicySignerError::NotAProof`] naming the shape violation,
    /// [`PolicySignerError::Input`] for an input outside the signer's vaults.
    pub fn check_proof(&self, psbt: &Psbt) -> Result<Amount, PolicySignerError> {
        let message = psbt
            .inputs
            .first()
            .and_then(|i| {
                i.unknown
                    .iter()
                    .find(|(k, _)| k.type_value == PSBT_IN_POR_COMMITMENT)
                    .map(|(_, v)| v.clone())
            })
            .ok_or(ProofError::MissingCommitmentField)?;
        let network = message_network(&message)?;
        if network != self.network {
            return Err(ProofError::Message(format!(
                "the message is for {network}, the signer is on {}",
                self.network
            ))
            .into());
        }
        let amount = check_proof_shape(psbt, &message)?;
        self.inputs_are_ours(psbt, 1)?;
        Ok(amount)
    }

    /// Checks that `approvals` meet the policy's reserve-proof rule for `subject`, without
    /// signing: the subject is for the signer's network and its active policy and has not
    /// expired; each approval is verified ([`verify_proof_approval`]: a key of the policy and of
    /// the person named, the subject's request, digest and BIP-340 signature); and
    /// [`evaluate_proof`] (the [`RequestKind::ReserveProof`] rule: `k` distinct members of the
    /// `proof_quorum` group, each counted once) allows it. Approvals that do not count are named
    /// in the error. The caller derives `subject` from the PSBT it is about to sign
    /// ([`ProofSubject::from_bip127_psbt`] for the BIP-127 form; the BIP-322 form derives the
    /// same subject from its `to_sign` PSBT), never from the service's word.
    ///
    /// # Errors
    /// [`PolicySignerError::NotAProof`] for another network, [`PolicySignerError::PolicyNotActive`],
    /// [`PolicySignerError::Expired`], [`PolicySignerError::Denied`] (e.g. an expiry beyond the
    /// policy's approval max age), [`PolicySignerError::ProofApprovalsMissing`] ("1 of 2
    /// approvals from group officers", with the approvals not counted and why).
    pub fn check_proof_approvals(
        &self,
        subject: &ProofSubject,
        approvals: &[Approval],
        now_ms: i64,
    ) -> Result<(), PolicySignerError> {
        self.proof_quorum(subject, approvals, now_ms).map(|_| ())
    }

    /// [`PolicySigner::check_proof_approvals`], returning the persons counted.
    fn proof_quorum(
        &self,
        subject: &ProofSubject,
        approvals: &[Approval],
        now_ms: i64,
    ) -> Result<Vec<String>, PolicySignerError> {
        if subject.network != self.network {
            return Err(ProofError::Message(format!(
                "the proof subject is for {}, the signer is on {}",
                subject.network, self.network
            ))
            .into());
        }
        if subject.policy != self.policy.hash() {
            return Err(PolicySignerError::PolicyNotActive {
                request: subject.policy,
                active: self.policy.hash(),
            });
        }
        if now_ms >= subject.expires_at_ms {
            return Err(PolicySignerError::Expired(format!(
                "the proof's approvals expired at {} ms, now {now_ms} ms",
                subject.expires_at_ms
            )));
        }
        let received: Vec<ReceivedApproval> = approvals
            .iter()
            .map(|a| ReceivedApproval {
                approval: a.clone(),
                received_ms: now_ms,
            })
            .collect();
        let ctx = Context {
            now_ms,
            tip_height: 0,
            frozen: self.freeze.frozen,
        };
        let ev = evaluate_proof(&self.policy, subject, &received, &ctx);
        match ev.decision {
            Decision::Allow { .. } => Ok(ev.counted),
            Decision::Deny { reasons } => Err(PolicySignerError::Denied(reasons)),
            Decision::Pending { .. } => {
                let group_name = self.policy.proof_quorum().to_owned();
                let group = self.policy.group(&group_name);
                let mut ignored: Vec<(String, String)> = ev
                    .ignored
                    .iter()
                    .map(|(p, why)| (p.clone(), ignored_text(why)))
                    .collect();
                for a in approvals {
                    let outside = verify_proof_approval(&self.policy, subject, a, now_ms)
                        .ok()
                        .filter(|v| !group.is_some_and(|g| g.has(&v.person)));
                    if let Some(v) = outside {
                        ignored.push((v.person, format!("not a member of group {group_name}")));
                    }
                }
                ignored.dedup();
                Err(PolicySignerError::ProofApprovalsMissing {
                    have: ev.counted.len(),
                    need: group.map_or(1, |g| g.k),
                    group: group_name,
                    ignored,
                })
            }
        }
    }

    /// Checks the proof's shape and inputs (see [`PolicySigner::check_proof`]), re-derives its
    /// subject from the PSBT alone ([`ProofSubject::from_bip127_psbt`] under the active
    /// policy), checks that it is for `request_id` and that `approvals` meet the reserve-proof
    /// rule ([`PolicySigner::check_proof_approvals`]); then adds the policy key's signatures
    /// (all-or-nothing; the PSBT is untouched on any refusal).
    ///
    /// # Errors
    /// As [`PolicySigner::check_proof`] and [`PolicySigner::check_proof_approvals`];
    /// [`PolicySignerError::ProofSubject`] when the PSBT carries no valid proof terms,
    /// [`PolicySignerError::ProofRequestMismatch`], [`PolicySignerError::NothingSigned`] when
    /// the key is in no input, [`PolicySignerError::Unsigned`] when it is missing from a real
    /// input; [`PolicySignerError::Signer`] when the key fails.
    pub fn sign_proof(
        &mut self,
        psbt: &mut Psbt,
        request_id: &str,
        approvals: &[Approval],
        now_ms: i64,
    ) -> Result<ProofSignature, PolicySignerError> {
        let amount = self.check_proof(psbt)?;
        let subject =
            ProofSubject::from_bip127_psbt(psbt, self.policy.hash()).map_err(|e| match e {
                SubjectError::Proof(p) => PolicySignerError::NotAProof(p),
                other => PolicySignerError::ProofSubject(other),
            })?;
        if subject.request_id != request_id {
            return Err(PolicySignerError::ProofRequestMismatch {
                psbt: subject.request_id,
                asked: request_id.to_owned(),
            });
        }
        let counted = self.proof_quorum(&subject, approvals, now_ms)?;
        let mut copy = psbt.clone();
        let report: SignReport = self.key.sign_psbt(&mut copy)?;
        // Every real input (all but the commitment) needs the policy key.
        signed_all(&report, 1..psbt.inputs.len())?;
        // The signatures made must pass the same shape check (SIGHASH_ALL only).
        self.check_proof(&copy)?;
        *psbt = copy;
        Ok(ProofSignature {
            signer: self.key.id().to_owned(),
            key: self.key_text.clone(),
            request_id: request_id.to_owned(),
            txid: psbt.unsigned_tx.compute_txid(),
            inputs: report.inputs(),
            amount,
            commitment: hex::encode(subject.commitment),
            policy: self.policy.hash(),
            subject: subject.digest(),
            counted,
            at_ms: now_ms,
        })
    }

    /// Checks that every input from `from` on spends a script of a vault the signer cosigns
    /// for, at the index its key paths state.
    fn inputs_are_ours(&self, psbt: &Psbt, from: usize) -> Result<(), PolicySignerError> {
        for (i, input) in psbt.inputs.iter().enumerate().skip(from) {
            let spk = input
                .witness_utxo
                .as_ref()
                .map(|u| &u.script_pubkey)
                .ok_or_else(|| PolicySignerError::Input {
                    input: i,
                    reason: "missing witness_utxo".to_owned(),
                })?;
            let idx = indices(
                input.bip32_derivation.values(),
                input.tap_key_origins.values().map(|(_, s)| s),
            );
            let ours = self.vaults.values().any(|v| {
                [&v.external, &v.internal]
                    .iter()
                    .any(|d| idx.iter().any(|&n| derives_to(d, n, spk)))
            });
            if !ours {
                return Err(PolicySignerError::Input {
                    input: i,
                    reason: "does not spend a script of a vault the policy key cosigns for"
                        .to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Checks that `psbt` is a well-formed BIP-322 proof of funds (`to_sign`) this key may
    /// sign, without checking approvals or signing: the message (`message`, or the one the
    /// PSBT carries in its proprietary field; when both are there they must agree) is for the
    /// signer's network; the shape holds for exactly that message and `challenge`
    /// ([`check_proof_of_funds_psbt`]: input 0 spends `to_spend:0` with sequence 0, version 0
    /// or 2, lock time 0, one `OP_RETURN` output of value 0, `SIGHASH_ALL` only); every input,
    /// the challenge's included, spends a script of a vault the signer cosigns for. Returns
    /// the amount the proof would prove (the sum of inputs 1..).
    ///
    /// # Errors
    /// [`PolicySignerError::NotAProofOfFunds`] naming the shape violation,
    /// [`PolicySignerError::NotAProof`] for a missing, conflicting or wrong-network message,
    /// [`PolicySignerError::Input`] for an input outside the signer's vaults.
    pub fn check_proof_of_funds(
        &self,
        psbt: &Psbt,
        message: Option<&[u8]>,
        challenge: &Script,
    ) -> Result<Amount, PolicySignerError> {
        Ok(self.proof_of_funds_shape(psbt, message, challenge)?.1)
    }

    /// The message and the amount of a well-formed `to_sign` PSBT (see
    /// [`PolicySigner::check_proof_of_funds`]).
    fn proof_of_funds_shape<'m>(
        &self,
        psbt: &'m Psbt,
        message: Option<&'m [u8]>,
        challenge: &Script,
    ) -> Result<(&'m [u8], Amount), PolicySignerError> {
        let carried = psbt_message(psbt);
        let message = match (message, carried) {
            (Some(given), Some(c)) if given != c => {
                return Err(ProofError::Message(
                    "the message given differs from the one the psbt carries".to_owned(),
                )
                .into())
            }
            (Some(m), _) | (None, Some(m)) => m,
            (None, None) => {
                return Err(ProofError::Message(
                    "no message given and the psbt carries none".to_owned(),
                )
                .into())
            }
        };
        let network = message_network(message)?;
        if network != self.network {
            return Err(ProofError::Message(format!(
                "the message is for {network}, the signer is on {}",
                self.network
            ))
            .into());
        }
        let amount = check_proof_of_funds_psbt(psbt, message, challenge)?;
        self.inputs_are_ours(psbt, 0)?;
        Ok((message, amount))
    }

    /// The proof subject re-derived from a well-formed `to_sign` PSBT alone, under the active
    /// policy: the same [`ProofSubject`] as the BIP-127 form of the same proof (message
    /// commitment, the set of outpoints of inputs 1.., the amount, the [`ProofTerms`] the PSBT
    /// carries).
    ///
    /// # Errors
    /// As [`PolicySigner::check_proof_of_funds`]; [`PolicySignerError::ProofSubject`] when the
    /// PSBT carries no valid proof terms.
    pub fn proof_of_funds_subject(
        &self,
        psbt: &Psbt,
        message: Option<&[u8]>,
        challenge: &Script,
    ) -> Result<ProofSubject, PolicySignerError> {
        let (message, amount) = self.proof_of_funds_shape(psbt, message, challenge)?;
        let subject_err = |e: SubjectError| match e {
            SubjectError::Proof(p) => PolicySignerError::NotAProof(p),
            other => PolicySignerError::ProofSubject(other),
        };
        let terms = ProofTerms::from_psbt(psbt).map_err(subject_err)?;
        ProofSubject::new(
            self.network,
            message,
            proven_outpoints(&psbt.unsigned_tx),
            amount,
            &terms,
            self.policy.hash(),
        )
        .map_err(subject_err)
    }

    /// Checks (see [`PolicySigner::check_proof_of_funds`]), re-derives the proof's subject
    /// from the `to_sign` PSBT ([`PolicySigner::proof_of_funds_subject`]), checks that it is
    /// for `request_id` and that `approvals` meet the reserve-proof rule
    /// ([`PolicySigner::check_proof_approvals`], exactly as [`PolicySigner::sign_proof`]
    /// does); then adds the policy key's signatures (all-or-nothing; the PSBT is untouched on
    /// any refusal) and checks the result again (the signatures made must be `SIGHASH_ALL`).
    ///
    /// # Errors
    /// As [`PolicySigner::proof_of_funds_subject`] and [`PolicySigner::check_proof_approvals`];
    /// [`PolicySignerError::ProofRequestMismatch`], [`PolicySignerError::NothingSigned`] when the
    /// key is in no input, [`PolicySignerError::Unsigned`] when it is missing from a real
    /// input; [`PolicySignerError::Signer`] when the key fails.
    pub fn sign_proof_of_funds(
        &mut self,
        psbt: &mut Psbt,
        message: Option<&[u8]>,
        challenge: &Script,
        request_id: &str,
        approvals: &[Approval],
        now_ms: i64,
    ) -> Result<ProofSignature, PolicySignerError> {
        let subject = self.proof_of_funds_subject(psbt, message, challenge)?;
        if subject.request_id != request_id {
            return Err(PolicySignerError::ProofRequestMismatch {
                psbt: subject.request_id,
                asked: request_id.to_owned(),
            });
        }
        let counted = self.proof_quorum(&subject, approvals, now_ms)?;
        let mut copy = psbt.clone();
        let report: SignReport = self.key.sign_psbt(&mut copy)?;
        // Every real input (after the virtual to_spend) needs the policy key.
        signed_all(&report, 1..psbt.inputs.len())?;
        self.proof_of_funds_shape(&copy, message, challenge)?;
        *psbt = copy;
        Ok(ProofSignature {
            signer: self.key.id().to_owned(),
            key: self.key_text.clone(),
            request_id: request_id.to_owned(),
            txid: psbt.unsigned_tx.compute_txid(),
            inputs: report.inputs(),
            amount: subject.amount,
            commitment: hex::encode(subject.commitment),
            policy: self.policy.hash(),
            subject: subject.digest(),
            counted,
            at_ms: now_ms,
        })
    }

    fn history_with_own(&self, vault: &str, request: &str, given: &[PastSpend]) -> Vec<PastSpend> {
        let mut by_id: BTreeMap<String, PastSpend> = given
            .iter()
            .filter(|s| s.request_id != request)
            .map(|s| (s.request_id.clone(), s.clone()))
            .collect();
        for (v, s) in self.signed.values() {
            if v == vault && s.request_id != request {
                by_id
                    .entry(s.request_id.clone())
                    .and_modify(|e| {
                        e.amount = e.amount.max(s.amount);
                        e.at_ms = e.at_ms.max(s.at_ms);
                    })
                    .or_insert_with(|| s.clone());
            }
        }
        by_id.into_values().collect()
    }

    fn rebuild_subject(
        &self,
        psbt: &Psbt,
        auth: &SpendAuthorization,
    ) -> Result<ApprovalSubject, PolicySignerError> {
        let tx = &psbt.unsigned_tx;
        if psbt.inputs.len() != tx.input.len() || psbt.outputs.len() != tx.output.len() {
            return Err(PolicySignerError::NotTheApprovedTransaction(
                "psbt maps do not match the transaction".to_owned(),
            ));
        }
        let mut inputs = Vec::with_capacity(tx.input.len());
        let mut total_in = Amount::ZERO;
        for (i, (txin, input)) in tx.input.iter().zip(&psbt.inputs).enumerate() {
            let utxo = input
                .witness_utxo
                .as_ref()
                .ok_or_else(|| PolicySignerError::Input {
                    input: i,
                    reason: "missing witness_utxo".to_owned(),
                })?;
            // Segwit v0 sighashes commit only to this input's amount, so a `witness_utxo` can
            // lie (two requests over one txid with complementary false amounts): the full
            // previous transaction is required, and must agree. Taproot commits to every
            // spent output, so a lie there only makes the signature invalid.
            match &input.non_witness_utxo {
                Some(prev) => {
                    let vout = usize::try_from(txin.previous_output.vout).unwrap_or(usize::MAX);
                    if prev.compute_txid() != txin.previous_output.txid
                        || prev.output.get(vout) != Some(utxo)
                    {
                        return Err(PolicySignerError::Input {
                            input: i,
                            reason: "non_witness_utxo does not match the outpoint or witness_utxo"
                                .to_owned(),
                        });
                    }
                }
                None if !utxo.script_pubkey.is_p2tr() => {
                    return Err(PolicySignerError::Input {
                        input: i,
                        reason: "segwit v0 input without non_witness_utxo: its amount cannot be \
                                 checked against the previous transaction"
                            .to_owned(),
                    });
                }
                None => {}
            }
            total_in = total_in
                .checked_add(utxo.value)
                .ok_or_else(|| PolicySignerError::Amounts("inputs overflow".to_owned()))?;
            inputs.push((txin.previous_output, utxo.value));
        }
        let mut outputs = Vec::with_capacity(tx.output.len());
        let mut total_out = Amount::ZERO;
        for o in &tx.output {
            total_out = total_out
                .checked_add(o.value)
                .ok_or_else(|| PolicySignerError::Amounts("outputs overflow".to_owned()))?;
            outputs.push((o.script_pubkey.clone(), o.value));
        }
        let fee = total_in
            .checked_sub(total_out)
            .ok_or_else(|| PolicySignerError::Amounts("outputs exceed inputs".to_owned()))?;
        Ok(ApprovalSubject {
            request_id: auth.request_id.clone(),
            vault: auth.vault.clone(),
            txid: tx.compute_txid(),
            inputs,
            outputs,
            fee,
            policy: self.policy.hash(),
            decision: Verdict::Approve,
            expires_at_ms: auth.subject.expires_at_ms,
            expires_at_height: auth.subject.expires_at_height,
        })
    }

    fn amount_and_destinations(
        &self,
        psbt: &Psbt,
        vault: &VaultScripts,
        auth: &SpendAuthorization,
    ) -> Result<(Amount, Vec<String>), PolicySignerError> {
        // Every input must be the vault's: derived from its descriptors at the stated index.
        for (i, input) in psbt.inputs.iter().enumerate() {
            let spk = input
                .witness_utxo
                .as_ref()
                .map(|u| &u.script_pubkey)
                .ok_or_else(|| PolicySignerError::Input {
                    input: i,
                    reason: "missing witness_utxo".to_owned(),
                })?;
            let idx = indices(
                input.bip32_derivation.values(),
                input.tap_key_origins.values().map(|(_, s)| s),
            );
            let ours = [&vault.external, &vault.internal]
                .iter()
                .any(|d| idx.iter().any(|&n| derives_to(d, n, spk)));
            if !ours {
                return Err(PolicySignerError::Input {
                    input: i,
                    reason: format!("does not spend a script of vault {:?}", auth.vault),
                });
            }
        }
        let mut amount = Amount::ZERO;
        let mut destinations = Vec::new();
        for (i, (o, meta)) in psbt
            .unsigned_tx
            .output
            .iter()
            .zip(&psbt.outputs)
            .enumerate()
        {
            if auth.change_outputs.contains(&i) {
                let idx = indices(
                    meta.bip32_derivation.values(),
                    meta.tap_key_origins.values().map(|(_, s)| s),
                );
                if !idx
                    .iter()
                    .any(|&n| derives_to(&vault.internal, n, &o.script_pubkey))
                {
                    return Err(PolicySignerError::NotChange(i));
                }
                continue;
            }
            amount = amount
                .checked_add(o.value)
                .ok_or_else(|| PolicySignerError::Amounts("outputs overflow".to_owned()))?;
            destinations.push(
                Address::from_script(&o.script_pubkey, self.network)
                    .map_or_else(|_| o.script_pubkey.to_hex_string(), |a| a.to_string()),
            );
        }
        Ok((amount, destinations))
    }
}

fn ignored_text(i: &Ignored) -> String {
    match i {
        Ignored::Invalid(e) => e.to_string(),
        Ignored::Repeated => "a repeated approval".to_owned(),
        Ignored::Initiator => "the initiator's own approval never counts".to_owned(),
    }
}

/// Whether input 0 carries a PSBT_IN_POR_COMMITMENT (BIP-127, input key type 0x09), or the
/// PSBT is a BIP-322 proof (it carries the proof message, or input 0's previous transaction
/// spends the null outpoint as `to_spend` does).
fn psbt_is_reserve_proof(psbt: &Psbt) -> bool {
    psbt_message(psbt).is_some()
        || psbt.inputs.first().is_some_and(|i| {
            i.unknown
                .keys()
                .any(|k| k.type_value == PSBT_IN_POR_COMMITMENT)
                || i.non_witness_utxo.as_ref().is_some_and(looks_like_to_spend)
        })
}

/// Whether `t` has the shape of BIP-322's `to_spend`: version 0, one input spending the null
/// outpoint, one output of 0 sat. A coinbase also spends the null outpoint, but has version 1
/// or more and pays something, so spending a mined coin is not mistaken for a proof.
fn looks_like_to_spend(t: &bitcoin::Transaction) -> bool {
    t.version == bitcoin::transaction::Version(0)
        && t.input.len() == 1
        && t.input
            .first()
            .is_some_and(|txin| txin.previous_output == OutPoint::null())
        && t.output.len() == 1
        && t.output.first().is_some_and(|o| o.value == Amount::ZERO)
}

/// The normal child indices that end the key paths of an input or output.
fn indices<'a>(
    ecdsa: impl Iterator<Item = &'a KeySource>,
    schnorr: impl Iterator<Item = &'a KeySource>,
) -> Vec<u32> {
    let mut v: Vec<u32> = ecdsa
        .chain(schnorr)
        .filter_map(|(_, path)| match path.as_ref().last() {
            Some(ChildNumber::Normal { index }) if *index <= MAX_INDEX => Some(*index),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn derives_to(d: &Descriptor<DescriptorPublicKey>, index: u32, spk: &ScriptBuf) -> bool {
    d.at_derivation_index(index)
        .is_ok_and(|def| &def.script_pubkey() == spk)
}

/// The transaction's weight once every input carries the vault's largest satisfaction.
fn worst_case_weight(psbt: &Psbt, vault: &VaultScripts) -> Result<Weight, PolicySignerError> {
    let per_input =
        vault
            .external
            .max_weight_to_satisfy()
            .map_err(|e| PolicySignerError::Descriptor {
                vault: "?".to_owned(),
                reason: format!("cannot bound its satisfaction weight: {e}"),
            })?;
    let n = u64::try_from(psbt.unsigned_tx.input.len()).unwrap_or(u64::MAX);
    let witness = per_input
        .checked_mul(n)
        .ok_or_else(|| PolicySignerError::Amounts("weight overflow".to_owned()))?;
    // The unsigned transaction serializes without the segwit marker and flag (2 WU).
    Ok(psbt.unsigned_tx.weight() + witness + Weight::from_wu(2))
}

fn compare_subjects(
    approved: &ApprovalSubject,
    built: &ApprovalSubject,
) -> Result<(), PolicySignerError> {
    let differ = |what: String| Err(PolicySignerError::NotTheApprovedTransaction(what));
    if approved.request_id != built.request_id || approved.vault != built.vault {
        return differ("the subject names another request or vault".to_owned());
    }
    if approved.decision != Verdict::Approve {
        return differ("the subject is a rejection".to_owned());
    }
    if approved.fee != built.fee {
        return differ(format!(
            "fee {} sat, approved {} sat",
            built.fee.to_sat(),
            approved.fee.to_sat()
        ));
    }
    if approved.inputs.len() != built.inputs.len() {
        return differ(format!(
            "{} inputs, {} approved",
            built.inputs.len(),
            approved.inputs.len()
        ));
    }
    for (i, (a, b)) in approved.inputs.iter().zip(&built.inputs).enumerate() {
        if a != b {
            return differ(format!(
                "input {i} spends {} ({} sat), approved {} ({} sat)",
                b.0,
                b.1.to_sat(),
                a.0,
                a.1.to_sat()
            ));
        }
    }
    if approved.outputs.len() != built.outputs.len() {
        return differ(format!(
            "{} outputs, {} approved",
            built.outputs.len(),
            approved.outputs.len()
        ));
    }
    for (i, (a, b)) in approved.outputs.iter().zip(&built.outputs).enumerate() {
        if a.0 != b.0 {
            return differ(format!("output {i} pays another script than approved"));
        }
        if a.1 != b.1 {
            return differ(format!(
                "output {i} pays {} sat, approved {} sat",
                b.1.to_sat(),
                a.1.to_sat()
            ));
        }
    }
    if approved.txid != built.txid {
        return differ(format!(
            "txid {} (version, locktime or sequences changed), approved {}",
            built.txid, approved.txid
        ));
    }
    Ok(())
}

/// Whether `report` covers every input in `needed`.
///
/// # Errors
/// [`PolicySignerError::NothingSigned`] when it signed nothing,
/// [`PolicySignerError::Unsigned`] naming the inputs it missed.
fn signed_all(
    report: &SignReport,
    needed: std::ops::Range<usize>,
) -> Result<(), PolicySignerError> {
    if report.is_empty() {
        return Err(PolicySignerError::NothingSigned);
    }
    let done = report.inputs();
    let missing: Vec<usize> = needed.filter(|i| !done.contains(i)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PolicySignerError::Unsigned(missing))
    }
}

#[cfg(test)]
mod to_spend_shape_tests {
    use super::looks_like_to_spend;
    use bitcoin::absolute::LockTime;
    use bitcoin::transaction::Version;
    use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};

    #[test]
    fn a_coinbase_is_not_a_to_spend_and_a_to_spend_is() {
        let challenge =
            ScriptBuf::from_hex("0014c7f1d1e5a3e0b4a8c2f1d0e9b8a7c6d5e4f3a2b1").unwrap();
        let to_spend = policies::proof_of_funds::to_spend(b"hello", &challenge);
        assert!(looks_like_to_spend(&to_spend));
        let coinbase = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig: ScriptBuf::from_bytes(vec![0x01, 0x65]),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(5_000_000_000),
                script_pubkey: challenge.clone(),
            }],
        };
        assert!(!looks_like_to_spend(&coinbase));
        // Even a version-0 "coinbase" that pays something is not a to_spend.
        let mut v0 = coinbase.clone();
        v0.version = Version(0);
        assert!(!looks_like_to_spend(&v0));
    }
}
