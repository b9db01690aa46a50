//! Finalizing proof PSBTs (BIP-127 and BIP-322) in linear time.
//!
//! Why not miniscript's `PsbtExt::finalize_inp_mut` for every input: for each input it runs the
//! interpreter over the finalized input with a fresh sighash cache (re-hashing all inputs'
//! prevouts, amounts and scripts), and for taproot it first collects the key origins of *every*
//! input of the PSBT. Both are linear per input, so a proof over 10,000 UTXOs takes quadratic
//! time. Here each `wsh` or `tr` input is satisfied from its own PSBT fields with miniscript's
//! satisfier, no check on the way; the caller verifies the whole transaction once afterwards
//! with [`ScriptVerifier`](super::scripts::ScriptVerifier), which is what proves it correct.
//! Inputs of other script types go through miniscript's finalizer as before.

use bdk_wallet::bitcoin::psbt::{Input, Psbt};
use bdk_wallet::bitcoin::secp256k1::{Secp256k1, VerifyOnly};
use bdk_wallet::bitcoin::taproot::LeafVersion;
use bdk_wallet::bitcoin::{PublicKey, ScriptBuf, Witness, XOnlyPublicKey};
use bdk_wallet::miniscript::psbt::{PsbtExt, PsbtInputSatisfier};
use bdk_wallet::miniscript::{Miniscript, Segwitv0, Tap};

/// Finalizes input `i` of `psbt` (an input already final is left alone).
pub(crate) fn finalize_input(
    psbt: &mut Psbt,
    i: usize,
    secp: &Secp256k1<VerifyOnly>,
) -> Result<(), String> {
    let input = psbt.inputs.get(i).ok_or("no such input")?;
    if input.final_script_sig.is_some() || input.final_script_witness.is_some() {
        return Ok(());
    }
    let spk = input
        .witness_utxo
        .as_ref()
        .map(|u| u.script_pubkey.clone())
        .ok_or("missing witness_utxo")?;
    let stack = if spk.is_p2wsh() {
        wsh_witness(psbt, i, &spk)?
    } else if spk.is_p2tr() {
        tr_witness(psbt, i)?
    } else {
        return psbt.finalize_inp_mut(secp, i).map_err(|e| e.to_string());
    };
    let input = psbt.inputs.get_mut(i).ok_or("no such input")?;
    let old = std::mem::take(input);
    *input = Input {
        non_witness_utxo: old.non_witness_utxo,
        witness_utxo: old.witness_utxo,
        final_script_witness: Some(Witness::from_slice(&stack)),
        unknown: old.unknown,
        ..Input::default()
    };
    Ok(())
}

fn wsh_witness(psbt: &Psbt, i: usize, spk: &ScriptBuf) -> Result<Vec<Vec<u8>>, String> {
    let input = psbt.inputs.get(i).ok_or("no such input")?;
    let ws = input
        .witness_script
        .as_ref()
        .ok_or("missing witness_script")?;
    if ScriptBuf::new_p2wsh(&ws.wscript_hash()) != *spk {
        return Err("the witness script does not hash to the spent script".into());
    }
    let ms = Miniscript::<PublicKey, Segwitv0>::parse(ws).map_err(|e| e.to_string())?;
    let mut stack = ms
        .satisfy(PsbtInputSatisfier::new(psbt, i))
        .map_err(|e| e.to_string())?;
    stack.push(ws.to_bytes());
    Ok(stack)
}

fn tr_witness(psbt: &Psbt, i: usize) -> Result<Vec<Vec<u8>>, String> {
    let input = psbt.inputs.get(i).ok_or("no such input")?;
    if let Some(sig) = &input.tap_key_sig {
        return Ok(vec![sig.to_vec()]);
    }
    let mut best: Option<Vec<Vec<u8>>> = None;
    let mut last_error = String::from("no tap script to satisfy");
    for (control, (script, version)) in &input.tap_scripts {
        if *version != LeafVersion::TapScript {
            continue;
        }
        let ms = match Miniscript::<XOnlyPublicKey, Tap>::parse(script) {
            Ok(ms) => ms,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        match ms.satisfy(PsbtInputSatisfier::new(psbt, i)) {
            Ok(mut stack) => {
                stack.push(script.to_bytes());
                stack.push(control.serialize());
                let size = |s: &Vec<Vec<u8>>| s.iter().map(Vec::len).sum::<usize>();
                if best.as_ref().is_none_or(|b| size(&stack) < size(b)) {
                    best = Some(stack);
                }
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    best.ok_or(last_error)
}
