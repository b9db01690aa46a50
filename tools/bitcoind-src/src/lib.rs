//! Never built: this package exists so `cargo fetch` brings the Bitcoin Core source.
