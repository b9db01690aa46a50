//! `treasury spend ...` (spend requests in the service) and `treasury freeze ...` (the
//! emergency freeze), against the database. The clock is the system's unless `--now-ms` /
//! `TREASURY_NOW_MS` sets it (drills and tests); the chain tip is the vault's last sync unless
//! `--tip-height` sets it.

use std::path::PathBuf;

use bdk_wallet::bitcoin::FeeRate;
use clap::{Subcommand, ValueEnum};
use custody::vault::spend::Payment;
use policies::approval::Approval;
use policies::freeze::{AdminSignature, FreezeAction};

use crate::cli::io::read_json;
use crate::cli::io::read_psbt;
use crate::cli::opts::runtime;
use crate::cli::opts::ClockOpts;
use crate::cli::opts::VaultOpts;
use crate::files::order_file::OrderFile;
use crate::service::render::{utc, verdict_text};
use crate::service::spend::{At, Bump, CreateSpend, EvaluatedSpend, SpendService};
use crate::service::vaults::VaultService;
use crate::store::LedgerStore;

/// `treasury spend` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum SpendCommand {
    /// Build a spend request (PSBT with reserved coins), bind it to the active policy and
    /// submit it for approval; prints the request.
    Create {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// A payment ADDRESS:SATS (repeat for a batch).
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        /// Fee rate in sat/vB.
        #[arg(long)]
        fee_rate: u32,
        /// Who asks for the payment (their own approval never counts).
        #[arg(long)]
        initiator: String,
        /// Request id, an idempotency key (default: random).
        #[arg(long)]
        id: Option<String>,
        /// OP_RETURN memo (UTF-8, at most 80 bytes).
        #[arg(long)]
        memo: Option<String>,
        /// Confirmations after which the request is confirmed.
        #[arg(long, default_value_t = 6)]
        confirmations: u32,
    },
    /// Show a request: state, verdict and what is missing, approvals, PSBT.
    Show {
        /// Request id.
        #[arg(long)]
        id: String,
        /// Print the request file officers review and approve (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Submit approvals (JSON files from `treasury officer approve`); each is verified on
    /// arrival, then the request is evaluated.
    Approve {
        /// Request id.
        #[arg(long)]
        id: String,
        /// Approval files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Evaluate again (time passed, the tip moved, a freeze was set): one request, or every
    /// open one with --all (prints the requests whose state changed).
    Reevaluate {
        /// Request id.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every open request.
        #[arg(long)]
        all: bool,
    },
    /// Cancel a request and release its coins.
    Cancel {
        /// Request id.
        #[arg(long)]
        id: String,
        /// Who cancels.
        #[arg(long)]
        by: String,
    },
    /// Replace a request not yet signed by one at a higher fee rate (same outputs, same
    /// coins); the new request needs new approvals.
    Bump {
        /// The request to replace.
        #[arg(long)]
        id: String,
        /// The new fee rate in sat/vB.
        #[arg(long)]
        fee_rate: u32,
        /// Who asks for the bump.
        #[arg(long)]
        initiator: String,
        /// The new request's id (default: random).
        #[arg(long)]
        new_id: Option<String>,
    },
    /// List requests.
    List {
        /// Only this vault.
        #[arg(long)]
        vault: Option<String>,
    },
    /// Submit officers' signed PSBTs (from Core, hardware wallets, `treasury officer sign`):
    /// each new partial signature is verified on arrival; prints the PSBT signed so far.
    SubmitPsbt {
        /// Request id.
        #[arg(long)]
        id: String,
        /// Who submits (recorded).
        #[arg(long)]
        by: String,
        /// PSBT files (base64).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The policy signer process (`--signer <socket>`, `treasury signer serve`) adds the
    /// policy key's signature if its own state allows it; prints the PSBT signed so far.
    SignPolicy {
        /// Request id.
        #[arg(long)]
        id: String,
    },
    /// Print the request's PSBT with every signature accepted so far.
    Psbt {
        /// Request id.
        #[arg(long)]
        id: String,
    },
    /// Finalize (every input verified), test with the node, broadcast; prints the txid.
    Broadcast {
        /// Request id.
        #[arg(long)]
        id: String,
    },
    /// Sync the vault and record the transaction's confirmations; releases the coins once
    /// confirmed.
    Follow {
        /// Request id.
        #[arg(long)]
        id: String,
    },
}

/// Freeze or lift on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FreezeActionArg {
    /// Stop every spend.
    Freeze,
    /// Resume spends (needs the admin quorum).
    Lift,
}

/// `treasury freeze` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum FreezeCommand {
    /// Print an order for admins to sign (`treasury officer sign-order`).
    Order {
        /// Freeze or lift.
        #[arg(long, value_enum)]
        action: FreezeActionArg,
        /// Why (recorded in the ledger).
        #[arg(long)]
        reason: String,
    },
    /// Freeze the reserve: the order and one admin's signature.
    Set {
        /// The freeze order (JSON).
        order: PathBuf,
        /// Admin signature files.
        #[arg(required = true)]
        sigs: Vec<PathBuf>,
    },
    /// Lift the freeze: the order and the admin quorum's signatures.
    Lift {
        /// The lift order (JSON).
        order: PathBuf,
        /// Admin signature files.
        #[arg(required = true)]
        sigs: Vec<PathBuf>,
    },
    /// Print the freeze state.
    Show,
}

