//! `treasury`: the command-line entry point of the reserve service.
//!
//! `serve` runs the HTTPS API (`token` creates its tokens); the rest reports on the hash core
//! every other part stands on, runs the reserve ledger (`ledger`), the vaults and the PSBT builder
//! (`vault`, `psbt`), spend requests (`spend`), policies and their governance (`policy`), the
//! freeze (`freeze`), officers' offline tools (`officer`), the liabilities tree (`reserves`),
//! and verifies a ledger and liability proofs offline (`audit`); `demo` runs all of it on one
//! machine.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use treasury::cli::{run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
