//! Signers of the strategic reserve.
//!
//! Why a crate of its own: the policy key lives in an HSM (PKCS#11) and signs only what the
//! policy allows; officers' software keystores live beside it. Keeping every signer behind one
//! small trait lets the service, the CLIs and the tests use a real SoftHSM2 token or a real
//! hardware module through the same path.
#![forbid(unsafe_code)]
