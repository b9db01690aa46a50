//! Merkle trees over the SHA-256 core.
//!
//! Why here: the ledger's log, the liabilities sum tree and the checks of Bitcoin's transaction
//! trees all hash one tree level per batched call, which is where [`crate::Engine`]'s SIMD
//! backends get their speed; keeping the trees next to the engine keeps that in one place.
//!
//! - [`rfc9162`]: the Merkle log of RFC 9162 (Certificate Transparency 2.0): tree heads,
//!   inclusion and consistency proofs, an incremental compact tree, multi-threaded roots.
//! - [`bitcoin`]: Bitcoin's transaction Merkle root (double SHA-256, odd node duplicated, with
//!   the CVE-2012-2459 mutation check), single-branch roots, and `gettxoutproof` checks (BIP-37
//!   partial Merkle trees), so an auditor can tie a reserve transaction to a block header.
//! - [`sum`]: a Merkle sum tree for liabilities, each node committing to both child hashes and
//!   both child sums.

pub mod bitcoin;
pub mod rfc9162;
pub mod sum;

/// Errors of building and verifying Merkle trees and proofs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// A leaf index at or beyond the tree size.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A tree size larger than the leaves available.
    #[error("tree size {size} is larger than the {available} leaves available")]
    SizeOutOfRange {
        /// The requested size.
        size: u64,
        /// The leaves available.
        available: u64,
    },
    /// A consistency proof from a larger to a smaller tree.
    #[error("old tree size {old} is larger than new tree size {new}")]
    OldAboveNew {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
    /// A proof whose path has the wrong number of hashes.
    #[error("proof path has {got} hashes where {expected} are needed")]
    PathLength {
        /// Hashes in the path.
        got: usize,
        /// Hashes the tree shape needs.
        expected: usize,
    },
    /// A proof that does not lead to the given root.
    #[error("proof does not match the root")]
    RootMismatch,
    /// A sum that does not fit in 64 bits.
    #[error("sum overflows 64 bits")]
    SumOverflow,
    /// A tree that already holds the most leaves a `u64` size can count.
    #[error("tree is full")]
    Full,
    /// A tree or proof over no leaves where at least one is needed.
    #[error("tree has no leaves")]
    Empty,
    /// Equal-length leaves whose length does not divide the buffer (or is zero).
    #[error("leaf length {len} does not divide a buffer of {buffer} bytes")]
    LeafLength {
        /// The leaf length.
        len: usize,
        /// The buffer's length.
        buffer: usize,
    },
    /// A Bitcoin partial Merkle tree (txoutproof) that is malformed or mutated.
    #[error("malformed partial merkle tree: {0}")]
    PartialTree(&'static str),
    /// A compact tree whose frontier does not fit its size.
    #[error("compact tree of size {size} needs {expected} frontier hashes, got {got}")]
    Frontier {
        /// The size.
        size: u64,
        /// Frontier hashes given.
        got: usize,
        /// Frontier hashes the size needs.
        expected: usize,
    },
}

/// Number of hashes in the proof path of leaf `index` in a left-balanced tree of `size`
/// leaves built level by level with the odd last node carried up (RFC 9162's shape).
pub(crate) fn path_len(mut index: u64, mut size: u64) -> usize {
    let mut n = 0;
    while size > 1 {
        if !(index == size - 1 && index.is_multiple_of(2)) {
            n += 1;
        }
        index /= 2;
        size = size.div_ceil(2);
    }
    n
}

/// Number of hashes in an RFC 9162 consistency proof from `old` to `new` leaves (as
/// [`rfc9162::consistency_proof`] gives, without the old root that the verifier prepends when
/// `old` is a power of two); 0 when `old` is 0 or equal to `new`. Needs `old <= new`.
pub(crate) fn consistency_path_len(old: u64, new: u64) -> usize {
    if old == 0 || old >= new {
        return 0;
    }
    // The verifier walks from the last leaf of the old tree (its index `old - 1`, shifted past
    // the levels where it is a right child, which the old root's subtree covers) up to the
    // root of the new tree: one hash per step, plus the starting hash when `old` is not a
    // power of two.
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let mut n = usize::from(!old.is_power_of_two());
    while s != 0 {
        if f & 1 == 1 || f == s {
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        }
        f >>= 1;
        s >>= 1;
        n += 1;
    }
    n
}
