//! `treasury reserves ...`: the reserve's own side of proofs of reserves and liabilities.
//!
//! `liabilities` builds the liabilities sum tree from an account list, writes the published
//! root (`root.json`) and one inclusion proof per account (`proofs/ID.json`, to be handed to
//! each account holder), and records the root in the ledger. The offline check of one proof is
//! `treasury audit liability` (in [`crate::ledger_cli`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use bdk_wallet::bitcoin::Amount;
use clap::{Args, Subcommand};
use custody::liabilities::{
    check_reserves, parse_accounts_csv, parse_accounts_json, Account, LiabilitiesTree,
    LiabilityProof,
};

use crate::ledger_cli::{runtime, DEFAULT_DB};
use crate::store::LedgerStore;

/// Options shared by the reserves commands.
#[derive(Debug, Clone, Args)]
pub struct ReservesOpts {
    /// Database URL: sqlite://PATH or postgres://...
    #[arg(long, env = "TREASURY_DB", default_value = DEFAULT_DB, global = true)]
    pub db: String,
}

/// `treasury reserves` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum ReservesCommand {
    /// Build the liabilities sum tree: write DIR/root.json and DIR/proofs/ID.json per account,
    /// and append the root to the ledger.
    Liabilities {
        /// The account list: CSV (`account_id,balance_sat[,salt]`) or a JSON array of
        /// `{"account_id", "balance_sat", "salt"?}` (by extension `.json`).
        #[arg(long)]
        accounts: PathBuf,
        /// The output directory (created; files in it are never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Refuse unless the total is at most these proven reserves (satoshis).
        #[arg(long)]
        reserves: Option<u64>,
        /// The actor recorded on the ledger entry.
        #[arg(long, default_value = "liabilities")]
        actor: String,
    },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn write_new(path: &Path, text: &str) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads an account list file: JSON when its name ends in `.json`, CSV otherwise.
///
/// # Errors
/// A message naming the file.
pub fn load_accounts(path: &Path) -> Result<Vec<Account>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let inputs = if is_json {
        parse_accounts_json(&text)
    } else {
        parse_accounts_csv(&text)
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rng = rand::rngs::OsRng;
    inputs
        .iter()
        .map(|a| a.to_account(&mut rng))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs a `treasury reserves` command; returns what to print on standard output.
///
/// # Errors
/// A message for standard error (the process then exits non-zero).
pub fn run_reserves(opts: &ReservesOpts, cmd: ReservesCommand) -> Result<String, String> {
    match cmd {
        ReservesCommand::Liabilities {
            accounts,
            out,
            reserves,
            actor,
        } => {
            let list = load_accounts(&accounts)?;
            let tree = LiabilitiesTree::build(list).map_err(|e| e.to_string())?;
            let root = tree.root();
            if let Some(r) = reserves {
                check_reserves(root.total, Amount::from_sat(r)).map_err(|e| e.to_string())?;
            }
            let draft = root
                .ledger_draft(&actor, now_ms())
                .map_err(|e| e.to_string())?;
            let proofs: Vec<LiabilityProof> = (0..tree.len() as u64)
                .map(|i| tree.proof(i))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let proof_dir = out.join("proofs");
            std::fs::create_dir_all(&proof_dir)
                .map_err(|e| format!("cannot create {}: {e}", proof_dir.display()))?;
            write_new(&out.join("root.json"), &root.to_json())?;
            for p in &proofs {
                // Account ids are validated to [A-Za-z0-9._-] not starting with '.': safe names.
                write_new(
                    &proof_dir.join(format!("{}.json", p.account_id)),
                    &p.to_json(),
                )?;
            }
            let entry = runtime()?.block_on(async {
                let store = LedgerStore::open(&opts.db)
                    .await
                    .map_err(|e| e.to_string())?;
                let e = store.append(draft).await.map_err(|e| e.to_string());
                store.close().await;
                e
            })?;
            Ok(format!(
                "liabilities root {} total {} sat over {} accounts\n\
                 wrote {} and {} proofs in {}\n\
                 appended seq {} entry hash {}\n",
                root.hash_hex(),
                root.total.to_sat(),
                root.accounts,
                out.join("root.json").display(),
                proofs.len(),
                proof_dir.display(),
                entry.seq(),
                hex::encode(entry.entry_hash())
            ))
        }
    }
}
