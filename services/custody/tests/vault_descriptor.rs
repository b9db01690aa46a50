//! Vault descriptor templates and validation (pure; the regtest checks against Bitcoin Core's
//! `deriveaddresses` live in the treasury crate's integration tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::{Network, PrivateKey};
use custody::vault::descriptor::{
    AllowWithoutPolicyKey, DescriptorError, PolicyKeyError, Template, TemplateKey, VaultDescriptor,
    NUMS_POINT,
};
use custody::vault::{Keychain, Vault, VaultConfig, VaultError};
use std::str::FromStr;

fn account(seed: u8, network: Network) -> (Xpriv, String) {
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(network, &[seed; 32]).unwrap();
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let acct = master.derive_priv(&secp, &path).unwrap();
    let xpub = Xpub::from_priv(&secp, &acct);
    let fp = master.fingerprint(&secp);
    (master, format!("[{fp}/48'/1'/0'/2']{xpub}"))
}

fn key(seed: u8) -> TemplateKey {
    TemplateKey::parse(&account(seed, Network::Regtest).1).unwrap()
}

fn hsm_key(seed: u8) -> TemplateKey {
    let secp = Secp256k1::new();
    let sk = PrivateKey::from_slice(&[seed; 32], Network::Regtest).unwrap();
    let pk = sk.public_key(&secp);
    let fp = &hash160::Hash::hash(&pk.to_bytes())[..4];
    TemplateKey::parse(&format!("[{}]{pk}", hex::encode(fp))).unwrap()
}

use bdk_wallet::bitcoin::hashes::{hash160, Hash};

/// Templates [`Template::build`] accepts: the policy key is on every path without `older`.
fn templates() -> Vec<Template> {
    vec![
        Template::SortedMulti {
            k: 3,
            officers: vec![key(1), key(2)],
            policy_key: hsm_key(9),
        },
        Template::PolicyWithRecovery {
            policy_key: hsm_key(9),
            k: 2,
            officers: vec![key(1), key(2), key(3)],
            r: 2,
            recovery: vec![key(4), key(5), key(6)],
            older: 144,
        },
        taproot_template(),
    ]
}

fn taproot_template() -> Template {
    Template::TaprootPolicyWithRecovery {
        policy_key: hsm_key(9),
        k: 2,
        officers: vec![key(3), key(1), key(2)],
        r: 2,
        recovery: vec![key(6), key(4), key(5)],
        older: 144,
    }
}

/// Templates in which keys can spend without the policy key: built only with the loud consent.
fn legacy_templates() -> Vec<Template> {
    vec![
        Template::SortedMulti {
            k: 2,
            officers: vec![key(1), key(2)],
            policy_key: hsm_key(9),
        },
        Template::TaprootMultiA {
            k: 2,
            keys: vec![key(1), key(2), key(3)],
        },
    ]
}

fn consent() -> AllowWithoutPolicyKey {
    AllowWithoutPolicyKey::officers_can_spend_without_the_policy_key()
}

#[test]
fn every_template_builds_and_creates_a_vault() {
    let built = templates()
        .into_iter()
        .map(|t| t.build(Network::Regtest).unwrap())
        .chain(legacy_templates().into_iter().map(|t| {
            t.build_without_policy_key_guard(Network::Regtest, consent())
                .unwrap()
        }));
    for d in built {
        assert_ne!(d.external, d.internal);
        let multi = d.multipath_string().expect("templates are multipath");
        let again = VaultDescriptor::parse(&multi, None, Network::Regtest).unwrap();
        assert_eq!(again, d);
        let split = VaultDescriptor::parse(
            &d.external_string(),
            Some(&d.internal_string()),
            Network::Regtest,
        )
        .unwrap();
        assert_eq!(split, d);
        let vault = Vault::create(VaultConfig::new("v1", d, 0).unwrap()).unwrap();
        let a0 = vault.peek_address(Keychain::External, 0);
        let c0 = vault.peek_address(Keychain::Internal, 0);
        assert_ne!(a0.address, c0.address);
        let own = vault.verify_address(&c0.address.to_string()).unwrap();
        assert_eq!((own.keychain, own.index), (Keychain::Internal, 0));
    }
}

