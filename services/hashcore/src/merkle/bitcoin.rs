//! Bitcoin's transaction Merkle tree: double SHA-256 of 64-byte pairs (SHA256D64), the odd last
//! node of a level paired with itself. Hashes are in internal byte order (as in blocks, not
//! the reversed hex that RPCs print).
//!
//! Duplicating the odd node makes `[a, b, c]` and `[a, b, c, c]` share a root (CVE-2012-2459);
//! [`merkle_root_checked`] reports such a mutation the way Bitcoin Core's `ComputeMerkleRoot`
//! does, so a check of a block's transaction list can refuse it.
//!
//! A `gettxoutproof` answer (a serialized `CMerkleBlock`: block header and BIP-37 partial Merkle
//! tree) is checked with [`TxOutProof`]: the partial tree must be well formed, must use every
//! hash and flag byte it carries, must not be mutated, and must lead to the header's Merkle
//! root; its matched txids are then known to be in the block whose hash
//! [`TxOutProof::block_hash`] gives (which the auditor checks against their own node).

use super::MerkleError;
use crate::{sha256d, Digest, Engine};

/// The Merkle root of `txids`, or `None` for an empty list.
pub fn merkle_root(engine: &Engine, txids: &[Digest]) -> Option<Digest> {
    merkle_root_checked(engine, txids).map(|(root, _)| root)
}

/// The Merkle root of `txids` and whether the list is *mutated*: some level had two equal
/// hashes side by side, so another list (with a duplicated tail) has the same root.
pub fn merkle_root_checked(engine: &Engine, txids: &[Digest]) -> Option<(Digest, bool)> {
    if txids.is_empty() {
        return None;
    }
    let mut level: Vec<[u8; 64]> = Vec::with_capacity(txids.len().div_ceil(2));
    let mut current = txids.to_vec();
    let mut mutated = false;
    while current.len() > 1 {
        level.clear();
        for pair in current.chunks(2) {
            let (l, r) = match pair {
                [l, r] => {
                    mutated |= l == r;
                    (l, r)
                }
                [l] => (l, l),
                _ => continue,
            };
            let mut msg = [0u8; 64];
            msg[..32].copy_from_slice(l);
            msg[32..].copy_from_slice(r);
            level.push(msg);
        }
        let mut next = vec![[0u8; 32]; level.len()];
        if engine.hash64d(&level, &mut next).is_err() {
            // Unreachable: one output per message. Stay correct anyway.
            next = level.iter().map(|m| sha256d(m)).collect();
        }
        current = next;
    }
    current.first().map(|root| (*root, mutated))
}

/// The root reached from `txid` at position `index` through its Merkle `branch` (siblings
/// from the bottom up), as in a block's partial Merkle tree for one transaction.
pub fn root_from_branch(txid: &Digest, mut index: u64, branch: &[Digest]) -> Digest {
    let mut h = *txid;
    let mut msg = [0u8; 64];
    for sibling in branch {
        if index & 1 == 1 {
            msg[..32].copy_from_slice(sibling);
            msg[32..].copy_from_slice(&h);
        } else {
            msg[..32].copy_from_slice(&h);
            msg[32..].copy_from_slice(sibling);
        }
        h = sha256d(&msg);
        index >>= 1;
    }
    h
}

/// The Merkle branch (siblings from the bottom up) of the transaction at `index`, or `None`
/// when `index` is outside the list.
pub fn branch(engine: &Engine, txids: &[Digest], index: usize) -> Option<Vec<Digest>> {
    if index >= txids.len() {
        return None;
    }
    let mut out = Vec::new();
    let mut current = txids.to_vec();
    let mut i = index;
    while current.len() > 1 {
        let sibling = if !i.is_multiple_of(2) {
            current[i - 1]
        } else {
            *current.get(i + 1).unwrap_or(&current[i])
        };
        out.push(sibling);
        let msgs: Vec<[u8; 64]> = current
            .chunks(2)
            .map(|p| {
                let mut m = [0u8; 64];
                m[..32].copy_from_slice(&p[0]);
                m[32..].copy_from_slice(p.get(1).unwrap_or(&p[0]));
                m
            })
            .collect();
        let mut next = vec![[0u8; 32]; msgs.len()];
        if engine.hash64d(&msgs, &mut next).is_err() {
            next = msgs.iter().map(|m| sha256d(m)).collect();
        }
        current = next;
        i /= 2;
    }
    Some(out)
}

