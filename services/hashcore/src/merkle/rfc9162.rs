//! The Merkle log of RFC 9162 (section 2.1), over the SHA-256 core.
//!
//! Leaf hash `SHA-256(0x00 || data)`, node hash `SHA-256(0x01 || left || right)`; a tree of `n`
//! leaves splits at the largest power of two smaller than `n`, and nothing is duplicated.
//! Building level by level and carrying an odd last node up unchanged gives exactly that tree,
//! and lets each level be one batched call of 65-byte messages.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{consistency_path_len, path_len};
use crate::{sha256, Digest, Engine};

pub use super::MerkleError;

const LEAF: u8 = 0x00;
const NODE: u8 = 0x01;
/// Pairs hashed per batched call (bounds the scratch buffer at about 266 KB).
const CHUNK_PAIRS: usize = 4096;

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Digest {
    sha256(b"")
}

/// One message on the engine's single-stream path (SHA-NI when the CPU has it): a lane
/// kernel would hash a whole group of lanes for it.
fn hash_one(engine: &Engine, msg: &[u8]) -> Digest {
    engine.digest_one(msg)
}

/// The leaf hash `SHA-256(0x00 || data)`.
pub fn leaf_hash(engine: &Engine, data: &[u8]) -> Digest {
    let mut msg = Vec::with_capacity(1 + data.len());
    msg.push(LEAF);
    msg.extend_from_slice(data);
    hash_one(engine, &msg)
}

/// The leaf hashes of many leaves of equal length `len`, laid end to end in `data`, in batched
/// calls.
///
/// # Errors
/// [`MerkleError::LeafLength`] when `len` is 0 or `data.len()` is not a multiple of `len`.
pub fn leaf_hashes_fixed(
    engine: &Engine,
    data: &[u8],
    len: usize,
) -> Result<Vec<Digest>, MerkleError> {
    if len == 0 || !data.len().is_multiple_of(len) {
        return Err(MerkleError::LeafLength {
            len,
            buffer: data.len(),
        });
    }
    let mut out = Vec::with_capacity(data.len() / len);
    let mut msgs = Vec::new();
    // Bounded batches (about CHUNK_PAIRS messages or 1 MiB) keep the scratch buffer small.
    let per_batch = CHUNK_PAIRS.min((1 << 20) / (len + 1)).max(1);
    for batch in data.chunks(per_batch * len) {
        hash_leaf_batch(engine, batch, len, &mut msgs, &mut out);
    }
    Ok(out)
}

/// Hashes the equal-length leaves laid end to end in `batch` (a multiple of `len` bytes, `len`
/// at least 1) in one batched call, appending the leaf hashes to `out`.
fn hash_leaf_batch(
    engine: &Engine,
    batch: &[u8],
    len: usize,
    msgs: &mut Vec<u8>,
    out: &mut Vec<Digest>,
) {
    msgs.clear();
    for leaf in batch.chunks_exact(len) {
        msgs.push(LEAF);
        msgs.extend_from_slice(leaf);
    }
    let start = out.len();
    out.resize(start + batch.len() / len, [0u8; 32]);
    if let Some(slots) = out.get_mut(start..) {
        if engine.hash_fixed(msgs, len + 1, slots).is_err() {
            // Unreachable: whole messages, one slot each. Stay correct anyway.
            for (slot, leaf) in slots.iter_mut().zip(batch.chunks_exact(len)) {
                *slot = leaf_hash(engine, leaf);
            }
        }
    }
}

/// The leaf hashes of `entries`, in order. Runs of consecutive entries of equal length are
/// hashed in batched calls (the common case: a ledger's leaves are fixed-size entry hashes).
pub fn leaf_hashes(engine: &Engine, entries: &[&[u8]]) -> Vec<Digest> {
    let mut out = Vec::with_capacity(entries.len());
    let mut msgs = Vec::new();
    let mut flat = Vec::new();
    let mut rest = entries;
    while let Some(first) = rest.first() {
        let len = first.len();
        let run = rest
            .iter()
            .take(CHUNK_PAIRS)
            .take_while(|e| e.len() == len)
            .count();
        let (batch, tail) = rest.split_at(run);
        if len == 0 {
            // The empty leaf: SHA-256(0x00), the same for every one of them.
            let h = leaf_hash(engine, &[]);
            out.extend(batch.iter().map(|_| h));
        } else {
            flat.clear();
            for e in batch {
                flat.extend_from_slice(e);
            }
            hash_leaf_batch(engine, &flat, len, &mut msgs, &mut out);
        }
        rest = tail;
    }
    out
}

