//! The Merkle log over the entries (RFC 9162, through `hashcore::merkle::rfc9162`).
//!
//! Leaf `i` is the entry hash of seq `i`: the leaf hash is `SHA-256(0x00 || entry_hash)`, and
//! nodes are `SHA-256(0x01 || left || right)`. Tree heads, inclusion proofs and consistency
//! proofs are those of RFC 9162 section 2.1.

use hashcore::merkle::rfc9162::{self, ConsistencyProof, InclusionProof, MerkleError};
use hashcore::{Digest, Engine};

use thiserror::Error;

use super::entry::Entry;

/// The leaf hash of an entry: `SHA-256(0x00 || entry_hash)`.
pub fn entry_leaf_hash(entry_hash: &Digest) -> Digest {
    rfc9162::leaf_hash(Engine::auto(), entry_hash)
}

/// The leaf hashes of many entry hashes, hashed in batches.
pub fn leaf_hashes(entry_hashes: &[Digest]) -> Vec<Digest> {
    let flat = entry_hashes.concat();
    rfc9162::leaf_hashes_fixed(Engine::auto(), &flat, 32)
        .unwrap_or_else(|_| entry_hashes.iter().map(entry_leaf_hash).collect())
}

/// The leaf hashes of entries, in order (their stored entry hashes; verify the chain first).
pub fn entry_leaf_hashes(entries: &[Entry]) -> Vec<Digest> {
    let hashes: Vec<Digest> = entries.iter().map(|e| *e.entry_hash()).collect();
    leaf_hashes(&hashes)
}

/// The RFC 9162 root of a log with these leaf hashes.
pub fn tree_root(leaf_hashes: &[Digest]) -> Digest {
    rfc9162::root(Engine::auto(), leaf_hashes)
}

/// Errors of proofs over the log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    /// A tree size larger than the log.
    #[error("tree size {size} is beyond the log, which has {len} entries")]
    SizeBeyondLog {
        /// The size asked for.
        size: u64,
        /// The number of entries.
        len: u64,
    },
    /// An entry outside the tree.
    #[error("seq {seq} is not in the tree of size {size}")]
    SeqBeyondSize {
        /// The seq asked for.
        seq: u64,
        /// The tree size.
        size: u64,
    },
    /// The old size of a consistency proof is above the new size.
    #[error("old size {old} is larger than new size {new}")]
    OldAboveNew {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
    /// The Merkle library refused.
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

fn prefix(leaf_hashes: &[Digest], size: u64) -> Result<&[Digest], ProofError> {
    usize::try_from(size)
        .ok()
        .and_then(|n| leaf_hashes.get(..n))
        .ok_or(ProofError::SizeBeyondLog {
            size,
            len: leaf_hashes.len() as u64,
        })
}

/// The inclusion proof of entry `seq` in the tree of the first `size` entries.
///
/// # Errors
/// [`ProofError::SizeBeyondLog`], [`ProofError::SeqBeyondSize`].
pub fn inclusion_proof(
    leaf_hashes: &[Digest],
    seq: u64,
    size: u64,
) -> Result<InclusionProof, ProofError> {
    let leaves = prefix(leaf_hashes, size)?;
    if seq >= size {
        return Err(ProofError::SeqBeyondSize { seq, size });
    }
    Ok(rfc9162::inclusion_proof(Engine::auto(), leaves, seq)?)
}

/// The consistency proof from the tree of the first `old_size` entries to that of `new_size`.
///
/// # Errors
/// [`ProofError::SizeBeyondLog`], [`ProofError::OldAboveNew`].
pub fn consistency_proof(
    leaf_hashes: &[Digest],
    old_size: u64,
    new_size: u64,
) -> Result<ConsistencyProof, ProofError> {
    let leaves = prefix(leaf_hashes, new_size)?;
    if old_size > new_size {
        return Err(ProofError::OldAboveNew {
            old: old_size,
            new: new_size,
        });
    }
    Ok(rfc9162::consistency_proof(
        Engine::auto(),
        leaves,
        old_size,
    )?)
}
