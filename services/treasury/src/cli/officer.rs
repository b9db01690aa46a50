//! `treasury officer ...`: an officer's own key, offline (an air-gapped laptop). The key lives in
//! an encrypted keystore file (argon2id + XChaCha20-Poly1305, `hsm::SoftwareKeystore`); the
//! passphrase comes from `TREASURY_KEYSTORE_PASSPHRASE` or a file, never from the command line.
//! The same file holds the officer's approval key (BIP-340, at `hsm::APPROVAL_KEY_PATH`):
//! `review` explains a spend request file in plain words, `approve` signs its approval subject,
//! rebuilt from the request's own PSBT (a file whose claims differ from its PSBT is refused),
//! and `sign-order` signs admin orders (policy changes, vetoes, freezes). `review` and `approve`
//! also recognise a reserve proof subject file (`treasury reserves subject ID`): the proof
//! subject is re-derived from the file's PSBT under the file's policy, and the approval signs
//! that form-independent subject (ADR 0013).

use std::path::PathBuf;
use std::str::FromStr;

use bdk_wallet::bitcoin::bip32::DerivationPath;
use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::Network;
use clap::Subcommand;
use hsm::{KdfParams, Signer, SoftwareKeystore};
use policies::freeze::AdminSignature;
use policies::Verdict;
use zeroize::Zeroizing;

use crate::cli::io::read_json;
use crate::files::order_file::OrderFile;
use crate::files::request_file::RequestFile;
use crate::service::render::{utc, verdict_text};
use crate::service::reserves::ProofSubjectFile;

/// `treasury officer` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum OfficerCommand {
    /// Create a new officer key in an encrypted keystore file and print its account key
    /// `[fingerprint/48'/coin'/0'/2']xpub` for the vault descriptor.
    Keygen {
        /// Keystore file to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// The officer's name (not secret).
        #[arg(long)]
        id: String,
        /// Network of the key.
        #[arg(long, env = "TREASURY_NETWORK", default_value = "regtest")]
        network: Network,
        /// Account path (BIP-48, script type 2 = wsh).
        #[arg(long)]
        path: Option<String>,
        /// File holding the passphrase (default: TREASURY_KEYSTORE_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Cheap key derivation, for tests and demos only.
        #[arg(long, hide = true)]
        insecure_fast_kdf: bool,
    },
    /// Print the account key of a keystore (or its approval public key).
    Show {
        /// Keystore file.
        #[arg(long)]
        key: PathBuf,
        /// File holding the passphrase (default: TREASURY_KEYSTORE_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Print the approval key (x-only, hex) for the policy document instead.
        #[arg(long)]
        approval_key: bool,
    },
    /// Explain a spend request file (`treasury spend show --json`) in plain words: amounts,
    /// destinations with their allowlist labels, fee, and the policy's verdict.
    Review {
        /// The request file.
        file: PathBuf,
        /// Evaluate at this time (Unix ms; default: the system clock).
        #[arg(long, env = "TREASURY_NOW_MS", hide = true)]
        now_ms: Option<i64>,
    },
    /// Approve (or reject) a spend request file; prints the signed approval (JSON).
    Approve {
        /// The request file.
        file: PathBuf,
        /// Keystore file.
        #[arg(long)]
        key: PathBuf,
        /// File holding the passphrase (default: TREASURY_KEYSTORE_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Sign a rejection instead.
        #[arg(long)]
        reject: bool,
    },
    /// Sign an admin order (policy change, freeze or lift); prints the signature (JSON).
    SignOrder {
        /// The order file.
        file: PathBuf,
        /// Keystore file.
        #[arg(long)]
        key: PathBuf,
        /// File holding the passphrase (default: TREASURY_KEYSTORE_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Sign a veto of the policy change instead of its approval.
        #[arg(long)]
        veto: bool,
        /// The admin's name in the policy (the order names the policy only by its hash).
        #[arg(long)]
        admin: String,
    },
    /// Sign every input of a PSBT this key can sign; prints the signed PSBT (base64).
    Sign {
        /// Keystore file.
        #[arg(long)]
        key: PathBuf,
        /// File holding the passphrase (default: TREASURY_KEYSTORE_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// The PSBT file (base64; `-` for standard input).
        psbt: PathBuf,
    },
}

