//! Proof of reserves (BIP-127): the message, the commitment, the proof PSBT, the shape a signer
//! checks, and the offline verification of a finalized proof transaction.
//!
//! Why our own and not bdk-reserves: bdk-reserves verifies without the taproot flag (it accepts a
//! forged Schnorr signature), hashes the message twice where BIP-127 says once, and has no
//! `PSBT_IN_POR_COMMITMENT` field, so a signer cannot tell a proof from a spend.
//!
//! Why pure: an auditor re-runs [`verify_proof_tx`] from the proof file and the spent outputs
//! alone. Whether each output existed at block H and was unspent there is a question for the
//! auditor's node and lives at the edge (treasury); this module answers "do these signatures
//! prove control of these outputs, bound to this message, in a transaction that can never be
//! broadcast?".
//!
//! The choices BIP-127 leaves open, made here:
//! - **Version 2, lock time 0, sequence `0xffffffff`** on every input. BIP-127 fixes none of them;
//!   they are covered by every signature, so a verifier checks them only through the scripts.
//! - **The single output** is `OP_RETURN <SHA-256("Proof-of-Reserves: " ‖ message)>`: provably
//!   unspendable, and it names the message. [`check_proof_shape`] and [`verify_proof_tx`] accept
//!   any `OP_RETURN` output (other BIP-127 tools pick other scripts), never a spendable one.
//! - **The commitment input's spent output** (needed by every taproot sighash, which commits to
//!   the amounts and scripts of *all* inputs) is [`commitment_prevout`]: value 0 and the script
//!   `OP_TRUE`, the convention of bdk-reserves and of the BIP-127 reference tool. The builder puts
//!   it in input 0's `witness_utxo` so that PSBT signers can compute taproot sighashes, and the
//!   verifier uses it for input 0. A verifier that used another value would reject every taproot
//!   proof, never accept a false one: the output does not exist, so nothing else could be signed.
//! - **SIGHASH_ALL only.** A signature with `ANYONECANPAY`, `NONE` or `SINGLE` could be lifted
//!   into a real transaction without the commitment input; every signature is checked to be
//!   `ALL` (or taproot `DEFAULT`, which means the same).
//! - **Script verification** goes through miniscript's interpreter with all spent outputs (it
//!   checks ECDSA and Schnorr signatures against their sighashes, taproot control blocks and
//!   script hashes). `bitcoinconsensus` is not in the lock file, and bitcoin's
//!   `Transaction::verify` does not check taproot. The interpreter understands miniscript
//!   scripts only: an input with another script is refused, which is right for our vaults.
//!   The interpreter's signature checks go through one sighash cache per transaction
//!   (`scripts`), and finalizing satisfies each input from its own fields (`finalizer`): both
//!   are linear in the number of inputs, where miniscript's own paths are quadratic.

pub mod bip322;
pub mod file;
mod finalizer;
mod scripts;

use std::collections::BTreeSet;

use bdk_wallet::bitcoin::psbt::{raw, Input, Psbt, PsbtSighashType};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::transaction::Version;
use bdk_wallet::bitcoin::{
    absolute, Amount, BlockHash, EcdsaSighashType, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Witness, WitnessVersion,
};
use bdk_wallet::miniscript::psbt::PsbtExt;

use crate::vault::{Vault, VaultUtxo};

/// Why a proof was not built, or a proof or its message was refused (the error of the shared
/// shape check, [`policies::proof::ProofError`]).
pub use policies::proof::ProofError as ReserveError;
pub use policies::proof::{
    check_proof_shape, check_signature_types, check_tx_shape, check_zero_fee, commitment_hash,
    commitment_outpoint, commitment_prevout, commitment_txid, message_network, proof_output_script,
    COMMITMENT_PREFIX, MESSAGE_HEADER, PSBT_IN_POR_COMMITMENT,
};

/// Longest ledger checkpoint text a message carries.
pub const MAX_CHECKPOINT_LEN: usize = 8192;

/// Longest statement (the operator's free text) a message carries.
pub const MAX_STATEMENT_LEN: usize = 1024;

