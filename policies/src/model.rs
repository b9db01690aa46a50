//! The policy document: TOML in, validated model out.
//!
//! The TOML form is described on [`Policy::from_toml`]; `policies/examples/strategic-reserve.toml`
//! is a complete example. Validation errors name the offending field, e.g.
//! `tiers[1].require[0]: unknown group "cfo"`.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use bitcoin::address::NetworkUnchecked;
use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::{Address, Amount, ScriptBuf};
use serde::Deserialize;

use crate::canonical::{policy_hash, PolicyHash};

/// The largest number of seconds any duration of a policy may hold (100 years).
pub const MAX_SECS: u64 = 100 * 365 * 24 * 3600;

/// The largest `k` or member count of a group.
pub const MAX_MEMBERS: usize = 64;

/// Why a policy document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not TOML of the expected shape (unknown key, wrong type, missing field).
    #[error("policy toml: {0}")]
    Toml(String),
    /// A list or string that must not be empty is empty.
    #[error("{field}: must not be empty")]
    Empty {
        /// The field.
        field: String,
    },
    /// A name or person id uses characters outside letters, digits, `-`, `_`, `.`.
    #[error("{field}: invalid name \"{name}\" (use 1 to 64 letters, digits, '-', '_', '.')")]
    BadName {
        /// The field.
        field: String,
        /// The name as written.
        name: String,
    },
    /// Two groups share a name (or a group is named `admins`).
    #[error("{field}: duplicate group \"{name}\"")]
    DuplicateGroup {
        /// The field.
        field: String,
        /// The group name.
        name: String,
    },
    /// A requirement or the proof quorum names a group that is not defined.
    #[error("{field}: unknown group \"{group}\"")]
    UnknownGroup {
        /// The field.
        field: String,
        /// The group name as written.
        group: String,
    },
    /// A threshold is zero or larger than the number of members.
    #[error("{field}: k = {k} must be between 1 and n = {n}")]
    BadThreshold {
        /// The field.
        field: String,
        /// The threshold.
        k: u32,
        /// The number of members.
        n: usize,
    },
    /// A group has more members than [`MAX_MEMBERS`].
    #[error("{field}: more than {max} members")]
    TooManyMembers {
        /// The field.
        field: String,
        /// The limit.
        max: usize,
    },
    /// A person appears twice in one group.
    #[error("{field}: duplicate person \"{person}\"")]
    DuplicatePerson {
        /// The field.
        field: String,
        /// The person id.
        person: String,
    },
    /// A public key is not 32-byte hex of a valid x-only secp256k1 key.
    #[error("{field}: bad x-only public key: {reason}")]
    BadKey {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A person is listed with different keys in different places.
    #[error("{field}: person \"{person}\" has a different key elsewhere in the policy")]
    KeyConflict {
        /// The field.
        field: String,
        /// The person id.
        person: String,
    },
    /// Two persons share a key.
    #[error("{field}: key of \"{person}\" is also the key of \"{other}\"")]
    SharedKey {
        /// The field.
        field: String,
        /// The person id.
        person: String,
        /// The other person holding the same key.
        other: String,
    },
    /// The tiers are not in strictly ascending order of `up_to_sat`.
    #[error("{field}: tiers must be in strictly ascending order of up_to_sat")]
    TiersNotAscending {
        /// The field.
        field: String,
    },
    /// The tiers leave amounts uncovered (only the last tier may, and must, be unbounded).
    #[error("{field}: {problem}")]
    TiersNotCovering {
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A tier sets both or neither of `require` and `any_of`.
    #[error("{field}: set exactly one of require and any_of")]
    RequirementForm {
        /// The field.
        field: String,
    },
    /// A group is required twice in one alternative, or an alternative repeats another.
    #[error("{field}: duplicate requirement {what}")]
    DuplicateRequirement {
        /// The field.
        field: String,
        /// What is repeated.
        what: String,
    },
    /// An allowlist address does not parse.
    #[error("{field}: bad address \"{address}\": {reason}")]
    BadAddress {
        /// The field.
        field: String,
        /// The address as written.
        address: String,
        /// The parser's reason.
        reason: String,
    },
    /// An allowlist address or label appears twice.
    #[error("{field}: duplicate {what}")]
    DuplicateEntry {
        /// The field.
        field: String,
        /// What is repeated.
        what: String,
    },
    /// A value that must be positive is zero.
    #[error("{field}: must be greater than zero")]
    Zero {
        /// The field.
        field: String,
    },
    /// A value is above its limit.
    #[error("{field}: {value} is above the limit {max}")]
    TooLarge {
        /// The field.
        field: String,
        /// The value.
        value: u64,
        /// The limit.
        max: u64,
    },
}

/// A person allowed to approve: id and BIP-340 approval key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    /// The person's id (unique in the policy).
    pub person: String,
    /// The x-only key the person signs approvals with.
    pub pubkey: XOnlyPublicKey,
}

