//! `treasury audit reserves BUNDLE`: the auditor's check of a proof-of-reserves bundle against
//! their own Bitcoin Core node.
//!
//! Why one command that checks everything: an auditor should not have to know which files
//! depend on which. The check collects every problem (each with its own reason) instead of
//! stopping at the first, and the verdict holds only when there is none:
//!
//! 1. **Manifest**: every file it lists is there with its SHA-256 and length; no file is
//!    unlisted (catches a damaged or partial copy; authenticity comes from the checks below).
//! 2. **Proof file**: `proof.bin` (BIP-127 protobuf) decodes strictly, and `proof.json` says
//!    the same; `block.json` names the same H.
//! 3. **Reserves** ([`crate::audit::reserves`]): the node's chain is the proof's network; H's
//!    hash at its height; every UTXO created at or below H (the metadata's block, checked to
//!    hold the transaction) and not spent at or before H; every script derived from the
//!    declared descriptors (`descriptors.json`), whose checksums are exactly the message's;
//!    every signature verified over all spent outputs, taproot included; the commitment; one
//!    unspendable output; zero fee.
//! 4. **Ledger**: the checkpoint the message carries and the bundle's checkpoint verify under
//!    the ledger key (given by the auditor, or else the bundle's `ledger/verifier-key.txt`,
//!    reported as such), the consistency proof shows the first log is a prefix of the second,
//!    every entry in `ledger/entries.jsonl` has an inclusion proof in the bundle's checkpoint,
//!    and among them are this proof's request (same commitment and H) and finalization (same
//!    txid and total).
//! 5. **Liabilities** (when the ledger has a root): its total does not exceed the proven
//!    amount; a `liabilities/root.json` must be that root, and every account proof in
//!    `liabilities/proofs/` must verify against it (an altered sum in a tree node fails).
//! 6. **The reserve-proof rule** (ADR 0013): `policy.toml` is the policy version the proven
//!    request entry names; the proof subject is re-derived from the proof file (network,
//!    message, outpoints, amount) and the request entry (id, approvals' expiry); the proven
//!    `reserve_proof_approval` entries carry the officers' signatures, and
//!    [`policies::evaluate_proof`] must allow them at the time the policy key signed (or the
//!    proof was finalized): `k` distinct members of the `proof_quorum` group.
//! 7. **The BIP-322 form** (when the bundle carries it, and it must when `block.json` lists
//!    it; ADR 0014): `bip322/to_sign.base64` decodes strictly (BIP-322 "full" encoding) and
//!    `bip322/proof.json` says the same; the message is the BIP-127 proof's, byte for byte; the
//!    challenge is the first declared descriptor's first receive address; the UTXOs are exactly
//!    the BIP-127 proof's (as a set); every input is verified with
//!    [`custody::reserves::bip322::verify`] against all spent outputs (to_spend's output and
//!    the node's outputs the BIP-127 check fetched, taproot included); and each UTXO's status
//!    at H is the BIP-127 check's (reused, not fetched again), so a UTXO spent before H fails
//!    both forms. The verdict fails when either form fails, each with its named reason.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use bdk_wallet::bitcoin::{Amount, BlockHash};
use bitcoincore_rpc::Client;
use custody::ledger::{
    audit_consistency, audit_inclusion, parse_json_lines, ConsistencyProofJson, Entry,
    InclusionProofJson, VerifierKey,
};
use custody::liabilities::{LiabilitiesRoot, LiabilityProof, LEDGER_TYPE};
use custody::reserves::bip322::{self, decode_full, to_spend, Bip322Error};
use custody::reserves::file::ProofFile;
use custody::reserves::{commitment_hash, ProofMessage};
use serde_json::Value;

use crate::audit::reserves::{verify_reserves_with, ReserveReport, SpendSearch, VerifyError};
use crate::files::bundle::{
    decode_checkpoint_field, Bip322ProofJson, Bundle, DeclaredDescriptor, Manifest, APPROVAL_TYPE,
    BIP322_FORMAT, BIP322_FULL_PATH, BIP322_JSON_PATH, BUNDLE_FORMAT, FINALIZED_TYPE, MANIFEST,
    REQUESTED_TYPE, SIGNATURE_TYPE,
};