/// The node hash `SHA-256(0x01 || left || right)`.
pub fn node_hash(engine: &Engine, left: &Digest, right: &Digest) -> Digest {
    let mut msg = [0u8; 65];
    msg[0] = NODE;
    msg[1..33].copy_from_slice(left);
    msg[33..].copy_from_slice(right);
    hash_one(engine, &msg)
}

/// Leaves per cache-sized subtree in [`root`]: the subtree's first level (half its leaves'
/// size, 64 KiB) stays in the core's L2 cache while the levels above it are reduced.
const SUBTREE_LEAVES: usize = 1 << 12;

/// The root of the tree over `leaves` (at least two), level by level: the first level above
/// the leaves is hashed straight from them into `level` (reused between calls), the levels
/// above that in place; an odd last node is carried up unchanged.
fn root_by_levels(engine: &Engine, leaves: &[Digest], level: &mut Vec<Digest>) -> Digest {
    let (pairs, odd) = leaves.as_flattened().as_chunks::<64>();
    level.clear();
    level.resize(pairs.len(), [0u8; 32]);
    if engine.hash_nodes(pairs, level).is_err() {
        // Unreachable: one slot per pair. Stay correct anyway.
        for (o, pair) in level.iter_mut().zip(leaves.chunks_exact(2)) {
            if let [l, r] = pair {
                *o = node_hash(engine, l, r);
            }
        }
    }
    if !odd.is_empty() {
        level.push(leaves[leaves.len() - 1]);
    }
    let mut len = level.len();
    while len > 1 {
        let pairs = len / 2;
        if engine.node_level_in_place(&mut level[..2 * pairs]).is_err() {
            // Unreachable: an even length. Stay correct anyway.
            for i in 0..pairs {
                level[i] = node_hash(engine, &level[2 * i], &level[2 * i + 1]);
            }
        }
        if len % 2 == 1 {
            level[pairs] = level[len - 1];
            len = pairs + 1;
        } else {
            len = pairs;
        }
    }
    level.first().copied().unwrap_or_else(empty_root)
}

/// The RFC 9162 tree head (root) over `leaf_hashes` (already leaf hashes). Large trees are
/// computed as aligned subtrees of 4096 leaves (perfect subtrees of the
/// left-balanced tree; the last one is the tree of its own leaves), whose levels stay in cache,
/// then the tree over their roots. Every level is hashed in batched calls straight from the
/// level below (no 65-byte copies).
pub fn root(engine: &Engine, leaf_hashes: &[Digest]) -> Digest {
    match leaf_hashes {
        [] => return empty_root(),
        [one] => return *one,
        _ => {}
    }
    let mut level = Vec::with_capacity(leaf_hashes.len().min(SUBTREE_LEAVES) / 2 + 1);
    if leaf_hashes.len() <= SUBTREE_LEAVES {
        return root_by_levels(engine, leaf_hashes, &mut level);
    }
    let roots: Vec<Digest> = leaf_hashes
        .chunks(SUBTREE_LEAVES)
        .map(|c| match c {
            [one] => *one,
            _ => root_by_levels(engine, c, &mut level),
        })
        .collect();
    root(engine, &roots)
}

/// As [`root`], on up to `threads` threads (the calling thread is one of them): the leaves
/// are cut into aligned power-of-two subtrees, which the threads take one at a time from a
/// shared counter (so a thread slowed by other work on its core takes fewer), and the
/// subtrees' roots are then combined. Equal to [`root`] for every input; small inputs (or
/// `threads <= 1`) stay on the calling thread.
pub fn root_parallel(engine: &Engine, leaf_hashes: &[Digest], threads: usize) -> Digest {
    let n = leaf_hashes.len();
    if threads <= 1 || n < 2 * CHUNK_PAIRS {
        return root(engine, leaf_hashes);
    }
    // Chunks of a power-of-two size k, starting at multiples of k, are perfect subtrees of the
    // left-balanced tree (the last one is the tree of its own leaves); the tree above them is
    // the tree over their roots, in order. About sixteen chunks per thread (at least
    // CHUNK_PAIRS leaves each) keep the threads busy to the end.
    let k = (n / threads.saturating_mul(16))
        .max(CHUNK_PAIRS)
        .next_power_of_two();
    let chunks: Vec<&[Digest]> = leaf_hashes.chunks(k).collect();
    let next = AtomicUsize::new(0);
    // Takes chunks until none is left; returns (index, root) of those it did.
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(chunk) = chunks.get(i) else {
                return done;
            };
            done.push((i, root(engine, chunk)));
        }
    };
    let mut roots: Vec<Option<Digest>> = vec![None; chunks.len()];
    std::thread::scope(|s| {
        let workers: Vec<_> = (1..threads.min(chunks.len()))
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, work).ok())
            .collect();
        for (i, r) in work() {
            roots[i] = Some(r);
        }
        for w in workers {
            // A worker cannot panic (pure hashing); if one did, its chunks are redone below.
            if let Ok(done) = w.join() {
                for (i, r) in done {
                    roots[i] = Some(r);
                }
            }
        }
    });
    let roots: Vec<Digest> = roots
        .into_iter()
        .zip(&chunks)
        .map(|(r, c)| r.unwrap_or_else(|| root(engine, c)))
        .collect();
    root(engine, &roots)
}

