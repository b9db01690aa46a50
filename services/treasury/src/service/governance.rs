//! Policy versions and the freeze state in the database, with their governance.
//!
//! Why here: the rules (what tightens, who may sign, when a change takes effect, who may freeze
//! and lift) are pure functions of the `policies` crate; this module stores their inputs and
//! outcomes and writes every step to the reserve ledger in the same transaction as the state
//! change, so the ledger alone lets an auditor re-run every decision.
//!
//! - The first version is installed with [`Governance::init`] (trust on first use by the
//!   operator, recorded as `policy_activated` with no previous version).
//! - A new version is a proposal ([`Governance::propose`], `policy_proposed`) against the active
//!   version; the change order (both hashes and the issue time) is what admins sign.
//! - [`Governance::approve`] records admin signatures (each verified on arrival against the
//!   admins of the *current* version). Once the admin quorum signed, the change is accepted:
//!   a tightening activates at once (`policy_activated`), a loosening at
//!   `accepted + loosening_delay` of the current version.
//! - Until it activates, any one admin of the current version may veto it
//!   ([`Governance::veto`], `policy_vetoed`): a veto is a signature of the change's veto digest.
//! - [`Governance::activate_due`] activates accepted changes whose time has come (the service
//!   calls it before every decision, with its clock).
//! - The freeze state: any one admin freezes, the admin quorum lifts (`freeze` entries), by
//!   signed [`FreezeOrder`]s bound to the policy version and the state's sequence number.

use custody::ledger::{EntryError, Kind};
use custody::vault::ledger_record;
use policies::freeze::{AdminSignature, FreezeAction, FreezeError, FreezeOrder, FreezeState};
use policies::governance::{
    activate, compare, verify_admin_signatures, ChangeKind, ChangeOrder, GovernanceError,
};
use policies::{Policy, PolicyHash};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

use crate::store::{on_db, LedgerStore, SqlValue, StoreError, Write};

/// The ledger actor of entries the governance records on its own (activations).
pub const GOVERNANCE_ACTOR: &str = "governance";

/// Errors of the policy and freeze store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GovernanceStoreError {
    /// The ledger or a write failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A ledger entry could not be built.
    #[error("ledger entry: {0}")]
    Entry(#[from] EntryError),
    /// The policy document does not parse or validate.
    #[error("policy document: {0}")]
    Document(String),
    /// No policy has been installed yet.
    #[error("no active policy: install one with `treasury policy init FILE`")]
    NoActivePolicy,
    /// A policy is installed already; changes go through proposals.
    #[error("a policy is active already ({0}); propose a new version instead")]
    AlreadyInitialized(PolicyHash),
    /// No proposal with this hash.
    #[error("no proposed policy {0}")]
    UnknownProposal(String),
    /// The version was proposed before.
    #[error("policy {0} was proposed before")]
    AlreadyProposed(PolicyHash),
    /// The proposal is not in a state that allows the action.
    #[error("policy {hash} is {status}, cannot {action}")]
    WrongStatus {
        /// The proposal.
        hash: PolicyHash,
        /// Its status.
        status: String,
        /// What was tried.
        action: &'static str,
    },
    /// The proposal was made against a version that is no longer active.
    #[error("policy {hash} was proposed against {base}, the active version is {active}")]
    Stale {
        /// The proposal.
        hash: PolicyHash,
        /// Its base version.
        base: PolicyHash,
        /// The active version.
        active: PolicyHash,
    },
    /// The signed change order is not this proposal's.
    #[error("the order does not match proposal {0} (hashes or issue time differ)")]
    OrderMismatch(PolicyHash),
    /// The governance rules refused.
    #[error(transparent)]
    Governance(#[from] GovernanceError),
    /// The freeze rules refused.
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    /// A veto needs exactly one admin signature.
    #[error("a veto needs one admin signature, got {0}")]
    VetoSignatures(usize),
    /// Only policy changes can be vetoed.
    #[error("a freeze order cannot be vetoed (lift it with the admin quorum)")]
    NotVetoable,
    /// Stored rows do not decode.
    #[error("corrupt policy store: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, GovernanceStoreError>;

/// Where a policy version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    /// Waiting for the admin quorum.
    Proposed,
    /// The quorum signed; activates at `activates_at_ms` unless vetoed.
    Accepted,
    /// In force.
    Active,
    /// Was in force, replaced.
    Superseded,
    /// Vetoed before it activated.
    Vetoed,
}

impl VersionStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Proposed => "proposed",
            VersionStatus::Accepted => "accepted",
            VersionStatus::Active => "active",
            VersionStatus::Superseded => "superseded",
            VersionStatus::Vetoed => "vetoed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "proposed" => VersionStatus::Proposed,
            "accepted" => VersionStatus::Accepted,
            "active" => VersionStatus::Active,
            "superseded" => VersionStatus::Superseded,
            "vetoed" => VersionStatus::Vetoed,
            other => return Err(GovernanceStoreError::Corrupt(format!("status {other:?}"))),
        })
    }
}

