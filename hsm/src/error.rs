//! The one error type of the crate.
//!
//! Why one enum: callers (the service, the CLIs) map signer failures to operator messages and
//! audit records; a single `#[non_exhaustive]` enum with lowercase, secret-free messages keeps
//! that mapping in one place. No variant ever carries a PIN, a passphrase or key material.

use std::path::PathBuf;

/// Everything that can go wrong while loading a signer or signing with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The PKCS#11 module (shared library) could not be loaded or initialized.
    #[error("cannot load pkcs#11 module {path}: {source}")]
    ModuleLoad {
        /// Path of the module.
        path: PathBuf,
        /// What cryptoki reported.
        #[source]
        source: cryptoki::error::Error,
    },
    /// No initialized token carries this label.
    #[error("no pkcs#11 token labelled {label:?}")]
    TokenNotFound {
        /// The label looked for.
        label: String,
    },
    /// More than one token carries this label.
    #[error("more than one pkcs#11 token labelled {label:?}")]
    AmbiguousToken {
        /// The label looked for.
        label: String,
    },
    /// The token rejected the user PIN.
    #[error("wrong pin for pkcs#11 token {token:?}")]
    WrongPin {
        /// The token's label.
        token: String,
    },
    /// The token locked the user PIN after too many failures.
    #[error("pin locked on pkcs#11 token {token:?}")]
    PinLocked {
        /// The token's label.
        token: String,
    },
    /// No key pair with this label on the token.
    #[error("no key labelled {label:?} on pkcs#11 token {token:?}")]
    KeyNotFound {
        /// The token's label.
        token: String,
        /// The key label looked for.
        label: String,
    },
    /// More than one key with this label on the token: refuse to guess.
    #[error("more than one key labelled {label:?} on pkcs#11 token {token:?}")]
    AmbiguousKey {
        /// The token's label.
        token: String,
        /// The key label.
        label: String,
    },
    /// A key with this label already exists: generation refused.
    #[error("a key labelled {label:?} already exists on pkcs#11 token {token:?}")]
    KeyExists {
        /// The token's label.
        token: String,
        /// The key label.
        label: String,
    },
    /// The token returned a key or signature this crate cannot use.
    #[error("unexpected data from the hsm: {0}")]
    BadHsmData(String),
    /// Any other PKCS#11 failure, with the operation that failed.
    #[error("pkcs#11 {operation} failed: {source}")]
    Pkcs11 {
        /// The operation (e.g. "sign", "login").
        operation: &'static str,
        /// What cryptoki reported.
        #[source]
        source: cryptoki::error::Error,
    },
    /// A freshly made signature did not verify against the key and digest: never returned.
    #[error("signature from {signer} failed verification; not used")]
    SignatureCheckFailed {
        /// Id of the signer that produced it.
        signer: String,
    },

    /// An input holds one of our keys but has no `witness_utxo`.
    #[error("input {input}: missing witness_utxo")]
    MissingWitnessUtxo {
        /// Input index.
        input: usize,
    },
    /// A wsh input holds one of our keys but has no `witness_script`.
    #[error("input {input}: missing witness_script")]
    MissingWitnessScript {
        /// Input index.
        input: usize,
    },
    /// The spent output is not P2WSH of the given witness script.
    #[error("input {input}: witness_utxo script is not p2wsh(witness_script)")]
    WitnessScriptMismatch {
        /// Input index.
        input: usize,
    },
    /// `non_witness_utxo` disagrees with the outpoint or with `witness_utxo`.
    #[error("input {input}: non_witness_utxo does not match the spent outpoint or witness_utxo")]
    UtxoMismatch {
        /// Input index.
        input: usize,
    },
    /// The input asks for a sighash type other than ALL (or DEFAULT for taproot).
    #[error("input {input}: sighash type {sighash} refused (only all/default are signed)")]
    SighashRefused {
        /// Input index.
        input: usize,
        /// The sighash type asked for, as a number.
        sighash: u32,
    },
    /// The key to sign with does not appear in the script it would sign for.
    #[error("input {input}: key {key} does not appear in the script being signed")]
    KeyNotInScript {
        /// Input index.
        input: usize,
        /// The key, hex.
        key: String,
    },
    /// A taproot input's spent output is not P2TR.
    #[error("input {input}: witness_utxo is not a taproot output")]
    NotTaproot {
        /// Input index.
        input: usize,
    },
    /// A taproot leaf named by a key origin has no script, or its control block does not
    /// commit to the spent output key.
    #[error("input {input}: tap leaf {leaf} has no script committed to by the output key")]
    TapLeafMismatch {
        /// Input index.
        input: usize,
        /// The leaf hash, hex.
        leaf: String,
    },
    /// Computing a sighash failed (input index out of range and the like).
    #[error("input {input}: cannot compute sighash: {reason}")]
    Sighash {
        /// Input index.
        input: usize,
        /// Why.
        reason: String,
    },

    /// A sealed key file that the token's wrapping key does not open: another token, another
    /// wrapping key, or an altered file.
    #[error("sealed key {path} cannot be unsealed: the token's wrapping key does not open it (wrong token, or the file was altered)")]
    Unseal {
        /// The sealed key file.
        path: PathBuf,
    },
    /// A sealed key file this crate does not understand.
    #[error("invalid sealed key file {path}: {reason}")]
    InvalidSealedKey {
        /// The sealed key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The keystore passphrase is wrong (or the file was altered).
    #[error("wrong passphrase for keystore (or the file was altered)")]
    WrongPassphrase,
    /// The keystore file is not a keystore this crate understands.
    #[error("invalid keystore file: {0}")]
    InvalidKeystore(String),
    /// KDF parameters outside the accepted range.
    #[error("invalid kdf parameters: {0}")]
    KdfParams(String),
    /// Key derivation or key handling failed.
    #[error("key error: {0}")]
    Key(String),
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// Reading or writing a keystore file failed.
    #[error("keystore file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl HsmError {
    pub(crate) fn pkcs11(operation: &'static str) -> impl FnOnce(cryptoki::error::Error) -> Self {
        move |source| HsmError::Pkcs11 { operation, source }
    }
}