/// The most transactions a block can hold (Bitcoin Core's bound for partial Merkle trees:
/// maximum block weight over minimum transaction weight, 4,000,000 / 240).
pub const MAX_BLOCK_TRANSACTIONS: u32 = 4_000_000 / 240;

fn pair_hash(left: &Digest, right: &Digest) -> Digest {
    let mut msg = [0u8; 64];
    msg[..32].copy_from_slice(left);
    msg[32..].copy_from_slice(right);
    sha256d(&msg)
}

/// Width of the tree level `height` (0 = transactions) for `total` transactions.
fn level_width(total: u32, height: u32) -> u64 {
    (u64::from(total) + (1u64 << height) - 1) >> height
}

/// A BIP-37 partial Merkle tree: enough of a block's transaction tree to prove that some
/// transactions (the *matches*) are in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialMerkleTree {
    /// The number of transactions in the block.
    pub total_transactions: u32,
    /// The hashes, in depth-first order.
    pub hashes: Vec<Digest>,
    /// The flag bits, depth-first, least significant bit of each byte first.
    pub flags: Vec<u8>,
}

/// The transactions a partial Merkle tree proves, and the root it leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialMatches {
    /// The Merkle root the tree leads to.
    pub root: Digest,
    /// The matched transactions: position in the block and txid (internal byte order).
    pub matches: Vec<(u32, Digest)>,
}

struct Extract<'a> {
    total: u32,
    hashes: &'a [Digest],
    flags: &'a [u8],
    hash_used: usize,
    bit_used: usize,
    matches: Vec<(u32, Digest)>,
}

impl Extract<'_> {
    fn bit(&mut self) -> Result<bool, MerkleError> {
        let byte = self
            .flags
            .get(self.bit_used / 8)
            .ok_or(MerkleError::PartialTree("ran out of flag bits"))?;
        let bit = (byte >> (self.bit_used % 8)) & 1 == 1;
        self.bit_used += 1;
        Ok(bit)
    }

    fn hash(&mut self) -> Result<Digest, MerkleError> {
        let h = *self
            .hashes
            .get(self.hash_used)
            .ok_or(MerkleError::PartialTree("ran out of hashes"))?;
        self.hash_used += 1;
        Ok(h)
    }

    fn node(&mut self, height: u32, pos: u64) -> Result<Digest, MerkleError> {
        let parent_of_match = self.bit()?;
        if height == 0 || !parent_of_match {
            let h = self.hash()?;
            if height == 0 && parent_of_match {
                let index = u32::try_from(pos)
                    .map_err(|_| MerkleError::PartialTree("position out of range"))?;
                self.matches.push((index, h));
            }
            return Ok(h);
        }
        let left = self.node(height - 1, pos * 2)?;
        let right = if pos * 2 + 1 < level_width(self.total, height - 1) {
            let right = self.node(height - 1, pos * 2 + 1)?;
            // Two equal subtrees side by side: the CVE-2012-2459 mutation.
            if right == left {
                return Err(MerkleError::PartialTree(
                    "equal sibling hashes (mutated tree)",
                ));
            }
            right
        } else {
            left
        };
        Ok(pair_hash(&left, &right))
    }
}

