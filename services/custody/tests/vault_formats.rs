//! Vault export/import: BSMS (BIP-129), Caravan and Coldcard round trips and refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::str::FromStr;

use bdk_wallet::bitcoin::bip32::{DerivationPath, Fingerprint, Xpriv, Xpub};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::Network;
use bdk_wallet::miniscript::{Descriptor, DescriptorPublicKey};
use custody::vault::formats::{
    from_bsms, from_caravan, from_coldcard, to_bsms, to_caravan, to_coldcard, FormatError,
    VaultDescriptors,
};
use proptest::prelude::*;

const ACCOUNT: &str = "m/48'/1'/0'/2'";

/// A deterministic co-signer: master fingerprint and account xpub at `path` (regtest/tpub).
fn cosigner_at(seed_byte: u8, path: &str, network: Network) -> (Fingerprint, Xpub) {
    let secp = Secp256k1::new();
    let seed: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(7).wrapping_add(seed_byte))
        .collect();
    let master = Xpriv::new_master(network, &seed).unwrap();
    let path = DerivationPath::from_str(path).unwrap();
    let account = master.derive_priv(&secp, &path).unwrap();
    (master.fingerprint(&secp), Xpub::from_priv(&secp, &account))
}

/// `[fingerprint/48'/1'/0'/2']tpub.../<0;1>/*` for the co-signer `seed_byte`.
fn key_at(seed_byte: u8, path: &str, network: Network) -> String {
    let (fp, xpub) = cosigner_at(seed_byte, path, network);
    let origin = path.trim_start_matches('m');
    format!("[{fp}{origin}]{xpub}/<0;1>/*")
}

fn key(seed_byte: u8) -> String {
    key_at(seed_byte, ACCOUNT, Network::Regtest)
}

fn vault_from(name: &str, desc: &str) -> VaultDescriptors {
    let desc = Descriptor::<DescriptorPublicKey>::from_str(desc).unwrap();
    VaultDescriptors::from_multipath(name, Network::Regtest, &desc).unwrap()
}

/// The 2-of-3 wsh(sortedmulti) vault of co-signers 1, 2, 3.
fn vault_2of3() -> VaultDescriptors {
    vault_from(
        "treasury",
        &format!("wsh(sortedmulti(2,{},{},{}))", key(1), key(2), key(3)),
    )
}

fn timelocked_vault() -> VaultDescriptors {
    vault_from(
        "timelocked",
        &format!(
            "wsh(or_d(multi(2,{},{},{}),and_v(v:pkh({}),older(1000))))",
            key(1),
            key(2),
            key(3),
            key(4)
        ),
    )
}

fn taproot_vault() -> VaultDescriptors {
    vault_from(
        "taproot",
        &format!("tr({},multi_a(2,{},{},{}))", key(4), key(1), key(2), key(3)),
    )
}

/// The same vault, the same first 20 receive and change addresses.
fn assert_same_vault(imported: &VaultDescriptors, original: &VaultDescriptors) {
    assert_eq!(imported, original);
    for internal in [false, true] {
        assert_eq!(
            imported.addresses(internal, 20).unwrap(),
            original.addresses(internal, 20).unwrap()
        );
    }
}

