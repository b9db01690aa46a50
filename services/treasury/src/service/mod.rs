//! The use cases: spend requests, policy signing, vaults, governance and reserve proofs.
//!
//! Why a folder of its own: the CLI (`cli/`) and the HTTPS API (`api/`) are two doors onto the
//! same operations, and both call only this layer. A service gathers the facts a pure decision
//! in `custody`/`policies` needs (from `store/`, the node client and the signers), runs the
//! decision and stores its outcome with its ledger entry. Nothing here parses flags or HTTP.

pub mod governance;
pub mod policy;
pub mod policy_signer;
pub mod proof_signer;
pub mod render;
pub mod reserves;
pub mod signing;
pub mod spend;
pub mod vault_signer;
pub mod vaults;
/// The default log origin when neither `--origin` nor `TREASURY_LEDGER_ORIGIN` is given.
pub const DEFAULT_ORIGIN: &str = "reserve.example/ledger";
