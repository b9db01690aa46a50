//! A Merkle sum tree for the reserve's liabilities (sub-accounts: agencies, programs).
//!
//! Encoding (all sums are satoshis, unsigned 64-bit, big-endian):
//! - leaf: `SHA-256(0x00 || account_commitment (32 bytes) || balance (8 bytes))` (41 bytes);
//! - node: `SHA-256(0x01 || left_hash || left_sum || right_hash || right_sum)` (81 bytes), and
//!   the node's sum is `left_sum + right_sum`, overflow-checked.
//!
//! A node commits to *both* child sums, not only their total: with only the total, a prover
//! could give one child a sum that does not match its subtree (the known flaw of Maxwell's
//! original sum tree) and hide a liability. The shape is that of RFC 9162 (split at the largest
//! power of two, nothing duplicated): levels are built left to right and an odd last node is
//! carried up unchanged, each level in one batched call of 81-byte messages.
//!
//! What a holder of a sub-account checks with a [`SumProof`]: that their own leaf (their
//! commitment and the balance they expect) leads, through the siblings' hashes and sums, to the
//! published root hash *and* total, for the published number of leaves; sums are added with
//! overflow checks, so no proof can wrap around to a small total. The auditor then checks that
//! the published total does not exceed the proven reserves. Every sub-account should check its
//! own proof: a leaf nobody checks can be understated.

use super::{path_len, MerkleError};
use crate::{Digest, Engine};

/// A node of the sum tree: its hash and the sum of the balances below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SumNode {
    /// The node's hash.
    pub hash: Digest,
    /// The sum of the balances below (satoshis).
    pub sum: u64,
}

/// A leaf: an account identifier commitment (e.g. a salted hash of the account id, so the tree
/// does not reveal who the accounts are) and its balance in satoshis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SumLeaf {
    /// The commitment to the account's identifier.
    pub account_commitment: Digest,
    /// The balance in satoshis.
    pub balance: u64,
}

/// Messages per batched call when building a tree: 4096 81-byte messages and their digests
/// (about 450 KiB) stay in the L2 cache between encoding and hashing.
const CHUNK: usize = 4096;

fn hash_msgs(engine: &Engine, msgs: &[u8], len: usize, out: &mut [Digest]) {
    if engine.hash_fixed(msgs, len, out).is_err() {
        // Unreachable: callers pass whole messages and one slot each. Stay correct anyway.
        for (m, o) in msgs.chunks_exact(len).zip(out.iter_mut()) {
            *o = crate::sha256(m);
        }
    }
}

impl SumLeaf {
    fn encode(&self, msg: &mut Vec<u8>) {
        msg.push(0x00);
        msg.extend_from_slice(&self.account_commitment);
        msg.extend_from_slice(&self.balance.to_be_bytes());
    }

    /// The leaf's node (hash and balance).
    pub fn node(&self, engine: &Engine) -> SumNode {
        let mut msg = Vec::with_capacity(41);
        self.encode(&mut msg);
        let mut out = [[0u8; 32]; 1];
        hash_msgs(engine, &msg, 41, &mut out);
        SumNode {
            hash: out[0],
            sum: self.balance,
        }
    }
}

fn encode_node(msg: &mut Vec<u8>, left: &SumNode, right: &SumNode) {
    msg.push(0x01);
    msg.extend_from_slice(&left.hash);
    msg.extend_from_slice(&left.sum.to_be_bytes());
    msg.extend_from_slice(&right.hash);
    msg.extend_from_slice(&right.sum.to_be_bytes());
}

/// The parent of two nodes.
///
/// # Errors
/// [`MerkleError::SumOverflow`] when the sums overflow 64 bits.
pub fn parent(engine: &Engine, left: &SumNode, right: &SumNode) -> Result<SumNode, MerkleError> {
    let sum = left
        .sum
        .checked_add(right.sum)
        .ok_or(MerkleError::SumOverflow)?;
    let mut msg = Vec::with_capacity(81);
    encode_node(&mut msg, left, right);
    let mut out = [[0u8; 32]; 1];
    hash_msgs(engine, &msg, 81, &mut out);
    Ok(SumNode { hash: out[0], sum })
}

/// A built sum tree: every level, leaves first, for proofs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumTree {
    levels: Vec<Vec<SumNode>>,
}

impl SumTree {
    /// Builds the tree over `leaves` (at least one), each level in batched hash calls of up
    /// to `CHUNK` (4096) messages.
    ///
    /// # Errors
    /// [`MerkleError::SumOverflow`] when the total (or any partial sum) overflows 64 bits;
    /// [`MerkleError::Empty`] for no leaves.
    pub fn build(engine: &Engine, leaves: &[SumLeaf]) -> Result<SumTree, MerkleError> {
        Self::from_leaves(engine, leaves.iter().copied())
    }

