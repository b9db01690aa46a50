//! The policy signer process of a test (ADR 0017): a fresh SoftHSM2 token, `treasury signer
//! init` with the test's policy, then `treasury signer serve` as a child process (killed on
//! drop), and a client of it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use treasury::signer::process::{HolderArgs, SignerProcess};

/// The user PIN of the test token.
pub const PIN: &str = "2718";

/// The PKCS#11 module of SoftHSM2.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A running signer of a test.
pub struct SpawnedSigner {
    /// The process (killed on drop).
    pub process: SignerProcess,
    /// The token's SoftHSM2 configuration (given to the signer; set it in this process only
    /// where the test opens the token itself).
    pub softhsm_conf: PathBuf,
    /// The policy key as it goes into a descriptor.
    pub policy_key: String,
    /// The user PIN's file.
    pub pin_file: PathBuf,
}

impl SpawnedSigner {
    /// Starts a signer in `dir` (`dir/signer`, a token in `dir/tokens`) with `policy_toml` as
    /// its genesis policy. `None` (the test skips) without SoftHSM2, unless it is required.
    pub async fn start(dir: &Path, test: &str, policy_toml: &str) -> Option<SpawnedSigner> {
        let pin = PIN;
        let conf = super::softhsm_token(dir, test, pin)?;
        let pin_file = dir.join("signer.pin");
        std::fs::write(&pin_file, format!("{pin}\n")).unwrap();
        let policy = dir.join("signer-genesis-policy.toml");
        std::fs::write(&policy, policy_toml).unwrap();
        let holder = HolderArgs::Token {
            module: PathBuf::from(MODULE),
            token_label: "reserve".into(),
            policy_key_label: "policy-key".into(),
            ledger_key_label: "ledger-checkpoint-key".into(),
            pin_file: pin_file.clone(),
            softhsm_conf: Some(conf.clone()),
        };
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_treasury"));
        let sdir = dir.join("signer");
        let process = tokio::task::spawn_blocking(move || {
            SignerProcess::start(&exe, &sdir, &policy, "reserve.example/ledger", &holder)
        })
        .await
        .unwrap()
        .expect("the policy signer starts");
        let policy_key = process.client().status().await.unwrap().policy_key;
        Some(SpawnedSigner {
            process,
            softhsm_conf: conf,
            policy_key,
            pin_file,
        })
    }

    /// A client of the signer.
    pub fn client(&self) -> signer::SignerClient {
        self.process.client()
    }

    /// The signer's socket.
    pub fn socket(&self) -> &Path {
        self.process.socket()
    }

    /// The policy key as a vault template key.
    pub fn template_key(&self) -> custody::vault::TemplateKey {
        custody::vault::TemplateKey::parse(&self.policy_key).unwrap()
    }
}