const CHECKSUM_CHARSET: &str = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/// The message a proof commits to: network, block H (height and hash), the descriptor
/// checksums of the proven vaults and the current signed ledger checkpoint.
///
/// Canonical text ([`ProofMessage::encode`]), lines joined by `\n`, no trailing newline:
/// ```text
/// strategic-reserve proof of reserves v1
/// network: regtest
/// height: 840000
/// block: <block hash, hex as Bitcoin Core prints it>
/// statement: <the operator's text, printable ASCII>   (only when there is one)
/// descriptor: <8-character checksum>      (one line each, ascending, no duplicates)
/// checkpoint: <signed checkpoint text, printable ASCII>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofMessage {
    network: Network,
    height: u32,
    block_hash: BlockHash,
    statement: Option<String>,
    descriptors: BTreeSet<String>,
    checkpoint: String,
}

impl ProofMessage {
    /// A message from its fields.
    ///
    /// # Errors
    /// [`ReserveError::Message`] when there is no checksum, a checksum is not 8 characters of
    /// the descriptor checksum alphabet, or the checkpoint is empty, longer than
    /// [`MAX_CHECKPOINT_LEN`] or not printable ASCII.
    pub fn new(
        network: Network,
        height: u32,
        block_hash: BlockHash,
        descriptor_checksums: impl IntoIterator<Item = String>,
        checkpoint: &str,
    ) -> Result<Self, ReserveError> {
        let mut descriptors = BTreeSet::new();
        for c in descriptor_checksums {
            check_checksum(&c)?;
            descriptors.insert(c);
        }
        if descriptors.is_empty() {
            return Err(ReserveError::Message(
                "at least one descriptor checksum is needed".into(),
            ));
        }
        check_checkpoint(checkpoint)?;
        Ok(ProofMessage {
            network,
            height,
            block_hash,
            statement: None,
            descriptors,
            checkpoint: checkpoint.to_string(),
        })
    }

    /// The same message with the operator's `statement` (one line of printable ASCII, at most
    /// [`MAX_STATEMENT_LEN`] characters; an empty one means none).
    ///
    /// # Errors
    /// [`ReserveError::Message`] for a statement that is too long or not printable ASCII.
    pub fn with_statement(mut self, statement: &str) -> Result<Self, ReserveError> {
        if statement.is_empty() {
            self.statement = None;
            return Ok(self);
        }
        if statement.len() > MAX_STATEMENT_LEN
            || !statement.bytes().all(|b| (0x20..=0x7e).contains(&b))
        {
            return Err(ReserveError::Message(format!(
                "the statement must be 1 to {MAX_STATEMENT_LEN} printable ascii characters on one line"
            )));
        }
        self.statement = Some(statement.to_string());
        Ok(self)
    }

    /// The message for `vaults`: the checksums of both descriptors (receive and change) of each.
    ///
    /// # Errors
    /// As [`ProofMessage::new`]; [`ReserveError::Message`] when the vaults are of different
    /// networks than `network`.
    pub fn for_vaults(
        vaults: &[&Vault],
        network: Network,
        height: u32,
        block_hash: BlockHash,
        checkpoint: &str,
    ) -> Result<Self, ReserveError> {
        let mut sums = Vec::new();
        for v in vaults {
            if v.network() != network {
                return Err(ReserveError::Message(format!(
                    "vault {} is on {}, the message on {network}",
                    v.name(),
                    v.network()
                )));
            }
            sums.extend(vault_checksums(v)?);
        }
        ProofMessage::new(network, height, block_hash, sums, checkpoint)
    }

    /// The canonical text.
    pub fn encode(&self) -> String {
        let mut lines = vec![
            MESSAGE_HEADER.to_string(),
            format!("network: {}", self.network),
            format!("height: {}", self.height),
            format!("block: {}", self.block_hash),
        ];
        if let Some(st) = &self.statement {
            lines.push(format!("statement: {st}"));
        }
        lines.extend(self.descriptors.iter().map(|d| format!("descriptor: {d}")));
        lines.push(format!("checkpoint: {}", self.checkpoint));
        lines.join("\n")
    }

