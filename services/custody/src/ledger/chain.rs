//! The hash chain and the appender state: [`LedgerHead`] builds the next entries
//! deterministically and checks stored entries one by one, and [`ChainVerifier`] walks a whole
//! log (hashes, links, order, time, embedded checkpoints) and names the first bad seq.

use hashcore::merkle::rfc9162::CompactTree;
use hashcore::{Digest, Engine};
use thiserror::Error;

use super::checkpoint::{parse_note, Checkpoint, CheckpointError, VerifierKey};
use super::entry::{Entry, EntryDraft, EntryError, Kind, GENESIS_PREV_HASH};
use super::log::{entry_leaf_hash, leaf_hashes};

/// Entries whose leaves [`verify_chain`] hashes and adds to the tree in one batch.
const VERIFY_BATCH: usize = 1 << 14;

/// What is wrong with an entry of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainFault {
    /// The entry expected at this position is not in the log at all.
    #[error("missing: expected seq {expected}, found seq {found}")]
    Missing {
        /// The seq expected here.
        expected: u64,
        /// The seq found here.
        found: u64,
    },
    /// The entries are not in seq order (swapped, duplicated or moved).
    #[error("out of order: expected seq {expected}, found seq {found}")]
    OutOfOrder {
        /// The seq expected here.
        expected: u64,
        /// The seq found here.
        found: u64,
    },
    /// The stored entry hash is not the hash of the entry's content (content or hash altered).
    #[error("entry hash mismatch: stored {stored}, content hashes to {computed}")]
    HashMismatch {
        /// The stored hash, hex.
        stored: String,
        /// The recomputed hash, hex.
        computed: String,
    },
    /// The entry's prev_hash is not the previous entry's hash.
    #[error("prev hash mismatch: entry links to {found}, previous entry hash is {expected}")]
    PrevMismatch {
        /// The previous entry's hash, hex.
        expected: String,
        /// The entry's prev_hash, hex.
        found: String,
    },
    /// The time is earlier than the previous entry's.
    #[error("time went back: {found} ms after {previous} ms")]
    TimeWentBack {
        /// The previous entry's time.
        previous: i64,
        /// This entry's time.
        found: i64,
    },
    /// The entry's payload is not valid for its kind.
    #[error("invalid payload: {0}")]
    Payload(EntryError),
    /// An embedded checkpoint does not parse or verify.
    #[error("checkpoint: {0}")]
    Checkpoint(CheckpointError),
    /// An embedded checkpoint does not cover exactly the entries before it.
    #[error("checkpoint covers {size} entries but sits at seq {seq}")]
    CheckpointSize {
        /// The checkpoint's tree size.
        size: u64,
        /// The checkpoint entry's seq.
        seq: u64,
    },
    /// An embedded checkpoint's root is not the log's root at its size.
    #[error("checkpoint root {found} does not match the log root {expected}")]
    CheckpointRoot {
        /// The root of the entries before the checkpoint, hex.
        expected: String,
        /// The checkpoint's root, hex.
        found: String,
    },
    /// The stored entry does not decode (a malformed row or export line).
    #[error("malformed entry: {0}")]
    Malformed(String),
    /// The sequence number space is exhausted.
    #[error("sequence number overflow")]
    SeqOverflow,
}

/// The first bad entry of a chain and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("first bad seq {seq}: {fault}")]
pub struct ChainError {
    /// The first seq that is not right (the seq expected at the bad position).
    pub seq: u64,
    /// What is wrong.
    pub fault: ChainFault,
}

/// The appender state after some entries: the next seq, the last hash and time, and the
/// RFC 9162 compact tree of the entry hashes so far.
#[derive(Debug, Clone)]
pub struct LedgerHead {
    next_seq: u64,
    last_hash: Digest,
    last_time_ms: i64,
    tree: CompactTree,
}

impl Default for LedgerHead {
    fn default() -> Self {
        Self::genesis()
    }
}

impl LedgerHead {
    /// The head of the empty ledger.
    pub fn genesis() -> Self {
        LedgerHead {
            next_seq: 0,
            last_hash: GENESIS_PREV_HASH,
            last_time_ms: 0,
            tree: CompactTree::new(),
        }
    }