#[test]
fn taproot_key_order_is_canonical() {
    let a = Template::TaprootMultiA {
        k: 2,
        keys: vec![key(1), key(2), key(3)],
    };
    let b = Template::TaprootMultiA {
        k: 2,
        keys: vec![key(3), key(1), key(2)],
    };
    assert_eq!(a.descriptor_text().unwrap(), b.descriptor_text().unwrap());
}

#[test]
fn recovery_older_is_read_back() {
    let d = templates()[1].build(Network::Regtest).unwrap();
    assert_eq!(d.recovery_older(), Some(144));
    assert_eq!(
        templates()[0]
            .build(Network::Regtest)
            .unwrap()
            .recovery_older(),
        None
    );
}

fn parse_err(text: &str) -> DescriptorError {
    VaultDescriptor::parse(text, None, Network::Regtest).unwrap_err()
}

#[test]
fn refuses_bad_descriptors() {
    let (_, k1) = account(1, Network::Regtest);
    let (_, k2) = account(2, Network::Regtest);
    let (m3, _) = account(3, Network::Regtest);
    let good = format!("wsh(sortedmulti(2,{k1}/<0;1>/*,{k2}/<0;1>/*))");
    VaultDescriptor::parse(&good, None, Network::Regtest).unwrap();

    // private key
    let with_xprv = format!("wsh(sortedmulti(2,{k1}/<0;1>/*,{m3}/<0;1>/*))");
    assert_eq!(parse_err(&with_xprv), DescriptorError::PrivateKey);
    // wrong network: a mainnet xpub
    let (_, main) = account(7, Network::Bitcoin);
    let e = parse_err(&format!("wsh(sortedmulti(2,{k1}/<0;1>/*,{main}/<0;1>/*))"));
    assert!(matches!(e, DescriptorError::WrongNetwork { .. }), "{e}");
    // missing origin
    let bare = k2.split(']').nth(1).unwrap();
    let e = parse_err(&format!("wsh(sortedmulti(2,{k1}/<0;1>/*,{bare}/<0;1>/*))"));
    assert!(matches!(e, DescriptorError::MissingOrigin(_)), "{e}");
    // duplicate
    let e = parse_err(&format!("wsh(sortedmulti(1,{k1}/<0;1>/*,{k1}/<0;1>/*))"));
    assert!(matches!(e, DescriptorError::DuplicateKey(_)), "{e}");
    // k > n
    let e = parse_err(&format!("wsh(sortedmulti(3,{k1}/<0;1>/*,{k2}/<0;1>/*))"));
    assert!(matches!(e, DescriptorError::Parse(_)), "{e}");
    // timelock out of range (and time-based)
    let e = parse_err(&format!(
        "wsh(or_d(multi(2,{k1}/<0;1>/*,{k2}/<0;1>/*),and_v(v:pk({k1}/<0;1>/*),older(70000))))"
    ));
    assert!(
        matches!(
            e,
            DescriptorError::Timelock(_) | DescriptorError::DuplicateKey(_)
        ),
        "{e}"
    );
    let (_, k4) = account(4, Network::Regtest);
    let e = parse_err(&format!(
        "wsh(or_d(multi(2,{k1}/<0;1>/*,{k2}/<0;1>/*),and_v(v:pk({k4}/<0;1>/*),older(70000))))"
    ));
    assert!(matches!(e, DescriptorError::Timelock(_)), "{e}");
    let e = parse_err(&format!(
        "wsh(or_d(multi(2,{k1}/<0;1>/*,{k2}/<0;1>/*),and_v(v:pk({k4}/<0;1>/*),after(100))))"
    ));
    assert!(matches!(e, DescriptorError::Timelock(_)), "{e}");
    // insane: a path with no signature
    let e = parse_err(&format!(
        "wsh(or_d(multi(2,{k1}/<0;1>/*,{k2}/<0;1>/*),older(10)))"
    ));
    assert!(matches!(e, DescriptorError::Insane(_)), "{e}");
    // checksum mismatch
    let d = VaultDescriptor::parse(&good, None, Network::Regtest).unwrap();
    let mut text = d.multipath_string().unwrap();
    let last = text.pop().unwrap();
    text.push(if last == 'q' { 'p' } else { 'q' });
    assert!(matches!(
        parse_err(&text),
        DescriptorError::ChecksumMismatch { .. }
    ));
    // not a vault type, not ranged
    let e = parse_err(&format!("wpkh({k1}/<0;1>/*)"));
    assert!(matches!(e, DescriptorError::UnsupportedType(_)), "{e}");
    // garbage
    assert!(matches!(
        parse_err("wsh(sortedmulti(2,"),
        DescriptorError::Parse(_)
    ));
    // single path without a change descriptor
    let e = parse_err(&format!("wsh(sortedmulti(2,{k1}/0/*,{k2}/0/*))"));
    assert!(matches!(e, DescriptorError::KeychainMismatch(_)), "{e}");
}

