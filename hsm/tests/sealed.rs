//! The taproot policy key sealed under a real SoftHSM2 token's AES key.
//!
//! One token directory per test binary; without the SoftHSM library the tests print why and
//! pass, unless `TREASURY_REQUIRE_SOFTHSM=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::str::FromStr;

use bitcoin::absolute::LockTime;
use bitcoin::bip32::DerivationPath;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::sighash::{Prevouts, SighashCache};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, NetworkKind, OutPoint, Psbt, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    Witness,
};
use hsm::{HsmError, SealedKey, SignedKey, Signer, SoftwareKeystore};
use miniscript::descriptor::DescriptorPublicKey;
use miniscript::psbt::PsbtExt;
use miniscript::{Descriptor, Interpreter};

use common::softhsm::{config, softhsm, PIN, TOKEN, WRONG_PIN_TOKEN};

const NUMS: &str = "50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0";

/// This binary never tests a wrong PIN, so the second token serves as "another token".
const OTHER_TOKEN: &str = WRONG_PIN_TOKEN;

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sealed-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

#[test]
fn seal_unseal_and_refuse_damage_and_other_tokens() {
    if softhsm().is_none() {
        return;
    }
    let dir = tmp();
    let path = dir.path().join("policy.sealed");
    let sealed = SealedKey::generate(&config(TOKEN, "wrap-a", PIN), &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!format!("{sealed:?}").contains("secret\": \""));
    // refused: the file exists
    assert!(matches!(
        SealedKey::generate(&config(TOKEN, "wrap-a", PIN), &path),
        Err(HsmError::Io { .. })
    ));

    // unseal: same public key, and the key signs
    let opened = SealedKey::open(&config(TOKEN, "wrap-a", PIN), &path).unwrap();
    assert_eq!(opened.public_key(), sealed.public_key());
    assert_eq!(opened.descriptor_key(), sealed.descriptor_key());
    assert!(opened.public_key().compressed);

    // a damaged ciphertext is refused by the token (GCM tag)
    let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ct = file["ciphertext"].as_str().unwrap().to_owned();
    let flipped = format!(
        "{}{}",
        if ct.starts_with('0') { "1" } else { "0" },
        &ct[1..]
    );
    file["ciphertext"] = flipped.into();
    let damaged = dir.path().join("damaged.sealed");
    std::fs::write(&damaged, file.to_string()).unwrap();
    let err = SealedKey::open(&config(TOKEN, "wrap-a", PIN), &damaged).unwrap_err();
    assert!(matches!(err, HsmError::Unseal { .. }), "{err}");
    // ...and so is a swapped public key (it is authenticated data)
    let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
    file["public_key"] = other_public_key().into();
    std::fs::write(&damaged, file.to_string()).unwrap();
    let err = SealedKey::open(&config(TOKEN, "wrap-a", PIN), &damaged).unwrap_err();
    assert!(matches!(err, HsmError::Unseal { .. }), "{err}");
    // ...and a file that is not a sealed key
    std::fs::write(&damaged, "{}").unwrap();
    let err = SealedKey::open(&config(TOKEN, "wrap-a", PIN), &damaged).unwrap_err();
    assert!(matches!(err, HsmError::InvalidSealedKey { .. }), "{err}");

    // another wrapping key on the same token does not open it
    SealedKey::generate(&config(TOKEN, "wrap-b", PIN), &dir.path().join("b.sealed")).unwrap();
    let err = SealedKey::open(&config(TOKEN, "wrap-b", PIN), &path).unwrap_err();
    assert!(matches!(err, HsmError::Unseal { .. }), "{err}");

    // another token: without the key, and with a key of the same label
    let err = SealedKey::open(&config(OTHER_TOKEN, "wrap-a", PIN), &path).unwrap_err();
    assert!(matches!(err, HsmError::KeyNotFound { .. }), "{err}");
    SealedKey::generate(
        &config(OTHER_TOKEN, "wrap-a", PIN),
        &dir.path().join("other.sealed"),
    )
    .unwrap();
    let err = SealedKey::open(&config(OTHER_TOKEN, "wrap-a", PIN), &path).unwrap_err();
    assert!(matches!(err, HsmError::Unseal { .. }), "{err}");
    assert!(!err.to_string().contains(&ct), "{err}");
}