/// A named set of members with a default threshold `k`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group name.
    pub name: String,
    /// The default threshold (tiers may ask for another `k` of the same members).
    pub k: u32,
    /// The members, sorted by person id.
    pub members: Vec<Member>,
}

impl Group {
    /// True when `person` is a member.
    pub fn has(&self, person: &str) -> bool {
        self.members.iter().any(|m| m.person == person)
    }
}

/// `k` approvals from members of `group`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupRequirement {
    /// The group name.
    pub group: String,
    /// How many distinct members must approve.
    pub k: u32,
}

/// Approvals a tier needs: any one of the alternatives, each being all of its group requirements.
/// A `require = [...]` tier has a single alternative. Canonical order: requirements sorted by group
/// within an alternative, alternatives sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The alternatives (never empty, none empty).
    pub alternatives: Vec<Vec<GroupRequirement>>,
}

/// One amount tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// A label for messages.
    pub name: String,
    /// Inclusive upper bound of the amounts of this tier; `None` for the last, unbounded tier.
    pub up_to: Option<Amount>,
    /// The approvals needed.
    pub requirement: Requirement,
    /// Delay after the quorum is reached before the spend may proceed.
    pub delay_secs: u64,
    /// Every destination must be on the allowlist.
    pub allowlist_only: bool,
}

/// An allowlisted destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowlistEntry {
    /// A label for humans.
    pub label: String,
    /// The address in normal form (bech32 in lower case).
    pub address: String,
    /// Its output script (what matching uses).
    pub script_pubkey: ScriptBuf,
}

/// At most `max` may leave a vault within any `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct VelocityLimit {
    /// The window length.
    pub window_secs: u64,
    /// The most that may be spent in one window.
    pub max: Amount,
}

/// Fee caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeRules {
    /// Absolute fee cap.
    pub max_fee: Amount,
    /// Fee-rate cap in sat/vB.
    pub max_fee_rate_sat_vb: u64,
    /// The built transaction's fee rate must lie within ± this percent of the rate the request
    /// asked for (when the request states one).
    pub fee_rate_band_percent: Option<u32>,
}

/// How long approvals stay valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalRules {
    /// An approval subject may expire at most this long after the request was created.
    pub max_age_secs: u64,
    /// When set, subjects must also expire by height, at most this many blocks after the tip at
    /// request creation.
    pub max_age_blocks: Option<u32>,
}

/// A validated policy version.
///
/// Only [`Policy::from_toml`] builds one, so every `Policy` satisfies the validation rules; its
/// canonical hash is computed once, at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    version: u64,
    name: String,
    groups: Vec<Group>,
    admins: Group,
    tiers: Vec<Tier>,
    allowlist: Vec<AllowlistEntry>,
    velocity: Vec<VelocityLimit>,
    fees: FeeRules,
    approvals: ApprovalRules,
    proof_quorum: String,
    loosening_delay_secs: u64,
    keys: BTreeMap<String, XOnlyPublicKey>,
    hash: PolicyHash,
}