/// What is wrong with a bundle (besides the reserves report's own problems).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleProblem {
    /// The manifest is missing, malformed or does not match the files.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A file is missing.
    #[error("missing file {0}")]
    MissingFile(String),
    /// A file does not parse.
    #[error("{file}: {reason}")]
    Malformed {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// Two files disagree.
    #[error("{0}")]
    Disagree(String),
    /// The ledger key is unknown or malformed.
    #[error("ledger key: {0}")]
    LedgerKey(String),
    /// A checkpoint does not verify.
    #[error("{which} checkpoint: {reason}")]
    Checkpoint {
        /// `message` or `bundle`.
        which: &'static str,
        /// Why.
        reason: String,
    },
    /// The consistency proof does not verify.
    #[error("ledger consistency: {0}")]
    Consistency(String),
    /// An entry's inclusion proof is missing or does not verify.
    #[error("ledger entry {seq}: {reason}")]
    Inclusion {
        /// The entry.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A ledger entry the proof needs is not in the bundle.
    #[error("ledger: {0}")]
    MissingEntry(String),
    /// The reserve-proof rule of the request's policy is not met by the proven approvals (or
    /// cannot be checked: no policy, another policy than the ledger names).
    #[error("reserve-proof rule: {0}")]
    ProofQuorum(String),
    /// Liabilities above the proven reserves.
    #[error("liabilities of {liabilities} exceed the proven reserves of {reserves}")]
    LiabilitiesExceedReserves {
        /// The liabilities total.
        liabilities: Amount,
        /// The proven amount.
        reserves: Amount,
    },
    /// A liabilities file does not verify.
    #[error("liabilities: {0}")]
    Liabilities(String),
}

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

/// The result of auditing a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleAudit {
    /// The reserves report (absent when the proof file or descriptors could not be read).
    pub reserves: Option<ReserveReport>,
    /// The liabilities root the ledger holds, with its entry's seq.
    pub liabilities: Option<(LiabilitiesRoot, u64)>,
    /// How many liability proofs in the bundle verified.
    pub liability_proofs: usize,
    /// Tree sizes of the message's and the bundle's checkpoints, when they verified.
    pub checkpoints: (Option<u64>, Option<u64>),
    /// Where the ledger key came from: `given` or `bundle`.
    pub ledger_key_source: &'static str,
    /// Ledger entries proven included.
    pub entries_included: usize,
    /// The officers whose proven approvals met the reserve-proof rule, with the group and its
    /// threshold (empty when the rule was not met).
    pub approvals: (Vec<String>, String, u32),
    /// Problems of the bundle.
    pub problems: Vec<BundleProblem>,
    /// The BIP-322 form's audit, when the bundle carries that form.
    pub bip322: Option<Bip322Audit>,
}

impl BundleAudit {
    /// True only when everything holds.
    pub fn verdict(&self) -> bool {
        self.problems.is_empty()
            && self.reserves.as_ref().is_some_and(ReserveReport::verdict)
            && self.bip322.as_ref().is_none_or(Bip322Audit::verdict)
    }

    /// The proven amount (zero unless the reserves report holds).
    pub fn proven(&self) -> Amount {
        self.reserves
            .as_ref()
            .filter(|r| r.verdict())
            .map_or(Amount::ZERO, |r| r.proven)
    }

    /// Every reason the verdict fails, bundle problems first.
    pub fn reasons(&self) -> Vec<String> {
        let mut out: Vec<String> = self.problems.iter().map(ToString::to_string).collect();
        if let Some(r) = &self.reserves {
            out.extend(r.reasons());
        }
        if let Some(b) = &self.bip322 {
            out.extend(b.problems.iter().map(|p| format!("bip-322 form: {p}")));
        }
        out
    }

