//! Liabilities: what the reserve owes its sub-accounts (agencies, programs), in a Merkle sum
//! tree, with one inclusion proof per account and the check that the total does not exceed
//! the proven reserves.
//!
//! Why a sum tree and per-account proofs: a published total alone proves nothing, since any
//! account could be left out or understated. With hashcore's sum tree
//! ([`hashcore::merkle::sum`]) each node commits to both child hashes *and* both child sums,
//! so a holder who checks that their own balance leads to the published root hash and total
//! knows it was counted in full; the auditor then checks the total against the BIP-127 proof
//! ([`check_reserves`]).
//!
//! Why salted commitments: the published tree (and every sibling in a proof) must not reveal
//! who the accounts are. Each leaf carries [`account_commitment`], the tagged hash
//! ([`ACCOUNT_TAG`]) of a per-account random 32-byte salt and the account id; only the holder
//! of a proof learns the salt of their own account. Balances of siblings remain visible as
//! subtree sums, which is inherent to a sum tree.
//!
//! Why a wrapped root: the published root ([`published_root`]) is a tagged hash of the sum
//! tree's root, the total and the number of accounts, so the one hex string an auditor is given
//! fixes all three; a proof cannot claim another tree size.
//!
//! Why sorted by commitment: the same accounts (with the same salts) give the same root
//! whatever order they were listed in, and the order leaks nothing about the ids.
//!
//! Why pure: an auditor or account holder re-runs [`LiabilityProof::verify`] from the proof
//! file and the published root alone. Files, randomness and the ledger store live in
//! `treasury`.

use std::collections::HashSet;
use std::sync::OnceLock;

use bdk_wallet::bitcoin::Amount;
use hashcore::merkle::sum::{SumLeaf, SumNode, SumProof, SumTree};
use hashcore::merkle::MerkleError;
use hashcore::{Digest, Engine, TaggedHash};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::ledger::{EntryDraft, EntryError, Kind};
use crate::vault::ledger_record;

/// The tag of the account-identifier commitment (a BIP-340 style tagged hash).
pub const ACCOUNT_TAG: &str = "strategic-reserve/liabilities/account/v1";

/// The tag of the published root, which binds the sum tree's root hash, the total and the
/// number of accounts ([`published_root`]).
pub const ROOT_TAG: &str = "strategic-reserve/liabilities/root/v1";

/// The `format` field of a proof document.
pub const PROOF_FORMAT: &str = "strategic-reserve liability proof v1";

/// The `format` field of a root document.
pub const ROOT_FORMAT: &str = "strategic-reserve liabilities root v1";

/// The `type` field of the ledger entry body that records a root (kind `reserve_proof`).
pub const LEDGER_TYPE: &str = "liabilities_root";

/// Longest account id, in bytes.
pub const MAX_ACCOUNT_ID_LEN: usize = 64;

/// Most accounts in one tree (keeps the path length and memory bounded).
pub const MAX_ACCOUNTS: usize = 1 << 24;