#[test]
fn template_input_errors() {
    let t = Template::SortedMulti {
        k: 4,
        officers: vec![key(1), key(2)],
        policy_key: hsm_key(9),
    };
    assert_eq!(
        t.build(Network::Regtest).unwrap_err(),
        DescriptorError::Threshold { k: 4, n: 3 }
    );
    let t = Template::PolicyWithRecovery {
        policy_key: hsm_key(9),
        k: 1,
        officers: vec![key(1)],
        r: 1,
        recovery: vec![key(2)],
        older: 0,
    };
    assert!(matches!(
        t.build(Network::Regtest),
        Err(DescriptorError::Timelock(_))
    ));
    let t = Template::SortedMulti {
        k: 2,
        officers: vec![key(1), key(1)],
        policy_key: hsm_key(9),
    };
    assert!(matches!(
        t.build(Network::Regtest),
        Err(DescriptorError::DuplicateKey(_))
    ));
    // keys given with a derivation suffix or as private keys are refused at parse
    let (m, k) = account(1, Network::Regtest);
    assert!(matches!(
        TemplateKey::parse(&format!("{k}/0/*")),
        Err(DescriptorError::BadDerivation(_))
    ));
    assert_eq!(
        TemplateKey::parse(&m.to_string()),
        Err(DescriptorError::PrivateKey)
    );
    assert!(VaultConfig::new(
        "bad name!",
        templates()[0].build(Network::Regtest).unwrap(),
        0
    )
    .is_err());
}

#[test]
fn gap_limit_and_load_round_trip() {
    let d = templates()[0].build(Network::Regtest).unwrap();
    let mut cfg = VaultConfig::new("gap", d, 0).unwrap();
    cfg.gap_limit = 3;
    let mut vault = Vault::create(cfg.clone()).unwrap();
    for i in 0..3 {
        assert_eq!(vault.next_receive_address().unwrap().index, i);
    }
    assert!(matches!(
        vault.next_receive_address(),
        Err(VaultError::GapLimit {
            unused: 3,
            limit: 3
        })
    ));
    let changes = vault.take_changes().unwrap();
    let loaded = Vault::load(cfg.clone(), changes.clone()).unwrap();
    assert_eq!(loaded.revealed_index(Keychain::External), Some(2));
    // another vault's changeset does not load under this config
    let other = templates()[2].build(Network::Regtest).unwrap();
    let other_cfg = VaultConfig::new("gap", other, 0).unwrap();
    assert!(matches!(
        Vault::load(other_cfg, changes),
        Err(VaultError::Load { .. })
    ));
    // an address of another network is refused, a foreign one is not ours
    let e = vault
        .verify_address("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq")
        .unwrap_err();
    assert!(matches!(e, VaultError::AddressNetwork { .. }), "{e}");
    let foreign = Vault::create(
        VaultConfig::new("x", templates()[2].build(Network::Regtest).unwrap(), 0).unwrap(),
    )
    .unwrap()
    .peek_address(Keychain::External, 0)
    .address;
    assert!(matches!(
        vault.verify_address(&foreign.to_string()),
        Err(VaultError::NotOurs(_))
    ));
}