/// The root of the subtree over `leaf_hashes` (the same as [`root`]; named for stores that
/// compute the hashes of ranges of a larger log).
pub fn subtree_root(engine: &Engine, leaf_hashes: &[Digest]) -> Digest {
    root(engine, leaf_hashes)
}

fn largest_power_of_two_below(n: u64) -> u64 {
    // n >= 2
    1u64 << (63 - (n - 1).leading_zeros())
}

/// An inclusion proof: the audit path of leaf `leaf_index` in the tree of `tree_size` leaves,
/// from the leaf's sibling up to the root's child (RFC 9162 2.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The leaf's index (0-based).
    pub leaf_index: u64,
    /// The size of the tree the proof is for.
    pub tree_size: u64,
    /// The audit path.
    pub path: Vec<Digest>,
}

/// The inclusion proof of leaf `index` in the tree over all of `leaf_hashes`.
///
/// # Errors
/// [`MerkleError::IndexOutOfRange`] when `index >= leaf_hashes.len()`.
pub fn inclusion_proof(
    engine: &Engine,
    leaf_hashes: &[Digest],
    index: u64,
) -> Result<InclusionProof, MerkleError> {
    let size = leaf_hashes.len() as u64;
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut path = Vec::new();
    let (mut lo, mut hi, mut m) = (0usize, leaf_hashes.len(), index);
    // Top-down per RFC 9162 2.1.3.1, collected root-side first, then reversed.
    while hi - lo > 1 {
        let k = largest_power_of_two_below((hi - lo) as u64);
        if m < k {
            path.push(root(engine, &leaf_hashes[lo + k as usize..hi]));
            hi = lo + k as usize;
        } else {
            path.push(root(engine, &leaf_hashes[lo..lo + k as usize]));
            lo += k as usize;
            m -= k;
        }
    }
    path.reverse();
    Ok(InclusionProof {
        leaf_index: index,
        tree_size: size,
        path,
    })
}

impl InclusionProof {
    /// The root this proof leads to from `leaf_hash` (RFC 9162 2.1.3.2).
    ///
    /// # Errors
    /// [`MerkleError::IndexOutOfRange`] for an index outside the tree;
    /// [`MerkleError::PathLength`] for a path of the wrong length.
    pub fn root_from(&self, engine: &Engine, leaf_hash: &Digest) -> Result<Digest, MerkleError> {
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
        let (mut f, mut s) = (self.leaf_index, self.tree_size - 1);
        let mut r = *leaf_hash;
        for p in &self.path {
            if s == 0 {
                return Err(MerkleError::PathLength {
                    got: self.path.len(),
                    expected,
                });
            }
            if f & 1 == 1 || f == s {
                r = node_hash(engine, p, &r);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                r = node_hash(engine, &r, p);
            }
            f >>= 1;
            s >>= 1;
        }
        if s != 0 {
            return Err(MerkleError::PathLength {
                got: self.path.len(),
                expected,
            });
        }
        Ok(r)
    }

    /// Checks that `leaf_hash` is leaf `leaf_index` of the tree of `tree_size` with `root`.
    ///
    /// # Errors
    /// [`MerkleError::RootMismatch`] when the path leads elsewhere; the errors of
    /// [`InclusionProof::root_from`] for a malformed proof.
    pub fn verify(&self, leaf_hash: &Digest, root: &Digest) -> Result<(), MerkleError> {
        self.verify_with(Engine::auto(), leaf_hash, root)
    }

