//! Software keystore: encryption at rest and taproot script-path signing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::str::FromStr;

use bitcoin::bip32::{DerivationPath, Xpriv};
use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, UntweakedPublicKey};
use bitcoin::opcodes::all::OP_CHECKSIG;
use bitcoin::script::Builder;
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::taproot::{LeafVersion, TapLeafHash, TaprootBuilder};
use bitcoin::{Amount, NetworkKind, ScriptBuf, TxOut};
use hsm::{HeldKey, HsmError, KdfParams, SignedKey, Signer, SoftwareKeystore};

const PASS: &str = "correct horse battery staple";

fn account() -> DerivationPath {
    DerivationPath::from_str("m/86'/1'/0'").unwrap()
}

#[test]
fn save_reload_wrong_passphrase_and_redacted_debug() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("officer.json");
    let ks = SoftwareKeystore::generate("officer-a", NetworkKind::Test, account()).unwrap();
    ks.save(&path, PASS, KdfParams::insecure_for_tests())
        .unwrap();

    // Refuses to overwrite.
    let err = ks
        .save(&path, PASS, KdfParams::insecure_for_tests())
        .unwrap_err();
    assert!(matches!(err, HsmError::Io { .. }), "{err:?}");

    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["kdf"]["algorithm"], "argon2id");
    assert_eq!(json["kdf"]["m_cost_kib"], 64);
    assert_eq!(json["nonce"].as_str().unwrap().len(), 48);
    assert!(!text.contains("tprv"));

    let back = SoftwareKeystore::load(&path, PASS).unwrap();
    assert_eq!(back.fingerprint(), ks.fingerprint());
    assert_eq!(back.account_xpub(), ks.account_xpub());
    assert_eq!(back.id(), "officer-a");
    assert_eq!(
        back.descriptor_key(),
        format!("[{}/86'/1'/0']{}", ks.fingerprint(), ks.account_xpub())
    );
    assert_eq!(
        back.public_keys().unwrap(),
        vec![HeldKey::Extended {
            fingerprint: ks.fingerprint(),
            path: account(),
            xpub: ks.account_xpub()
        }]
    );

    let err = SoftwareKeystore::load(&path, "wrong").unwrap_err();
    assert!(matches!(err, HsmError::WrongPassphrase), "{err:?}");
    assert!(err.to_string().starts_with("wrong passphrase"));

    // Lowering the stored KDF cost (or any public field) breaks decryption.
    let tampered = text.replace("\"t_cost\": 1", "\"t_cost\": 2");
    assert_ne!(tampered, text);
    let err = SoftwareKeystore::from_json(&tampered, PASS).unwrap_err();
    assert!(matches!(err, HsmError::WrongPassphrase), "{err:?}");

    // Debug shows no secret.
    let master = Xpriv::new_master(NetworkKind::Test, &[9u8; 32]).unwrap();
    let ks = SoftwareKeystore::new("officer-b", master, account()).unwrap();
    let dbg = format!("{ks:?}");
    assert!(!dbg.contains(&master.to_string()), "{dbg}");
    assert!(
        !dbg.contains(&hex::encode(master.private_key.secret_bytes())),
        "{dbg}"
    );
    assert!(
        !dbg.contains(&hex::encode(master.chain_code.as_bytes())),
        "{dbg}"
    );
    assert!(dbg.contains("<redacted>"));
    let json = ks.to_json(PASS, KdfParams::insecure_for_tests()).unwrap();
    assert!(!json.contains(&hex::encode(master.private_key.secret_bytes())));
    assert!(!format!("{err:?}").contains(PASS));
}

#[test]
fn production_kdf_round_trip() {
    let ks = SoftwareKeystore::generate("officer-p", NetworkKind::Main, account()).unwrap();
    let json = ks.to_json(PASS, KdfParams::production()).unwrap();
    assert!(json.contains("\"m_cost_kib\": 65536"));
    assert!(KdfParams::production().meets_production_minimum());
    assert!(!KdfParams::insecure_for_tests().meets_production_minimum());
    let back = SoftwareKeystore::from_json(&json, PASS).unwrap();
    assert_eq!(back.account_xpub(), ks.account_xpub());
}