impl Policy {
    /// Parses and validates a policy document.
    ///
    /// ```toml
    /// version = 1
    /// name = "reserve"
    /// proof_quorum = "officers"       # group whose quorum signs reserve proofs
    /// loosening_delay_secs = 259200   # loosening changes activate this late
    ///
    /// [admins]                        # freeze-lift and governance quorum
    /// k = 2
    /// members = [{ person = "ann", pubkey = "<x-only hex>" }, ...]
    ///
    /// [[groups]]
    /// name = "officers"
    /// k = 2
    /// members = [...]
    ///
    /// [[tiers]]
    /// name = "small"                  # optional label
    /// up_to_sat = 1000000             # inclusive; omit on the last tier
    /// require = ["officers", { group = "cfo", k = 1 }]   # all of these
    /// # or: any_of = [["officers"], ["cfo", "board"]]   # one of these alternatives
    /// delay_secs = 0                  # default 0
    /// allowlist_only = false          # default false
    ///
    /// [[allowlist]]
    /// label = "cold storage"
    /// address = "bc1q..."
    ///
    /// [[velocity]]
    /// window_secs = 86400
    /// max_sat = 100000000
    ///
    /// [fees]
    /// max_fee_sat = 1000000
    /// max_fee_rate_sat_vb = 500
    /// fee_rate_band_percent = 20      # optional
    ///
    /// [approvals]
    /// max_age_secs = 86400
    /// max_age_blocks = 144            # optional
    /// ```
    ///
    /// # Errors
    /// [`PolicyError`] naming the field: TOML syntax or shape, bad names, unknown or duplicate
    /// groups, `k` outside `1..=n`, a person twice in one group, a person with two keys or a key
    /// shared by two persons, bad keys or addresses, tiers not ascending or not covering every
    /// amount, zero windows, durations above [`MAX_SECS`].
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Toml(e.to_string()))?;
        raw.validate()
    }

    /// The version number.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The approver groups, sorted by name.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The admin group (freeze lift, governance).
    pub fn admins(&self) -> &Group {
        &self.admins
    }

    /// The tiers, ascending; the last is unbounded.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The tier that applies to `amount` (the first whose bound is at least `amount`).
    pub fn tier_for(&self, amount: Amount) -> Option<&Tier> {
        self.tiers
            .iter()
            .find(|t| t.up_to.is_none_or(|up| amount <= up))
    }

    /// The allowlist, sorted by output script.
    pub fn allowlist(&self) -> &[AllowlistEntry] {
        &self.allowlist
    }

    /// The velocity limits, sorted by window.
    pub fn velocity(&self) -> &[VelocityLimit] {
        &self.velocity
    }

    /// The fee caps.
    pub fn fees(&self) -> &FeeRules {
        &self.fees
    }

    /// The approval validity rules.
    pub fn approval_rules(&self) -> &ApprovalRules {
        &self.approvals
    }

    /// The group whose quorum (its own `k`) signs reserve proofs.
    pub fn proof_quorum(&self) -> &str {
        &self.proof_quorum
    }

    /// How long a loosening change waits before it activates.
    pub fn loosening_delay_secs(&self) -> u64 {
        self.loosening_delay_secs
    }

    /// The approval key of `person` (a member of any group or of the admins).
    pub fn key_of(&self, person: &str) -> Option<XOnlyPublicKey> {
        self.keys.get(person).copied()
    }

    /// The person holding approval key `key`.
    pub fn person_of(&self, key: &XOnlyPublicKey) -> Option<&str> {
        self.keys
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(p, _)| p.as_str())
    }

    /// The canonical hash of this version (see [`crate::canonical`]).
    pub fn hash(&self) -> PolicyHash {
        self.hash
    }
}

