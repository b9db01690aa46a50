//! `treasury demo`: the whole reserve on one machine with one command, for a first look.
//!
//! Why it exists: the service has many real parts (Bitcoin Core, a database, an HSM, officers'
//! keys, a policy, a vault, TLS, tokens) and a newcomer should see a spend go through all of
//! them without reading every document first. The demo builds each part with the same code
//! paths an operator uses (`treasury officer keygen`, `treasury hsm init`, `treasury policy
//! init`, the vault templates, `treasury::api::bind`), so what it shows is the service, not a
//! mock of it.
//!
//! Everything lives in one directory ([`DemoOptions::dir`], default
//! `~/.local/share/strategic-reserve/demo`). Each step first looks for what an earlier run made
//! there and reuses it: the second run continues the same chain, database, keys, vault and
//! tokens. API tokens are shown once by the service and stored only as hashes, so the demo
//! keeps the plain tokens it issued in `tokens.json` (mode 0600) in the demo directory and
//! reuses them; delete that file to have fresh ones issued (ADR 0012).
//!
//! The node is Bitcoin Core in regtest mode on loopback with its datadir in the demo directory;
//! it is stopped through RPC `stop` when the demo ends (Ctrl-C or SIGTERM), after the API
//! server has shut down gracefully.

mod policy_signer;
mod walkthrough;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bdk_wallet::bitcoin::{Address, Amount, Network};
use custody::vault::{Template, TemplateKey, VaultConfig};
use rand::distributions::{Alphanumeric, DistString};
use regtest::RegtestNode;
use serde::{Deserialize, Serialize};

use crate::api::auth::Role;
use crate::cli::hsm::{run_hsm, HsmCommand, HsmOpts};
use crate::cli::ledger::{run_ledger, LedgerCommand, LedgerOpts};
use crate::cli::officer::{run_officer, OfficerCommand};
use crate::node::{NodeAuth, NodeConfig};
use crate::service::governance::Governance;
use crate::service::vaults::VaultService;
use crate::service::DEFAULT_ORIGIN;
use crate::store::LedgerStore;

/// The example policy the demo installs, with the demo officers' approval keys in place of
/// the example's test keys of alice, bob and carol.
const EXAMPLE_POLICY: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
/// The example policy's approval keys of the three duty officers (fixed test secrets [1; 32],
/// [2; 32], [3; 32]), replaced by the demo officers' keys.
const EXAMPLE_KEYS: [(&str, &str); 3] = [
    (
        "alice",
        "1b84c5567b126440995d3ed5aaba0565d71e1834604819ff9c17f5e9d5dd078f",
    ),
    (
        "bob",
        "4d4b6cd1361032ca9bd2aeb9d900aa4d45d9ead80ac9423374c451a7254d0766",
    ),
    (
        "carol",
        "531fe6068134503d2723133227c867ac8fa6c83c537e9a44c3c5bdbdcb1fe337",
    ),
];
/// Debian's SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The token label of the demo's SoftHSM2 token.
pub const TOKEN_LABEL: &str = "reserve";
/// The policy key's label in the token.
pub const POLICY_KEY_LABEL: &str = "policy-key";
/// The demo vault's name.
pub const VAULT: &str = "reserve";
/// Coinbases mined to the vault on the first run (50 BTC each on a fresh regtest chain).
pub const FUND_BLOCKS: u64 = 5;
/// Blocks of the vault's recovery timelock.
pub const RECOVERY_OLDER: u32 = 144;
/// The network of the demo.
pub const NETWORK: Network = Network::Regtest;

/// Errors of the demo; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Finding, building, starting or calling the regtest node failed.
    #[error("regtest node: {0}")]
    Node(#[from] regtest::Error),
    /// A file or directory could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A set-up step failed.
    #[error("{step}: {reason}")]
    Step {
        /// The step.
        step: &'static str,
        /// Why.
        reason: String,
    },
}

fn step(step: &'static str) -> impl Fn(String) -> DemoError {
    move |reason| DemoError::Step { step, reason }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// What the demo is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The demo directory (created if missing; reused when it exists).
    pub dir: PathBuf,
    /// Where the API listens (port 0: a free port).
    pub listen: SocketAddr,
    /// Set up, print, and exit without serving (the node is stopped again).
    pub exit_after_setup: bool,
    /// Keep the policy key in a software keystore even when SoftHSM2 is installed. A demo
    /// directory keeps the holder it was created with ([`policy_key_holder`]).
    pub software_key: bool,
}

impl DemoOptions {
    /// The default demo directory: `$XDG_DATA_HOME/strategic-reserve/demo`, default
    /// `~/.local/share/strategic-reserve/demo` (the current directory's `demo-data` without a
    /// home directory).
    pub fn default_dir() -> PathBuf {
        std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("share"))
            })
            .map(|base| base.join("strategic-reserve").join("demo"))
            .unwrap_or_else(|| PathBuf::from("demo-data"))
    }
}

