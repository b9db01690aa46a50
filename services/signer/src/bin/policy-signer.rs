//! `policy-signer`: the policy signer process (ADR 0017); the commands are in [`signer::cli`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use signer::cli::{run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("policy-signer: {e}");
            ExitCode::FAILURE
        }
    }
}
