//! Finds or builds Bitcoin Core, and runs isolated regtest nodes for tests and the demo.
//!
//! Why: every wallet, proof and signing flow of the reserve is tested against a real Bitcoin
//! Core node, never a fake. No Debian or PyPI package ships `bitcoind` and release downloads are
//! unreachable on our machines, so [`ensure_bitcoind`] builds it once from the Bitcoin Core
//! source that the crates.io package `libbitcoinkernel-sys` ships, into a cache outside the
//! repository. [`RegtestNode`] starts an isolated node (temporary datadir, free RPC port, no P2P)
//! and stops it when dropped, also when a test panics.
//!
//! Tests that need an optional real part call [`require`] (or [`node_or_skip`]): on a user's
//! machine a missing part is a printed skip; when CI sets `TREASURY_REQUIRE_<PART>=1` it is a
//! failure.
//!
//! # Environment
//! - `BITCOIND_EXE`, `BITCOIN_CLI_EXE`: use these binaries (a user's own Bitcoin Core); else
//!   `PATH`, else the cache [`cache_dir`] (under `$XDG_CACHE_HOME`, default `~/.cache`).
//! - `TREASURY_REQUIRE_BITCOIND=1`: a missing `bitcoind` fails tests instead of skipping them.
//! - `TREASURY_REQUIRE_POSTGRES=1` with `TREASURY_TEST_POSTGRES_URL` (e.g.
//!   `postgres://postgres@127.0.0.1:5432/test`), and `TREASURY_REQUIRE_SOFTHSM=1`: the same
//!   convention for the other real parts; check them with [`require`] and [`skip_or_fail`].
//!
//! # For tests of other crates
//! ```no_run
//! #[test]
//! fn my_test() {
//!     let Some(node) = regtest::node_or_skip("my_test") else {
//!         return;
//!     };
//!     let address = node.new_address();
//!     node.mine_blocks(101, &address).unwrap();
//!     let (tip, height) = node.tip().unwrap();
//!     // Untyped calls are robust to Bitcoin Core's changes of response fields.
//!     let info = node.rpc("getblockchaininfo", &[]).unwrap();
//!     // Its own client, e.g. for another thread; or node.rpc_url() with node.credentials().
//!     let client = node.new_client().unwrap();
//! }
//! ```
#![forbid(unsafe_code)]

mod locate;
mod node;

pub use bitcoincore_rpc;
pub use bitcoincore_rpc::bitcoin;
pub use locate::{cache_dir, ensure_bitcoind, find_bitcoind, Binaries, BITCOIN_SOURCE_PACKAGE};
pub use node::{node_or_skip, test_key, RegtestNode};

/// Errors of finding, building and running Bitcoin Core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `bitcoind` in `BITCOIND_EXE`, `PATH` or the cache.
    #[error("bitcoind not found (looked in BITCOIND_EXE, PATH and {cache}); run `cargo run -p regtest --bin regtest-node -- ensure` to build it")]
    NotFound {
        /// The cache directory that was searched.
        cache: String,
    },
    /// `BITCOIND_EXE` points at something that is not a file.
    #[error("BITCOIND_EXE={0} is not an executable file")]
    BadEnvPath(String),
    /// Tools needed to build Bitcoin Core are missing.
    #[error(
        "cannot build bitcoind: missing {missing}; install them with `apt-get install {packages}`"
    )]
    MissingBuildTools {
        /// What was looked for and not found.
        missing: String,
        /// The Debian packages that provide them.
        packages: String,
    },
    /// A build step failed.
    #[error("building bitcoind failed at step `{step}`: {detail}")]
    Build {
        /// The step (fetch, configure, build, install).
        step: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// An I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The node exited before its RPC server answered.
    #[error("bitcoind exited during start-up ({status}); end of its debug.log:\n{log_tail}")]
    Exited {
        /// The exit status.
        status: String,
        /// The last lines of the node's debug.log.
        log_tail: String,
    },
    /// The node did not answer RPC within the start-up timeout.
    #[error("bitcoind did not answer rpc within {secs} s; end of its debug.log:\n{log_tail}")]
    StartTimeout {
        /// Seconds waited.
        secs: u64,
        /// The last lines of the node's debug.log.
        log_tail: String,
    },
    /// An RPC call failed (the node is down, or it refused the call).
    #[error("rpc {method} failed: {source}")]
    Rpc {
        /// The RPC method.
        method: String,
        /// The client's error.
        source: bitcoincore_rpc::Error,
    },
    /// A wait for a condition on the node ran out of time.
    #[error("timed out after {secs} s waiting for {what}")]
    WaitTimeout {
        /// What was awaited.
        what: String,
        /// Seconds waited.
        secs: u64,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Whether the optional real part `part` (e.g. `"bitcoind"`, `"postgres"`, `"softhsm"`) is
/// mandatory in this run: true when `TREASURY_REQUIRE_<PART>` is `1` (CI sets these).
///
/// A test that cannot reach an optional part prints why and returns when this is false, and
/// fails when it is true.
pub fn require(part: &str) -> bool {
    let var = format!("TREASURY_REQUIRE_{}", part.to_ascii_uppercase());
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Reports that the optional real part `part` is unavailable to `test` because of `reason`:
/// prints a skip line and returns when the part is optional, panics when
/// `TREASURY_REQUIRE_<PART>=1` makes it mandatory. Call it, then `return` from the test.
///
/// ```no_run
/// # fn connect(_: &str) -> Result<(), String> { Ok(()) }
/// let Ok(url) = std::env::var("TREASURY_TEST_POSTGRES_URL") else {
///     regtest::skip_or_fail("postgres", "my_test", &"TREASURY_TEST_POSTGRES_URL is not set");
///     return;
/// };
/// # let _ = connect(&url);
/// ```
///
/// # Panics
/// When the part is required (see [`require`]).
#[allow(clippy::panic)]
pub fn skip_or_fail(part: &str, test: &str, reason: &dyn std::fmt::Display) {
    let var = format!("TREASURY_REQUIRE_{}", part.to_ascii_uppercase());
    if require(part) {
        panic!("{test}: {part} is required ({var}=1) but unavailable: {reason}");
    }
    eprintln!("skipping {test}: {part} unavailable: {reason} (set {var}=1 to make this a failure)");
}