impl std::fmt::Display for VersionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored policy version.
#[derive(Debug, Clone)]
pub struct PolicyVersion {
    /// The validated policy.
    pub policy: Policy,
    /// Its content address.
    pub hash: PolicyHash,
    /// The document as given (TOML).
    pub document: String,
    /// Where it stands.
    pub status: VersionStatus,
    /// The version it was proposed against (none for the first one).
    pub base: Option<PolicyHash>,
    /// Tightening or loosening against the base.
    pub kind: Option<ChangeKind>,
    /// What loosens against the base.
    pub loosened: Vec<String>,
    /// The change order's issue time (for the first version: its install time).
    pub issued_at_ms: i64,
    /// When it activates (accepted) or activated.
    pub activates_at_ms: Option<i64>,
    /// When it became active.
    pub activated_ms: Option<i64>,
}

impl PolicyVersion {
    /// The change order admins sign for this proposal (`None` for the first version).
    pub fn order(&self) -> Option<ChangeOrder> {
        self.base.map(|base| ChangeOrder {
            current: base,
            proposed: self.hash,
            issued_at_ms: self.issued_at_ms,
        })
    }
}

/// The outcome of [`Governance::approve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproveOutcome {
    /// More admin signatures are needed.
    Waiting {
        /// Admins who signed so far.
        signed: Vec<String>,
        /// Signatures needed.
        need: u32,
    },
    /// The quorum signed; the change activates at this time (a loosening).
    Accepted {
        /// Activation time.
        activates_at_ms: i64,
    },
    /// The quorum signed and the change (a tightening) is in force now.
    Activated,
}

/// Policy versions and the freeze state, on the ledger's database.
#[derive(Debug, Clone)]
pub struct Governance {
    /// The reserve ledger.
    pub ledger: LedgerStore,
}

const SELECT_VERSION: &str = "SELECT hash, document, status, base_hash, kind, loosened, \
    issued_at_ms, activates_at_ms, activated_ms FROM policy_versions";

fn parse_hash(s: &str) -> Result<PolicyHash> {
    s.parse::<PolicyHash>()
        .map_err(|_| GovernanceStoreError::Corrupt(format!("policy hash {s:?}")))
}

fn kind_name(k: ChangeKind) -> &'static str {
    match k {
        ChangeKind::Tightening => "tightening",
        ChangeKind::Loosening => "loosening",
    }
}

struct VersionRow {
    hash: String,
    document: String,
    status: String,
    base: Option<String>,
    kind: Option<String>,
    loosened: String,
    issued_at_ms: i64,
    activates_at_ms: Option<i64>,
    activated_ms: Option<i64>,
}

impl VersionRow {
    fn read<R: Row>(r: &R) -> std::result::Result<Self, sqlx::Error>
    where
        for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        Ok(VersionRow {
            hash: r.try_get(0)?,
            document: r.try_get(1)?,
            status: r.try_get(2)?,
            base: r.try_get(3)?,
            kind: r.try_get(4)?,
            loosened: r.try_get(5)?,
            issued_at_ms: r.try_get(6)?,
            activates_at_ms: r.try_get(7)?,
            activated_ms: r.try_get(8)?,
        })
    }

    fn into_version(self) -> Result<PolicyVersion> {
        let policy = Policy::from_toml(&self.document)
            .map_err(|e| GovernanceStoreError::Corrupt(format!("policy {}: {e}", self.hash)))?;
        let hash = parse_hash(&self.hash)?;
        if policy.hash() != hash {
            return Err(GovernanceStoreError::Corrupt(format!(
                "policy {} hashes to {}",
                self.hash,
                policy.hash()
            )));
        }
        let kind = match self.kind.as_deref() {
            None => None,
            Some("tightening") => Some(ChangeKind::Tightening),
            Some("loosening") => Some(ChangeKind::Loosening),
            Some(k) => return Err(GovernanceStoreError::Corrupt(format!("kind {k:?}"))),
        };
        let loosened: Vec<String> = serde_json::from_str(&self.loosened)
            .map_err(|e| GovernanceStoreError::Corrupt(format!("loosened: {e}")))?;
        Ok(PolicyVersion {
            policy,
            hash,
            document: self.document,
            status: VersionStatus::parse(&self.status)?,
            base: self.base.as_deref().map(parse_hash).transpose()?,
            kind,
            loosened,
            issued_at_ms: self.issued_at_ms,
            activates_at_ms: self.activates_at_ms,
            activated_ms: self.activated_ms,
        })
    }
}

