//! `treasury signer init|serve|status`: the policy signer process (ADR 0017), the same commands
//! as the `policy-signer` binary (both are [`::signer::cli`]), so tests and the demo can start
//! the signer with the one `treasury` binary.

pub use ::signer::cli::SignerCommand;

/// Runs a signer command; `serve` blocks until Ctrl-C.
///
/// # Errors
/// The signer's message (a missing secret, a refused state, a socket error).
pub fn run_signer(command: &SignerCommand) -> Result<(), String> {
    ::signer::cli::run(command)
}