fn other_public_key() -> String {
    let secp = Secp256k1::new();
    let sk = bitcoin::secp256k1::SecretKey::from_slice(&[3; 32]).unwrap();
    bitcoin::PublicKey::new(sk.public_key(&secp)).to_string()
}

/// The new template's shape: the policy key AND 2 of 3 officers, or after 144 blocks 1 of the
/// recovery keys, NUMS internal key.
fn template(p: &str, officers: &[String], recovery: &str, chain: u32) -> String {
    let o: Vec<String> = officers.iter().map(|k| format!("{k}/{chain}/*")).collect();
    format!(
        "tr({NUMS},{{and_v(v:pk({p}),multi_a(2,{})),and_v(v:multi_a(1,{recovery}/{chain}/*),older(144))}})",
        o.join(",")
    )
}

#[test]
fn signs_a_taproot_spend_of_the_policy_template_and_it_verifies() {
    if softhsm().is_none() {
        return;
    }
    let dir = tmp();
    let path = dir.path().join("policy.sealed");
    SealedKey::generate(&config(TOKEN, "wrap-sign", PIN), &path).unwrap();
    let policy = SealedKey::open(&config(TOKEN, "wrap-sign", PIN), &path).unwrap();
    let account = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let keys: Vec<SoftwareKeystore> = (0..4)
        .map(|i| {
            SoftwareKeystore::generate(format!("o{i}"), NetworkKind::Test, account.clone()).unwrap()
        })
        .collect();
    let officers: Vec<String> = keys[..3].iter().map(|k| k.descriptor_key()).collect();
    let text = template(
        &policy.descriptor_key(),
        &officers,
        &keys[3].descriptor_key(),
        0,
    );
    let desc = Descriptor::<DescriptorPublicKey>::from_str(&text).unwrap();
    let at = desc.at_derivation_index(5).unwrap();
    let spk = at.script_pubkey();

    let funding = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([4; 32]), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(1_000_000),
            script_pubkey: spk.clone(),
        }],
    };
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(funding.compute_txid(), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(990_000),
            script_pubkey: ScriptBuf::new_op_return([1u8; 4]),
        }],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    psbt.inputs[0].witness_utxo = Some(funding.output[0].clone());
    psbt.update_input_with_descriptor(0, &at).unwrap();

    // The sealed key signs the policy leaf only, with BIP-340 Schnorr.
    let report = policy.sign_psbt(&mut psbt).unwrap();
    assert_eq!(report.signed.len(), 1);
    let SignedKey::Schnorr { key, leaf } = report.signed[0].key.clone() else {
        panic!("expected a schnorr signature");
    };
    assert_eq!(key, policy.public_key().inner.x_only_public_key().0);
    let sig = psbt.inputs[0].tap_script_sigs[&(key, leaf)];
    // bitcoin's verification over the taproot script-path sighash
    let secp = Secp256k1::verification_only();
    let prevouts = [funding.output[0].clone()];
    let hash = SighashCache::new(&psbt.unsigned_tx)
        .taproot_script_spend_signature_hash(0, &Prevouts::All(&prevouts), leaf, sig.sighash_type)
        .unwrap();
    secp.verify_schnorr(&sig.signature, &Message::from(hash), &key)
        .unwrap();

    // Two officers complete the leaf; miniscript finalizes and its interpreter verifies every
    // signature against the transaction.
    keys[0].sign_psbt(&mut psbt).unwrap();
    keys[1].sign_psbt(&mut psbt).unwrap();
    psbt.finalize_mut(&secp).unwrap();
    let signed = psbt.extract_tx().unwrap();
    let txin = &signed.input[0];
    let interp = Interpreter::from_txdata(
        &spk,
        &txin.script_sig,
        &txin.witness,
        txin.sequence,
        signed.lock_time,
    )
    .unwrap();
    let satisfied: Vec<_> = interp
        .iter(&secp, &signed, 0, &Prevouts::All(&prevouts))
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!satisfied.is_empty());

    // The sealed key never signs ECDSA (a wsh input holding its key is not signed).
    let wsh = Descriptor::<DescriptorPublicKey>::from_str(&format!(
        "wsh(and_v(v:pk({}),pk({}/0/*)))",
        policy.descriptor_key(),
        officers[0]
    ))
    .unwrap();
    let mut v0 = psbt_for(&wsh.at_derivation_index(0).unwrap().script_pubkey());
    v0.update_input_with_descriptor(0, &wsh.at_derivation_index(0).unwrap())
        .unwrap();
    assert!(policy.sign_psbt(&mut v0).unwrap().is_empty());
}