    /// As [`InclusionProof::verify`], hashing on `engine`.
    ///
    /// # Errors
    /// As [`InclusionProof::verify`].
    pub fn verify_with(
        &self,
        engine: &Engine,
        leaf_hash: &Digest,
        root: &Digest,
    ) -> Result<(), MerkleError> {
        if &self.root_from(engine, leaf_hash)? == root {
            Ok(())
        } else {
            Err(MerkleError::RootMismatch)
        }
    }
}

/// A consistency proof: the tree of the first `old_size` leaves is a prefix of the tree of
/// `new_size` leaves (RFC 9162 2.1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The smaller tree's size.
    pub old_size: u64,
    /// The larger tree's size.
    pub new_size: u64,
    /// The proof's hashes.
    pub path: Vec<Digest>,
}

/// The consistency proof from the tree of the first `old_size` of `leaf_hashes` to the tree of
/// all of them.
///
/// # Errors
/// [`MerkleError::OldAboveNew`] when `old_size > leaf_hashes.len()`.
pub fn consistency_proof(
    engine: &Engine,
    leaf_hashes: &[Digest],
    old_size: u64,
) -> Result<ConsistencyProof, MerkleError> {
    let new_size = leaf_hashes.len() as u64;
    if old_size > new_size {
        return Err(MerkleError::OldAboveNew {
            old: old_size,
            new: new_size,
        });
    }
    let mut path = Vec::new();
    if old_size > 0 && old_size < new_size {
        // SUBPROOF(m, D[lo:hi], b) of RFC 9162 2.1.4.1, iteratively, root side first.
        let (mut lo, mut hi, mut m, mut whole) = (0usize, leaf_hashes.len(), old_size, true);
        loop {
            let n = (hi - lo) as u64;
            if m == n {
                if !whole {
                    path.push(root(engine, &leaf_hashes[lo..hi]));
                }
                break;
            }
            let k = largest_power_of_two_below(n);
            if m <= k {
                path.push(root(engine, &leaf_hashes[lo + k as usize..hi]));
                hi = lo + k as usize;
            } else {
                path.push(root(engine, &leaf_hashes[lo..lo + k as usize]));
                lo += k as usize;
                m -= k;
                whole = false;
            }
        }
        path.reverse();
    }
    Ok(ConsistencyProof {
        old_size,
        new_size,
        path,
    })
}

impl ConsistencyProof {
    /// Checks that `old_root` (of `old_size` leaves) and `new_root` (of `new_size` leaves) are
    /// consistent (RFC 9162 2.1.4.2). Equal sizes need an empty path and equal roots; the empty
    /// tree is a prefix of every tree.
    ///
    /// # Errors
    /// [`MerkleError::OldAboveNew`], [`MerkleError::PathLength`] for a malformed proof,
    /// [`MerkleError::RootMismatch`] when the roots are not consistent.
    pub fn verify(&self, old_root: &Digest, new_root: &Digest) -> Result<(), MerkleError> {
        self.verify_with(Engine::auto(), old_root, new_root)
    }

    /// As [`ConsistencyProof::verify`], hashing on `engine`.
    ///
    /// # Errors
    /// As [`ConsistencyProof::verify`].
    pub fn verify_with(
        &self,
        engine: &Engine,
        old_root: &Digest,
        new_root: &Digest,
    ) -> Result<(), MerkleError> {
        let (m, n) = (self.old_size, self.new_size);
        if m > n {
            return Err(MerkleError::OldAboveNew { old: m, new: n });
        }
        let bad_len = |expected| MerkleError::PathLength {
            got: self.path.len(),
            expected,
        };
        if m == n || m == 0 {
            if !self.path.is_empty() {
                return Err(bad_len(0));
            }
            let ok = if m == 0 {
                *old_root == empty_root()
            } else {
                old_root == new_root
            };
            return if ok {
                Ok(())
            } else {
                Err(MerkleError::RootMismatch)
            };
        }
        let expected = consistency_path_len(m, n);
        if self.path.len() != expected {
            return Err(bad_len(expected));
        }
        let mut path: Vec<Digest> = Vec::with_capacity(self.path.len() + 1);
        if m.is_power_of_two() {
            path.push(*old_root);
        }
        path.extend_from_slice(&self.path);
        let Some((first, rest)) = path.split_first() else {
            return Err(bad_len(expected));
        };
        let (mut f, mut s) = (m - 1, n - 1);
        while f & 1 == 1 {
            f >>= 1;
            s >>= 1;
        }
        let (mut fr, mut sr) = (*first, *first);
        for c in rest {
            if s == 0 {
                return Err(bad_len(expected));
            }
            if f & 1 == 1 || f == s {
                fr = node_hash(engine, c, &fr);
                sr = node_hash(engine, c, &sr);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                sr = node_hash(engine, &sr, c);
            }
            f >>= 1;
            s >>= 1;
        }
        if s != 0 {
            return Err(bad_len(expected));
        }
        if &fr == old_root && &sr == new_root {
            Ok(())
        } else {
            Err(MerkleError::RootMismatch)
        }
    }
}

