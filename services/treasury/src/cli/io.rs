//! Reading and writing the files the commands take and produce: text, JSON, PSBTs, and
//! new files that are never overwritten.
//!
//! Why one file: every command family used to carry its own copy of these helpers, with
//! slightly different messages and formats (one `read_psbt` took only base64, another also
//! binary); each helper is now written once. `-` means standard input where noted.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::str::FromStr;

use bdk_wallet::bitcoin::psbt::Psbt;

/// The magic bytes that start a binary PSBT (BIP-174).
const PSBT_MAGIC: &[u8] = b"psbt\xff";

/// Reads a text file.
///
/// # Errors
/// A message naming the file.
pub fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Reads a text file, or standard input for `-`.
///
/// # Errors
/// A message naming the file.
pub fn read_input(path: &Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(s)
    } else {
        read(path)
    }
}

/// Reads a file's bytes, or standard input for `-`.
fn read_bytes(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(bytes)
    } else {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}

/// Reads a JSON file into `T`.
///
/// # Errors
/// A message naming the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = read(path)?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a PSBT (or standard input for `-`): binary (starting with `psbt\xff`) or base64 text.
///
/// # Errors
/// A message naming the file.
pub fn read_psbt(path: &Path) -> Result<Psbt, String> {
    let bytes = read_bytes(path)?;
    let parsed = if bytes.starts_with(PSBT_MAGIC) {
        Psbt::deserialize(&bytes).map_err(|e| e.to_string())
    } else {
        Psbt::from_str(String::from_utf8_lossy(&bytes).trim()).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| format!("{}: not a psbt: {e}", path.display()))
}

/// Writes `text` to a new file (an existing file is never overwritten), synced to disk.
///
/// # Errors
/// A message naming the file.
pub fn write_new(path: &Path, text: &str) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