/// The files of a demo directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The directory itself (absolute).
    pub dir: PathBuf,
}

impl Layout {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    /// The node's datadir.
    pub fn bitcoind(&self) -> PathBuf {
        self.p("bitcoind")
    }
    /// The node's cookie file (while it runs).
    pub fn cookie(&self) -> PathBuf {
        self.bitcoind().join("regtest").join(".cookie")
    }
    /// The SQLite database file.
    pub fn db_file(&self) -> PathBuf {
        self.p("treasury.db")
    }
    /// The database URL.
    pub fn db_url(&self) -> String {
        format!("sqlite://{}", self.db_file().display())
    }
    /// The self-signed server certificate (PEM); clients pass it as their CA (`--cacert`).
    pub fn tls_cert(&self) -> PathBuf {
        self.p("tls/cert.pem")
    }
    /// The server's private key (PEM, mode 0600).
    pub fn tls_key(&self) -> PathBuf {
        self.p("tls/key.pem")
    }
    /// The SoftHSM2 configuration of the demo token.
    pub fn softhsm_conf(&self) -> PathBuf {
        self.p("hsm/softhsm2.conf")
    }
    /// The token's user PIN (mode 0600).
    pub fn hsm_pin(&self) -> PathBuf {
        self.p("hsm/pin")
    }
    /// The key ceremony's output (`treasury hsm init`).
    pub fn ceremony(&self) -> PathBuf {
        self.p("hsm/ceremony.json")
    }
    /// The policy signer process's state directory.
    pub fn signer_dir(&self) -> PathBuf {
        self.p("signer")
    }
    /// The policy signer process's socket.
    pub fn signer_socket(&self) -> PathBuf {
        self.signer_dir().join("signer.sock")
    }
    /// The software keystore of the policy key (only without SoftHSM2).
    pub fn policy_keystore(&self) -> PathBuf {
        self.p("hsm/policy-key.json")
    }
    /// The software policy keystore's passphrase (mode 0600).
    pub fn policy_passphrase(&self) -> PathBuf {
        self.p("hsm/policy-key.pass")
    }
    /// The ledger checkpoint key file.
    pub fn ledger_key(&self) -> PathBuf {
        self.p("ledger.key")
    }
    /// An officer's keystore.
    pub fn officer_key(&self, name: &str) -> PathBuf {
        self.p(&format!("officers/{name}.json"))
    }
    /// An officer's keystore passphrase (mode 0600).
    pub fn officer_pass(&self, name: &str) -> PathBuf {
        self.p(&format!("officers/{name}.pass"))
    }
    /// The policy document installed.
    pub fn policy(&self) -> PathBuf {
        self.p("policy.toml")
    }
    /// The `treasury serve` configuration (rewritten each run: the node's port changes).
    pub fn config(&self) -> PathBuf {
        self.p("treasury.toml")
    }
    /// The plain API tokens the demo issued (mode 0600).
    pub fn tokens(&self) -> PathBuf {
        self.p("tokens.json")
    }
    /// Shell variables for the printed commands (`. env.sh`).
    pub fn env_sh(&self) -> PathBuf {
        self.p("env.sh")
    }
    /// The printed walk-through, also kept as a file.
    pub fn walkthrough(&self) -> PathBuf {
        self.p("walkthrough.txt")
    }
    /// The walk-through's commands as a bash script (the demo test runs it).
    pub fn walkthrough_script(&self) -> PathBuf {
        self.p("walkthrough.sh")
    }
}

/// The demo's officers (duty officers of the example policy) and recovery key holders.
pub const OFFICERS: [&str; 3] = ["alice", "bob", "carol"];
/// The recovery key holders (2 of 3 after [`RECOVERY_OLDER`] blocks).
pub const RECOVERY: [&str; 3] = ["recovery-1", "recovery-2", "recovery-3"];

/// One issued API token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DemoToken {
    /// The principal.
    pub principal: String,
    /// The role (`admin`, `officer`, `auditor`, `integrator`).
    pub role: String,
    /// The vaults it is scoped to (empty: all).
    pub vaults: Vec<String>,
    /// The token (secret).
    pub token: String,
}

impl std::fmt::Debug for DemoToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoToken")
            .field("principal", &self.principal)
            .field("role", &self.role)
            .field("vaults", &self.vaults)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The tokens file: principal name to token.
pub type Tokens = BTreeMap<String, DemoToken>;

/// How the policy key is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyKeyHolder {
    /// In the demo's SoftHSM2 token.
    SoftHsm,
    /// In a software keystore (SoftHSM2 is missing; not an HSM).
    Software,
}

