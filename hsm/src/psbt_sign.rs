//! The PSBT walk shared by every signer.
//!
//! Why shared: the checks that keep a signer from being tricked (the spent output really is
//! P2WSH of the script shown, or a taproot output committing to the leaf shown; only
//! SIGHASH_ALL/DEFAULT; the key appears in the script) must be identical for the HSM and the
//! software keystores. A backend only says which keys it holds and makes raw signatures.

use std::collections::BTreeMap;

use bitcoin::bip32::KeySource;
use bitcoin::hashes::Hash;
use bitcoin::script::Instruction;
use bitcoin::secp256k1::{ecdsa, schnorr, Message, PublicKey as SecpPublicKey, Secp256k1};
use bitcoin::secp256k1::{Verification, XOnlyPublicKey};
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::taproot::TapLeafHash;
use bitcoin::{Psbt, Script, ScriptBuf, Transaction, TxOut};

use crate::{HsmError, SignReport, SignedInput, SignedKey};

/// What a backend provides to [`sign_psbt`].
pub(crate) trait KeyOps {
    /// Id for error messages.
    fn signer_id(&self) -> &str;
    /// Does this backend hold the private key of `key` (with this origin)?
    fn holds_ecdsa(&self, key: &SecpPublicKey, origin: &KeySource) -> bool;
    /// ECDSA-sign a 32-byte digest with `key`; low-S.
    fn sign_ecdsa(
        &self,
        key: &SecpPublicKey,
        origin: &KeySource,
        msg: &Message,
    ) -> Result<ecdsa::Signature, HsmError>;
    /// Does this backend hold the private key of the x-only `key` (with this origin)?
    fn holds_schnorr(&self, _key: &XOnlyPublicKey, _origin: &KeySource) -> bool {
        false
    }
    /// BIP-340-sign a 32-byte digest with `key`.
    fn sign_schnorr(
        &self,
        _key: &XOnlyPublicKey,
        _origin: &KeySource,
        _msg: &Message,
    ) -> Result<schnorr::Signature, HsmError> {
        Err(HsmError::Key(format!(
            "{} holds no schnorr keys",
            self.signer_id()
        )))
    }
}

enum Pending {
    Ecdsa {
        input: usize,
        key: bitcoin::PublicKey,
        sig: bitcoin::ecdsa::Signature,
    },
    Schnorr {
        input: usize,
        key: XOnlyPublicKey,
        leaf: TapLeafHash,
        sig: bitcoin::taproot::Signature,
    },
}

/// Signs every input `ops` holds a key for; all-or-nothing.
pub(crate) fn sign_psbt<K: KeyOps + ?Sized>(
    ops: &K,
    psbt: &mut Psbt,
) -> Result<SignReport, HsmError> {
    let secp = Secp256k1::verification_only();
    let mut pending = Vec::new();
    {
        let tx = &psbt.unsigned_tx;
        let mut cache = SighashCache::new(tx);
        let mut prevouts: Option<Vec<TxOut>> = None;
        for (index, input) in psbt.inputs.iter().enumerate() {
            ecdsa_input(ops, &secp, &mut cache, tx, index, input, &mut pending)?;
            let ours: Vec<(&XOnlyPublicKey, &Vec<TapLeafHash>, &KeySource)> = input
                .tap_key_origins
                .iter()
                .filter(|(key, (leaves, origin))| {
                    !leaves.is_empty() && ops.holds_schnorr(key, origin)
                })
                .map(|(key, (leaves, origin))| (key, leaves, origin))
                .collect();
            if ours.is_empty() {
                continue;
            }
            if prevouts.is_none() {
                prevouts = Some(all_prevouts(psbt)?);
            }
            let all = prevouts.as_deref().unwrap_or_default();
            taproot_input(
                ops,
                &secp,
                &mut cache,
                all,
                index,
                input,
                &ours,
                &mut pending,
            )?;
        }
    }
    let mut report = SignReport::default();
    for p in pending {
        match p {
            Pending::Ecdsa { input, key, sig } => {
                if let Some(i) = psbt.inputs.get_mut(input) {
                    i.partial_sigs.insert(key, sig);
                    report.signed.push(SignedInput {
                        input,
                        key: SignedKey::Ecdsa(key),
                    });
                }
            }
            Pending::Schnorr {
                input,
                key,
                leaf,
                sig,
            } => {
                if let Some(i) = psbt.inputs.get_mut(input) {
                    i.tap_script_sigs.insert((key, leaf), sig);
                    report.signed.push(SignedInput {
                        input,
                        key: SignedKey::Schnorr { key, leaf },
                    });
                }
            }
        }
    }
    Ok(report)
}