    /// Parses the canonical text; anything else (another order, spacing, case, duplicates) is
    /// refused, so that one message has one encoding.
    ///
    /// # Errors
    /// [`ReserveError::Message`] naming the first problem.
    pub fn parse(text: &str) -> Result<Self, ReserveError> {
        let bad = |what: &str| ReserveError::Message(what.to_string());
        let mut lines = text.split('\n');
        if lines.next() != Some(MESSAGE_HEADER) {
            return Err(bad("the first line is not the message header"));
        }
        let mut field = |name: &str| -> Result<String, ReserveError> {
            let line = lines
                .next()
                .ok_or_else(|| bad(&format!("missing {name}")))?;
            line.strip_prefix(name)
                .and_then(|r| r.strip_prefix(": "))
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("expected {name}")))
        };
        let network: Network = field("network")?
            .parse()
            .map_err(|_| bad("unknown network"))?;
        let height_text = field("height")?;
        let height: u32 = height_text.parse().map_err(|_| bad("invalid height"))?;
        let block_hash: BlockHash = field("block")?
            .parse()
            .map_err(|_| bad("invalid block hash"))?;
        let mut rest: Vec<&str> = lines.collect();
        let statement = match rest.first().and_then(|l| l.strip_prefix("statement: ")) {
            Some(st) => {
                let st = st.to_string();
                rest.remove(0);
                Some(st)
            }
            None => None,
        };
        let (last, sums) = rest.split_last().ok_or_else(|| bad("missing checkpoint"))?;
        let checkpoint = last
            .strip_prefix("checkpoint: ")
            .ok_or_else(|| bad("expected checkpoint"))?;
        let sums: Vec<String> = sums
            .iter()
            .map(|l| {
                l.strip_prefix("descriptor: ")
                    .map(str::to_string)
                    .ok_or_else(|| bad("expected descriptor"))
            })
            .collect::<Result<_, _>>()?;
        let mut msg = ProofMessage::new(network, height, block_hash, sums, checkpoint)?;
        if let Some(st) = statement {
            if st.is_empty() {
                return Err(bad("an empty statement line"));
            }
            msg = msg.with_statement(&st)?;
        }
        if msg.encode() != text {
            return Err(bad("not the canonical encoding"));
        }
        Ok(msg)
    }

    /// The network.
    pub fn network(&self) -> Network {
        self.network
    }

    /// Height of block H.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Hash of block H.
    pub fn block_hash(&self) -> BlockHash {
        self.block_hash
    }

    /// The descriptor checksums, ascending.
    pub fn descriptor_checksums(&self) -> impl Iterator<Item = &str> {
        self.descriptors.iter().map(String::as_str)
    }

    /// The operator's statement, when there is one.
    pub fn statement(&self) -> Option<&str> {
        self.statement.as_deref()
    }

    /// The ledger checkpoint text.
    pub fn checkpoint(&self) -> &str {
        &self.checkpoint
    }
}

fn check_checksum(c: &str) -> Result<(), ReserveError> {
    if c.len() == 8 && c.chars().all(|ch| CHECKSUM_CHARSET.contains(ch)) {
        Ok(())
    } else {
        Err(ReserveError::Message(format!(
            "descriptor checksum {c:?} is not 8 characters of the checksum alphabet"
        )))
    }
}

fn check_checkpoint(c: &str) -> Result<(), ReserveError> {
    if c.is_empty() || c.len() > MAX_CHECKPOINT_LEN {
        return Err(ReserveError::Message(format!(
            "the checkpoint must have 1 to {MAX_CHECKPOINT_LEN} characters"
        )));
    }
    if !c.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(ReserveError::Message(
            "the checkpoint must be printable ascii on one line".into(),
        ));
    }
    Ok(())
}

/// The checksums of a vault's receive and change descriptors (as the wallet prints them).
///
/// # Errors
/// [`ReserveError::Message`] if a descriptor string has no checksum (never for a vault).
pub fn vault_checksums(vault: &Vault) -> Result<[String; 2], ReserveError> {
    let d = &vault.config().descriptor;
    let sum = |s: String| -> Result<String, ReserveError> {
        let c = s
            .split_once('#')
            .map(|(_, c)| c.to_string())
            .ok_or_else(|| ReserveError::Message(format!("descriptor {s} has no checksum")))?;
        check_checksum(&c)?;
        Ok(c)
    };
    Ok([sum(d.external_string())?, sum(d.internal_string())?])
}

/// A built, unsigned proof.
#[derive(Debug, Clone, PartialEq)]
pub struct ProofPsbt {
    /// The PSBT: input 0 the commitment, then every UTXO.
    pub psbt: Psbt,
    /// The proven amount (the output's value).
    pub total: Amount,
    /// The real inputs, in order.
    pub inputs: Vec<OutPoint>,
}