/// Why a liabilities tree was not built, or a proof or its input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LiabilityError {
    /// An account id that is empty, too long, or has characters outside `[A-Za-z0-9._-]`
    /// (or does not start with a letter or digit).
    #[error("invalid account id {id:?}: {reason}")]
    InvalidAccountId {
        /// The id as given.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The same account id twice.
    #[error("account {0} appears twice")]
    DuplicateAccount(String),
    /// A balance above the 21 million bitcoin that can ever exist.
    #[error("balance of {sat} sat is above the bitcoin supply")]
    BalanceTooLarge {
        /// The balance in satoshis.
        sat: u64,
    },
    /// No accounts.
    #[error("a liabilities tree needs at least one account")]
    NoAccounts,
    /// More accounts than [`MAX_ACCOUNTS`].
    #[error("{0} accounts are more than the {MAX_ACCOUNTS} a tree may hold")]
    TooManyAccounts(usize),
    /// A total (or a partial sum on a proof path) that overflows 64 bits.
    #[error("sum of balances overflows 64 bits")]
    Overflow,
    /// A proof or account list that is not valid JSON of the expected shape, or bad hex.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// A leaf index at or beyond the tree size.
    #[error("leaf index {index} is outside a tree of {size} accounts")]
    IndexOutOfRange {
        /// The index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A tree size of zero or above [`MAX_ACCOUNTS`].
    #[error("tree size {0} is out of range")]
    SizeOutOfRange(u64),
    /// A proof path with the wrong number of siblings for its index and tree size.
    #[error("proof path has {got} siblings where index and tree size need {expected}")]
    PathLength {
        /// Siblings in the path.
        got: usize,
        /// Siblings the shape needs.
        expected: usize,
    },
    /// The proof names another root than the one the verifier was given.
    #[error("proof is for root {proof}, not the published root {expected}")]
    WrongRoot {
        /// The published root (hex).
        expected: String,
        /// The root in the proof (hex).
        proof: String,
    },
    /// The proof names another total than the one the verifier was given.
    #[error("proof is for a total of {proof} sat, not the published total of {expected} sat")]
    WrongTotal {
        /// The published total (sat).
        expected: u64,
        /// The total in the proof (sat).
        proof: u64,
    },
    /// The balance and the sibling sums do not add up to the root sum.
    #[error(
        "balance and sibling sums add up to {computed} sat, not the root sum of {root} sat \
         (an altered balance or sum)"
    )]
    SumMismatch {
        /// What the path adds up to (sat).
        computed: u64,
        /// The root sum (sat).
        root: u64,
    },
    /// The leaf and the path do not hash to the root.
    #[error(
        "account, salt, balance and path do not hash to the root {root} \
         (a wrong account id or salt, or an altered balance, sum or sibling hash)"
    )]
    NotInTree {
        /// The root (hex).
        root: String,
    },
    /// The liabilities total is above the proven reserves.
    #[error("liabilities of {liabilities} exceed the proven reserves of {reserves}")]
    LiabilitiesExceedReserves {
        /// The liabilities total.
        liabilities: Amount,
        /// The proven reserves.
        reserves: Amount,
    },
}

impl LiabilityError {
    fn malformed(what: &'static str, reason: impl ToString) -> Self {
        LiabilityError::Malformed {
            what,
            reason: reason.to_string(),
        }
    }
}

fn from_merkle(e: MerkleError) -> LiabilityError {
    match e {
        MerkleError::IndexOutOfRange { index, size } => {
            LiabilityError::IndexOutOfRange { index, size }
        }
        MerkleError::PathLength { got, expected } => LiabilityError::PathLength { got, expected },
        MerkleError::Empty => LiabilityError::NoAccounts,
        MerkleError::SumOverflow => LiabilityError::Overflow,
        other => LiabilityError::malformed("proof", other),
    }
}

/// A sub-account's identifier: 1 to [`MAX_ACCOUNT_ID_LEN`] bytes of `[A-Za-z0-9._-]`, starting
/// with a letter or digit (so it is also a safe file name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(String);