impl PartialMerkleTree {
    /// The partial tree over `txids` that proves the transactions at the positions where
    /// `matched` is true (`matched` has one flag per txid).
    ///
    /// # Errors
    /// [`MerkleError::Empty`] for no txids; [`MerkleError::PartialTree`] when `matched` does
    /// not have one flag per txid or there are more than [`MAX_BLOCK_TRANSACTIONS`] txids.
    pub fn build(txids: &[Digest], matched: &[bool]) -> Result<Self, MerkleError> {
        if txids.is_empty() {
            return Err(MerkleError::Empty);
        }
        if matched.len() != txids.len() {
            return Err(MerkleError::PartialTree(
                "one match flag per txid is needed",
            ));
        }
        let total = u32::try_from(txids.len())
            .ok()
            .filter(|n| *n <= MAX_BLOCK_TRANSACTIONS)
            .ok_or(MerkleError::PartialTree("too many transactions"))?;
        let mut height = 0;
        while level_width(total, height) > 1 {
            height += 1;
        }
        // Every level, bottom up, and for every node whether a match is below it.
        let mut levels = vec![txids.to_vec()];
        let mut marks = vec![matched.to_vec()];
        while let (Some(level), Some(mark)) = (levels.last(), marks.last()) {
            if level.len() <= 1 {
                break;
            }
            let next: Vec<Digest> = level
                .chunks(2)
                .map(|p| match p {
                    [l, r] => pair_hash(l, r),
                    [l] => pair_hash(l, l),
                    _ => [0u8; 32],
                })
                .collect();
            let next_mark: Vec<bool> = mark.chunks(2).map(|p| p.iter().any(|m| *m)).collect();
            levels.push(next);
            marks.push(next_mark);
        }
        let mut tree = PartialMerkleTree {
            total_transactions: total,
            hashes: Vec::new(),
            flags: Vec::new(),
        };
        let mut bits = Vec::new();
        tree.build_node(&levels, &marks, height, 0, &mut bits);
        tree.flags = vec![0u8; bits.len().div_ceil(8)];
        for (i, b) in bits.iter().enumerate() {
            if let Some(byte) = tree.flags.get_mut(i / 8) {
                *byte |= u8::from(*b) << (i % 8);
            }
        }
        Ok(tree)
    }

    fn build_node(
        &mut self,
        levels: &[Vec<Digest>],
        marks: &[Vec<bool>],
        height: u32,
        pos: u64,
        bits: &mut Vec<bool>,
    ) {
        let h = height as usize;
        let i = pos as usize;
        let parent_of_match = marks
            .get(h)
            .and_then(|m| m.get(i))
            .copied()
            .unwrap_or(false);
        bits.push(parent_of_match);
        if height == 0 || !parent_of_match {
            if let Some(hash) = levels.get(h).and_then(|l| l.get(i)) {
                self.hashes.push(*hash);
            }
            return;
        }
        self.build_node(levels, marks, height - 1, pos * 2, bits);
        if pos * 2 + 1 < level_width(self.total_transactions, height - 1) {
            self.build_node(levels, marks, height - 1, pos * 2 + 1, bits);
        }
    }

    /// Walks the tree: the root it leads to and the matched transactions, with the checks of
    /// Bitcoin Core's `CPartialMerkleTree::ExtractMatches`.
    ///
    /// # Errors
    /// [`MerkleError::PartialTree`] when there are no or too many transactions, more hashes
    /// than transactions, fewer flag bits than hashes, the walk runs out of hashes or flag
    /// bits, hashes or whole flag bytes are left over, or two sibling subtrees are equal.
    pub fn extract_matches(&self) -> Result<PartialMatches, MerkleError> {
        let total = self.total_transactions;
        if total == 0 {
            return Err(MerkleError::PartialTree("no transactions"));
        }
        if total > MAX_BLOCK_TRANSACTIONS {
            return Err(MerkleError::PartialTree("too many transactions"));
        }
        if self.hashes.len() as u64 > u64::from(total) {
            return Err(MerkleError::PartialTree("more hashes than transactions"));
        }
        if (self.flags.len() as u64) * 8 < self.hashes.len() as u64 {
            return Err(MerkleError::PartialTree("fewer flag bits than hashes"));
        }
        let mut height = 0;
        while level_width(total, height) > 1 {
            height += 1;
        }
        let mut walk = Extract {
            total,
            hashes: &self.hashes,
            flags: &self.flags,
            hash_used: 0,
            bit_used: 0,
            matches: Vec::new(),
        };
        let root = walk.node(height, 0)?;
        if walk.bit_used.div_ceil(8) != self.flags.len() {
            return Err(MerkleError::PartialTree("flag bytes left over"));
        }
        if walk.hash_used != self.hashes.len() {
            return Err(MerkleError::PartialTree("hashes left over"));
        }
        Ok(PartialMatches {
            root,
            matches: walk.matches,
        })
    }

    /// The serialization inside a `CMerkleBlock`: total (u32 little-endian), the hashes and the
    /// flag bytes, each list preceded by its compact-size length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 9 + 32 * self.hashes.len() + 9 + self.flags.len());
        out.extend_from_slice(&self.total_transactions.to_le_bytes());
        write_compact_size(&mut out, self.hashes.len() as u64);
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        write_compact_size(&mut out, self.flags.len() as u64);
        out.extend_from_slice(&self.flags);
        out
    }
}