fn psbt_for(spk: &ScriptBuf) -> Psbt {
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([5; 32]), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(1),
            script_pubkey: ScriptBuf::new_op_return([2u8; 4]),
        }],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    psbt.inputs[0].witness_utxo = Some(TxOut {
        value: Amount::from_sat(10_000),
        script_pubkey: spk.clone(),
    });
    psbt
}

const EXAMPLE: &str = include_str!("../../policies/examples/strategic-reserve.toml");

/// The policy signer in front of a sealed key registers the taproot template and refuses
/// taproot vaults that some keys could spend without it.
#[test]
fn the_policy_signer_registers_only_taproot_vaults_that_need_the_sealed_key() {
    use hsm::policy_signer::PolicySignerError;
    use hsm::PolicySigner;
    if softhsm().is_none() {
        return;
    }
    let dir = tmp();
    let path = dir.path().join("policy.sealed");
    let sealed = SealedKey::generate(&config(TOKEN, "wrap-vaults", PIN), &path).unwrap();
    let p = sealed.descriptor_key();
    let account = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let keys: Vec<String> = (0..4)
        .map(|i| {
            SoftwareKeystore::generate(format!("v{i}"), NetworkKind::Test, account.clone())
                .unwrap()
                .descriptor_key()
        })
        .collect();
    let policy = policies::Policy::from_toml(EXAMPLE).unwrap();
    let mut signer = PolicySigner::new(sealed, policy, bitcoin::Network::Regtest).unwrap();
    let good = |c| template(&p, &keys[..3], &keys[3], c);
    signer.add_vault("tr", &good(0), &good(1)).unwrap();

    // An officer as internal key: a key-path solo spend.
    let key_path = |c: u32| {
        format!(
            "tr({}/{c}/*,and_v(v:pk({p}),multi_a(1,{}/{c}/*,{}/{c}/*)))",
            keys[0], keys[1], keys[2]
        )
    };
    let err = signer
        .add_vault("keypath", &key_path(0), &key_path(1))
        .unwrap_err();
    assert!(
        matches!(err, PolicySignerError::PolicyKeyBypass { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("key path"), "{err}");

    // A recovery leaf without its timelock.
    let no_older = |c: u32| {
        format!(
            "tr({NUMS},{{and_v(v:pk({p}),multi_a(2,{}/{c}/*,{}/{c}/*)),multi_a(1,{}/{c}/*)}})",
            keys[0], keys[1], keys[3]
        )
    };
    let err = signer
        .add_vault("noolder", &no_older(0), &no_older(1))
        .unwrap_err();
    assert!(err.to_string().contains(&keys[3]), "{err}");
}

/// The whole path for a taproot vault: the policy signer in front of the sealed key checks an
/// approved request and signs the policy leaf; two officers complete it; miniscript finalizes
/// and its interpreter verifies the transaction.
#[test]
fn the_policy_signer_signs_an_approved_taproot_spend_with_the_sealed_key() {
    use bitcoin::secp256k1::SecretKey;
    use hsm::policy_signer::SpendAuthorization;
    use hsm::PolicySigner;
    use policies::approval::{sign, ApprovalSubject, Verdict};
    use policies::evaluate::ReceivedApproval;
    const NOW: i64 = 1_800_000_000_000;
    const TIP: u32 = 900_000;
    const HOUR: i64 = 3_600_000;
    if softhsm().is_none() {
        return;
    }
    let dir = tmp();
    let path = dir.path().join("policy.sealed");
    let sealed = SealedKey::generate(&config(TOKEN, "wrap-spend", PIN), &path).unwrap();
    let p = sealed.descriptor_key();
    let account = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let keys: Vec<SoftwareKeystore> = (0..4)
        .map(|i| {
            SoftwareKeystore::generate(format!("s{i}"), NetworkKind::Test, account.clone()).unwrap()
        })
        .collect();
    let officers: Vec<String> = keys[..3].iter().map(|k| k.descriptor_key()).collect();
    let text = |c| template(&p, &officers, &keys[3].descriptor_key(), c);
    let external = Descriptor::<DescriptorPublicKey>::from_str(&text(0)).unwrap();
    let internal = Descriptor::<DescriptorPublicKey>::from_str(&text(1)).unwrap();
    let policy = policies::Policy::from_toml(EXAMPLE).unwrap();
    let mut signer = PolicySigner::new(sealed, policy, bitcoin::Network::Regtest).unwrap();
    signer
        .add_vault("main", &external.to_string(), &internal.to_string())
        .unwrap();

    // 1 BTC in; 0.5 BTC to a stranger, the rest less a 5,000 sat fee back as change.
    let coin = external.at_derivation_index(3).unwrap();
    let change = internal.at_derivation_index(0).unwrap();
    let funding = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn::default()],
        output: vec![TxOut {
            value: Amount::from_sat(100_000_000),
            script_pubkey: coin.script_pubkey(),
        }],
    };
    let secp = Secp256k1::new();
    let stranger =
        bitcoin::CompressedPublicKey(SecretKey::from_slice(&[42; 32]).unwrap().public_key(&secp));
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(funding.compute_txid(), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: vec![
            TxOut {
                value: Amount::from_sat(50_000_000),
                script_pubkey: ScriptBuf::new_p2wpkh(&stranger.wpubkey_hash()),
            },
            TxOut {
                value: Amount::from_sat(49_995_000),
                script_pubkey: change.script_pubkey(),
            },
        ],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    psbt.inputs[0].witness_utxo = Some(funding.output[0].clone());
    psbt.update_input_with_descriptor(0, &coin).unwrap();
    psbt.update_output_with_descriptor(1, &change).unwrap();

    let subject = ApprovalSubject {
        request_id: "r-tr".to_owned(),
        vault: "main".to_owned(),
        txid: psbt.unsigned_tx.compute_txid(),
        inputs: vec![(
            psbt.unsigned_tx.input[0].previous_output,
            Amount::from_sat(100_000_000),
        )],
        outputs: psbt
            .unsigned_tx
            .output
            .iter()
            .map(|o| (o.script_pubkey.clone(), o.value))
            .collect(),
        fee: Amount::from_sat(5_000),
        policy: signer.policy().hash(),
        decision: Verdict::Approve,
        expires_at_ms: NOW + 48 * HOUR,
        expires_at_height: Some(TIP + 288),
    };
    let bob = SecretKey::from_slice(&[2; 32]).unwrap();
    let auth = SpendAuthorization {
        request_id: "r-tr".to_owned(),
        vault: "main".to_owned(),
        initiator: "alice".to_owned(),
        created_ms: NOW,
        created_height: TIP,
        requested_fee_rate: None,
        approvals: vec![ReceivedApproval {
            approval: sign(&subject, "bob", &bob),
            received_ms: NOW,
        }],
        subject,
        change_outputs: vec![1],
        history: Vec::new(),
    };
    signer.observe(&auth, NOW);
    let signed = signer.sign(&mut psbt, &auth, NOW + 1, TIP).unwrap();
    assert_eq!(signed.inputs, vec![0]);
    assert_eq!(psbt.inputs[0].tap_script_sigs.len(), 1);

    keys[0].sign_psbt(&mut psbt).unwrap();
    keys[1].sign_psbt(&mut psbt).unwrap();
    let verify = Secp256k1::verification_only();
    psbt.finalize_mut(&verify).unwrap();
    let tx = psbt.extract_tx().unwrap();
    let prevouts = [funding.output[0].clone()];
    let interp = Interpreter::from_txdata(
        &funding.output[0].script_pubkey,
        &tx.input[0].script_sig,
        &tx.input[0].witness,
        tx.input[0].sequence,
        tx.lock_time,
    )
    .unwrap();
    let satisfied: Vec<_> = interp
        .iter(&verify, &tx, 0, &Prevouts::All(&prevouts))
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!satisfied.is_empty());
}
