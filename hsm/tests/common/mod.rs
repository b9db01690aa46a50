//! PSBT builders shared by the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod softhsm;

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::opcodes::all::{OP_CHECKMULTISIG, OP_PUSHNUM_2};
use bitcoin::script::Builder;
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, OutPoint, Psbt, PublicKey, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};

/// `OP_2 <a> <b> OP_2 OP_CHECKMULTISIG`.
pub fn multi_2of2(a: &PublicKey, b: &PublicKey) -> ScriptBuf {
    Builder::new()
        .push_opcode(OP_PUSHNUM_2)
        .push_key(a)
        .push_key(b)
        .push_opcode(OP_PUSHNUM_2)
        .push_opcode(OP_CHECKMULTISIG)
        .into_script()
}

/// An unsigned transaction spending `n` made-up outpoints to one output.
pub fn unsigned_tx(n: usize) -> Transaction {
    let input = (0..n)
        .map(|i| TxIn {
            previous_output: OutPoint {
                txid: Txid::from_byte_array([i as u8 + 1; 32]),
                vout: i as u32,
            },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        })
        .collect();
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input,
        output: vec![TxOut {
            value: Amount::from_sat(90_000),
            script_pubkey: ScriptBuf::new_op_return([0u8; 4]),
        }],
    }
}

/// A PSBT whose every input spends P2WSH(`ws`) worth 100,000 sat.
pub fn wsh_psbt(ws: &ScriptBuf, inputs: usize) -> Psbt {
    let mut psbt = Psbt::from_unsigned_tx(unsigned_tx(inputs)).unwrap();
    for input in &mut psbt.inputs {
        input.witness_utxo = Some(TxOut {
            value: Amount::from_sat(100_000),
            script_pubkey: ScriptBuf::new_p2wsh(&ws.wscript_hash()),
        });
        input.witness_script = Some(ws.clone());
    }
    psbt
}

/// Finalizes with miniscript and extracts through its interpreter, which verifies every
/// signature against the spent outputs (ECDSA and taproot alike).
pub fn finalize_and_extract(psbt: Psbt) -> Transaction {
    try_finalize_and_extract(psbt).unwrap()
}

/// [`finalize_and_extract`] returning the failure instead of panicking.
pub fn try_finalize_and_extract(psbt: Psbt) -> Result<Transaction, String> {
    use miniscript::psbt::PsbtExt;
    let secp = bitcoin::secp256k1::Secp256k1::verification_only();
    let psbt = psbt
        .finalize(&secp)
        .map_err(|(_, errors)| format!("finalize: {errors:?}"))?;
    psbt.extract(&secp).map_err(|e| format!("extract: {e}"))
}
