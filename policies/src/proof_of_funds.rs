//! The shape of a BIP-322 proof of funds (`to_spend` / `to_sign`), as a signer checks it
//! before it signs.
//!
//! Why here, beside [`crate::proof`]: the policy key (in `hsm`) signs a BIP-322 proof of funds
//! under the same reserve-proof rule as a BIP-127 proof, and for the same reason: a well-formed
//! `to_sign` can never be broadcast (input 0 spends `to_spend:0`, and `to_spend` spends the
//! null outpoint outside a coinbase, so it can never be mined). `custody::reserves::bip322`
//! builds, finalizes and verifies these proofs and `hsm::PolicySigner` refuses to sign
//! anything else; `hsm` does not depend on `custody`, so the pure shape check and its error
//! type live here once and `custody` re-exports them.
//!
//! As BIP-322 fixes it:
//! - `message_hash` = BIP-340 tagged hash with tag `BIP0322-signed-message` of the message
//!   bytes (here the canonical proof message, the same bytes BIP-127 commits to).
//! - `to_spend`: version 0, lock time 0, one input spending `000…000:0xFFFFFFFF` with sequence 0,
//!   scriptSig `OP_0 PUSH32[message_hash]` and an empty witness; one output of value 0 paying
//!   the message challenge.
//! - `to_sign`: input 0 spends `to_spend:0`; the proof-of-funds extension adds every UTXO as a
//!   further input; one output of value 0 whose script is exactly `OP_RETURN`; `SIGHASH_ALL`
//!   only. We build version 0, lock time 0 and sequence 0 everywhere; the check accepts version
//!   0 or 2 and requires lock time 0 and sequence 0 on input 0 (ADR 0009).
//!
//! The PSBT may carry the message itself in a proprietary global field
//! ([`PSBT_PROPRIETARY_PREFIX`], subtype [`PSBT_MESSAGE_SUBTYPE`]) so that a signer can read
//! the message, check it hashes to the `to_spend` input 0 spends, and show it.

use std::collections::BTreeSet;

use bitcoin::opcodes::all::OP_RETURN;
use bitcoin::opcodes::OP_0;
use bitcoin::psbt::{raw::ProprietaryKey, Psbt, PsbtSighashType};
use bitcoin::script::Builder;
use bitcoin::transaction::Version;
use bitcoin::{
    absolute, Amount, EcdsaSighashType, OutPoint, Script, ScriptBuf, Sequence, TapSighashType,
    Transaction, TxIn, TxOut, Txid, Witness,
};

use crate::proof::{check_signature_types, ProofError};

/// The BIP-340 tag of the message hash.
pub const TAG: &str = "BIP0322-signed-message";

/// Prefix of the proprietary global PSBT field that carries the message of a BIP-322 proof
/// (distinct from the proof terms' prefix `strategic-reserve`, whose reader refuses unknown
/// subtypes).
pub const PSBT_PROPRIETARY_PREFIX: &[u8] = b"strategic-reserve/bip322";

/// Subtype of that proprietary field: its value is the message, its key data is empty.
pub const PSBT_MESSAGE_SUBTYPE: u8 = 0x00;

/// Why a BIP-322 proof was not built, or was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bip322Error {
    /// A vault, UTXO or message problem found while building (as for BIP-127 proofs).
    #[error(transparent)]
    Build(#[from] ProofError),
    /// The challenge address cannot be derived.
    #[error("the message challenge cannot be derived: {0}")]
    Challenge(String),
    /// No UTXO to prove.
    #[error("a proof of funds needs at least one utxo")]
    NoUtxos,
    /// `to_sign` has a version other than 0 or 2.
    #[error("to_sign has version {0}, not 0 or 2")]
    Version(i32),
    /// `to_sign` has a lock time.
    #[error("to_sign has lock time {0}, not 0: a proof must be valid now")]
    LockTime(u32),
    /// Input 0 has a sequence other than 0.
    #[error("input 0 has sequence {0:#x}, not 0: a proof must be valid now")]
    Sequence(u32),
    /// `to_sign` has no input.
    #[error("to_sign has no input")]
    NoInputs,
    /// Input 0 does not spend `to_spend:0` for this message and challenge.
    #[error(
        "input 0 spends {found}, not {expected} (to_spend of this message and challenge): \
         another message or another challenge"
    )]
    NotToSpend {
        /// What input 0 spends.
        found: OutPoint,
        /// `to_spend:0` of the message and challenge.
        expected: OutPoint,
    },
    /// Another input spends `to_spend` too.
    #[error("input {0} also spends the to_spend transaction")]
    ToSpendReused(usize),
    /// The same outpoint twice.
    #[error("outpoint {0} is spent twice")]
    DuplicateInput(OutPoint),
    /// Not exactly one output.
    #[error("to_sign has exactly one output, this one has {0}")]
    OutputCount(usize),
    /// The output is not value 0 paying exactly `OP_RETURN`.
    #[error("the output of to_sign must pay 0 to the script op_return alone: {0}")]
    Output(String),
    /// The number of spent outputs does not match the additional inputs.
    #[error("{found} spent outputs given for {expected} additional inputs")]
    SpentOutputs {
        /// Additional inputs.
        expected: usize,
        /// Spent outputs given.
        found: usize,
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
    /// The full-format text is not base64 of one transaction.
    #[error("not a bip-322 full signature: {0}")]
    Encoding(String),
}

