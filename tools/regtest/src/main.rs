//! `regtest-node`: find or build Bitcoin Core, or run a throwaway regtest node.
//!
//! `regtest-node ensure` prints `BITCOIND_EXE=<path>` (and `BITCOIN_CLI_EXE=<path>`) on standard
//! output once the binaries exist, building them first if needed (progress on standard error);
//! `scripts/test` reads that. `regtest-node run` starts an isolated node and waits until it stops.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: regtest-node ensure | run");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["ensure"] => regtest::ensure_bitcoind().map(|b| {
            println!("BITCOIND_EXE={}", b.bitcoind.display());
            if let Some(cli) = b.bitcoin_cli {
                println!("BITCOIN_CLI_EXE={}", cli.display());
            }
        }),
        ["run"] => run(),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), regtest::Error> {
    let mut node = regtest::RegtestNode::start()?;
    println!("rpc url:     {}", node.rpc_url());
    println!("cookie file: {}", node.cookie_file().display());
    println!("datadir:     {}", node.datadir().display());
    if let Some(cli) = &node.binaries().bitcoin_cli {
        println!(
            "try:         {} -regtest -rpcport={} -rpccookiefile={} getblockchaininfo",
            cli.display(),
            node.rpc_port(),
            node.cookie_file().display()
        );
    }
    println!("stop with Ctrl-C or the `stop` rpc");
    node.wait()
}