#[test]
fn taproot_script_path_signature_verifies() {
    let secp = Secp256k1::new();
    let ks = SoftwareKeystore::generate("officer-t", NetworkKind::Test, account()).unwrap();
    let rel = DerivationPath::from_str("m/0/3").unwrap();
    let child = ks.account_xpub().derive_pub(&secp, &rel).unwrap();
    let (xonly, _) = child.public_key.x_only_public_key();
    let origin = (ks.fingerprint(), account().extend(&rel));

    // Leaf: <key> OP_CHECKSIG, under an unrelated internal key.
    let leaf_script = Builder::new()
        .push_x_only_key(&xonly)
        .push_opcode(OP_CHECKSIG)
        .into_script();
    let other = Keypair::from_seckey_slice(&secp, &[3u8; 32]).unwrap();
    let internal: UntweakedPublicKey = other.x_only_public_key().0;
    // A second leaf nobody here can satisfy, so the finalizer must use ours.
    let other_leaf = Builder::new()
        .push_x_only_key(&internal)
        .push_opcode(OP_CHECKSIG)
        .into_script();
    let info = TaprootBuilder::new()
        .add_leaf(1, leaf_script.clone())
        .unwrap()
        .add_leaf(1, other_leaf)
        .unwrap()
        .finalize(&secp, internal)
        .unwrap();
    let ver = (leaf_script.clone(), LeafVersion::TapScript);
    let control = info.control_block(&ver).unwrap();
    let leaf = TapLeafHash::from_script(&leaf_script, LeafVersion::TapScript);
    let spk = ScriptBuf::new_p2tr_tweaked(info.output_key());

    let mut psbt = bitcoin::Psbt::from_unsigned_tx(common::unsigned_tx(2)).unwrap();
    for (i, input) in psbt.inputs.iter_mut().enumerate() {
        input.witness_utxo = Some(TxOut {
            value: Amount::from_sat(50_000 + i as u64),
            script_pubkey: spk.clone(),
        });
        input.tap_internal_key = Some(internal);
        input.tap_merkle_root = info.merkle_root();
        input.tap_scripts.insert(
            control.clone(),
            (leaf_script.clone(), LeafVersion::TapScript),
        );
        input
            .tap_key_origins
            .insert(xonly, (vec![leaf], origin.clone()));
    }

    // An input whose control block does not commit to its output key is refused.
    let mut bad = psbt.clone();
    bad.inputs[1].witness_utxo.as_mut().unwrap().script_pubkey =
        ScriptBuf::new_p2tr(&secp, xonly, None);
    let err = ks.sign_psbt(&mut bad).unwrap_err();
    assert!(
        matches!(err, HsmError::TapLeafMismatch { input: 1, .. }),
        "{err:?}"
    );
    assert!(bad.inputs[0].tap_script_sigs.is_empty());

    // All prevouts are needed: a missing one is named.
    let mut bad = psbt.clone();
    bad.inputs[1].witness_utxo = None;
    let err = ks.sign_psbt(&mut bad).unwrap_err();
    assert!(
        matches!(err, HsmError::MissingWitnessUtxo { input: 1 }),
        "{err:?}"
    );

    let report = ks.sign_psbt(&mut psbt).unwrap();
    assert_eq!(report.inputs(), vec![0, 1]);
    assert!(report
        .signed
        .iter()
        .all(|s| s.key == SignedKey::Schnorr { key: xonly, leaf }));

    let prevouts: Vec<TxOut> = psbt
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    for (i, input) in psbt.inputs.iter().enumerate() {
        let sig = input.tap_script_sigs[&(xonly, leaf)];
        assert_eq!(sig.sighash_type, TapSighashType::Default);
        let sighash = cache
            .taproot_script_spend_signature_hash(
                i,
                &Prevouts::All(&prevouts),
                leaf,
                TapSighashType::Default,
            )
            .unwrap();
        let msg = Message::from_digest(sighash.to_byte_array());
        secp.verify_schnorr(&sig.signature, &msg, &xonly).unwrap();
    }

    // Independent check: miniscript's interpreter accepts the script-path spend.
    let tx = common::finalize_and_extract(psbt.clone());
    assert_eq!(tx.input[1].witness.len(), 3); // sig, leaf script, control block
                                              // ...and that check has teeth: one flipped bit in a signature is rejected.
    let mut forged = psbt.clone();
    let sig = forged.inputs[1]
        .tap_script_sigs
        .get_mut(&(xonly, leaf))
        .unwrap();
    let mut bytes = sig.signature.serialize();
    bytes[10] ^= 1;
    sig.signature = bitcoin::secp256k1::schnorr::Signature::from_slice(&bytes).unwrap();
    assert!(common::try_finalize_and_extract(forged).is_err());

    // A non-default sighash type is never signed.
    let mut p = psbt.clone();
    p.inputs[0].sighash_type = Some(TapSighashType::SinglePlusAnyoneCanPay.into());
    let err = ks.sign_psbt(&mut p).unwrap_err();
    assert!(
        matches!(err, HsmError::SighashRefused { input: 0, .. }),
        "{err:?}"
    );

    // Another keystore (different fingerprint) signs nothing.
    let stranger = SoftwareKeystore::generate("stranger", NetworkKind::Test, account()).unwrap();
    let mut p = psbt.clone();
    assert!(stranger.sign_psbt(&mut p).unwrap().is_empty());
}

