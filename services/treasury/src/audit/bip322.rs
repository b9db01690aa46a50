//! Check 7 of [`super::bundle`]: the BIP-322 form of the proof (ADR 0014), verified against
//! the same UTXOs as the BIP-127 form.
//!
//! Why apart: it is a second, independent encoding of the proof with its own problems
//! ([`Bip322Problem`]); the verdict fails when either form fails.

use bdk_wallet::bitcoin::Amount;
use custody::reserves::bip322::{self, decode_full, to_spend, Bip322Error};
use custody::reserves::file::ProofFile;
use serde_json::Value;

use crate::audit::reserves::ReserveReport;
use crate::files::bundle::{
    Bip322ProofJson, Bundle, DeclaredDescriptor, BIP322_FORMAT, BIP322_FULL_PATH, BIP322_JSON_PATH,
};

/// Why the BIP-322 form of a bundle's proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Bip322Problem {
    /// `block.json` lists the BIP-322 form but its files are missing.
    #[error("block.json lists the bip-322 form but {0} is missing")]
    Missing(&'static str),
    /// A file does not parse.
    #[error("{file}: {reason}")]
    Malformed {
        /// The file.
        file: &'static str,
        /// Why.
        reason: String,
    },
    /// The JSON rendering says something else than the full encoding or the proof.
    #[error("bip322/proof.json disagrees: {0}")]
    Disagree(String),
    /// Signed over another message than the BIP-127 proof's.
    #[error("the bip-322 form signs another message than the bip-127 proof")]
    OtherMessage,
    /// The challenge is not the first declared descriptor's first receive address.
    #[error("the challenge {found} is not the first declared descriptor's first receive address {expected}")]
    OtherChallenge {
        /// The challenge script (hex).
        found: String,
        /// The expected script (hex).
        expected: String,
    },
    /// Over other UTXOs than the BIP-127 proof.
    #[error("the bip-322 form proves other utxos than the bip-127 proof: {0}")]
    OtherUtxos(String),
    /// A UTXO whose output the node does not know (so its script cannot be checked).
    #[error("utxo {0}: the node does not know its output")]
    UnknownOutput(bdk_wallet::bitcoin::OutPoint),
    /// A UTXO that does not count at H (the BIP-127 check's reason).
    #[error("utxo {outpoint}: {reason}")]
    Utxo {
        /// The outpoint.
        outpoint: bdk_wallet::bitcoin::OutPoint,
        /// Why (as for the BIP-127 form).
        reason: String,
    },
    /// `to_sign` does not verify (structure, signatures, scripts).
    #[error("to_sign does not verify: {0}")]
    Verify(Bip322Error),
}

/// The audit of the BIP-322 form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bip322Audit {
    /// The `to_sign` txid, when it decoded.
    pub txid: Option<bdk_wallet::bitcoin::Txid>,
    /// The challenge address, as `bip322/proof.json` names it.
    pub challenge_address: Option<String>,
    /// The amount it proves (zero unless everything holds).
    pub proven: Amount,
    /// What is wrong with it.
    pub problems: Vec<Bip322Problem>,
}