/// Builds the proof PSBT for the UTXOs of one or more vaults.
///
/// Input 0 is the commitment input with `PSBT_IN_POR_COMMITMENT` = the message and
/// [`commitment_prevout`] as its `witness_utxo`; each UTXO follows with its `witness_utxo`, its
/// full previous transaction for segwit v0, its scripts and key origins (from the vault's
/// descriptor at the UTXO's keychain and index) and `SIGHASH_ALL`. One output pays the sum of
/// the UTXOs to [`proof_output_script`].
///
/// # Errors
/// [`ReserveError::NoUtxos`], [`ReserveError::VaultNotInMessage`], [`ReserveError::Utxo`]
/// for a UTXO the vault does not know or whose script or value does not match,
/// [`ReserveError::DuplicateInput`], [`ReserveError::Overflow`].
pub fn build_proof(
    vaults: &[(&Vault, &[VaultUtxo])],
    message: &ProofMessage,
) -> Result<ProofPsbt, ReserveError> {
    let text = message.encode();
    let msg = text.as_bytes();
    let mut inputs: Vec<OutPoint> = Vec::new();
    let mut seen = BTreeSet::new();
    for (vault, utxos) in vaults {
        for checksum in vault_checksums(vault)? {
            if !message.descriptors.contains(&checksum) {
                return Err(ReserveError::VaultNotInMessage {
                    vault: vault.name().to_string(),
                    checksum,
                });
            }
        }
        for u in utxos.iter() {
            if !seen.insert(u.outpoint) {
                return Err(ReserveError::DuplicateInput(u.outpoint));
            }
            inputs.push(u.outpoint);
        }
    }
    if inputs.is_empty() {
        return Err(ReserveError::NoUtxos);
    }
    let txin = |previous_output| TxIn {
        previous_output,
        script_sig: ScriptBuf::new(),
        sequence: Sequence::MAX,
        witness: Witness::new(),
    };
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![txin(commitment_outpoint(msg))],
        output: vec![],
    };
    tx.input.extend(inputs.iter().copied().map(txin));
    tx.output.push(TxOut {
        value: Amount::ZERO,
        script_pubkey: proof_output_script(msg),
    });
    let mut psbt = Psbt::from_unsigned_tx(tx).map_err(|e| ReserveError::PsbtInput {
        input: 0,
        reason: e.to_string(),
    })?;
    let commitment = psbt
        .inputs
        .first_mut()
        .ok_or(ReserveError::MissingCommitmentField)?;
    commitment.unknown.insert(
        raw::Key {
            type_value: PSBT_IN_POR_COMMITMENT,
            key: vec![],
        },
        msg.to_vec(),
    );
    commitment.witness_utxo = Some(commitment_prevout());

    let mut total = Amount::ZERO;
    let mut index = 1usize;
    for (vault, utxos) in vaults {
        for u in utxos.iter() {
            let value = fill_input(&mut psbt, index, vault, u)?;
            total = total.checked_add(value).ok_or(ReserveError::Overflow)?;
            index = index.saturating_add(1);
        }
    }
    if let Some(out) = psbt.unsigned_tx.output.first_mut() {
        out.value = total;
    }
    Ok(ProofPsbt {
        psbt,
        total,
        inputs,
    })
}

fn fill_input(
    psbt: &mut Psbt,
    index: usize,
    vault: &Vault,
    u: &VaultUtxo,
) -> Result<Amount, ReserveError> {
    let utxo_err = |reason: String| ReserveError::Utxo {
        outpoint: u.outpoint,
        reason,
    };
    let prev = vault.transaction(u.outpoint.txid).ok_or_else(|| {
        utxo_err(format!(
            "vault {} does not know the transaction",
            vault.name()
        ))
    })?;
    let vout = usize::try_from(u.outpoint.vout).map_err(|_| utxo_err("bad vout".into()))?;
    let txout = prev
        .output
        .get(vout)
        .cloned()
        .ok_or_else(|| utxo_err("the transaction has no such output".into()))?;
    if txout.value != u.value {
        return Err(utxo_err(format!(
            "the output holds {}, the utxo list says {}",
            txout.value, u.value
        )));
    }
    let desc = vault
        .public_descriptor(u.keychain)
        .at_derivation_index(u.index)
        .map_err(|e| utxo_err(e.to_string()))?;
    let segwit_v0 = desc.desc_type().segwit_version() == Some(WitnessVersion::V0);
    let input: &mut Input = psbt
        .inputs
        .get_mut(index)
        .ok_or_else(|| utxo_err("input index out of range".into()))?;
    input.witness_utxo = Some(txout.clone());
    if segwit_v0 {
        input.non_witness_utxo = Some((*prev).clone());
    }
    input.sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::All));
    psbt.update_input_with_descriptor(index, &desc)
        .map_err(|e| {
            utxo_err(format!(
                "not a {} output of vault {} at index {}: {e}",
                u.keychain.as_str(),
                vault.name(),
                u.index
            ))
        })?;
    Ok(txout.value)
}

