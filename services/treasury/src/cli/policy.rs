//! `treasury policy ...`: check a policy document, print its content address, and simulate a
//! decision offline (the same `policies::evaluate` the service and the policy signer run); and
//! the governance of the versions in the database: install the first one, propose a new one,
//! record admin approvals and vetoes, activate changes whose delay has passed.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use policies::freeze::AdminSignature;
use policies::Policy;

use crate::cli::io::read;
use crate::cli::io::read_json;
use crate::files::order_file::OrderFile;
use crate::service::governance::{ApproveOutcome, Governance, PolicyVersion, VersionStatus};

/// Database and clock of the governance commands.
#[derive(Debug, Clone, Args)]
pub struct GovOpts {
    /// Database URL: sqlite://PATH or postgres://...
    #[arg(long, env = "TREASURY_DB", default_value = crate::cli::opts::DEFAULT_DB)]
    pub db: String,
    /// The service's clock in Unix milliseconds (drills and tests; default: the system clock).
    #[arg(long, env = "TREASURY_NOW_MS", hide = true)]
    pub now_ms: Option<i64>,
}

impl GovOpts {
    fn now(&self) -> i64 {
        self.now_ms.unwrap_or_else(crate::clock::now_ms)
    }
}

/// `treasury policy` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Install the first policy version of the service (refused once one is active).
    Init {
        /// The policy (TOML).
        file: PathBuf,
        /// Who installs it (recorded).
        #[arg(long)]
        by: String,
        /// Database and clock.
        #[command(flatten)]
        opts: GovOpts,
    },
    /// Propose a new version; prints the change order admins sign (`officer sign-order`).
    Propose {
        /// The new policy (TOML).
        file: PathBuf,
        /// Who proposes it (recorded).
        #[arg(long)]
        by: String,
        /// Database and clock.
        #[command(flatten)]
        opts: GovOpts,
    },
    /// Record admin signatures of a change order; with the admin quorum a tightening
    /// activates at once, a loosening after the loosening delay.
    ApproveProposal {
        /// The change order (JSON from `propose`).
        #[arg(long)]
        order: PathBuf,
        /// Admin signature files.
        #[arg(required = true)]
        sigs: Vec<PathBuf>,
        /// Database and clock.
        #[command(flatten)]
        opts: GovOpts,
    },
    /// Veto a proposed or accepted change before it activates (one admin's veto signature).
    Veto {
        /// The change order (JSON from `propose`).
        #[arg(long)]
        order: PathBuf,
        /// The admin's veto signature (`officer sign-order --veto`).
        sig: PathBuf,
        /// Database and clock.
        #[command(flatten)]
        opts: GovOpts,
    },
    /// Activate accepted changes whose delay has passed.
    Activate {
        /// Database and clock.
        #[command(flatten)]
        opts: GovOpts,
    },
    /// Print the active version (hash, version, name) and the open proposals.
    Active {
        /// Database and clock.
        #[command(flatten)]
        opts: GovOpts,
    },
    /// Print every version with its status.
    History {
        /// Database and clock.
        #[command(flatten)]
        opts: GovOpts,
    },
    /// Parse and validate a policy file; errors name the field.
    Check {
        /// The policy (TOML).
        file: PathBuf,
    },
    /// Print the policy's canonical hash (its content address).
    Hash {
        /// The policy (TOML).
        file: PathBuf,
    },
    /// Evaluate a request (JSON) against a policy and print the decision with what is missing.
    Simulate {
        /// The policy (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// The request, its history, approvals and context (JSON, see docs/policies.md).
        #[arg(long)]
        request: PathBuf,
    },
}