#[test]
fn two_software_keystores_sign_wsh_and_refuse_bad_inputs() {
    let secp = Secp256k1::new();
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let rel = DerivationPath::from_str("m/0/0").unwrap();
    let a = SoftwareKeystore::generate("a", NetworkKind::Test, path.clone()).unwrap();
    let b = SoftwareKeystore::generate("b", NetworkKind::Test, path.clone()).unwrap();
    let pk = |ks: &SoftwareKeystore| {
        bitcoin::PublicKey::new(
            ks.account_xpub()
                .derive_pub(&secp, &rel)
                .unwrap()
                .public_key,
        )
    };
    let (pa, pb) = (pk(&a), pk(&b));
    let ws = common::multi_2of2(&pa, &pb);
    let mut psbt = common::wsh_psbt(&ws, 1);
    psbt.inputs[0]
        .bip32_derivation
        .insert(pa.inner, (a.fingerprint(), path.extend(&rel)));
    psbt.inputs[0]
        .bip32_derivation
        .insert(pb.inner, (b.fingerprint(), path.extend(&rel)));

    // non_witness_utxo that is not the spent transaction: refused.
    let mut bad = psbt.clone();
    bad.inputs[0].non_witness_utxo = Some(common::unsigned_tx(1));
    let err = a.sign_psbt(&mut bad).unwrap_err();
    assert!(
        matches!(err, HsmError::UtxoMismatch { input: 0 }),
        "{err:?}"
    );

    // A key of ours that the script does not use: refused.
    let mut bad = psbt.clone();
    let lone = common::multi_2of2(&pb, &pb);
    bad.inputs[0].witness_script = Some(lone.clone());
    bad.inputs[0].witness_utxo.as_mut().unwrap().script_pubkey =
        ScriptBuf::new_p2wsh(&lone.wscript_hash());
    let err = a.sign_psbt(&mut bad).unwrap_err();
    assert!(
        matches!(err, HsmError::KeyNotInScript { input: 0, .. }),
        "{err:?}"
    );

    assert_eq!(a.sign_psbt(&mut psbt).unwrap().inputs(), vec![0]);
    assert_eq!(b.sign_psbt(&mut psbt).unwrap().inputs(), vec![0]);
    common::finalize_and_extract(psbt);
}
