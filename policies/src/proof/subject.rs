//! The subject officers approve for a reserve proof: [`ProofSubject`].
//!
//! Why a subject of its own (and not a spend [`crate::ApprovalSubject`]): a spend subject binds
//! one transaction (txid, inputs in order, outputs, fee). A reserve proof exists in two forms
//! over the same UTXOs and the same message: the BIP-127 proof transaction and the BIP-322
//! proof-of-funds `to_sign` transaction. Their txids, their input 0 and their outputs differ,
//! yet officers decide one thing: "prove these coins, under this message, for this request,
//! until then". So the proof subject binds only what both forms share and what the decision is
//! about, and one set of approvals covers both forms:
//!
//! - the network (its magic bytes);
//! - the message's commitment, SHA-256 of `"Proof-of-Reserves: " ‖ message` (the message binds
//!   block H and its hash, the vaults' descriptor checksums and the signed ledger checkpoint);
//! - a digest of the **sorted set** of real outpoints (order-free: the forms may order inputs
//!   differently), tagged [`OUTPOINTS_TAG`];
//! - the proven amount (the sum of the real inputs);
//! - the proof request id, the policy version and the decision;
//! - an expiry (Unix milliseconds).
//!
//! The policy signer re-derives the subject from the PSBT alone
//! ([`ProofSubject::from_bip127_psbt`]): message, outpoints and amount from the transaction and
//! its input maps, the request id and expiry from two proprietary global PSBT fields
//! ([`ProofTerms`], prefix [`TERMS_PREFIX`]) written when the proof is requested, and the policy
//! hash from its own active policy. Nothing comes from the service's word.
//!
//! The digest is the hashcore tagged hash (tag [`PROOF_SUBJECT_TAG`], distinct from the spend
//! approval tag, so a proof approval can never count as a spend approval) of
//! [`ProofSubject::canonical_bytes`]; [`ProofSubject::from_canonical_bytes`] parses it back
//! strictly. Approvals are the ordinary [`Approval`] type, signed with [`ProofSubject::sign`]
//! and checked with [`verify_proof_approval`].

use std::collections::BTreeSet;

use bitcoin::hashes::Hash as _;
use bitcoin::p2p::Magic;
use bitcoin::psbt::raw::ProprietaryKey;
use bitcoin::secp256k1::{Keypair, Message, SecretKey};
use bitcoin::{Amount, Network, OutPoint, Psbt};
use serde::{Deserialize, Serialize};

use super::{
    check_proof_shape, commitment_hash, message_network, ProofError, PSBT_IN_POR_COMMITMENT,
};
use crate::approval::{secp, Approval, ApprovalError, Verdict, Verified};
use crate::canonical::PolicyHash;
use crate::encode::{amount_sat, hex_array, Encoder};
use crate::model::Policy;

/// The tag of the proof subject digest.
pub const PROOF_SUBJECT_TAG: &str = "strategic-reserve/proof-approval/v1";

/// The tag of the digest of the sorted outpoint set.
pub const OUTPOINTS_TAG: &str = "strategic-reserve/proof-outpoints/v1";

/// The prefix of the proprietary global PSBT fields carrying the [`ProofTerms`].
pub const TERMS_PREFIX: &[u8] = b"strategic-reserve";

/// Proprietary subtype of the proof request id (value: UTF-8).
pub const TERMS_SUBTYPE_REQUEST: u8 = 0x01;

/// Proprietary subtype of the approval expiry (value: `i64` big-endian Unix milliseconds).
pub const TERMS_SUBTYPE_EXPIRY: u8 = 0x02;

/// The canonical encoding's version byte.
const VERSION: u8 = 1;