/// A request in plain words.
pub fn describe(v: &EvaluatedSpend) -> String {
    let r = &v.stored.request;
    let mut out = format!(
        "request {} vault {} initiator {} state {}\n",
        r.id, r.vault, r.initiator, r.state
    );
    out.push_str(&format!(
        "txid {} amount {} sat fee {} sat (at least {} sat/vB once signed)\n",
        r.txid,
        r.amount.to_sat(),
        r.subject.fee.to_sat(),
        r.fee_rate.to_sat_per_vb_floor()
    ));
    out.push_str(&format!(
        "policy {} (\"{}\" version {})\n",
        r.policy_hash,
        v.policy.name(),
        v.policy.version()
    ));
    let height = r
        .subject
        .expires_at_height
        .map_or(String::new(), |h| format!(" or at height {h}"));
    out.push_str(&format!(
        "approvals expire at {}{height}\n",
        utc(r.subject.expires_at_ms)
    ));
    out.push_str(&format!(
        "verdict: {}\n",
        verdict_text(&v.evaluation, v.context.now_ms)
    ));
    for a in r.approvals.iter().chain(&r.rejections) {
        out.push_str(&format!(
            "{:?} by {} received {}\n",
            a.approval.decision,
            a.approval.approver,
            utc(a.received_ms)
        ));
    }
    for (who, why) in &v.evaluation.ignored {
        out.push_str(&format!("not counted: {who}: {why:?}\n"));
    }
    if let Some(t) = v.stored.request.ready_at_ms {
        out.push_str(&format!("ready at {}\n", utc(t)));
    }
    out.push_str(&format!("psbt {}\n", r.psbt));
    out
}

async fn service(opts: &VaultOpts) -> Result<SpendService, String> {
    let ledger = LedgerStore::open(&opts.db)
        .await
        .map_err(|e| e.to_string())?;
    Ok(SpendService::new(VaultService::new(ledger)))
}

/// Runs a `treasury spend` command; returns what to print on standard output.
///
/// # Errors
/// A message for standard error; nothing is stored on error.
pub fn run_spend(opts: &VaultOpts, clock: &ClockOpts, cmd: SpendCommand) -> Result<String, String> {
    runtime()?.block_on(async {
        let svc = service(opts).await?;
        let out = spend_db(opts, clock, &svc, cmd).await;
        svc.vaults.ledger.close().await;
        out
    })
}