    /// Restores a head from its stored parts (as written by [`LedgerHead::frontier`] and the
    /// accessors): size, last hash, last time and the compact tree's frontier.
    ///
    /// # Errors
    /// [`ChainFault::Malformed`] when the frontier does not fit the size, or the last hash is
    /// not the genesis hash for an empty log.
    pub fn from_parts(
        size: u64,
        last_hash: Digest,
        last_time_ms: i64,
        frontier: Vec<Digest>,
    ) -> Result<Self, ChainFault> {
        let tree = CompactTree::from_parts(size, frontier)
            .map_err(|e| ChainFault::Malformed(format!("compact tree: {e}")))?;
        if size == 0 && (last_hash != GENESIS_PREV_HASH || last_time_ms != 0) {
            return Err(ChainFault::Malformed(
                "an empty log has the genesis hash and time 0".into(),
            ));
        }
        Ok(LedgerHead {
            next_seq: size,
            last_hash,
            last_time_ms,
            tree,
        })
    }

    /// The compact tree's frontier (the roots of its perfect subtrees, largest first), for
    /// storing beside size, last hash and last time.
    pub fn frontier(&self) -> Vec<Digest> {
        self.tree.to_parts().1
    }

    /// The seq the next entry gets (= the number of entries).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The number of entries (= the tree size).
    pub fn size(&self) -> u64 {
        self.next_seq
    }

    /// The last entry's hash ([`GENESIS_PREV_HASH`] when empty).
    pub fn last_hash(&self) -> &Digest {
        &self.last_hash
    }

    /// The last entry's time (0 when empty).
    pub fn last_time_ms(&self) -> i64 {
        self.last_time_ms
    }

    /// The RFC 9162 root of all entries so far (SHA-256 of nothing when empty).
    pub fn root(&self) -> Digest {
        self.tree.root(Engine::auto())
    }

    /// The compact tree.
    pub fn tree(&self) -> &CompactTree {
        &self.tree
    }

    /// Builds the next entry from `draft` (its time raised to the last entry's time if the
    /// clock went back) and advances the head.
    ///
    /// # Errors
    /// [`EntryError`] when the draft is invalid; the head is then unchanged.
    pub fn append(&mut self, draft: EntryDraft) -> Result<Entry, EntryError> {
        let entry = self.next_entry(draft)?;
        self.advance(&entry);
        Ok(entry)
    }

    /// Builds the next entries from `drafts`, all or nothing.
    ///
    /// # Errors
    /// [`EntryError`] for the first invalid draft; the head is then unchanged.
    pub fn append_batch(
        &mut self,
        drafts: impl IntoIterator<Item = EntryDraft>,
    ) -> Result<Vec<Entry>, EntryError> {
        let mut next = self.clone();
        let entries = drafts
            .into_iter()
            .map(|d| next.append(d))
            .collect::<Result<Vec<_>, _>>()?;
        *self = next;
        Ok(entries)
    }

    /// The entry [`LedgerHead::append`] would build, without advancing.
    ///
    /// # Errors
    /// [`EntryError`] when the draft is invalid.
    pub fn next_entry(&self, mut draft: EntryDraft) -> Result<Entry, EntryError> {
        if self.next_seq == u64::MAX {
            return Err(EntryError::SeqOverflow);
        }
        draft.time_ms = draft.time_ms.max(self.last_time_ms);
        Entry::new(self.next_seq, draft, self.last_hash)
    }

    /// The checkpoint of the entries so far, at `time_ms` (raised to the last entry's time).
    ///
    /// # Errors
    /// [`CheckpointError::InvalidOrigin`].
    pub fn checkpoint(&self, origin: &str, time_ms: i64) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::new(
            origin,
            self.size(),
            self.root(),
            time_ms.max(self.last_time_ms),
        )
    }

    /// Checks that `entry` is the right next entry (seq, link, hash, time; the payload is
    /// valid for its kind by construction) and advances the head. Embedded checkpoints are
    /// checked by [`ChainVerifier`], not here.
    ///
    /// # Errors
    /// [`ChainFault`] naming what is wrong; the head is then unchanged.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), ChainFault> {
        self.check_next(entry)?;
        self.advance(entry);
        Ok(())
    }

    fn check_next(&self, entry: &Entry) -> Result<(), ChainFault> {
        if self.next_seq == u64::MAX {
            return Err(ChainFault::SeqOverflow);
        }
        if entry.seq() != self.next_seq {
            return Err(if entry.seq() < self.next_seq {
                ChainFault::OutOfOrder {
                    expected: self.next_seq,
                    found: entry.seq(),
                }
            } else {
                ChainFault::Missing {
                    expected: self.next_seq,
                    found: entry.seq(),
                }
            });
        }
        let computed = entry.compute_hash();
        if &computed != entry.entry_hash() {
            return Err(ChainFault::HashMismatch {
                stored: hex::encode(entry.entry_hash()),
                computed: hex::encode(computed),
            });
        }
        if entry.prev_hash() != &self.last_hash {
            return Err(ChainFault::PrevMismatch {
                expected: hex::encode(self.last_hash),
                found: hex::encode(entry.prev_hash()),
            });
        }
        if entry.time_ms() < self.last_time_ms {
            return Err(ChainFault::TimeWentBack {
                previous: self.last_time_ms,
                found: entry.time_ms(),
            });
        }
        Ok(())
    }

    fn advance(&mut self, entry: &Entry) {
        self.tree
            .push(Engine::auto(), entry_leaf_hash(entry.entry_hash()));
        self.advance_chain(entry);
    }

    /// Advances seq, last hash and time only; the caller adds the entry's leaf to the tree.
    fn advance_chain(&mut self, entry: &Entry) {
        self.next_seq = entry.seq() + 1;
        self.last_hash = *entry.entry_hash();
        self.last_time_ms = entry.time_ms();
    }

    /// Rebuilds the head from a log's entries, checking each as [`LedgerHead::apply`] does
    /// (seq, hash, link, time; embedded checkpoints are left to [`ChainVerifier`]).
    ///
    /// # Errors
    /// [`ChainError`] for the first bad entry.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<Self, ChainError> {
        let mut head = LedgerHead::genesis();
        for e in entries {
            let seq = head.next_seq;
            head.apply(e).map_err(|fault| ChainError { seq, fault })?;
        }
        Ok(head)
    }
}