/// The longest request id a subject carries.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Why a proof subject could not be built, parsed or matched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// The PSBT is not a well-formed proof.
    #[error("not a well-formed reserve proof: {0}")]
    Proof(#[from] ProofError),
    /// The PSBT's proof terms (request id, expiry) are missing or malformed.
    #[error("proof terms: {0}")]
    Terms(String),
    /// A proof proves at least one UTXO.
    #[error("a proof subject needs at least one outpoint")]
    NoOutpoints,
    /// The same outpoint twice.
    #[error("outpoint {0} appears twice")]
    DuplicateOutpoint(OutPoint),
    /// The request id is empty, too long or not printable ASCII.
    #[error("invalid request id: {0}")]
    RequestId(String),
    /// The amount is above the 21 million BTC supply.
    #[error("amount {0} sat is above the bitcoin supply")]
    Amount(u64),
    /// The canonical bytes do not parse.
    #[error("invalid proof subject encoding: {0}")]
    Encoding(String),
    /// A subject document does not match what it claims (its message, outpoints or amount).
    #[error("the proof subject does not match its {0}")]
    Mismatch(&'static str),
}

/// The terms of a proof request carried in the PSBT (proprietary global fields, prefix
/// [`TERMS_PREFIX`]): both forms of a proof carry the same terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofTerms {
    /// The proof request id.
    pub request_id: String,
    /// Approvals of the proof are valid while `now_ms < expires_at_ms` (Unix milliseconds).
    pub expires_at_ms: i64,
}

fn terms_key(subtype: u8) -> ProprietaryKey {
    ProprietaryKey {
        prefix: TERMS_PREFIX.to_vec(),
        subtype,
        key: Vec::new(),
    }
}

impl ProofTerms {
    /// Reads the terms from `psbt`'s proprietary global fields: exactly one request id (valid,
    /// see [`check_request_id`]) and one 8-byte expiry, no other field under the prefix.
    ///
    /// # Errors
    /// [`SubjectError::Terms`] naming what is missing, repeated or malformed.
    pub fn from_psbt(psbt: &Psbt) -> Result<Self, SubjectError> {
        let mut request = None;
        let mut expiry = None;
        for (k, v) in &psbt.proprietary {
            if k.prefix != TERMS_PREFIX {
                continue;
            }
            if !k.key.is_empty() {
                return Err(SubjectError::Terms(format!(
                    "field {:#04x} has a non-empty key",
                    k.subtype
                )));
            }
            match k.subtype {
                TERMS_SUBTYPE_REQUEST => {
                    let id = std::str::from_utf8(v)
                        .map_err(|_| SubjectError::Terms("the request id is not utf-8".into()))?;
                    check_request_id(id)?;
                    request = Some(id.to_owned());
                }
                TERMS_SUBTYPE_EXPIRY => {
                    let bytes: [u8; 8] = v
                        .as_slice()
                        .try_into()
                        .map_err(|_| SubjectError::Terms("the expiry is not 8 bytes".into()))?;
                    expiry = Some(i64::from_be_bytes(bytes));
                }
                other => {
                    return Err(SubjectError::Terms(format!(
                        "unknown field subtype {other:#04x}"
                    )))
                }
            }
        }
        Ok(ProofTerms {
            request_id: request
                .ok_or_else(|| SubjectError::Terms("the psbt carries no request id".into()))?,
            expires_at_ms: expiry
                .ok_or_else(|| SubjectError::Terms("the psbt carries no expiry".into()))?,
        })
    }

    /// Writes the terms into `psbt` (replacing any terms it carried). The transaction, and so
    /// its txid, is unchanged.
    ///
    /// # Errors
    /// [`SubjectError::RequestId`] for an invalid request id.
    pub fn write_to(&self, psbt: &mut Psbt) -> Result<(), SubjectError> {
        check_request_id(&self.request_id)?;
        psbt.proprietary.retain(|k, _| k.prefix != TERMS_PREFIX);
        psbt.proprietary.insert(
            terms_key(TERMS_SUBTYPE_REQUEST),
            self.request_id.as_bytes().to_vec(),
        );
        psbt.proprietary.insert(
            terms_key(TERMS_SUBTYPE_EXPIRY),
            self.expires_at_ms.to_be_bytes().to_vec(),
        );
        Ok(())
    }
}

/// Checks a request id: 1 to [`MAX_REQUEST_ID_LEN`] bytes of printable ASCII without spaces.
///
/// # Errors
/// [`SubjectError::RequestId`].
pub fn check_request_id(id: &str) -> Result<(), SubjectError> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
        return Err(SubjectError::RequestId(format!(
            "{} bytes, must be 1 to {MAX_REQUEST_ID_LEN}",
            id.len()
        )));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SubjectError::RequestId(
            "only printable ascii without spaces".into(),
        ));
    }
    Ok(())
}

