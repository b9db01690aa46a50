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

use std::fmt::Write as _;

use bdk_wallet::bitcoin::{Amount, BlockHash};
use bitcoincore_rpc::Client;
use custody::ledger::{
    audit_consistency, audit_inclusion, parse_json_lines, ConsistencyProofJson, Entry,
    InclusionProofJson, VerifierKey,
};
use custody::liabilities::{LiabilitiesRoot, LiabilityProof, LEDGER_TYPE};
use custody::reserves::file::ProofFile;
use custody::reserves::{commitment_hash, ProofMessage};
use serde_json::Value;

use super::bip322::{audit_bip322, Bip322Audit};
use super::manifest::{check_manifest, text};
use super::problem::BundleProblem;
use super::quorum::check_proof_quorum;
use crate::audit::reserves::{verify_reserves_with, ReserveReport, SpendSearch, VerifyError};
use crate::files::bundle::{
    decode_checkpoint_field, Bundle, DeclaredDescriptor, FINALIZED_TYPE, REQUESTED_TYPE,
};

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
