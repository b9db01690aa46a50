//! The signer's core: [`hsm::PolicySigner`] fed only from the signer's own state.
//!
//! Every fact the gate decides on comes from the state log ([`crate::state`]), never from the
//! caller: the active policy (genesis, then changes signed by the admin quorum and verified
//! here with [`policies::governance::activate`]; a loosening one is activated by the signer's
//! own clock when its delay has elapsed), the freeze ([`FreezeState::apply`]: one admin
//! freezes, the quorum lifts, an order applies to one state only), the first-seen times of
//! approvals (an approval it never saw counts as received now), its own velocity history (the
//! spends it signed; the caller's history can only add to it), the vaults it cosigns for and
//! the last checkpoint it signed. Replay at start runs every record through the same verifying
//! functions as the live operation, so a record that was edited in, or an order whose
//! signatures do not verify, is refused by name.
//!
//! Every operation records before it releases: the signed PSBT, the note or the accepted order
//! is returned only after its record is durable. When an append fails the core stops
//! ([`CoreError::Stopped`]) until restarted (its memory may be ahead of its log).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bitcoin::{Amount, Network, Psbt, ScriptBuf, Txid};
use custody::ledger::{AnyCheckpointSigner, Checkpoint, VerifierKey};
use hashcore::merkle::rfc9162::ConsistencyProof;
use hashcore::Digest;
use hsm::policy_signer::{PolicySignerError, SpendAuthorization};
use hsm::PolicySigner;
use policies::approval::{ApprovalSubject, Verdict};
use policies::evaluate::{PastSpend, ReceivedApproval, SpendState};
use policies::freeze::{AdminSignature, FreezeOrder, FreezeState};
use policies::governance::{verify_admin_signatures, Activation, ChangeOrder, GovernanceError};
use policies::{Approval, Policy, PolicyHash};
use serde::{Deserialize, Serialize};

use crate::holder::PolicyKey;
use crate::state::{Head, Record, StateError, StateStore};

/// The signer's clock.
pub trait Clock: Send + Sync {
    /// Now, Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock tests set by hand.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock at `ms`.
    pub fn new(ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(ms)))
    }

    /// Sets it.
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    /// Moves it forward.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why the core refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The policy gate refused.
    #[error(transparent)]
    Refused(#[from] PolicySignerError),
    /// The state could not be read, verified or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A record of the log is not valid under the rules it claims (replay).
    #[error("state record {seq} ({kind}) refused at replay: {reason}")]
    BadRecord {
        /// Its seq.
        seq: u64,
        /// Its kind.
        kind: String,
        /// Why.
        reason: String,
    },
    /// The key holder could not be opened (token, PIN, keystore, passphrase).
    #[error("key holder: {0}")]
    Holder(String),
    /// The key holder is not the one the genesis record names.
    #[error("the key holder does not match genesis: {0}")]
    WrongHolder(String),
    /// A policy change or veto was refused.
    #[error("policy change refused: {0}")]
    Governance(#[from] GovernanceError),
    /// A veto does not apply.
    #[error("veto refused: {0}")]
    Veto(String),
    /// A vault cannot be registered.
    #[error("vault {name:?}: {reason}")]
    Vault {
        /// The vault.
        name: String,
        /// Why.
        reason: String,
    },
    /// A checkpoint was refused.
    #[error("checkpoint refused: {0}")]
    Checkpoint(String),
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An append failed earlier: nothing more is done until a restart replays the log.
    #[error("the signer stopped after a failed state write; restart it")]
    Stopped,
}

impl CoreError {
    /// A short machine code for the protocol.
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::Refused(PolicySignerError::Frozen { .. }) => "frozen",
            CoreError::Refused(PolicySignerError::Freeze(_)) => "freeze_refused",
            CoreError::Refused(PolicySignerError::Governance(_)) | CoreError::Governance(_) => {
                "governance_refused"
            }
            CoreError::Refused(PolicySignerError::Signer(_)) => "key_failed",
            CoreError::Refused(_) => "refused",
            CoreError::State(StateError::Rollback(_)) => "rollback",
            CoreError::State(_) => "state",
            CoreError::BadRecord { .. } => "bad_record",
            CoreError::WrongHolder(_) => "wrong_holder",
            CoreError::Holder(_) => "holder",
            CoreError::Veto(_) => "veto_refused",
            CoreError::Vault { .. } => "vault_refused",
            CoreError::Checkpoint(_) => "checkpoint_refused",
            CoreError::BadRequest(_) => "bad_request",
            CoreError::Stopped => "stopped",
        }
    }
}