/// The digest of a set of outpoints: tagged hash ([`OUTPOINTS_TAG`]) of the count (`u64`) and
/// each outpoint (txid bytes in internal order, vout `u32` big-endian) in ascending order.
///
/// # Errors
/// [`SubjectError::NoOutpoints`] for an empty set, [`SubjectError::DuplicateOutpoint`].
pub fn outpoints_digest(
    outpoints: impl IntoIterator<Item = OutPoint>,
) -> Result<[u8; 32], SubjectError> {
    let mut set = BTreeSet::new();
    for op in outpoints {
        if !set.insert(op) {
            return Err(SubjectError::DuplicateOutpoint(op));
        }
    }
    if set.is_empty() {
        return Err(SubjectError::NoOutpoints);
    }
    let mut e = Encoder::new();
    e.len(set.len());
    for op in &set {
        e.fixed(op.txid.as_byte_array()).u32(op.vout);
    }
    Ok(hashcore::TaggedHash::new(OUTPOINTS_TAG).hash(&e.finish()))
}

/// Exactly what one approval of a reserve proof binds to (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofSubject {
    /// The network the proof is for (its name in JSON).
    #[serde(with = "network_name")]
    pub network: Network,
    /// SHA-256 of `"Proof-of-Reserves: " ‖ message`.
    #[serde(with = "hex_array")]
    pub commitment: [u8; 32],
    /// [`outpoints_digest`] of the real outpoints.
    #[serde(with = "hex_array")]
    pub outpoints: [u8; 32],
    /// The proven amount (the sum of the real inputs), satoshis in JSON.
    #[serde(with = "amount_sat")]
    pub amount: Amount,
    /// The proof request id.
    pub request_id: String,
    /// The policy version the approvals are given under.
    pub policy: PolicyHash,
    /// Approve or reject.
    pub decision: Verdict,
    /// The approval is valid while `now_ms < expires_at_ms` (Unix milliseconds).
    pub expires_at_ms: i64,
}

impl ProofSubject {
    /// A subject (decision approve) from its parts: the message (hashed into the commitment),
    /// the real outpoints (any order), the proven amount, the request's terms and the policy.
    ///
    /// # Errors
    /// [`SubjectError::NoOutpoints`], [`SubjectError::DuplicateOutpoint`],
    /// [`SubjectError::RequestId`], [`SubjectError::Amount`].
    pub fn new(
        network: Network,
        message: &[u8],
        outpoints: impl IntoIterator<Item = OutPoint>,
        amount: Amount,
        terms: &ProofTerms,
        policy: PolicyHash,
    ) -> Result<Self, SubjectError> {
        Self::from_digests(
            network,
            commitment_hash(message),
            outpoints_digest(outpoints)?,
            amount,
            terms,
            policy,
        )
    }

    /// A subject (decision approve) from the commitment and outpoint digests directly.
    ///
    /// # Errors
    /// [`SubjectError::RequestId`], [`SubjectError::Amount`].
    pub fn from_digests(
        network: Network,
        commitment: [u8; 32],
        outpoints: [u8; 32],
        amount: Amount,
        terms: &ProofTerms,
        policy: PolicyHash,
    ) -> Result<Self, SubjectError> {
        check_request_id(&terms.request_id)?;
        if amount > Amount::MAX_MONEY {
            return Err(SubjectError::Amount(amount.to_sat()));
        }
        Ok(ProofSubject {
            network,
            commitment,
            outpoints,
            amount,
            request_id: terms.request_id.clone(),
            policy,
            decision: Verdict::Approve,
            expires_at_ms: terms.expires_at_ms,
        })
    }

    /// Re-derives the subject from a BIP-127 proof PSBT alone, under `policy` (the verifier's
    /// own active policy): the message from input 0's `PSBT_IN_POR_COMMITMENT` field (and its
    /// network from the message's header), the full shape ([`check_proof_shape`], which also
    /// gives the amount), the outpoints of inputs 1.., and the [`ProofTerms`].
    ///
    /// # Errors
    /// [`SubjectError::Proof`] for a PSBT that is not a well-formed proof,
    /// [`SubjectError::Terms`] for missing or malformed terms.
    pub fn from_bip127_psbt(psbt: &Psbt, policy: PolicyHash) -> Result<Self, SubjectError> {
        let message = psbt
            .inputs
            .first()
            .and_then(|i| {
                i.unknown
                    .iter()
                    .find(|(k, _)| k.type_value == PSBT_IN_POR_COMMITMENT)
                    .map(|(_, v)| v.as_slice())
            })
            .ok_or(ProofError::MissingCommitmentField)?;
        let network = message_network(message)?;
        let amount = check_proof_shape(psbt, message)?;
        let terms = ProofTerms::from_psbt(psbt)?;
        let outpoints = psbt
            .unsigned_tx
            .input
            .iter()
            .skip(1)
            .map(|i| i.previous_output);
        Self::new(network, message, outpoints, amount, &terms, policy)
    }

