//! Offline verification for auditors: a JSON lines export of the entries, a signed checkpoint
//! note and the log's verifier key are enough to check the chain, the Merkle root and the
//! signature; inclusion and consistency proofs are checked against checkpoints the same way.
//!
//! Export format: one JSON object per line, in seq order:
//! `{"seq":0,"time_ms":1764057600000,"kind":"operator_note","actor":"alice",
//! "payload_type":"note","payload":"<hex>","prev_hash":"<hex>","entry_hash":"<hex>"}`.

use hashcore::merkle::rfc9162::{ConsistencyProof, InclusionProof, MerkleError};
use hashcore::Digest;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::chain::{ChainError, ChainFault, ChainVerifier};
use super::checkpoint::{Checkpoint, CheckpointError, VerifierKey};
use super::entry::{Actor, Entry, Kind, Payload, PayloadType};
use super::log::entry_leaf_hash;

/// Errors of offline verification.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuditError {
    /// A line of the export is malformed.
    #[error("export line {line}: {reason}")]
    Export {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A JSON document (proof, entry) is malformed.
    #[error("malformed {what}: {reason}")]
    Json {
        /// What was being read.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The chain is broken.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The checkpoint does not parse or verify.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The export ends before the checkpoint's size: entries were deleted.
    #[error("the checkpoint covers {size} entries but the export has only {entries}: first bad seq {entries}: missing (deleted tail)")]
    Truncated {
        /// The checkpoint's tree size.
        size: u64,
        /// Entries in the export.
        entries: u64,
    },
    /// The entries' root at the checkpoint's size is not the signed root.
    #[error("root of the first {size} entries is {computed}, the checkpoint signs {signed}")]
    RootMismatch {
        /// The checkpoint's tree size.
        size: u64,
        /// The computed root, hex.
        computed: String,
        /// The signed root, hex.
        signed: String,
    },
    /// A proof does not fit the entry or checkpoints it is checked against.
    #[error("proof mismatch: {0}")]
    ProofMismatch(String),
    /// A proof does not verify.
    #[error("proof does not verify: {0}")]
    ProofFailed(#[from] MerkleError),
}

/// An entry as one line of a JSON lines export (digests and payload in lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryJson {
    /// Sequence number.
    pub seq: u64,
    /// Unix time, milliseconds.
    pub time_ms: i64,
    /// Kind name ([`Kind::name`]).
    pub kind: String,
    /// Actor.
    pub actor: String,
    /// Payload type name ([`PayloadType::name`]).
    pub payload_type: String,
    /// Payload bytes, hex.
    pub payload: String,
    /// Previous entry hash, hex.
    pub prev_hash: String,
    /// Entry hash, hex.
    pub entry_hash: String,
}

impl From<&Entry> for EntryJson {
    fn from(e: &Entry) -> Self {
        EntryJson {
            seq: e.seq(),
            time_ms: e.time_ms(),
            kind: e.kind().name().to_owned(),
            actor: e.actor().as_str().to_owned(),
            payload_type: e.payload().payload_type().name().to_owned(),
            payload: hex::encode(e.payload().as_bytes()),
            prev_hash: hex::encode(e.prev_hash()),
            entry_hash: hex::encode(e.entry_hash()),
        }
    }
}

fn digest_hex(s: &str, field: &str) -> Result<Digest, String> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(s, &mut d).map_err(|_| format!("{field} is not 64 hex digits"))?;
    Ok(d)
}

impl EntryJson {
    /// The entry (its stored hash kept as is, for the chain verifier to check).
    ///
    /// # Errors
    /// A description of the first bad field.
    pub fn to_entry(&self) -> Result<Entry, String> {
        let kind =
            Kind::from_name(&self.kind).ok_or_else(|| format!("unknown kind {:?}", self.kind))?;
        let ty = PayloadType::from_name(&self.payload_type)
            .ok_or_else(|| format!("unknown payload type {:?}", self.payload_type))?;
        let actor = Actor::new(self.actor.clone()).map_err(|e| e.to_string())?;
        let bytes = hex::decode(&self.payload).map_err(|_| "payload is not hex".to_owned())?;
        let payload = Payload::new(ty, bytes).map_err(|e| e.to_string())?;
        Entry::from_stored(
            self.seq,
            self.time_ms,
            kind,
            actor,
            payload,
            digest_hex(&self.prev_hash, "prev_hash")?,
            digest_hex(&self.entry_hash, "entry_hash")?,
        )
        .map_err(|e| e.to_string())
    }
}