impl AccountId {
    /// Validates an account id.
    ///
    /// # Errors
    /// [`LiabilityError::InvalidAccountId`].
    pub fn new(id: impl Into<String>) -> Result<Self, LiabilityError> {
        let id = id.into();
        let bad = |reason| LiabilityError::InvalidAccountId {
            id: id.clone(),
            reason,
        };
        if id.is_empty() {
            return Err(bad("empty"));
        }
        if id.len() > MAX_ACCOUNT_ID_LEN {
            return Err(bad("longer than 64 bytes"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(bad("only letters, digits, '.', '_' and '-' are allowed"));
        }
        if !id.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(bad("must start with a letter or digit"));
        }
        Ok(AccountId(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl core::fmt::Display for AccountId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The commitment to an account id that a leaf carries:
/// `tagged_hash(ACCOUNT_TAG, salt || id)` (the salt is always 32 bytes, so the encoding is
/// unambiguous).
pub fn account_commitment(id: &AccountId, salt: &[u8; 32]) -> Digest {
    account_commitment_with(&TaggedHash::new(ACCOUNT_TAG), id, salt)
}

fn account_commitment_with(tag: &TaggedHash, id: &AccountId, salt: &[u8; 32]) -> Digest {
    tag.hasher().chain(salt).chain(id.0.as_bytes()).finalize()
}

/// Byte-wise (lexicographic) order of two digests, compared as four big-endian words (the
/// same order as comparing the arrays, without a `memcmp` call per comparison).
fn cmp_digest(a: &Digest, b: &Digest) -> std::cmp::Ordering {
    let (wa, _) = a.as_chunks::<8>();
    let (wb, _) = b.as_chunks::<8>();
    for (x, y) in wa.iter().zip(wb) {
        let o = u64::from_be_bytes(*x).cmp(&u64::from_be_bytes(*y));
        if o.is_ne() {
            return o;
        }
    }
    std::cmp::Ordering::Equal
}

/// Accounts per batched commitment call: the messages (at most 96 bytes each) and digests of
/// one chunk stay in the L1/L2 cache.
const COMMIT_CHUNK: usize = 1024;

/// The commitments of `accounts` ([`account_commitment`] of each, in the same order), hashed
/// on `engine` in batches: the messages `salt || id` of all ids of one length have the same
/// length, so they go side by side through [`TaggedHash::hash_fixed`].
pub fn account_commitments(engine: &Engine, accounts: &[Account]) -> Vec<Digest> {
    let mut out = vec![[0u8; 32]; accounts.len()];
    for_each_commitment(engine, accounts, |i, d| {
        if let Some(o) = out.get_mut(i) {
            *o = d;
        }
    });
    out
}

/// Computes the commitments of `accounts` as [`account_commitments`] does and hands each to
/// `put(position, commitment)` (so the tree build writes its sort keys directly).
fn for_each_commitment(engine: &Engine, accounts: &[Account], mut put: impl FnMut(usize, Digest)) {
    /// The pending messages of one id length and their positions.
    struct Pending {
        msgs: Vec<u8>,
        pos: Vec<usize>,
    }
    fn flush(
        tag: &TaggedHash,
        engine: &Engine,
        accounts: &[Account],
        len: usize,
        p: &mut Pending,
        digests: &mut [Digest],
        put: &mut impl FnMut(usize, Digest),
    ) {
        let d = &mut digests[..p.pos.len()];
        if tag.hash_fixed(engine, &p.msgs, len, d).is_err() {
            // Unreachable: one message of `len` bytes per slot. Stay correct anyway.
            for (o, &i) in d.iter_mut().zip(&p.pos) {
                if let Some(a) = accounts.get(i) {
                    *o = account_commitment_with(tag, &a.id, &a.salt);
                }
            }
        }
        for (&i, dg) in p.pos.iter().zip(d.iter()) {
            put(i, *dg);
        }
        p.msgs.clear();
        p.pos.clear();
    }
    let tag = TaggedHash::new(ACCOUNT_TAG);
    let mut digests = vec![[0u8; 32]; COMMIT_CHUNK];
    // One pass in input order; one chunk buffer per id length (1..=64 bytes), made when
    // first needed.
    let mut pending: Vec<Option<Pending>> = (0..=MAX_ACCOUNT_ID_LEN).map(|_| None).collect();
    for (i, a) in accounts.iter().enumerate() {
        let id = a.id.0.as_bytes();
        let Some(slot) = pending.get_mut(id.len()) else {
            continue; // Unreachable: `AccountId` holds at most 64 bytes.
        };
        let p = slot.get_or_insert_with(|| Pending {
            msgs: Vec::with_capacity(COMMIT_CHUNK * (32 + id.len())),
            pos: Vec::with_capacity(COMMIT_CHUNK),
        });
        p.msgs.extend_from_slice(&a.salt);
        p.msgs.extend_from_slice(id);
        p.pos.push(i);
        if p.pos.len() == COMMIT_CHUNK {
            flush(
                &tag,
                engine,
                accounts,
                32 + id.len(),
                p,
                &mut digests,
                &mut put,
            );
        }
    }
    for (id_len, slot) in pending.iter_mut().enumerate() {
        if let Some(p) = slot.as_mut().filter(|p| !p.pos.is_empty()) {
            flush(
                &tag,
                engine,
                accounts,
                32 + id_len,
                p,
                &mut digests,
                &mut put,
            );
        }
    }
}

/// The published root hash: `tagged_hash(ROOT_TAG, tree_root || total || accounts)` (total in
/// satoshis and the number of accounts, both 8 bytes big-endian).
///
/// Why not the sum tree's root alone: it commits to the total but not to the number of
/// leaves, and a proof's path only fixes the shape seen from its own leaf, so a proof could
/// claim another tree size and still verify. Binding both here means one published hex string
/// fixes the tree, its total and its size.
pub fn published_root(tree_root: &Digest, total_sat: u64, accounts: u64) -> Digest {
    TaggedHash::new(ROOT_TAG)
        .hasher()
        .chain(tree_root)
        .chain(&total_sat.to_be_bytes())
        .chain(&accounts.to_be_bytes())
        .finalize()
}

fn check_balance(balance: Amount) -> Result<(), LiabilityError> {
    if balance > Amount::MAX_MONEY {
        return Err(LiabilityError::BalanceTooLarge {
            sat: balance.to_sat(),
        });
    }
    Ok(())
}

/// A sub-account: its id, its balance and the salt of its commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    id: AccountId,
    balance: Amount,
    salt: [u8; 32],
}

impl Account {
    /// An account with a given salt (e.g. re-publishing a tree).
    ///
    /// # Errors
    /// [`LiabilityError::BalanceTooLarge`] above 21 million bitcoin.
    pub fn new(id: AccountId, balance: Amount, salt: [u8; 32]) -> Result<Self, LiabilityError> {
        check_balance(balance)?;
        Ok(Account { id, balance, salt })
    }

    /// An account with a fresh random salt from `rng`.
    ///
    /// # Errors
    /// As [`Account::new`].
    pub fn with_random_salt(
        id: AccountId,
        balance: Amount,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, LiabilityError> {
        let mut salt = [0u8; 32];
        rng.fill_bytes(&mut salt);
        Account::new(id, balance, salt)
    }

    /// The id.
    pub fn id(&self) -> &AccountId {
        &self.id
    }

    /// The balance.
    pub fn balance(&self) -> Amount {
        self.balance
    }

    /// The salt of the commitment.
    pub fn salt(&self) -> &[u8; 32] {
        &self.salt
    }

    /// The commitment to the id ([`account_commitment`]).
    pub fn commitment(&self) -> Digest {
        account_commitment(&self.id, &self.salt)
    }
}

/// The published root of a liabilities tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiabilitiesRoot {
    /// The published root hash ([`published_root`]).
    pub hash: Digest,
    /// The total of all balances.
    pub total: Amount,
    /// The number of accounts.
    pub accounts: u64,
}

/// The JSON form of a [`LiabilitiesRoot`] (`root.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootJson {
    /// [`ROOT_FORMAT`].
    pub format: String,
    /// The root hash (hex).
    pub root_hash: String,
    /// The total (integer satoshis).
    pub root_sum_sat: u64,
    /// The number of accounts.
    pub accounts: u64,
}

impl LiabilitiesRoot {
    /// The root hash in hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// The JSON document (pretty, one trailing newline).
    pub fn to_json(&self) -> String {
        let doc = RootJson {
            format: ROOT_FORMAT.to_string(),
            root_hash: self.hash_hex(),
            root_sum_sat: self.total.to_sat(),
            accounts: self.accounts,
        };
        let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Reads a root document.
    ///
    /// # Errors
    /// [`LiabilityError::Malformed`].
    pub fn parse(text: &str) -> Result<Self, LiabilityError> {
        let doc: RootJson =
            serde_json::from_str(text).map_err(|e| LiabilityError::malformed("root", e))?;
        if doc.format != ROOT_FORMAT {
            return Err(LiabilityError::malformed(
                "root",
                format!("format {:?} is not {ROOT_FORMAT:?}", doc.format),
            ));
        }
        Ok(LiabilitiesRoot {
            hash: parse_digest("root", &doc.root_hash)?,
            total: Amount::from_sat(doc.root_sum_sat),
            accounts: doc.accounts,
        })
    }

    /// The ledger entry that records this root: kind `reserve_proof`, body
    /// `{"type": "liabilities_root", "root_hash", "root_sum_sat", "accounts"}`.
    ///
    /// # Errors
    /// [`EntryError`] for an invalid actor.
    pub fn ledger_draft(&self, actor: &str, time_ms: i64) -> Result<EntryDraft, EntryError> {
        let body = serde_json::json!({
            "type": LEDGER_TYPE,
            "format": ROOT_FORMAT,
            "root_hash": self.hash_hex(),
            "root_sum_sat": self.total.to_sat(),
            "accounts": self.accounts,
        });
        ledger_record(Kind::ReserveProof, actor, &body, time_ms)
    }
}

/// Checks that the liabilities `total` does not exceed the proven `reserves`.
///
/// # Errors
/// [`LiabilityError::LiabilitiesExceedReserves`].
pub fn check_reserves(total: Amount, reserves: Amount) -> Result<(), LiabilityError> {
    if total > reserves {
        return Err(LiabilityError::LiabilitiesExceedReserves {
            liabilities: total,
            reserves,
        });
    }
    Ok(())
}

/// A built liabilities tree: the accounts (kept in their input order, with the leaf order as a
/// permutation, so building moves no accounts) and the tree.
#[derive(Debug, Clone)]
pub struct LiabilitiesTree {
    /// The accounts as given to [`LiabilitiesTree::build`].
    accounts: Vec<Account>,
    /// `order[leaf] = position in accounts`.
    order: Vec<u32>,
    /// The accounts in leaf order, built on the first call of [`LiabilitiesTree::accounts`].
    in_leaf_order: OnceLock<Vec<Account>>,
    tree: SumTree,
    total: Amount,
}

impl LiabilitiesTree {
    /// Builds the tree over `accounts` (any order; leaves are sorted by commitment).
    ///
    /// # Errors
    /// [`LiabilityError::NoAccounts`], [`LiabilityError::TooManyAccounts`],
    /// [`LiabilityError::DuplicateAccount`], [`LiabilityError::Overflow`] when the total
    /// overflows.
    pub fn build(accounts: Vec<Account>) -> Result<Self, LiabilityError> {
        Self::build_with(Engine::auto(), accounts)
    }

    /// As [`LiabilitiesTree::build`], hashing the tree on `engine`.
    ///
    /// # Errors
    /// As [`LiabilitiesTree::build`].
    pub fn build_with(engine: &Engine, accounts: Vec<Account>) -> Result<Self, LiabilityError> {
        if accounts.is_empty() {
            return Err(LiabilityError::NoAccounts);
        }
        if accounts.len() > MAX_ACCOUNTS {
            return Err(LiabilityError::TooManyAccounts(accounts.len()));
        }
        let mut seen = HashSet::with_capacity(accounts.len());
        let mut total = Amount::ZERO;
        // The balances in input order (8 bytes each), for the leaves after the sort.
        let mut balances = Vec::with_capacity(accounts.len());
        for a in &accounts {
            check_balance(a.balance)?;
            balances.push(a.balance.to_sat());
            if !seen.insert(a.id.as_str()) {
                return Err(LiabilityError::DuplicateAccount(a.id.0.clone()));
            }
            total = total
                .checked_add(a.balance)
                .ok_or(LiabilityError::Overflow)?;
        }
        drop(seen);
        // Sort small (commitment, position) pairs; `MAX_ACCOUNTS` positions fit in a `u32`.
        let mut keyed: Vec<(Digest, u32)> = vec![([0u8; 32], 0); accounts.len()];
        for_each_commitment(engine, &accounts, |i, d| {
            if let (Some(k), Ok(pos)) = (keyed.get_mut(i), u32::try_from(i)) {
                *k = (d, pos);
            }
        });
        keyed.sort_unstable_by(|a, b| cmp_digest(&a.0, &b.0));
        let leaves = keyed.iter().map(|&(c, i)| SumLeaf {
            account_commitment: c,
            balance: balances.get(i as usize).copied().unwrap_or(0),
        });
        let tree = SumTree::from_leaves(engine, leaves).map_err(from_merkle)?;
        drop(balances);
        let order = keyed.into_iter().map(|k| k.1).collect();
        Ok(LiabilitiesTree {
            accounts,
            order,
            in_leaf_order: OnceLock::new(),
            tree,
            total,
        })
    }

    /// The root hash, the total and the number of accounts.
    pub fn root(&self) -> LiabilitiesRoot {
        let root = self.tree.root();
        LiabilitiesRoot {
            hash: published_root(&root.hash, root.sum, self.tree.len()),
            total: self.total,
            accounts: self.tree.len(),
        }
    }

    /// The accounts in leaf order. The tree keeps them in their input order; this list is
    /// copied into leaf order on the first call (use [`LiabilitiesTree::account`] for one).
    pub fn accounts(&self) -> &[Account] {
        self.in_leaf_order.get_or_init(|| {
            self.order
                .iter()
                .filter_map(|&i| self.accounts.get(i as usize).cloned())
                .collect()
        })
    }

    /// The account at leaf `index`.
    pub fn account(&self, index: u64) -> Option<&Account> {
        let i = usize::try_from(index).ok()?;
        self.accounts.get(*self.order.get(i)? as usize)
    }

    /// The number of accounts.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether there are no accounts (never true for a built tree).
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// The leaf index of account `id`.
    pub fn index_of(&self, id: &AccountId) -> Option<u64> {
        let pos = self.accounts.iter().position(|a| &a.id == id)?;
        self.order
            .iter()
            .position(|&i| i as usize == pos)
            .map(|leaf| leaf as u64)
    }

    /// The inclusion proof of the account at leaf `index`.
    ///
    /// # Errors
    /// [`LiabilityError::IndexOutOfRange`].
    pub fn proof(&self, index: u64) -> Result<LiabilityProof, LiabilityError> {
        let account = self.account(index).ok_or(LiabilityError::IndexOutOfRange {
            index,
            size: self.tree.len(),
        })?;
        let p = self.tree.proof(index).map_err(from_merkle)?;
        let root = self.root();
        Ok(LiabilityProof {
            format: PROOF_FORMAT.to_string(),
            account_id: account.id.0.clone(),
            salt: hex::encode(account.salt),
            balance_sat: account.balance.to_sat(),
            index: p.leaf_index,
            tree_size: p.tree_size,
            path: p
                .path
                .iter()
                .map(|n| PathNode {
                    hash: hex::encode(n.hash),
                    sum_sat: n.sum,
                })
                .collect(),
            root_hash: root.hash_hex(),
            root_sum_sat: root.total.to_sat(),
        })
    }
}

/// One sibling on a proof path: its hash (hex) and sum (integer satoshis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathNode {
    /// The sibling's hash (hex).
    pub hash: String,
    /// The sum below the sibling (satoshis).
    pub sum_sat: u64,
}

/// The inclusion proof of one account, as the JSON document given to its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiabilityProof {
    /// [`PROOF_FORMAT`].
    pub format: String,
    /// The account id.
    pub account_id: String,
    /// The salt of the account's commitment (hex, 32 bytes).
    pub salt: String,
    /// The balance (integer satoshis).
    pub balance_sat: u64,
    /// The leaf index.
    pub index: u64,
    /// The number of accounts in the tree.
    pub tree_size: u64,
    /// The siblings from the leaf up.
    pub path: Vec<PathNode>,
    /// The published root hash (hex, [`published_root`]).
    pub root_hash: String,
    /// The root sum: the total of all balances (integer satoshis).
    pub root_sum_sat: u64,
}

/// What a verified proof shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLiability {
    /// The account.
    pub account: AccountId,
    /// Its balance.
    pub balance: Amount,
    /// The root it is included in.
    pub root: LiabilitiesRoot,
    /// Its leaf index.
    pub index: u64,
}

fn parse_digest(what: &'static str, s: &str) -> Result<Digest, LiabilityError> {
    let bytes = hex::decode(s.trim()).map_err(|e| LiabilityError::malformed(what, e))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        LiabilityError::malformed(what, format!("{} bytes where 32 are needed", bytes.len()))
    })
}

