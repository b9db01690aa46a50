//! The shape of a BIP-127 proof of reserves, as a signer checks it before it signs.
//!
//! Why here, in the policy crate: the policy's reserve-proof rule lets the quorum (and the HSM
//! policy key) sign a proof without spend approvals *because* a well-formed proof can never be
//! broadcast. That claim is checked in two places that must agree: `custody::reserves` (which
//! builds, finalizes and verifies proofs) and `hsm::PolicySigner` (which refuses to sign
//! anything that could be broadcast). `hsm` does not depend on `custody` (that would pull the
//! wallet into the signer), and both depend on `policies`: so the pure shape check and its
//! error type live here once, and `custody::reserves` re-exports them.
//!
//! What a proof looks like: input 0 spends the commitment outpoint (txid = single SHA-256 of
//! `"Proof-of-Reserves: " ‖ message`, index 0) with an empty scriptSig and witness, carrying
//! `PSBT_IN_POR_COMMITMENT` (0x09) = the message; every other input is a real UTXO signed with
//! `SIGHASH_ALL`; one `OP_RETURN` output pays exactly the sum of the real inputs (zero fee).
//! See docs/adr/0007-bip127-proof-core.md for the choices BIP-127 leaves open.

use std::collections::BTreeSet;

use bitcoin::hashes::Hash;
use bitcoin::opcodes::OP_TRUE;
use bitcoin::psbt::{Input, Psbt, PsbtSighashType};
use bitcoin::script::Builder;
use bitcoin::{
    Amount, EcdsaSighashType, OutPoint, ScriptBuf, TapSighashType, Transaction, TxOut, Txid,
};

/// PSBT input key type of `PSBT_IN_POR_COMMITMENT` (BIP-127): its value is the message.
pub const PSBT_IN_POR_COMMITMENT: u8 = 0x09;

/// What BIP-127 puts before the message when it hashes the commitment.
pub const COMMITMENT_PREFIX: &str = "Proof-of-Reserves: ";

/// First line of the canonical message text (names the format and its version).
pub const MESSAGE_HEADER: &str = "strategic-reserve proof of reserves v1";