/// What the set-up made (or found): everything the server and the printed commands need.
#[derive(Debug)]
pub struct Setup {
    /// The files.
    pub layout: Layout,
    /// The running node (stopped on drop).
    pub node: RegtestNode,
    /// The policy key's holder.
    pub holder: PolicyKeyHolder,
    /// The policy key as written in the descriptor.
    pub policy_key: String,
    /// The ledger's verifier key (for auditors).
    pub ledger_verifier_key: String,
    /// The tokens.
    pub tokens: Tokens,
    /// The vault's confirmed balance after the sync.
    pub balance: Amount,
    /// Whether this run reused an earlier run's vault.
    pub reused: bool,
    /// A regtest address outside the vault for the walk-through's payment.
    pub destination: String,
    /// The policy signer process (ADR 0017), stopped on drop.
    pub signer: crate::signer::process::SignerProcess,
}

fn progress(msg: &str) {
    eprintln!("[demo] {msg}");
}

fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output, DemoError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the async runtime"))?;
    Ok(rt.block_on(fut))
}

/// Writes a new file readable by its owner only (refuses to overwrite).
fn write_private(path: &Path, text: &str) -> Result<(), DemoError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("create {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(io(format!("write {}", path.display())))
}

/// Replaces a file atomically (write a temporary file, rename), with `mode`.
fn replace_file(path: &Path, text: &str, mode: u32) -> Result<(), DemoError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(format!("create {}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("rename to {}", path.display())))
}

fn mkdir_private(path: &Path) -> Result<(), DemoError> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io(format!("create {}", path.display())))
}

fn random_secret(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, len)
}

/// Whether SoftHSM2 is installed (module and `softhsm2-util`).
pub fn softhsm_available() -> bool {
    Path::new(SOFTHSM_MODULE).exists()
        && std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("softhsm2-util").is_file()))
}

/// Where the policy key is kept: where a previous run of this directory put it (the key
/// ceremony's file or the software keystore), else in a software keystore when asked
/// (`software_key`) or when SoftHSM2 is missing, else in the SoftHSM2 token.
///
/// # Errors
/// [`DemoError::Step`] when SoftHSM2 held the key in an earlier run and is gone now.
pub fn policy_key_holder(
    layout: &Layout,
    software_key: bool,
    softhsm: bool,
) -> Result<PolicyKeyHolder, DemoError> {
    if layout.ceremony().exists() {
        if !softhsm {
            return Err(step("policy key")(format!(
                "this demo directory keeps its policy key in a SoftHSM2 token ({}), but                  SoftHSM2 is not installed now: install the Debian package softhsm2, or use                  another --dir",
                layout.ceremony().display()
            )));
        }
        if software_key {
            eprintln!(
                "note: --software-key is ignored: this demo directory keeps its policy key in                  its SoftHSM2 token"
            );
        }
        return Ok(PolicyKeyHolder::SoftHsm);
    }
    if layout.policy_keystore().exists() || software_key || !softhsm {
        return Ok(PolicyKeyHolder::Software);
    }
    Ok(PolicyKeyHolder::SoftHsm)
}

/// The TLS certificate and key: a self-signed certificate for `localhost` and `127.0.0.1`.
fn tls(layout: &Layout) -> Result<(), DemoError> {
    if layout.tls_cert().exists() && layout.tls_key().exists() {
        return Ok(());
    }
    progress("creating a self-signed TLS certificate for localhost and 127.0.0.1");
    mkdir_private(&layout.p("tls"))?;
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let cert = rcgen::generate_simple_self_signed(names)
        .map_err(|e| step("tls certificate")(e.to_string()))?;
    let _ = std::fs::remove_file(layout.tls_key());
    write_private(&layout.tls_key(), &cert.key_pair.serialize_pem())?;
    replace_file(&layout.tls_cert(), &cert.cert.pem(), 0o644)
}