/// The genesis record: what the key ceremony fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// The network (`regtest`, `bitcoin`, ...).
    pub network: String,
    /// The first policy document (TOML); the admins are its `[admins]`.
    pub policy_toml: String,
    /// Its canonical hash.
    pub policy_hash: PolicyHash,
    /// The policy key, as in descriptors.
    pub policy_key: String,
    /// The ledger checkpoint key (verifier key text, its name is the origin).
    pub ledger_key: String,
    /// The ledger's origin.
    pub ledger_origin: String,
}

/// A signed spend (velocity history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendSigned {
    /// The vault.
    pub vault: String,
    /// The request.
    pub request_id: String,
    /// The unsigned txid.
    pub txid: Txid,
    /// The amount counted against the policy (sat).
    pub amount_sat: u64,
    /// The policy in force.
    pub policy: PolicyHash,
    /// The inputs signed.
    pub inputs: Vec<usize>,
    /// The tier that applied.
    pub tier: Option<String>,
    /// The people whose approvals counted.
    pub counted: Vec<String>,
    /// Approvals the signer first saw with this request (saved as one record with the spend;
    /// their first-seen time is the record's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_seen: Vec<Approval>,
}

/// A signed reserve proof or proof of funds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofSigned {
    /// `bip127` or `bip322`.
    pub form: String,
    /// The proof request.
    pub request_id: String,
    /// The proof transaction's txid.
    pub txid: Txid,
    /// The amount proven (sat).
    pub amount_sat: u64,
    /// The message commitment (hex).
    pub commitment: String,
    /// The policy in force.
    pub policy: PolicyHash,
    /// The people whose approvals counted.
    pub counted: Vec<String>,
}

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSigned {
    /// The tree size.
    pub size: u64,
    /// The root (hex).
    pub root: String,
    /// The checkpoint's time (the signer's clock).
    pub time_ms: i64,
    /// The consistency proof from the previous signed checkpoint (hex digests).
    pub proof: Vec<String>,
    /// The signed note.
    pub note: String,
}

/// One body of the log, by kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// The key ceremony's facts.
    Genesis(Genesis),
    /// A vault the policy key cosigns for.
    VaultRegistered {
        /// Its name.
        name: String,
        /// The receive descriptor.
        external: String,
        /// The change descriptor.
        internal: String,
    },
    /// A policy change the admin quorum signed, accepted (tightening: active at once).
    PolicyAccepted {
        /// The new document (TOML).
        policy_toml: String,
        /// The signed order.
        order: ChangeOrder,
        /// The admins' signatures of the order.
        signatures: Vec<AdminSignature>,
        /// What was accepted.
        activation: Activation,
    },
    /// A held loosening change activated by the signer's clock.
    PolicyActivated {
        /// Its hash.
        policy: PolicyHash,
        /// Its version.
        version: u64,
    },
    /// A held change vetoed by an admin.
    PolicyVetoed {
        /// The change order vetoed.
        order: ChangeOrder,
        /// The admin's signature of its veto digest.
        signature: AdminSignature,
    },
    /// A freeze or lift order applied.
    Freeze {
        /// The order.
        order: FreezeOrder,
        /// The admins' signatures.
        signatures: Vec<AdminSignature>,
    },
    /// Approvals the signer saw for the first time (at the record's time).
    FirstSeen {
        /// The request.
        request_id: String,
        /// The approvals.
        approvals: Vec<Approval>,
    },
    /// A spend signed.
    SpendSigned(SpendSigned),
    /// A proof signed.
    ProofSigned(ProofSigned),
    /// A checkpoint signed.
    CheckpointSigned(CheckpointSigned),
}

impl Event {
    fn to_parts(&self) -> Result<(String, serde_json::Value), CoreError> {
        let v = serde_json::to_value(self).map_err(|e| CoreError::BadRequest(e.to_string()))?;
        let serde_json::Value::Object(mut m) = v else {
            return Err(CoreError::BadRequest("event is not an object".to_owned()));
        };
        let kind = m
            .remove("kind")
            .and_then(|k| k.as_str().map(str::to_owned))
            .unwrap_or_default();
        let body = m.remove("body").unwrap_or(serde_json::Value::Null);
        Ok((kind, body))
    }

    fn from_record(r: &Record) -> Result<Event, CoreError> {
        let mut m = serde_json::Map::new();
        m.insert("kind".to_owned(), serde_json::Value::String(r.kind.clone()));
        m.insert("body".to_owned(), r.body.clone());
        serde_json::from_value(serde_json::Value::Object(m)).map_err(|e| CoreError::BadRecord {
            seq: r.seq,
            kind: r.kind.clone(),
            reason: format!("body does not parse: {e}"),
        })
    }
}

/// A change held until its activation time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingVersion {
    /// Its hash.
    pub policy: PolicyHash,
    /// Its version.
    pub version: u64,
    /// When it activates (the signer's clock).
    pub activates_at_ms: i64,
    /// What loosens.
    pub loosened: Vec<String>,
    /// The order.
    pub order: ChangeOrder,
}