/// What a successful walk of a log found.
#[derive(Debug, Clone)]
pub struct VerifiedLog {
    /// The head after the last entry (size, root, last hash).
    pub head: LedgerHead,
    /// The checkpoint entries seen (their signatures checked when a key was given).
    pub checkpoints: Vec<Checkpoint>,
}

/// Walks a log entry by entry, in seq order, checking everything [`LedgerHead::apply`] checks
/// plus every embedded checkpoint: its note parses, covers exactly the entries before it and
/// has their root, and (when a verifier key is given) is signed by that key for that origin.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    head: LedgerHead,
    key: Option<VerifierKey>,
    checkpoints: Vec<Checkpoint>,
}

impl ChainVerifier {
    /// A verifier of a log from seq 0; `key` checks embedded checkpoint signatures.
    pub fn new(key: Option<VerifierKey>) -> Self {
        ChainVerifier {
            head: LedgerHead::genesis(),
            key,
            checkpoints: Vec::new(),
        }
    }

    /// The head after the entries pushed so far.
    pub fn head(&self) -> &LedgerHead {
        &self.head
    }

    /// Checks the next entry.
    ///
    /// # Errors
    /// [`ChainError`] naming the first bad seq; the verifier should not be used after that.
    pub fn push(&mut self, entry: &Entry) -> Result<(), ChainError> {
        let seq = self.head.next_seq();
        let err = |fault| ChainError { seq, fault };
        self.head.check_next(entry).map_err(err)?;
        if entry.kind() == Kind::Checkpoint {
            let cp = self.check_checkpoint(entry).map_err(err)?;
            self.checkpoints.push(cp);
        }
        self.head.advance(entry);
        Ok(())
    }

    /// As [`ChainVerifier::push`], but the entry's hash is queued in `pending` and its leaf
    /// joins the tree only at the next [`ChainVerifier::flush`] (done here before a checkpoint
    /// entry, whose root must cover the entries before it). The head's tree lags until then.
    fn push_deferred(
        &mut self,
        entry: &Entry,
        pending: &mut Vec<Digest>,
    ) -> Result<(), ChainError> {
        let seq = self.head.next_seq();
        let err = |fault| ChainError { seq, fault };
        self.head.check_next(entry).map_err(err)?;
        if entry.kind() == Kind::Checkpoint {
            self.flush(pending);
            let cp = self.check_checkpoint(entry).map_err(err)?;
            self.checkpoints.push(cp);
        }
        self.head.advance_chain(entry);
        pending.push(*entry.entry_hash());
        if pending.len() >= VERIFY_BATCH {
            self.flush(pending);
        }
        Ok(())
    }

    /// Adds the queued entries' leaves to the tree: batched leaf hashes, then whole perfect
    /// subtrees at a time.
    fn flush(&mut self, pending: &mut Vec<Digest>) {
        if pending.is_empty() {
            return;
        }
        let leaves = leaf_hashes(pending);
        self.head.tree.extend(Engine::auto(), &leaves);
        pending.clear();
    }

