//! An isolated regtest node: temporary datadir, free RPC and P2P ports on loopback, no P2P
//! listening, cookie authentication.
//!
//! Why these choices: tests run in parallel (cargo test threads, several crates at once), so
//! every node gets its own datadir and ports and never talks to another node or the network.
//! The node is stopped by `Drop`, which also runs when a test panics; the process stays in the
//! test's process group, so a Ctrl-C of the test run reaches it too.
//!
//! The demo needs a node whose chain outlives the process (a second run reuses it):
//! [`RegtestNode::start_in`] runs the same isolated node on a datadir the caller keeps.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bitcoincore_rpc::bitcoin::hashes::{sha256, Hash};
use bitcoincore_rpc::bitcoin::secp256k1::Secp256k1;
use bitcoincore_rpc::bitcoin::{Address, BlockHash, CompressedPublicKey, Network, PrivateKey};
use bitcoincore_rpc::{Auth, Client, RpcApi};

use crate::{find_bitcoind, skip_or_fail, Binaries, Error};

const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running regtest node that is stopped (RPC `stop`, then killed if needed) when dropped,
/// also when a test panics.
pub struct RegtestNode {
    child: Option<Child>,
    datadir: DataDir,
    rpc_port: u16,
    p2p_port: u16,
    next_key: AtomicU64,
    client: Client,
    binaries: Binaries,
}

/// Where a node keeps its chain: a temporary directory removed on drop, or one the caller keeps.
enum DataDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Kept(p) => p,
        }
    }
}

impl std::fmt::Debug for RegtestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegtestNode")
            .field("rpc_url", &self.rpc_url())
            .field("datadir", &self.datadir.path())
            .finish_non_exhaustive()
    }
}

/// A node for a test, or `None` with a printed reason when `bitcoind` cannot be found and
/// `TREASURY_REQUIRE_BITCOIND=1` is not set.
///
/// # Panics
/// When the node is required (CI) but cannot be found or started; when it is found but fails
/// to start (that is a real failure, not a missing part).
#[allow(clippy::panic)]
pub fn node_or_skip(test: &str) -> Option<RegtestNode> {
    if let Err(e) = find_bitcoind() {
        skip_or_fail("bitcoind", test, &e);
        return None;
    }
    match RegtestNode::start() {
        Ok(node) => Some(node),
        Err(e) => panic!("{test}: cannot start a regtest node: {e}"),
    }
}

fn free_port() -> Result<u16, Error> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("bind a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("read the free port", e))
}

fn log_tail(datadir: &Path) -> String {
    let log = datadir.join("regtest").join("debug.log");
    match std::fs::read_to_string(&log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", log.display()),
    }
}