/// The last checkpoint signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCheckpoint {
    /// Its size.
    pub size: u64,
    /// Its root (hex).
    pub root: String,
    /// Its time.
    pub time_ms: i64,
    /// Its note.
    pub note: String,
}

/// What [`SignerCore::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The head of the state log.
    pub head: Head,
    /// The network.
    pub network: String,
    /// The policy key, as in descriptors.
    pub policy_key: String,
    /// The checkpoint verifier key.
    pub ledger_key: String,
    /// The active policy's hash.
    pub active_policy: PolicyHash,
    /// Its version.
    pub active_version: u64,
    /// A held change, if any.
    pub pending: Option<PendingVersion>,
    /// The freeze state.
    pub freeze: FreezeState,
    /// The vaults it cosigns for.
    pub vaults: Vec<String>,
    /// The last checkpoint signed.
    pub last_checkpoint: Option<LastCheckpoint>,
    /// Spends signed so far.
    pub spends_signed: u64,
}

/// What a signed spend returns besides the PSBT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendReceipt {
    /// The record.
    pub spend: SpendSigned,
    /// The seq of its record.
    pub seq: u64,
    /// The signer's time of signing.
    pub at_ms: i64,
}

/// What a signed proof returns besides the PSBT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofReceipt {
    /// The record.
    pub proof: ProofSigned,
    /// The seq of its record.
    pub seq: u64,
}

/// The core.
pub struct SignerCore {
    inner: PolicySigner<PolicyKey>,
    ledger: Box<dyn AnyCheckpointSigner + Send>,
    state: Box<dyn StateStore>,
    clock: Arc<dyn Clock>,
    genesis: Genesis,
    network: Network,
    pending: Option<PendingVersion>,
    vaults: BTreeMap<String, (String, String)>,
    seen: BTreeMap<(String, String, [u8; 64]), i64>,
    last_checkpoint: Option<(LastCheckpoint, Digest)>,
    spends: u64,
    stopped: bool,
}

