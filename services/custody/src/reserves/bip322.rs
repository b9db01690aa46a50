//! BIP-322 proof of funds: the same message and the same UTXOs as a BIP-127 proof, in the form
//! some hardware signers (e.g. Coldcard) already know how to sign.
//!
//! Why a second form: BIP-127's commitment input spends an outpoint that no signer can look up,
//! and many devices refuse such a PSBT. BIP-322's "full" format with the proof-of-funds extension
//! asks them to sign an ordinary-looking spend of a virtual transaction, `to_spend`, whose
//! output pays one of the reserve's own addresses (the *message challenge*), so input 0 is
//! signed by the vault's keys like any other input, and the UTXOs being proven follow as
//! additional inputs. Neither transaction can ever be mined: `to_spend` spends the null outpoint
//! `000…000:0xFFFFFFFF` (a coinbase-looking input outside a block), so `to_sign` spends an
//! output that does not exist.
//!
//! As BIP-322 fixes it:
//! - `message_hash` = BIP-340 tagged hash with tag `BIP0322-signed-message` of the message
//!   bytes (here the canonical text of [`ProofMessage`], the same bytes BIP-127 commits to).
//! - `to_spend`: version 0, lock time 0, one input spending `000…000:0xFFFFFFFF` with sequence 0,
//!   scriptSig `OP_0 PUSH32[message_hash]` and an empty witness; one output of value 0 paying
//!   the message challenge.
//! - `to_sign`: input 0 spends `to_spend:0`; one output of value 0 whose script is exactly
//!   `OP_RETURN`; the signed form is the whole `to_sign` transaction ("full" format,
//!   base64 of its network serialization: [`encode_full`], [`decode_full`]).
//!
//! The choices the BIP leaves to us, made here:
//! - **Version 0, lock time 0 and sequence 0 on every input** when building. The verifier
//!   accepts version 0 or 2 (the BIP's upgradeable rule) but requires lock time 0 and sequence
//!   0 on input 0: a proof "valid at time T and age S" with T or S set is not a proof now.
//! - **The challenge** is an address of a proven vault (by default its first receive address),
//!   so input 0 carries the vault's key origins and the officers' devices sign it as a normal
//!   input of their vault. The verifier is told which script to expect; the auditor derives it
//!   from the declared descriptors.
//! - **Input 0's PSBT data**: `witness_utxo` is `to_spend`'s output and `non_witness_utxo` is
//!   `to_spend` itself (for every script type), so a signer can recompute the message hash from
//!   the scriptSig and see that this is a message, not a spend.
//! - **SIGHASH_ALL only**, as the BIP requires, checked on the PSBT and on every signature.
//! - **Verification** runs miniscript's interpreter on every input (input 0 included) with all
//!   spent outputs, through the same input verifier (`super::scripts`) as BIP-127 proofs;
//!   scripts outside miniscript are refused ("inconclusive" in the BIP's terms is an error here).
//!
//! The pure pieces a signer needs (message hash, `to_spend`, `to_sign`'s shape, the PSBT check
//! and the error type) live in [`policies::proof_of_funds`], shared with the HSM policy signer,
//! and are re-exported here. The PSBT also carries the message in a proprietary global field
//! ([`set_psbt_message`]) so a signer can read and show it.

use base64::Engine as _;
use bdk_wallet::bitcoin::consensus;
use bdk_wallet::bitcoin::psbt::{Input, Psbt, PsbtSighashType};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::{
    Amount, EcdsaSighashType, OutPoint, Script, ScriptBuf, Transaction, TxOut, Witness,
};
use std::collections::BTreeSet;

use policies::proof_of_funds::sum;
pub use policies::proof_of_funds::{
    check_proof_of_funds_psbt, check_to_sign_tx, message_hash, proven_outpoints, psbt_message,
    set_psbt_message, spends_to_spend, to_sign, to_sign_output_script, to_spend, to_spend_outpoint,
    Bip322Error, PSBT_MESSAGE_SUBTYPE, PSBT_PROPRIETARY_PREFIX, TAG,
};

use super::finalizer::finalize_input;
use super::scripts::{self, InputFault};
use super::{fill_input, vault_checksums, ProofMessage, ReserveError};
use crate::vault::{Keychain, Vault, VaultUtxo};
use bdk_wallet::miniscript::psbt::PsbtExt;

/// Which vault address is the message challenge.
#[derive(Debug, Clone, Copy)]
pub struct Challenge<'a> {
    /// The vault whose keys sign input 0.
    pub vault: &'a Vault,
    /// Keychain of the address.
    pub keychain: Keychain,
    /// Derivation index of the address.
    pub index: u32,
}

impl<'a> Challenge<'a> {
    /// The vault's first receive address (external keychain, index 0): the default challenge,
    /// which an auditor derives from the declared descriptor alone.
    pub fn first_receive(vault: &'a Vault) -> Self {
        Challenge {
            vault,
            keychain: Keychain::External,
            index: 0,
        }
    }

