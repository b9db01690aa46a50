//! `treasury reserves ...`: the reserve's own side of proofs of reserves and liabilities.
//!
//! `prove`, `show`, `list`, `psbt`, `submit-psbt`, `sign-policy`, `finalize` and `bundle` are
//! thin layers over [`crate::service::reserves::ReserveService`] (the API calls the same
//! functions). `treasury audit reserves` ([`audit_reserves`]) is the auditor's side.
//!
//! `liabilities` builds the liabilities sum tree from an account list, writes the published
//! root (`root.json`) and one inclusion proof per account (`proofs/ID.json`, to be handed to
//! each account holder), and records the root in the ledger. The offline check of one proof is
//! `treasury audit liability` (in [`crate::cli::audit`]).

use std::path::{Path, PathBuf};

use bdk_wallet::bitcoin::Amount;
use clap::{Args, Subcommand};
use custody::liabilities::{
    check_reserves, parse_accounts_csv, parse_accounts_json, Account, LiabilitiesTree,
    LiabilityProof,
};

use crate::cli::hsm::HsmKeyOpts;
use crate::cli::io::read_psbt;
use crate::cli::io::write_new;
use crate::cli::ledger::LedgerSigner;
use crate::cli::opts::runtime;
use crate::cli::opts::VaultOpts;
use crate::clock::now_ms;
use crate::service::reserves::{
    BundleOptions, CheckpointSource, ProofForm, ProveRequest, ReserveService, StoredProof,
};
use crate::service::spend::SpendService;
use crate::service::vaults::VaultService;
use crate::service::DEFAULT_ORIGIN;
use crate::store::LedgerStore;

/// Options shared by the reserves commands: the database, network and node (as for vaults).
#[derive(Debug, Clone, Args)]
pub struct ReservesOpts {
    /// Database, network and node.
    #[command(flatten)]
    pub vault: VaultOpts,
}

/// The ledger key that signs a fresh checkpoint (optional: without it the latest stored
/// checkpoint must cover what is needed).
#[derive(Debug, Clone, Args)]
pub struct CheckpointKeyOpts {
    /// The ledger key file (64 hex digits).
    #[arg(long, env = "TREASURY_LEDGER_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Or the checkpoint key in a PKCS#11 token.
    #[command(flatten)]
    pub hsm: HsmKeyOpts,
    /// The ledger's origin.
    #[arg(long, env = "TREASURY_LEDGER_ORIGIN", default_value = DEFAULT_ORIGIN)]
    pub origin: String,
}

impl CheckpointKeyOpts {
    fn signer(&self) -> Result<Option<LedgerSigner>, String> {
        if self.key_file.is_none() && self.hsm.hsm_key_label.is_none() {
            return Ok(None);
        }
        LedgerSigner::open(self.key_file.as_deref(), &self.hsm).map(Some)
    }
}

/// `treasury reserves` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum ReservesCommand {
    /// Create a proof request: sync the vaults, take H = their tip, every confirmed UTXO,
    /// bind the signed ledger checkpoint, build the BIP-127 PSBT and the BIP-322 to_sign PSBT
    /// over the same UTXOs; prints the id and the BIP-127 PSBT (`reserves psbt ID --form
    /// bip322` prints the other).
    Prove {
        /// A vault to prove (repeat for several).
        #[arg(long = "vault", required = true)]
        vaults: Vec<String>,
        /// The statement the message carries (printable ASCII, one line).
        #[arg(long, default_value = "")]
        message: String,
        /// The request id (default: random).
        #[arg(long)]
        id: Option<String>,
        /// Who asks (recorded).
        #[arg(long, default_value = "treasury")]
        actor: String,
        /// The ledger key that signs a fresh checkpoint for the message.
        #[command(flatten)]
        key: CheckpointKeyOpts,
    },
    /// Show a proof request.
    Show {
        /// The request id.
        id: String,
    },
    /// List the proof requests.
    List,
    /// Print the subject officers approve for the proof (JSON, with the PSBT and the policy
    /// it is derived from), for `treasury officer review` / `treasury officer approve`.
    Subject {
        /// The request id.
        id: String,
    },
    /// Submit an officer's approval of the proof (from `treasury officer approve`): verified
    /// on arrival, recorded in the ledger; prints where the reserve-proof rule stands.
    Approve {
        /// The request id.
        id: String,
        /// The approval file (JSON).
        #[arg(long)]
        approval: PathBuf,
        /// Who submits it (recorded as the ledger entry's principal).
        #[arg(long, default_value = "treasury")]
        actor: String,
    },
    /// Print the proof's PSBT with every signature accepted so far.
    Psbt {
        /// The request id.
        id: String,
        /// Which form: `bip127` (the commitment-input proof) or `bip322` (to_sign).
        #[arg(long, default_value = "bip127", value_parser = parse_form)]
        form: ProofForm,
    },
    /// Accept an officer's signed PSBT of the proof, of either form (told by input 0; every
    /// signature verified on arrival).
    SubmitPsbt {
        /// The request id.
        id: String,
        /// The PSBT file (base64 or binary), `-` for standard input.
        #[arg(long)]
        psbt: PathBuf,
        /// Who signed (recorded).
        #[arg(long)]
        by: String,
    },
    /// Have the policy key sign the proof (the policy signer checks the proof's shape and the
    /// proof quorum's approvals): the BIP-127 form, and the BIP-322 form once officers have
    /// started it. The key is in the PKCS#11 token (PIN from `--pin-file` or
    /// `TREASURY_HSM_PIN`), or with `--keystore` in a software keystore.
    SignPolicy {
        /// The request id.
        id: String,
        /// Sign only this form (`bip127` or `bip322`).
        #[arg(long, value_parser = parse_form)]
        form: Option<ProofForm>,
        /// Where the policy key is.
        #[command(flatten)]
        key: crate::cli::hsm::PolicyKeyArgs,
    },
    /// Finalize the fully signed proof (every input verified, taproot included).
    Finalize {
        /// The request id.
        id: String,
    },
    /// Write the auditor's bundle of a signed proof to DIR.
    Bundle {
        /// The request id.
        id: String,
        /// The output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// The output of `treasury reserves liabilities` to include (root.json, proofs/).
        #[arg(long)]
        liabilities: Option<PathBuf>,
        /// The ledger's verifier key to include (derived from the key when one is given).
        #[arg(long)]
        ledger_key: Option<String>,
        /// The ledger key that signs a fresh checkpoint covering the proof's entries.
        #[command(flatten)]
        key: CheckpointKeyOpts,
    },
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