    fn check_checkpoint(&self, entry: &Entry) -> Result<Checkpoint, ChainFault> {
        let payload = entry
            .payload()
            .as_checkpoint()
            .map_err(ChainFault::Payload)?;
        let cp = match &self.key {
            Some(key) => key.verify(payload.note()),
            None => parse_note(payload.note()).and_then(|n| Checkpoint::parse_body(n.text)),
        }
        .map_err(ChainFault::Checkpoint)?;
        if cp.size() != entry.seq() {
            return Err(ChainFault::CheckpointSize {
                size: cp.size(),
                seq: entry.seq(),
            });
        }
        let root = self.head.root();
        if cp.root() != &root {
            return Err(ChainFault::CheckpointRoot {
                expected: hex::encode(root),
                found: hex::encode(cp.root()),
            });
        }
        Ok(cp)
    }

    /// The result of the walk.
    pub fn finish(self) -> VerifiedLog {
        VerifiedLog {
            head: self.head,
            checkpoints: self.checkpoints,
        }
    }
}

/// Verifies a whole log given in order (see [`ChainVerifier`]).
///
/// # Errors
/// [`ChainError`] naming the first bad seq and what is wrong with it.
pub fn verify_chain(
    entries: &[Entry],
    key: Option<&VerifierKey>,
) -> Result<VerifiedLog, ChainError> {
    let mut v = ChainVerifier::new(key.cloned());
    let mut pending = Vec::with_capacity(VERIFY_BATCH.min(entries.len()));
    for (i, e) in entries.iter().enumerate() {
        if let Err(mut err) = v.push_deferred(e, &mut pending) {
            // A seq that appears later in the log was moved, not deleted.
            if let ChainFault::Missing { expected, found } = err.fault {
                if entries[i + 1..].iter().any(|x| x.seq() == expected) {
                    err.fault = ChainFault::OutOfOrder { expected, found };
                }
            }
            return Err(err);
        }
    }
    v.flush(&mut pending);
    Ok(v.finish())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ledger::{Actor, KeyFileSigner, Payload};

    const ORIGIN: &str = "reserve.example/ledger";

    fn signer() -> KeyFileSigner {
        KeyFileSigner::from_secret_bytes(&[0x42; 32]).unwrap()
    }

    /// `n` notes with a signed checkpoint entry after every `every`.
    fn log(n: u64, every: u64) -> Vec<Entry> {
        let mut head = LedgerHead::genesis();
        let mut out = Vec::new();
        for i in 0..n {
            if i > 0 && i.is_multiple_of(every) {
                let note = head
                    .checkpoint(ORIGIN, head.last_time_ms())
                    .unwrap()
                    .sign(&signer())
                    .unwrap();
                out.push(
                    head.append(EntryDraft {
                        time_ms: head.last_time_ms(),
                        kind: Kind::Checkpoint,
                        actor: Actor::new("ledger").unwrap(),
                        payload: Payload::checkpoint(note).unwrap(),
                    })
                    .unwrap(),
                );
            }
            let t = 1_764_057_600_000 + i64::try_from(i).unwrap();
            out.push(
                head.append(EntryDraft::note(t, "op", &format!("n {i}")).unwrap())
                    .unwrap(),
            );
        }
        out
    }

    fn one_by_one(entries: &[Entry], key: Option<&VerifierKey>) -> Result<VerifiedLog, ChainError> {
        let mut v = ChainVerifier::new(key.cloned());
        for e in entries {
            v.push(e)?;
        }
        Ok(v.finish())
    }

    #[test]
    fn batched_verify_chain_equals_push_one_by_one() {
        let key = VerifierKey::of_signer(ORIGIN, &signer()).unwrap();
        let entries = log(2 * VERIFY_BATCH as u64 + 777, 5_001);
        for n in [
            0,
            1,
            2,
            5_001,
            5_002,
            VERIFY_BATCH - 1,
            VERIFY_BATCH,
            VERIFY_BATCH + 1,
            entries.len(),
        ] {
            let a = verify_chain(&entries[..n], Some(&key)).unwrap();
            let b = one_by_one(&entries[..n], Some(&key)).unwrap();
            assert_eq!(a.head.tree(), b.head.tree(), "n {n}");
            assert_eq!(a.head.root(), b.head.root(), "n {n}");
            assert_eq!(a.head.next_seq(), b.head.next_seq());
            assert_eq!(a.head.last_hash(), b.head.last_hash());
            assert_eq!(a.checkpoints, b.checkpoints);
        }
        // A bad entry deep in the log is named the same way.
        let mut bad = entries.clone();
        bad.swap(VERIFY_BATCH + 3, VERIFY_BATCH + 4);
        let err = verify_chain(&bad, Some(&key)).unwrap_err();
        assert_eq!(err.seq, one_by_one(&bad, Some(&key)).unwrap_err().seq);
        assert_eq!(err.seq, bad[VERIFY_BATCH + 3].seq() - 1);
        assert!(
            matches!(err.fault, ChainFault::OutOfOrder { .. }),
            "{err:?}"
        );
    }
}
