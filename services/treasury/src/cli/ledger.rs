//! `treasury ledger ...` (against the database) and `treasury audit ...` (offline, for
//! auditors: files and a verifier key, no database).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use custody::ledger::{
    audit_consistency, audit_inclusion, audit_ledger, consistency_proof, inclusion_proof,
    leaf_hashes, parse_json_lines, to_json_line, Actor, AnyCheckpointSigner, ConsistencyProofJson,
    EntryDraft, EntryJson, InclusionProofJson, KeyFileSigner, VerifierKey,
};

use crate::cli::hsm::HsmKeyOpts;
use crate::cli::io::read;
use crate::cli::opts::runtime;
use crate::cli::opts::DEFAULT_DB;
use crate::clock::now_ms;
use crate::service::DEFAULT_ORIGIN;
use crate::signer::checkpoint::HsmCheckpointSigner;
use crate::store::LedgerStore;

/// Options shared by the ledger commands.
#[derive(Debug, Clone, Args)]
pub struct LedgerOpts {
    /// Database URL: sqlite://PATH or postgres://...
    #[arg(long, env = "TREASURY_DB", default_value = DEFAULT_DB, global = true)]
    pub db: String,
    /// The ledger's origin (checkpoint first line and key name).
    #[arg(long, env = "TREASURY_LEDGER_ORIGIN", default_value = DEFAULT_ORIGIN, global = true)]
    pub origin: String,
}