fn unnamed(v: &VaultDescriptors) -> VaultDescriptors {
    VaultDescriptors {
        name: String::new(),
        ..v.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// VaultDescriptors

#[test]
fn multipath_split_and_join() {
    let v = vault_2of3();
    let (ext, int) = v.descriptor_strings();
    assert!(ext.contains("/0/*") && !ext.contains("/1/*"), "{ext}");
    assert!(int.contains("/1/*") && !int.contains("/0/*"), "{int}");
    // Strings carry checksums that the parser verifies.
    assert_eq!(
        Descriptor::<DescriptorPublicKey>::from_str(&ext).unwrap(),
        v.external
    );
    assert_eq!(
        Descriptor::<DescriptorPublicKey>::from_str(&int).unwrap(),
        v.internal
    );
    let multi = v.multipath_string().unwrap();
    assert!(multi.contains("/<0;1>/*") && multi.contains('#'), "{multi}");
    let back = VaultDescriptors::from_multipath(
        "treasury",
        Network::Regtest,
        &Descriptor::from_str(&multi).unwrap(),
    )
    .unwrap();
    assert_same_vault(&back, &v);
    // Two single-path descriptors build the same vault.
    let pair = VaultDescriptors::new(
        "treasury",
        Network::Regtest,
        v.external.clone(),
        v.internal.clone(),
    )
    .unwrap();
    assert_eq!(pair, v);
    // Receive and change addresses differ.
    assert_ne!(
        v.addresses(false, 5).unwrap(),
        v.addresses(true, 5).unwrap()
    );
    assert_eq!(v.addresses(false, 20).unwrap().len(), 20);
    assert!(v.addresses(false, 1).unwrap()[0]
        .to_string()
        .starts_with("bcrt1q"));
}

#[test]
fn multipath_string_refuses_unrelated_keychains() {
    let v = vault_2of3();
    let other = vault_from(
        "x",
        &format!("wsh(sortedmulti(2,{},{},{}))", key(1), key(2), key(5)),
    );
    // Same structure but one key differs between receive and change.
    let mixed =
        VaultDescriptors::new("x", Network::Regtest, v.external.clone(), other.internal).unwrap();
    assert!(matches!(
        mixed.multipath_string(),
        Err(FormatError::NotMultipath(_))
    ));
}

#[test]
fn from_multipath_needs_two_paths() {
    let three = Descriptor::<DescriptorPublicKey>::from_str(&format!(
        "wsh(sortedmulti(2,{},{}))",
        key(1).replace("<0;1>", "<0;1;2>"),
        key(2).replace("<0;1>", "<0;1;2>")
    ))
    .unwrap();
    assert!(matches!(
        VaultDescriptors::from_multipath("x", Network::Regtest, &three),
        Err(FormatError::PathCount(3))
    ));
    let single = vault_2of3().external;
    assert!(matches!(
        VaultDescriptors::from_multipath("x", Network::Regtest, &single),
        Err(FormatError::PathCount(1))
    ));
}

#[test]
fn new_refuses_wrong_network_keys() {
    let desc = Descriptor::from_str(&format!(
        "wsh(sortedmulti(2,{},{},{}))",
        key(1),
        key(2),
        key(3)
    ))
    .unwrap();
    let err = VaultDescriptors::from_multipath("x", Network::Bitcoin, &desc).unwrap_err();
    assert!(matches!(err, FormatError::NetworkMismatch { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// BSMS

#[test]
fn bsms_round_trip() {
    let v = vault_2of3();
    let text = to_bsms(&v).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "BSMS 1.0");
    assert!(
        lines[1].starts_with("wsh(sortedmulti(2,[") && lines[1].contains("/**,"),
        "{text}"
    );
    assert_eq!(lines[1].matches("/**").count(), 3);
    assert_eq!(lines[2], "/0/*,/1/*");
    assert_eq!(lines[3], v.addresses(false, 1).unwrap()[0].to_string());
    let imported = from_bsms(&text, Network::Regtest).unwrap();
    assert_eq!(imported.name, "");
    assert_same_vault(&imported, &unnamed(&v));
}

#[test]
fn bsms_round_trips_miniscript_and_taproot_vaults() {
    for v in [timelocked_vault(), taproot_vault()] {
        let text = to_bsms(&v).unwrap();
        assert_same_vault(&from_bsms(&text, Network::Regtest).unwrap(), &unnamed(&v));
    }
}

#[test]
fn bsms_accepts_multipath_descriptor_without_restrictions() {
    let v = vault_2of3();
    let first = v.addresses(false, 1).unwrap()[0].to_string();
    let text = format!(
        "BSMS 1.0\n{}\nNo path restrictions\n{first}\n",
        v.multipath_string().unwrap()
    );
    assert_same_vault(&from_bsms(&text, Network::Regtest).unwrap(), &unnamed(&v));
}

/// BIP-129 test vector "Mode: NO_ENCRYPTION", round 2 (a mainnet 2-of-2 descriptor record).
const BIP129_RECORD: &str = "BSMS 1.0
wsh(sortedmulti(2,[1cf0bf7e/48'/0'/0'/2']xpub6FL8FhxNNUVnG64YurPd16AfGyvFLhh7S2uSsDqR3Qfcm6o9jtcMYwh6DvmcBF9qozxNQmTCVvWtxLpKTnhVLN3Pgnu2D3pAoXYFgVyd8Yz/**,[4fc1dd4a/48'/0'/0'/2']xpub6EebMbEps7ZcV3FYEnddRsvrFWDrt2tiPmCeM7pPXQEmphvq9ZfJ1LWFUDjf3vxCeBuPrfyGrMazWUsYsetrnHatQZVLJH7LsgCjtMqdzgj/**))
/0/*,/1/*
bc1qrgc6p3kylfztu06ysl752gwwuekhvtfh9vr7zg43jvu60mutamcsv948ej
";

#[test]
fn bsms_bip129_test_vector() {
    let v = from_bsms(BIP129_RECORD, Network::Bitcoin).unwrap();
    assert_eq!(
        v.addresses(false, 1).unwrap()[0].to_string(),
        "bc1qrgc6p3kylfztu06ysl752gwwuekhvtfh9vr7zg43jvu60mutamcsv948ej"
    );
    // Our export is the same record plus the template checksum.
    let ours = to_bsms(&v).unwrap();
    let theirs: Vec<&str> = BIP129_RECORD.lines().collect();
    let ours: Vec<&str> = ours.lines().collect();
    assert_eq!(ours.len(), 4);
    assert_eq!(ours[0], theirs[0]);
    assert_eq!(ours[1].split_once('#').unwrap().0, theirs[1]);
    assert_eq!(ours[2..], theirs[2..]);
    // Importing on another network is refused.
    assert!(from_bsms(BIP129_RECORD, Network::Testnet).is_err());
}

#[test]
fn bsms_bip129_single_key_vector_is_not_a_vault() {
    // BIP-129 "NO_ENCRYPTION with Public Keys": valid record and checksum, but not ranged.
    let record = "BSMS 1.0
wsh(sortedmulti(1,[59865f44/48'/0'/0'/2']026d15412460ba0d881c21837bb999233896085a9ed4e5445bd637c10e579768ba,[b7044ca6/48'/0'/0'/2']030baf0497ab406ff50cb48b4013abac8a0338758d2fd54cd934927afa57cc2062))#rzx9dffd
No path restrictions
bc1quqy523xu3l8che3s8vja8n33qtg0uyugr9l5z092s3wa50p8t7rqy6zumf
";
    let err = from_bsms(record, Network::Bitcoin).unwrap_err();
    assert!(matches!(err, FormatError::PathCount(1)), "{err}");
    // The same record with a tampered checksum fails on the checksum first.
    let tampered = record.replace("#rzx9dffd", "#rzx9dffe");
    assert!(matches!(
        from_bsms(&tampered, Network::Bitcoin),
        Err(FormatError::ChecksumMismatch { .. })
    ));
}

#[test]
fn bsms_tampered_checksum_is_refused() {
    let text = to_bsms(&vault_2of3()).unwrap();
    let (head, tail) = text.split_once('#').unwrap();
    let mut checksum: Vec<char> = tail.chars().collect();
    checksum[0] = if checksum[0] == 'q' { 'p' } else { 'q' };
    let tampered = format!("{head}#{}", checksum.into_iter().collect::<String>());
    let err = from_bsms(&tampered, Network::Regtest).unwrap_err();
    assert!(matches!(err, FormatError::ChecksumMismatch { .. }), "{err}");
    // Tampering with the descriptor itself (threshold 2 -> 1) also breaks the checksum.
    let tampered = text.replacen("sortedmulti(2,", "sortedmulti(1,", 1);
    let err = from_bsms(&tampered, Network::Regtest).unwrap_err();
    assert!(matches!(err, FormatError::ChecksumMismatch { .. }), "{err}");
}

#[test]
fn bsms_first_address_mismatch_is_refused() {
    let v = vault_2of3();
    let text = to_bsms(&v).unwrap();
    let first = v.addresses(false, 1).unwrap()[0].to_string();
    let second = v.addresses(false, 2).unwrap()[1].to_string();
    let change = v.addresses(true, 1).unwrap()[0].to_string();
    for wrong in [second, change] {
        let err = from_bsms(&text.replace(&first, &wrong), Network::Regtest).unwrap_err();
        assert!(
            matches!(err, FormatError::FirstAddressMismatch { .. }),
            "{err}"
        );
    }
    // Without a checksum, a tampered threshold is caught by the first address.
    let (head, _) = text.split_once('#').unwrap();
    let rest = text.split_once('\n').unwrap().1.split_once('\n').unwrap().1;
    let unchecked = format!(
        "{}\n{rest}",
        head.replacen("sortedmulti(2,", "sortedmulti(1,", 1)
    );
    let err = from_bsms(&unchecked, Network::Regtest).unwrap_err();
    assert!(
        matches!(err, FormatError::FirstAddressMismatch { .. }),
        "{err}"
    );
}

#[test]
fn bsms_malformed_records_are_refused() {
    let text = to_bsms(&vault_2of3()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cases = [
        String::new(),
        "BSMS 1.0".to_owned(),
        text.replace("BSMS 1.0", "BSMS 2.0"),
        format!("{}\n{}\n{}\n", lines[0], lines[1], lines[3]),
        text.replace("/0/*,/1/*", "/0/*"),
        text.replace("/0/*,/1/*", "/0h/*,/1h/*"),
        text.replace("/0/*,/1/*", "No path restrictions"),
        text.replace(lines[3], "not-an-address"),
        text.replace(
            lines[3],
            "bc1qrgc6p3kylfztu06ysl752gwwuekhvtfh9vr7zg43jvu60mutamcsv948ej",
        ),
    ];
    for case in cases {
        assert!(
            from_bsms(&case, Network::Regtest).is_err(),
            "accepted: {case}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Caravan

#[test]
fn caravan_round_trip() {
    let v = vault_2of3();
    let json = to_caravan(&v).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["name"], "treasury");
    assert_eq!(value["addressType"], "P2WSH");
    assert_eq!(value["network"], "regtest");
    assert_eq!(value["client"]["type"], "public");
    assert_eq!(value["quorum"]["requiredSigners"], 2);
    assert_eq!(value["quorum"]["totalSigners"], 3);
    assert_eq!(value["startingAddressIndex"], 0);
    let keys = value["extendedPublicKeys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for (key, seed) in keys.iter().zip([1u8, 2, 3]) {
        let (fp, xpub) = cosigner_at(seed, ACCOUNT, Network::Regtest);
        assert_eq!(key["bip32Path"], ACCOUNT);
        assert_eq!(key["xpub"], xpub.to_string());
        assert!(key["xpub"].as_str().unwrap().starts_with("tpub"));
        assert_eq!(key["xfp"], fp.to_string());
    }
    assert_same_vault(&from_caravan(&json).unwrap(), &v);
}

#[test]
fn caravan_and_coldcard_round_trip_nested_and_legacy_p2sh() {
    for (wrapper, caravan_type) in [
        ("sh(wsh(sortedmulti", "P2SH-P2WSH"),
        ("sh(sortedmulti", "P2SH"),
    ] {
        let close = if wrapper.starts_with("sh(wsh") {
            ")))"
        } else {
            "))"
        };
        let v = vault_from(
            "nested",
            &format!("{wrapper}(2,{},{},{}{close}", key(1), key(2), key(3)),
        );
        let json = to_caravan(&v).unwrap();
        assert!(
            json.contains(&format!("\"addressType\": \"{caravan_type}\"")),
            "{json}"
        );
        assert_same_vault(&from_caravan(&json).unwrap(), &v);
        let file = to_coldcard(&v).unwrap();
        assert!(
            file.contains(&format!("Format: {caravan_type}\n")),
            "{file}"
        );
        assert_same_vault(&from_coldcard(&file, Network::Regtest).unwrap(), &v);
    }
}

#[test]
fn caravan_refuses_what_it_cannot_represent() {
    let unsorted = vault_from(
        "multi",
        &format!("wsh(multi(2,{},{},{}))", key(1), key(2), key(3)),
    );
    let single = vault_from("single", &format!("wpkh({})", key(1)));
    let other_steps = vault_from(
        "steps",
        &format!(
            "wsh(sortedmulti(2,{},{}))",
            key(1).replace("<0;1>", "<2;3>"),
            key(2).replace("<0;1>", "<2;3>")
        ),
    );
    for v in [
        timelocked_vault(),
        taproot_vault(),
        unsorted,
        single,
        other_steps,
    ] {
        let err = to_caravan(&v).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::Unsupported {
                    format: "caravan",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err
            .to_string()
            .starts_with("caravan supports only sortedmulti of extended keys"));
        let err = to_coldcard(&v).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::Unsupported {
                    format: "coldcard",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn caravan_malformed_input_is_refused() {
    let json = to_caravan(&vault_2of3()).unwrap();
    assert!(matches!(
        from_caravan("{not json"),
        Err(FormatError::Json(_))
    ));
    assert!(matches!(from_caravan("[]"), Err(FormatError::Json(_))));
    assert!(matches!(
        from_caravan("{\"name\":\"x\"}"),
        Err(FormatError::Json(_))
    ));
    let k_gt_n = json.replace("\"requiredSigners\": 2", "\"requiredSigners\": 4");
    assert!(matches!(
        from_caravan(&k_gt_n),
        Err(FormatError::Policy { k: 4, n: 3, .. })
    ));
    let wrong_n = json.replace("\"totalSigners\": 3", "\"totalSigners\": 4");
    assert!(matches!(
        from_caravan(&wrong_n),
        Err(FormatError::Policy { .. })
    ));
    let bad_type = json.replace("\"P2WSH\"", "\"P2TR\"");
    assert!(matches!(
        from_caravan(&bad_type),
        Err(FormatError::Caravan(_))
    ));
    let bad_net = json.replace("\"regtest\"", "\"moonnet\"");
    assert!(matches!(
        from_caravan(&bad_net),
        Err(FormatError::Caravan(_))
    ));
    let bad_path = json.replacen(ACCOUNT, "48'/1'/0'/2'", 1);
    assert!(matches!(
        from_caravan(&bad_path),
        Err(FormatError::Caravan(_))
    ));
    let wrong_depth = json.replacen(ACCOUNT, "m/48'/1'/0'", 1);
    assert!(matches!(
        from_caravan(&wrong_depth),
        Err(FormatError::InvalidVault(_))
    ));
    let (_, xpub) = cosigner_at(1, ACCOUNT, Network::Regtest);
    let bad_xpub = json.replace(&xpub.to_string(), "tpubGarbage");
    assert!(matches!(
        from_caravan(&bad_xpub),
        Err(FormatError::Caravan(_))
    ));
}

#[test]
fn caravan_wrong_network_xpub_is_refused() {
    let json = to_caravan(&vault_2of3()).unwrap();
    let mainnet = json.replace("\"regtest\"", "\"mainnet\"");
    let err = from_caravan(&mainnet).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::NetworkMismatch {
                network: Network::Bitcoin,
                ..
            }
        ),
        "{err}"
    );
    // Caravan's "testnet" accepts tpubs.
    let testnet = json.replace("\"regtest\"", "\"testnet\"");
    assert_eq!(from_caravan(&testnet).unwrap().network, Network::Testnet);
}

// ---------------------------------------------------------------------------------------------
// Coldcard

#[test]
fn coldcard_round_trip() {
    let v = vault_2of3();
    let file = to_coldcard(&v).unwrap();
    assert!(file.contains("Name: treasury\n"), "{file}");
    assert!(file.contains("Policy: 2 of 3\n"), "{file}");
    assert!(file.contains("Format: P2WSH\n"), "{file}");
    assert_eq!(
        file.matches("Derivation: m/48h/1h/0h/2h\n").count(),
        1,
        "{file}"
    );
    for seed in [1u8, 2, 3] {
        let (fp, xpub) = cosigner_at(seed, ACCOUNT, Network::Regtest);
        let line = format!("{}: {xpub}\n", fp.to_string().to_uppercase());
        assert!(file.contains(&line), "{file}");
    }
    assert_same_vault(&from_coldcard(&file, Network::Regtest).unwrap(), &v);
}

#[test]
fn coldcard_per_key_derivations_round_trip() {
    let v = vault_from(
        "mixed paths",
        &format!(
            "wsh(sortedmulti(2,{},{},{}))",
            key(1),
            key_at(2, "m/48'/1'/7'/2'", Network::Regtest),
            key_at(3, "m/45'", Network::Regtest)
        ),
    );
    let file = to_coldcard(&v).unwrap();
    assert_eq!(file.matches("Derivation: ").count(), 3, "{file}");
    assert!(file.contains("Derivation: m/48h/1h/7h/2h\n") && file.contains("Derivation: m/45h\n"));
    assert_same_vault(&from_coldcard(&file, Network::Regtest).unwrap(), &v);
    // Caravan keeps one path per key too.
    assert_same_vault(&from_caravan(&to_caravan(&v).unwrap()).unwrap(), &v);
}

#[test]
fn coldcard_accepts_apostrophe_paths_and_comments() {
    let v = vault_2of3();
    let file = to_coldcard(&v)
        .unwrap()
        .replace("m/48h/1h/0h/2h", "m/48'/1'/0'/2'");
    let file = format!(
        "# exported elsewhere\n\n{}\n# trailing comment\n",
        file.replace("Name:", "name:")
    );
    assert_same_vault(&from_coldcard(&file, Network::Regtest).unwrap(), &v);
}

#[test]
fn coldcard_malformed_files_are_refused() {
    let file = to_coldcard(&vault_2of3()).unwrap();
    let key_lines: Vec<&str> = file
        .lines()
        .filter(|l| l.len() > 10 && l.as_bytes()[8] == b':')
        .collect();
    assert_eq!(key_lines.len(), 3);

    let k_gt_n = file.replace("Policy: 2 of 3", "Policy: 4 of 3");
    assert!(matches!(
        from_coldcard(&k_gt_n, Network::Regtest),
        Err(FormatError::Policy {
            k: 4,
            n: 3,
            keys: 3
        })
    ));
    let zero = file.replace("Policy: 2 of 3", "Policy: 0 of 3");
    assert!(matches!(
        from_coldcard(&zero, Network::Regtest),
        Err(FormatError::Policy { .. })
    ));
    let missing_one = file.replace(&format!("{}\n", key_lines[2]), "");
    assert!(matches!(
        from_coldcard(&missing_one, Network::Regtest),
        Err(FormatError::Policy {
            k: 2,
            n: 3,
            keys: 2
        })
    ));
    let no_keys = key_lines
        .iter()
        .fold(file.clone(), |f, l| f.replace(&format!("{l}\n"), ""));
    assert!(matches!(
        from_coldcard(&no_keys, Network::Regtest),
        Err(FormatError::Coldcard(_))
    ));
    let cases = [
        file.replace("Name: treasury\n", ""),
        file.replace("Policy: 2 of 3\n", ""),
        file.replace("Policy: 2 of 3", "Policy: two of three"),
        file.replace("Format: P2WSH", "Format: P2TR"),
        file.replace("Derivation: m/48h/1h/0h/2h\n", ""),
        file.replace("Derivation: m/48h/1h/0h/2h", "Derivation: 48h/x"),
        file.replace(key_lines[0], &key_lines[0].replace(": tpub", ": tpubX")),
        file.replace(key_lines[0], &format!("{}\n{}", key_lines[0], key_lines[0])),
        format!("{file}\nthis line is not a label\n"),
    ];
    for case in cases {
        assert!(
            from_coldcard(&case, Network::Regtest).is_err(),
            "accepted:\n{case}"
        );
    }
}

#[test]
fn coldcard_wrong_network_xpub_is_refused() {
    let file = to_coldcard(&vault_2of3()).unwrap();
    let err = from_coldcard(&file, Network::Bitcoin).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::NetworkMismatch {
                network: Network::Bitcoin,
                ..
            }
        ),
        "{err}"
    );
    // One mainnet xpub among testnet ones.
    let (_, tpub) = cosigner_at(2, ACCOUNT, Network::Regtest);
    let (_, xpub) = cosigner_at(2, ACCOUNT, Network::Bitcoin);
    let mixed = file.replace(&tpub.to_string(), &xpub.to_string());
    let err = from_coldcard(&mixed, Network::Regtest).unwrap_err();
    assert!(matches!(err, FormatError::NetworkMismatch { .. }), "{err}");
}

#[test]
fn coldcard_refuses_long_names() {
    let mut v = vault_2of3();
    v.name = "a name far longer than twenty".to_owned();
    assert!(matches!(
        to_coldcard(&v),
        Err(FormatError::Unsupported {
            format: "coldcard",
            ..
        })
    ));
    v.name = "two\nlines".to_owned();
    assert!(to_coldcard(&v).is_err());
}

// ---------------------------------------------------------------------------------------------
// Properties

fn arb_vault() -> impl Strategy<Value = VaultDescriptors> {
    (1usize..=4, 0usize..3, any::<u8>()).prop_flat_map(|(n, script, base)| {
        (1..=n).prop_map(move |k| {
            let keys: Vec<String> = (0..n)
                .map(|i| key(base.wrapping_add(i as u8 * 31)))
                .collect();
            let inner = format!("sortedmulti({k},{})", keys.join(","));
            let desc = match script {
                0 => format!("wsh({inner})"),
                1 => format!("sh(wsh({inner}))"),
                _ => format!("sh({inner})"),
            };
            vault_from("prop", &desc)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn every_format_round_trips(v in arb_vault()) {
        let bsms = from_bsms(&to_bsms(&v).unwrap(), Network::Regtest).unwrap();
        prop_assert_eq!(&bsms, &unnamed(&v));
        let caravan = from_caravan(&to_caravan(&v).unwrap()).unwrap();
        prop_assert_eq!(&caravan, &v);
        let coldcard = from_coldcard(&to_coldcard(&v).unwrap(), Network::Regtest).unwrap();
        prop_assert_eq!(&coldcard, &v);
        let first = v.addresses(false, 3).unwrap();
        prop_assert_eq!(bsms.addresses(false, 3).unwrap(), first.clone());
        prop_assert_eq!(caravan.addresses(false, 3).unwrap(), first.clone());
        prop_assert_eq!(coldcard.addresses(false, 3).unwrap(), first);
    }

    /// A one-character change to a BSMS record is refused, or (e.g. in a hex digit's case)
    /// still describes exactly the same addresses.
    #[test]
    fn bsms_mutations_never_yield_another_vault(pos in any::<prop::sample::Index>(), c in prop::char::range('!', '~')) {
        let v = vault_2of3();
        let text = to_bsms(&v).unwrap();
        let mut chars: Vec<char> = text.chars().collect();
        let i = pos.index(chars.len());
        chars[i] = c;
        let mutated: String = chars.into_iter().collect();
        if let Ok(imported) = from_bsms(&mutated, Network::Regtest) {
            prop_assert_eq!(imported.addresses(false, 5).unwrap(), v.addresses(false, 5).unwrap());
            prop_assert_eq!(imported.addresses(true, 5).unwrap(), v.addresses(true, 5).unwrap());
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,400}") {
        let _ = from_bsms(&s, Network::Regtest);
        let _ = from_caravan(&s);
        let _ = from_coldcard(&s, Network::Regtest);
        let _ = from_bsms(&format!("BSMS 1.0\n{s}\n/0/*,/1/*\nbcrt1q"), Network::Regtest);
        let _ = from_coldcard(&format!("Name: x\nPolicy: 1 of 1\nDerivation: m/48h\n{s}"), Network::Regtest);
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes that must not be mistaken for the standard ones

#[test]
fn multipath_string_refuses_different_policies() {
    // Same keys, paths differ in one step, but the thresholds differ.
    let a = vault_from("a", &format!("wsh(multi(2,{},{}))", key(1), key(2)));
    let b = vault_from("b", &format!("wsh(multi(1,{},{}))", key(1), key(2)));
    let mixed = VaultDescriptors::new("x", Network::Regtest, a.external, b.internal).unwrap();
    assert!(matches!(
        mixed.multipath_string(),
        Err(FormatError::NotMultipath(_))
    ));
}

#[test]
fn non_standard_receive_or_change_steps_are_refused() {
    for steps in ["<2;1>", "<0;2>", "<1;0>"] {
        let v = vault_from(
            "steps",
            &format!(
                "wsh(sortedmulti(2,{},{}))",
                key(1).replace("<0;1>", steps),
                key(2).replace("<0;1>", steps)
            ),
        );
        assert!(
            matches!(to_caravan(&v), Err(FormatError::Unsupported { .. })),
            "{steps}"
        );
        assert!(
            matches!(to_coldcard(&v), Err(FormatError::Unsupported { .. })),
            "{steps}"
        );
        // BSMS restrictions carry any unhardened steps.
        let text = to_bsms(&v).unwrap();
        assert!(
            text.contains(
                &steps
                    .replace('<', "/")
                    .replace(';', "/*,/")
                    .replace('>', "/*")
            ),
            "{text}"
        );
        assert_same_vault(&from_bsms(&text, Network::Regtest).unwrap(), &unnamed(&v));
    }
}

#[test]
fn bsms_refuses_keys_with_different_steps() {
    let v = vault_from(
        "steps",
        &format!(
            "wsh(sortedmulti(2,{},{}))",
            key(1),
            key(2).replace("<0;1>", "<2;3>")
        ),
    );
    assert!(matches!(
        to_bsms(&v),
        Err(FormatError::Unsupported { format: "bsms", .. })
    ));
    // Its BIP-389 form still exists.
    assert!(v.multipath_string().unwrap().contains("<2;3>"));
}

#[test]
fn coldcard_policy_slash_form_and_name_rules() {
    let v = vault_2of3();
    let file = to_coldcard(&v)
        .unwrap()
        .replace("Policy: 2 of 3", "Policy: 2/3");
    assert_same_vault(&from_coldcard(&file, Network::Regtest).unwrap(), &v);
    let mut padded = vault_2of3();
    padded.name = " treasury".to_owned();
    assert!(matches!(
        to_coldcard(&padded),
        Err(FormatError::Unsupported { .. })
    ));
}
