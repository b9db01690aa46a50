//! Export and import of vault descriptors in the formats of tools we did not write.

use bdk_wallet::bitcoin::Network;
use custody::vault::VaultDescriptor;

use crate::vault_cli::Format;

/// Exports a vault's descriptors in `format`.
///
/// # Errors
/// A message when the vault cannot be written in that format.
pub fn export(name: &str, d: &VaultDescriptor, format: Format) -> Result<String, String> {
    let _ = name;
    match format {
        Format::Descriptor => Ok(format!(
            "{}\n{}\n{}\n",
            d.multipath_string().unwrap_or_default(),
            d.external_string(),
            d.internal_string()
        )),
        other => Err(format!("format {other:?} is not available yet")),
    }
}

/// Imports vault descriptors from `text` in `format`.
///
/// # Errors
/// A message naming what is wrong with the file.
pub fn import(text: &str, format: Format, network: Network) -> Result<VaultDescriptor, String> {
    match format {
        Format::Descriptor => {
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            let first = lines.first().ok_or("empty descriptor file")?;
            let parsed = if first.contains("<0;1>") {
                VaultDescriptor::parse(first, None, network)
            } else {
                let second = lines
                    .get(1)
                    .ok_or("give a change descriptor on the second line")?;
                VaultDescriptor::parse(first, Some(second), network)
            };
            parsed.map_err(|e| e.to_string())
        }
        other => Err(format!("format {other:?} is not available yet")),
    }
}
