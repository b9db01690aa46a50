//! Export and import of vault descriptors in the formats of tools we did not write: plain
//! descriptors, BIP-129 BSMS descriptor records, Caravan wallet configs and Coldcard multisig
//! setup files. Every import goes through the same validation as `vault create`.

use bdk_wallet::bitcoin::Network;
use custody::vault::formats::{self, VaultDescriptors};
use custody::vault::{TemplateKey, VaultDescriptor};

/// A vault descriptor's interchange format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Receive and change descriptors with checksums (and the multipath form).
    Descriptor,
    /// BIP-129 BSMS descriptor record.
    Bsms,
    /// Caravan wallet configuration JSON.
    Caravan,
    /// Coldcard multisig setup file.
    Coldcard,
}

/// Exports a vault's descriptors in `format`.
///
/// # Errors
/// A message when the vault cannot be written in that format (Caravan and Coldcard hold only
/// `sortedmulti` of extended keys).
pub fn export(name: &str, d: &VaultDescriptor, format: Format) -> Result<String, String> {
    if format == Format::Descriptor {
        return Ok(format!(
            "{}\n{}\n{}\n",
            d.multipath_string().unwrap_or_default(),
            d.external_string(),
            d.internal_string()
        ));
    }
    let v = VaultDescriptors::new(name, d.network, d.external.clone(), d.internal.clone())
        .map_err(|e| e.to_string())?;
    let out = match format {
        Format::Bsms => formats::to_bsms(&v),
        Format::Caravan => formats::to_caravan(&v),
        Format::Coldcard => formats::to_coldcard(&v),
        Format::Descriptor => return Err("unreachable format".into()),
    }
    .map_err(|e| e.to_string())?;
    Ok(if out.ends_with('\n') { out } else { out + "\n" })
}

/// Imports vault descriptors from `text` in `format` for a vault on `network`.
///
/// # Errors
/// A message naming what is wrong with the file, or why the vault is refused.
pub fn import(text: &str, format: Format, network: Network) -> Result<VaultDescriptor, String> {
    let v = match format {
        Format::Descriptor => {
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("//"))
                .collect();
            let first = lines.first().ok_or("empty descriptor file")?;
            let parsed = if first.contains('<') {
                VaultDescriptor::parse(first, None, network)
            } else {
                let second = lines
                    .get(1)
                    .ok_or("give the change descriptor on the second line")?;
                VaultDescriptor::parse(first, Some(second), network)
            };
            return parsed.map_err(|e| e.to_string());
        }
        Format::Bsms => formats::from_bsms(text, network),
        Format::Caravan => formats::from_caravan(text),
        Format::Coldcard => formats::from_coldcard(text, network),
    }
    .map_err(|e| e.to_string())?;
    if v.network != network {
        return Err(format!(
            "the file is for {}, the service runs on {network}",
            v.network
        ));
    }
    let (ext, int) = v.descriptor_strings();
    VaultDescriptor::parse(&ext, Some(&int), network).map_err(|e| e.to_string())
}

/// What the policy-key check decided about a vault descriptor (see [`policy_key_guard`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// Every path without `older` needs the policy key.
    Passed,
    /// The check failed or could not run, and the caller allowed it: the message says why.
    /// The vault must be recorded as created without the guard.
    Bypassed(String),
}

/// The policy-key check every vault the service creates or imports goes through: every
/// spending path of `d` without a relative timelock must need `policy_key` (the key the policy
/// signer holds), see [`VaultDescriptor::require_policy_key`].
///
/// With `allow_without_policy_key` a failing (or unchecked, when no policy key is given) vault
/// is let through as [`Guard::Bypassed`]; the caller must warn and record it.
///
/// # Errors
/// The library's message (naming the keys that spend without the policy key, or the taproot
/// key path) when the vault fails and `allow_without_policy_key` is false, or a message asking
/// for the policy key when none is given.
pub fn policy_key_guard(
    d: &VaultDescriptor,
    policy_key: Option<&TemplateKey>,
    allow_without_policy_key: bool,
) -> Result<Guard, String> {
    let failure = match policy_key {
        Some(key) => match d.require_policy_key(key) {
            Ok(()) => return Ok(Guard::Passed),
            Err(e) => format!("vault refused: {e} (policy key {key})"),
        },
        None => "the policy key was not given, so nobody checked that every path needs it".into(),
    };
    if allow_without_policy_key {
        return Ok(Guard::Bypassed(failure));
    }
    match policy_key {
        Some(_) => Err(format!(
            "{failure}; give --allow-without-policy-key to create it anyway"
        )),
        None => Err(
            "give --policy-key (the key the policy signer holds) to check the vault \
             against, or --allow-without-policy-key"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
    use bdk_wallet::bitcoin::secp256k1::Secp256k1;
    use custody::vault::{Keychain, Template, Vault, VaultConfig};
    use std::str::FromStr;

    fn key(seed: u8) -> TemplateKey {
        let secp = Secp256k1::new();
        let m = Xpriv::new_master(Network::Regtest, &[seed; 32]).unwrap();
        let p = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
        let x = Xpub::from_priv(&secp, &m.derive_priv(&secp, &p).unwrap());
        TemplateKey::parse(&format!("[{}/48'/1'/0'/2']{x}", m.fingerprint(&secp))).unwrap()
    }

    fn addresses(d: &VaultDescriptor) -> Vec<String> {
        let v = Vault::create(VaultConfig::new("a", d.clone(), 0).unwrap()).unwrap();
        [Keychain::External, Keychain::Internal]
            .iter()
            .flat_map(|k| (0..20).map(|i| v.peek_address(*k, i).address.to_string()))
            .collect::<Vec<_>>()
    }

    #[test]
    fn every_export_imports_to_the_same_vault() {
        // k = every key: the policy key signs every spend
        let d = Template::SortedMulti {
            k: 3,
            officers: vec![key(1), key(2)],
            policy_key: key(3),
        }
        .build(Network::Regtest)
        .unwrap();
        let want = addresses(&d);
        for f in [
            Format::Descriptor,
            Format::Bsms,
            Format::Caravan,
            Format::Coldcard,
        ] {
            let text = export("reserve", &d, f).unwrap();
            let back = import(&text, f, Network::Regtest).unwrap();
            assert_eq!(back, d, "{f:?}");
            assert_eq!(addresses(&back), want, "{f:?}");
        }
        // a taproot vault exports as descriptors and BSMS, and is refused by Caravan/Coldcard
        let t = Template::TaprootPolicyWithRecovery {
            policy_key: key(3),
            k: 1,
            officers: vec![key(1), key(2)],
            r: 1,
            recovery: vec![key(4)],
            older: 144,
        }
        .build(Network::Regtest)
        .unwrap();
        for f in [Format::Descriptor, Format::Bsms] {
            let text = export("tr", &t, f).unwrap();
            assert_eq!(import(&text, f, Network::Regtest).unwrap(), t, "{f:?}");
        }
        assert!(export("tr", &t, Format::Caravan).is_err());
        assert!(export("tr", &t, Format::Coldcard).is_err());
        // a regtest file imported into a mainnet service is refused
        let text = export("reserve", &d, Format::Caravan).unwrap();
        assert!(import(&text, Format::Caravan, Network::Bitcoin).is_err());
    }
}
