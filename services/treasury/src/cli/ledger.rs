//! `treasury ledger ...` (against the database) and `treasury audit ...` (offline, for
//! auditors: files and a verifier key, no database).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use custody::ledger::{
    consistency_proof, inclusion_proof, leaf_hashes, to_json_line, Actor, AnyCheckpointSigner,
    ConsistencyProofJson, EntryDraft, InclusionProofJson, KeyFileSigner, VerifierKey,
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

pub(crate) fn parse_key(s: &str) -> Result<VerifierKey, String> {
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
