//! Combining PSBTs from signers, with every new partial signature verified on arrival.
//!
//! Why verify on arrival: `finalize` would reject a bad signature only at the end, after the
//! other signers have spent their time; a forged or foreign signature must be refused at once,
//! naming the input and the key, and must never be merged into the request's PSBT.
//!
//! What else an officer's PSBT may not bring (refused whole, nothing stored): a signature with
//! a sighash type other than `SIGHASH_ALL` (or `SIGHASH_DEFAULT` for taproot), which would let
//! others change the transaction under it; a `PSBT_IN_SIGHASH_TYPE` other than ALL/DEFAULT
//! that the request's PSBT does not hold;
//! and any unknown or proprietary field the request's PSBT does not already hold, which would
//! ride along to the next signer (the policy signer included) unchecked.

use std::collections::BTreeMap;

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
    /// A signature with a sighash type other than ALL (or DEFAULT for taproot).
    #[error("input {input}: signature of key {key} uses sighash type {sighash:#x}; only all (and default for taproot) is accepted")]
    SighashRefused {
        /// Input index.
        input: usize,
        /// The key.
        key: String,
        /// The sighash type, as a number.
        sighash: u32,
    },
    /// The signer's PSBT adds a field the request's PSBT does not hold.
    #[error("{place}: the signer's psbt adds {what}, which the request's psbt does not hold")]
    UnexpectedField {
        /// Where: `global`, `input N` or `output N`.
        place: String,
        /// Which field.
        what: String,
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
                if sig.sighash_type != EcdsaSighashType::All {
                    return Err(CombineError::SighashRefused {
                        input: i,
                        key,
                        sighash: sig.sighash_type.to_u32(),
                    });
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
                if !matches!(ty, TapSighashType::Default | TapSighashType::All) {
                    return Err(CombineError::SighashRefused {
                        input: i,
                        key,
                        sighash: ty as u32,
                    });
                }
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
/// [`CombineError::OtherTransaction`] for a PSBT of another transaction;
/// [`CombineError::UnexpectedField`] when it adds an unknown or proprietary field, or a
/// sighash type, that the request's PSBT does not hold; and as [`verify_partial_signatures`]
/// (which refuses any signature with a sighash type other than ALL, or DEFAULT for taproot).
pub fn combine(base: &mut Psbt, incoming: Psbt) -> Result<usize, CombineError> {
    let expected = base.unsigned_tx.compute_txid();
    let found = incoming.unsigned_tx.compute_txid();
    if expected != found {
        return Err(CombineError::OtherTransaction {
            found: found.to_string(),
            expected: expected.to_string(),
        });
    }
    check_no_new_fields(base, &incoming)?;
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

/// Refuses unknown and proprietary fields (global, per input, per output) that `base` does not
/// already hold with the same value, and a `PSBT_IN_SIGHASH_TYPE` other than ALL/DEFAULT that
/// is not `base`'s.
fn check_no_new_fields(base: &Psbt, incoming: &Psbt) -> Result<(), CombineError> {
    fn subset<K: Ord, V: PartialEq>(
        base: &BTreeMap<K, V>,
        incoming: &BTreeMap<K, V>,
        place: impl Fn() -> String,
        what: &str,
    ) -> Result<(), CombineError> {
        if incoming.iter().all(|(k, v)| base.get(k) == Some(v)) {
            Ok(())
        } else {
            Err(CombineError::UnexpectedField {
                place: place(),
                what: what.to_owned(),
            })
        }
    }
    let global = || "global".to_owned();
    subset(&base.unknown, &incoming.unknown, global, "an unknown field")?;
    subset(
        &base.proprietary,
        &incoming.proprietary,
        global,
        "a proprietary field",
    )?;
    subset(&base.xpub, &incoming.xpub, global, "a global xpub")?;
    for (i, inc) in incoming.inputs.iter().enumerate() {
        let place = || format!("input {i}");
        let Some(b) = base.inputs.get(i) else {
            return Err(CombineError::UnexpectedField {
                place: place(),
                what: "an input map".to_owned(),
            });
        };
        subset(&b.unknown, &inc.unknown, place, "an unknown field")?;
        subset(
            &b.proprietary,
            &inc.proprietary,
            place,
            "a proprietary field",
        )?;
        // A signer may state ALL (or DEFAULT) explicitly; anything else the request did not
        // ask for is refused.
        if let Some(ty) = inc.sighash_type {
            let plain = matches!(ty.to_u32(), 0x00 | 0x01);
            if !plain && inc.sighash_type != b.sighash_type {
                return Err(CombineError::UnexpectedField {
                    place: place(),
                    what: format!("sighash type {:#x}", ty.to_u32()),
                });
            }
        }
    }
    for (o, inc) in incoming.outputs.iter().enumerate() {
        let place = || format!("output {o}");
        let Some(b) = base.outputs.get(o) else {
            return Err(CombineError::UnexpectedField {
                place: place(),
                what: "an output map".to_owned(),
            });
        };
        subset(&b.unknown, &inc.unknown, place, "an unknown field")?;
        subset(
            &b.proprietary,
            &inc.proprietary,
            place,
            "a proprietary field",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use bdk_wallet::bitcoin::absolute::LockTime;
    use bdk_wallet::bitcoin::hashes::Hash;
    use bdk_wallet::bitcoin::psbt::raw::{Key as RawKey, ProprietaryKey};
    use bdk_wallet::bitcoin::psbt::PsbtSighashType;
    use bdk_wallet::bitcoin::secp256k1::SecretKey;
    use bdk_wallet::bitcoin::transaction::Version;
    use bdk_wallet::bitcoin::{
        ecdsa, Amount, OutPoint, PublicKey, ScriptBuf, Sequence, Transaction, TxIn, Txid, Witness,
    };

    use super::*;

    struct Case {
        base: Psbt,
        signed: Psbt,
        secret: SecretKey,
        key: PublicKey,
    }

    /// A one-input P2WSH(multi(1,K)) spend: `base` unsigned, `signed` with K's SIGHASH_ALL
    /// signature.
    fn case() -> Case {
        let secp = Secp256k1::new();
        let secret = SecretKey::from_slice(&[7; 32]).unwrap();
        let key = PublicKey::new(secret.public_key(&secp));
        let script =
            ScriptBuf::from_hex(&format!("5121{}51ae", hex::encode(key.to_bytes()))).unwrap();
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::new(Txid::from_byte_array([3; 32]), 0),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(90_000),
                script_pubkey: ScriptBuf::new_p2wsh(&script.wscript_hash()),
            }],
        };
        let mut base = Psbt::from_unsigned_tx(tx).unwrap();
        base.inputs[0].witness_utxo = Some(TxOut {
            value: Amount::from_sat(100_000),
            script_pubkey: ScriptBuf::new_p2wsh(&script.wscript_hash()),
        });
        base.inputs[0].witness_script = Some(script);
        let mut signed = base.clone();
        sign(&mut signed, secret, key, EcdsaSighashType::All);
        Case {
            base,
            signed,
            secret,
            key,
        }
    }

    fn sign(psbt: &mut Psbt, secret: SecretKey, key: PublicKey, ty: EcdsaSighashType) {
        let secp = Secp256k1::new();
        let input = &psbt.inputs[0];
        let script = input.witness_script.clone().unwrap();
        let value = input.witness_utxo.as_ref().unwrap().value;
        let hash = SighashCache::new(&psbt.unsigned_tx)
            .p2wsh_signature_hash(0, &script, value, ty)
            .unwrap();
        let signature = secp.sign_ecdsa(&Message::from(hash), &secret);
        psbt.inputs[0].partial_sigs.insert(
            key,
            ecdsa::Signature {
                signature,
                sighash_type: ty,
            },
        );
    }

    #[test]
    fn a_valid_sighash_all_signature_is_merged() {
        let mut c = case();
        assert_eq!(combine(&mut c.base, c.signed.clone()).unwrap(), 1);
        assert_eq!(c.base.inputs[0].partial_sigs.len(), 1);
    }

    fn refused(c: &mut Case, incoming: Psbt) -> CombineError {
        let before = c.base.clone();
        let err = combine(&mut c.base, incoming).unwrap_err();
        assert_eq!(c.base, before, "nothing may be stored: {err}");
        err
    }

    #[test]
    fn refuses_a_sighash_none_anyonecanpay_signature() {
        let mut c = case();
        let mut incoming = c.base.clone();
        sign(
            &mut incoming,
            c.secret,
            c.key,
            EcdsaSighashType::NonePlusAnyoneCanPay,
        );
        let err = refused(&mut c, incoming);
        assert!(
            matches!(
                err,
                CombineError::SighashRefused {
                    input: 0,
                    sighash: 0x82,
                    ..
                }
            ),
            "{err}"
        );
        // SINGLE is refused too, though the signature verifies
        let mut incoming = c.base.clone();
        sign(&mut incoming, c.secret, c.key, EcdsaSighashType::Single);
        assert!(verify_partial_signatures(&incoming).is_err());
        let err = refused(&mut c, incoming);
        assert!(
            matches!(err, CombineError::SighashRefused { sighash: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_sighash_type_field_beside_a_valid_signature() {
        let mut c = case();
        let mut incoming = c.signed.clone();
        incoming.inputs[0].sighash_type = Some(PsbtSighashType::from(
            EcdsaSighashType::NonePlusAnyoneCanPay,
        ));
        let err = refused(&mut c, incoming);
        assert!(matches!(err, CombineError::UnexpectedField { .. }), "{err}");
        assert!(err.to_string().contains("sighash type 0x82"), "{err}");
        // an explicit ALL (as some signers write it) is fine
        let mut incoming = c.signed.clone();
        incoming.inputs[0].sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::All));
        combine(&mut c.base, incoming).unwrap();
    }

    #[test]
    fn refuses_an_unknown_field_beside_a_valid_signature() {
        let mut c = case();
        let key = RawKey {
            type_value: 0x42,
            key: vec![1, 2, 3],
        };
        let mut incoming = c.signed.clone();
        incoming.inputs[0].unknown.insert(key.clone(), vec![9]);
        let err = refused(&mut c, incoming);
        assert!(err.to_string().starts_with("input 0: "), "{err}");
        assert!(err.to_string().contains("unknown field"), "{err}");
        let mut incoming = c.signed.clone();
        incoming.unknown.insert(key.clone(), vec![9]);
        let err = refused(&mut c, incoming);
        assert!(err.to_string().starts_with("global: "), "{err}");
        let mut incoming = c.signed.clone();
        incoming.outputs[0].unknown.insert(key.clone(), vec![9]);
        let err = refused(&mut c, incoming);
        assert!(err.to_string().starts_with("output 0: "), "{err}");
        // a field the request already holds, unchanged, is fine
        c.base.inputs[0].unknown.insert(key.clone(), vec![9]);
        let mut incoming = c.signed.clone();
        incoming.inputs[0].unknown.insert(key.clone(), vec![9]);
        combine(&mut c.base, incoming).unwrap();
        // ...but not with another value
        let mut c = case();
        c.base.inputs[0].unknown.insert(key.clone(), vec![9]);
        let mut incoming = c.signed.clone();
        incoming.inputs[0].unknown.insert(key, vec![8]);
        refused(&mut c, incoming);
    }

    #[test]
    fn refuses_a_proprietary_field_beside_a_valid_signature() {
        let mut c = case();
        let key = ProprietaryKey {
            prefix: b"evil".to_vec(),
            subtype: 1,
            key: vec![],
        };
        let mut incoming = c.signed.clone();
        incoming.inputs[0].proprietary.insert(key.clone(), vec![1]);
        let err = refused(&mut c, incoming);
        assert!(err.to_string().contains("proprietary field"), "{err}");
        let mut incoming = c.signed.clone();
        incoming.proprietary.insert(key.clone(), vec![1]);
        refused(&mut c, incoming);
        let mut incoming = c.signed.clone();
        incoming.outputs[0].proprietary.insert(key, vec![1]);
        refused(&mut c, incoming);
    }

    #[test]
    fn refuses_a_taproot_signature_with_another_sighash_type() {
        use bdk_wallet::bitcoin::secp256k1::Keypair;
        use bdk_wallet::bitcoin::taproot::{self, TapLeafHash};
        let secp = Secp256k1::new();
        let c = case();
        let kp = Keypair::from_secret_key(&secp, &c.secret);
        let (xonly, _) = kp.x_only_public_key();
        let leaf = TapLeafHash::from_byte_array([5; 32]);
        let mut incoming = c.base.clone();
        incoming.inputs[0]
            .tap_key_origins
            .insert(xonly, (vec![leaf], Default::default()));
        let signature = secp.sign_schnorr_no_aux_rand(&Message::from_digest([1; 32]), &kp);
        incoming.inputs[0].tap_script_sigs.insert(
            (xonly, leaf),
            taproot::Signature {
                signature,
                sighash_type: TapSighashType::NonePlusAnyoneCanPay,
            },
        );
        let err = verify_partial_signatures(&incoming).unwrap_err();
        assert!(
            matches!(err, CombineError::SighashRefused { sighash: 0x82, .. }),
            "{err}"
        );
    }
}