    /// The same subject with another decision.
    pub fn with_decision(&self, decision: Verdict) -> Self {
        ProofSubject {
            decision,
            ..self.clone()
        }
    }

    /// The canonical encoding (preimage of [`ProofSubject::digest`] after the tag): a version
    /// byte (1), the network magic (4 bytes), the commitment (32), the outpoints digest (32),
    /// the amount (`u64` satoshis), the request id (`u64` length + UTF-8), the policy hash (32),
    /// the decision (1 approve, 2 reject), the expiry (`i64`); integers big-endian.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(VERSION).fixed(&self.network.magic().to_bytes());
        e.fixed(&self.commitment).fixed(&self.outpoints);
        e.u64(self.amount.to_sat()).str(&self.request_id);
        e.fixed(&self.policy.0);
        e.u8(match self.decision {
            Verdict::Approve => 1,
            Verdict::Reject => 2,
        });
        e.i64(self.expires_at_ms);
        e.finish()
    }

    /// Parses [`ProofSubject::canonical_bytes`] strictly: the version, a known network magic,
    /// an amount within the supply, a valid request id, a known decision, nothing after the
    /// expiry.
    ///
    /// # Errors
    /// [`SubjectError::Encoding`] naming the field, [`SubjectError::RequestId`],
    /// [`SubjectError::Amount`].
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<Self, SubjectError> {
        let mut r = Reader(bytes);
        let version = r.take::<1>("version")?[0];
        if version != VERSION {
            return Err(SubjectError::Encoding(format!("unknown version {version}")));
        }
        let magic = Magic::from_bytes(r.take::<4>("network")?);
        let network = Network::from_magic(magic)
            .ok_or_else(|| SubjectError::Encoding(format!("unknown network magic {magic}")))?;
        let commitment = r.take::<32>("commitment")?;
        let outpoints = r.take::<32>("outpoints")?;
        let sat = u64::from_be_bytes(r.take::<8>("amount")?);
        let amount = Amount::from_sat(sat);
        if amount > Amount::MAX_MONEY {
            return Err(SubjectError::Amount(sat));
        }
        let len = u64::from_be_bytes(r.take::<8>("request id length")?);
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_REQUEST_ID_LEN)
            .ok_or_else(|| SubjectError::RequestId(format!("{len} bytes")))?;
        let id = std::str::from_utf8(r.slice(len, "request id")?)
            .map_err(|_| SubjectError::RequestId("not utf-8".into()))?
            .to_owned();
        check_request_id(&id)?;
        let policy = PolicyHash(r.take::<32>("policy")?);
        let decision = match r.take::<1>("decision")?[0] {
            1 => Verdict::Approve,
            2 => Verdict::Reject,
            d => return Err(SubjectError::Encoding(format!("unknown decision {d}"))),
        };
        let expires_at_ms = i64::from_be_bytes(r.take::<8>("expiry")?);
        if !r.0.is_empty() {
            return Err(SubjectError::Encoding(format!(
                "{} bytes after the expiry",
                r.0.len()
            )));
        }
        Ok(ProofSubject {
            network,
            commitment,
            outpoints,
            amount,
            request_id: id,
            policy,
            decision,
            expires_at_ms,
        })
    }

    /// The digest an approver signs.
    pub fn digest(&self) -> [u8; 32] {
        hashcore::TaggedHash::new(PROOF_SUBJECT_TAG).hash(&self.canonical_bytes())
    }

    /// Signs the subject as `approver` with `secret` (BIP-340, deterministic).
    pub fn sign(&self, approver: &str, secret: &SecretKey) -> Approval {
        let keypair = Keypair::from_secret_key(secp(), secret);
        let digest = self.digest();
        let sig = secp().sign_schnorr_no_aux_rand(&Message::from_digest(digest), &keypair);
        Approval {
            request_id: self.request_id.clone(),
            approver: approver.to_owned(),
            pubkey: keypair.x_only_public_key().0.serialize(),
            decision: self.decision,
            digest,
            signature: sig.serialize(),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn slice(&mut self, n: usize, what: &str) -> Result<&'a [u8], SubjectError> {
        if self.0.len() < n {
            return Err(SubjectError::Encoding(format!("truncated at the {what}")));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], SubjectError> {
        let s = self.slice(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }
}

/// What an officer reviews offline before approving a proof: the subject with the message and
/// the outpoints it was derived from, so the reviewer can read the message (block H, its hash,
/// the descriptor checksums, the ledger checkpoint) and recompute every digest
/// ([`ProofSubjectDocument::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofSubjectDocument {
    /// Always `"reserve_proof"` (tells the officer tools this is not a spend subject).
    pub kind: String,
    /// The subject to sign.
    pub subject: ProofSubject,
    /// The proof message (UTF-8 text).
    pub message: String,
    /// The real outpoints, ascending (`txid:vout` in JSON).
    #[serde(with = "outpoint_list")]
    pub outpoints: Vec<OutPoint>,
}

/// The `kind` of a [`ProofSubjectDocument`].
pub const DOCUMENT_KIND: &str = "reserve_proof";

impl ProofSubjectDocument {
    /// The document of `subject`, built from the message and outpoints it was derived from.
    pub fn new(
        subject: ProofSubject,
        message: String,
        outpoints: impl IntoIterator<Item = OutPoint>,
    ) -> Self {
        let set: BTreeSet<OutPoint> = outpoints.into_iter().collect();
        ProofSubjectDocument {
            kind: DOCUMENT_KIND.to_owned(),
            subject,
            message,
            outpoints: set.into_iter().collect(),
        }
    }

    /// Recomputes the commitment from the message, the network from its header and the
    /// outpoints digest from the list, and compares each with the subject's. Returns the
    /// subject when all match.
    ///
    /// # Errors
    /// [`SubjectError::Mismatch`] naming what differs, [`SubjectError::Proof`] for a message
    /// without a valid header, the errors of [`outpoints_digest`].
    pub fn check(&self) -> Result<&ProofSubject, SubjectError> {
        if self.kind != DOCUMENT_KIND {
            return Err(SubjectError::Mismatch("kind"));
        }
        if message_network(self.message.as_bytes())? != self.subject.network {
            return Err(SubjectError::Mismatch("message's network"));
        }
        if commitment_hash(self.message.as_bytes()) != self.subject.commitment {
            return Err(SubjectError::Mismatch("message"));
        }
        if outpoints_digest(self.outpoints.iter().copied())? != self.subject.outpoints {
            return Err(SubjectError::Mismatch("outpoints"));
        }
        check_request_id(&self.subject.request_id)?;
        Ok(&self.subject)
    }
}

/// Verifies `approval` for `subject` under `policy` at time `now_ms`: the key is a key of the
/// policy and of the person named, the approval names the subject's request, the subject is
/// bound to `policy`, the decision and digest are the subject's, the BIP-340 signature
/// verifies, and `now_ms < expires_at_ms`. (Group membership and the quorum are the
/// evaluation's: [`crate::evaluate::evaluate_proof`].)
///
/// # Errors
/// The [`ApprovalError`] naming the first failed check.
pub fn verify_proof_approval(
    policy: &Policy,
    subject: &ProofSubject,
    approval: &Approval,
    now_ms: i64,
) -> Result<Verified, ApprovalError> {
    crate::approval::verify_terms(
        policy,
        &crate::approval::Terms {
            request_id: &subject.request_id,
            policy: subject.policy,
            decision: subject.decision,
            digest: subject.digest(),
            expires_at_ms: subject.expires_at_ms,
        },
        approval,
        now_ms,
    )
}

/// A network as its name (`bitcoin`, `testnet`, `signet`, `regtest`) in serde formats.
mod network_name {
    use std::str::FromStr;

    use bitcoin::Network;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Network, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        let s = String::deserialize(d)?;
        Network::from_str(&s).map_err(D::Error::custom)
    }
}

/// Outpoints as `txid:vout` strings in serde formats.
mod outpoint_list {
    use std::str::FromStr;

    use bitcoin::OutPoint;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[OutPoint], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(ToString::to_string))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OutPoint>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| OutPoint::from_str(s).map_err(D::Error::custom))
            .collect()
    }
}
