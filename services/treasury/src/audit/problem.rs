//! What is wrong with a reserve-proof bundle, one variant per failed check.
//!
//! Why its own file: every check (`manifest`, `bip322`, `quorum` and `bundle`'s own)
//! reports into it; living apart, it lets the checks import it without importing each other.

use bdk_wallet::bitcoin::Amount;

/// What is wrong with a bundle (besides the reserves report's own problems).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleProblem {
    /// The manifest is missing, malformed or does not match the files.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A file is missing.
    #[error("missing file {0}")]
    MissingFile(String),
    /// A file does not parse.
    #[error("{file}: {reason}")]
    Malformed {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// Two files disagree.
    #[error("{0}")]
    Disagree(String),
    /// The ledger key is unknown or malformed.
    #[error("ledger key: {0}")]
    LedgerKey(String),
    /// A checkpoint does not verify.
    #[error("{which} checkpoint: {reason}")]
    Checkpoint {
        /// `message` or `bundle`.
        which: &'static str,
        /// Why.
        reason: String,
    },
    /// The consistency proof does not verify.
    #[error("ledger consistency: {0}")]
    Consistency(String),
    /// An entry's inclusion proof is missing or does not verify.
    #[error("ledger entry {seq}: {reason}")]
    Inclusion {
        /// The entry.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A ledger entry the proof needs is not in the bundle.
    #[error("ledger: {0}")]
    MissingEntry(String),
    /// The reserve-proof rule of the request's policy is not met by the proven approvals (or
    /// cannot be checked: no policy, another policy than the ledger names).
    #[error("reserve-proof rule: {0}")]
    ProofQuorum(String),
    /// Liabilities above the proven reserves.
    #[error("liabilities of {liabilities} exceed the proven reserves of {reserves}")]
    LiabilitiesExceedReserves {
        /// The liabilities total.
        liabilities: Amount,
        /// The proven amount.
        reserves: Amount,
    },
    /// A liabilities file does not verify.
    #[error("liabilities: {0}")]
    Liabilities(String),
}