/// Why a proof was not built, or a proof or its message was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofError {
    /// The message text is not the canonical encoding, or a field is invalid.
    #[error("invalid proof message: {0}")]
    Message(String),
    /// No UTXO to prove.
    #[error("a proof needs at least one real input")]
    NoUtxos,
    /// A vault whose descriptor checksums the message does not carry.
    #[error("vault {vault}: descriptor checksum {checksum} is not in the message")]
    VaultNotInMessage {
        /// The vault.
        vault: String,
        /// The missing checksum.
        checksum: String,
    },
    /// A UTXO the vault cannot describe (unknown transaction, wrong script, wrong value).
    #[error("utxo {outpoint}: {reason}")]
    Utxo {
        /// The outpoint.
        outpoint: OutPoint,
        /// Why.
        reason: String,
    },
    /// The same outpoint twice.
    #[error("outpoint {0} is spent twice")]
    DuplicateInput(OutPoint),
    /// Input 0 is not the commitment outpoint of this message (a real outpoint in position 0
    /// would make the transaction broadcastable, or the commitment is for another message).
    #[error("input 0 spends {found}, not the commitment outpoint {expected} of this message")]
    NotACommitment {
        /// What input 0 spends.
        found: OutPoint,
        /// The commitment outpoint of the message.
        expected: OutPoint,
    },
    /// Input 0 carries no `PSBT_IN_POR_COMMITMENT` field.
    #[error("input 0 carries no psbt_in_por_commitment (0x09) field")]
    MissingCommitmentField,
    /// The `PSBT_IN_POR_COMMITMENT` field holds another message, or is repeated.
    #[error("the psbt_in_por_commitment field of input 0 does not hold this message")]
    CommitmentFieldMismatch,
    /// Input 0 has a script, witness or a spent output of its own.
    #[error(
        "the commitment input must have an empty scriptSig and witness and spend nothing real: {0}"
    )]
    CommitmentNotEmpty(&'static str),
    /// Another input spends an output of the commitment txid.
    #[error("input {0} also spends the commitment txid")]
    CommitmentReused(usize),
    /// Not exactly one output.
    #[error("a proof has exactly one output, this one has {0}")]
    OutputCount(usize),
    /// The output could be spent.
    #[error("the proof output is not an op_return output: it could be spent")]
    SpendableOutput,
    /// The output is an `OP_RETURN` but not the one this service builds for the message.
    #[error("the proof output is not op_return <commitment of the message>")]
    OutputScript,
    /// The output does not carry exactly the sum of the real inputs.
    #[error("the output pays {output} but the real inputs sum to {inputs}: a proof pays no fee")]
    Fee {
        /// Sum of the real inputs.
        inputs: Amount,
        /// The output's value.
        output: Amount,
    },
    /// Amounts overflow.
    #[error("amounts overflow")]
    Overflow,
    /// A PSBT input lacks data or carries inconsistent data.
    #[error("psbt input {input}: {reason}")]
    PsbtInput {
        /// Input index.
        input: usize,
        /// Why.
        reason: String,
    },
    /// A sighash type other than ALL.
    #[error("input {input}: sighash type {found} is not sighash_all")]
    SighashNotAll {
        /// Input index.
        input: usize,
        /// What was found.
        found: String,
    },
    /// The number of spent outputs does not match the real inputs.
    #[error("{found} spent outputs given for {expected} real inputs")]
    SpentOutputs {
        /// Real inputs.
        expected: usize,
        /// Spent outputs given.
        found: usize,
    },
    /// An input's script does not verify.
    #[error("input {input}: script verification failed: {reason}")]
    Script {
        /// Input index.
        input: usize,
        /// Why.
        reason: String,
    },
    /// Finalization failed.
    #[error("input {input} cannot be finalized: {reason}")]
    Finalize {
        /// Input index.
        input: usize,
        /// Why.
        reason: String,
    },
}

/// The network a canonical message names (its first two lines: [`MESSAGE_HEADER`], then
/// `network: NAME`). A signer uses it to refuse a proof for another chain without parsing the
/// rest (the full parser is `custody::reserves::ProofMessage::parse`).
///
/// # Errors
/// [`ProofError::Message`] when the message is not UTF-8, does not start with the header or
/// names no known network.
pub fn message_network(message: &[u8]) -> Result<bitcoin::Network, ProofError> {
    let bad = |what: &str| ProofError::Message(what.to_owned());
    let text = std::str::from_utf8(message).map_err(|_| bad("the message is not utf-8"))?;
    let mut lines = text.split('\n');
    if lines.next() != Some(MESSAGE_HEADER) {
        return Err(bad("the first line is not the message header"));
    }
    lines
        .next()
        .and_then(|l| l.strip_prefix("network: "))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad("the second line names no known network"))
}

/// SHA-256 (single, through `hashcore`) of `"Proof-of-Reserves: " ‖ message`.
pub fn commitment_hash(message: &[u8]) -> [u8; 32] {
    hashcore::Sha256::new()
        .chain(COMMITMENT_PREFIX.as_bytes())
        .chain(message)
        .finalize()
}

/// The commitment input's previous txid: the commitment hash as the txid's bytes (in the
/// internal byte order, as BIP-127's reference tool does).
pub fn commitment_txid(message: &[u8]) -> Txid {
    Txid::from_byte_array(commitment_hash(message))
}

/// The commitment outpoint: the commitment txid, index 0.
pub fn commitment_outpoint(message: &[u8]) -> OutPoint {
    OutPoint {
        txid: commitment_txid(message),
        vout: 0,
    }
}