impl LiabilityProof {
    /// The JSON document (pretty, one trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Reads a proof document (never panics on any input).
    ///
    /// # Errors
    /// [`LiabilityError::Malformed`].
    pub fn parse(text: &str) -> Result<Self, LiabilityError> {
        let p: LiabilityProof =
            serde_json::from_str(text).map_err(|e| LiabilityError::malformed("proof", e))?;
        if p.format != PROOF_FORMAT {
            return Err(LiabilityError::malformed(
                "proof",
                format!("format {:?} is not {PROOF_FORMAT:?}", p.format),
            ));
        }
        Ok(p)
    }

    /// Verifies the proof against the published root hash (hex) and, when given, the
    /// published total.
    ///
    /// # Errors
    /// [`LiabilityError::Malformed`] for bad hex or ids; [`LiabilityError::WrongRoot`],
    /// [`LiabilityError::WrongTotal`] when the proof names another root;
    /// [`LiabilityError::IndexOutOfRange`], [`LiabilityError::SizeOutOfRange`],
    /// [`LiabilityError::PathLength`] for a malformed shape; [`LiabilityError::Overflow`],
    /// [`LiabilityError::SumMismatch`], [`LiabilityError::NotInTree`] when the account is not
    /// in the tree as claimed.
    pub fn verify(
        &self,
        root_hex: &str,
        root_sum: Option<Amount>,
    ) -> Result<VerifiedLiability, LiabilityError> {
        self.verify_with(Engine::auto(), root_hex, root_sum)
    }

