//! Vaults: watch-only multisig descriptor wallets with key origins.
//!
//! A vault is a pair of public descriptors (receive and change keychains) over the co-signers'
//! extended public keys. This module holds what the custody domain needs to describe, export and
//! import them; no private keys live here.

pub mod formats;
