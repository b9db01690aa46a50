//! The PSBT builder: payments, consolidations and fee bumps from a vault.
//!
//! Why checks of our own on top of bdk's builder: a reserve must never pay dust, an absurd fee,
//! another network's address, a coin that another request already reserved, or use the
//! recovery path before its timelock has matured (bdk does not check maturity at finalize).
//! Every PSBT carries global xpubs and full key origins so any signer can find its keys, and
//! segwit v0 inputs keep their full previous transaction (`non_witness_utxo`) for hardware
//! signers that demand it.

use std::collections::{BTreeMap, BTreeSet};

use bdk_wallet::bitcoin::address::NetworkUnchecked;
use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::script::PushBytesBuf;
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::{
    Address, Amount, FeeRate, Network, OutPoint, Sequence, Transaction, Txid,
};
use bdk_wallet::descriptor::Condition;
use bdk_wallet::error::CreateTxError;
use bdk_wallet::miniscript::psbt::PsbtExt;
use bdk_wallet::miniscript::Descriptor;
use rand_core::RngCore;

use super::{Keychain, Vault, VaultUtxo};

/// Largest OP_RETURN payload Bitcoin Core relays by default in a memo we create.
pub const MAX_MEMO_BYTES: usize = 80;

/// Lowest fee rate we build at: Bitcoin Core's default minimum relay fee.
pub const MIN_FEE_RATE_SAT_VB: u32 = 1;

/// Why a PSBT was not built or finalized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpendError {
    /// No recipients and not a consolidation.
    #[error("no recipients: give at least one ADDRESS:SATS or ask for a consolidation")]
    NoRecipients,
    /// A recipient address of another network.
    #[error("address {address} is not valid on {network}")]
    WrongNetwork {
        /// The address.
        address: String,
        /// The vault's network.
        network: Network,
    },
    /// An amount below the dust limit of its output script.
    #[error("payment of {amount} to {address} is dust (minimum {minimum})")]
    Dust {
        /// Address.
        address: String,
        /// Amount asked.
        amount: Amount,
        /// Smallest non-dust amount for that script.
        minimum: Amount,
    },
    /// Payment amounts overflow.
    #[error("sum of payments overflows")]
    Overflow,
    /// Fee rate under the minimum relay fee rate.
    #[error("fee rate {0} sat/vB is below the minimum relay fee rate of 1 sat/vB")]
    FeeRateTooLow(u64),
    /// Fee rate above the configured cap.
    #[error("fee rate {asked} sat/vB exceeds the cap of {cap} sat/vB")]
    FeeRateCap {
        /// Asked, sat/vB.
        asked: u64,
        /// Cap, sat/vB.
        cap: u64,
    },
    /// Absolute fee above the configured cap.
    #[error("fee {fee} exceeds the cap of {cap}")]
    FeeCap {
        /// The fee the transaction would pay.
        fee: Amount,
        /// The cap.
        cap: Amount,
    },
    /// A memo longer than 80 bytes.
    #[error("memo of {0} bytes is longer than 80 bytes")]
    MemoTooLong(usize),
    /// An outpoint that is not an unspent output of the vault.
    #[error("outpoint {0} is not an unspent output of this vault")]
    UnknownUtxo(OutPoint),
    /// An outpoint that another request has reserved.
    #[error("outpoint {0} is reserved by another request")]
    Reserved(OutPoint),
    /// Not enough funds.
    #[error("insufficient funds: need {needed}, {available} available (unreserved, mature)")]
    InsufficientFunds {
        /// Needed, including fee.
        needed: Amount,
        /// Available to the selection.
        available: Amount,
    },
    /// The vault has no recovery path.
    #[error("this vault has no recovery path")]
    NoRecoveryPath,
    /// The recovery path's timelock has not matured for an input.
    #[error(
        "recovery path not mature for {outpoint}: {confirmations} confirmations, {needed} needed"
    )]
    RecoveryNotMature {
        /// The input.
        outpoint: OutPoint,
        /// Its confirmations.
        confirmations: u32,
        /// The timelock.
        needed: u32,
    },
    /// Fee bump of a transaction that cannot be bumped.
    #[error("cannot bump the fee of {txid}: {reason}")]
    Bump {
        /// The transaction.
        txid: Txid,
        /// Why.
        reason: String,
    },
    /// bdk's builder refused.
    #[error("transaction could not be built: {0}")]
    Build(String),
    /// A built PSBT lacks data a signer needs.
    #[error("psbt input {input} is missing {what}")]
    Incomplete {
        /// Input index.
        input: usize,
        /// What is missing.
        what: &'static str,
    },
    /// A built PSBT's `non_witness_utxo` is not the spent transaction or disagrees with its
    /// `witness_utxo`.
    #[error(
        "psbt input {input}: non_witness_utxo does not match the spent outpoint or witness_utxo"
    )]
    UtxoMismatch {
        /// Input index.
        input: usize,
    },
    /// Finalization failed (missing or invalid signatures).
    #[error("psbt cannot be finalized: {0}")]
    Finalize(String),
}