    /// As [`SumTree::build`], taking the leaves from an iterator (in leaf order), so a caller
    /// that derives them (e.g. from a sorted index) needs no leaf array of its own.
    ///
    /// # Errors
    /// As [`SumTree::build`].
    pub fn from_leaves(
        engine: &Engine,
        leaves: impl IntoIterator<Item = SumLeaf>,
    ) -> Result<SumTree, MerkleError> {
        let mut leaves = leaves.into_iter();
        // In chunks of `CHUNK` messages, so each chunk's messages and digests stay in cache
        // between encoding, hashing and storing (one batched call per chunk).
        let mut msgs = Vec::with_capacity(CHUNK * 81);
        let mut out = vec![[0u8; 32]; CHUNK];
        let mut sums = Vec::with_capacity(CHUNK);
        let mut first = Vec::with_capacity(leaves.size_hint().0);
        loop {
            msgs.clear();
            sums.clear();
            for l in leaves.by_ref().take(CHUNK) {
                l.encode(&mut msgs);
                sums.push(l.balance);
            }
            if sums.is_empty() {
                break;
            }
            let o = &mut out[..sums.len()];
            hash_msgs(engine, &msgs, 41, o);
            first.extend(
                o.iter()
                    .zip(&sums)
                    .map(|(&hash, &sum)| SumNode { hash, sum }),
            );
        }
        if first.is_empty() {
            return Err(MerkleError::Empty);
        }
        let mut levels = vec![first];
        while let Some(level) = levels.last().filter(|l| l.len() > 1) {
            let mut next = Vec::with_capacity(level.len().div_ceil(2));
            for chunk in level.chunks(2 * CHUNK) {
                msgs.clear();
                sums.clear();
                for p in chunk.chunks_exact(2) {
                    sums.push(
                        p[0].sum
                            .checked_add(p[1].sum)
                            .ok_or(MerkleError::SumOverflow)?,
                    );
                    encode_node(&mut msgs, &p[0], &p[1]);
                }
                let o = &mut out[..sums.len()];
                hash_msgs(engine, &msgs, 81, o);
                next.extend(
                    o.iter()
                        .zip(&sums)
                        .map(|(&hash, &sum)| SumNode { hash, sum }),
                );
            }
            if !level.len().is_multiple_of(2) {
                next.extend(level.last().copied());
            }
            levels.push(next);
        }
        Ok(SumTree { levels })
    }

    /// The root: its hash and the total of all balances.
    pub fn root(&self) -> SumNode {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or(SumNode {
                hash: [0; 32],
                sum: 0,
            })
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Whether the tree has no leaves (never true for a built tree).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inclusion proof of leaf `index`.
    ///
    /// # Errors
    /// [`MerkleError::IndexOutOfRange`].
    pub fn proof(&self, index: u64) -> Result<SumProof, MerkleError> {
        let size = self.len();
        if index >= size {
            return Err(MerkleError::IndexOutOfRange { index, size });
        }
        let mut path = Vec::new();
        let mut i = index as usize;
        let below_root = self.levels.split_last().map_or(&[][..], |(_, rest)| rest);
        for level in below_root {
            // A node without a sibling (the odd last one) is carried up: no path entry.
            if let Some(sibling) = level.get(i ^ 1) {
                path.push(*sibling);
            }
            i /= 2;
        }
        Ok(SumProof {
            leaf_index: index,
            tree_size: size,
            path,
        })
    }
}

/// The inclusion proof of one account in a sum tree: the sibling nodes (hash and sum) from the
/// leaf up. Which side each sibling is on follows from `leaf_index` and `tree_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumProof {
    /// The leaf's index.
    pub leaf_index: u64,
    /// The number of leaves in the tree.
    pub tree_size: u64,
    /// Sibling nodes, bottom up.
    pub path: Vec<SumNode>,
}

impl SumProof {
    /// The root this proof leads to from `leaf`.
    ///
    /// # Errors
    /// [`MerkleError::IndexOutOfRange`], [`MerkleError::PathLength`] for a malformed proof;
    /// [`MerkleError::SumOverflow`] when sums overflow.
    pub fn root_from(&self, engine: &Engine, leaf: &SumLeaf) -> Result<SumNode, MerkleError> {
        if self.leaf_index >= self.tree_size {
            return Err(MerkleError::IndexOutOfRange {
                index: self.leaf_index,
                size: self.tree_size,
            });
        }
        let expected = path_len(self.leaf_index, self.tree_size);
        if self.path.len() != expected {
            return Err(MerkleError::PathLength {
                got: self.path.len(),
                expected,
            });
        }
        let mut node = leaf.node(engine);
        let (mut i, mut size) = (self.leaf_index, self.tree_size);
        let mut siblings = self.path.iter();
        while size > 1 {
            if !(i == size - 1 && i.is_multiple_of(2)) {
                let Some(sib) = siblings.next() else {
                    return Err(MerkleError::PathLength {
                        got: self.path.len(),
                        expected,
                    });
                };
                node = if !i.is_multiple_of(2) {
                    parent(engine, sib, &node)?
                } else {
                    parent(engine, &node, sib)?
                };
            }
            i /= 2;
            size = size.div_ceil(2);
        }
        Ok(node)
    }

    /// Checks that `leaf` is in the tree with `root` (hash and total).
    ///
    /// # Errors
    /// [`MerkleError::RootMismatch`], or the errors of [`SumProof::root_from`].
    pub fn verify(&self, leaf: &SumLeaf, root: &SumNode) -> Result<(), MerkleError> {
        self.verify_with(Engine::auto(), leaf, root)
    }

    /// As [`SumProof::verify`], hashing on `engine`.
    ///
    /// # Errors
    /// As [`SumProof::verify`].
    pub fn verify_with(
        &self,
        engine: &Engine,
        leaf: &SumLeaf,
        root: &SumNode,
    ) -> Result<(), MerkleError> {
        if &self.root_from(engine, leaf)? == root {
            Ok(())
        } else {
            Err(MerkleError::RootMismatch)
        }
    }
}
