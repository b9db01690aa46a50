//! Script verification of every input of a proof transaction (BIP-127 or BIP-322), with one
//! sighash cache for the whole transaction.
//!
//! Why not miniscript's `Interpreter::iter`: it builds a new `SighashCache` for every signature
//! it checks, so each check re-hashes the prevouts, amounts, scripts and sequences of *all*
//! inputs (BIP-143 and BIP-341 both commit to them). A proof spends every UTXO of a vault at
//! once: with 10,000 inputs that is quadratic, minutes of hashing. Here the interpreter still
//! decides what is satisfied (miniscript semantics, taproot control blocks, witness-script
//! hashes), but the signature checks it asks for go through [`ScriptVerifier`], which keeps one
//! `SighashCache` for the transaction, so the shared parts are hashed once.
//!
//! The inputs are independent, so [`verify_inputs`] splits them over threads
//! (`std::thread::available_parallelism`), each with its own verifier and sighash cache over the
//! shared transaction: a proof over 10,000 UTXOs is ~20,000 signature checks, and they are what
//! is left of its cost. The outcome does not depend on the threads: the fault reported is the
//! one of the lowest failing input, exactly as a loop over the inputs in order would report.
//!
//! Only segwit spends are understood (v0: `wsh` and `wpkh`, also P2SH-wrapped; v1: taproot key
//! and script paths with leaf version `0xc0`); a legacy script is refused. That is right for our
//! vaults, and the BIP-322 rules forbid nothing we accept.

use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bdk_wallet::bitcoin::hashes::Hash;
use bdk_wallet::bitcoin::secp256k1::{Message, Secp256k1, VerifyOnly};
use bdk_wallet::bitcoin::sighash::{Prevouts, SighashCache};
use bdk_wallet::bitcoin::taproot::{LeafVersion, TapLeafHash};
use bdk_wallet::bitcoin::{EcdsaSighashType, Script, TapSighashType, Transaction, TxOut};
use bdk_wallet::miniscript::interpreter::{Interpreter, KeySigPair, SatisfiedConstraint};

/// Why an input did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InputFault {
    /// The script is not satisfied, a signature is wrong, or the spend is not understood.
    Script(String),
    /// A signature with a sighash type other than ALL (taproot DEFAULT counts as ALL).
    SighashNotAll(String),
}

/// What a signature of one input commits to, besides the transaction.
enum SigKind<'s> {
    /// Segwit v0 script hash: the witness script is the script code.
    Wsh(&'s Script),
    /// Segwit v0 key hash: the `wpkh` script (native, or the P2SH redeem script).
    Wpkh(&'s Script),
    /// Taproot key path.
    TapKey,
    /// Taproot script path: the leaf hash.
    TapScript(TapLeafHash),
}

/// Verifies the inputs of one transaction against all its spent outputs.
pub(crate) struct ScriptVerifier<'t> {
    tx: &'t Transaction,
    prevouts: &'t [TxOut],
    cache: SighashCache<&'t Transaction>,
    secp: Secp256k1<VerifyOnly>,
}

impl<'t> ScriptVerifier<'t> {
    /// A verifier for `tx`, whose input `i` spends `prevouts[i]`.
    pub(crate) fn new(tx: &'t Transaction, prevouts: &'t [TxOut]) -> Self {
        ScriptVerifier {
            tx,
            prevouts,
            cache: SighashCache::new(tx),
            secp: Secp256k1::verification_only(),
        }
    }

