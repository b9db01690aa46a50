//! `treasury audit ...`: what an auditor runs offline: a ledger export, inclusion and
//! consistency proofs, checkpoints, liability proofs and the reserve-proof bundle.
//!
//! Why one file per audience: an auditor's commands need no database and no service; they
//! read files and call `custody` and `audit/`. Apart from `ledger.rs` and `reserves.rs`, the
//! two no longer import each other.

use std::path::PathBuf;

use clap::Subcommand;
use custody::ledger::{
    audit_consistency, audit_inclusion, audit_ledger, parse_json_lines, ConsistencyProofJson,
    EntryJson, InclusionProofJson,
};

use crate::cli::io::read;
use crate::cli::ledger::parse_key;
use crate::files::bundle::Bundle;
use crate::node::{NodeAuth, NodeConfig};

/// `treasury audit` subcommands: offline, no database.
#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Verify a JSON lines export against a signed checkpoint.
    Ledger {
        /// The JSON lines export.
        #[arg(long)]
        entries: PathBuf,
        /// The signed checkpoint note.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The log's verifier key (name+id+key).
        #[arg(long)]
        key: String,
    },
    /// Verify an inclusion proof against a signed checkpoint.
    Inclusion {
        /// The inclusion proof (JSON).
        #[arg(long)]
        proof: PathBuf,
        /// The signed checkpoint note.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The log's verifier key.
        #[arg(long)]
        key: String,
        /// The entry itself (one export line), checked against the proven hash.
        #[arg(long)]
        entry: Option<PathBuf>,
    },
    /// Verify one account's liability proof (JSON) against the published liabilities root.
    Liability {
        /// The proof file (from `treasury reserves liabilities`).
        proof: PathBuf,
        /// The published root hash (hex).
        #[arg(long)]
        root: String,
        /// The published total (satoshis), checked when given.
        #[arg(long)]
        total: Option<u64>,
        /// The proven reserves (satoshis): the total must not exceed them.
        #[arg(long)]
        reserves: Option<u64>,
    },
    /// Verify a proof-of-reserves bundle (from `treasury reserves bundle`) against your own
    /// Bitcoin Core node: every check, one report; exit 0 only when everything holds.
    Reserves {
        /// The bundle directory.
        bundle: PathBuf,
        /// Your node's RPC URL.
        #[arg(long)]
        bitcoind_url: String,
        /// Your node's cookie file.
        #[arg(long, conflicts_with_all = ["rpc_user", "rpc_password"])]
        rpc_cookie: Option<PathBuf>,
        /// RPC user (with --rpc-password).
        #[arg(long, requires = "rpc_password")]
        rpc_user: Option<String>,
        /// RPC password (prefer the environment variable; never printed).
        #[arg(long, env = "TREASURY_AUDIT_RPC_PASSWORD", hide_env_values = true)]
        rpc_password: Option<String>,
        /// The ledger's verifier key you trust (name+id+key); without it the bundle's own
        /// `ledger/verifier-key.txt` is used and the report says so.
        #[arg(long)]
        ledger_key: Option<String>,
        /// Derivation indexes searched in each ranged descriptor.
        #[arg(long, default_value_t = 1000)]
        gap: u32,
        /// Find spends above H by reading every block instead of `getdescriptoractivity`.
        #[arg(long)]
        block_scan: bool,
    },
    /// Verify a consistency proof between two signed checkpoints.
    Consistency {
        /// The consistency proof (JSON).
        #[arg(long)]
        proof: PathBuf,
        /// The older checkpoint.
        #[arg(long)]
        old: PathBuf,
        /// The newer checkpoint.
        #[arg(long)]
        new: PathBuf,
        /// The log's verifier key.
        #[arg(long)]
        key: String,
    },
}

