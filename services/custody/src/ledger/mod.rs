//! The reserve ledger model: entries and their canonical encoding, the hash chain, the RFC 9162
//! Merkle log over the entry hashes, signed checkpoints and offline (auditor) verification.
//!
//! Pure and synchronous: storage lives in `treasury`. The byte formats are specified in
//! docs/ledger-format.md and frozen by golden vectors in this crate's tests.

pub mod audit;
pub mod chain;
pub mod checkpoint;
mod codec;
pub mod entry;
pub mod log;

pub use audit::{
    audit_consistency, audit_inclusion, audit_ledger, parse_json_lines, to_json_line, AuditError,
    AuditReport, ConsistencyProofJson, EntryJson, InclusionProofJson,
};
pub use chain::{verify_chain, ChainError, ChainFault, ChainVerifier, LedgerHead, VerifiedLog};
pub use checkpoint::{
    ecdsa_key_id, key_id, validate_origin, AnyCheckpointSigner, Checkpoint, CheckpointError,
    CheckpointKey, CheckpointSignature, CheckpointSigner, KeyFileSigner, SignatureKind,
    SignerError, VerifierKey,
};
pub use codec::DecodeError;
pub use entry::{
    Actor, CheckpointPayload, Entry, EntryDraft, EntryError, Kind, NotePayload, Payload,
    PayloadType, ENTRY_HASH_TAG, GENESIS_PREV_HASH,
};
pub use log::{
    consistency_proof, entry_leaf_hash, entry_leaf_hashes, inclusion_proof, leaf_hashes, tree_root,
    ProofError,
};