fn policy_key_err(t: &Template) -> PolicyKeyError {
    match t.build(Network::Regtest) {
        Err(DescriptorError::PolicyKey(e)) => e,
        other => panic!("expected a policy-key refusal, got {other:?}"),
    }
}

#[test]
fn build_requires_the_policy_key_on_every_untimed_path() {
    // accepted: policy with recovery (wsh and taproot), sortedmulti with k = every key
    for t in templates() {
        let d = t.build(Network::Regtest).unwrap();
        d.require_policy_key(&hsm_key(9)).unwrap();
        // ...and not for another key
        assert!(d.require_policy_key(&hsm_key(8)).is_err());
    }
    // refused: sortedmulti where the officers reach k alone, naming them
    let legacy = legacy_templates();
    let e = policy_key_err(&legacy[0]);
    match &e {
        PolicyKeyError::SpendsWithout { keys } => {
            assert_eq!(keys.len(), 2);
            assert!(keys.iter().all(|k| !k.contains(&hsm_key(9).to_string())));
        }
        other => panic!("{other}"),
    }
    assert!(
        e.to_string().contains("can spend without the policy key"),
        "{e}"
    );
    // refused: taproot multi_a has no policy key at all
    let e = policy_key_err(&legacy[1]);
    assert!(
        matches!(e, PolicyKeyError::SpendsWithout { ref keys } if keys.len() == 2),
        "{e}"
    );
    // the consent builds them, and the check on the descriptor still refuses them
    for t in legacy {
        let d = t
            .build_without_policy_key_guard(Network::Regtest, consent())
            .unwrap();
        assert!(d.require_policy_key(&hsm_key(9)).is_err());
    }
}

#[test]
fn imported_descriptors_are_checked_against_the_policy_key() {
    let p = hsm_key(9);
    let (_, o1) = account(1, Network::Regtest);
    let (_, o2) = account(2, Network::Regtest);
    let (_, r1) = account(4, Network::Regtest);
    // an officer as taproot internal key: a one-key solo path
    let d = VaultDescriptor::parse(
        &format!("tr({o1}/<0;1>/*,and_v(v:pk({p}),pk({o2}/<0;1>/*)))"),
        None,
        Network::Regtest,
    )
    .unwrap();
    let e = d.require_policy_key(&p).unwrap_err();
    assert!(matches!(e, PolicyKeyError::KeyPath { .. }), "{e}");
    assert!(e.to_string().contains("key path"), "{e}");
    // taproot NUMS + multi_a without the policy key
    let d = VaultDescriptor::parse(
        &format!("tr({NUMS_POINT},multi_a(1,{o1}/<0;1>/*,{o2}/<0;1>/*))"),
        None,
        Network::Regtest,
    )
    .unwrap();
    let e = d.require_policy_key(&p).unwrap_err();
    assert!(
        matches!(e, PolicyKeyError::SpendsWithout { ref keys } if keys.len() == 1),
        "{e}"
    );
    assert!(e.to_string().starts_with("key "), "{e}");
    // a recovery path with older needs no policy key
    let d = VaultDescriptor::parse(
        &format!("wsh(or_d(multi(2,{p},{o1}/<0;1>/*),and_v(v:pk({r1}/<0;1>/*),older(144))))"),
        None,
        Network::Regtest,
    )
    .unwrap();
    d.require_policy_key(&p).unwrap();
    // the same recovery key without older is a solo path
    let d = VaultDescriptor::parse(
        &format!("wsh(or_d(multi(2,{p},{o1}/<0;1>/*),pk({r1}/<0;1>/*)))"),
        None,
        Network::Regtest,
    )
    .unwrap();
    let e = d.require_policy_key(&p).unwrap_err();
    assert!(e.to_string().contains(&r1), "{e}");
}