pub(crate) fn passphrase(file: Option<&PathBuf>) -> Result<Zeroizing<String>, String> {
    let text = match file {
        Some(f) => Zeroizing::new(
            std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read passphrase file {}: {e}", f.display()))?,
        ),
        None => Zeroizing::new(std::env::var("TREASURY_KEYSTORE_PASSPHRASE").map_err(|_| {
            "no passphrase: set TREASURY_KEYSTORE_PASSPHRASE or give --passphrase-file".to_string()
        })?),
    };
    let trimmed = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
    if trimmed.is_empty() {
        return Err("the passphrase is empty".into());
    }
    Ok(trimmed)
}

/// Runs a `treasury officer` command; returns what to print on standard output.
///
/// # Errors
/// A message for standard error (never containing the passphrase or key material).
pub fn run_officer(cmd: OfficerCommand) -> Result<String, String> {
    match cmd {
        OfficerCommand::Keygen {
            out,
            id,
            network,
            path,
            passphrase_file,
            insecure_fast_kdf,
        } => {
            let pass = passphrase(passphrase_file.as_ref())?;
            let coin = if network == Network::Bitcoin { 0 } else { 1 };
            let path = path.unwrap_or_else(|| format!("m/48'/{coin}'/0'/2'"));
            let path = DerivationPath::from_str(&path)
                .map_err(|e| format!("account path {path:?}: {e}"))?;
            let ks =
                SoftwareKeystore::generate(id, network.into(), path).map_err(|e| e.to_string())?;
            let kdf = if insecure_fast_kdf {
                KdfParams::insecure_for_tests()
            } else {
                KdfParams::production()
            };
            ks.save(&out, &pass, kdf).map_err(|e| e.to_string())?;
            Ok(format!("{}\n", ks.descriptor_key()))
        }
        OfficerCommand::Show {
            key,
            passphrase_file,
            approval_key,
        } => {
            let pass = passphrase(passphrase_file.as_ref())?;
            let ks = SoftwareKeystore::load(&key, &pass).map_err(|e| e.to_string())?;
            if approval_key {
                let pk = ks.approval_public_key().map_err(|e| e.to_string())?;
                return Ok(format!("{pk}\n"));
            }
            Ok(format!("{}\n", ks.descriptor_key()))
        }
        OfficerCommand::Review { file, now_ms } => {
            if let Some(p) = proof_subject_file(&file)? {
                return review_proof(&p, now_ms.unwrap_or_else(crate::clock::now_ms));
            }
            let f: RequestFile = read_json(&file)?;
            review(&f, now_ms.unwrap_or_else(crate::clock::now_ms))
        }
        OfficerCommand::Approve {
            file,
            key,
            passphrase_file,
            reject,
        } => {
            if let Some(p) = proof_subject_file(&file)? {
                if reject {
                    return Err(
                        "a reserve proof is approved or left unapproved: there is no \
                                rejection of a proof subject"
                            .into(),
                    );
                }
                let (subject, policy) = p.rebuild()?;
                let pass = passphrase(passphrase_file.as_ref())?;
                let ks = SoftwareKeystore::load(&key, &pass).map_err(|e| e.to_string())?;
                let pk = ks.approval_public_key().map_err(|e| e.to_string())?;
                let person = policy.person_of(&pk).ok_or_else(|| {
                    format!(
                        "approval key {pk} is not an approver of policy {}",
                        policy.hash()
                    )
                })?;
                let group = policy.proof_quorum();
                if !policy.group(group).is_some_and(|g| g.has(person)) {
                    return Err(format!(
                        "{person} is not a member of group {group}, whose quorum approves \
                         reserve proofs"
                    ));
                }
                let approval = ks
                    .with_approval_secret(|sk| subject.sign(person, sk))
                    .map_err(|e| e.to_string())?;
                let text = serde_json::to_string_pretty(&approval)
                    .map_err(|e| format!("cannot print the approval: {e}"))?;
                return Ok(format!("{text}\n"));
            }
            let f: RequestFile = read_json(&file)?;
            let (request, policy) = f.rebuild().map_err(|e| e.to_string())?;
            let pass = passphrase(passphrase_file.as_ref())?;
            let ks = SoftwareKeystore::load(&key, &pass).map_err(|e| e.to_string())?;
            let pk = ks.approval_public_key().map_err(|e| e.to_string())?;
            let person = policy.person_of(&pk).ok_or_else(|| {
                format!(
                    "approval key {pk} is not an approver of policy {}",
                    policy.hash()
                )
            })?;
            let verdict = if reject {
                Verdict::Reject
            } else {
                Verdict::Approve
            };
            let subject = request.subject.with_decision(verdict);
            let approval = ks
                .with_approval_secret(|sk| policies::sign(&subject, person, sk))
                .map_err(|e| e.to_string())?;
            let text = serde_json::to_string_pretty(&approval)
                .map_err(|e| format!("cannot print the approval: {e}"))?;
            Ok(format!("{text}\n"))
        }
        OfficerCommand::SignOrder {
            file,
            key,
            passphrase_file,
            veto,
            admin,
        } => {
            let order: OrderFile = read_json(&file)?;
            let digest = order.digest(veto).map_err(|e| e.to_string())?;
            let pass = passphrase(passphrase_file.as_ref())?;
            let ks = SoftwareKeystore::load(&key, &pass).map_err(|e| e.to_string())?;
            let sig = ks
                .with_approval_secret(|sk| AdminSignature::sign(digest, &admin, sk))
                .map_err(|e| e.to_string())?;
            let text = serde_json::to_string_pretty(&sig)
                .map_err(|e| format!("cannot print the signature: {e}"))?;
            Ok(format!("{text}\n"))
        }
        OfficerCommand::Sign {
            key,
            passphrase_file,
            psbt,
        } => {
            let pass = passphrase(passphrase_file.as_ref())?;
            let ks = SoftwareKeystore::load(&key, &pass).map_err(|e| e.to_string())?;
            let text = if psbt.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| format!("cannot read standard input: {e}"))?;
                s
            } else {
                std::fs::read_to_string(&psbt)
                    .map_err(|e| format!("cannot read {}: {e}", psbt.display()))?
            };
            let mut p = Psbt::from_str(text.trim()).map_err(|e| format!("malformed psbt: {e}"))?;
            let report = ks.sign_psbt(&mut p).map_err(|e| e.to_string())?;
            if report.is_empty() {
                return Err(format!(
                    "key {} signs no input of this psbt (no matching key origin)",
                    ks.descriptor_key()
                ));
            }
            eprintln!("signed inputs {:?}", report.inputs());
            Ok(format!("{p}\n"))
        }
    }
}

