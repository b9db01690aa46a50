//! The demo's policy signer process (ADR 0017): its state in `<demo dir>/signer`, created by
//! `treasury signer init` on the first run with the demo policy and the same holder as the
//! policy key (the SoftHSM2 token, or the software keystore), then served on
//! `<demo dir>/signer/signer.sock` for as long as the demo runs.

use std::path::PathBuf;

use super::{progress, step, DemoError, Layout, PolicyKeyHolder};
use super::{POLICY_KEY_LABEL, SOFTHSM_MODULE, TOKEN_LABEL};
use crate::service::DEFAULT_ORIGIN;
use crate::signer::process::{HolderArgs, SignerProcess};

/// Starts the signer (initializing its state once).
pub(super) fn start(layout: &Layout, holder: &PolicyKeyHolder) -> Result<SignerProcess, DemoError> {
    let exe = std::env::current_exe().map_err(|e| step("policy signer")(e.to_string()))?;
    let args = match holder {
        PolicyKeyHolder::SoftHsm => HolderArgs::Token {
            module: PathBuf::from(SOFTHSM_MODULE),
            token_label: TOKEN_LABEL.to_owned(),
            policy_key_label: POLICY_KEY_LABEL.to_owned(),
            ledger_key_label: "ledger-checkpoint".to_owned(),
            pin_file: layout.hsm_pin(),
            softhsm_conf: None,
        },
        PolicyKeyHolder::Software => HolderArgs::Keystore {
            keystore: layout.policy_keystore(),
            passphrase_file: layout.policy_passphrase(),
        },
    };
    progress(&format!(
        "starting the policy signer process (state {})",
        layout.signer_dir().display()
    ));
    SignerProcess::start(
        &exe,
        &layout.signer_dir(),
        &layout.policy(),
        DEFAULT_ORIGIN,
        &args,
    )
    .map_err(|e| step("policy signer")(e.to_string()))
}