fn parse_form(s: &str) -> Result<ProofForm, String> {
    s.parse()
        .map_err(|e: crate::service::reserves::ReserveServiceError| e.to_string())
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
    if !matches!(cmd, ReservesCommand::Liabilities { .. }) {
        return runtime()?.block_on(async {
            let store = LedgerStore::open(&opts.vault.db)
                .await
                .map_err(|e| e.to_string())?;
            let svc = ReserveService::new(SpendService::new(VaultService::new(store.clone())));
            let out = run_proof(opts, &svc, cmd).await;
            store.close().await;
            out
        });
    }
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
                let store = LedgerStore::open(&opts.vault.db)
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
        _ => Err("internal: handled above".into()),
    }
}

fn show(p: &StoredProof) -> String {
    let mut out = format!(
        "proof request {}
state: {}
vaults: {}
network: {}
h: {} at height {}
         utxos: {}
total: {} sat
signatures: {}
checkpoint size: {}
txid: {}
",
        p.id,
        p.state.as_str(),
        p.vaults.join(", "),
        p.network,
        p.block_hash,
        p.height,
        p.outputs.len(),
        p.total.to_sat(),
        p.signatures,
        p.checkpoint_size,
        p.txid()
    );
    if let Some(tx) = &p.final_tx {
        out.push_str(&format!(
            "final txid: {}
",
            tx.compute_txid()
        ));
    }
    if let Some(b) = &p.bip322 {
        out.push_str(&format!(
            "bip-322 form: {}
bip-322 challenge: {} (vault {})
bip-322 to_spend txid: {}
bip-322 to_sign txid: {}
bip-322 signatures: {}
",
            b.state.as_str(),
            b.challenge_address,
            b.challenge_vault,
            b.to_spend_txid().map(|t| t.to_string()).unwrap_or_default(),
            b.txid(),
            b.signatures
        ));
        if let Some(tx) = &b.final_tx {
            out.push_str(&format!(
                "bip-322 final txid: {}
",
                tx.compute_txid()
            ));
        }
    }
    out
}