/// An incremental RFC 9162 tree: the roots of the perfect subtrees that make up the current
/// size (its binary decomposition, largest first). Appending is O(log n); the root of the
/// current size is O(log n); the state is `size` plus `size.count_ones()` hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactTree {
    size: u64,
    frontier: Vec<Digest>,
}

impl CompactTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a tree from its size and frontier (as [`CompactTree::to_parts`] gives).
    ///
    /// # Errors
    /// [`MerkleError::Frontier`] when the frontier does not have one hash per set bit of `size`.
    pub fn from_parts(size: u64, frontier: Vec<Digest>) -> Result<Self, MerkleError> {
        let expected = size.count_ones() as usize;
        if frontier.len() != expected {
            return Err(MerkleError::Frontier {
                size,
                got: frontier.len(),
                expected,
            });
        }
        Ok(CompactTree { size, frontier })
    }

    /// The size and the frontier (roots of the perfect subtrees, largest first).
    pub fn to_parts(&self) -> (u64, Vec<Digest>) {
        (self.size, self.frontier.clone())
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash. A tree that already holds `u64::MAX` leaves (only reachable through
    /// [`CompactTree::from_parts`]) is left unchanged; [`CompactTree::try_push`] reports that.
    pub fn push(&mut self, engine: &Engine, leaf_hash: Digest) {
        // The only error is a full tree, which the doc above describes.
        let _ = self.try_push(engine, leaf_hash);
    }

    /// Appends a leaf hash, in O(log n) node hashes.
    ///
    /// # Errors
    /// [`MerkleError::Full`] when the tree already holds `u64::MAX` leaves.
    pub fn try_push(&mut self, engine: &Engine, leaf_hash: Digest) -> Result<(), MerkleError> {
        let Some(new_size) = self.size.checked_add(1) else {
            return Err(MerkleError::Full);
        };
        // Each trailing one bit of the size is a perfect subtree of the same height as the
        // carry: merge them, right to left.
        let mut carry = leaf_hash;
        let mut s = self.size;
        while s & 1 == 1 {
            match self.frontier.pop() {
                Some(left) => carry = node_hash(engine, &left, &carry),
                None => break,
            }
            s >>= 1;
        }
        self.frontier.push(carry);
        self.size = new_size;
        Ok(())
    }

    /// Appends many leaf hashes: the same state as [`CompactTree::push`] of each in turn, but
    /// every aligned perfect subtree that fits is hashed with the batched [`root`]. Leaves that
    /// would take the tree past `u64::MAX` leaves are dropped, as [`CompactTree::push`] does.
    pub fn extend(&mut self, engine: &Engine, leaf_hashes: &[Digest]) {
        let mut rest = leaf_hashes;
        while !rest.is_empty() {
            // The largest perfect subtree that starts at the current size and fits in `rest`.
            let by_align = self.size.trailing_zeros();
            let by_len = usize::BITS - 1 - rest.len().leading_zeros();
            let k = by_align.min(by_len);
            let n = 1usize << k;
            let Some(new_size) = self.size.checked_add(n as u64) else {
                for leaf in rest {
                    self.push(engine, *leaf);
                }
                return;
            };
            let mut carry = if n == 1 {
                rest[0]
            } else {
                root(engine, &rest[..n])
            };
            // Merge with the frontier's subtrees of the same height, as `try_push` does.
            let mut s = self.size >> k;
            while s & 1 == 1 {
                match self.frontier.pop() {
                    Some(left) => carry = node_hash(engine, &left, &carry),
                    None => break,
                }
                s >>= 1;
            }
            self.frontier.push(carry);
            self.size = new_size;
            rest = &rest[n..];
        }
    }

    /// The root of the tree of the current size.
    pub fn root(&self, engine: &Engine) -> Digest {
        let mut it = self.frontier.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(engine, left, &acc))
    }
}