/// Reads `path` as a reserve proof subject file when its `kind` says so (`None` otherwise).
fn proof_subject_file(path: &std::path::Path) -> Result<Option<ProofSubjectFile>, String> {
    let v: serde_json::Value = read_json(path)?;
    if v.get("kind").and_then(serde_json::Value::as_str) != Some(policies::proof::DOCUMENT_KIND) {
        return Ok(None);
    }
    serde_json::from_value(v)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A reserve proof subject file in plain words: what the proof proves, the message it binds,
/// and what approving it means.
///
/// # Errors
/// A message when the file's subject is not the one its PSBT and policy give.
pub fn review_proof(f: &ProofSubjectFile, now_ms: i64) -> Result<String, String> {
    let (s, policy) = f.rebuild()?;
    let group = policy.proof_quorum();
    let k = policy.group(group).map_or(1, |g| g.k);
    let mut out = format!(
        "Reserve proof request {} on {}: it proves {} sat ({} BTC) held in {} coin(s):\n",
        s.request_id,
        s.network,
        s.amount.to_sat(),
        s.amount.to_btc(),
        f.document.outpoints.len()
    );
    for op in &f.document.outpoints {
        out.push_str(&format!("  - {op}\n"));
    }
    out.push_str("The message it commits to (block, descriptor checksums, ledger checkpoint):\n");
    for line in f.document.message.lines() {
        out.push_str(&format!("  | {line}\n"));
    }
    out.push_str(&format!(
        "It can never be broadcast (its first input spends the message's commitment {}).\n",
        hex::encode(s.commitment)
    ));
    out.push_str(&format!(
        "Under policy \"{}\" version {} ({}), {k} approval(s) of group {group} are needed; \
         one approval covers both the BIP-127 and the BIP-322 form of this proof.\n",
        policy.name(),
        policy.version(),
        policy.hash()
    ));
    let state = if now_ms >= s.expires_at_ms {
        " (EXPIRED)"
    } else {
        ""
    };
    out.push_str(&format!(
        "Approvals expire at {}{state}.\nSubject digest: {}.\n",
        utc(s.expires_at_ms),
        hex::encode(s.digest())
    ));
    Ok(out)
}

/// A spend request file in plain words, with the policy's verdict at `now_ms`.
///
/// # Errors
/// A message when the file is inconsistent with its PSBT or policy.
pub fn review(f: &RequestFile, now_ms: i64) -> Result<String, String> {
    let (request, policy) = f.rebuild().map_err(|e| e.to_string())?;
    let net = Network::from_str(&f.network).map_err(|e| format!("network: {e}"))?;
    let mut out = format!(
        "Spend request {} from vault {}, asked for by {} (state: {}).\n",
        request.id, request.vault, request.initiator, f.state
    );
    if let Some(old) = &request.replaces {
        out.push_str(&format!(
            "It replaces request {old} (a fee bump): approvals of that request do not count.\n"
        ));
    }
    out.push_str(&format!(
        "It pays {} sat ({} BTC) in total:\n",
        request.amount.to_sat(),
        request.amount.to_btc()
    ));
    for (i, o) in request.psbt.unsigned_tx.output.iter().enumerate() {
        let is_change = f
            .change_outputs
            .iter()
            .any(|&c| usize::try_from(c).is_ok_and(|c| c == i));
        let dest = bdk_wallet::bitcoin::Address::from_script(&o.script_pubkey, net).map_or_else(
            |_| format!("script {}", o.script_pubkey.to_hex_string()),
            |a| a.to_string(),
        );
        let label = policy
            .allowlist()
            .iter()
            .find(|e| e.script_pubkey == o.script_pubkey)
            .map(|e| format!("allowlisted as \"{}\"", e.label));
        if is_change {
            out.push_str(&format!(
                "  - {} sat back to the vault as change ({dest})\n",
                o.value.to_sat()
            ));
        } else {
            out.push_str(&format!(
                "  - {} sat to {dest} ({})\n",
                o.value.to_sat(),
                label.unwrap_or_else(|| "NOT on the allowlist".into())
            ));
        }
    }
    out.push_str(&format!(
        "The fee is {} sat (at least {} sat/vB once signed).\n",
        request.subject.fee.to_sat(),
        request.fee_rate.to_sat_per_vb_floor()
    ));
    out.push_str(&format!(
        "It spends {} coin(s) of the vault:\n",
        request.subject.inputs.len()
    ));
    for (op, a) in &request.subject.inputs {
        out.push_str(&format!("  - {op} ({} sat)\n", a.to_sat()));
    }
    out.push_str(&format!(
        "Transaction {} under policy \"{}\" version {} ({}).\n",
        request.txid,
        policy.name(),
        policy.version(),
        policy.hash()
    ));
    let height = request
        .subject
        .expires_at_height
        .map_or(String::new(), |h| format!(" or at block {h}"));
    out.push_str(&format!(
        "Approvals expire at {}{height}.\n",
        utc(request.subject.expires_at_ms)
    ));
    let ctx = policies::evaluate::Context {
        now_ms,
        tip_height: f.tip_height,
        frozen: f.frozen,
    };
    let history = f.past_spends().map_err(|e| e.to_string())?;
    let ev = request.evaluation(&policy, &ctx, &history);
    if let Some(t) = &ev.tier {
        out.push_str(&format!("Tier: {t}.\n"));
    }
    out.push_str(&format!("Policy verdict: {}.\n", verdict_text(&ev, now_ms)));
    if !ev.counted.is_empty() {
        out.push_str(&format!("Approvals counted: {}.\n", ev.counted.join(", ")));
    }
    if !ev.rejections.is_empty() {
        out.push_str(&format!("Rejected by: {}.\n", ev.rejections.join(", ")));
    }
    Ok(out)
}