// ---------------------------------------------------------------------------------------------
// Raw TOML shape.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: u64,
    name: String,
    proof_quorum: String,
    loosening_delay_secs: u64,
    admins: RawGroupBody,
    groups: Vec<RawGroup>,
    tiers: Vec<RawTier>,
    #[serde(default)]
    allowlist: Vec<RawAllow>,
    #[serde(default)]
    velocity: Vec<RawVelocity>,
    fees: RawFees,
    approvals: RawApprovals,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    person: String,
    pubkey: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroupBody {
    k: u32,
    members: Vec<RawMember>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    k: u32,
    members: Vec<RawMember>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawGroupRef {
    Name(String),
    WithK { group: String, k: u32 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: Option<String>,
    up_to_sat: Option<u64>,
    require: Option<Vec<RawGroupRef>>,
    any_of: Option<Vec<Vec<RawGroupRef>>>,
    #[serde(default)]
    delay_secs: u64,
    #[serde(default)]
    allowlist_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    label: String,
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVelocity {
    window_secs: u64,
    max_sat: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFees {
    max_fee_sat: u64,
    max_fee_rate_sat_vb: u64,
    fee_rate_band_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    max_age_secs: u64,
    max_age_blocks: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Validation.

fn check_name(field: &str, name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadName {
            field: field.to_owned(),
            name: name.to_owned(),
        })
    }
}

fn check_secs(field: &str, secs: u64) -> Result<(), PolicyError> {
    if secs > MAX_SECS {
        return Err(PolicyError::TooLarge {
            field: field.to_owned(),
            value: secs,
            max: MAX_SECS,
        });
    }
    Ok(())
}

fn parse_key(field: &str, hex_key: &str) -> Result<XOnlyPublicKey, PolicyError> {
    let bad = |reason: String| PolicyError::BadKey {
        field: field.to_owned(),
        reason,
    };
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes)
        .map_err(|e| bad(format!("not 32 bytes of hex: {e}")))?;
    XOnlyPublicKey::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

/// Collects person ↔ key across the whole policy and refuses conflicts.
#[derive(Default)]
struct KeyRegistry {
    by_person: BTreeMap<String, XOnlyPublicKey>,
    by_key: BTreeMap<[u8; 32], String>,
}

impl KeyRegistry {
    fn add(&mut self, field: &str, m: &Member) -> Result<(), PolicyError> {
        if let Some(k) = self.by_person.get(&m.person) {
            if *k != m.pubkey {
                return Err(PolicyError::KeyConflict {
                    field: field.to_owned(),
                    person: m.person.clone(),
                });
            }
            return Ok(());
        }
        let kb = m.pubkey.serialize();
        if let Some(other) = self.by_key.get(&kb) {
            return Err(PolicyError::SharedKey {
                field: field.to_owned(),
                person: m.person.clone(),
                other: other.clone(),
            });
        }
        self.by_person.insert(m.person.clone(), m.pubkey);
        self.by_key.insert(kb, m.person.clone());
        Ok(())
    }
}

fn validate_group(
    field: &str,
    name: &str,
    k: u32,
    raw: &[RawMember],
    keys: &mut KeyRegistry,
) -> Result<Group, PolicyError> {
    if raw.is_empty() {
        return Err(PolicyError::Empty {
            field: format!("{field}.members"),
        });
    }
    if raw.len() > MAX_MEMBERS {
        return Err(PolicyError::TooManyMembers {
            field: format!("{field}.members"),
            max: MAX_MEMBERS,
        });
    }
    if k == 0 || k as usize > raw.len() {
        return Err(PolicyError::BadThreshold {
            field: format!("{field}.k"),
            k,
            n: raw.len(),
        });
    }
    let mut members = Vec::with_capacity(raw.len());
    let mut seen = BTreeSet::new();
    for (i, m) in raw.iter().enumerate() {
        let mf = format!("{field}.members[{i}]");
        check_name(&format!("{mf}.person"), &m.person)?;
        if !seen.insert(m.person.as_str()) {
            return Err(PolicyError::DuplicatePerson {
                field: mf,
                person: m.person.clone(),
            });
        }
        let member = Member {
            person: m.person.clone(),
            pubkey: parse_key(&format!("{mf}.pubkey"), &m.pubkey)?,
        };
        keys.add(&format!("{mf}.pubkey"), &member)?;
        members.push(member);
    }
    members.sort();
    Ok(Group {
        name: name.to_owned(),
        k,
        members,
    })
}

fn resolve_alternative(
    field: &str,
    refs: &[RawGroupRef],
    groups: &[Group],
) -> Result<Vec<GroupRequirement>, PolicyError> {
    if refs.is_empty() {
        return Err(PolicyError::Empty {
            field: field.to_owned(),
        });
    }
    let mut out: Vec<GroupRequirement> = Vec::with_capacity(refs.len());
    for (i, r) in refs.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let (name, k) = match r {
            RawGroupRef::Name(n) => (n, None),
            RawGroupRef::WithK { group, k } => (group, Some(*k)),
        };
        let Some(g) = groups.iter().find(|g| &g.name == name) else {
            return Err(PolicyError::UnknownGroup {
                field: f,
                group: name.clone(),
            });
        };
        let k = k.unwrap_or(g.k);
        if k == 0 || k as usize > g.members.len() {
            return Err(PolicyError::BadThreshold {
                field: format!("{f}.k"),
                k,
                n: g.members.len(),
            });
        }
        if out.iter().any(|x| &x.group == name) {
            return Err(PolicyError::DuplicateRequirement {
                field: f,
                what: format!("of group \"{name}\""),
            });
        }
        out.push(GroupRequirement {
            group: name.clone(),
            k,
        });
    }
    out.sort();
    Ok(out)
}

/// The address in its normal form (bech32 lower case) and its output script.
fn parse_address(field: &str, address: &str) -> Result<(String, ScriptBuf), PolicyError> {
    Address::<NetworkUnchecked>::from_str(address)
        .map(|a| {
            let a = a.assume_checked();
            (a.to_string(), a.script_pubkey())
        })
        .map_err(|e| PolicyError::BadAddress {
            field: field.to_owned(),
            address: address.to_owned(),
            reason: e.to_string(),
        })
}

impl RawPolicy {
    fn validate(self) -> Result<Policy, PolicyError> {
        if self.name.trim().is_empty() {
            return Err(PolicyError::Empty {
                field: "name".into(),
            });
        }
        check_secs("loosening_delay_secs", self.loosening_delay_secs)?;
        let mut keys = KeyRegistry::default();

        let admins = validate_group(
            "admins",
            "admins",
            self.admins.k,
            &self.admins.members,
            &mut keys,
        )?;

        if self.groups.is_empty() {
            return Err(PolicyError::Empty {
                field: "groups".into(),
            });
        }
        let mut groups: Vec<Group> = Vec::with_capacity(self.groups.len());
        for (i, g) in self.groups.iter().enumerate() {
            let field = format!("groups[{i}]");
            check_name(&format!("{field}.name"), &g.name)?;
            if g.name == "admins" || groups.iter().any(|x| x.name == g.name) {
                return Err(PolicyError::DuplicateGroup {
                    field: format!("{field}.name"),
                    name: g.name.clone(),
                });
            }
            groups.push(validate_group(&field, &g.name, g.k, &g.members, &mut keys)?);
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));

        if self.tiers.is_empty() {
            return Err(PolicyError::Empty {
                field: "tiers".into(),
            });
        }
        let mut tiers: Vec<Tier> = Vec::with_capacity(self.tiers.len());
        let last = self.tiers.len() - 1;
        for (i, t) in self.tiers.iter().enumerate() {
            let field = format!("tiers[{i}]");
            let name = t.name.clone().unwrap_or_else(|| format!("tier {i}"));
            if t.name.is_some() {
                check_name(&format!("{field}.name"), &name)?;
            }
            match (t.up_to_sat, i == last) {
                (None, false) => {
                    return Err(PolicyError::TiersNotCovering {
                        field: format!("{field}.up_to_sat"),
                        problem: "only the last tier may be unbounded".into(),
                    })
                }
                (Some(_), true) => {
                    return Err(PolicyError::TiersNotCovering {
                        field: format!("{field}.up_to_sat"),
                        problem: "the last tier must be unbounded (omit up_to_sat) so every \
                                  amount has a tier"
                            .into(),
                    })
                }
                _ => {}
            }
            if let (Some(up), Some(prev)) = (t.up_to_sat, tiers.last().and_then(|p| p.up_to)) {
                if Amount::from_sat(up) <= prev {
                    return Err(PolicyError::TiersNotAscending {
                        field: format!("{field}.up_to_sat"),
                    });
                }
            }
            check_secs(&format!("{field}.delay_secs"), t.delay_secs)?;
            let alternatives = match (&t.require, &t.any_of) {
                (Some(req), None) => {
                    vec![resolve_alternative(
                        &format!("{field}.require"),
                        req,
                        &groups,
                    )?]
                }
                (None, Some(any)) => {
                    if any.is_empty() {
                        return Err(PolicyError::Empty {
                            field: format!("{field}.any_of"),
                        });
                    }
                    let mut alts: Vec<Vec<GroupRequirement>> = Vec::with_capacity(any.len());
                    for (j, a) in any.iter().enumerate() {
                        let af = format!("{field}.any_of[{j}]");
                        let alt = resolve_alternative(&af, a, &groups)?;
                        if alts.contains(&alt) {
                            return Err(PolicyError::DuplicateRequirement {
                                field: af,
                                what: "alternative".into(),
                            });
                        }
                        alts.push(alt);
                    }
                    alts.sort();
                    alts
                }
                _ => return Err(PolicyError::RequirementForm { field }),
            };
            tiers.push(Tier {
                name,
                up_to: t.up_to_sat.map(Amount::from_sat),
                requirement: Requirement { alternatives },
                delay_secs: t.delay_secs,
                allowlist_only: t.allowlist_only,
            });
        }

        let mut allowlist: Vec<AllowlistEntry> = Vec::with_capacity(self.allowlist.len());
        for (i, a) in self.allowlist.iter().enumerate() {
            let field = format!("allowlist[{i}]");
            if a.label.trim().is_empty() {
                return Err(PolicyError::Empty {
                    field: format!("{field}.label"),
                });
            }
            let (address, script_pubkey) = parse_address(&format!("{field}.address"), &a.address)?;
            if allowlist.iter().any(|x| x.script_pubkey == script_pubkey) {
                return Err(PolicyError::DuplicateEntry {
                    field: format!("{field}.address"),
                    what: format!("address \"{}\"", a.address),
                });
            }
            if allowlist.iter().any(|x| x.label == a.label) {
                return Err(PolicyError::DuplicateEntry {
                    field: format!("{field}.label"),
                    what: format!("label \"{}\"", a.label),
                });
            }
            allowlist.push(AllowlistEntry {
                label: a.label.clone(),
                address,
                script_pubkey,
            });
        }
        allowlist.sort_by(|a, b| a.script_pubkey.cmp(&b.script_pubkey));

        let mut velocity: Vec<VelocityLimit> = Vec::with_capacity(self.velocity.len());
        for (i, v) in self.velocity.iter().enumerate() {
            let field = format!("velocity[{i}]");
            if v.window_secs == 0 {
                return Err(PolicyError::Zero {
                    field: format!("{field}.window_secs"),
                });
            }
            check_secs(&format!("{field}.window_secs"), v.window_secs)?;
            if velocity.iter().any(|x| x.window_secs == v.window_secs) {
                return Err(PolicyError::DuplicateEntry {
                    field: format!("{field}.window_secs"),
                    what: format!("window {} s", v.window_secs),
                });
            }
            velocity.push(VelocityLimit {
                window_secs: v.window_secs,
                max: Amount::from_sat(v.max_sat),
            });
        }
        velocity.sort();

        if self.fees.max_fee_rate_sat_vb == 0 {
            return Err(PolicyError::Zero {
                field: "fees.max_fee_rate_sat_vb".into(),
            });
        }
        // Keeps sat/vB -> sat/kwu conversions exact.
        let max_rate = u64::MAX / 250;
        if self.fees.max_fee_rate_sat_vb > max_rate {
            return Err(PolicyError::TooLarge {
                field: "fees.max_fee_rate_sat_vb".into(),
                value: self.fees.max_fee_rate_sat_vb,
                max: max_rate,
            });
        }
        let fees = FeeRules {
            max_fee: Amount::from_sat(self.fees.max_fee_sat),
            max_fee_rate_sat_vb: self.fees.max_fee_rate_sat_vb,
            fee_rate_band_percent: self.fees.fee_rate_band_percent,
        };

        if self.approvals.max_age_secs == 0 {
            return Err(PolicyError::Zero {
                field: "approvals.max_age_secs".into(),
            });
        }
        check_secs("approvals.max_age_secs", self.approvals.max_age_secs)?;
        if self.approvals.max_age_blocks == Some(0) {
            return Err(PolicyError::Zero {
                field: "approvals.max_age_blocks".into(),
            });
        }
        let approvals = ApprovalRules {
            max_age_secs: self.approvals.max_age_secs,
            max_age_blocks: self.approvals.max_age_blocks,
        };

        if !groups.iter().any(|g| g.name == self.proof_quorum) {
            return Err(PolicyError::UnknownGroup {
                field: "proof_quorum".into(),
                group: self.proof_quorum.clone(),
            });
        }

        let mut policy = Policy {
            version: self.version,
            name: self.name,
            groups,
            admins,
            tiers,
            allowlist,
            velocity,
            fees,
            approvals,
            proof_quorum: self.proof_quorum,
            loosening_delay_secs: self.loosening_delay_secs,
            keys: keys.by_person,
            hash: PolicyHash([0; 32]),
        };
        policy.hash = policy_hash(&policy);
        Ok(policy)
    }
}