    /// Verifies input `i`: its script is satisfied, every signature checks against its
    /// sighash, every signature is SIGHASH_ALL. Returns how many signatures it carries.
    pub(crate) fn verify_input(&mut self, i: usize) -> Result<usize, InputFault> {
        let script = |s: &str| InputFault::Script(s.to_string());
        let txin = self
            .tx
            .input
            .get(i)
            .ok_or_else(|| script("no such input"))?;
        let spent = self
            .prevouts
            .get(i)
            .ok_or_else(|| script("no spent output for this input"))?;
        let interpreter = Interpreter::from_txdata(
            &spent.script_pubkey,
            &txin.script_sig,
            &txin.witness,
            txin.sequence,
            self.tx.lock_time,
        )
        .map_err(|e| InputFault::Script(e.to_string()))?;
        let kind = if interpreter.is_taproot_v1_key_spend() {
            SigKind::TapKey
        } else if interpreter.is_taproot_v1_script_spend() {
            let leaf = txin
                .witness
                .taproot_leaf_script()
                .ok_or_else(|| script("taproot script spend without a script"))?;
            if leaf.version != LeafVersion::TapScript {
                return Err(script("taproot leaf version is not tapscript (0xc0)"));
            }
            SigKind::TapScript(TapLeafHash::from_script(leaf.script, leaf.version))
        } else if interpreter.is_segwit_v0() {
            let inner: &Script = if spent.script_pubkey.is_p2sh() {
                txin.script_sig
                    .redeem_script()
                    .ok_or_else(|| script("p2sh spend without a redeem script"))?
            } else {
                &spent.script_pubkey
            };
            if inner.is_p2wsh() {
                SigKind::Wsh(
                    txin.witness
                        .witness_script()
                        .ok_or_else(|| script("p2wsh spend without a witness script"))?,
                )
            } else if inner.is_p2wpkh() {
                SigKind::Wpkh(inner)
            } else {
                return Err(script("unknown segwit v0 spend"));
            }
        } else {
            return Err(script(
                "only segwit spends are verified (this one is legacy)",
            ));
        };
        let amount = spent.value;
        let all = self.prevouts;
        let cache = &mut self.cache;
        let secp = &self.secp;
        let check = move |pair: &KeySigPair| -> bool {
            match (pair, &kind) {
                (KeySigPair::Ecdsa(pk, sig), SigKind::Wsh(ws)) => cache
                    .p2wsh_signature_hash(i, ws, amount, sig.sighash_type)
                    .map(|h| Message::from_digest(h.to_byte_array()))
                    .is_ok_and(|m| secp.verify_ecdsa(&m, &sig.signature, &pk.inner).is_ok()),
                (KeySigPair::Ecdsa(pk, sig), SigKind::Wpkh(spk)) => cache
                    .p2wpkh_signature_hash(i, spk, amount, sig.sighash_type)
                    .map(|h| Message::from_digest(h.to_byte_array()))
                    .is_ok_and(|m| secp.verify_ecdsa(&m, &sig.signature, &pk.inner).is_ok()),
                (KeySigPair::Schnorr(xpk, sig), SigKind::TapKey) => cache
                    .taproot_key_spend_signature_hash(i, &Prevouts::All(all), sig.sighash_type)
                    .map(|h| Message::from_digest(h.to_byte_array()))
                    .is_ok_and(|m| secp.verify_schnorr(&sig.signature, &m, xpk).is_ok()),
                (KeySigPair::Schnorr(xpk, sig), SigKind::TapScript(leaf)) => cache
                    .taproot_script_spend_signature_hash(
                        i,
                        &Prevouts::All(all),
                        *leaf,
                        sig.sighash_type,
                    )
                    .map(|h| Message::from_digest(h.to_byte_array()))
                    .is_ok_and(|m| secp.verify_schnorr(&sig.signature, &m, xpk).is_ok()),
                _ => false,
            }
        };
        let mut signatures = 0usize;
        for step in interpreter.iter_custom(Box::new(check)) {
            let constraint = step.map_err(|e| InputFault::Script(e.to_string()))?;
            let key_sig = match &constraint {
                SatisfiedConstraint::PublicKey { key_sig }
                | SatisfiedConstraint::PublicKeyHash { key_sig, .. } => key_sig,
                _ => continue,
            };
            match key_sig {
                KeySigPair::Ecdsa(_, sig) if sig.sighash_type != EcdsaSighashType::All => {
                    return Err(InputFault::SighashNotAll(sig.sighash_type.to_string()))
                }
                KeySigPair::Schnorr(_, sig)
                    if !matches!(
                        sig.sighash_type,
                        TapSighashType::All | TapSighashType::Default
                    ) =>
                {
                    return Err(InputFault::SighashNotAll(sig.sighash_type.to_string()))
                }
                _ => signatures = signatures.saturating_add(1),
            }
        }
        Ok(signatures)
    }
}