/// `treasury ledger` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum LedgerCommand {
    /// Append an operator's note (key ceremony witnesses, audit start, ...).
    Note {
        /// Who writes the note.
        #[arg(long)]
        actor: String,
        /// The note text.
        #[arg(long)]
        text: String,
    },
    /// Recompute every hash, the chain, the Merkle root and every stored checkpoint.
    Verify {
        /// Verifier key (name+id+key) to check checkpoint signatures with.
        #[arg(long, conflicts_with = "key_file")]
        key: Option<String>,
        /// Or the ledger key file (its public half is used).
        #[arg(long, env = "TREASURY_LEDGER_KEY_FILE")]
        key_file: Option<PathBuf>,
    },
    /// Sign a checkpoint of the whole log, store it as an entry and print the signed note.
    /// The key is a key file (BIP-340) or a key in a PKCS#11 token (`--hsm-key-label`, ECDSA).
    Checkpoint {
        /// The ledger key file (64 hex digits).
        #[arg(long, env = "TREASURY_LEDGER_KEY_FILE")]
        key_file: Option<PathBuf>,
        /// The token key to sign with instead.
        #[command(flatten)]
        hsm: HsmKeyOpts,
        /// The actor recorded on the checkpoint entry.
        #[arg(long, default_value = "ledger")]
        actor: String,
    },
    /// Print an inclusion proof (JSON) of entry SEQ in the tree of SIZE entries.
    Prove {
        /// The entry.
        #[arg(long)]
        seq: u64,
        /// The tree size (default: the whole log).
        #[arg(long)]
        size: Option<u64>,
    },
    /// Print a consistency proof (JSON) from tree size FROM to size TO.
    Consistency {
        /// The old size.
        #[arg(long)]
        from: u64,
        /// The new size (default: the whole log).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Print every entry as JSON lines.
    Export,
    /// Write a new ledger key file and print its verifier key.
    Keygen {
        /// Where to write the key file (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the verifier key of a key file or of a token key, for auditors.
    PublicKey {
        /// The ledger key file.
        #[arg(long, env = "TREASURY_LEDGER_KEY_FILE")]
        key_file: Option<PathBuf>,
        /// Or the token key.
        #[command(flatten)]
        hsm: HsmKeyOpts,
    },
}

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

fn load_signer(path: &Path) -> Result<KeyFileSigner, String> {
    let text = zeroize::Zeroizing::new(read(path)?);
    KeyFileSigner::from_key_file(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The key a checkpoint is signed with.
pub(crate) enum LedgerSigner {
    /// A BIP-340 key file.
    File(KeyFileSigner),
    /// An ECDSA key in a PKCS#11 token.
    Hsm(HsmCheckpointSigner),
}

impl LedgerSigner {
    /// Exactly one of the key file and the token key.
    pub(crate) fn open(key_file: Option<&Path>, hsm: &HsmKeyOpts) -> Result<Self, String> {
        match (key_file, &hsm.hsm_key_label) {
            (Some(_), Some(_)) => Err(
                "give either a key file (--key-file, TREASURY_LEDGER_KEY_FILE) or --hsm-key-label, not both"
                    .into(),
            ),
            (Some(f), None) => Ok(LedgerSigner::File(load_signer(f)?)),
            (None, Some(_)) => hsm
                .open()?
                .map(LedgerSigner::Hsm)
                .ok_or_else(|| "internal: no token key".to_string()),
            (None, None) => Err(
                "no ledger key: give --key-file (or TREASURY_LEDGER_KEY_FILE) or --hsm-key-label"
                    .into(),
            ),
        }
    }

    pub(crate) fn as_signer(&self) -> &dyn AnyCheckpointSigner {
        self.as_sync_signer()
    }

    pub(crate) fn as_sync_signer(&self) -> &(dyn AnyCheckpointSigner + Sync) {
        match self {
            LedgerSigner::File(s) => s,
            LedgerSigner::Hsm(s) => s,
        }
    }
}

fn parse_key(s: &str) -> Result<VerifierKey, String> {
    VerifierKey::parse(s).map_err(|e| e.to_string())
}

/// Runs a `treasury ledger` command; returns what to print on standard output.
///
/// # Errors
/// A message for standard error (the process then exits non-zero).
pub fn run_ledger(opts: &LedgerOpts, cmd: LedgerCommand) -> Result<String, String> {
    match cmd {
        LedgerCommand::Keygen { out } => return keygen(&opts.origin, &out),
        LedgerCommand::PublicKey { key_file, hsm } => {
            let signer = LedgerSigner::open(key_file.as_deref(), &hsm)?;
            let vk = VerifierKey::of_signer(opts.origin.clone(), signer.as_signer())
                .map_err(|e| e.to_string())?;
            return Ok(format!("{vk}\n"));
        }
        _ => {}
    }
    runtime()?.block_on(async {
        let store = LedgerStore::open(&opts.db)
            .await
            .map_err(|e| e.to_string())?;
        let out = run_ledger_db(opts, &store, cmd).await;
        store.close().await;
        out
    })
}

async fn run_ledger_db(
    opts: &LedgerOpts,
    store: &LedgerStore,
    cmd: LedgerCommand,
) -> Result<String, String> {
    let err = |e: crate::store::StoreError| e.to_string();
    match cmd {
        LedgerCommand::Note { actor, text } => {
            let draft = EntryDraft::note(now_ms(), &actor, &text).map_err(|e| e.to_string())?;
            let e = store.append(draft).await.map_err(err)?;
            Ok(format!(
                "appended seq {} entry hash {}\n",
                e.seq(),
                hex::encode(e.entry_hash())
            ))
        }
        LedgerCommand::Verify { key, key_file } => {
            let vk = match (key, key_file) {
                (Some(k), _) => Some(parse_key(&k)?),
                (None, Some(f)) => Some(
                    VerifierKey::of_signer(opts.origin.clone(), &load_signer(&f)?)
                        .map_err(|e| e.to_string())?,
                ),
                (None, None) => None,
            };
            let report = store.verify(vk.as_ref()).await.map_err(err)?;
            if vk.is_none() && report.checkpoints > 0 {
                eprintln!(
                    "warning: {} checkpoint signatures not checked (give --key or --key-file)",
                    report.checkpoints
                );
            }
            Ok(format!("{report}\n"))
        }
        LedgerCommand::Checkpoint {
            key_file,
            hsm,
            actor,
        } => {
            let actor = Actor::new(actor).map_err(|e| e.to_string())?;
            let signer = LedgerSigner::open(key_file.as_deref(), &hsm)?;
            let (note, _) = store
                .checkpoint(&opts.origin, &actor, now_ms(), signer.as_signer())
                .await
                .map_err(err)?;
            Ok(note)
        }
        LedgerCommand::Prove { seq, size } => {
            let head = store.head().await.map_err(err)?;
            let size = size.unwrap_or(head.size());
            if size > head.size() {
                return Err(format!(
                    "tree size {size} is beyond the log, which has {} entries",
                    head.size()
                ));
            }
            let hashes = store.entry_hashes(size).await.map_err(err)?;
            let proof =
                inclusion_proof(&leaf_hashes(&hashes), seq, size).map_err(|e| e.to_string())?;
            let entry_hash = usize::try_from(seq)
                .ok()
                .and_then(|i| hashes.get(i))
                .ok_or_else(|| format!("seq {seq} is not in the log"))?;
            Ok(format!(
                "{}\n",
                InclusionProofJson::new(&proof, entry_hash).to_json()
            ))
        }
        LedgerCommand::Consistency { from, to } => {
            let head = store.head().await.map_err(err)?;
            let to = to.unwrap_or(head.size());
            if to > head.size() {
                return Err(format!(
                    "tree size {to} is beyond the log, which has {} entries",
                    head.size()
                ));
            }
            let hashes = store.entry_hashes(to).await.map_err(err)?;
            let proof =
                consistency_proof(&leaf_hashes(&hashes), from, to).map_err(|e| e.to_string())?;
            Ok(format!("{}\n", ConsistencyProofJson::new(&proof).to_json()))
        }
        LedgerCommand::Export => {
            let entries = store.entries().await.map_err(err)?;
            let mut out = String::new();
            for e in &entries {
                out.push_str(&to_json_line(e));
                out.push('\n');
            }
            Ok(out)
        }
        LedgerCommand::Keygen { .. } | LedgerCommand::PublicKey { .. } => {
            Err("internal: handled above".into())
        }
    }
}

fn keygen(origin: &str, out: &Path) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret[..]))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let signer = KeyFileSigner::from_secret_bytes(&secret).map_err(|e| e.to_string())?;
    let vk = VerifierKey::of_signer(origin.to_owned(), &signer).map_err(|e| e.to_string())?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(out)
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    f.write_all(KeyFileSigner::key_file_text(&secret).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(format!("{vk}\n"))
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
        } => crate::cli::reserves::audit_reserves(&crate::cli::reserves::AuditReservesArgs {
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