fn load_policy(path: &std::path::Path) -> Result<Policy, String> {
    Policy::from_toml(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs a `treasury policy` command; returns what to print on standard output.
///
/// # Errors
/// A message naming the file and field at fault.
pub fn run_policy(cmd: PolicyCommand) -> Result<String, String> {
    match cmd {
        PolicyCommand::Init { .. }
        | PolicyCommand::Propose { .. }
        | PolicyCommand::ApproveProposal { .. }
        | PolicyCommand::Veto { .. }
        | PolicyCommand::Activate { .. }
        | PolicyCommand::Active { .. }
        | PolicyCommand::History { .. } => run_governance(cmd),
        PolicyCommand::Check { file } => {
            let p = load_policy(&file)?;
            Ok(format!(
                "ok: policy {:?} version {} hash {}\n",
                p.name(),
                p.version(),
                p.hash()
            ))
        }
        PolicyCommand::Hash { file } => Ok(format!("{}\n", load_policy(&file)?.hash())),
        PolicyCommand::Simulate { policy, request } => {
            let p = load_policy(&policy)?;
            let eval = crate::service::policy::simulate(&p, &read(&request)?)
                .map_err(|e| format!("{}: {e}", request.display()))?;
            let text = serde_json::to_string_pretty(&eval)
                .map_err(|e| format!("cannot print the evaluation: {e}"))?;
            Ok(format!("{text}\n"))
        }
    }
}

fn describe_version(v: &PolicyVersion) -> String {
    let mut s = format!(
        "{} {} version {} \"{}\"",
        v.status,
        v.hash,
        v.policy.version(),
        v.policy.name()
    );
    if let Some(k) = v.kind {
        s.push_str(&format!(" {k:?}").to_lowercase());
    }
    if let (VersionStatus::Accepted, Some(t)) = (v.status, v.activates_at_ms) {
        s.push_str(&format!(
            " activates at {} ({t} ms)",
            crate::service::render::utc(t)
        ));
    }
    if !v.loosened.is_empty() {
        s.push_str(&format!(" loosens: {}", v.loosened.join("; ")));
    }
    s.push('\n');
    s
}

fn run_governance(cmd: PolicyCommand) -> Result<String, String> {
    let opts = match &cmd {
        PolicyCommand::Init { opts, .. }
        | PolicyCommand::Propose { opts, .. }
        | PolicyCommand::ApproveProposal { opts, .. }
        | PolicyCommand::Veto { opts, .. }
        | PolicyCommand::Activate { opts }
        | PolicyCommand::Active { opts }
        | PolicyCommand::History { opts } => opts.clone(),
        _ => return Err("not a governance command".into()),
    };
    let now = opts.now();
    crate::cli::opts::runtime()?.block_on(async {
        let ledger = crate::store::LedgerStore::open(&opts.db)
            .await
            .map_err(|e| e.to_string())?;
        let g = Governance::new(ledger);
        let out = governance_db(&g, cmd, now).await;
        g.ledger.close().await;
        out
    })
}

async fn governance_db(g: &Governance, cmd: PolicyCommand, now: i64) -> Result<String, String> {
    let e = |e: crate::service::governance::GovernanceStoreError| e.to_string();
    let change_order = |path: &PathBuf| -> Result<policies::governance::ChangeOrder, String> {
        match read_json::<OrderFile>(path)? {
            OrderFile::Change(c) => Ok(c),
            OrderFile::Freeze(_) => Err(format!("{}: not a policy change order", path.display())),
        }
    };
    match cmd {
        PolicyCommand::Init { file, by, .. } => {
            let v = g.init(&read(&file)?, &by, now).await.map_err(e)?;
            Ok(describe_version(&v))
        }
        PolicyCommand::Propose { file, by, .. } => {
            let v = g.propose(&read(&file)?, &by, now).await.map_err(e)?;
            eprint!("{}", describe_version(&v));
            let order = v
                .order()
                .ok_or_else(|| "the proposal has no change order".to_string())?;
            let text = serde_json::to_string_pretty(&OrderFile::Change(order))
                .map_err(|e| format!("cannot print the order: {e}"))?;
            Ok(format!("{text}\n"))
        }
        PolicyCommand::ApproveProposal { order, sigs, .. } => {
            let o = change_order(&order)?;
            let sigs = sigs
                .iter()
                .map(|p| read_json::<AdminSignature>(p))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(match g.approve(&o, &sigs, now).await.map_err(e)? {
                ApproveOutcome::Waiting { signed, need } => format!(
                    "waiting: signed by {} of {need} admins needed ({})\n",
                    signed.len(),
                    signed.join(", ")
                ),
                ApproveOutcome::Accepted { activates_at_ms } => format!(
                    "accepted: a loosening; activates at {} ({activates_at_ms} ms) unless vetoed\n",
                    crate::service::render::utc(activates_at_ms)
                ),
                ApproveOutcome::Activated => format!("activated: {} is in force\n", o.proposed),
            })
        }
        PolicyCommand::Veto { order, sig, .. } => {
            let o = change_order(&order)?;
            let s: AdminSignature = read_json(&sig)?;
            g.veto(&o, &[s], now).await.map_err(e)?;
            Ok(format!("vetoed: {}\n", o.proposed))
        }
        PolicyCommand::Activate { .. } => {
            let done = g.activate_due(now).await.map_err(e)?;
            if done.is_empty() {
                return Ok("nothing to activate\n".into());
            }
            Ok(done
                .iter()
                .map(|(old, new)| format!("activated {new} (was {old})\n"))
                .collect())
        }
        PolicyCommand::Active { .. } => {
            let active = g.active(now).await.map_err(e)?;
            let mut out = describe_version(&active);
            for v in g.history().await.map_err(e)? {
                if matches!(v.status, VersionStatus::Proposed | VersionStatus::Accepted) {
                    out.push_str(&describe_version(&v));
                }
            }
            Ok(out)
        }
        PolicyCommand::History { .. } => Ok(g
            .history()
            .await
            .map_err(e)?
            .iter()
            .map(describe_version)
            .collect()),
        _ => Err("not a governance command".into()),
    }
}