/// What a proof without a signature on an input is refused with.
pub(crate) const NO_SIGNATURE: &str = "no signature proves control of the output";

/// Inputs handed to a thread at a time: large enough that the shared counter is not contended,
/// small enough that a thread slowed by another process does not hold up the end.
const BLOCK: usize = 64;

/// Below this many inputs the threads cost more than they save.
const MIN_PARALLEL: usize = 2 * BLOCK;

/// How many threads [`verify_inputs`] uses: the machine's available parallelism (1 when it
/// cannot be told).
pub(crate) fn default_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Verifies one input and counts a spend without any signature as a fault.
fn check_one(verifier: &mut ScriptVerifier<'_>, i: usize) -> Result<(), InputFault> {
    match verifier.verify_input(i) {
        Ok(0) => Err(InputFault::Script(NO_SIGNATURE.to_string())),
        Ok(_) => Ok(()),
        Err(fault) => Err(fault),
    }
}

/// Verifies inputs `inputs` of `tx` (input `i` spends `prevouts[i]`), each with at least one
/// signature, on up to `threads` threads. Returns the lowest failing input and its fault: the
/// same as checking the inputs one after the other in order and stopping at the first fault.
///
/// Inputs are handed out in blocks of [`BLOCK`] in increasing order from a shared counter; a
/// thread stops at the first fault of its block and skips blocks above the lowest fault found
/// so far. Every input below the reported one has therefore been checked and passed, and the
/// fault of an input depends on that input alone (the sighashes are deterministic), so the
/// result is the serial one whatever the scheduling.
pub(crate) fn verify_inputs(
    tx: &Transaction,
    prevouts: &[TxOut],
    inputs: Range<usize>,
    threads: NonZeroUsize,
) -> Result<(), (usize, InputFault)> {
    let count = inputs.len();
    let threads = threads.get().min(count.div_ceil(BLOCK)).max(1);
    if threads == 1 || count < MIN_PARALLEL {
        let mut verifier = ScriptVerifier::new(tx, prevouts);
        for i in inputs {
            check_one(&mut verifier, i).map_err(|fault| (i, fault))?;
        }
        return Ok(());
    }
    let next = AtomicUsize::new(inputs.start);
    // The lowest failing input found so far (usize::MAX: none) and its fault.
    let lowest = AtomicUsize::new(usize::MAX);
    let fault: Mutex<Option<(usize, InputFault)>> = Mutex::new(None);
    let work = || {
        let mut verifier = ScriptVerifier::new(tx, prevouts);
        loop {
            let start = next.fetch_add(BLOCK, Ordering::Relaxed);
            if start >= inputs.end || start > lowest.load(Ordering::Acquire) {
                return;
            }
            let end = start.saturating_add(BLOCK).min(inputs.end);
            for i in start..end {
                if i > lowest.load(Ordering::Acquire) {
                    return;
                }
                if let Err(f) = check_one(&mut verifier, i) {
                    // A poisoned lock only means another thread panicked; the value is sound.
                    let mut slot = fault.lock().unwrap_or_else(|p| p.into_inner());
                    if slot.as_ref().is_none_or(|(at, _)| i < *at) {
                        *slot = Some((i, f));
                        lowest.store(i, Ordering::Release);
                    }
                    break;
                }
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    match fault.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(found) => Err(found),
        None => Ok(()),
    }
}
