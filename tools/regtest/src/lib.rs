//! Finds or builds Bitcoin Core and runs isolated regtest nodes.
#![forbid(unsafe_code)]