/// The SoftHSM2 token of the demo (own configuration and token directory, never a system
/// token); sets `SOFTHSM2_CONF` for this process.
fn softhsm_token(layout: &Layout) -> Result<(), DemoError> {
    let tokens = layout.p("hsm/tokens");
    mkdir_private(&tokens)?;
    let conf = layout.softhsm_conf();
    if !conf.exists() {
        replace_file(
            &conf,
            &format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
            0o600,
        )?;
    }
    // Read once per process by SoftHSM2, before its first C_Initialize (none has run yet).
    std::env::set_var("SOFTHSM2_CONF", &conf);
    if layout.hsm_pin().exists() {
        return Ok(());
    }
    progress("initialising the SoftHSM2 token \"reserve\" (the HSM of the demo)");
    let pin = random_secret(16);
    let so_pin = random_secret(16);
    let out = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", TOKEN_LABEL])
        .args(["--pin", &pin, "--so-pin", &so_pin])
        .output()
        .map_err(io("run softhsm2-util"))?;
    if !out.status.success() {
        return Err(step("softhsm2 token")(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    write_private(&layout.p("hsm/so-pin"), &format!("{so_pin}\n"))?;
    write_private(&layout.hsm_pin(), &format!("{pin}\n"))
}

/// The policy key: generated in the SoftHSM2 token by the key ceremony (`treasury hsm init`),
/// or, without SoftHSM2, in a software keystore (with a warning). Returns its descriptor key.
fn policy_key(layout: &Layout, holder: &PolicyKeyHolder) -> Result<String, DemoError> {
    match holder {
        PolicyKeyHolder::SoftHsm => {
            softhsm_token(layout)?;
            if !layout.ceremony().exists() {
                progress("key ceremony: the policy key and a checkpoint key inside the token");
                let opts = HsmOpts {
                    module: PathBuf::from(SOFTHSM_MODULE),
                    token: TOKEN_LABEL.into(),
                    pin_file: Some(layout.hsm_pin()),
                    db: layout.db_url(),
                };
                let out = run_hsm(
                    &opts,
                    HsmCommand::Init {
                        key_label: POLICY_KEY_LABEL.into(),
                        checkpoint_label: "ledger-checkpoint".into(),
                        origin: DEFAULT_ORIGIN.into(),
                        actor: "demo-key-ceremony".into(),
                    },
                )
                .map_err(step("hsm init"))?;
                replace_file(&layout.ceremony(), &out, 0o600)?;
            }
            let text = std::fs::read_to_string(layout.ceremony())
                .map_err(io(format!("read {}", layout.ceremony().display())))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| step("hsm ceremony file")(e.to_string()))?;
            v["descriptor_key"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| step("hsm ceremony file")("no descriptor_key".into()))
        }
        PolicyKeyHolder::Software => {
            eprintln!(
                "warning: SoftHSM2 is not installed ({SOFTHSM_MODULE} or softhsm2-util missing): \
                 the demo keeps the policy key in a software keystore ({}). That is NOT an HSM; \
                 install the Debian package softhsm2 to see the PKCS#11 path.",
                layout.policy_keystore().display()
            );
            mkdir_private(&layout.p("hsm"))?;
            if !layout.policy_keystore().exists() {
                let pass = random_secret(24);
                if !layout.policy_passphrase().exists() {
                    write_private(&layout.policy_passphrase(), &format!("{pass}\n"))?;
                }
                keygen(
                    &layout.policy_keystore(),
                    &layout.policy_passphrase(),
                    "policy-key",
                )?;
            }
            show_key(
                &layout.policy_keystore(),
                &layout.policy_passphrase(),
                false,
            )
        }
    }
}

/// `treasury officer keygen` into `key` with the passphrase in `pass`.
fn keygen(key: &Path, pass: &Path, id: &str) -> Result<String, DemoError> {
    run_officer(OfficerCommand::Keygen {
        out: key.to_path_buf(),
        id: id.into(),
        network: NETWORK,
        path: None,
        passphrase_file: Some(pass.to_path_buf()),
        insecure_fast_kdf: false,
    })
    .map(|s| s.trim().to_string())
    .map_err(step("officer keygen"))
}

/// `treasury officer show` (account key, or the approval key).
fn show_key(key: &Path, pass: &Path, approval: bool) -> Result<String, DemoError> {
    run_officer(OfficerCommand::Show {
        key: key.to_path_buf(),
        passphrase_file: Some(pass.to_path_buf()),
        approval_key: approval,
    })
    .map(|s| s.trim().to_string())
    .map_err(step("officer show"))
}

/// An officer's (or recovery holder's) keystore, created once; returns (account key, approval
/// key).
fn person_key(layout: &Layout, name: &str) -> Result<(String, String), DemoError> {
    mkdir_private(&layout.p("officers"))?;
    let key = layout.officer_key(name);
    let pass = layout.officer_pass(name);
    if !pass.exists() {
        write_private(&pass, &format!("{}\n", random_secret(24)))?;
    }
    if !key.exists() {
        progress(&format!("officer keygen: {name} ({})", key.display()));
        keygen(&key, &pass, name)?;
    }
    Ok((show_key(&key, &pass, false)?, show_key(&key, &pass, true)?))
}

/// The example policy with the demo officers' approval keys.
pub fn demo_policy(approval_keys: &[(String, String)]) -> Result<String, DemoError> {
    let mut text = EXAMPLE_POLICY.to_string();
    for (person, example_key) in EXAMPLE_KEYS {
        let (_, key) = approval_keys
            .iter()
            .find(|(p, _)| p == person)
            .ok_or_else(|| step("policy")(format!("no approval key for {person}")))?;
        if !text.contains(example_key) {
            return Err(step("policy")(format!(
                "the example policy no longer has {person}'s test key"
            )));
        }
        text = text.replace(example_key, key);
    }
    let header = "# The demo's policy: policies/examples/strategic-reserve.toml with the demo \
                  officers' approval keys\n# for alice, bob and carol (the duty officers).\n";
    Ok(format!("{header}{text}"))
}

/// The ledger checkpoint key file (`treasury ledger keygen`); returns its verifier key.
fn ledger_key(layout: &Layout) -> Result<String, DemoError> {
    let opts = LedgerOpts {
        db: layout.db_url(),
        origin: DEFAULT_ORIGIN.into(),
    };
    if !layout.ledger_key().exists() {
        progress("ledger keygen: the checkpoint key of the ledger");
        return run_ledger(
            &opts,
            LedgerCommand::Keygen {
                out: layout.ledger_key(),
            },
        )
        .map(|s| s.trim().to_string())
        .map_err(step("ledger keygen"));
    }
    run_ledger(
        &opts,
        LedgerCommand::PublicKey {
            key_file: Some(layout.ledger_key()),
            hsm: crate::cli::hsm::HsmKeyOpts {
                hsm_key_label: None,
                hsm_module: PathBuf::from(SOFTHSM_MODULE),
                hsm_token: TOKEN_LABEL.into(),
                hsm_pin_file: None,
            },
        },
    )
    .map(|s| s.trim().to_string())
    .map_err(step("ledger public-key"))
}

fn node_config(layout: &Layout, node: &RegtestNode) -> NodeConfig {
    NodeConfig {
        url: node.rpc_url(),
        auth: NodeAuth::Cookie(layout.cookie()),
    }
}

/// Policy, vault, funding and sync, in the database (async part of the set-up). Returns the
/// confirmed balance and whether the vault existed already.
async fn reserve(
    layout: &Layout,
    node: &RegtestNode,
    policy_key: &str,
    officers: &[String],
    recovery: &[String],
    client: &::signer::SignerClient,
) -> Result<(Amount, bool), DemoError> {
    let s = |st: &'static str| step(st);
    let ledger = LedgerStore::open(&layout.db_url())
        .await
        .map_err(|e| s("database")(e.to_string()))?;
    let out = reserve_in(
        layout, node, &ledger, policy_key, officers, recovery, client,
    )
    .await;
    ledger.close().await;
    out
}

async fn reserve_in(
    layout: &Layout,
    node: &RegtestNode,
    ledger: &LedgerStore,
    policy_key: &str,
    officers: &[String],
    recovery: &[String],
    client: &::signer::SignerClient,
) -> Result<(Amount, bool), DemoError> {
    let s = |st: &'static str| step(st);
    let governance = Governance::new(ledger.clone());
    if governance.active_stored().await.is_err() {
        progress("policy init: the example policy with the demo officers' keys");
        let doc = std::fs::read_to_string(layout.policy())
            .map_err(io(format!("read {}", layout.policy().display())))?;
        governance
            .init(&doc, "demo-admin", crate::clock::now_ms())
            .await
            .map_err(|e| s("policy init")(e.to_string()))?;
    }
    let svc = VaultService::new(ledger.clone());
    let existing = svc
        .vaults
        .list()
        .await
        .map_err(|e| s("vault list")(e.to_string()))?;
    let reused = existing.iter().any(|c| c.name == VAULT);
    if !reused {
        progress(&format!(
            "vault create: {VAULT} = policy key AND 2 of 3 officers, OR after {RECOVERY_OLDER} blocks 2 of 3 recovery keys"
        ));
        let key = |k: &String| TemplateKey::parse(k).map_err(|e| s("vault keys")(e.to_string()));
        let template = Template::PolicyWithRecovery {
            policy_key: key(&policy_key.to_string())?,
            k: 2,
            officers: officers.iter().map(key).collect::<Result<_, _>>()?,
            r: 2,
            recovery: recovery.iter().map(key).collect::<Result<_, _>>()?,
            older: RECOVERY_OLDER,
        };
        let descriptor = template
            .build(NETWORK)
            .map_err(|e| s("vault template")(e.to_string()))?;
        let birthday = u32::try_from(node.height()?).unwrap_or(0);
        let config = VaultConfig::new(VAULT, descriptor, birthday)
            .map_err(|e| s("vault config")(e.to_string()))?;
        svc.create_registered(config, "treasury demo", Some(client))
            .await
            .map_err(|e| s("vault create")(e.to_string()))?;
    }
    let cfg = node_config(layout, node);
    let (vault, _) = svc
        .sync(VAULT, &cfg)
        .await
        .map_err(|e| s("vault sync")(e.to_string()))?;
    let b = vault.balance();
    if b.confirmed == Amount::ZERO && b.pending == Amount::ZERO && b.immature == Amount::ZERO {
        progress(&format!(
            "funding the vault: {FUND_BLOCKS} blocks mined to its addresses, then 100 to mature them"
        ));
        for _ in 0..FUND_BLOCKS {
            let addr = svc
                .next_address(VAULT)
                .await
                .map_err(|e| s("vault address")(e.to_string()))?;
            let addr = Address::from_str(&addr.address.to_string())
                .map_err(|e| s("vault address")(e.to_string()))?
                .assume_checked();
            node.mine_blocks(1, &addr)?;
        }
        let (_, burn) = regtest::test_key("strategic-reserve demo / maturing blocks");
        node.mine_blocks(100, &burn)?;
        let (vault, _) = svc
            .sync(VAULT, &cfg)
            .await
            .map_err(|e| s("vault sync")(e.to_string()))?;
        return Ok((vault.balance().confirmed, reused));
    }
    Ok((b.confirmed, reused))
}

/// The API tokens: the stored file when there is one, else one issued per principal.
async fn tokens(layout: &Layout) -> Result<Tokens, DemoError> {
    if layout.tokens().exists() {
        let text = std::fs::read_to_string(layout.tokens())
            .map_err(io(format!("read {}", layout.tokens().display())))?;
        return serde_json::from_str(&text)
            .map_err(|e| step("tokens file")(format!("{}: {e}", layout.tokens().display())));
    }
    progress("issuing an API token for each role (kept in tokens.json, mode 0600)");
    let ledger = LedgerStore::open(&layout.db_url())
        .await
        .map_err(|e| step("database")(e.to_string()))?;
    let vault = vec![VAULT.to_string()];
    let mut wanted: Vec<(String, Role, Vec<String>)> = vec![
        ("demo-admin".into(), Role::Admin, vec![]),
        ("demo-auditor".into(), Role::Auditor, vec![]),
        ("demo-integrator".into(), Role::Integrator, vault.clone()),
    ];
    for o in OFFICERS {
        wanted.push((o.to_string(), Role::Officer, vault.clone()));
    }
    let mut out = Tokens::new();
    for (principal, role, vaults) in wanted {
        let token = crate::api::auth::issue_token(
            &ledger,
            &principal,
            role,
            &vaults,
            crate::clock::now_ms(),
        )
        .await
        .map_err(|e| step("issue token")(e.to_string()));
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                ledger.close().await;
                return Err(e);
            }
        };
        out.insert(
            principal.clone(),
            DemoToken {
                principal,
                role: role.as_str().into(),
                vaults,
                token,
            },
        );
    }
    ledger.close().await;
    let text =
        serde_json::to_string_pretty(&out).map_err(|e| step("tokens file")(e.to_string()))?;
    write_private(&layout.tokens(), &format!("{text}\n"))?;
    Ok(out)
}