/// One export line (no newline) for an entry.
pub fn to_json_line(entry: &Entry) -> String {
    // Serializing plain strings and integers cannot fail.
    serde_json::to_string(&EntryJson::from(entry)).unwrap_or_default()
}

/// Parses a JSON lines export (blank lines are skipped).
///
/// # Errors
/// [`AuditError::Export`] naming the first bad line.
pub fn parse_json_lines(text: &str) -> Result<Vec<Entry>, AuditError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| AuditError::Export {
            line: i + 1,
            reason,
        };
        let json: EntryJson = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        out.push(json.to_entry().map_err(bad)?);
    }
    Ok(out)
}

/// The result of a successful audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries checked.
    pub entries: u64,
    /// The root of all entries checked.
    pub root: Digest,
    /// The verified checkpoint.
    pub checkpoint: Checkpoint,
    /// Checkpoint entries inside the log that were verified too.
    pub embedded_checkpoints: usize,
}

impl core::fmt::Display for AuditReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "ok: {} entries, root {}",
            self.entries,
            hex::encode(self.root)
        )
    }
}

/// Verifies a log against a signed checkpoint: the checkpoint's signature by `key` (and origin
/// = key name), the chain of every entry (with the checkpoints embedded in it), and that the
/// first `size` entries have the signed root. Entries after the checkpoint's size are checked
/// as a chain too.
///
/// # Errors
/// [`AuditError::Checkpoint`], [`AuditError::Chain`] (first bad seq), [`AuditError::Truncated`]
/// or [`AuditError::RootMismatch`].
pub fn audit_ledger<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    checkpoint_note: &str,
    key: &VerifierKey,
) -> Result<AuditReport, AuditError> {
    let cp = key.verify(checkpoint_note)?;
    let mut v = ChainVerifier::new(Some(key.clone()));
    let mut root_at_size = (cp.size() == 0).then(|| v.head().root());
    for e in entries {
        v.push(e)?;
        if v.head().size() == cp.size() {
            root_at_size = Some(v.head().root());
        }
    }
    let log = v.finish();
    let Some(root) = root_at_size else {
        return Err(AuditError::Truncated {
            size: cp.size(),
            entries: log.head.size(),
        });
    };
    if &root != cp.root() {
        return Err(AuditError::RootMismatch {
            size: cp.size(),
            computed: hex::encode(root),
            signed: hex::encode(cp.root()),
        });
    }
    Ok(AuditReport {
        entries: log.head.size(),
        root: log.head.root(),
        checkpoint: cp,
        embedded_checkpoints: log.checkpoints.len(),
    })
}

/// An inclusion proof as JSON (digests in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProofJson {
    /// The entry's seq (the leaf index).
    pub seq: u64,
    /// The tree size the proof is for.
    pub tree_size: u64,
    /// The entry hash, hex.
    pub entry_hash: String,
    /// The audit path, hex, leaf to root.
    pub path: Vec<String>,
}

/// A consistency proof as JSON (digests in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProofJson {
    /// The old tree size.
    pub old_size: u64,
    /// The new tree size.
    pub new_size: u64,
    /// The proof path, hex.
    pub path: Vec<String>,
}

fn path_hex(path: &[Digest]) -> Vec<String> {
    path.iter().map(hex::encode).collect()
}

fn path_from_hex(path: &[String], what: &'static str) -> Result<Vec<Digest>, AuditError> {
    path.iter()
        .map(|h| digest_hex(h, "path element"))
        .collect::<Result<_, _>>()
        .map_err(|reason| AuditError::Json { what, reason })
}

impl InclusionProofJson {
    /// The JSON form of a proof for the entry with hash `entry_hash`.
    pub fn new(proof: &InclusionProof, entry_hash: &Digest) -> Self {
        InclusionProofJson {
            seq: proof.leaf_index,
            tree_size: proof.tree_size,
            entry_hash: hex::encode(entry_hash),
            path: path_hex(&proof.path),
        }
    }

    /// Parses the JSON text.
    ///
    /// # Errors
    /// [`AuditError::Json`].
    pub fn parse(text: &str) -> Result<Self, AuditError> {
        serde_json::from_str(text).map_err(|e| AuditError::Json {
            what: "inclusion proof",
            reason: e.to_string(),
        })
    }

