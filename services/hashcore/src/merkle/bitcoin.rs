//! Bitcoin's transaction Merkle tree: double SHA-256 of 64-byte pairs (SHA256D64), the odd last
//! node of a level paired with itself. Hashes are in internal byte order (as in blocks, not
//! the reversed hex that RPCs print).
//!
//! Duplicating the odd node makes `[a, b, c]` and `[a, b, c, c]` share a root (CVE-2012-2459);
//! [`merkle_root_checked`] reports such a mutation the way Bitcoin Core's `ComputeMerkleRoot`
//! does, so a check of a block's transaction list can refuse it.

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