fn toml_str(p: &Path) -> String {
    // TOML basic strings: JSON string escaping is a subset that TOML accepts.
    serde_json::Value::String(p.display().to_string()).to_string()
}

/// The `treasury serve` configuration of the demo (also usable by hand:
/// `treasury serve --config treasury.toml` while the node runs).
pub fn serve_config_text(
    layout: &Layout,
    listen: SocketAddr,
    rpc_url: &str,
    holder: &PolicyKeyHolder,
) -> String {
    let socket = format!("socket = {}\n", toml_str(&layout.signer_socket()));
    let signer = match holder {
        PolicyKeyHolder::SoftHsm => format!(
            "[signer]\n{socket}kind = \"pkcs11\"\nmodule = {}\ntoken_label = \"{TOKEN_LABEL}\"\nkey_label = \"{POLICY_KEY_LABEL}\"\npin_file = {}\n",
            toml_str(Path::new(SOFTHSM_MODULE)),
            toml_str(&layout.hsm_pin())
        ),
        PolicyKeyHolder::Software => format!(
            "[signer]\n{socket}kind = \"software\"\nkeystore = {}\npassphrase_file = {}\n",
            toml_str(&layout.policy_keystore()),
            toml_str(&layout.policy_passphrase())
        ),
    };
    format!(
        "# Written by `treasury demo` (rewritten on each run: the node's RPC port changes).\n\
         [server]\nlisten = \"{listen}\"\ntls_cert = {}\ntls_key = {}\n\n\
         [database]\nurl = {}\n\n\
         [node]\nnetwork = \"regtest\"\nrpc_url = \"{rpc_url}\"\ncookie_file = {}\n\n\
         {signer}\n\
         [ledger]\norigin = \"{DEFAULT_ORIGIN}\"\nkey_file = {}\n",
        toml_str(&layout.tls_cert()),
        toml_str(&layout.tls_key()),
        serde_json::Value::String(layout.db_url()),
        toml_str(&layout.cookie()),
        toml_str(&layout.ledger_key()),
    )
}

