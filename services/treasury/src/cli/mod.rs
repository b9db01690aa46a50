//! The command line: every clap type and every printed line of the `treasury` binary.
//!
//! Why a folder of its own: parsing flags and formatting output are the binary's concern, not
//! the service's. Each file is one command family and calls `service/` (or, for the offline
//! tools, `files/` and `audit/`); nothing outside this folder imports from it, so the API and
//! the library never depend on how a flag is spelled. `main.rs` only parses and exits.

pub mod audit;
pub mod hsm;
pub mod io;
pub mod ledger;
pub mod officer;
pub mod opts;
pub mod policy;
pub mod reserves;
pub mod serve;
pub mod signer;
pub mod spend;
pub mod vault;

use std::io::Read;

use self::audit::{run_audit, AuditCommand};
use self::hsm::{run_hsm, HsmCommand, HsmOpts};
use self::ledger::{run_ledger, LedgerCommand, LedgerOpts};
use self::officer::{run_officer, OfficerCommand};
use self::opts::{ClockOpts, VaultOpts};
use self::policy::{run_policy, PolicyCommand};
use self::reserves::{run_reserves, ReservesCommand, ReservesOpts};
use self::serve::{run_serve, run_token, ServeOpts, TokenCommand};
use self::signer::{run_signer, SignerCommand};
use self::spend::{run_freeze, run_spend, FreezeCommand, SpendCommand};
use self::vault::{run_psbt, run_vault, PsbtCommand, VaultCommand};
use clap::{Parser, Subcommand};
use hashcore::{Backend, Engine};

/// The strategic reserve custody and treasury service.
#[derive(Debug, Parser)]
#[command(name = "treasury", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Report the SHA-256 backends this CPU supports and the one in use.
    Hashcore,
    /// Print the SHA-256 of a file (or of standard input with `-`), hashed by the hash core.
    Sha256 {
        /// The file to hash, or `-` for standard input.
        path: std::path::PathBuf,
    },
    /// The reserve ledger in the database (`--db` sqlite:// or postgres://).
    Ledger {
        #[command(flatten)]
        opts: LedgerOpts,
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Vaults: create, import, export, addresses, sync with the node, balances.
    Vault {
        #[command(flatten)]
        opts: VaultOpts,
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// PSBTs: build (with coin reservation), fee bump, release, finalize.
    Psbt {
        #[command(flatten)]
        opts: VaultOpts,
        #[command(subcommand)]
        command: PsbtCommand,
    },
    /// Spend requests: create (build, reserve, bind to the policy), show, approve, reevaluate,
    /// cancel, bump, list.
    Spend {
        #[command(flatten)]
        opts: VaultOpts,
        #[command(flatten)]
        clock: ClockOpts,
        #[command(subcommand)]
        command: SpendCommand,
    },
    /// The emergency freeze: any one admin sets it, the admin quorum lifts it.
    Freeze {
        #[command(flatten)]
        opts: VaultOpts,
        #[command(flatten)]
        clock: ClockOpts,
        #[command(subcommand)]
        command: FreezeCommand,
    },
    /// The HSM policy key: key ceremony (`init`) and `list`.
    Hsm {
        #[command(flatten)]
        opts: HsmOpts,
        #[command(subcommand)]
        command: HsmCommand,
    },
    /// Spending policies: check, hash, simulate; the versions in force and their governance.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// An officer's own key, offline: keygen, show, sign PSBTs.
    Officer {
        #[command(subcommand)]
        command: OfficerCommand,
    },
    /// Proofs of reserves and liabilities: build the liabilities tree and its proofs.
    Reserves {
        #[command(flatten)]
        opts: ReservesOpts,
        #[command(subcommand)]
        command: ReservesCommand,
    },
    /// Serve the HTTPS API (`--config FILE`; Ctrl-C or SIGTERM stops it gracefully).
    Serve {
        #[command(flatten)]
        opts: ServeOpts,
    },
    /// The policy signer as its own process (ADR 0017): `init`, `serve`, `status`; the same
    /// commands as the `policy-signer` binary.
    Signer {
        #[command(subcommand)]
        command: SignerCommand,
    },
    /// Print the API's OpenAPI 3.1 document (docs/openapi.json is this output).
    Openapi,
    /// API tokens: create (printed once, stored as a hash).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Offline verification of a ledger export, proofs and checkpoints (no database).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The whole reserve on this machine: a regtest node, database, TLS, HSM keys, officers,
    /// a funded vault and the API, with copy-paste commands; Ctrl-C stops it, a second run
    /// continues where the first ended.
    Demo {
        /// The demo directory (default: ~/.local/share/strategic-reserve/demo).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Where the API listens (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// Set up and print, then stop instead of serving (scripts and tests).
        #[arg(long)]
        exit_after_setup: bool,
        /// Keep the policy key in a software keystore even when SoftHSM2 is installed (what a
        /// machine without SoftHSM2 gets; NOT an HSM). A demo directory keeps the holder it was
        /// created with.
        #[arg(long)]
        software_key: bool,
    },
}

/// Runs one parsed command line; what it prints goes to standard output, an error is returned
/// as the line `main` prints.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Ledger { opts, command } => {
            print!("{}", run_ledger(&opts, command)?);
            Ok(())
        }
        Command::Vault { opts, command } => {
            print!("{}", run_vault(&opts, command)?);
            Ok(())
        }
        Command::Psbt { opts, command } => {
            print!("{}", run_psbt(&opts, command)?);
            Ok(())
        }
        Command::Spend {
            opts,
            clock,
            command,
        } => {
            print!("{}", run_spend(&opts, &clock, command)?);
            Ok(())
        }
        Command::Freeze {
            opts,
            clock,
            command,
        } => {
            print!("{}", run_freeze(&opts, &clock, command)?);
            Ok(())
        }
        Command::Hsm { opts, command } => {
            print!("{}", run_hsm(&opts, command)?);
            Ok(())
        }
        Command::Policy { command } => {
            print!("{}", run_policy(command)?);
            Ok(())
        }
        Command::Officer { command } => {
            print!("{}", run_officer(command)?);
            Ok(())
        }
        Command::Reserves { opts, command } => {
            print!("{}", run_reserves(&opts, command)?);
            Ok(())
        }
        Command::Serve { opts } => run_serve(&opts),
        Command::Signer { command } => run_signer(&command),
        Command::Openapi => {
            print!("{}", crate::api::openapi::openapi_json());
            Ok(())
        }
        Command::Token { command } => {
            print!("{}", run_token(command)?);
            Ok(())
        }
        Command::Audit { command } => {
            print!("{}", run_audit(command)?);
            Ok(())
        }
        Command::Demo {
            dir,
            listen,
            exit_after_setup,
            software_key,
        } => {
            let opts = crate::demo::DemoOptions {
                dir: dir.unwrap_or_else(crate::demo::DemoOptions::default_dir),
                listen,
                exit_after_setup,
                software_key,
            };
            crate::demo::run(&opts).map_err(|e| e.to_string())
        }
        Command::Hashcore => {
            for b in Backend::ALL {
                let status = match Engine::forced(b) {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.to_string(),
                };
                println!("{:<9} {status}", b.name());
            }
            println!("in use: {}", Engine::auto().backend());
            Ok(())
        }
        Command::Sha256 { path } => {
            let mut hasher = hashcore::Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut reader: Box<dyn Read> = if path.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(
                    std::fs::File::open(&path)
                        .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
                )
            };
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            println!("{}  {}", hex::encode(hasher.finalize()), path.display());
            Ok(())
        }
    }
}
