//! `regtest-node`: find or build Bitcoin Core, or run a throwaway regtest node.
//!
//! `regtest-node ensure` prints `BITCOIND_EXE=<path>` (and `BITCOIN_CLI_EXE=<path>`) on standard
//! output once the binaries exist, building them first if needed (progress on standard error);
//! `scripts/test` reads that. `regtest-node run` starts an isolated node and waits until it stops.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    // Ctrl-C reaches bitcoind too (same process group) and it shuts down by itself; SIGTERM to
    // this process alone is forwarded as the `stop` rpc. Either way we return normally, so the
    // temporary datadir is removed.
    let stop_requested = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop_requested)).map_err(|source| {
            regtest::Error::Io {
                what: "install a signal handler".into(),
                source,
            }
        })?;
    }
    let mut node = regtest::RegtestNode::start()?;
    let (user, password) = node.credentials()?;
    println!("rpc url:     {}", node.rpc_url());
    println!("rpc user:    {user}");
    println!("rpc pass:    {password}");
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
    while node.is_running() {
        if stop_requested.load(Ordering::Relaxed) {
            eprintln!("stopping the node");
            return node.stop();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("the node has stopped");
    Ok(())
}