    /// As [`LiabilityProof::verify`], hashing on `engine`.
    ///
    /// # Errors
    /// As [`LiabilityProof::verify`].
    pub fn verify_with(
        &self,
        engine: &Engine,
        root_hex: &str,
        root_sum: Option<Amount>,
    ) -> Result<VerifiedLiability, LiabilityError> {
        let expected = parse_digest("root", root_hex)?;
        let claimed = parse_digest("proof root", &self.root_hash)?;
        if claimed != expected {
            return Err(LiabilityError::WrongRoot {
                expected: hex::encode(expected),
                proof: hex::encode(claimed),
            });
        }
        if let Some(total) = root_sum {
            if total.to_sat() != self.root_sum_sat {
                return Err(LiabilityError::WrongTotal {
                    expected: total.to_sat(),
                    proof: self.root_sum_sat,
                });
            }
        }
        if self.tree_size == 0 || self.tree_size > MAX_ACCOUNTS as u64 {
            return Err(LiabilityError::SizeOutOfRange(self.tree_size));
        }
        if self.index >= self.tree_size {
            return Err(LiabilityError::IndexOutOfRange {
                index: self.index,
                size: self.tree_size,
            });
        }
        let id = AccountId::new(self.account_id.clone())?;
        let salt = parse_digest("salt", &self.salt)?;
        let balance = Amount::from_sat(self.balance_sat);
        check_balance(balance)?;
        let mut path = Vec::with_capacity(self.path.len());
        for n in &self.path {
            path.push(SumNode {
                hash: parse_digest("path hash", &n.hash)?,
                sum: n.sum_sat,
            });
        }
        let proof = SumProof {
            leaf_index: self.index,
            tree_size: self.tree_size,
            path,
        };
        let leaf = SumLeaf {
            account_commitment: account_commitment(&id, &salt),
            balance: self.balance_sat,
        };
        let node = proof.root_from(engine, &leaf).map_err(from_merkle)?;
        if node.sum != self.root_sum_sat {
            return Err(LiabilityError::SumMismatch {
                computed: node.sum,
                root: self.root_sum_sat,
            });
        }
        if published_root(&node.hash, node.sum, self.tree_size) != expected {
            return Err(LiabilityError::NotInTree {
                root: hex::encode(expected),
            });
        }
        Ok(VerifiedLiability {
            account: id,
            balance,
            root: LiabilitiesRoot {
                hash: expected,
                total: Amount::from_sat(self.root_sum_sat),
                accounts: self.tree_size,
            },
            index: self.index,
        })
    }
}