    /// The challenge scriptPubKey.
    pub fn script_pubkey(&self) -> ScriptBuf {
        self.vault
            .peek_address(self.keychain, self.index)
            .address
            .script_pubkey()
    }
}

/// A built, unsigned BIP-322 proof of funds.
#[derive(Debug, Clone, PartialEq)]
pub struct Bip322Psbt {
    /// The `to_sign` PSBT: input 0 spends `to_spend:0`, then every UTXO.
    pub psbt: Psbt,
    /// The `to_spend` transaction.
    pub to_spend: Transaction,
    /// The message challenge (scriptPubKey of `to_spend`'s output).
    pub challenge: ScriptBuf,
    /// The sum of the UTXOs.
    pub total: Amount,
    /// The UTXOs, in input order (inputs 1..).
    pub inputs: Vec<OutPoint>,
}

/// Builds the `to_sign` PSBT of a proof of funds for the UTXOs of one or more vaults.
///
/// Input 0 spends `to_spend:0` with `to_spend` as its `non_witness_utxo`, its output as its
/// `witness_utxo`, and the scripts and key origins of the challenge address; each UTXO follows
/// with its `witness_utxo`, its previous transaction for segwit v0, its scripts and key
/// origins; every input asks for `SIGHASH_ALL`. The PSBT can be signed by Bitcoin Core's
/// `descriptorprocesspsbt` with the vaults' private descriptors, or by the officers' devices.
///
/// # Errors
/// [`Bip322Error::NoUtxos`]; [`Bip322Error::Build`] with [`ReserveError::VaultNotInMessage`]
/// when a vault (the challenge's included) is not in the message, or [`ReserveError::Utxo`] for
/// a UTXO the vault does not know or whose value does not match;
/// [`Bip322Error::DuplicateInput`]; [`Bip322Error::Challenge`]; [`Bip322Error::Overflow`].
pub fn build_proof_of_funds(
    challenge: &Challenge<'_>,
    vaults: &[(&Vault, &[VaultUtxo])],
    message: &ProofMessage,
) -> Result<Bip322Psbt, Bip322Error> {
    let text = message.encode();
    let msg = text.as_bytes();
    let in_message = |vault: &Vault| -> Result<(), Bip322Error> {
        for checksum in vault_checksums(vault)? {
            if !message.descriptor_checksums().any(|c| c == checksum) {
                return Err(ReserveError::VaultNotInMessage {
                    vault: vault.name().to_string(),
                    checksum,
                }
                .into());
            }
        }
        Ok(())
    };
    in_message(challenge.vault)?;
    let mut inputs = Vec::new();
    let mut seen = BTreeSet::new();
    for (vault, utxos) in vaults {
        in_message(vault)?;
        for u in utxos.iter() {
            if !seen.insert(u.outpoint) {
                return Err(Bip322Error::DuplicateInput(u.outpoint));
            }
            inputs.push(u.outpoint);
        }
    }
    if inputs.is_empty() {
        return Err(Bip322Error::NoUtxos);
    }
    let challenge_script = challenge.script_pubkey();
    let spend = to_spend(msg, &challenge_script);
    let tx = to_sign(spend.compute_txid(), &inputs);
    let mut psbt = Psbt::from_unsigned_tx(tx).map_err(|e| Bip322Error::PsbtInput {
        input: 0,
        reason: e.to_string(),
    })?;
    set_psbt_message(&mut psbt, msg);
    let desc = challenge
        .vault
        .public_descriptor(challenge.keychain)
        .at_derivation_index(challenge.index)
        .map_err(|e| Bip322Error::Challenge(e.to_string()))?;
    let first: &mut Input = psbt.inputs.first_mut().ok_or(Bip322Error::NoInputs)?;
    first.witness_utxo = spend.output.first().cloned();
    first.non_witness_utxo = Some(spend.clone());
    first.sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::All));
    psbt.update_input_with_descriptor(0, &desc)
        .map_err(|e| Bip322Error::Challenge(e.to_string()))?;

    let mut total = Amount::ZERO;
    let mut index = 1usize;
    for (vault, utxos) in vaults {
        for u in utxos.iter() {
            let value = fill_input(&mut psbt, index, vault, u)?;
            total = total.checked_add(value).ok_or(Bip322Error::Overflow)?;
            index = index.saturating_add(1);
        }
    }
    Ok(Bip322Psbt {
        psbt,
        to_spend: spend,
        challenge: challenge_script,
        total,
        inputs,
    })
}