impl RegtestNode {
    /// Starts a node with the binaries [`find_bitcoind`] finds.
    ///
    /// # Errors
    /// When `bitcoind` cannot be found, or does not start and answer RPC in time (the error
    /// carries the end of its debug.log).
    pub fn start() -> Result<RegtestNode, Error> {
        let binaries = find_bitcoind()?;
        // A port picked here can be taken by another process before bitcoind binds it; a few
        // attempts make that race harmless.
        let mut last = None;
        for _ in 0..3 {
            match Self::start_with(binaries.clone()) {
                Ok(node) => return Ok(node),
                Err(e @ Error::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::WaitTimeout {
            what: "a free port".into(),
            secs: 0,
        }))
    }

    /// Starts a node with the given binaries.
    ///
    /// # Errors
    /// As [`RegtestNode::start`].
    pub fn start_with(binaries: Binaries) -> Result<RegtestNode, Error> {
        let datadir = tempfile::Builder::new()
            .prefix("regtest-node-")
            .tempdir()
            .map_err(|e| Error::io("create a temporary datadir", e))?;
        Self::spawn(binaries, DataDir::Temp(datadir))
    }

    /// Starts a node on the datadir `datadir` (created if missing) and keeps it: the chain,
    /// the indexes and the node's state survive the node and the process, so a later call on
    /// the same directory continues the same chain (the demo's second run). Each start gets
    /// fresh free ports and a fresh cookie; read them from the node, not from a file of an
    /// earlier run.
    ///
    /// # Errors
    /// As [`RegtestNode::start`]; [`Error::Exited`] also when another node already runs on
    /// `datadir` (its debug.log then says it cannot lock the directory).
    pub fn start_in(binaries: Binaries, datadir: &Path) -> Result<RegtestNode, Error> {
        std::fs::create_dir_all(datadir)
            .map_err(|e| Error::io(format!("create {}", datadir.display()), e))?;
        let mut last = None;
        for _ in 0..3 {
            match Self::spawn(binaries.clone(), DataDir::Kept(datadir.to_path_buf())) {
                Ok(node) => return Ok(node),
                Err(e @ Error::Exited { .. }) => {
                    // A second node on the same directory is not a port race: do not retry.
                    if e.to_string().contains("Cannot obtain a lock") {
                        return Err(e);
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::WaitTimeout {
            what: "a free port".into(),
            secs: 0,
        }))
    }

    fn spawn(binaries: Binaries, datadir: DataDir) -> Result<RegtestNode, Error> {
        let rpc_port = free_port()?;
        let p2p_port = free_port()?;
        let child = Command::new(&binaries.bitcoind)
            .arg("-regtest")
            .arg(format!("-datadir={}", datadir.path().display()))
            .arg(format!("-rpcport={rpc_port}"))
            // Not listening (-listen=0), but a port of its own keeps two nodes from ever
            // contending for the regtest default 18444.
            .arg(format!("-port={p2p_port}"))
            .args([
                "-server=1",
                "-listen=0",
                "-rpcbind=127.0.0.1",
                "-rpcallowip=127.0.0.1",
                "-dnsseed=0",
                "-fixedseeds=0",
                "-discover=0",
                "-listenonion=0",
                "-natpmp=0",
                "-txindex=1",
                // Lets `scanblocks` work; `scantxoutset` and `getdescriptoractivity` need no index.
                "-blockfilterindex=1",
                "-printtoconsole=0",
                "-rpcthreads=8",
                "-rpcworkqueue=64",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io(format!("start {}", binaries.bitcoind.display()), e))?;
        let cookie = datadir.path().join("regtest").join(".cookie");
        let url = format!("http://127.0.0.1:{rpc_port}");
        let mut node = RegtestNode {
            child: Some(child),
            // Replaced by a cookie-authenticated client once the node has written its cookie.
            client: Client::new(&url, Auth::None).map_err(|e| Error::Rpc {
                method: "connect".into(),
                source: e,
            })?,
            datadir,
            rpc_port,
            p2p_port,
            next_key: AtomicU64::new(0),
            binaries,
        };
        let started = Instant::now();
        loop {
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    node.child = None;
                    return Err(Error::Exited {
                        status: status.to_string(),
                        log_tail: log_tail(node.datadir.path()),
                    });
                }
            }
            if cookie.exists() {
                // The client reads the cookie when it is built; rebuild once it exists.
                if let Ok(client) = Client::new(&url, Auth::CookieFile(cookie.clone())) {
                    if client.get_block_count().is_ok() {
                        node.client = client;
                        return Ok(node);
                    }
                }
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(Error::StartTimeout {
                    secs: START_TIMEOUT.as_secs(),
                    log_tail: log_tail(node.datadir.path()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The RPC client (cookie authentication).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The RPC URL, `http://127.0.0.1:<port>`.
    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }

    /// The RPC port.
    pub fn rpc_port(&self) -> u16 {
        self.rpc_port
    }

    /// The P2P port the node was given (it does not listen; for tests that connect nodes
    /// with `addnode`, which needs `-listen`, start them yourself).
    pub fn p2p_port(&self) -> u16 {
        self.p2p_port
    }

    /// The RPC credentials from the node's cookie file, `(user, password)`, for clients that
    /// take user/password authentication (e.g. a service config).
    ///
    /// # Errors
    /// [`Error::Io`] when the cookie cannot be read or has no `:`.
    pub fn credentials(&self) -> Result<(String, String), Error> {
        let path = self.cookie_file();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        let (user, password) = text.trim_end().split_once(':').ok_or_else(|| {
            Error::io(
                format!("parse {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, "no ':' in the cookie"),
            )
        })?;
        Ok((user.to_string(), password.to_string()))
    }

    /// The RPC authentication for a client of this node (the cookie file).
    pub fn auth(&self) -> Auth {
        Auth::CookieFile(self.cookie_file())
    }

    /// A new RPC client of this node (e.g. one to move into another thread or into
    /// `bdk_bitcoind_rpc`'s `Emitter`).
    ///
    /// # Errors
    /// [`Error::Rpc`] when the cookie cannot be read.
    pub fn new_client(&self) -> Result<Client, Error> {
        Client::new(&self.rpc_url(), self.auth()).map_err(|e| Error::Rpc {
            method: "connect".into(),
            source: e,
        })
    }

    /// The RPC cookie file (`user:password` in one line).
    pub fn cookie_file(&self) -> PathBuf {
        self.datadir.path().join("regtest").join(".cookie")
    }

    /// The node's data directory (removed when the node is dropped, unless the node was
    /// started with [`RegtestNode::start_in`]).
    pub fn datadir(&self) -> &Path {
        self.datadir.path()
    }

    /// The binaries this node runs.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The operating-system process id, while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Calls any RPC method with JSON parameters and returns its JSON result.
    ///
    /// # Errors
    /// [`Error::Rpc`] when the node is unreachable or refuses the call.
    pub fn rpc(
        &self,
        method: &str,
        params: &[serde_json::Value],
    ) -> Result<serde_json::Value, Error> {
        self.client.call(method, params).map_err(|e| Error::Rpc {
            method: method.to_string(),
            source: e,
        })
    }

    /// The height of the best block.
    ///
    /// # Errors
    /// [`Error::Rpc`].
    pub fn height(&self) -> Result<u64, Error> {
        self.client.get_block_count().map_err(|e| Error::Rpc {
            method: "getblockcount".into(),
            source: e,
        })
    }

    /// The hash and height of the best block.
    ///
    /// # Errors
    /// [`Error::Rpc`].
    pub fn tip(&self) -> Result<(BlockHash, u64), Error> {
        let hash = self.client.get_best_block_hash().map_err(|e| Error::Rpc {
            method: "getbestblockhash".into(),
            source: e,
        })?;
        Ok((hash, self.height()?))
    }

    /// A fresh key and its P2WPKH regtest address, unique to this node and call (derived from
    /// the node's datadir path and a counter; for tests, never for real funds). Mine to the
    /// address to fund the key.
    pub fn new_key(&self) -> (PrivateKey, Address) {
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        test_key(&format!("{}/{n}", self.datadir.path().display()))
    }

    /// A fresh regtest address whose key the harness holds (see [`RegtestNode::new_key`]).
    pub fn new_address(&self) -> Address {
        self.new_key().1
    }

    /// Mines `n` blocks paying their coinbase to `address`; returns their hashes.
    ///
    /// # Errors
    /// [`Error::Rpc`].
    pub fn mine_blocks(&self, n: u64, address: &Address) -> Result<Vec<BlockHash>, Error> {
        self.client
            .generate_to_address(n, address)
            .map_err(|e| Error::Rpc {
                method: "generatetoaddress".into(),
                source: e,
            })
    }

    /// Waits until the node's best block is at least `height`.
    ///
    /// # Errors
    /// [`Error::WaitTimeout`] after `timeout`; [`Error::Rpc`] when the node is unreachable.
    pub fn wait_for_height(&self, height: u64, timeout: Duration) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            if self.height()? >= height {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(Error::WaitTimeout {
                    what: format!("height {height}"),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the index `name` (as `getindexinfo` names it: `"txindex"`, `"basic block
    /// filter index"`) is synced to at least `height`; indexes follow new blocks in the
    /// background, so a test that reads one right after mining should wait first.
    ///
    /// # Errors
    /// [`Error::WaitTimeout`] after 30 s; [`Error::Rpc`] when the node is unreachable.
    pub fn wait_for_index(&self, name: &str, height: u64) -> Result<(), Error> {
        let timeout = Duration::from_secs(30);
        let started = Instant::now();
        loop {
            let info = self.rpc("getindexinfo", &[name.into()])?;
            let index = &info[name];
            if index["synced"] == true && index["best_block_height"].as_u64() >= Some(height) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(Error::WaitTimeout {
                    what: format!("{name} at height {height} (last: {index})"),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first address of a descriptor, derived by the node itself (`getdescriptorinfo`
    /// adds the checksum, `deriveaddresses` derives).
    ///
    /// # Errors
    /// [`Error::Rpc`] when the node rejects the descriptor.
    pub fn descriptor_address(&self, descriptor: &str) -> Result<Address, Error> {
        let info = self.rpc("getdescriptorinfo", &[descriptor.into()])?;
        let checksum = info["checksum"].as_str().unwrap_or_default();
        let with_checksum = format!("{descriptor}#{checksum}");
        let addrs = self.rpc("deriveaddresses", &[with_checksum.into()])?;
        let first = addrs[0].as_str().unwrap_or_default();
        first
            .parse::<Address<_>>()
            .ok()
            .and_then(|a| a.require_network(Network::Regtest).ok())
            .ok_or(Error::Rpc {
                method: "deriveaddresses".into(),
                source: bitcoincore_rpc::Error::ReturnedError(format!(
                    "not a regtest address: {first:?}"
                )),
            })
    }

    /// Stops the node: RPC `stop`, then waits for the process, killing it after a timeout.
    ///
    /// # Errors
    /// [`Error::Io`] when waiting for or killing the process fails.
    pub fn stop(&mut self) -> Result<(), Error> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = self.client.stop();
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if started.elapsed() < STOP_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    return child
                        .wait()
                        .map(|_| ())
                        .map_err(|e| Error::io("wait for bitcoind", e));
                }
            }
        }
    }

    /// Kills the node's process at once (SIGKILL), as a crash would; for tests of how
    /// callers handle a node that is down.
    ///
    /// # Errors
    /// [`Error::Io`] when the kill fails.
    pub fn kill(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(|e| Error::io("kill bitcoind", e))?;
            child
                .wait()
                .map_err(|e| Error::io("wait for bitcoind", e))?;
        }
        Ok(())
    }

    /// Whether the node's process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Blocks until the node's process exits (e.g. after `bitcoin-cli stop` or Ctrl-C).
    ///
    /// # Errors
    /// [`Error::Io`] when waiting fails.
    pub fn wait(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            child
                .wait()
                .map_err(|e| Error::io("wait for bitcoind", e))?;
        }
        Ok(())
    }
}

impl Drop for RegtestNode {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("regtest node: {e}");
        }
    }
}

/// A deterministic regtest key and its P2WPKH address, derived from `label` (for tests and the
/// demo; never for real funds).
pub fn test_key(label: &str) -> (PrivateKey, Address) {
    let secp = Secp256k1::new();
    let mut counter = 0u32;
    loop {
        let seed = sha256::Hash::hash(format!("{label}/{counter}").as_bytes());
        if let Ok(key) = PrivateKey::from_slice(seed.as_byte_array(), Network::Regtest) {
            let pk = CompressedPublicKey::from_private_key(&secp, &key);
            if let Ok(pk) = pk {
                return (key, Address::p2wpkh(&pk, Network::Regtest));
            }
        }
        counter = counter.wrapping_add(1);
    }
}