/// Builds (or finds) every part of the demo in `opts.dir` and starts the node. The API server
/// is not started; [`run`] does that.
///
/// # Errors
/// [`DemoError`] naming the failing step; what earlier steps made stays and is reused by the
/// next run.
pub fn setup(opts: &DemoOptions) -> Result<Setup, DemoError> {
    mkdir_private(&opts.dir)?;
    let dir = opts
        .dir
        .canonicalize()
        .map_err(io(format!("resolve {}", opts.dir.display())))?;
    let layout = Layout { dir };
    progress(&format!("demo directory {}", layout.dir.display()));

    progress("looking for bitcoind (building it once from the Bitcoin Core source if missing)");
    let binaries = regtest::ensure_bitcoind()?;
    progress(&format!(
        "starting bitcoind -regtest ({}) with its datadir in the demo directory",
        binaries.bitcoind.display()
    ));
    let node = RegtestNode::start_in(binaries, &layout.bitcoind())?;

    tls(&layout)?;
    let holder = policy_key_holder(&layout, opts.software_key, softhsm_available())?;
    // The database is created by the first step that opens it (the key ceremony records
    // itself in the ledger).
    let policy_key = policy_key(&layout, &holder)?;
    let ledger_verifier_key = ledger_key(&layout)?;

    let mut officers = Vec::new();
    let mut approval_keys = Vec::new();
    for o in OFFICERS {
        let (account, approval) = person_key(&layout, o)?;
        officers.push(account);
        approval_keys.push((o.to_string(), approval));
    }
    let mut recovery = Vec::new();
    for r in RECOVERY {
        recovery.push(person_key(&layout, r)?.0);
    }
    if !layout.policy().exists() {
        replace_file(&layout.policy(), &demo_policy(&approval_keys)?, 0o644)?;
    }

    let signer = policy_signer::start(&layout, &holder)?;
    let client = signer.client();
    let (balance, reused) = block_on(reserve(
        &layout,
        &node,
        &policy_key,
        &officers,
        &recovery,
        &client,
    ))??;
    progress(&format!(
        "vault {VAULT}: {} sat confirmed{}",
        balance.to_sat(),
        if reused { " (reused)" } else { "" }
    ));
    let tokens = block_on(tokens(&layout))??;
    Ok(Setup {
        layout,
        node,
        holder,
        policy_key,
        ledger_verifier_key,
        tokens,
        balance,
        reused,
        destination: regtest::test_key("strategic-reserve demo / destination")
            .1
            .to_string(),
        signer,
    })
}

