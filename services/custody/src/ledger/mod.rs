//! The reserve ledger model: entries and their canonical encoding, the hash chain, the RFC 9162
//! Merkle log over the entry hashes, signed checkpoints and offline (auditor) verification.
//!
//! Pure and synchronous: storage lives in `treasury`. The byte formats are specified in
//! docs/ledger-format.md and frozen by golden vectors in this crate's tests.

// pub mod audit; (waits for hashcore::merkle)
// pub mod chain; (waits for hashcore::merkle)
pub mod checkpoint;
mod codec;
pub mod entry;
// pub mod log; (waits for hashcore::merkle)

pub use checkpoint::{
    key_id, validate_origin, Checkpoint, CheckpointError, CheckpointSigner, KeyFileSigner,
    SignerError, VerifierKey,
};
pub use codec::DecodeError;
pub use entry::{
    Actor, CheckpointPayload, Entry, EntryDraft, EntryError, Kind, NotePayload, Payload,
    PayloadType, ENTRY_HASH_TAG, GENESIS_PREV_HASH,
};