/// Parses and verifies a proof document in one step ([`LiabilityProof::parse`] then
/// [`LiabilityProof::verify`]).
///
/// # Errors
/// As those two.
pub fn verify_proof_json(
    text: &str,
    root_hex: &str,
    root_sum: Option<Amount>,
) -> Result<VerifiedLiability, LiabilityError> {
    LiabilityProof::parse(text)?.verify(root_hex, root_sum)
}

/// One account as listed in an input file: an id, a balance and optionally a salt (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountInput {
    /// The account id.
    pub account_id: String,
    /// The balance (integer satoshis).
    pub balance_sat: u64,
    /// The salt (hex, 32 bytes); a fresh random one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

impl AccountInput {
    /// The account, with the given salt or a fresh one from `rng`.
    ///
    /// # Errors
    /// [`LiabilityError::InvalidAccountId`], [`LiabilityError::BalanceTooLarge`],
    /// [`LiabilityError::Malformed`] for a bad salt.
    pub fn to_account(
        &self,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Account, LiabilityError> {
        let id = AccountId::new(self.account_id.clone())?;
        let balance = Amount::from_sat(self.balance_sat);
        match &self.salt {
            Some(s) => Account::new(id, balance, parse_digest("salt", s)?),
            None => Account::with_random_salt(id, balance, rng),
        }
    }
}

/// Reads an account list: a JSON array of [`AccountInput`] objects.
///
/// # Errors
/// [`LiabilityError::Malformed`].
pub fn parse_accounts_json(text: &str) -> Result<Vec<AccountInput>, LiabilityError> {
    serde_json::from_str(text).map_err(|e| LiabilityError::malformed("account list", e))
}

/// Reads an account list as CSV: `account_id,balance_sat[,salt]` per line, an optional header
/// line starting with `account_id`, blank lines and `#` comments ignored.
///
/// # Errors
/// [`LiabilityError::Malformed`] naming the line.
pub fn parse_accounts_csv(text: &str) -> Result<Vec<AccountInput>, LiabilityError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (n == 0 && line.starts_with("account_id")) {
            continue;
        }
        let bad = |reason: String| {
            LiabilityError::malformed("account list", format!("line {}: {reason}", n + 1))
        };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let (id, bal, salt) = match fields.as_slice() {
            [id, bal] => (*id, *bal, None),
            [id, bal, salt] => (*id, *bal, Some((*salt).to_string())),
            _ => return Err(bad("expected account_id,balance_sat[,salt]".into())),
        };
        let balance_sat = bal
            .parse::<u64>()
            .map_err(|e| bad(format!("balance {bal:?}: {e}")))?;
        out.push(AccountInput {
            account_id: id.to_string(),
            balance_sat,
            salt,
        });
    }
    Ok(out)
}