fn all_prevouts(psbt: &Psbt) -> Result<Vec<TxOut>, HsmError> {
    psbt.inputs
        .iter()
        .enumerate()
        .map(|(input, i)| {
            i.witness_utxo
                .clone()
                .ok_or(HsmError::MissingWitnessUtxo { input })
        })
        .collect()
}

/// `non_witness_utxo`, when present, must be the transaction the outpoint names, and its
/// output must equal `witness_utxo` (the segwit v0 fee-lie defence).
fn check_non_witness_utxo(
    tx: &Transaction,
    index: usize,
    input: &bitcoin::psbt::Input,
    utxo: &TxOut,
) -> Result<(), HsmError> {
    let Some(prev) = &input.non_witness_utxo else {
        return Ok(());
    };
    let mismatch = HsmError::UtxoMismatch { input: index };
    let outpoint = tx.input.get(index).ok_or(HsmError::Sighash {
        input: index,
        reason: "input index beyond the unsigned transaction".into(),
    })?;
    let outpoint = outpoint.previous_output;
    if prev.compute_txid() != outpoint.txid {
        return Err(mismatch);
    }
    match usize::try_from(outpoint.vout)
        .ok()
        .and_then(|v| prev.output.get(v))
    {
        Some(out) if out == utxo => Ok(()),
        _ => Err(mismatch),
    }
}

fn script_pushes(script: &Script, wanted: &[&[u8]]) -> bool {
    script.instructions().any(|ins| match ins {
        Ok(Instruction::PushBytes(b)) => wanted.contains(&b.as_bytes()),
        _ => false,
    })
}

