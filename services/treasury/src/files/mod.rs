//! Documents exchanged offline: vault descriptor files, spend request files, admin order
//! files and the reserve-proof bundle.
//!
//! Why a folder of its own: these formats are read by officers' offline tools, by the API and
//! by the auditor's verifier; keeping them apart from the services lets `audit/` read a bundle
//! without importing any service or the database.

pub mod bundle;
pub mod order_file;
pub mod request_file;
pub mod vault_formats;