/// The spent output assumed for the commitment input in every sighash: value 0, script
/// `OP_TRUE` (see the module docs for why).
pub fn commitment_prevout() -> TxOut {
    TxOut {
        value: Amount::ZERO,
        script_pubkey: Builder::new().push_opcode(OP_TRUE).into_script(),
    }
}

/// The proof output script: `OP_RETURN <commitment hash>`.
pub fn proof_output_script(message: &[u8]) -> ScriptBuf {
    ScriptBuf::new_op_return(commitment_hash(message))
}

/// Checks the parts of the shape a transaction alone shows (input 0 the empty commitment of
/// `message`, no other input on the commitment txid nor repeated, one `OP_RETURN` output);
/// returns the output's value.
///
/// # Errors
/// The [`ProofError`] naming the first violation.
pub fn check_tx_shape(tx: &Transaction, message: &[u8]) -> Result<Amount, ProofError> {
    let expected = commitment_outpoint(message);
    let first = tx.input.first().ok_or(ProofError::NoUtxos)?;
    if first.previous_output != expected {
        return Err(ProofError::NotACommitment {
            found: first.previous_output,
            expected,
        });
    }
    if !first.script_sig.is_empty() {
        return Err(ProofError::CommitmentNotEmpty("scriptSig is not empty"));
    }
    if !first.witness.is_empty() {
        return Err(ProofError::CommitmentNotEmpty("witness is not empty"));
    }
    if tx.input.len() < 2 {
        return Err(ProofError::NoUtxos);
    }
    let mut seen = BTreeSet::new();
    for (i, input) in tx.input.iter().enumerate().skip(1) {
        if input.previous_output.txid == expected.txid {
            return Err(ProofError::CommitmentReused(i));
        }
        if !seen.insert(input.previous_output) {
            return Err(ProofError::DuplicateInput(input.previous_output));
        }
    }
    let [out] = tx.output.as_slice() else {
        return Err(ProofError::OutputCount(tx.output.len()));
    };
    if !out.script_pubkey.is_op_return() {
        return Err(ProofError::SpendableOutput);
    }
    Ok(out.value)
}

/// Checks that the `spent` values sum exactly to `output` (a proof pays no fee); returns the sum.
///
/// # Errors
/// [`ProofError::Fee`], [`ProofError::Overflow`].
pub fn check_zero_fee(
    spent: impl Iterator<Item = Amount>,
    output: Amount,
) -> Result<Amount, ProofError> {
    let mut inputs = Amount::ZERO;
    for v in spent {
        inputs = inputs.checked_add(v).ok_or(ProofError::Overflow)?;
    }
    if inputs != output {
        return Err(ProofError::Fee { inputs, output });
    }
    Ok(inputs)
}