/// Finalizes a signed proof PSBT (every real input through miniscript's finalizer; the
/// commitment input stays empty), extracts the transaction and verifies it with
/// [`verify_proof_tx`].
///
/// # Errors
/// Any [`ReserveError`] of [`check_proof_shape`], [`ReserveError::Finalize`] naming the input,
/// or any error of [`verify_proof_tx`].
pub fn finalize_proof(mut psbt: Psbt, message: &[u8]) -> Result<Transaction, ReserveError> {
    check_proof_shape(&psbt, message)?;
    let secp = Secp256k1::verification_only();
    for i in 1..psbt.inputs.len() {
        finalizer::finalize_input(&mut psbt, i, &secp)
            .map_err(|reason| ReserveError::Finalize { input: i, reason })?;
    }
    let spent: Vec<TxOut> = psbt
        .inputs
        .iter()
        .skip(1)
        .filter_map(|i| i.witness_utxo.clone())
        .collect();
    let tx = psbt.extract_tx_unchecked_fee_rate();
    verify_proof_tx(&tx, &spent, message)?;
    Ok(tx)
}

/// Verifies a finalized proof transaction offline: the shape (as [`check_proof_shape`], from the
/// transaction alone), zero fee, and every real input's script with signatures checked against
/// their sighashes over all spent outputs, taproot included; every signature must be
/// `SIGHASH_ALL` and each input must carry at least one. `spent_outputs` are the outputs the
/// real inputs spend, in input order (input 0 spends [`commitment_prevout`]). Returns the proven
/// amount.
///
/// What it does not check: that the spent outputs existed at block H and were unspent there,
/// which only a node can say.
///
/// # Errors
/// The [`ReserveError`] naming the first violation; [`ReserveError::Script`] for a forged,
/// truncated or missing witness.
pub fn verify_proof_tx(
    tx: &Transaction,
    spent_outputs: &[TxOut],
    message: &[u8],
) -> Result<Amount, ReserveError> {
    verify_proof_tx_with_threads(tx, spent_outputs, message, scripts::default_threads())
}

/// [`verify_proof_tx`] on at most `threads` threads (it uses the machine's available
/// parallelism). The result does not depend on `threads`: with several faults the one reported
/// is that of the lowest input, as with one thread.
///
/// # Errors
/// As [`verify_proof_tx`].
pub fn verify_proof_tx_with_threads(
    tx: &Transaction,
    spent_outputs: &[TxOut],
    message: &[u8],
    threads: std::num::NonZeroUsize,
) -> Result<Amount, ReserveError> {
    let output = check_tx_shape(tx, message)?;
    let real = tx.input.len().saturating_sub(1);
    if spent_outputs.len() != real {
        return Err(ReserveError::SpentOutputs {
            expected: real,
            found: spent_outputs.len(),
        });
    }
    let total = check_zero_fee(spent_outputs.iter().map(|o| o.value), output)?;
    let mut prevouts = Vec::with_capacity(tx.input.len());
    prevouts.push(commitment_prevout());
    prevouts.extend_from_slice(spent_outputs);
    match scripts::verify_inputs(tx, &prevouts, 1..tx.input.len(), threads) {
        Ok(()) => Ok(total),
        Err((input, scripts::InputFault::Script(reason))) => {
            Err(ReserveError::Script { input, reason })
        }
        Err((input, scripts::InputFault::SighashNotAll(found))) => {
            Err(ReserveError::SighashNotAll { input, found })
        }
    }
}