async fn spend_db(
    opts: &VaultOpts,
    clock: &ClockOpts,
    svc: &SpendService,
    cmd: SpendCommand,
) -> Result<String, String> {
    let at = clock.at();
    let e = |e: crate::service::spend::SpendServiceError| e.to_string();
    match cmd {
        SpendCommand::Create {
            vault,
            to,
            fee_rate,
            initiator,
            id,
            memo,
            confirmations,
        } => {
            let payments = to
                .iter()
                .map(|p| Payment::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let c = CreateSpend {
                id,
                vault,
                initiator,
                payments,
                fee_rate: FeeRate::from_sat_per_vb_u32(fee_rate),
                memo: memo.map(String::into_bytes),
                confirmations_required: confirmations,
            };
            let mut rng = rand::rngs::OsRng;
            let stored = svc
                .create(&c, &opts.caps(), at, &mut rng)
                .await
                .map_err(e)?;
            let v = svc.show(&stored.request.id, at).await.map_err(e)?;
            Ok(describe(&v))
        }
        SpendCommand::Show { id, json } => {
            let v = svc.show(&id, at).await.map_err(e)?;
            if json {
                let text = serde_json::to_string_pretty(&v.request_file())
                    .map_err(|e| format!("cannot print the request: {e}"))?;
                Ok(format!("{text}\n"))
            } else {
                Ok(describe(&v))
            }
        }
        SpendCommand::Approve { id, files } => {
            for f in &files {
                let a: Approval = read_json(f)?;
                svc.approve(&id, a, at)
                    .await
                    .map_err(|e| format!("{}: {e}", f.display()))?;
            }
            // With --signer the policy signer process is told at once (its delays count from
            // when it first sees an approval).
            if let Some(client) = opts.signer.client() {
                // The approvals are recorded; a signer that cannot be told now counts them from
                // when it first sees them (the safe direction).
                if let Err(err) = svc.forward_approvals(&id, &client).await {
                    eprintln!("warning: the policy signer was not told about the approvals: {err}");
                }
            }
            let v = svc.show(&id, at).await.map_err(e)?;
            Ok(describe(&v))
        }
        SpendCommand::Reevaluate { id: Some(id), .. } => {
            svc.reevaluate(&id, at).await.map_err(e)?;
            let v = svc.show(&id, at).await.map_err(e)?;
            Ok(describe(&v))
        }
        SpendCommand::Reevaluate { id: None, .. } => Ok(svc
            .reevaluate_open(at)
            .await
            .map_err(e)?
            .iter()
            .map(|(id, state)| format!("{id} {state}\n"))
            .collect()),
        SpendCommand::Cancel { id, by } => {
            let s = svc.cancel(&id, &by, at).await.map_err(e)?;
            Ok(format!("request {} {}\n", s.request.id, s.request.state))
        }
        SpendCommand::Bump {
            id,
            fee_rate,
            initiator,
            new_id,
        } => {
            let b = Bump {
                old_id: id,
                new_id,
                fee_rate: FeeRate::from_sat_per_vb_u32(fee_rate),
                initiator,
            };
            let mut rng = rand::rngs::OsRng;
            let stored = svc.bump(&b, &opts.caps(), at, &mut rng).await.map_err(e)?;
            let v = svc.show(&stored.request.id, at).await.map_err(e)?;
            Ok(describe(&v))
        }
        SpendCommand::List { vault } => {
            let rows = svc.list(vault.as_deref()).await.map_err(e)?;
            Ok(rows
                .iter()
                .map(|(id, vault, state)| format!("{id} {vault} {state}\n"))
                .collect())
        }
        SpendCommand::SubmitPsbt { id, by, files } => {
            for f in &files {
                let psbt = read_psbt(f)?;
                svc.submit_psbt(&id, psbt, &by, at)
                    .await
                    .map_err(|err| format!("{}: {err}", f.display()))?;
            }
            let signed = svc.signed_psbt(&id).await.map_err(|err| err.to_string())?;
            Ok(format!("{}\n", signed.psbt))
        }
        SpendCommand::SignPolicy { id } => {
            let client = opts.signer.require()?;
            sign_policy_with(svc, &id, &client, at).await
        }
        SpendCommand::Psbt { id } => {
            let signed = svc.signed_psbt(&id).await.map_err(|err| err.to_string())?;
            Ok(format!("{}\n", signed.psbt))
        }
        SpendCommand::Broadcast { id } => {
            let node = opts.node()?;
            let txid = svc
                .broadcast(&id, &node, at)
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!("{txid}\n"))
        }
        SpendCommand::Follow { id } => {
            let node = opts.node()?;
            let s = svc
                .follow(&id, &node, at)
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!(
                "request {} {} ({} confirmations)\n",
                s.request.id, s.request.state, s.request.confirmations
            ))
        }
    }
}