    /// The printed report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "proof-of-reserves bundle audit");
        if let Some(r) = &self.reserves {
            let _ = writeln!(s, "network:        {}", r.network);
            let _ = writeln!(
                s,
                "block h:        {} at height {}",
                r.block_hash,
                r.height.map_or("unknown".into(), |h| h.to_string())
            );
            let _ = writeln!(s, "proven amount:  {} sat", self.proven().to_sat());
            let _ = writeln!(s, "utxos:          {}", r.utxos.len());
            for u in &r.utxos {
                let status = if u.problems.is_empty() {
                    let spent = u
                        .spent_height
                        .map_or("unspent now".to_string(), |h| format!("spent at {h} (> h)"));
                    format!("ok, created at {}, {spent}", u.created_height.unwrap_or(0))
                } else {
                    u.problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                let _ = writeln!(
                    s,
                    "  {} {} sat: {status}",
                    u.outpoint,
                    u.value.map_or("?".into(), |v| v.to_sat().to_string())
                );
            }
            let _ = writeln!(
                s,
                "node time:      {:?} (local work {:?})",
                r.node_time, r.local_time
            );
        }
        let bip127_ok = self.reserves.as_ref().is_some_and(ReserveReport::verdict);
        let _ = writeln!(
            s,
            "bip-127 form:   {}",
            if bip127_ok { "OK" } else { "FAILED" }
        );
        match &self.bip322 {
            None => {
                let _ = writeln!(s, "bip-322 form:   not in the bundle");
            }
            Some(b) => {
                let _ = writeln!(
                    s,
                    "bip-322 form:   {} (to_sign {}, challenge {}, {} sat)",
                    if b.verdict() { "OK" } else { "FAILED" },
                    b.txid.map_or("?".into(), |t| t.to_string()),
                    b.challenge_address.as_deref().unwrap_or("?"),
                    b.proven.to_sat()
                );
            }
        }
        match &self.liabilities {
            Some((root, seq)) => {
                let _ = writeln!(
                    s,
                    "liabilities:    {} sat over {} accounts (root {}, ledger seq {seq}; {} account proofs verified)",
                    root.total.to_sat(),
                    root.accounts,
                    root.hash_hex(),
                    self.liability_proofs
                );
            }
            None => {
                let _ = writeln!(s, "liabilities:    no liabilities root in the ledger");
            }
        }
        if self.approvals.0.is_empty() {
            let _ = writeln!(s, "approvals:      reserve-proof rule not met");
        } else {
            let _ = writeln!(
                s,
                "approvals:      {} of group {} (k = {})",
                self.approvals.0.join(", "),
                self.approvals.1,
                self.approvals.2
            );
        }
        let _ = writeln!(
            s,
            "ledger:         message checkpoint size {}, bundle checkpoint size {}, {} entries included (key: {})",
            self.checkpoints.0.map_or("?".into(), |x| x.to_string()),
            self.checkpoints.1.map_or("?".into(), |x| x.to_string()),
            self.entries_included,
            self.ledger_key_source
        );
        if self.verdict() {
            let _ = writeln!(s, "verdict:        OK");
        } else {
            let _ = writeln!(s, "verdict:        FAILED");
            for r in self.reasons() {
                let _ = writeln!(s, "  - {r}");
            }
        }
        s
    }
}

/// Errors that stop the audit (no verdict).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The node failed to answer.
    #[error(transparent)]
    Node(#[from] VerifyError),
}

fn text<'a>(b: &'a Bundle, path: &str, problems: &mut Vec<BundleProblem>) -> Option<&'a str> {
    match b.get(path) {
        None => {
            problems.push(BundleProblem::MissingFile(path.to_string()));
            None
        }
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(t) => Some(t),
            Err(_) => {
                problems.push(BundleProblem::Malformed {
                    file: path.to_string(),
                    reason: "not utf-8 text".into(),
                });
                None
            }
        },
    }
}

fn check_manifest(b: &Bundle, problems: &mut Vec<BundleProblem>) {
    let Some(t) = text(b, MANIFEST, problems) else {
        return;
    };
    let m: Manifest = match serde_json::from_str(t) {
        Ok(m) => m,
        Err(e) => {
            problems.push(BundleProblem::Manifest(e.to_string()));
            return;
        }
    };
    if m.format != BUNDLE_FORMAT {
        problems.push(BundleProblem::Manifest(format!(
            "format {:?} is not {BUNDLE_FORMAT:?}",
            m.format
        )));
    }
    let mut listed = BTreeSet::new();
    for f in &m.files {
        listed.insert(f.path.as_str());
        match b.get(&f.path) {
            None => problems.push(BundleProblem::Manifest(format!(
                "{} is listed but missing",
                f.path
            ))),
            Some(bytes) => {
                if hex::encode(hashcore::sha256(bytes)) != f.sha256 || bytes.len() as u64 != f.bytes
                {
                    problems.push(BundleProblem::Manifest(format!(
                        "{}: sha-256 or length differs from the manifest",
                        f.path
                    )));
                }
            }
        }
    }
    for path in b.files().keys() {
        if path != MANIFEST && !listed.contains(path.as_str()) {
            problems.push(BundleProblem::Manifest(format!("{path} is not listed")));
        }
    }
}