/// Caps from configuration, applied to every PSBT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeCaps {
    /// Highest absolute fee.
    pub max_fee: Amount,
    /// Highest fee rate.
    pub max_fee_rate: FeeRate,
}

impl Default for FeeCaps {
    /// 0.01 BTC and 500 sat/vB.
    fn default() -> Self {
        FeeCaps {
            max_fee: Amount::from_sat(1_000_000),
            max_fee_rate: FeeRate::from_sat_per_vb_u32(500),
        }
    }
}

/// Which spending path of the vault's descriptor the PSBT is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpendPath {
    /// The normal path (policy key and officers, or the multisig).
    #[default]
    Primary,
    /// The recovery path: only after its relative timelock has matured for every input.
    Recovery,
}

/// One payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// Recipient (network checked when the PSBT is built).
    pub address: Address<NetworkUnchecked>,
    /// Amount.
    pub amount: Amount,
}

impl Payment {
    /// Parses `ADDRESS:SATS`.
    ///
    /// # Errors
    /// [`SpendError::Build`] with the reason when the text is malformed.
    pub fn parse(text: &str) -> Result<Self, SpendError> {
        let (addr, sats) = text
            .rsplit_once(':')
            .ok_or_else(|| SpendError::Build(format!("payment {text:?} is not ADDRESS:SATS")))?;
        let address = addr
            .parse::<Address<NetworkUnchecked>>()
            .map_err(|e| SpendError::Build(format!("address {addr:?}: {e}")))?;
        let sats: u64 = sats
            .parse()
            .map_err(|_| SpendError::Build(format!("amount {sats:?} is not integer satoshis")))?;
        Ok(Payment {
            address,
            amount: Amount::from_sat(sats),
        })
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpendRequest {
    /// Payments (batch).
    pub payments: Vec<Payment>,
    /// Fee rate.
    pub fee_rate: Option<FeeRate>,
    /// Outpoints that must be spent.
    pub include: Vec<OutPoint>,
    /// Outpoints that must not be spent.
    pub exclude: Vec<OutPoint>,
    /// Spend only the included outpoints.
    pub only_included: bool,
    /// Consolidate: send everything selected (the included outpoints, or every available
    /// output) to a new change address of the vault.
    pub consolidate: bool,
    /// OP_RETURN memo.
    pub memo: Option<Vec<u8>>,
    /// Spending path.
    pub path: SpendPath,
}

/// A built, unsigned PSBT and what it spends.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltPsbt {
    /// The PSBT.
    pub psbt: Psbt,
    /// Unsigned txid.
    pub txid: Txid,
    /// Fee.
    pub fee: Amount,
    /// Fee rate over the largest final size (unsigned transaction plus the largest witness of
    /// each input): a lower bound of the rate the signed transaction pays.
    pub fee_rate: FeeRate,
    /// Inputs spent, to reserve.
    pub inputs: Vec<OutPoint>,
}

fn check_fee_rate(rate: FeeRate, caps: &FeeCaps) -> Result<(), SpendError> {
    let sat_vb = rate.to_sat_per_vb_ceil();
    if rate < FeeRate::from_sat_per_vb_u32(MIN_FEE_RATE_SAT_VB) {
        return Err(SpendError::FeeRateTooLow(sat_vb));
    }
    if rate > caps.max_fee_rate {
        return Err(SpendError::FeeRateCap {
            asked: sat_vb,
            cap: caps.max_fee_rate.to_sat_per_vb_floor(),
        });
    }
    Ok(())
}

/// Builds a PSBT for a request.
///
/// `reserved` are outpoints held by other requests: never selected, and an error if included.
/// `default_fee_rate` is used when the request has none (the node's estimate).
///
/// # Errors
/// Any [`SpendError`]; nothing is reserved or changed except the revealed change index.
pub fn build(
    vault: &mut Vault,
    req: &SpendRequest,
    reserved: &BTreeSet<OutPoint>,
    default_fee_rate: FeeRate,
    caps: &FeeCaps,
    rng: &mut impl RngCore,
) -> Result<BuiltPsbt, SpendError> {
    let network = vault.network();
    let fee_rate = req.fee_rate.unwrap_or(default_fee_rate);
    check_fee_rate(fee_rate, caps)?;
    if req.payments.is_empty() && !req.consolidate {
        return Err(SpendError::NoRecipients);
    }
    let mut recipients = Vec::with_capacity(req.payments.len());
    let mut total = Amount::ZERO; // checked so that absurd batches fail clearly
    for p in &req.payments {
        let address =
            p.address
                .clone()
                .require_network(network)
                .map_err(|_| SpendError::WrongNetwork {
                    address: p.address.clone().assume_checked().to_string(),
                    network,
                })?;
        let spk = address.script_pubkey();
        let minimum = spk.minimal_non_dust();
        if p.amount < minimum {
            return Err(SpendError::Dust {
                address: address.to_string(),
                amount: p.amount,
                minimum,
            });
        }
        total = total.checked_add(p.amount).ok_or(SpendError::Overflow)?;
        recipients.push((spk, p.amount));
    }
    if let Some(memo) = &req.memo {
        if memo.len() > MAX_MEMO_BYTES {
            return Err(SpendError::MemoTooLong(memo.len()));
        }
    }
    // One canonicalization of the wallet for every check below (bdk's `get_utxo` runs one per
    // call: 500 included coins took seconds).
    let utxos = vault.utxos();
    let by_outpoint: BTreeMap<OutPoint, &VaultUtxo> =
        utxos.iter().map(|u| (u.outpoint, u)).collect();
    for op in &req.include {
        if reserved.contains(op) {
            return Err(SpendError::Reserved(*op));
        }
        if !by_outpoint.contains_key(op) {
            return Err(SpendError::UnknownUtxo(*op));
        }
    }

    let tip = vault.tip_height();
    let older = vault.config().descriptor.recovery_older();
    let mut unspendable: BTreeSet<OutPoint> = reserved.clone();
    unspendable.extend(req.exclude.iter().copied());
    let condition = match (req.path, older) {
        (SpendPath::Recovery, None) => return Err(SpendError::NoRecoveryPath),
        (SpendPath::Recovery, Some(n)) => {
            for op in &req.include {
                if let Some(u) = by_outpoint.get(op) {
                    check_mature(u, n)?;
                }
            }
            unspendable.extend(
                utxos
                    .iter()
                    .filter(|u| u.confirmations < n)
                    .map(|u| u.outpoint),
            );
            Some(Condition {
                csv: Some(Sequence::from_height(u16::try_from(n).unwrap_or(u16::MAX))),
                timelock: None,
            })
        }
        (SpendPath::Primary, Some(_)) => Some(Condition::default()),
        (SpendPath::Primary, None) => None,
    };
    let available = utxos
        .iter()
        .filter(|u| !unspendable.contains(&u.outpoint))
        .try_fold(Amount::ZERO, |acc, u| acc.checked_add(u.value))
        .ok_or(SpendError::Overflow)?;

    let drain_spk = if req.consolidate {
        Some(vault.next_change_address().address.script_pubkey())
    } else {
        None
    };
    let wallet = vault.wallet_mut();
    let mut builder = wallet.build_tx();
    builder
        .fee_rate(fee_rate)
        .current_height(tip)
        .add_global_xpubs()
        .set_recipients(recipients)
        .unspendable(unspendable.iter().copied().collect());
    if let Some(cond) = condition {
        builder.set_condition(cond);
    }
    if !req.include.is_empty() {
        builder
            .add_utxos(&req.include)
            .map_err(|e| SpendError::Build(e.to_string()))?;
    }
    if req.only_included {
        builder.manually_selected_only();
    }
    if let Some(memo) = &req.memo {
        let data = PushBytesBuf::try_from(memo.clone())
            .map_err(|_| SpendError::MemoTooLong(memo.len()))?;
        builder.add_data(&data);
    }
    if let Some(spk) = drain_spk {
        builder.drain_to(spk);
        if req.include.is_empty() || !req.only_included {
            builder.drain_wallet();
        }
    }
    let psbt = builder.finish_with_aux_rand(rng).map_err(|e| match e {
        CreateTxError::CoinSelection(ins) => SpendError::InsufficientFunds {
            needed: ins.needed,
            available,
        },
        CreateTxError::NoRecipients => SpendError::NoRecipients,
        CreateTxError::OutputBelowDustLimit(i) => {
            SpendError::Build(format!("output {i} would be dust"))
        }
        other => SpendError::Build(other.to_string()),
    })?;
    finish(vault, psbt, caps, req.path, older)
}

fn check_mature(u: &VaultUtxo, needed: u32) -> Result<(), SpendError> {
    if u.confirmations < needed {
        return Err(SpendError::RecoveryNotMature {
            outpoint: u.outpoint,
            confirmations: u.confirmations,
            needed,
        });
    }
    Ok(())
}

/// The full previous transaction of input `i`, when present, must be the one its outpoint names
/// and agree with `witness_utxo`: segwit v0 sighashes commit only to this input's amount, so a
/// false `witness_utxo` would go unnoticed by a signer that trusts it.
fn check_previous_transaction(psbt: &Psbt, i: usize) -> Result<(), SpendError> {
    let (Some(input), Some(txin)) = (psbt.inputs.get(i), psbt.unsigned_tx.input.get(i)) else {
        return Ok(());
    };
    let (Some(prev), Some(utxo)) = (&input.non_witness_utxo, &input.witness_utxo) else {
        return Ok(());
    };
    let op = txin.previous_output;
    let agrees = prev.compute_txid() == op.txid
        && usize::try_from(op.vout)
            .ok()
            .and_then(|v| prev.output.get(v))
            == Some(utxo);
    if agrees {
        Ok(())
    } else {
        Err(SpendError::UtxoMismatch { input: i })
    }
}

fn finish(
    vault: &Vault,
    psbt: Psbt,
    caps: &FeeCaps,
    path: SpendPath,
    older: Option<u32>,
) -> Result<BuiltPsbt, SpendError> {
    let fee = psbt
        .fee()
        .map_err(|e| SpendError::Build(format!("fee: {e}")))?;
    if fee > caps.max_fee {
        return Err(SpendError::FeeCap {
            fee,
            cap: caps.max_fee,
        });
    }
    let inputs: Vec<OutPoint> = psbt
        .unsigned_tx
        .input
        .iter()
        .map(|i| i.previous_output)
        .collect();
    let segwit_v0 = matches!(
        vault.public_descriptor(Keychain::External),
        Descriptor::Wsh(_)
    );
    for (i, input) in psbt.inputs.iter().enumerate() {
        if input.witness_utxo.is_none() {
            return Err(SpendError::Incomplete {
                input: i,
                what: "witness_utxo",
            });
        }
        if segwit_v0 && input.non_witness_utxo.is_none() {
            return Err(SpendError::Incomplete {
                input: i,
                what: "non_witness_utxo",
            });
        }
        check_previous_transaction(&psbt, i)?;
        if segwit_v0 && input.bip32_derivation.is_empty() {
            return Err(SpendError::Incomplete {
                input: i,
                what: "bip32_derivation (key origins)",
            });
        }
    }
    if let (SpendPath::Recovery, Some(n)) = (path, older) {
        let utxos: BTreeMap<OutPoint, VaultUtxo> =
            vault.utxos().into_iter().map(|u| (u.outpoint, u)).collect();
        for op in &inputs {
            let u = utxos.get(op).ok_or(SpendError::UnknownUtxo(*op))?;
            check_mature(u, n)?;
        }
    }
    // The final size: the unsigned transaction plus the largest witness of each input.
    let satisfaction = vault
        .public_descriptor(Keychain::External)
        .max_weight_to_satisfy()
        .map_err(|e| SpendError::Build(e.to_string()))?;
    let weight = psbt
        .unsigned_tx
        .weight()
        .to_wu()
        .saturating_add(satisfaction.to_wu().saturating_mul(inputs.len() as u64));
    let fee_rate = FeeRate::from_sat_per_kwu(fee.to_sat().saturating_mul(1000) / weight.max(1));
    let txid = psbt.unsigned_tx.compute_txid();
    Ok(BuiltPsbt {
        psbt,
        txid,
        fee,
        fee_rate,
        inputs,
    })
}

/// Builds a replacement (RBF) of a pending spend of the vault at a higher fee rate.
///
/// # Errors
/// [`SpendError::Bump`] when the transaction is unknown, confirmed or not replaceable, or the
/// new rate is not higher than the old one by at least 1 sat/vB; caps as for [`build`].
pub fn bump_fee(
    vault: &mut Vault,
    txid: Txid,
    fee_rate: FeeRate,
    caps: &FeeCaps,
    rng: &mut impl RngCore,
) -> Result<BuiltPsbt, SpendError> {
    check_fee_rate(fee_rate, caps)?;
    let older = vault.config().descriptor.recovery_older();
    let wallet = vault.wallet_mut();
    let mut builder = wallet.build_fee_bump(txid).map_err(|e| SpendError::Bump {
        txid,
        reason: e.to_string(),
    })?;
    builder.fee_rate(fee_rate).add_global_xpubs();
    if older.is_some() {
        builder.set_condition(Condition::default());
    }
    let psbt = builder
        .finish_with_aux_rand(rng)
        .map_err(|e| SpendError::Bump {
            txid,
            reason: e.to_string(),
        })?;
    finish(vault, psbt, caps, SpendPath::Primary, older)
}

/// Finalizes a fully signed PSBT with miniscript and extracts the transaction. Miniscript's
/// interpreter checks every signature against its sighash (taproot included) on extraction.
///
/// # Errors
/// [`SpendError::Finalize`] naming the input and the reason.
pub fn finalize(mut psbt: Psbt) -> Result<Transaction, SpendError> {
    let secp = Secp256k1::verification_only();
    psbt.finalize_mut(&secp).map_err(|errs| {
        SpendError::Finalize(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    psbt.extract(&secp)
        .map_err(|e| SpendError::Finalize(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bdk_wallet::bitcoin::absolute::LockTime;
    use bdk_wallet::bitcoin::transaction::Version;
    use bdk_wallet::bitcoin::{Amount, ScriptBuf, Transaction, TxIn, TxOut};

    use super::*;

    #[test]
    fn previous_transaction_must_agree_with_witness_utxo() {
        let utxo = TxOut {
            value: Amount::from_sat(50_000),
            script_pubkey: ScriptBuf::new_op_return([1u8; 2]),
        };
        let prev = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn::default()],
            output: vec![utxo.clone()],
        };
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::new(prev.compute_txid(), 0),
                ..TxIn::default()
            }],
            output: vec![],
        };
        let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
        psbt.inputs[0].witness_utxo = Some(utxo);
        psbt.inputs[0].non_witness_utxo = Some(prev.clone());
        check_previous_transaction(&psbt, 0).unwrap();
        let mut lie = psbt.clone();
        lie.inputs[0].witness_utxo.as_mut().unwrap().value = Amount::from_sat(1);
        assert!(matches!(
            check_previous_transaction(&lie, 0),
            Err(SpendError::UtxoMismatch { input: 0 })
        ));
        let mut other = psbt;
        let mut wrong = prev;
        wrong.lock_time = LockTime::from_consensus(7);
        other.inputs[0].non_witness_utxo = Some(wrong);
        assert!(check_previous_transaction(&other, 0).is_err());
    }
}