/// The policy signer process signs request `id`; returns the PSBT signed so far.
async fn sign_policy_with(
    svc: &SpendService,
    id: &str,
    signer: &::signer::SignerClient,
    at: At,
) -> Result<String, String> {
    let receipt = svc
        .policy_sign(id, signer, at)
        .await
        .map_err(|err| err.to_string())?;
    let s = &receipt.spend;
    eprintln!(
        "policy signer {} signed inputs {:?} of {} (tier {}, counted {})",
        signer.endpoint(),
        s.inputs,
        s.txid,
        s.tier.as_deref().unwrap_or("-"),
        s.counted.join(", ")
    );
    let signed = svc.signed_psbt(id).await.map_err(|err| err.to_string())?;
    Ok(format!("{}\n", signed.psbt))
}

/// Runs a `treasury freeze` command; returns what to print on standard output.
///
/// # Errors
/// A message for standard error; nothing is stored on error.
pub fn run_freeze(
    opts: &VaultOpts,
    clock: &ClockOpts,
    cmd: FreezeCommand,
) -> Result<String, String> {
    runtime()?.block_on(async {
        let svc = service(opts).await?;
        let client = opts.signer.client();
        let out = freeze_db(clock, &svc, client.as_ref(), cmd).await;
        svc.vaults.ledger.close().await;
        out
    })
}

async fn freeze_db(
    clock: &ClockOpts,
    svc: &SpendService,
    client: Option<&::signer::SignerClient>,
    cmd: FreezeCommand,
) -> Result<String, String> {
    let now = clock.at().now_ms;
    let g = &svc.governance;
    let e = |e: crate::service::governance::GovernanceStoreError| e.to_string();
    match cmd {
        FreezeCommand::Order { action, reason } => {
            let action = match action {
                FreezeActionArg::Freeze => FreezeAction::Freeze,
                FreezeActionArg::Lift => FreezeAction::Lift,
            };
            let o = g.freeze_order(action, &reason, now).await.map_err(e)?;
            let text = serde_json::to_string_pretty(&OrderFile::Freeze(o))
                .map_err(|e| format!("cannot print the order: {e}"))?;
            Ok(format!("{text}\n"))
        }
        FreezeCommand::Set { order, sigs } => {
            apply_order(g, client, now, &order, &sigs, FreezeAction::Freeze).await
        }
        FreezeCommand::Lift { order, sigs } => {
            apply_order(g, client, now, &order, &sigs, FreezeAction::Lift).await
        }
        FreezeCommand::Show => {
            let s = g.freeze_state().await.map_err(e)?;
            Ok(format!(
                "{} (orders applied {}{})\n",
                if s.frozen { "frozen" } else { "not frozen" },
                s.seq,
                s.since_ms
                    .map_or(String::new(), |t| format!(", since {}", utc(t)))
            ))
        }
    }
}

/// Applies a freeze or lift order in the service and, with `--signer`, submits it to the
/// policy signer process, which verifies it against its own policy and state (ADR 0017).
async fn apply_order(
    g: &crate::service::governance::Governance,
    signer: Option<&::signer::SignerClient>,
    now: i64,
    order: &std::path::Path,
    sigs: &[PathBuf],
    want: FreezeAction,
) -> Result<String, String> {
    let o: OrderFile = read_json(order)?;
    let OrderFile::Freeze(o) = o else {
        return Err(format!("{}: not a freeze order", order.display()));
    };
    if o.action != want {
        return Err(format!(
            "{}: the order says {:?}",
            order.display(),
            o.action
        ));
    }
    let sigs = sigs
        .iter()
        .map(|p| read_json::<AdminSignature>(p))
        .collect::<Result<Vec<_>, _>>()?;
    let state = g
        .apply_freeze(&o, &sigs, now)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(client) = signer {
        client.submit_freeze(&o, &sigs).await.map_err(|e| {
            format!("the service applied the order, the policy signer did not: {e}")
        })?;
    }
    Ok(format!(
        "{} (orders applied {})\n",
        if state.frozen { "frozen" } else { "not frozen" },
        state.seq
    ))
}