fn parse_document(document: &str) -> Result<Policy> {
    Policy::from_toml(document).map_err(|e| GovernanceStoreError::Document(e.to_string()))
}

impl Governance {
    /// The governance on the ledger's database.
    pub fn new(ledger: LedgerStore) -> Self {
        Governance { ledger }
    }

    async fn versions_where(&self, clause: &str, arg: Option<&str>) -> Result<Vec<PolicyVersion>> {
        let q = format!("{SELECT_VERSION} {clause}");
        let rows: Vec<VersionRow> = on_db!(self.ledger.db(), p => {
            let mut query = sqlx::query(&q);
            if let Some(a) = arg {
                query = query.bind(a.to_owned());
            }
            query
                .fetch_all(p)
                .await?
                .iter()
                .map(VersionRow::read)
                .collect::<std::result::Result<_, sqlx::Error>>()?
        });
        rows.into_iter().map(VersionRow::into_version).collect()
    }

    /// Every version, oldest first (issue time).
    ///
    /// # Errors
    /// [`GovernanceStoreError::Db`], [`GovernanceStoreError::Corrupt`].
    pub async fn history(&self) -> Result<Vec<PolicyVersion>> {
        self.versions_where("ORDER BY issued_at_ms, hash", None)
            .await
    }

    /// One version by hash.
    ///
    /// # Errors
    /// [`GovernanceStoreError::UnknownProposal`], [`GovernanceStoreError::Db`].
    pub async fn version(&self, hash: &PolicyHash) -> Result<PolicyVersion> {
        self.versions_where("WHERE hash = $1", Some(&hash.to_string()))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| GovernanceStoreError::UnknownProposal(hash.to_string()))
    }

    /// The active version as stored (without activating due changes).
    ///
    /// # Errors
    /// [`GovernanceStoreError::NoActivePolicy`], [`GovernanceStoreError::Db`].
    pub async fn active_stored(&self) -> Result<PolicyVersion> {
        self.versions_where("WHERE status = 'active'", None)
            .await?
            .into_iter()
            .next()
            .ok_or(GovernanceStoreError::NoActivePolicy)
    }

    /// The version in force at `now_ms`: accepted changes whose time has come are activated
    /// first (and recorded).
    ///
    /// # Errors
    /// As [`Governance::active_stored`] and [`Governance::activate_due`].
    pub async fn active(&self, now_ms: i64) -> Result<PolicyVersion> {
        self.activate_due(now_ms).await?;
        self.active_stored().await
    }

    /// Installs the first policy version (refused once one is active).
    ///
    /// # Errors
    /// [`GovernanceStoreError::Document`], [`GovernanceStoreError::AlreadyInitialized`],
    /// [`GovernanceStoreError::Entry`] for a bad actor name; nothing is stored on error.
    pub async fn init(&self, document: &str, actor: &str, now_ms: i64) -> Result<PolicyVersion> {
        let policy = parse_document(document)?;
        match self.active_stored().await {
            Ok(v) => return Err(GovernanceStoreError::AlreadyInitialized(v.hash)),
            Err(GovernanceStoreError::NoActivePolicy) => {}
            Err(e) => return Err(e),
        }
        let hash = policy.hash();
        let body = json!({
            "event": "installed", "policy": hash.to_string(), "version": policy.version(),
            "previous": null, "document": document,
        });
        let draft = ledger_record(Kind::PolicyActivated, actor, &body, now_ms)?;
        let w = Write::new(
            "INSERT INTO policy_versions (hash, version, document, status, base_hash, kind, \
             loosened, issued_at_ms, activates_at_ms, activated_ms, updated_ms) \
             VALUES ($1, $2, $3, 'active', NULL, NULL, '[]', $4, $4, $4, $4)",
            vec![
                SqlValue::Text(hash.to_string()),
                SqlValue::Int(i64::try_from(policy.version()).unwrap_or(i64::MAX)),
                SqlValue::Text(document.to_owned()),
                SqlValue::Int(now_ms),
            ],
        );
        self.ledger.append_with_writes(vec![draft], &[w]).await?;
        self.version(&hash).await
    }

    /// Proposes `document` as the next version; returns the stored proposal (its
    /// [`PolicyVersion::order`] is what admins sign).
    ///
    /// # Errors
    /// [`GovernanceStoreError::Document`], [`GovernanceStoreError::NoActivePolicy`],
    /// [`GovernanceError::VersionNotIncreasing`], [`GovernanceStoreError::AlreadyProposed`].
    pub async fn propose(&self, document: &str, actor: &str, now_ms: i64) -> Result<PolicyVersion> {
        let new = parse_document(document)?;
        let current = self.active(now_ms).await?;
        if new.version() <= current.policy.version() {
            return Err(GovernanceError::VersionNotIncreasing {
                current: current.policy.version(),
                new: new.version(),
            }
            .into());
        }
        let hash = new.hash();
        match self.version(&hash).await {
            Ok(_) => return Err(GovernanceStoreError::AlreadyProposed(hash)),
            Err(GovernanceStoreError::UnknownProposal(_)) => {}
            Err(e) => return Err(e),
        }
        let cmp = compare(&current.policy, &new);
        let loosened = serde_json::to_string(&cmp.loosened)
            .map_err(|e| GovernanceStoreError::Corrupt(e.to_string()))?;
        let body = json!({
            "event": "proposed", "current": current.hash.to_string(), "proposed": hash.to_string(),
            "version": new.version(), "kind": kind_name(cmp.kind), "loosened": cmp.loosened,
            "issued_at_ms": now_ms, "document": document,
        });
        let draft = ledger_record(Kind::PolicyProposed, actor, &body, now_ms)?;
        let w = Write::new(
            "INSERT INTO policy_versions (hash, version, document, status, base_hash, kind, \
             loosened, issued_at_ms, activates_at_ms, activated_ms, updated_ms) \
             VALUES ($1, $2, $3, 'proposed', $4, $5, $6, $7, NULL, NULL, $7)",
            vec![
                SqlValue::Text(hash.to_string()),
                SqlValue::Int(i64::try_from(new.version()).unwrap_or(i64::MAX)),
                SqlValue::Text(document.to_owned()),
                SqlValue::Text(current.hash.to_string()),
                SqlValue::Text(kind_name(cmp.kind).to_owned()),
                SqlValue::Text(loosened),
                SqlValue::Int(now_ms),
            ],
        );
        self.ledger.append_with_writes(vec![draft], &[w]).await?;
        self.version(&hash).await
    }

    async fn signatures(&self, hash: &PolicyHash, purpose: &str) -> Result<Vec<AdminSignature>> {
        let q = "SELECT signature FROM policy_signatures WHERE policy_hash = $1 AND purpose = $2 \
                 ORDER BY received_ms, admin";
        let rows: Vec<String> = on_db!(self.ledger.db(), p => {
            sqlx::query(q)
                .bind(hash.to_string())
                .bind(purpose)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<std::result::Result<_, sqlx::Error>>()?
        });
        rows.iter()
            .map(|s| {
                serde_json::from_str(s)
                    .map_err(|e| GovernanceStoreError::Corrupt(format!("signature: {e}")))
            })
            .collect()
    }

    /// Checks that `order` is the change order of a proposal in one of `allowed` states, made
    /// against the active version; returns (proposal, active).
    async fn open_proposal(
        &self,
        order: &ChangeOrder,
        allowed: &[VersionStatus],
        action: &'static str,
        now_ms: i64,
    ) -> Result<(PolicyVersion, PolicyVersion)> {
        let active = self.active(now_ms).await?;
        let prop = self.version(&order.proposed).await?;
        if !allowed.contains(&prop.status) {
            return Err(GovernanceStoreError::WrongStatus {
                hash: prop.hash,
                status: prop.status.to_string(),
                action,
            });
        }
        if prop.order().as_ref() != Some(order) {
            return Err(GovernanceStoreError::OrderMismatch(prop.hash));
        }
        if order.current != active.hash {
            return Err(GovernanceStoreError::Stale {
                hash: prop.hash,
                base: order.current,
                active: active.hash,
            });
        }
        Ok((prop, active))
    }

    /// Records admin signatures of a proposal's change order, each verified against the
    /// admins of the active version. With the quorum, the change is accepted (a loosening,
    /// activating after the delay) or activated at once (a tightening).
    ///
    /// # Errors
    /// [`GovernanceStoreError::OrderMismatch`], [`GovernanceStoreError::WrongStatus`],
    /// [`GovernanceStoreError::Stale`], [`GovernanceError::BadSignature`]; nothing is stored on
    /// error.
    pub async fn approve(
        &self,
        order: &ChangeOrder,
        sigs: &[AdminSignature],
        now_ms: i64,
    ) -> Result<ApproveOutcome> {
        let (prop, active) = self
            .open_proposal(order, &[VersionStatus::Proposed], "approve", now_ms)
            .await?;
        let new_signers = verify_admin_signatures(&active.policy, order.digest(), sigs)?;
        let mut all = self.signatures(&prop.hash, "approve").await?;
        let mut drafts = Vec::new();
        let mut writes = Vec::new();
        for s in sigs {
            if all.iter().any(|a| a.admin == s.admin) || !new_signers.contains(&s.admin) {
                continue;
            }
            let sig_json = serde_json::to_string(s)
                .map_err(|e| GovernanceStoreError::Corrupt(e.to_string()))?;
            writes.push(Write::new(
                "INSERT INTO policy_signatures (policy_hash, admin, purpose, signature, \
                 received_ms) VALUES ($1, $2, 'approve', $3, $4)",
                vec![
                    SqlValue::Text(prop.hash.to_string()),
                    SqlValue::Text(s.admin.clone()),
                    SqlValue::Text(sig_json),
                    SqlValue::Int(now_ms),
                ],
            ));
            let body = json!({
                "event": "admin_approval", "current": active.hash.to_string(),
                "proposed": prop.hash.to_string(), "order": order, "signature": s,
            });
            drafts.push(ledger_record(
                Kind::PolicyProposed,
                &s.admin,
                &body,
                now_ms,
            )?);
            all.push(s.clone());
        }
        let outcome = match activate(&active.policy, &prop.policy, order, &all, now_ms) {
            Err(GovernanceError::NotEnoughAdmins { need, .. }) => ApproveOutcome::Waiting {
                signed: all.iter().map(|s| s.admin.clone()).collect(),
                need,
            },
            Err(e) => return Err(e.into()),
            Ok(act) => {
                let body = json!({
                    "event": "accepted", "current": active.hash.to_string(),
                    "proposed": prop.hash.to_string(), "kind": kind_name(act.kind),
                    "loosened": act.loosened, "activates_at_ms": act.activates_at_ms,
                    "admins": all.iter().map(|s| s.admin.clone()).collect::<Vec<_>>(),
                });
                drafts.push(ledger_record(
                    Kind::PolicyProposed,
                    GOVERNANCE_ACTOR,
                    &body,
                    now_ms,
                )?);
                writes.push(
                    Write::new(
                        "UPDATE policy_versions SET status = 'accepted', activates_at_ms = $2, \
                         updated_ms = $3 WHERE hash = $1 AND status = 'proposed'",
                        vec![
                            SqlValue::Text(prop.hash.to_string()),
                            SqlValue::Int(act.activates_at_ms),
                            SqlValue::Int(now_ms),
                        ],
                    )
                    .exactly(1, "the proposal changed meanwhile"),
                );
                if act.activates_at_ms <= now_ms {
                    let (w, d) = activation(&active, &prop, act.activates_at_ms, now_ms)?;
                    writes.extend(w);
                    drafts.push(d);
                    ApproveOutcome::Activated
                } else {
                    ApproveOutcome::Accepted {
                        activates_at_ms: act.activates_at_ms,
                    }
                }
            }
        };
        if !writes.is_empty() {
            self.ledger.append_with_writes(drafts, &writes).await?;
        }
        Ok(outcome)
    }

    /// Vetoes a proposal before it activates: one admin of the active version signs the
    /// order's veto digest.
    ///
    /// # Errors
    /// [`GovernanceStoreError::VetoSignatures`] unless exactly one signature is given,
    /// [`GovernanceError::BadSignature`], [`GovernanceStoreError::WrongStatus`] (already
    /// active or vetoed), [`GovernanceStoreError::OrderMismatch`].
    pub async fn veto(
        &self,
        order: &ChangeOrder,
        sigs: &[AdminSignature],
        now_ms: i64,
    ) -> Result<()> {
        let [sig] = sigs else {
            return Err(GovernanceStoreError::VetoSignatures(sigs.len()));
        };
        let (prop, active) = self
            .open_proposal(
                order,
                &[VersionStatus::Proposed, VersionStatus::Accepted],
                "veto",
                now_ms,
            )
            .await?;
        verify_admin_signatures(&active.policy, order.veto_digest(), sigs)?;
        let sig_json =
            serde_json::to_string(sig).map_err(|e| GovernanceStoreError::Corrupt(e.to_string()))?;
        let body = json!({
            "event": "vetoed", "current": active.hash.to_string(),
            "proposed": prop.hash.to_string(), "order": order, "signature": sig,
        });
        let draft = ledger_record(Kind::PolicyVetoed, &sig.admin, &body, now_ms)?;
        let writes = [
            Write::new(
                "INSERT INTO policy_signatures (policy_hash, admin, purpose, signature, \
                 received_ms) VALUES ($1, $2, 'veto', $3, $4)",
                vec![
                    SqlValue::Text(prop.hash.to_string()),
                    SqlValue::Text(sig.admin.clone()),
                    SqlValue::Text(sig_json),
                    SqlValue::Int(now_ms),
                ],
            ),
            Write::new(
                "UPDATE policy_versions SET status = 'vetoed', updated_ms = $2 \
                 WHERE hash = $1 AND status IN ('proposed', 'accepted')",
                vec![SqlValue::Text(prop.hash.to_string()), SqlValue::Int(now_ms)],
            )
            .exactly(1, "the proposal changed meanwhile"),
        ];
        self.ledger.append_with_writes(vec![draft], &writes).await?;
        Ok(())
    }

    /// Activates accepted changes whose activation time is at or before `now_ms` and whose
    /// base is the active version (oldest first); returns `(previous, new)` for each.
    ///
    /// # Errors
    /// [`GovernanceStoreError::Db`], [`GovernanceStoreError::Store`].
    pub async fn activate_due(&self, now_ms: i64) -> Result<Vec<(PolicyHash, PolicyHash)>> {
        let mut done = Vec::new();
        loop {
            let active = match self.active_stored().await {
                Ok(a) => a,
                Err(GovernanceStoreError::NoActivePolicy) => return Ok(done),
                Err(e) => return Err(e),
            };
            let due = self
                .versions_where(
                    "WHERE status = 'accepted' ORDER BY activates_at_ms, hash",
                    None,
                )
                .await?
                .into_iter()
                .find(|v| {
                    v.base == Some(active.hash) && v.activates_at_ms.is_some_and(|t| t <= now_ms)
                });
            let Some(next) = due else {
                return Ok(done);
            };
            let at = next.activates_at_ms.unwrap_or(now_ms);
            let (writes, draft) = activation(&active, &next, at, now_ms)?;
            self.ledger.append_with_writes(vec![draft], &writes).await?;
            done.push((active.hash, next.hash));
        }
    }

    /// The freeze state.
    ///
    /// # Errors
    /// [`GovernanceStoreError::Db`], [`GovernanceStoreError::Corrupt`].
    pub async fn freeze_state(&self) -> Result<FreezeState> {
        let q = "SELECT frozen, seq, since_ms FROM freeze_state WHERE id = 1";
        let (frozen, seq, since): (i64, i64, Option<i64>) = on_db!(self.ledger.db(), p => {
            let r = sqlx::query(q).fetch_one(p).await?;
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)
        });
        Ok(FreezeState {
            frozen: frozen == 1,
            seq: u64::try_from(seq)
                .map_err(|_| GovernanceStoreError::Corrupt(format!("freeze seq {seq}")))?,
            since_ms: since,
        })
    }

    /// A freeze or lift order for the current state and active policy, for admins to sign.
    ///
    /// # Errors
    /// [`GovernanceStoreError::NoActivePolicy`], [`GovernanceStoreError::Db`].
    pub async fn freeze_order(
        &self,
        action: FreezeAction,
        reason: &str,
        now_ms: i64,
    ) -> Result<FreezeOrder> {
        let active = self.active(now_ms).await?;
        let state = self.freeze_state().await?;
        Ok(FreezeOrder {
            action,
            policy: active.hash,
            seq: state.seq,
            issued_at_ms: now_ms,
            reason: reason.to_owned(),
        })
    }

    /// Applies a signed freeze or lift order (one admin freezes, the admin quorum lifts).
    ///
    /// # Errors
    /// [`FreezeError`] (wrong policy or state, already frozen, not frozen, bad signature, too
    /// few admins); [`GovernanceStoreError::Store`] with a conflict when another order was
    /// applied meanwhile. Nothing is stored on error.
    pub async fn apply_freeze(
        &self,
        order: &FreezeOrder,
        sigs: &[AdminSignature],
        now_ms: i64,
    ) -> Result<FreezeState> {
        let active = self.active(now_ms).await?;
        let state = self.freeze_state().await?;
        let next = state.apply(&active.policy, order, sigs)?;
        let action = match order.action {
            FreezeAction::Freeze => "freeze",
            FreezeAction::Lift => "lift",
        };
        let order_json = serde_json::to_string(order)
            .map_err(|e| GovernanceStoreError::Corrupt(e.to_string()))?;
        let sigs_json = serde_json::to_string(sigs)
            .map_err(|e| GovernanceStoreError::Corrupt(e.to_string()))?;
        let actor = sigs.first().map_or(GOVERNANCE_ACTOR, |s| s.admin.as_str());
        let body = json!({
            "action": action, "order": order, "signatures": sigs,
            "policy": active.hash.to_string(), "frozen": next.frozen, "seq": next.seq,
        });
        let draft = ledger_record(Kind::Freeze, actor, &body, now_ms)?;
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let writes = [
            Write::new(
                "UPDATE freeze_state SET frozen = $1, seq = $2, since_ms = $3, updated_ms = $4 \
                 WHERE id = 1 AND seq = $5",
                vec![
                    SqlValue::Int(i64::from(next.frozen)),
                    SqlValue::Int(to_i64(next.seq)),
                    SqlValue::OptInt(next.since_ms),
                    SqlValue::Int(now_ms),
                    SqlValue::Int(to_i64(state.seq)),
                ],
            )
            .exactly(1, "another freeze order was applied meanwhile"),
            Write::new(
                "INSERT INTO freeze_orders (seq, action, order_json, signatures, applied_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
                vec![
                    SqlValue::Int(to_i64(order.seq)),
                    SqlValue::Text(action.to_owned()),
                    SqlValue::Text(order_json),
                    SqlValue::Text(sigs_json),
                    SqlValue::Int(now_ms),
                ],
            ),
        ];
        self.ledger.append_with_writes(vec![draft], &writes).await?;
        Ok(next)
    }
}