/// The shape a signer checks before it signs a proof: input 0 is the commitment of exactly
/// `message` (outpoint and `PSBT_IN_POR_COMMITMENT` field, empty, spending nothing real), no
/// other input spends the commitment txid nor repeats an outpoint, exactly one output,
/// `OP_RETURN <commitment hash of the message>` ([`proof_output_script`], what this service
/// builds; the offline verifier accepts any `OP_RETURN`, as BIP-127 does), whose value is the
/// sum of the real inputs (zero fee), every real input has its
/// `witness_utxo` (consistent with its full previous transaction when present), asks for
/// `SIGHASH_ALL` if it asks anything, and every partial signature it already holds is
/// `SIGHASH_ALL`. Returns the amount the proof would prove.
///
/// # Errors
/// The [`ProofError`] naming the first violation.
pub fn check_proof_shape(psbt: &Psbt, message: &[u8]) -> Result<Amount, ProofError> {
    let tx = &psbt.unsigned_tx;
    if psbt.inputs.len() != tx.input.len() {
        return Err(ProofError::PsbtInput {
            input: psbt.inputs.len().min(tx.input.len()),
            reason: "the psbt's input maps do not match its transaction".into(),
        });
    }
    let first = psbt.inputs.first().ok_or(ProofError::NoUtxos)?;
    let mut fields = first
        .unknown
        .iter()
        .filter(|(k, _)| k.type_value == PSBT_IN_POR_COMMITMENT);
    match (fields.next(), fields.next()) {
        (None, _) => return Err(ProofError::MissingCommitmentField),
        (Some((k, v)), None) if k.key.is_empty() && v.as_slice() == message => {}
        _ => return Err(ProofError::CommitmentFieldMismatch),
    }
    let output = check_tx_shape(tx, message)?;
    // What is signed is exactly what this service builds: BIP-127 lets the output be any
    // unspendable script, but the signer has no reason to sign any other.
    if tx.output.first().map(|o| &o.script_pubkey) != Some(&proof_output_script(message)) {
        return Err(ProofError::OutputScript);
    }
    if first.final_script_sig.is_some() || first.final_script_witness.is_some() {
        return Err(ProofError::CommitmentNotEmpty("it carries a final script"));
    }
    if first.non_witness_utxo.is_some() {
        return Err(ProofError::CommitmentNotEmpty(
            "it carries a previous transaction",
        ));
    }
    if first
        .witness_utxo
        .as_ref()
        .is_some_and(|w| *w != commitment_prevout())
    {
        return Err(ProofError::CommitmentNotEmpty(
            "its witness_utxo is not the zero-value op_true placeholder",
        ));
    }
    let mut values = Vec::with_capacity(psbt.inputs.len());
    for (i, (input, txin)) in psbt.inputs.iter().zip(&tx.input).enumerate().skip(1) {
        let utxo = input.witness_utxo.as_ref().ok_or(ProofError::PsbtInput {
            input: i,
            reason: "missing witness_utxo".into(),
        })?;
        if let Some(prev) = &input.non_witness_utxo {
            let vout = usize::try_from(txin.previous_output.vout).unwrap_or(usize::MAX);
            if prev.compute_txid() != txin.previous_output.txid
                || prev.output.get(vout) != Some(utxo)
            {
                return Err(ProofError::PsbtInput {
                    input: i,
                    reason: "non_witness_utxo does not match the outpoint or the witness_utxo"
                        .into(),
                });
            }
        }
        if let Some(t) = input.sighash_type {
            if t != PsbtSighashType::from(EcdsaSighashType::All)
                && t != PsbtSighashType::from(TapSighashType::Default)
            {
                return Err(ProofError::SighashNotAll {
                    input: i,
                    found: t.to_string(),
                });
            }
        }
        check_signature_types(i, input)?;
        values.push(utxo.value);
    }
    check_zero_fee(values.into_iter(), output)
}

/// Checks that every partial signature input `i` already holds (ECDSA, taproot script and key
/// path) is `SIGHASH_ALL` (or taproot `DEFAULT`).
///
/// # Errors
/// [`ProofError::SighashNotAll`] naming the input and the type found.
pub fn check_signature_types(i: usize, input: &Input) -> Result<(), ProofError> {
    let not_all = |found: String| ProofError::SighashNotAll { input: i, found };
    for sig in input.partial_sigs.values() {
        if sig.sighash_type != EcdsaSighashType::All {
            return Err(not_all(sig.sighash_type.to_string()));
        }
    }
    for sig in input
        .tap_script_sigs
        .values()
        .chain(input.tap_key_sig.as_ref())
    {
        if !matches!(
            sig.sighash_type,
            TapSighashType::All | TapSighashType::Default
        ) {
            return Err(not_all(sig.sighash_type.to_string()));
        }
    }
    Ok(())
}

mod subject;

pub use subject::{
    check_request_id, outpoints_digest, verify_proof_approval, ProofSubject, ProofSubjectDocument,
    ProofTerms, SubjectError, DOCUMENT_KIND, MAX_REQUEST_ID_LEN, OUTPOINTS_TAG, PROOF_SUBJECT_TAG,
    TERMS_PREFIX, TERMS_SUBTYPE_EXPIRY, TERMS_SUBTYPE_REQUEST,
};
