//! Opening the policy key's signers: a PKCS#11 token (an HSM) or a software keystore.
//!
//! Why a folder of its own: the policy key signs ledger checkpoints, spends and reserve
//! proofs, and the CLI, the API and the demo all open it; opening it (module, slot, PIN,
//! keystore passphrase) is written here once, so the next step, a separate signer process,
//! replaces one folder.

pub mod checkpoint;
pub mod open;
pub mod process;