async fn run_proof(
    opts: &ReservesOpts,
    svc: &ReserveService,
    cmd: ReservesCommand,
) -> Result<String, String> {
    let err = |e: crate::service::reserves::ReserveServiceError| e.to_string();
    match cmd {
        ReservesCommand::Prove {
            vaults,
            message,
            id,
            actor,
            key,
        } => {
            let node = opts.vault.node()?;
            let signer = key.signer()?;
            let source = match &signer {
                Some(s) => CheckpointSource::Sign {
                    origin: &key.origin,
                    actor: "ledger",
                    signer: s.as_sync_signer(),
                },
                None => CheckpointSource::Latest,
            };
            let req = ProveRequest {
                id,
                vaults,
                statement: message,
                actor,
            };
            let p = svc
                .prove(&req, &node, source, now_ms())
                .await
                .map_err(err)?;
            eprint!("{}", show(&p));
            Ok(format!("{}\n{}\n", p.id, p.psbt))
        }
        ReservesCommand::Show { id } => Ok(show(&svc.load(&id).await.map_err(err)?)),
        ReservesCommand::List => {
            let mut out = String::new();
            for (id, state, h, total) in svc.list().await.map_err(err)? {
                out.push_str(&format!(
                    "{id}\t{}\theight {h}\t{} sat\n",
                    state.as_str(),
                    total.to_sat()
                ));
            }
            Ok(out)
        }
        ReservesCommand::Subject { id } => {
            let f = svc.subject_file(&id, now_ms()).await.map_err(err)?;
            let text = serde_json::to_string_pretty(&f)
                .map_err(|e| format!("cannot print the subject: {e}"))?;
            Ok(format!("{text}\n"))
        }
        ReservesCommand::Approve {
            id,
            approval,
            actor,
        } => {
            let a: policies::Approval = crate::cli::io::read_json(&approval)?;
            let st = svc
                .add_approval(&id, a, &actor, now_ms())
                .await
                .map_err(err)?;
            Ok(format!(
                "accepted; {} of {} approvals from group {}{}{}\n",
                st.counted.len(),
                st.need,
                st.group,
                if st.counted.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", st.counted.join(", "))
                },
                if st.complete() {
                    ": the reserve-proof rule is met"
                } else {
                    ""
                }
            ))
        }
        ReservesCommand::Psbt { id, form } => {
            let p = svc.load(&id).await.map_err(err)?;
            Ok(format!("{}\n", p.signed_psbt(form).map_err(err)?))
        }
        ReservesCommand::SubmitPsbt { id, psbt, by } => {
            let incoming = read_psbt(&psbt)?;
            let (form, added) = svc
                .submit_psbt_form(&id, incoming, &by, now_ms())
                .await
                .map_err(err)?;
            let p = svc.load(&id).await.map_err(err)?;
            let holds = match form {
                ProofForm::Bip127 => p.signatures,
                ProofForm::Bip322 => p.bip322.as_ref().map_or(0, |b| b.signatures),
            };
            Ok(format!(
                "accepted {added} new signatures from {by}; the proof holds {holds} ({} form)\n",
                form.as_str()
            ))
        }
        ReservesCommand::SignPolicy { id, form, key } => {
            let key = key.open().await?;
            sign_policy_with(svc, opts.vault.network, &id, form, key).await
        }
        ReservesCommand::Finalize { id } => {
            let p = svc.finalize(&id, now_ms()).await.map_err(err)?;
            Ok(show(&p))
        }
        ReservesCommand::Bundle {
            id,
            out,
            liabilities,
            ledger_key,
            key,
        } => {
            let signer = key.signer()?;
            let mut vk = match &ledger_key {
                Some(k) => Some(custody::ledger::VerifierKey::parse(k).map_err(|e| e.to_string())?),
                None => None,
            };
            if vk.is_none() {
                if let Some(s) = &signer {
                    vk = Some(
                        custody::ledger::VerifierKey::of_signer(key.origin.clone(), s.as_signer())
                            .map_err(|e| e.to_string())?,
                    );
                }
            }
            let source = match &signer {
                Some(s) => CheckpointSource::Sign {
                    origin: &key.origin,
                    actor: "ledger",
                    signer: s.as_sync_signer(),
                },
                None => CheckpointSource::Latest,
            };
            let b = svc
                .bundle(
                    &id,
                    &BundleOptions {
                        checkpoint: source,
                        ledger_key: vk.as_ref(),
                        liabilities_dir: liabilities.as_deref(),
                    },
                    now_ms(),
                )
                .await
                .map_err(err)?;
            b.write_to(&out)?;
            Ok(format!(
                "wrote the bundle of proof {id} ({} files) to {}\n",
                b.files().len(),
                out.display()
            ))
        }
        ReservesCommand::Liabilities { .. } => Err("internal: handled above".into()),
    }
}

/// The policy signer over `key` signs proof `id` (one form, or every form that is being
/// signed); prints each signed form's PSBT.
async fn sign_policy_with<S: hsm::Signer>(
    svc: &ReserveService,
    network: bdk_wallet::bitcoin::Network,
    id: &str,
    form: Option<ProofForm>,
    key: S,
) -> Result<String, String> {
    let err = |e: crate::service::reserves::ReserveServiceError| e.to_string();
    let now = now_ms();
    let mut signer = svc.policy_signer(key, network, now).await.map_err(err)?;
    let sigs = match form {
        Some(f) => svc
            .policy_sign_forms(id, &[f], &mut signer, now)
            .await
            .map_err(err)?,
        None => {
            let p = svc.load(id).await.map_err(err)?;
            let mut forms = vec![ProofForm::Bip127];
            if p.bip322
                .as_ref()
                .is_some_and(|b| b.state == crate::service::reserves::Bip322State::Signing)
            {
                forms.push(ProofForm::Bip322);
            }
            svc.policy_sign_forms(id, &forms, &mut signer, now)
                .await
                .map_err(err)?
        }
    };
    let p = svc.load(id).await.map_err(err)?;
    let mut out = String::new();
    for (f, sig) in &sigs {
        eprintln!(
            "policy key {} signed inputs {:?} of proof {} ({} sat, {} form)",
            sig.key,
            sig.inputs,
            sig.txid,
            sig.amount.to_sat(),
            f.as_str()
        );
        out.push_str(&format!("{}\n", p.signed_psbt(*f).map_err(err)?));
    }
    Ok(out)
}