/// Finalizes a signed proof-of-funds PSBT (every input satisfied by miniscript from its own
/// PSBT fields, in linear time),
/// extracts `to_sign` and verifies it with [`verify`] against the PSBT's `witness_utxo`s.
///
/// # Errors
/// Any error of [`check_proof_of_funds_psbt`], [`Bip322Error::Finalize`] naming the input, or
/// any error of [`verify`].
pub fn finalize(
    mut psbt: Psbt,
    message: &[u8],
    challenge: &Script,
) -> Result<Transaction, Bip322Error> {
    check_proof_of_funds_psbt(&psbt, message, challenge)?;
    let secp = Secp256k1::verification_only();
    for i in 0..psbt.inputs.len() {
        finalize_input(&mut psbt, i, &secp)
            .map_err(|reason| Bip322Error::Finalize { input: i, reason })?;
    }
    let spent: Vec<TxOut> = psbt
        .inputs
        .iter()
        .skip(1)
        .filter_map(|i| i.witness_utxo.clone())
        .collect();
    let tx = psbt.extract_tx_unchecked_fee_rate();
    verify(&tx, message, challenge, &spent)?;
    Ok(tx)
}

/// Verifies a signed `to_sign` transaction (the "full" format) offline: the structure exactly
/// (see the module docs), then every input's script, input 0 against `to_spend`'s output and
/// input `i ≥ 1` against `spent_outputs[i - 1]`, with signatures checked against sighashes
/// over all spent outputs (taproot included), every signature `SIGHASH_ALL`, and at least one
/// signature on every input. Returns the proven amount, the sum of `spent_outputs`.
///
/// What it does not check: that the spent outputs exist (or existed at some block), which only
/// a node can say.
///
/// # Errors
/// The [`Bip322Error`] naming the first violation; [`Bip322Error::Script`] for a forged,
/// truncated or missing witness, or a signature for another message or challenge.
pub fn verify(
    tx: &Transaction,
    message: &[u8],
    challenge: &Script,
    spent_outputs: &[TxOut],
) -> Result<Amount, Bip322Error> {
    verify_with_threads(
        tx,
        message,
        challenge,
        spent_outputs,
        scripts::default_threads(),
    )
}

/// [`verify`] on at most `threads` threads (it uses the machine's available parallelism). The
/// result does not depend on `threads`: with several faults the one reported is that of the
/// lowest input, as with one thread.
///
/// # Errors
/// As [`verify`].
pub fn verify_with_threads(
    tx: &Transaction,
    message: &[u8],
    challenge: &Script,
    spent_outputs: &[TxOut],
    threads: std::num::NonZeroUsize,
) -> Result<Amount, Bip322Error> {
    check_to_sign_tx(tx, message, challenge)?;
    let extra = tx.input.len().saturating_sub(1);
    if spent_outputs.len() != extra {
        return Err(Bip322Error::SpentOutputs {
            expected: extra,
            found: spent_outputs.len(),
        });
    }
    let total = sum(spent_outputs.iter().map(|o| o.value))?;
    let mut prevouts = Vec::with_capacity(tx.input.len());
    prevouts.push(TxOut {
        value: Amount::ZERO,
        script_pubkey: challenge.to_owned(),
    });
    prevouts.extend_from_slice(spent_outputs);
    match scripts::verify_inputs(tx, &prevouts, 0..tx.input.len(), threads) {
        Ok(()) => Ok(total),
        Err((input, InputFault::Script(reason))) => Err(Bip322Error::Script { input, reason }),
        Err((input, InputFault::SighashNotAll(found))) => {
            Err(Bip322Error::SighashNotAll { input, found })
        }
    }
}

/// The "full" format: base64 of `to_sign`'s network serialization (with witnesses).
pub fn encode_full(to_sign: &Transaction) -> String {
    base64::engine::general_purpose::STANDARD.encode(consensus::serialize(to_sign))
}

/// Decodes the "full" format strictly: standard base64 of exactly one transaction, no
/// trailing bytes.
///
/// # Errors
/// [`Bip322Error::Encoding`].
pub fn decode_full(text: &str) -> Result<Transaction, Bip322Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| Bip322Error::Encoding(e.to_string()))?;
    consensus::deserialize(&bytes).map_err(|e| Bip322Error::Encoding(e.to_string()))
}

/// The `to_sign` transaction of a BIP-322 "simple" signature: `to_sign` of `message` and
/// `challenge` without additional inputs, input 0's witness decoded from `simple` (base64 of
/// the consensus-encoded witness stack). Verify it with [`verify`] and no spent outputs.
///
/// # Errors
/// [`Bip322Error::Encoding`] when `simple` is not base64 of one witness stack.
pub fn from_simple(
    simple: &str,
    message: &[u8],
    challenge: &Script,
) -> Result<Transaction, Bip322Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(simple.trim())
        .map_err(|e| Bip322Error::Encoding(e.to_string()))?;
    let witness: Witness =
        consensus::deserialize(&bytes).map_err(|e| Bip322Error::Encoding(e.to_string()))?;
    let mut tx = to_sign(to_spend(message, challenge).compute_txid(), &[]);
    if let Some(first) = tx.input.first_mut() {
        first.witness = witness;
    }
    Ok(tx)
}