impl Bip322Audit {
    /// True when the BIP-322 form holds.
    pub fn verdict(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Audits the BIP-322 form of the bundle against its BIP-127 proof and the BIP-127 check's
/// view of every UTXO (see the module docs, step 7). `None` when the bundle carries no
/// BIP-322 form and `block.json` does not list one.
pub(super) fn audit_bip322(
    bundle: &Bundle,
    file: Option<&ProofFile>,
    declared: Option<&[DeclaredDescriptor]>,
    reserves: Option<&ReserveReport>,
) -> Option<Bip322Audit> {
    use bdk_wallet::bitcoin::{OutPoint, ScriptBuf, TxOut};
    use std::collections::BTreeMap;
    use std::str::FromStr;

    let listed = bundle
        .text("block.json")
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .is_some_and(|v| {
            v["forms"]
                .as_array()
                .is_some_and(|a| a.iter().any(|f| f == "bip322"))
        });
    let full = bundle.text(BIP322_FULL_PATH);
    let doc = bundle.text(BIP322_JSON_PATH);
    if !listed && full.is_none() && doc.is_none() {
        return None;
    }
    let mut a = Bip322Audit {
        txid: None,
        challenge_address: None,
        proven: Amount::ZERO,
        problems: Vec::new(),
    };
    let (Some(full), Some(doc)) = (full, doc) else {
        a.problems.push(Bip322Problem::Missing(if full.is_none() {
            BIP322_FULL_PATH
        } else {
            BIP322_JSON_PATH
        }));
        return Some(a);
    };
    let tx = match decode_full(full) {
        Ok(t) => t,
        Err(e) => {
            a.problems.push(Bip322Problem::Malformed {
                file: BIP322_FULL_PATH,
                reason: e.to_string(),
            });
            return Some(a);
        }
    };
    a.txid = Some(tx.compute_txid());
    let doc: Bip322ProofJson = match serde_json::from_str(doc) {
        Ok(d) => d,
        Err(e) => {
            a.problems.push(Bip322Problem::Malformed {
                file: BIP322_JSON_PATH,
                reason: e.to_string(),
            });
            return Some(a);
        }
    };
    a.challenge_address = Some(doc.challenge_address.clone());
    if doc.format != BIP322_FORMAT {
        a.problems.push(Bip322Problem::Disagree(format!(
            "format {:?} is not {BIP322_FORMAT:?}",
            doc.format
        )));
    }
    let Ok(challenge) = ScriptBuf::from_hex(&doc.challenge_script) else {
        a.problems.push(Bip322Problem::Malformed {
            file: BIP322_JSON_PATH,
            reason: "challenge_script is not hex".into(),
        });
        return Some(a);
    };
    let message = doc.message.as_bytes();
    if doc.to_spend_txid != to_spend(message, &challenge).compute_txid().to_string() {
        a.problems.push(Bip322Problem::Disagree(
            "to_spend_txid is not to_spend of the message and challenge".into(),
        ));
    }
    if doc.to_sign_txid != tx.compute_txid().to_string() {
        a.problems.push(Bip322Problem::Disagree(
            "to_sign_txid is not the txid of the full encoding".into(),
        ));
    }
    let json_utxos: Vec<String> = doc.utxos.iter().map(|u| u.outpoint.clone()).collect();
    let tx_utxos: Vec<String> = tx
        .input
        .iter()
        .skip(1)
        .map(|i| i.previous_output.to_string())
        .collect();
    if json_utxos != tx_utxos {
        a.problems.push(Bip322Problem::Disagree(
            "its utxos are not the inputs of to_sign".into(),
        ));
    }
    // The same message and the same UTXOs as the BIP-127 proof.
    if let Some(f) = file {
        if f.message() != doc.message {
            a.problems.push(Bip322Problem::OtherMessage);
        }
        let mut theirs: Vec<OutPoint> = f
            .final_proofs()
            .iter()
            .flat_map(|p| p.output_metadata().iter().map(|m| m.outpoint))
            .collect();
        theirs.sort_unstable();
        let mine = bip322::proven_outpoints(&tx);
        if mine != theirs {
            let extra: Vec<String> = mine
                .iter()
                .filter(|o| theirs.binary_search(o).is_err())
                .map(ToString::to_string)
                .collect();
            let missing: Vec<String> = theirs
                .iter()
                .filter(|o| mine.binary_search(o).is_err())
                .map(ToString::to_string)
                .collect();
            a.problems.push(Bip322Problem::OtherUtxos(format!(
                "not in the bip-127 proof: [{}]; missing: [{}]",
                extra.join(", "),
                missing.join(", ")
            )));
        }
    }
    // The challenge: the first declared descriptor's first receive address.
    if let Some(first) = declared.and_then(<[DeclaredDescriptor]>::first) {
        use bdk_wallet::miniscript::descriptor::DescriptorPublicKey;
        use bdk_wallet::miniscript::Descriptor;
        let expected = Descriptor::<DescriptorPublicKey>::from_str(&first.descriptor)
            .ok()
            .and_then(|d| d.at_derivation_index(0).ok())
            .map(|d| d.script_pubkey());
        if expected.as_ref() != Some(&challenge) {
            a.problems.push(Bip322Problem::OtherChallenge {
                found: challenge.to_hex_string(),
                expected: expected.map_or("?".into(), |e| e.to_hex_string()),
            });
        }
    }
    // Every input with all spent outputs, from the BIP-127 check's view of the UTXOs.
    let Some(r) = reserves else {
        return Some(a);
    };
    let known: BTreeMap<OutPoint, &crate::audit::reserves::UtxoReport> =
        r.utxos.iter().map(|u| (u.outpoint, u)).collect();
    let mut spent: Vec<TxOut> = Vec::with_capacity(tx.input.len());
    let mut complete = true;
    for input in tx.input.iter().skip(1) {
        let op = input.previous_output;
        match known.get(&op) {
            Some(u) => {
                for p in &u.problems {
                    a.problems.push(Bip322Problem::Utxo {
                        outpoint: op,
                        reason: p.to_string(),
                    });
                }
                match &u.spent_output {
                    Some(o) => spent.push(o.clone()),
                    None => {
                        complete = false;
                        a.problems.push(Bip322Problem::UnknownOutput(op));
                    }
                }
            }
            None => {
                // Already named as another UTXO than the BIP-127 proof's.
                complete = false;
            }
        }
    }
    if complete {
        match bip322::verify(&tx, message, &challenge, &spent) {
            Ok(total) if a.problems.is_empty() => a.proven = total,
            Ok(_) => {}
            Err(e) => a.problems.push(Bip322Problem::Verify(e)),
        }
    }
    Some(a)
}