impl std::fmt::Debug for SignerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerCore")
            .field("inner", &self.inner)
            .field("vaults", &self.vaults.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn descriptor_key_text(key: &PolicyKey) -> Result<String, CoreError> {
    use hsm::Signer;
    let held = key
        .public_keys()
        .map_err(|e| CoreError::Refused(PolicySignerError::Signer(e)))?;
    Ok(held
        .iter()
        .map(hsm::HeldKey::descriptor_key)
        .collect::<Vec<_>>()
        .join(","))
}

fn dummy_subject(request_id: &str) -> ApprovalSubject {
    ApprovalSubject {
        request_id: request_id.to_owned(),
        vault: String::new(),
        txid: Txid::from_raw_hash(bitcoin::hashes::Hash::all_zeros()),
        inputs: Vec::new(),
        outputs: Vec::new(),
        fee: Amount::ZERO,
        policy: PolicyHash([0; 32]),
        decision: Verdict::Approve,
        expires_at_ms: 0,
        expires_at_height: None,
    }
}

fn parse_digest(s: &str) -> Option<Digest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

impl SignerCore {
    /// Writes the genesis record into an empty `state` and returns the core.
    ///
    /// # Errors
    /// [`CoreError::BadRequest`] for a policy that does not parse or a bad origin,
    /// [`CoreError::State`] when the record cannot be written.
    pub fn genesis(
        mut state: Box<dyn StateStore>,
        key: PolicyKey,
        ledger: Box<dyn AnyCheckpointSigner + Send>,
        clock: Arc<dyn Clock>,
        network: Network,
        policy_toml: &str,
        ledger_origin: &str,
    ) -> Result<Self, CoreError> {
        if !state.records().is_empty() {
            return Err(CoreError::BadRequest("the state is not empty".to_owned()));
        }
        let policy =
            Policy::from_toml(policy_toml).map_err(|e| CoreError::BadRequest(e.to_string()))?;
        let ledger_key = VerifierKey::of_signer(ledger_origin, ledger.as_ref())
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        let g = Genesis {
            network: network.to_string(),
            policy_toml: policy_toml.to_owned(),
            policy_hash: policy.hash(),
            policy_key: descriptor_key_text(&key)?,
            ledger_key: ledger_key.to_string(),
            ledger_origin: ledger_origin.to_owned(),
        };
        let (kind, body) = Event::Genesis(g).to_parts()?;
        state.append(clock.now_ms(), &kind, body)?;
        Self::replay(state, key, ledger, clock)
    }

    /// Builds the core from a verified `state` by replaying every record through the live
    /// checks.
    ///
    /// # Errors
    /// [`CoreError::BadRecord`] naming the first record that does not hold,
    /// [`CoreError::WrongHolder`] when the keys are not those of genesis.
    pub fn replay(
        state: Box<dyn StateStore>,
        key: PolicyKey,
        ledger: Box<dyn AnyCheckpointSigner + Send>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CoreError> {
        let records = state.records();
        let first = records.first().ok_or_else(|| CoreError::BadRecord {
            seq: 0,
            kind: "genesis".to_owned(),
            reason: "the log has no genesis record".to_owned(),
        })?;
        let bad0 = |reason: String| CoreError::BadRecord {
            seq: 0,
            kind: first.kind.clone(),
            reason,
        };
        let Event::Genesis(genesis) = Event::from_record(first)? else {
            return Err(bad0("the first record is not genesis".to_owned()));
        };
        let network: Network = genesis
            .network
            .parse()
            .map_err(|e| bad0(format!("network: {e}")))?;
        let policy =
            Policy::from_toml(&genesis.policy_toml).map_err(|e| bad0(format!("policy: {e}")))?;
        if policy.hash() != genesis.policy_hash {
            return Err(bad0(
                "the policy hash does not match its document".to_owned(),
            ));
        }
        let key_text = descriptor_key_text(&key)?;
        if key_text != genesis.policy_key {
            return Err(CoreError::WrongHolder(format!(
                "policy key {key_text}, genesis names {}",
                genesis.policy_key
            )));
        }
        let ledger_key = VerifierKey::of_signer(genesis.ledger_origin.clone(), ledger.as_ref())
            .map_err(|e| bad0(e.to_string()))?;
        if ledger_key.to_string() != genesis.ledger_key {
            return Err(CoreError::WrongHolder(format!(
                "checkpoint key {ledger_key}, genesis names {}",
                genesis.ledger_key
            )));
        }
        let inner = PolicySigner::new(key, policy, network)?;
        let rest: Vec<Record> = records.iter().skip(1).cloned().collect();
        let mut core = SignerCore {
            inner,
            ledger,
            state,
            clock,
            genesis,
            network,
            pending: None,
            vaults: BTreeMap::new(),
            seen: BTreeMap::new(),
            last_checkpoint: None,
            spends: 0,
            stopped: false,
        };
        for r in &rest {
            let ev = Event::from_record(r)?;
            core.apply(&ev, r.time_ms)
                .map_err(|e| CoreError::BadRecord {
                    seq: r.seq,
                    kind: r.kind.clone(),
                    reason: e.to_string(),
                })?;
        }
        core.state.confirm()?;
        Ok(core)
    }

    /// Applies one event at `at_ms`, verifying it as the live operation does.
    fn apply(&mut self, ev: &Event, at_ms: i64) -> Result<(), CoreError> {
        match ev {
            Event::Genesis(_) => Err(CoreError::BadRequest("a second genesis".to_owned())),
            Event::VaultRegistered {
                name,
                external,
                internal,
            } => {
                if self.vaults.contains_key(name) {
                    return Err(CoreError::Vault {
                        name: name.clone(),
                        reason: "registered twice".to_owned(),
                    });
                }
                self.inner.add_vault(name, external, internal)?;
                self.vaults
                    .insert(name.clone(), (external.clone(), internal.clone()));
                Ok(())
            }
            Event::PolicyAccepted {
                policy_toml,
                order,
                signatures,
                activation,
            } => {
                let new = Policy::from_toml(policy_toml)
                    .map_err(|e| CoreError::BadRequest(format!("policy: {e}")))?;
                let a = self.inner.activate(new, order, signatures, at_ms)?;
                if &a != activation {
                    return Err(CoreError::BadRequest(
                        "the recorded activation differs from the verified one".to_owned(),
                    ));
                }
                self.pending = (a.activates_at_ms > at_ms).then(|| PendingVersion {
                    policy: a.policy,
                    version: a.version,
                    activates_at_ms: a.activates_at_ms,
                    loosened: a.loosened.clone(),
                    order: order.clone(),
                });
                Ok(())
            }
            Event::PolicyActivated { policy, version } => match self.inner.activate_due(at_ms)? {
                Some(a) if a.policy == *policy && a.version == *version => {
                    self.pending = None;
                    Ok(())
                }
                _ => Err(CoreError::BadRequest(
                    "no held change of this hash was due".to_owned(),
                )),
            },
            Event::PolicyVetoed { order, signature } => {
                self.check_veto(order, signature, at_ms)?;
                self.inner.veto_pending();
                self.pending = None;
                Ok(())
            }
            Event::Freeze { order, signatures } => {
                self.inner.apply_freeze(order, signatures)?;
                Ok(())
            }
            Event::FirstSeen {
                request_id,
                approvals,
            } => {
                self.note_seen(request_id, approvals, at_ms);
                Ok(())
            }
            Event::SpendSigned(s) => {
                if !self.vaults.contains_key(&s.vault) {
                    return Err(CoreError::BadRequest(format!(
                        "spend of unregistered vault {:?}",
                        s.vault
                    )));
                }
                if !s.first_seen.is_empty() {
                    self.note_seen(&s.request_id, &s.first_seen, at_ms);
                }
                self.inner.record_signed(
                    &s.vault,
                    PastSpend {
                        request_id: s.request_id.clone(),
                        amount: Amount::from_sat(s.amount_sat),
                        at_ms,
                        state: SpendState::Pending,
                    },
                );
                self.spends = self.spends.saturating_add(1);
                Ok(())
            }
            Event::ProofSigned(_) => Ok(()),
            Event::CheckpointSigned(c) => {
                let root = parse_digest(&c.root)
                    .ok_or_else(|| CoreError::Checkpoint("bad root".to_owned()))?;
                let proof = c
                    .proof
                    .iter()
                    .map(|h| {
                        parse_digest(h).ok_or_else(|| CoreError::Checkpoint("bad proof".to_owned()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.check_checkpoint(c.size, &root, &proof)?;
                let cp =
                    Checkpoint::new(self.genesis.ledger_origin.clone(), c.size, root, c.time_ms)
                        .map_err(|e| CoreError::Checkpoint(e.to_string()))?;
                let vk = VerifierKey::parse(&self.genesis.ledger_key)
                    .map_err(|e| CoreError::Checkpoint(e.to_string()))?;
                let verified = vk
                    .verify(&c.note)
                    .map_err(|e| CoreError::Checkpoint(format!("its note: {e}")))?;
                if verified != cp {
                    return Err(CoreError::Checkpoint(
                        "its note is for another checkpoint".to_owned(),
                    ));
                }
                self.last_checkpoint = Some((
                    LastCheckpoint {
                        size: c.size,
                        root: c.root.clone(),
                        time_ms: c.time_ms,
                        note: c.note.clone(),
                    },
                    root,
                ));
                Ok(())
            }
        }
    }

    fn note_seen(&mut self, request_id: &str, approvals: &[Approval], at_ms: i64) -> usize {
        let mut auth = blank_auth(request_id);
        auth.approvals = approvals
            .iter()
            .map(|a| ReceivedApproval {
                approval: a.clone(),
                received_ms: at_ms,
            })
            .collect();
        self.inner.observe(&auth, at_ms);
        let mut new = 0;
        for a in approvals {
            let k = (request_id.to_owned(), a.approver.clone(), a.signature);
            if let std::collections::btree_map::Entry::Vacant(e) = self.seen.entry(k) {
                e.insert(at_ms);
                new += 1;
            }
        }
        new
    }

    fn check_veto(
        &self,
        order: &ChangeOrder,
        signature: &AdminSignature,
        _at_ms: i64,
    ) -> Result<(), CoreError> {
        let Some(p) = &self.pending else {
            return Err(CoreError::Veto("no change is held".to_owned()));
        };
        if &p.order != order {
            return Err(CoreError::Veto(
                "the order is not the held change's".to_owned(),
            ));
        }
        verify_admin_signatures(
            self.inner.policy(),
            order.veto_digest(),
            std::slice::from_ref(signature),
        )?;
        Ok(())
    }

    fn check_checkpoint(
        &self,
        size: u64,
        root: &Digest,
        proof: &[Digest],
    ) -> Result<(), CoreError> {
        let Some((last, last_root)) = &self.last_checkpoint else {
            return Ok(());
        };
        if size < last.size {
            return Err(CoreError::Checkpoint(format!(
                "size {size} is below the last signed checkpoint's {}",
                last.size
            )));
        }
        if size == last.size {
            return if root == last_root {
                Ok(())
            } else {
                Err(CoreError::Checkpoint(format!(
                    "size {size} was signed with another root: the log was rewritten"
                )))
            };
        }
        if last.size == 0 {
            return Ok(());
        }
        ConsistencyProof {
            old_size: last.size,
            new_size: size,
            path: proof.to_vec(),
        }
        .verify(last_root, root)
        .map_err(|e| {
            CoreError::Checkpoint(format!(
                "the consistency proof from size {} to {size} does not verify ({e}): the \
                 history was rewritten",
                last.size
            ))
        })
    }

    /// Now on the signer's clock, never before its last record.
    fn now(&self) -> i64 {
        let last = self.state.records().last().map_or(i64::MIN, |r| r.time_ms);
        self.clock.now_ms().max(last)
    }

    fn record(&mut self, ev: &Event, at_ms: i64) -> Result<Record, CoreError> {
        let (kind, body) = ev.to_parts()?;
        match self.state.append(at_ms, &kind, body) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.stopped = true;
                Err(e.into())
            }
        }
    }

    fn begin(&mut self) -> Result<i64, CoreError> {
        if self.stopped {
            return Err(CoreError::Stopped);
        }
        let now = self.now();
        if let Some(p) = &self.pending {
            if p.activates_at_ms <= now {
                let (policy, version) = (p.policy, p.version);
                if let Ok(Some(_)) = self.inner.activate_due(now) {
                    self.pending = None;
                    self.record(&Event::PolicyActivated { policy, version }, now)?;
                }
            }
        }
        Ok(now)
    }

    /// Registers a vault the policy key cosigns for. The same name with the same descriptors
    /// again is a no-op; with others it is refused.
    ///
    /// # Errors
    /// [`CoreError::Refused`] from [`PolicySigner::add_vault`], [`CoreError::Vault`].
    pub fn register_vault(
        &mut self,
        name: &str,
        external: &str,
        internal: &str,
    ) -> Result<(), CoreError> {
        let now = self.begin()?;
        if let Some((e, i)) = self.vaults.get(name) {
            return if e == external && i == internal {
                Ok(())
            } else {
                Err(CoreError::Vault {
                    name: name.to_owned(),
                    reason: "already registered with other descriptors".to_owned(),
                })
            };
        }
        self.inner.add_vault(name, external, internal)?;
        self.vaults
            .insert(name.to_owned(), (external.to_owned(), internal.to_owned()));
        self.record(
            &Event::VaultRegistered {
                name: name.to_owned(),
                external: external.to_owned(),
                internal: internal.to_owned(),
            },
            now,
        )?;
        Ok(())
    }

    /// Records when the signer first saw each approval of `auth` whose signature verifies
    /// under a key the active policy gives its approver (others are not recorded: the
    /// service cannot grow the log with junk). Returns how many were new.
    ///
    /// # Errors
    /// [`CoreError::State`] when the record cannot be written.
    pub fn observe(&mut self, auth: &SpendAuthorization) -> Result<usize, CoreError> {
        let now = self.begin()?;
        self.observe_at(auth, now)
    }

    fn observe_at(&mut self, auth: &SpendAuthorization, now: i64) -> Result<usize, CoreError> {
        let fresh = self.fresh_approvals(auth);
        if fresh.is_empty() {
            return Ok(0);
        }
        let n = self.note_seen(&auth.request_id, &fresh, now);
        self.record(
            &Event::FirstSeen {
                request_id: auth.request_id.clone(),
                approvals: fresh,
            },
            now,
        )?;
        Ok(n)
    }

    /// The approvals of `auth` not seen before whose signature verifies under the key the
    /// active policy gives the approver.
    fn fresh_approvals(&self, auth: &SpendAuthorization) -> Vec<Approval> {
        let policy = self.inner.policy();
        let mut fresh: Vec<Approval> = Vec::new();
        for a in auth.approvals.iter().map(|ra| &ra.approval) {
            let k = (auth.request_id.clone(), a.approver.clone(), a.signature);
            if a.request_id == auth.request_id
                && !self.seen.contains_key(&k)
                && !fresh
                    .iter()
                    .any(|f| f.approver == a.approver && f.signature == a.signature)
                && signature_verifies(policy, a)
            {
                fresh.push(a.clone());
            }
        }
        fresh
    }

    /// Checks the spend against the signer's own facts and signs it with the policy key:
    /// approvals count from when the signer first saw them, its own signed spends count for
    /// velocity whatever `auth.history` says. The signed PSBT is returned only once the
    /// `spend_signed` record is durable.
    ///
    /// # Errors
    /// [`CoreError::Refused`] naming the check that fails, [`CoreError::BadRequest`] when
    /// `vault` is not the authorization's, [`CoreError::State`].
    pub fn sign_spend(
        &mut self,
        vault: &str,
        psbt: &Psbt,
        auth: &SpendAuthorization,
        tip_height: u32,
    ) -> Result<(Psbt, SpendReceipt), CoreError> {
        let now = self.begin()?;
        if auth.vault != vault {
            return Err(CoreError::BadRequest(format!(
                "the authorization is for vault {:?}, not {vault:?}",
                auth.vault
            )));
        }
        // Approvals seen for the first time now are recorded with the spend (one record, one
        // fsync and one token update), or alone when the spend is refused.
        let fresh = self.fresh_approvals(auth);
        self.note_seen(&auth.request_id, &fresh, now);
        let mut own = auth.clone();
        for ra in &mut own.approvals {
            let k = (
                auth.request_id.clone(),
                ra.approval.approver.clone(),
                ra.approval.signature,
            );
            ra.received_ms = self.seen.get(&k).copied().unwrap_or(now);
        }
        let mut out = psbt.clone();
        let sig = match self.inner.sign(&mut out, &own, now, tip_height) {
            Ok(sig) => sig,
            Err(e) => {
                if !fresh.is_empty() {
                    self.record(
                        &Event::FirstSeen {
                            request_id: auth.request_id.clone(),
                            approvals: fresh,
                        },
                        now,
                    )?;
                }
                return Err(e.into());
            }
        };
        let spend = SpendSigned {
            vault: vault.to_owned(),
            request_id: sig.request_id,
            txid: sig.txid,
            amount_sat: sig.amount.to_sat(),
            policy: sig.policy,
            inputs: sig.inputs,
            tier: sig.tier,
            counted: sig.counted,
            first_seen: fresh,
        };
        let r = self.record(&Event::SpendSigned(spend.clone()), now)?;
        self.spends = self.spends.saturating_add(1);
        Ok((
            out,
            SpendReceipt {
                spend,
                seq: r.seq,
                at_ms: now,
            },
        ))
    }

    /// Signs a BIP-127 reserve proof ([`PolicySigner::sign_proof`]), recorded.
    ///
    /// # Errors
    /// [`CoreError::Refused`], [`CoreError::State`].
    pub fn sign_proof(
        &mut self,
        psbt: &Psbt,
        request_id: &str,
        approvals: &[Approval],
    ) -> Result<(Psbt, ProofReceipt), CoreError> {
        let now = self.begin()?;
        let mut out = psbt.clone();
        let s = self
            .inner
            .sign_proof(&mut out, request_id, approvals, now)?;
        let proof = ProofSigned {
            form: "bip127".to_owned(),
            request_id: s.request_id,
            txid: s.txid,
            amount_sat: s.amount.to_sat(),
            commitment: s.commitment,
            policy: s.policy,
            counted: s.counted,
        };
        let r = self.record(&Event::ProofSigned(proof.clone()), now)?;
        Ok((out, ProofReceipt { proof, seq: r.seq }))
    }

    /// Signs a BIP-322 proof of funds ([`PolicySigner::sign_proof_of_funds`]), recorded.
    ///
    /// # Errors
    /// [`CoreError::Refused`], [`CoreError::State`].
    pub fn sign_proof_of_funds(
        &mut self,
        psbt: &Psbt,
        message: Option<&[u8]>,
        challenge: &ScriptBuf,
        request_id: &str,
        approvals: &[Approval],
    ) -> Result<(Psbt, ProofReceipt), CoreError> {
        let now = self.begin()?;
        let mut out = psbt.clone();
        let s = self
            .inner
            .sign_proof_of_funds(&mut out, message, challenge, request_id, approvals, now)?;
        let proof = ProofSigned {
            form: "bip322".to_owned(),
            request_id: s.request_id,
            txid: s.txid,
            amount_sat: s.amount.to_sat(),
            commitment: s.commitment,
            policy: s.policy,
            counted: s.counted,
        };
        let r = self.record(&Event::ProofSigned(proof.clone()), now)?;
        Ok((out, ProofReceipt { proof, seq: r.seq }))
    }

    /// Accepts a policy change signed by the admin quorum of the version in force
    /// ([`policies::governance::activate`] on the signer's clock): a tightening one is active
    /// at once, a loosening one is held for the loosening delay.
    ///
    /// # Errors
    /// [`CoreError::BadRequest`] for a document that does not parse, [`CoreError::Refused`]
    /// with the governance reason (signatures, quorum, versions), [`CoreError::State`].
    pub fn submit_policy_change(
        &mut self,
        policy_toml: &str,
        order: &ChangeOrder,
        signatures: &[AdminSignature],
    ) -> Result<Activation, CoreError> {
        let now = self.begin()?;
        let new = Policy::from_toml(policy_toml)
            .map_err(|e| CoreError::BadRequest(format!("policy: {e}")))?;
        let a = self.inner.activate(new, order, signatures, now)?;
        self.pending = (a.activates_at_ms > now).then(|| PendingVersion {
            policy: a.policy,
            version: a.version,
            activates_at_ms: a.activates_at_ms,
            loosened: a.loosened.clone(),
            order: order.clone(),
        });
        self.record(
            &Event::PolicyAccepted {
                policy_toml: policy_toml.to_owned(),
                order: order.clone(),
                signatures: signatures.to_vec(),
                activation: a.clone(),
            },
            now,
        )?;
        Ok(a)
    }

    /// Vetoes the held change: one admin of the active version signs its veto digest.
    ///
    /// # Errors
    /// [`CoreError::Veto`] (nothing held, another order), [`CoreError::Governance`] for a bad
    /// signature, [`CoreError::State`].
    pub fn veto_policy_change(
        &mut self,
        order: &ChangeOrder,
        signature: &AdminSignature,
    ) -> Result<(), CoreError> {
        let now = self.begin()?;
        self.check_veto(order, signature, now)?;
        self.inner.veto_pending();
        self.pending = None;
        self.record(
            &Event::PolicyVetoed {
                order: order.clone(),
                signature: signature.clone(),
            },
            now,
        )?;
        Ok(())
    }

    /// Applies a freeze (one admin) or lift (the admin quorum) order; an order applies to one
    /// state only, so a replayed lift is refused as stale.
    ///
    /// # Errors
    /// [`CoreError::Refused`] with the freeze reason, [`CoreError::State`].
    pub fn submit_freeze(
        &mut self,
        order: &FreezeOrder,
        signatures: &[AdminSignature],
    ) -> Result<FreezeState, CoreError> {
        let now = self.begin()?;
        let s = self.inner.apply_freeze(order, signatures)?;
        self.record(
            &Event::Freeze {
                order: order.clone(),
                signatures: signatures.to_vec(),
            },
            now,
        )?;
        Ok(s)
    }

    /// Signs the ledger checkpoint (`size`, `root`) at the signer's time, only when `proof`
    /// proves it consistent with the last checkpoint it signed (none needed for the first);
    /// the same size needs the same root, a smaller size is refused. Returns the signed note.
    ///
    /// # Errors
    /// [`CoreError::Checkpoint`], [`CoreError::State`].
    pub fn sign_checkpoint(
        &mut self,
        size: u64,
        root: Digest,
        proof: &[Digest],
    ) -> Result<String, CoreError> {
        let now = self.begin()?;
        self.check_checkpoint(size, &root, proof)?;
        let cp = Checkpoint::new(self.genesis.ledger_origin.clone(), size, root, now)
            .map_err(|e| CoreError::Checkpoint(e.to_string()))?;
        let note = cp
            .sign(self.ledger.as_ref())
            .map_err(|e| CoreError::Checkpoint(e.to_string()))?;
        let c = CheckpointSigned {
            size,
            root: hex::encode(root),
            time_ms: now,
            proof: proof.iter().map(hex::encode).collect(),
            note: note.clone(),
        };
        self.record(&Event::CheckpointSigned(c.clone()), now)?;
        self.last_checkpoint = Some((
            LastCheckpoint {
                size,
                root: c.root,
                time_ms: now,
                note: note.clone(),
            },
            root,
        ));
        Ok(note)
    }

    /// The signer's state.
    ///
    /// # Errors
    /// [`CoreError::Stopped`], [`CoreError::State`] (activating a due change is recorded).
    pub fn status(&mut self) -> Result<Status, CoreError> {
        self.begin()?;
        let head = self.state.head().ok_or_else(|| {
            CoreError::State(StateError::ChainBroken {
                seq: 0,
                reason: "empty".to_owned(),
            })
        })?;
        Ok(Status {
            head,
            network: self.network.to_string(),
            policy_key: self.genesis.policy_key.clone(),
            ledger_key: self.genesis.ledger_key.clone(),
            active_policy: self.inner.policy().hash(),
            active_version: self.inner.policy().version(),
            pending: self.pending.clone(),
            freeze: self.inner.freeze_state(),
            vaults: self.vaults.keys().cloned().collect(),
            last_checkpoint: self.last_checkpoint.as_ref().map(|(l, _)| l.clone()),
            spends_signed: self.spends,
        })
    }

    /// The active policy.
    pub fn policy(&self) -> &Policy {
        self.inner.policy()
    }
}

fn blank_auth(request_id: &str) -> SpendAuthorization {
    SpendAuthorization {
        request_id: request_id.to_owned(),
        vault: String::new(),
        initiator: String::new(),
        created_ms: 0,
        created_height: 0,
        requested_fee_rate: None,
        subject: dummy_subject(request_id),
        change_outputs: Vec::new(),
        approvals: Vec::new(),
        history: Vec::new(),
    }
}

/// Whether `a` is signed by the key `policy` gives its approver (the digest is checked
/// against the transaction only when signing).
fn signature_verifies(policy: &Policy, a: &Approval) -> bool {
    use bitcoin::secp256k1::{schnorr, Message, Secp256k1, XOnlyPublicKey};
    let Ok(key) = XOnlyPublicKey::from_slice(&a.pubkey) else {
        return false;
    };
    if policy.key_of(&a.approver) != Some(key) {
        return false;
    }
    let Ok(sig) = schnorr::Signature::from_slice(&a.signature) else {
        return false;
    };
    Secp256k1::verification_only()
        .verify_schnorr(&sig, &Message::from_digest(a.digest), &key)
        .is_ok()
}