/// Writes `env.sh`, the configuration, and returns the walk-through text for `url`.
fn write_files(setup: &Setup, url: &str, listen: SocketAddr) -> Result<String, DemoError> {
    let l = &setup.layout;
    let config = serve_config_text(l, listen, &setup.node.rpc_url(), &setup.holder);
    replace_file(&l.config(), &config, 0o600)?;
    let exe = std::env::current_exe().map_err(io("find the treasury executable"))?;
    let cli = setup
        .node
        .binaries()
        .bitcoin_cli
        .clone()
        .unwrap_or_else(|| PathBuf::from("bitcoin-cli"));
    let mut env = format!(
        "# Written by `treasury demo`; source it: . {}\n\
         export TREASURY_DB={}\nexport TREASURY_NETWORK=regtest\n\
         export TREASURY_RPC_URL={}\nexport TREASURY_RPC_COOKIE={}\n\
         export API={url}\nexport CACERT={}\nexport TREASURY_SIGNER_SOCKET={}\n",
        l.env_sh().display(),
        sh_quote(&l.db_url()),
        sh_quote(&setup.node.rpc_url()),
        sh_quote(&l.cookie().display().to_string()),
        sh_quote(&l.tls_cert().display().to_string()),
        sh_quote(&l.signer_socket().display().to_string()),
    );
    env.push_str(&format!(
        "treasury() {{ {} \"$@\"; }}\nbtc() {{ {} -regtest -rpcport={} -rpccookiefile={} \"$@\"; }}\n",
        sh_quote(&exe.display().to_string()),
        sh_quote(&cli.display().to_string()),
        setup.node.rpc_port(),
        sh_quote(&l.cookie().display().to_string()),
    ));
    match setup.holder {
        PolicyKeyHolder::SoftHsm => env.push_str(&format!(
            "export SOFTHSM2_CONF={}\nexport TREASURY_HSM_MODULE={SOFTHSM_MODULE}\nexport TREASURY_HSM_TOKEN={TOKEN_LABEL}\nexport TREASURY_HSM_PIN_FILE={}\n",
            sh_quote(&l.softhsm_conf().display().to_string()),
            sh_quote(&l.hsm_pin().display().to_string()),
        )),
        PolicyKeyHolder::Software => env.push_str(&format!(
            "export TREASURY_POLICY_KEYSTORE={}\nexport TREASURY_POLICY_PASSPHRASE_FILE={}\n",
            sh_quote(&l.policy_keystore().display().to_string()),
            sh_quote(&l.policy_passphrase().display().to_string()),
        )),
    }
    for t in setup.tokens.values() {
        env.push_str(&format!(
            "export TOKEN_{}={}\n",
            t.principal.replace('-', "_").to_ascii_uppercase(),
            sh_quote(&t.token)
        ));
    }
    replace_file(&l.env_sh(), &env, 0o600)?;
    let text = walkthrough::walkthrough(setup, url);
    replace_file(&l.walkthrough(), &text, 0o644)?;
    let script = walkthrough::script(&walkthrough::steps(setup, url));
    replace_file(&l.walkthrough_script(), &script, 0o700)?;
    Ok(text)
}