/// The writes and the ledger entry that make `next` the active version in place of `active`.
fn activation(
    active: &PolicyVersion,
    next: &PolicyVersion,
    activates_at_ms: i64,
    now_ms: i64,
) -> Result<(Vec<Write>, custody::ledger::EntryDraft)> {
    let body = json!({
        "event": "activated", "previous": active.hash.to_string(),
        "policy": next.hash.to_string(), "version": next.policy.version(),
        "kind": next.kind.map(kind_name), "activates_at_ms": activates_at_ms,
    });
    let draft = ledger_record(Kind::PolicyActivated, GOVERNANCE_ACTOR, &body, now_ms)?;
    let writes = vec![
        Write::new(
            "UPDATE policy_versions SET status = 'superseded', updated_ms = $2 \
             WHERE hash = $1 AND status = 'active'",
            vec![
                SqlValue::Text(active.hash.to_string()),
                SqlValue::Int(now_ms),
            ],
        )
        .exactly(1, "the active policy changed meanwhile"),
        Write::new(
            "UPDATE policy_versions SET status = 'active', activated_ms = $2, updated_ms = $2 \
             WHERE hash = $1 AND status = 'accepted'",
            vec![SqlValue::Text(next.hash.to_string()), SqlValue::Int(now_ms)],
        )
        .exactly(1, "the proposal changed meanwhile"),
    ];
    Ok((writes, draft))
}