/// Audits `bundle` against the auditor's node (see the module docs). `ledger_key` is the
/// key the auditor trusts; without it the bundle's own `ledger/verifier-key.txt` is used and
/// the report says so. Ranged descriptors are searched up to index `gap`.
///
/// # Errors
/// [`AuditError::Node`] when the node fails to answer; everything wrong with the bundle is
/// in the result.
pub fn audit_bundle(
    bundle: &Bundle,
    client: &Client,
    ledger_key: Option<&VerifierKey>,
    gap: u32,
    search: SpendSearch,
) -> Result<BundleAudit, AuditError> {
    let mut problems = Vec::new();
    check_manifest(bundle, &mut problems);

    // The proof file, its JSON twin, H and the declared descriptors.
    let file = match bundle.get("proof.bin") {
        None => {
            problems.push(BundleProblem::MissingFile("proof.bin".into()));
            None
        }
        Some(b) => match ProofFile::decode(b) {
            Ok(f) => Some(f),
            Err(e) => {
                problems.push(BundleProblem::Malformed {
                    file: "proof.bin".into(),
                    reason: e.to_string(),
                });
                None
            }
        },
    };
    if let (Some(f), Some(j)) = (&file, text(bundle, "proof.json", &mut problems)) {
        match ProofFile::from_json_str(j) {
            Ok(pj) if pj == *f => {}
            Ok(_) => problems.push(BundleProblem::Disagree(
                "proof.json does not say what proof.bin says".into(),
            )),
            Err(e) => problems.push(BundleProblem::Malformed {
                file: "proof.json".into(),
                reason: e.to_string(),
            }),
        }
    }
    if let (Some(f), Some(t)) = (&file, text(bundle, "block.json", &mut problems)) {
        let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
        let hash = v["hash"].as_str().and_then(|s| s.parse::<BlockHash>().ok());
        if hash != Some(f.block_hash()) {
            problems.push(BundleProblem::Disagree(format!(
                "block.json names another block than the proof file ({})",
                f.block_hash()
            )));
        }
        if let Ok(m) = ProofMessage::parse(f.message()) {
            if v["height"].as_u64() != Some(u64::from(m.height())) {
                problems.push(BundleProblem::Disagree(
                    "block.json names another height than the message".into(),
                ));
            }
        }
    }
    let declared: Option<Vec<DeclaredDescriptor>> = text(bundle, "descriptors.json", &mut problems)
        .and_then(|t| {
            serde_json::from_str(t)
                .map_err(|e| {
                    problems.push(BundleProblem::Malformed {
                        file: "descriptors.json".into(),
                        reason: e.to_string(),
                    })
                })
                .ok()
        });

    let reserves = match (&file, &declared) {
        (Some(f), Some(d)) => {
            let texts: Vec<String> = d.iter().map(|x| x.descriptor.clone()).collect();
            match verify_reserves_with(f, &texts, client, gap, search) {
                Ok(r) => Some(r),
                Err(VerifyError::Descriptor { index, reason }) => {
                    problems.push(BundleProblem::Malformed {
                        file: "descriptors.json".into(),
                        reason: format!("descriptor {index}: {reason}"),
                    });
                    None
                }
                Err(e) => return Err(e.into()),
            }
        }
        _ => None,
    };

    // The ledger.
    let mut ledger_key_source = "given";
    let key: Option<VerifierKey> = match ledger_key {
        Some(k) => Some(k.clone()),
        None => {
            ledger_key_source = "bundle";
            match bundle.text("ledger/verifier-key.txt") {
                None => {
                    problems.push(BundleProblem::LedgerKey(
                        "no --ledger-key given and the bundle carries none".into(),
                    ));
                    None
                }
                Some(t) => match VerifierKey::parse(t.trim()) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        problems.push(BundleProblem::LedgerKey(e.to_string()));
                        None
                    }
                },
            }
        }
    };
    let message = file
        .as_ref()
        .and_then(|f| ProofMessage::parse(f.message()).ok());
    let message_note =
        message
            .as_ref()
            .and_then(|m| match decode_checkpoint_field(m.checkpoint()) {
                Ok(n) => Some(n),
                Err(e) => {
                    problems.push(BundleProblem::Checkpoint {
                        which: "message",
                        reason: e,
                    });
                    None
                }
            });
    let bundle_note = text(bundle, "ledger/checkpoint.txt", &mut problems).map(str::to_string);
    let mut checkpoints = (None, None);
    let mut entries_included = 0usize;
    let mut approvals: (Vec<String>, String, u32) = (Vec::new(), String::new(), 0);
    let mut liabilities = None;
    let mut liability_proofs = 0usize;
    if let Some(key) = &key {
        if let Some(n) = &message_note {
            match key.verify(n) {
                Ok(cp) => checkpoints.0 = Some(cp.size()),
                Err(e) => problems.push(BundleProblem::Checkpoint {
                    which: "message",
                    reason: e.to_string(),
                }),
            }
        }
        if let Some(n) = &bundle_note {
            match key.verify(n) {
                Ok(cp) => checkpoints.1 = Some(cp.size()),
                Err(e) => problems.push(BundleProblem::Checkpoint {
                    which: "bundle",
                    reason: e.to_string(),
                }),
            }
        }
        if let (Some(old), Some(new), Some(t)) = (
            &message_note,
            &bundle_note,
            text(bundle, "ledger/consistency.json", &mut problems),
        ) {
            let r = ConsistencyProofJson::parse(t)
                .map_err(|e| e.to_string())
                .and_then(|p| audit_consistency(&p, old, new, key).map_err(|e| e.to_string()));
            if let Err(e) = r {
                problems.push(BundleProblem::Consistency(e));
            }
        }
        let entries: Vec<Entry> =
            match text(bundle, "ledger/entries.jsonl", &mut problems).map(parse_json_lines) {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    problems.push(BundleProblem::Malformed {
                        file: "ledger/entries.jsonl".into(),
                        reason: e.to_string(),
                    });
                    Vec::new()
                }
                None => Vec::new(),
            };
        let mut proven_entries = Vec::new();
        if let Some(n) = &bundle_note {
            for e in &entries {
                let path = format!("ledger/inclusion/{}.json", e.seq());
                let r = match bundle.text(&path) {
                    None => Err(format!("no inclusion proof ({path})")),
                    Some(t) => InclusionProofJson::parse(t)
                        .map_err(|x| x.to_string())
                        .and_then(|p| {
                            if p.seq == e.seq() {
                                audit_inclusion(Some(e), &p, n, key).map_err(|x| x.to_string())
                            } else {
                                Err(format!("the inclusion proof is for seq {}", p.seq))
                            }
                        }),
                };
                match r {
                    Ok(_) => proven_entries.push(e),
                    Err(reason) => problems.push(BundleProblem::Inclusion {
                        seq: e.seq(),
                        reason,
                    }),
                }
            }
        }
        entries_included = proven_entries.len();
        let bodies: Vec<(u64, Value)> = proven_entries
            .iter()
            .filter_map(|e| {
                serde_json::from_slice::<Value>(e.payload().as_bytes())
                    .ok()
                    .map(|v| (e.seq(), v))
            })
            .collect();
        if let Some(f) = &file {
            let commitment = hex::encode(commitment_hash(f.message().as_bytes()));
            let requested = bodies.iter().any(|(_, b)| {
                b["type"] == REQUESTED_TYPE
                    && b["commitment"] == commitment.as_str()
                    && b["block"] == f.block_hash().to_string().as_str()
            });
            if !requested {
                problems.push(BundleProblem::MissingEntry(
                    "no proven reserve_proof_requested entry for this message and block".into(),
                ));
            }
            let txids: Vec<String> = f
                .final_proofs()
                .iter()
                .map(|p| p.proof_tx().compute_txid().to_string())
                .collect();
            let finalized = bodies.iter().any(|(_, b)| {
                b["type"] == FINALIZED_TYPE
                    && b["commitment"] == commitment.as_str()
                    && b["txid"]
                        .as_str()
                        .is_some_and(|t| txids.iter().any(|x| x == t))
            });
            if !finalized {
                problems.push(BundleProblem::MissingEntry(
                    "no proven reserve_proof_finalized entry for this proof transaction".into(),
                ));
            }
            match check_proof_quorum(bundle, f, &commitment, &proven_entries) {
                Ok(a) => approvals = a,
                Err(reason) => problems.push(BundleProblem::ProofQuorum(reason)),
            }
        }
        // The latest liabilities root among the proven entries.
        if let Some((seq, b)) = bodies
            .iter()
            .filter(|(_, b)| b["type"] == LEDGER_TYPE)
            .max_by_key(|(s, _)| *s)
        {
            match (
                b["root_hash"].as_str(),
                b["root_sum_sat"].as_u64(),
                b["accounts"].as_u64(),
            ) {
                (Some(h), Some(total), Some(accounts)) => {
                    let doc = serde_json::json!({
                        "format": custody::liabilities::ROOT_FORMAT, "root_hash": h,
                        "root_sum_sat": total, "accounts": accounts,
                    });
                    match LiabilitiesRoot::parse(&doc.to_string()) {
                        Ok(root) => liabilities = Some((root, *seq)),
                        Err(e) => problems.push(BundleProblem::Liabilities(e.to_string())),
                    }
                }
                _ => problems.push(BundleProblem::Liabilities(format!(
                    "the ledger entry {seq} is not a liabilities root"
                ))),
            }
        }
    }

    // Liabilities against the proven reserves, and the account proofs in the bundle.
    let has_files = bundle.files().keys().any(|p| p.starts_with("liabilities/"));
    match &liabilities {
        Some((root, _)) => {
            if let Some(r) = &reserves {
                let proven = if r.verdict() { r.proven } else { Amount::ZERO };
                if root.total > proven {
                    problems.push(BundleProblem::LiabilitiesExceedReserves {
                        liabilities: root.total,
                        reserves: proven,
                    });
                }
            }
            if has_files {
                match bundle
                    .text("liabilities/root.json")
                    .map(LiabilitiesRoot::parse)
                {
                    Some(Ok(r)) if r == *root => {}
                    Some(Ok(_)) => problems.push(BundleProblem::Liabilities(
                        "liabilities/root.json is not the root in the ledger".into(),
                    )),
                    Some(Err(e)) => problems.push(BundleProblem::Liabilities(format!(
                        "liabilities/root.json: {e}"
                    ))),
                    None => {
                        problems.push(BundleProblem::MissingFile("liabilities/root.json".into()))
                    }
                }
                for (path, bytes) in bundle.files() {
                    if !path.starts_with("liabilities/proofs/") {
                        continue;
                    }
                    let r = std::str::from_utf8(bytes)
                        .map_err(|e| e.to_string())
                        .and_then(|t| LiabilityProof::parse(t).map_err(|e| e.to_string()))
                        .and_then(|p| {
                            p.verify(&root.hash_hex(), Some(root.total))
                                .map_err(|e| e.to_string())
                        });
                    match r {
                        Ok(_) => liability_proofs = liability_proofs.saturating_add(1),
                        Err(e) => problems.push(BundleProblem::Liabilities(format!("{path}: {e}"))),
                    }
                }
            }
        }
        None if has_files => problems.push(BundleProblem::Liabilities(
            "the bundle carries liabilities files but no proven liabilities root entry".into(),
        )),
        None => {}
    }

    let bip322 = audit_bip322(
        bundle,
        file.as_ref(),
        declared.as_deref(),
        reserves.as_ref(),
    );

    Ok(BundleAudit {
        reserves,
        liabilities,
        liability_proofs,
        checkpoints,
        ledger_key_source,
        entries_included,
        approvals,
        problems,
        bip322,
    })
}