/// Quotes for POSIX shells.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:+=@%,".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Ctrl-C (SIGINT) and SIGTERM, watched from the moment this is built (before the demo says
/// it is ready, so a signal right after that line cannot take the default action and orphan
/// the node).
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn watch() -> Result<Self, DemoError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            int: signal(SignalKind::interrupt()).map_err(io("watch SIGINT"))?,
            term: signal(SignalKind::terminate()).map_err(io("watch SIGTERM"))?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// `treasury demo`: set up, serve the API until Ctrl-C or SIGTERM, then stop the server
/// gracefully and the node through RPC `stop`.
///
/// # Errors
/// [`DemoError`] naming the failing step.
pub fn run(opts: &DemoOptions) -> Result<(), DemoError> {
    let mut setup = setup(opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("start the async runtime"))?;
    let served = rt.block_on(serve(&setup, opts));
    drop(rt);
    progress("stopping bitcoind (rpc stop)");
    let stopped = setup.node.stop();
    served?;
    stopped?;
    progress("stopped; run `treasury demo` again to continue where this run ended");
    Ok(())
}

async fn serve(setup: &Setup, opts: &DemoOptions) -> Result<(), DemoError> {
    // The configuration is written first with the requested address, then again with the
    // bound one (port 0 picks a free port).
    let text = serve_config_text(
        &setup.layout,
        opts.listen,
        &setup.node.rpc_url(),
        &setup.holder,
    );
    let config = crate::api::config::ServeConfig::from_toml_str(&text)
        .map_err(|e| step("serve config")(e.to_string()))?;
    crate::api::init_logging(config.server.log_format);
    let server = crate::api::bind(config)
        .await
        .map_err(|e| step("serve")(e.to_string()))?;
    let addr = server.local_addr();
    let url = format!("https://localhost:{}", addr.port());
    let signals = StopSignals::watch()?;
    let walkthrough = write_files(setup, &url, addr)?;
    println!("{walkthrough}");
    println!("demo ready: {url}");
    // Tests and scripts read the line above; flush it now.
    let _ = std::io::stdout().flush();
    if opts.exit_after_setup {
        return Ok(());
    }
    let result = server
        .run(async {
            signals.wait().await;
            progress("shutting down the API server");
        })
        .await
        .map_err(|e| step("serve")(e.to_string()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_policy_key_stays_where_the_directory_first_put_it() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout {
            dir: tmp.path().to_path_buf(),
        };
        let h = |sw, hsm| policy_key_holder(&layout, sw, hsm);
        // A new directory: SoftHSM2 when present unless a software key is asked for.
        assert_eq!(h(false, true).unwrap(), PolicyKeyHolder::SoftHsm);
        assert_eq!(h(true, true).unwrap(), PolicyKeyHolder::Software);
        assert_eq!(h(false, false).unwrap(), PolicyKeyHolder::Software);
        // A directory with a software keystore keeps it, even once SoftHSM2 is installed.
        std::fs::create_dir_all(layout.p("hsm")).unwrap();
        std::fs::write(layout.policy_keystore(), "{}").unwrap();
        assert_eq!(h(false, true).unwrap(), PolicyKeyHolder::Software);
        std::fs::remove_file(layout.policy_keystore()).unwrap();
        // A directory whose key is in a token keeps the token, and says so when it is gone.
        std::fs::write(layout.ceremony(), "{}").unwrap();
        assert_eq!(h(true, true).unwrap(), PolicyKeyHolder::SoftHsm);
        let err = h(false, false).unwrap_err().to_string();
        assert!(err.contains("softhsm2") && err.contains("--dir"), "{err}");
    }
}
