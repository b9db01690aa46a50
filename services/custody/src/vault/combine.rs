//! Combining PSBTs from signers, with every new partial signature verified on arrival.
//!
//! Why verify on arrival: `finalize` would reject a bad signature only at the end, after the
//! other signers have spent their time; a forged or foreign signature must be refused at once,
//! naming the input and the key, and must never be merged into the request's PSBT.

use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::secp256k1::{Message, Secp256k1};
use bdk_wallet::bitcoin::sighash::{Prevouts, SighashCache};
use bdk_wallet::bitcoin::{EcdsaSighashType, TapSighashType, TxOut};

/// Why a signer's PSBT was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CombineError {
    /// The signer's PSBT is for another transaction.
    #[error("psbt is for transaction {found}, expected {expected}")]
    OtherTransaction {
        /// Its unsigned txid.
        found: String,
        /// The request's unsigned txid.
        expected: String,
    },
    /// A signature does not verify for its input and key.
    #[error("input {input}: signature of key {key} does not verify: {reason}")]
    BadSignature {
        /// Input index.
        input: usize,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A signature by a key the input does not use.
    #[error("input {input}: key {key} is not a key of this input")]
    ForeignKey {
        /// Input index.
        input: usize,
        /// The key.
        key: String,
    },
    /// The input lacks what verification needs.
    #[error("input {input}: cannot verify signatures: {what}")]
    Incomplete {
        /// Input index.
        input: usize,
        /// What is missing.
        what: String,
    },
}

/// Verifies every partial signature of `psbt` against its sighash (segwit v0 ECDSA over the
/// witness script; taproot script-path Schnorr over all spent outputs). Returns how many
/// signatures were checked.
///
/// # Errors
/// [`CombineError`] naming the first input and key that fail.
pub fn verify_partial_signatures(psbt: &Psbt) -> Result<usize, CombineError> {
    let secp = Secp256k1::verification_only();
    let tx = &psbt.unsigned_tx;
    let mut cache = SighashCache::new(tx);
    let mut checked = 0;
    let prevouts: Option<Vec<TxOut>> = psbt.inputs.iter().map(|i| i.witness_utxo.clone()).collect();
    for (i, input) in psbt.inputs.iter().enumerate() {
        if !input.partial_sigs.is_empty() {
            let script = input
                .witness_script
                .as_ref()
                .ok_or(CombineError::Incomplete {
                    input: i,
                    what: "witness_script".into(),
                })?;
            let utxo = input
                .witness_utxo
                .as_ref()
                .ok_or(CombineError::Incomplete {
                    input: i,
                    what: "witness_utxo".into(),
                })?;
            for (pk, sig) in &input.partial_sigs {
                let key = pk.to_string();
                if !input.bip32_derivation.contains_key(&pk.inner)
                    && !script.as_bytes().windows(33).any(|w| w == pk.to_bytes())
                {
                    return Err(CombineError::ForeignKey { input: i, key });
                }
                let ty =
                    EcdsaSighashType::from_standard(sig.sighash_type.to_u32()).map_err(|e| {
                        CombineError::BadSignature {
                            input: i,
                            key: key.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                let hash = cache
                    .p2wsh_signature_hash(i, script, utxo.value, ty)
                    .map_err(|e| CombineError::BadSignature {
                        input: i,
                        key: key.clone(),
                        reason: e.to_string(),
                    })?;
                let msg = Message::from(hash);
                secp.verify_ecdsa(&msg, &sig.signature, &pk.inner)
                    .map_err(|e| CombineError::BadSignature {
                        input: i,
                        key,
                        reason: e.to_string(),
                    })?;
                checked += 1;
            }
        }
        if !input.tap_script_sigs.is_empty() {
            let prevouts = prevouts.as_ref().ok_or(CombineError::Incomplete {
                input: i,
                what: "witness_utxo of every input (taproot signs all spent outputs)".into(),
            })?;
            for ((xonly, leaf), sig) in &input.tap_script_sigs {
                let key = xonly.to_string();
                let known = input
                    .tap_key_origins
                    .get(xonly)
                    .is_some_and(|(leaves, _)| leaves.contains(leaf));
                if !known {
                    return Err(CombineError::ForeignKey { input: i, key });
                }
                let ty: TapSighashType = sig.sighash_type;
                let hash = cache
                    .taproot_script_spend_signature_hash(i, &Prevouts::All(prevouts), *leaf, ty)
                    .map_err(|e| CombineError::BadSignature {
                        input: i,
                        key: key.clone(),
                        reason: e.to_string(),
                    })?;
                let msg = Message::from(hash);
                secp.verify_schnorr(&sig.signature, &msg, xonly)
                    .map_err(|e| CombineError::BadSignature {
                        input: i,
                        key,
                        reason: e.to_string(),
                    })?;
                checked += 1;
            }
        }
    }
    Ok(checked)
}

/// Merges a signer's PSBT into the request's PSBT after verifying every signature it carries.
/// Nothing is merged when anything fails. Returns how many signatures were checked.
///
/// # Errors
/// [`CombineError::OtherTransaction`] for a PSBT of another transaction, and as
/// [`verify_partial_signatures`].
pub fn combine(base: &mut Psbt, incoming: Psbt) -> Result<usize, CombineError> {
    let expected = base.unsigned_tx.compute_txid();
    let found = incoming.unsigned_tx.compute_txid();
    if expected != found {
        return Err(CombineError::OtherTransaction {
            found: found.to_string(),
            expected: expected.to_string(),
        });
    }
    let checked = verify_partial_signatures(&incoming)?;
    let mut merged = base.clone();
    merged
        .combine(incoming)
        .map_err(|e| CombineError::Incomplete {
            input: 0,
            what: e.to_string(),
        })?;
    verify_partial_signatures(&merged)?;
    *base = merged;
    Ok(checked)
}