#[allow(clippy::too_many_arguments)]
fn ecdsa_input<K: KeyOps + ?Sized, C: Verification>(
    ops: &K,
    secp: &Secp256k1<C>,
    cache: &mut SighashCache<&Transaction>,
    tx: &Transaction,
    index: usize,
    input: &bitcoin::psbt::Input,
    pending: &mut Vec<Pending>,
) -> Result<(), HsmError> {
    let ours: Vec<(&SecpPublicKey, &KeySource)> = input
        .bip32_derivation
        .iter()
        .filter(|(k, o)| ops.holds_ecdsa(k, o))
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    if let Some(ty) = input.sighash_type {
        if ty.ecdsa_hash_ty().ok() != Some(EcdsaSighashType::All) {
            return Err(HsmError::SighashRefused {
                input: index,
                sighash: ty.to_u32(),
            });
        }
    }
    let utxo = input
        .witness_utxo
        .as_ref()
        .ok_or(HsmError::MissingWitnessUtxo { input: index })?;
    let ws = input
        .witness_script
        .as_ref()
        .ok_or(HsmError::MissingWitnessScript { input: index })?;
    if utxo.script_pubkey != ScriptBuf::new_p2wsh(&ws.wscript_hash()) {
        return Err(HsmError::WitnessScriptMismatch { input: index });
    }
    check_non_witness_utxo(tx, index, input, utxo)?;
    let sighash = cache
        .p2wsh_signature_hash(index, ws, utxo.value, EcdsaSighashType::All)
        .map_err(|e| HsmError::Sighash {
            input: index,
            reason: e.to_string(),
        })?;
    let msg = Message::from_digest(sighash.to_byte_array());
    for (key, origin) in ours {
        let full = key.serialize();
        let hash = bitcoin::PublicKey::new(*key).pubkey_hash();
        if !script_pushes(ws, &[&full[..], &hash.as_byte_array()[..]]) {
            return Err(HsmError::KeyNotInScript {
                input: index,
                key: key.to_string(),
            });
        }
        let sig = ops.sign_ecdsa(key, origin, &msg)?;
        if secp.verify_ecdsa(&msg, &sig, key).is_err() {
            return Err(HsmError::SignatureCheckFailed {
                signer: ops.signer_id().to_owned(),
            });
        }
        pending.push(Pending::Ecdsa {
            input: index,
            key: bitcoin::PublicKey::new(*key),
            sig: bitcoin::ecdsa::Signature {
                signature: sig,
                sighash_type: EcdsaSighashType::All,
            },
        });
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn taproot_input<K: KeyOps + ?Sized, C: Verification>(
    ops: &K,
    secp: &Secp256k1<C>,
    cache: &mut SighashCache<&Transaction>,
    prevouts: &[TxOut],
    index: usize,
    input: &bitcoin::psbt::Input,
    ours: &[(&XOnlyPublicKey, &Vec<TapLeafHash>, &KeySource)],
    pending: &mut Vec<Pending>,
) -> Result<(), HsmError> {
    let sighash_type = match input.sighash_type {
        None => TapSighashType::Default,
        Some(ty) => match ty.taproot_hash_ty() {
            Ok(t @ (TapSighashType::Default | TapSighashType::All)) => t,
            _ => {
                return Err(HsmError::SighashRefused {
                    input: index,
                    sighash: ty.to_u32(),
                })
            }
        },
    };
    let utxo = prevouts
        .get(index)
        .ok_or(HsmError::MissingWitnessUtxo { input: index })?;
    let spk = utxo.script_pubkey.as_bytes();
    if !utxo.script_pubkey.is_p2tr() {
        return Err(HsmError::NotTaproot { input: index });
    }
    let output_key = spk
        .get(2..34)
        .and_then(|b| XOnlyPublicKey::from_slice(b).ok())
        .ok_or(HsmError::NotTaproot { input: index })?;
    // Only leaves whose control block proves they are committed to by the output key.
    let mut leaves: BTreeMap<TapLeafHash, &ScriptBuf> = BTreeMap::new();
    for (control, (script, version)) in &input.tap_scripts {
        let leaf = TapLeafHash::from_script(script, *version);
        if !control.verify_taproot_commitment(secp, output_key, script) {
            return Err(HsmError::TapLeafMismatch {
                input: index,
                leaf: leaf.to_string(),
            });
        }
        leaves.insert(leaf, script);
    }
    for (key, key_leaves, origin) in ours {
        for leaf in key_leaves.iter() {
            let script = leaves.get(leaf).ok_or(HsmError::TapLeafMismatch {
                input: index,
                leaf: leaf.to_string(),
            })?;
            if !script_pushes(script, &[&key.serialize()[..]]) {
                return Err(HsmError::KeyNotInScript {
                    input: index,
                    key: key.to_string(),
                });
            }
            let sighash = cache
                .taproot_script_spend_signature_hash(
                    index,
                    &Prevouts::All(prevouts),
                    *leaf,
                    sighash_type,
                )
                .map_err(|e| HsmError::Sighash {
                    input: index,
                    reason: e.to_string(),
                })?;
            let msg = Message::from_digest(sighash.to_byte_array());
            let sig = ops.sign_schnorr(key, origin, &msg)?;
            if secp.verify_schnorr(&sig, &msg, key).is_err() {
                return Err(HsmError::SignatureCheckFailed {
                    signer: ops.signer_id().to_owned(),
                });
            }
            pending.push(Pending::Schnorr {
                input: index,
                key: **key,
                leaf: *leaf,
                sig: bitcoin::taproot::Signature {
                    signature: sig,
                    sighash_type,
                },
            });
        }
    }
    Ok(())
}