/// Audits the BIP-322 form of the bundle against its BIP-127 proof and the BIP-127 check's
/// view of every UTXO (see the module docs, step 7). `None` when the bundle carries no
/// BIP-322 form and `block.json` does not list one.
fn audit_bip322(
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

fn body_of(e: &Entry) -> Option<Value> {
    serde_json::from_slice::<Value>(e.payload().as_bytes()).ok()
}

/// Step 6 of the audit: the reserve-proof rule of the policy the request names, over the
/// proven approval entries. Returns who was counted, the group and its threshold.
fn check_proof_quorum(
    bundle: &Bundle,
    f: &ProofFile,
    commitment: &str,
    entries: &[&Entry],
) -> Result<(Vec<String>, String, u32), String> {
    use policies::evaluate::{evaluate_proof, Context, Decision, ReceivedApproval};
    use policies::proof::{ProofSubject, ProofTerms};
    let request = entries
        .iter()
        .filter_map(|e| body_of(e))
        .find(|b| b["type"] == REQUESTED_TYPE && b["commitment"] == commitment)
        .ok_or("no proven request entry to take the policy and the terms from")?;
    let id = request["proof_request"]
        .as_str()
        .ok_or("the request entry names no proof request")?
        .to_owned();
    let (Some(policy_hash), Some(expires_at_ms)) = (
        request["policy"].as_str(),
        request["approvals_expire_ms"].as_i64(),
    ) else {
        return Err(
            "the request entry names no policy and approval expiry (a proof requested before the reserve-proof rule was enforced)"
                .into(),
        );
    };
    let doc = bundle
        .text("policy.toml")
        .ok_or("the bundle carries no policy.toml")?;
    let policy = policies::Policy::from_toml(doc).map_err(|e| format!("policy.toml: {e}"))?;
    if policy.hash().to_string() != policy_hash {
        return Err(format!(
            "policy.toml is policy {}, the request entry names {policy_hash}",
            policy.hash()
        ));
    }
    let proof = f
        .final_proofs()
        .first()
        .ok_or("the proof file holds no final proof")?;
    let tx = proof.proof_tx();
    let mut amount = Amount::ZERO;
    for o in &tx.output {
        amount = amount.checked_add(o.value).ok_or("amounts overflow")?;
    }
    let terms = ProofTerms {
        request_id: id.clone(),
        expires_at_ms,
    };
    let subject = ProofSubject::new(
        f.network(),
        f.message().as_bytes(),
        tx.input.iter().skip(1).map(|i| i.previous_output),
        amount,
        &terms,
        policy.hash(),
    )
    .map_err(|e| e.to_string())?;
    let mut approvals = Vec::new();
    let mut signed_at = None;
    let mut finalized_at = None;
    for e in entries {
        let Some(b) = body_of(e) else { continue };
        if b["proof_request"] != id.as_str() {
            continue;
        }
        if b["type"] == SIGNATURE_TYPE && b["by"] == crate::actor::POLICY_SIGNER_ACTOR {
            signed_at = Some(e.time_ms());
        }
        if b["type"] == FINALIZED_TYPE {
            finalized_at = Some(e.time_ms());
        }
        if b["type"] != APPROVAL_TYPE {
            continue;
        }
        let hex32 = |k: &str| -> Option<[u8; 32]> {
            let mut out = [0u8; 32];
            hex::decode_to_slice(b[k].as_str()?, &mut out).ok()?;
            Some(out)
        };
        let mut signature = [0u8; 64];
        let (Some(approver), Some(pubkey), Some(digest), Some(sig)) = (
            b["approver"].as_str(),
            hex32("pubkey"),
            hex32("subject"),
            b["signature"].as_str(),
        ) else {
            return Err(format!("approval entry {} is malformed", e.seq()));
        };
        hex::decode_to_slice(sig, &mut signature)
            .map_err(|_| format!("approval entry {}: malformed signature", e.seq()))?;
        approvals.push(ReceivedApproval {
            approval: policies::Approval {
                request_id: id.clone(),
                approver: approver.to_owned(),
                pubkey,
                decision: policies::Verdict::Approve,
                digest,
                signature,
            },
            received_ms: e.time_ms(),
        });
    }
    let now_ms = signed_at
        .or(finalized_at)
        .ok_or("no policy-key signature or finalization entry to date the approvals")?;
    let ctx = Context {
        now_ms,
        tip_height: 0,
        frozen: false,
    };
    let group = policy.proof_quorum().to_owned();
    let k = policy.group(&group).map_or(1, |g| g.k);
    let ev = evaluate_proof(&policy, &subject, &approvals, &ctx);
    match ev.decision {
        Decision::Allow { .. } => Ok((ev.counted, group, k)),
        Decision::Deny { reasons } => Err(reasons
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")),
        Decision::Pending { .. } => {
            let ignored: Vec<String> = ev
                .ignored
                .iter()
                .map(|(p, why)| format!("{p}: {why:?}"))
                .collect();
            Err(format!(
                "{} of {k} approvals from group {group}{}",
                ev.counted.len(),
                if ignored.is_empty() {
                    String::new()
                } else {
                    format!(" (not counted: {})", ignored.join("; "))
                }
            ))
        }
    }
}
