//! Tests against a real SoftHSM2 token.
//!
//! One token directory per test binary (SoftHSM reads `SOFTHSM2_CONF` once, at
//! `C_Initialize`, and tests run as threads of one process). Without the SoftHSM library the
//! tests print why and pass, unless `TREASURY_REQUIRE_SOFTHSM=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use bitcoin::bip32::{DerivationPath, Fingerprint};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{NetworkKind, PublicKey};
use hsm::{HeldKey, HsmError, Pkcs11Signer, SignedKey, Signer, SoftwareKeystore};

use common::softhsm::{config, softhsm, PIN, TOKEN, WRONG_PIN_TOKEN};

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).unwrap();
    b
}

#[test]
fn generate_export_and_sign_1000_digests() {
    if softhsm().is_none() {
        return;
    }
    let signer = Arc::new(Pkcs11Signer::generate(config(TOKEN, "digests", PIN)).unwrap());
    let pk = signer.public_key();
    assert!(pk.compressed);

    // Descriptor key: [hash160(pk)[..4]]02…
    let h = pk.pubkey_hash().to_byte_array();
    let fp = Fingerprint::from([h[0], h[1], h[2], h[3]]);
    assert_eq!(signer.fingerprint(), fp);
    assert_eq!(signer.descriptor_key(), format!("[{fp}]{pk}"));
    assert_eq!(
        signer.public_keys().unwrap(),
        vec![HeldKey::Single {
            fingerprint: fp,
            key: pk
        }]
    );

    // The same key is found again by label; a second generation under that label is refused.
    let reopened = Pkcs11Signer::open(config(TOKEN, "digests", PIN)).unwrap();
    assert_eq!(reopened.public_key(), pk);
    let again = Pkcs11Signer::generate(config(TOKEN, "digests", PIN)).unwrap_err();
    assert!(matches!(again, HsmError::KeyExists { .. }), "{again}");

    // 1,000 digests over 4 threads (exercises the session pool).
    let secp = Secp256k1::verification_only();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let signer = Arc::clone(&signer);
            std::thread::spawn(move || {
                (0..250)
                    .map(|_| {
                        let digest = random32();
                        (digest, signer.sign_digest(&digest).unwrap())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut n = 0;
    for h in handles {
        for (digest, sig) in h.join().unwrap() {
            let msg = Message::from_digest(digest);
            secp.verify_ecdsa(&msg, &sig, &pk.inner).unwrap();
            let mut normalized = sig;
            normalized.normalize_s();
            assert_eq!(normalized, sig, "signature is not low-S");
            n += 1;
        }
    }
    assert_eq!(n, 1000);
}

#[test]
fn wrong_pin_and_unknown_labels_are_clear_errors() {
    if softhsm().is_none() {
        return;
    }
    let err = Pkcs11Signer::open(config(WRONG_PIN_TOKEN, "any", "000000")).unwrap_err();
    assert!(matches!(err, HsmError::WrongPin { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("wrong pin for pkcs#11 token {WRONG_PIN_TOKEN:?}")
    );
    assert!(!format!("{err:?}").contains("000000"));

    let err = Pkcs11Signer::open(config(TOKEN, "no-such-key", PIN)).unwrap_err();
    assert!(matches!(err, HsmError::KeyNotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no key labelled \"no-such-key\""),
        "{err}"
    );

    let err = Pkcs11Signer::open(config("no-such-token", "k", PIN)).unwrap_err();
    assert!(matches!(err, HsmError::TokenNotFound { .. }), "{err:?}");

    let cfg = config(TOKEN, "k", PIN);
    assert!(!format!("{cfg:?}").contains(PIN));

    let mut cfg = config(TOKEN, "k", PIN);
    cfg.module = PathBuf::from("/nonexistent/libpkcs11.so");
    let err = Pkcs11Signer::open(cfg).unwrap_err();
    assert!(matches!(err, HsmError::ModuleLoad { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot load pkcs#11 module /nonexistent"),
        "{err}"
    );
}

#[test]
fn two_of_two_wsh_hsm_and_software_key() {
    if softhsm().is_none() {
        return;
    }
    let hsm_signer = Pkcs11Signer::generate(config(TOKEN, "policy-2of2", PIN)).unwrap();
    assert!(!format!("{hsm_signer:?}").contains(PIN));
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let officer = SoftwareKeystore::generate("officer-1", NetworkKind::Test, path.clone()).unwrap();
    let secp = Secp256k1::new();
    let child_path = path.extend(DerivationPath::from_str("m/0/7").unwrap());
    let child_xpub = officer
        .account_xpub()
        .derive_pub(&secp, &DerivationPath::from_str("m/0/7").unwrap());
    let sw_pk = PublicKey::new(child_xpub.unwrap().public_key);
    let hsm_pk = hsm_signer.public_key();

    let ws = common::multi_2of2(&hsm_pk, &sw_pk);
    let mut psbt = common::wsh_psbt(&ws, 2);
    for input in &mut psbt.inputs {
        input
            .bip32_derivation
            .insert(hsm_pk.inner, (hsm_signer.fingerprint(), Default::default()));
        input
            .bip32_derivation
            .insert(sw_pk.inner, (officer.fingerprint(), child_path.clone()));
    }

    // A copy with input 1's witness script swapped: refused, and nothing is signed at all.
    let mut bad = psbt.clone();
    bad.inputs[1].witness_script = Some(common::multi_2of2(&sw_pk, &hsm_pk));
    for signer in [&hsm_signer as &dyn Signer, &officer] {
        let err = signer.sign_psbt(&mut bad).unwrap_err();
        assert!(
            matches!(err, HsmError::WitnessScriptMismatch { input: 1 }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "input 1: witness_utxo script is not p2wsh(witness_script)"
        );
        assert!(bad.inputs[0].partial_sigs.is_empty());
    }

    let r1 = hsm_signer.sign_psbt(&mut psbt).unwrap();
    let r2 = officer.sign_psbt(&mut psbt).unwrap();
    assert_eq!(r1.inputs(), vec![0, 1]);
    assert_eq!(r2.inputs(), vec![0, 1]);
    assert!(r1.signed.iter().all(|s| s.key == SignedKey::Ecdsa(hsm_pk)));
    assert!(r2.signed.iter().all(|s| s.key == SignedKey::Ecdsa(sw_pk)));

    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    for (i, input) in psbt.inputs.iter().enumerate() {
        let utxo = input.witness_utxo.as_ref().unwrap();
        let sighash = cache
            .p2wsh_signature_hash(i, &ws, utxo.value, EcdsaSighashType::All)
            .unwrap();
        let msg = Message::from_digest(sighash.to_byte_array());
        assert_eq!(input.partial_sigs.len(), 2);
        for pk in [hsm_pk, sw_pk] {
            let sig = input.partial_sigs[&pk];
            assert_eq!(sig.sighash_type, EcdsaSighashType::All);
            secp.verify_ecdsa(&msg, &sig.signature, &pk.inner).unwrap();
        }
    }

    // Independent check: miniscript finalizes the 2-of-2 and its interpreter accepts both
    // signatures on extraction.
    let tx = common::finalize_and_extract(psbt);
    assert_eq!(tx.input[0].witness.len(), 4); // empty, sig, sig, witness script

    // Refusals name the input.
    let mut p = common::wsh_psbt(&ws, 2);
    p.inputs[1]
        .bip32_derivation
        .insert(hsm_pk.inner, (hsm_signer.fingerprint(), Default::default()));
    p.inputs[1].sighash_type = Some(EcdsaSighashType::SinglePlusAnyoneCanPay.into());
    let err = hsm_signer.sign_psbt(&mut p).unwrap_err();
    assert!(
        matches!(err, HsmError::SighashRefused { input: 1, .. }),
        "{err:?}"
    );
    p.inputs[1].sighash_type = None;
    p.inputs[1].witness_utxo = None;
    let err = hsm_signer.sign_psbt(&mut p).unwrap_err();
    assert!(
        matches!(err, HsmError::MissingWitnessUtxo { input: 1 }),
        "{err:?}"
    );
    p.inputs[1].witness_utxo = p.inputs[0].witness_utxo.clone();
    p.inputs[1].witness_script = None;
    let err = hsm_signer.sign_psbt(&mut p).unwrap_err();
    assert!(
        matches!(err, HsmError::MissingWitnessScript { input: 1 }),
        "{err:?}"
    );

    // A PSBT with none of our keys signs nothing and is not an error.
    let mut other = common::wsh_psbt(&ws, 1);
    assert!(hsm_signer.sign_psbt(&mut other).unwrap().is_empty());
}
