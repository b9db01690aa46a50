//! The policy signer process (ADR 0017) as a child of this one: `treasury signer init` once,
//! then `treasury signer serve --socket`, stopped when the handle is dropped. The demo and the
//! tests start it this way; production runs it as its own service, under its own user.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the signer process could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The command could not be run.
    #[error("cannot run {what}: {source}")]
    Spawn {
        /// Which command.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `signer init` failed.
    #[error("policy signer init failed: {0}")]
    Init(String),
    /// `signer serve` stopped or did not answer in time.
    #[error("policy signer did not start: {0}")]
    Serve(String),
}

/// The holder of the signer's keys and where its secret is (a file, never a flag value).
#[derive(Debug, Clone)]
pub enum HolderArgs {
    /// A PKCS#11 token (SoftHSM2 in tests and the demo).
    Token {
        /// The module.
        module: PathBuf,
        /// The token label.
        token_label: String,
        /// The policy key's label.
        policy_key_label: String,
        /// The checkpoint key's label.
        ledger_key_label: String,
        /// The user PIN's file.
        pin_file: PathBuf,
        /// `SOFTHSM2_CONF` for the signer (`None`: inherited).
        softhsm_conf: Option<PathBuf>,
    },
    /// A software keystore (not an HSM).
    Keystore {
        /// The keystore file.
        keystore: PathBuf,
        /// Its passphrase's file.
        passphrase_file: PathBuf,
    },
}

impl HolderArgs {
    fn init_args(&self) -> Vec<OsString> {
        match self {
            HolderArgs::Token {
                module,
                token_label,
                policy_key_label,
                ledger_key_label,
                pin_file,
                ..
            } => vec![
                "--pkcs11-module".into(),
                module.into(),
                "--token-label".into(),
                token_label.into(),
                "--policy-key-label".into(),
                policy_key_label.into(),
                "--ledger-key-label".into(),
                ledger_key_label.into(),
                "--pin-file".into(),
                pin_file.into(),
            ],
            HolderArgs::Keystore {
                keystore,
                passphrase_file,
            } => vec![
                "--keystore".into(),
                keystore.into(),
                "--passphrase-file".into(),
                passphrase_file.into(),
            ],
        }
    }

    fn apply_env(&self, cmd: &mut Command) {
        if let HolderArgs::Token {
            softhsm_conf: Some(conf),
            ..
        } = self
        {
            cmd.env("SOFTHSM2_CONF", conf);
        }
    }

    fn secret_args(&self) -> Vec<OsString> {
        match self {
            HolderArgs::Token { pin_file, .. } => vec!["--pin-file".into(), pin_file.into()],
            HolderArgs::Keystore {
                passphrase_file, ..
            } => vec!["--passphrase-file".into(), passphrase_file.into()],
        }
    }
}

/// A running `treasury signer serve`, killed on drop.
#[derive(Debug)]
pub struct SignerProcess {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl SignerProcess {
    /// Runs `exe signer init` in `dir` unless it holds a state already, then
    /// `exe signer serve` on `dir/signer.sock`, and waits until the socket answers.
    ///
    /// # Errors
    /// [`ProcessError`] with the signer's own message.
    pub fn start(
        exe: &Path,
        dir: &Path,
        policy: &Path,
        ledger_origin: &str,
        holder: &HolderArgs,
    ) -> Result<SignerProcess, ProcessError> {
        if !dir.join("holder.json").exists() {
            let mut cmd = Command::new(exe);
            holder.apply_env(&mut cmd);
            let out = cmd
                .arg("signer")
                .arg("init")
                .arg("--dir")
                .arg(dir)
                .arg("--network")
                .arg("regtest")
                .arg("--policy")
                .arg(policy)
                .arg("--ledger-origin")
                .arg(ledger_origin)
                .args(holder.init_args())
                .env_remove("TREASURY_SIGNER_PIN")
                .output()
                .map_err(|source| ProcessError::Spawn {
                    what: "treasury signer init",
                    source,
                })?;
            if !out.status.success() {
                return Err(ProcessError::Init(
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ));
            }
        }
        let socket = dir.join("signer.sock");
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(exe);
        holder.apply_env(&mut cmd);
        let child = cmd
            .arg("signer")
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .arg("--socket")
            .arg(&socket)
            .args(holder.secret_args())
            .env_remove("TREASURY_SIGNER_PIN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                what: "treasury signer serve",
                source,
            })?;
        let mut p = SignerProcess {
            child,
            socket,
            dir: dir.to_owned(),
        };
        p.wait_ready()?;
        Ok(p)
    }

    fn wait_ready(&mut self) -> Result<(), ProcessError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ProcessError::Serve(format!("it exited ({status})")));
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ProcessError::Serve(format!(
                    "{} did not appear within 60 s",
                    self.socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The signer's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The signer's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client of the signer.
    pub fn client(&self) -> ::signer::SignerClient {
        ::signer::SignerClient::new(&self.socket)
    }
}

impl Drop for SignerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
