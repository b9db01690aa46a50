//! `hashcore`: the one SHA-256 core of the strategic reserve.
//!
//! Why one crate: the reserve ledger (hash chain and RFC 9162 Merkle log), the liabilities sum
//! tree and the proof-of-reserves commitments must all hash through one engine that is verified
//! once, so an auditor has one thing to check, and so the fast SIMD code (the only `unsafe` code
//! of the whole project) lives in one place behind safe functions.
//!
//! Single-stream SHA-256 is bounded by the latency of the CPU's SHA instructions, so speed comes
//! from hashing many *independent* messages at once: one Merkle level per call. The [`Engine`]
//! picks a backend once at run time from the CPU's features (see [`Backend`]), after checking it
//! against fixed vectors; tests can force any backend the CPU has.
//!
//! - one-shot: [`sha256`], [`sha256d`]; streaming: [`Sha256`]; tagged (BIP-340 style): [`TaggedHash`];
//! - batched: [`Engine::hash64`], [`Engine::hash64d`], [`Engine::hash_fixed`],
//!   [`Engine::merkle_level_in_place`], and the RFC 9162 node hashes straight from 64-byte
//!   pairs, [`Engine::hash_nodes`] and [`Engine::node_level_in_place`];
//! - Merkle trees: [`merkle::rfc9162`] (the ledger's log), [`merkle::bitcoin`] (transaction
//!   trees), [`merkle::sum`] (liabilities).

mod engine;
pub mod merkle;
mod portable;
mod stream;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use engine::{Backend, BatchError, Engine, UnsupportedBackend};
pub use stream::{sha256, sha256d, Sha256, TaggedHash};

/// A SHA-256 digest.
pub type Digest = [u8; 32];