/// `message_hash`: `SHA-256(SHA-256(tag) ‖ SHA-256(tag) ‖ message)` with [`TAG`] (through
/// `hashcore`).
pub fn message_hash(message: &[u8]) -> [u8; 32] {
    hashcore::TaggedHash::new(TAG).hash(message)
}

/// The `to_spend` transaction of `message` for the scriptPubKey `challenge`.
pub fn to_spend(message: &[u8], challenge: &Script) -> Transaction {
    Transaction {
        version: Version(0),
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: Builder::new()
                .push_opcode(OP_0)
                .push_slice(message_hash(message))
                .into_script(),
            sequence: Sequence::ZERO,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::ZERO,
            script_pubkey: challenge.to_owned(),
        }],
    }
}

/// `to_spend:0`, the outpoint input 0 of `to_sign` spends.
pub fn to_spend_outpoint(message: &[u8], challenge: &Script) -> OutPoint {
    OutPoint {
        txid: to_spend(message, challenge).compute_txid(),
        vout: 0,
    }
}

/// The output script of `to_sign`: `OP_RETURN` alone.
pub fn to_sign_output_script() -> ScriptBuf {
    Builder::new().push_opcode(OP_RETURN).into_script()
}

/// The unsigned `to_sign` transaction spending `to_spend:0` and then `utxos` (the
/// proof-of-funds extension; none for a plain signature): version 0, lock time 0, sequence 0
/// on every input, one output of value 0 paying `OP_RETURN`.
pub fn to_sign(to_spend_txid: Txid, utxos: &[OutPoint]) -> Transaction {
    let txin = |previous_output| TxIn {
        previous_output,
        script_sig: ScriptBuf::new(),
        sequence: Sequence::ZERO,
        witness: Witness::new(),
    };
    let mut input = Vec::with_capacity(utxos.len().saturating_add(1));
    input.push(txin(OutPoint {
        txid: to_spend_txid,
        vout: 0,
    }));
    input.extend(utxos.iter().copied().map(txin));
    Transaction {
        version: Version(0),
        lock_time: absolute::LockTime::ZERO,
        input,
        output: vec![TxOut {
            value: Amount::ZERO,
            script_pubkey: to_sign_output_script(),
        }],
    }
}

/// The structure of `to_sign` as BIP-322 and this module require it (see the module docs):
/// version 0 or 2, lock time 0, input 0 spends `to_spend:0` of exactly `message` and
/// `challenge` with sequence 0, no other input spends `to_spend` nor repeats an outpoint, and
/// exactly one output of value 0 whose script is `OP_RETURN` alone.
///
/// # Errors
/// The [`Bip322Error`] naming the first violation.
pub fn check_to_sign_tx(
    tx: &Transaction,
    message: &[u8],
    challenge: &Script,
) -> Result<(), Bip322Error> {
    if tx.version != Version(0) && tx.version != Version::TWO {
        return Err(Bip322Error::Version(tx.version.0));
    }
    if tx.lock_time != absolute::LockTime::ZERO {
        return Err(Bip322Error::LockTime(tx.lock_time.to_consensus_u32()));
    }
    let first = tx.input.first().ok_or(Bip322Error::NoInputs)?;
    let expected = to_spend_outpoint(message, challenge);
    if first.previous_output != expected {
        return Err(Bip322Error::NotToSpend {
            found: first.previous_output,
            expected,
        });
    }
    if first.sequence != Sequence::ZERO {
        return Err(Bip322Error::Sequence(first.sequence.to_consensus_u32()));
    }
    let mut seen = BTreeSet::new();
    for (i, input) in tx.input.iter().enumerate().skip(1) {
        if input.previous_output.txid == expected.txid {
            return Err(Bip322Error::ToSpendReused(i));
        }
        if !seen.insert(input.previous_output) {
            return Err(Bip322Error::DuplicateInput(input.previous_output));
        }
    }
    let [out] = tx.output.as_slice() else {
        return Err(Bip322Error::OutputCount(tx.output.len()));
    };
    if out.value != Amount::ZERO {
        return Err(Bip322Error::Output(format!("it pays {}", out.value)));
    }
    if out.script_pubkey != to_sign_output_script() {
        return Err(Bip322Error::Output(format!(
            "its script is {}",
            out.script_pubkey.to_asm_string()
        )));
    }
    Ok(())
}