    /// The proof and the entry hash.
    ///
    /// # Errors
    /// [`AuditError::Json`] on bad hex.
    pub fn to_proof(&self) -> Result<(InclusionProof, Digest), AuditError> {
        let entry_hash =
            digest_hex(&self.entry_hash, "entry_hash").map_err(|reason| AuditError::Json {
                what: "inclusion proof",
                reason,
            })?;
        Ok((
            InclusionProof {
                leaf_index: self.seq,
                tree_size: self.tree_size,
                path: path_from_hex(&self.path, "inclusion proof")?,
            },
            entry_hash,
        ))
    }

    /// Pretty JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl ConsistencyProofJson {
    /// The JSON form of a proof.
    pub fn new(proof: &ConsistencyProof) -> Self {
        ConsistencyProofJson {
            old_size: proof.old_size,
            new_size: proof.new_size,
            path: path_hex(&proof.path),
        }
    }

    /// Parses the JSON text.
    ///
    /// # Errors
    /// [`AuditError::Json`].
    pub fn parse(text: &str) -> Result<Self, AuditError> {
        serde_json::from_str(text).map_err(|e| AuditError::Json {
            what: "consistency proof",
            reason: e.to_string(),
        })
    }

    /// The proof.
    ///
    /// # Errors
    /// [`AuditError::Json`] on bad hex.
    pub fn to_proof(&self) -> Result<ConsistencyProof, AuditError> {
        Ok(ConsistencyProof {
            old_size: self.old_size,
            new_size: self.new_size,
            path: path_from_hex(&self.path, "consistency proof")?,
        })
    }

    /// Pretty JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Checks that an entry is in the log a signed checkpoint commits to. When `entry` is given,
/// its content must hash to the proven entry hash and its seq must be the proven index.
///
/// # Errors
/// [`AuditError::Checkpoint`], [`AuditError::ProofMismatch`], [`AuditError::ProofFailed`] or
/// [`AuditError::Chain`] (the entry's content does not match its hash).
pub fn audit_inclusion(
    entry: Option<&Entry>,
    proof: &InclusionProofJson,
    checkpoint_note: &str,
    key: &VerifierKey,
) -> Result<Checkpoint, AuditError> {
    let cp = key.verify(checkpoint_note)?;
    let (proof, entry_hash) = proof.to_proof()?;
    if let Some(e) = entry {
        let computed = e.compute_hash();
        if &computed != e.entry_hash() {
            return Err(AuditError::Chain(ChainError {
                seq: e.seq(),
                fault: ChainFault::HashMismatch {
                    stored: hex::encode(e.entry_hash()),
                    computed: hex::encode(computed),
                },
            }));
        }
        if computed != entry_hash || e.seq() != proof.leaf_index {
            return Err(AuditError::ProofMismatch(format!(
                "the proof is for seq {} with hash {}, the entry is seq {} with hash {}",
                proof.leaf_index,
                hex::encode(entry_hash),
                e.seq(),
                hex::encode(computed)
            )));
        }
    }
    if proof.tree_size != cp.size() {
        return Err(AuditError::ProofMismatch(format!(
            "the proof is for tree size {}, the checkpoint for {}",
            proof.tree_size,
            cp.size()
        )));
    }
    proof.verify(&entry_leaf_hash(&entry_hash), cp.root())?;
    Ok(cp)
}

/// Checks that the log of `old_note` is a prefix of the log of `new_note` (both signed by
/// `key`).
///
/// # Errors
/// [`AuditError::Checkpoint`], [`AuditError::ProofMismatch`] or [`AuditError::ProofFailed`].
pub fn audit_consistency(
    proof: &ConsistencyProofJson,
    old_note: &str,
    new_note: &str,
    key: &VerifierKey,
) -> Result<(Checkpoint, Checkpoint), AuditError> {
    let old = key.verify(old_note)?;
    let new = key.verify(new_note)?;
    let proof = proof.to_proof()?;
    if proof.old_size != old.size() || proof.new_size != new.size() {
        return Err(AuditError::ProofMismatch(format!(
            "the proof is from size {} to {}, the checkpoints are for sizes {} and {}",
            proof.old_size,
            proof.new_size,
            old.size(),
            new.size()
        )));
    }
    proof.verify(old.root(), new.root())?;
    Ok((old, new))
}
