//! The canonical hash of a policy version.
//!
//! The hash covers a canonical byte encoding of the *validated* model, not the TOML text, so
//! whitespace, comments, key order, the order of groups, members, allowlist entries, velocity
//! windows and `any_of` alternatives, and `require = [...]` versus a one-alternative `any_of` make
//! no difference, while any change of a rule does. Encoding (all integers big-endian, strings and
//! lists length-prefixed with a `u64`; see the source of [`policy_hash`] for the field order):
//! version, name, groups (by name; members by person id: id, 32-byte key), admins, tiers (in
//! order: name, bound, alternatives, delay, allowlist flag), allowlist (by output script: script,
//! label), velocity (by window), fees, approval rules, proof quorum, loosening delay.
//! The digest is the hashcore tagged hash with tag [`POLICY_TAG`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::encode::Encoder;
use crate::model::{Group, Policy, Requirement};

/// The tag of the policy hash.
pub const POLICY_TAG: &str = "strategic-reserve/policy/v1";

/// The canonical hash of a policy version. Displays (and serializes) as lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyHash(pub [u8; 32]);

impl fmt::Display for PolicyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy hash must be 64 hex digits: {0}")]
pub struct PolicyHashParseError(String);

impl FromStr for PolicyHash {
    type Err = PolicyHashParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| PolicyHashParseError(e.to_string()))?;
        Ok(PolicyHash(out))
    }
}

impl Serialize for PolicyHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PolicyHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn encode_group(e: &mut Encoder, g: &Group) {
    e.str(&g.name).u32(g.k).len(g.members.len());
    for m in &g.members {
        e.str(&m.person).fixed(&m.pubkey.serialize());
    }
}

fn encode_requirement(e: &mut Encoder, r: &Requirement) {
    e.len(r.alternatives.len());
    for alt in &r.alternatives {
        e.len(alt.len());
        for gr in alt {
            e.str(&gr.group).u32(gr.k);
        }
    }
}

/// The canonical encoding of a validated policy (the preimage of its hash, after the tag).
pub fn canonical_bytes(p: &Policy) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u64(p.version()).str(p.name());
    e.len(p.groups().len());
    for g in p.groups() {
        encode_group(&mut e, g);
    }
    encode_group(&mut e, p.admins());
    e.len(p.tiers().len());
    for t in p.tiers() {
        e.str(&t.name).opt_u64(t.up_to.map(|a| a.to_sat()));
        encode_requirement(&mut e, &t.requirement);
        e.u64(t.delay_secs).bool(t.allowlist_only);
    }
    e.len(p.allowlist().len());
    for a in p.allowlist() {
        e.bytes(a.script_pubkey.as_bytes()).str(&a.label);
    }
    e.len(p.velocity().len());
    for v in p.velocity() {
        e.u64(v.window_secs).u64(v.max.to_sat());
    }
    let f = p.fees();
    e.u64(f.max_fee.to_sat())
        .u64(f.max_fee_rate_sat_vb)
        .opt_u64(f.fee_rate_band_percent.map(u64::from));
    let a = p.approval_rules();
    e.u64(a.max_age_secs)
        .opt_u64(a.max_age_blocks.map(u64::from));
    e.str(p.proof_quorum()).u64(p.loosening_delay_secs());
    e.finish()
}

/// Computes the canonical hash of `p` (also available, cached, as [`Policy::hash`]).
pub fn policy_hash(p: &Policy) -> PolicyHash {
    PolicyHash(hashcore::TaggedHash::new(POLICY_TAG).hash(&canonical_bytes(p)))
}