/// The checked sum of `values`.
///
/// # Errors
/// [`Bip322Error::Overflow`].
pub fn sum(values: impl Iterator<Item = Amount>) -> Result<Amount, Bip322Error> {
    let mut total = Amount::ZERO;
    for v in values {
        total = total.checked_add(v).ok_or(Bip322Error::Overflow)?;
    }
    Ok(total)
}

/// The shape a signer checks before it signs a BIP-322 proof PSBT: `to_sign`'s structure for
/// exactly `message` and `challenge`; input 0's `witness_utxo` is `to_spend`'s output and its
/// `non_witness_utxo`, if any, is `to_spend`; every other input has its `witness_utxo`
/// (consistent with its previous transaction when present); every requested sighash type and
/// every partial signature is `SIGHASH_ALL`. Returns the sum of the UTXOs.
///
/// # Errors
/// The [`Bip322Error`] naming the first violation.
pub fn check_proof_of_funds_psbt(
    psbt: &Psbt,
    message: &[u8],
    challenge: &Script,
) -> Result<Amount, Bip322Error> {
    let tx = &psbt.unsigned_tx;
    if psbt.inputs.len() != tx.input.len() {
        return Err(Bip322Error::PsbtInput {
            input: psbt.inputs.len().min(tx.input.len()),
            reason: "the psbt's input maps do not match its transaction".into(),
        });
    }
    check_to_sign_tx(tx, message, challenge)?;
    let spend = to_spend(message, challenge);
    let mut values = Vec::with_capacity(psbt.inputs.len());
    for (i, (input, txin)) in psbt.inputs.iter().zip(&tx.input).enumerate() {
        let bad = |reason: &str| Bip322Error::PsbtInput {
            input: i,
            reason: reason.to_string(),
        };
        let utxo = input
            .witness_utxo
            .as_ref()
            .ok_or_else(|| bad("missing witness_utxo"))?;
        if i == 0 {
            if spend.output.first() != Some(utxo) {
                return Err(bad("witness_utxo is not the output of to_spend"));
            }
            if input.non_witness_utxo.as_ref().is_some_and(|t| *t != spend) {
                return Err(bad("non_witness_utxo is not the to_spend transaction"));
            }
        } else {
            if let Some(prev) = &input.non_witness_utxo {
                let vout = usize::try_from(txin.previous_output.vout).unwrap_or(usize::MAX);
                if prev.compute_txid() != txin.previous_output.txid
                    || prev.output.get(vout) != Some(utxo)
                {
                    return Err(bad(
                        "non_witness_utxo does not match the outpoint or the witness_utxo",
                    ));
                }
            }
            values.push(utxo.value);
        }
        if let Some(t) = input.sighash_type {
            if t != PsbtSighashType::from(EcdsaSighashType::All)
                && t != PsbtSighashType::from(TapSighashType::Default)
            {
                return Err(Bip322Error::SighashNotAll {
                    input: i,
                    found: t.to_string(),
                });
            }
        }
        check_signature_types(i, input).map_err(|e| match e {
            ProofError::SighashNotAll { input, found } => {
                Bip322Error::SighashNotAll { input, found }
            }
            other => Bip322Error::Build(other),
        })?;
    }
    sum(values.into_iter())
}

/// The message a BIP-322 proof PSBT carries in its proprietary global field, if exactly one.
pub fn psbt_message(psbt: &Psbt) -> Option<&[u8]> {
    let mut found = psbt
        .proprietary
        .iter()
        .filter(|(k, _)| k.prefix == PSBT_PROPRIETARY_PREFIX && k.subtype == PSBT_MESSAGE_SUBTYPE);
    match (found.next(), found.next()) {
        (Some((k, v)), None) if k.key.is_empty() => Some(v.as_slice()),
        _ => None,
    }
}

/// Puts `message` in the PSBT's proprietary global message field (replacing any).
pub fn set_psbt_message(psbt: &mut Psbt, message: &[u8]) {
    psbt.proprietary.insert(
        ProprietaryKey {
            prefix: PSBT_PROPRIETARY_PREFIX.to_vec(),
            subtype: PSBT_MESSAGE_SUBTYPE,
            key: Vec::new(),
        },
        message.to_vec(),
    );
}

/// Whether input 0 of `tx` spends `to_spend:0` of `message` and `challenge`: how a BIP-322
/// proof is told from a BIP-127 one (which carries `PSBT_IN_POR_COMMITMENT` instead).
pub fn spends_to_spend(tx: &Transaction, message: &[u8], challenge: &Script) -> bool {
    tx.input
        .first()
        .is_some_and(|i| i.previous_output == to_spend_outpoint(message, challenge))
}

/// The UTXOs a `to_sign` transaction proves (inputs 1..), sorted: with the message commitment
/// and the amount, the form-independent part of a proof's approval subject.
pub fn proven_outpoints(tx: &Transaction) -> Vec<OutPoint> {
    let mut v: Vec<OutPoint> = tx.input.iter().skip(1).map(|i| i.previous_output).collect();
    v.sort_unstable();
    v
}