fn write_compact_size(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// A cursor over bytes whose reads fail instead of panicking.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MerkleError> {
        if self.rest.len() < n {
            return Err(MerkleError::PartialTree("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MerkleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A canonical compact size (the shortest encoding, as Bitcoin Core requires).
    fn compact_size(&mut self) -> Result<u64, MerkleError> {
        let non_canonical = MerkleError::PartialTree("non-canonical compact size");
        let [first] = self.array::<1>()?;
        let n = match first {
            0xfd => {
                let n = u64::from(u16::from_le_bytes(self.array()?));
                if n < 0xfd {
                    return Err(non_canonical);
                }
                n
            }
            0xfe => {
                let n = u64::from(u32::from_le_bytes(self.array()?));
                if n < 0x1_0000 {
                    return Err(non_canonical);
                }
                n
            }
            0xff => {
                let n = u64::from_le_bytes(self.array()?);
                if n < 0x1_0000_0000 {
                    return Err(non_canonical);
                }
                n
            }
            n => u64::from(n),
        };
        Ok(n)
    }
}

/// A `gettxoutproof` answer: an 80-byte block header and a partial Merkle tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxOutProof {
    /// The block header (80 bytes, as serialized).
    pub header: [u8; 80],
    /// The partial Merkle tree.
    pub tree: PartialMerkleTree,
}

impl TxOutProof {
    /// Parses the bytes of a `gettxoutproof` answer (decode its hex first).
    ///
    /// # Errors
    /// [`MerkleError::PartialTree`] when the bytes are truncated, have bytes left over, use a
    /// non-canonical length, or announce more hashes or flag bytes than the block could need.
    pub fn parse(bytes: &[u8]) -> Result<Self, MerkleError> {
        let mut r = Reader { rest: bytes };
        let header = r.array::<80>()?;
        let total_transactions = u32::from_le_bytes(r.array()?);
        let n_hashes = r.compact_size()?;
        if n_hashes > u64::from(MAX_BLOCK_TRANSACTIONS) {
            return Err(MerkleError::PartialTree(
                "more hashes than a block can need",
            ));
        }
        let mut hashes = Vec::with_capacity(n_hashes as usize);
        for _ in 0..n_hashes {
            hashes.push(r.array::<32>()?);
        }
        let n_flags = r.compact_size()?;
        // At most one flag bit per node of the largest tree.
        if n_flags > u64::from(MAX_BLOCK_TRANSACTIONS) / 4 + 2 {
            return Err(MerkleError::PartialTree(
                "more flag bytes than a block can need",
            ));
        }
        let flags = r.take(n_flags as usize)?.to_vec();
        if !r.rest.is_empty() {
            return Err(MerkleError::PartialTree("bytes left over"));
        }
        Ok(TxOutProof {
            header,
            tree: PartialMerkleTree {
                total_transactions,
                hashes,
                flags,
            },
        })
    }

    /// The serialized proof (what `gettxoutproof` returns, before hex).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header.to_vec();
        out.extend_from_slice(&self.tree.to_bytes());
        out
    }

    /// The block hash: double SHA-256 of the header (internal byte order; RPCs print it
    /// reversed).
    pub fn block_hash(&self) -> Digest {
        sha256d(&self.header)
    }

    /// The Merkle root the header commits to (internal byte order).
    pub fn header_merkle_root(&self) -> Digest {
        let mut root = [0u8; 32];
        root.copy_from_slice(&self.header[36..68]);
        root
    }

    /// Checks the partial tree against the header's Merkle root and returns the proven
    /// transactions (position and txid). Whether the block is in the best chain is for the
    /// caller to check against its own node, by [`TxOutProof::block_hash`].
    ///
    /// # Errors
    /// The errors of [`PartialMerkleTree::extract_matches`]; [`MerkleError::RootMismatch`]
    /// when the tree leads to another root than the header's.
    pub fn verify(&self) -> Result<Vec<(u32, Digest)>, MerkleError> {
        let found = self.tree.extract_matches()?;
        if found.root != self.header_merkle_root() {
            return Err(MerkleError::RootMismatch);
        }
        Ok(found.matches)
    }
}