#[test]
fn taproot_template_round_trips_and_canonicalises() {
    let t = taproot_template();
    let text = t.descriptor_text().unwrap();
    assert!(
        text.starts_with(&format!("tr({NUMS_POINT},{{and_v(v:pk(")),
        "{text}"
    );
    let d = t.build(Network::Regtest).unwrap();
    let again = VaultDescriptor::parse(&text, None, Network::Regtest).unwrap();
    assert_eq!(again, d);
    let split = VaultDescriptor::parse(
        &d.external_string(),
        Some(&d.internal_string()),
        Network::Regtest,
    )
    .unwrap();
    assert_eq!(split, d);
    assert_eq!(d.recovery_older(), Some(144));
    // key order given does not matter
    let Template::TaprootPolicyWithRecovery {
        policy_key,
        officers,
        recovery,
        ..
    } = t
    else {
        unreachable!()
    };
    let shuffled = Template::TaprootPolicyWithRecovery {
        policy_key,
        k: 2,
        officers: officers.into_iter().rev().collect(),
        r: 2,
        recovery: recovery.into_iter().rev().collect(),
        older: 144,
    };
    assert_eq!(shuffled.descriptor_text().unwrap(), text);
    // input errors
    let bad = Template::TaprootPolicyWithRecovery {
        policy_key: hsm_key(9),
        k: 3,
        officers: vec![key(1)],
        r: 1,
        recovery: vec![key(2)],
        older: 144,
    };
    assert_eq!(
        bad.build(Network::Regtest).unwrap_err(),
        DescriptorError::Threshold { k: 3, n: 1 }
    );
}

/// The template's addresses equal those of the same descriptor written by hand from keys
/// derived here with BIP-32 (officers and recovery keys sorted by account key).
#[test]
fn taproot_template_addresses_match_a_hand_built_descriptor() {
    use bdk_wallet::bitcoin::bip32::ChildNumber;
    use bdk_wallet::miniscript::{Descriptor, DescriptorPublicKey};
    let secp = Secp256k1::new();
    let d = taproot_template().build(Network::Regtest).unwrap();
    let vault = Vault::create(VaultConfig::new("tr", d, 0).unwrap()).unwrap();
    let p = PrivateKey::from_slice(&[9; 32], Network::Regtest)
        .unwrap()
        .public_key(&secp);
    let derived = |seeds: &[u8], chain: u32, i: u32| -> Vec<String> {
        let mut accounts: Vec<(Vec<u8>, Xpriv)> = seeds
            .iter()
            .map(|&s| {
                let master = account(s, Network::Regtest).0;
                let acct = master
                    .derive_priv(&secp, &DerivationPath::from_str("m/48'/1'/0'/2'").unwrap())
                    .unwrap();
                let pk = Xpub::from_priv(&secp, &acct)
                    .public_key
                    .serialize()
                    .to_vec();
                (pk, acct)
            })
            .collect();
        accounts.sort_by(|a, b| a.0.cmp(&b.0));
        accounts
            .iter()
            .map(|(_, acct)| {
                let child = acct
                    .derive_priv(
                        &secp,
                        &[
                            ChildNumber::from_normal_idx(chain).unwrap(),
                            ChildNumber::from_normal_idx(i).unwrap(),
                        ],
                    )
                    .unwrap();
                Xpub::from_priv(&secp, &child).public_key.to_string()
            })
            .collect()
    };
    for (keychain, chain) in [(Keychain::External, 0), (Keychain::Internal, 1)] {
        for i in 0..3 {
            let o = derived(&[1, 2, 3], chain, i).join(",");
            let r = derived(&[4, 5, 6], chain, i).join(",");
            let text = format!(
                "tr({NUMS_POINT},{{and_v(v:pk({p}),multi_a(2,{o})),and_v(v:multi_a(2,{r}),older(144))}})"
            );
            let by_hand = Descriptor::<DescriptorPublicKey>::from_str(&text)
                .unwrap()
                .at_derivation_index(0)
                .unwrap();
            assert_eq!(
                vault.peek_address(keychain, i).address,
                by_hand.address(Network::Regtest).unwrap(),
                "{keychain:?} {i}"
            );
        }
    }
}