/// Runs a `treasury audit` command; returns what to print on standard output.
///
/// # Errors
/// A message for standard error (the process then exits non-zero).
pub fn run_audit(cmd: AuditCommand) -> Result<String, String> {
    match cmd {
        AuditCommand::Ledger {
            entries,
            checkpoint,
            key,
        } => {
            let key = parse_key(&key)?;
            let entries = parse_json_lines(&read(&entries)?).map_err(|e| e.to_string())?;
            let report =
                audit_ledger(&entries, &read(&checkpoint)?, &key).map_err(|e| e.to_string())?;
            Ok(format!(
                "{report} (checkpoint size {} verified)\n",
                report.checkpoint.size()
            ))
        }
        AuditCommand::Inclusion {
            proof,
            checkpoint,
            key,
            entry,
        } => {
            let key = parse_key(&key)?;
            let proof = InclusionProofJson::parse(&read(&proof)?).map_err(|e| e.to_string())?;
            let entry = match entry {
                Some(p) => {
                    let text = read(&p)?;
                    let json: EntryJson = serde_json::from_str(text.trim())
                        .map_err(|e| format!("{}: {e}", p.display()))?;
                    Some(
                        json.to_entry()
                            .map_err(|e| format!("{}: {e}", p.display()))?,
                    )
                }
                None => None,
            };
            let cp = audit_inclusion(entry.as_ref(), &proof, &read(&checkpoint)?, &key)
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "ok: seq {} is in the log of {} entries, root {}\n",
                proof.seq,
                cp.size(),
                hex::encode(cp.root())
            ))
        }
        AuditCommand::Liability {
            proof,
            root,
            total,
            reserves,
        } => {
            use bdk_wallet::bitcoin::Amount;
            let text = read(&proof)?;
            let v =
                custody::liabilities::verify_proof_json(&text, &root, total.map(Amount::from_sat))
                    .map_err(|e| format!("{}: {e}", proof.display()))?;
            let mut out = format!(
                "ok: account {} with {} sat is leaf {} of {} in root {} (total {} sat)\n",
                v.account,
                v.balance.to_sat(),
                v.index,
                v.root.accounts,
                v.root.hash_hex(),
                v.root.total.to_sat()
            );
            if let Some(r) = reserves {
                custody::liabilities::check_reserves(v.root.total, Amount::from_sat(r))
                    .map_err(|e| e.to_string())?;
                out.push_str(&format!(
                    "ok: the total does not exceed the proven reserves of {r} sat\n"
                ));
            }
            Ok(out)
        }
        AuditCommand::Reserves {
            bundle,
            bitcoind_url,
            rpc_cookie,
            rpc_user,
            rpc_password,
            ledger_key,
            gap,
            block_scan,
        } => audit_reserves(&AuditReservesArgs {
            bundle,
            bitcoind_url,
            rpc_cookie,
            rpc_user,
            rpc_password: rpc_password.map(zeroize::Zeroizing::new),
            ledger_key,
            gap,
            block_scan,
        }),
        AuditCommand::Consistency {
            proof,
            old,
            new,
            key,
        } => {
            let key = parse_key(&key)?;
            let proof = ConsistencyProofJson::parse(&read(&proof)?).map_err(|e| e.to_string())?;
            let (o, n) = audit_consistency(&proof, &read(&old)?, &read(&new)?, &key)
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "ok: the log of {} entries is a prefix of the log of {} entries\n",
                o.size(),
                n.size()
            ))
        }
    }
}
/// The arguments of `treasury audit reserves`.
#[derive(Debug, Clone)]
pub struct AuditReservesArgs {
    /// The bundle: a directory, or the JSON document the API serves.
    pub bundle: PathBuf,
    /// The auditor's node.
    pub bitcoind_url: String,
    /// Cookie file.
    pub rpc_cookie: Option<PathBuf>,
    /// RPC user.
    pub rpc_user: Option<String>,
    /// RPC password.
    pub rpc_password: Option<zeroize::Zeroizing<String>>,
    /// The ledger key the auditor trusts.
    pub ledger_key: Option<String>,
    /// Derivation indexes searched.
    pub gap: u32,
    /// Scan blocks instead of `getdescriptoractivity`.
    pub block_scan: bool,
}

/// `treasury audit reserves`: prints the report on standard output; `Ok` only when the
/// verdict holds (the error then says how many reasons the report lists).
///
/// # Errors
/// A message when the bundle cannot be read, the node cannot be reached, or the verdict fails.
pub fn audit_reserves(a: &AuditReservesArgs) -> Result<String, String> {
    use crate::audit::reserves::SpendSearch;
    // A directory (`treasury reserves bundle --out`) or the API's JSON document
    // (`GET /v1/reserves/proofs/{id}/bundle`).
    let bundle = if a.bundle.is_file() {
        let text = std::fs::read_to_string(&a.bundle)
            .map_err(|e| format!("{}: {e}", a.bundle.display()))?;
        Bundle::from_json(&text).map_err(|e| format!("{}: {e}", a.bundle.display()))?
    } else {
        Bundle::read_from(&a.bundle)?
    };
    let auth = match (&a.rpc_cookie, &a.rpc_user, &a.rpc_password) {
        (Some(c), _, _) => NodeAuth::Cookie(c.clone()),
        (None, Some(u), Some(p)) => NodeAuth::UserPass(u.clone(), p.clone()),
        _ => return Err("give --rpc-cookie FILE or --rpc-user U --rpc-password P".into()),
    };
    let node = NodeConfig {
        url: a.bitcoind_url.clone(),
        auth,
    };
    let client = node.client().map_err(|e| e.to_string())?;
    let key = match &a.ledger_key {
        Some(k) => Some(custody::ledger::VerifierKey::parse(k).map_err(|e| e.to_string())?),
        None => None,
    };
    let search = if a.block_scan {
        SpendSearch::BlockScan
    } else {
        SpendSearch::DescriptorActivity
    };
    let audit = crate::audit::bundle::audit_bundle(&bundle, &client, key.as_ref(), a.gap, search)
        .map_err(|e| e.to_string())?;
    let report = audit.render();
    if audit.verdict() {
        Ok(report)
    } else {
        print!("{report}");
        Err(format!(
            "the bundle does not verify ({} reasons above)",
            audit.reasons().len()
        ))
    }
}
