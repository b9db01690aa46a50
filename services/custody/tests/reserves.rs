//! BIP-127 proofs of reserves, pure: a wsh 2-of-3 vault and a tr multi_a vault funded by
//! made-up transactions, proofs built, signed with master keys, finalized and verified; then
//! every way a proof can be wrong, each refused with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bdk_wallet::bitcoin::hashes::{hash160, Hash};
use bdk_wallet::bitcoin::psbt::{Psbt, PsbtSighashType, SigningKeys};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::transaction::Version;
use bdk_wallet::bitcoin::{
    absolute, Amount, BlockHash, EcdsaSighashType, Network, OutPoint, PrivateKey, PublicKey,
    ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use custody::reserves::{
    build_proof, check_proof_shape, commitment_outpoint, commitment_txid, finalize_proof,
    verify_proof_tx, ProofMessage, ReserveError, COMMITMENT_PREFIX, PSBT_IN_POR_COMMITMENT,
};
use custody::vault::descriptor::{AllowWithoutPolicyKey, Template, TemplateKey};
use custody::vault::{Keychain, Vault, VaultConfig};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn account(seed: u8) -> (Xpriv, TemplateKey) {
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(Network::Regtest, &[seed; 32]).unwrap();
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let acct = master.derive_priv(&secp, &path).unwrap();
    let xpub = Xpub::from_priv(&secp, &acct);
    let fp = master.fingerprint(&secp);
    let key = TemplateKey::parse(&format!("[{fp}/48'/1'/0'/2']{xpub}")).unwrap();
    (master, key)
}

fn wsh_vault() -> Vault {
    let t = Template::SortedMulti {
        k: 2,
        officers: vec![account(1).1, account(2).1],
        policy_key: account(3).1,
    };
    let d = t
        .build_without_policy_key_guard(
            Network::Regtest,
            AllowWithoutPolicyKey::officers_can_spend_without_the_policy_key(),
        )
        .unwrap();
    Vault::create(VaultConfig::new("wsh", d, 0).unwrap()).unwrap()
}

/// The policy (HSM) key: a single static key, as the PKCS#11 token holds it.
fn hsm_key() -> (PrivateKey, TemplateKey) {
    let secp = Secp256k1::new();
    let sk = PrivateKey::from_slice(&[9; 32], Network::Regtest).unwrap();
    let pk = sk.public_key(&secp);
    let fp = &hash160::Hash::hash(&pk.to_bytes())[..4];
    let key = TemplateKey::parse(&format!("[{}]{pk}", hex::encode(fp))).unwrap();
    (sk, key)
}

fn recovery_vault() -> Vault {
    let t = Template::PolicyWithRecovery {
        policy_key: hsm_key().1,
        k: 2,
        officers: vec![account(1).1, account(2).1, account(3).1],
        r: 2,
        recovery: vec![account(4).1, account(5).1, account(6).1],
        older: 144,
    };
    let d = t.build(Network::Regtest).unwrap();
    Vault::create(VaultConfig::new("recovery", d, 0).unwrap()).unwrap()
}

fn tr_vault() -> Vault {
    let t = Template::TaprootMultiA {
        k: 2,
        keys: vec![account(4).1, account(5).1, account(6).1],
    };
    let d = t
        .build_without_policy_key_guard(
            Network::Regtest,
            AllowWithoutPolicyKey::officers_can_spend_without_the_policy_key(),
        )
        .unwrap();
    Vault::create(VaultConfig::new("tr", d, 0).unwrap()).unwrap()
}

/// A made-up funding transaction paying the vault at several indexes, seen in the mempool.
fn fund(vault: &mut Vault, tag: u8, amounts: &[(Keychain, u32, u64)]) {
    let tx = Transaction {
        version: Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint {
                txid: Txid::from_byte_array([tag; 32]),
                vout: 0,
            },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[vec![tag; 72]]),
        }],
        output: amounts
            .iter()
            .map(|(kc, i, sat)| TxOut {
                value: Amount::from_sat(*sat),
                script_pubkey: vault.peek_address(*kc, *i).address.script_pubkey(),
            })
            .collect(),
    };
    vault.apply_mempool(vec![(Arc::new(tx), 1)], vec![]);
}

fn block_hash() -> BlockHash {
    BlockHash::from_byte_array([7; 32])
}

fn message_for(vaults: &[&Vault]) -> ProofMessage {
    ProofMessage::for_vaults(
        vaults,
        Network::Regtest,
        840,
        block_hash(),
        "checkpoint size=12 root=00ff sig=abcd",
    )
    .unwrap()
}

fn sign(psbt: &mut Psbt, seeds: &[u8]) {
    let secp = Secp256k1::new();
    for s in seeds {
        let map = psbt.sign(&account(*s).0, &secp).unwrap();
        let signed: usize = map
            .values()
            .map(|k| match k {
                SigningKeys::Ecdsa(v) => v.len(),
                SigningKeys::Schnorr(v) => v.len(),
            })
            .sum();
        assert!(signed > 0, "key {s} signed nothing");
    }
}

struct Proof {
    psbt: Psbt,
    signed: Psbt,
    tx: Transaction,
    spent: Vec<TxOut>,
    message: String,
    total: Amount,
}

fn prove(vault: &Vault, seeds: &[u8]) -> Proof {
    let msg = message_for(&[vault]);
    let utxos = vault.utxos();
    let built = build_proof(&[(vault, &utxos)], &msg).unwrap();
    let text = msg.encode();
    let mut signed = built.psbt.clone();
    assert_eq!(check_proof_shape(&signed, text.as_bytes()), Ok(built.total));
    sign(&mut signed, seeds);
    let spent = signed
        .inputs
        .iter()
        .skip(1)
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    let tx = finalize_proof(signed.clone(), text.as_bytes()).unwrap();
    Proof {
        psbt: built.psbt,
        signed,
        tx,
        spent,
        message: text,
        total: built.total,
    }
}

fn funded_wsh() -> Vault {
    let mut v = wsh_vault();
    fund(
        &mut v,
        1,
        &[
            (Keychain::External, 0, 100_000),
            (Keychain::External, 3, 250_000),
            (Keychain::Internal, 1, 5_000),
        ],
    );
    v
}

fn funded_tr() -> Vault {
    let mut v = tr_vault();
    fund(
        &mut v,
        2,
        &[
            (Keychain::External, 0, 70_000),
            (Keychain::Internal, 2, 30_000),
        ],
    );
    v
}

fn tr_proof() -> &'static Proof {
    static P: OnceLock<Proof> = OnceLock::new();
    P.get_or_init(|| prove(&funded_tr(), &[4, 6]))
}

fn wsh_proof() -> &'static Proof {
    static P: OnceLock<Proof> = OnceLock::new();
    P.get_or_init(|| prove(&funded_wsh(), &[1, 3]))
}

#[test]
fn commitment_is_single_sha256_of_prefix_and_message() {
    let msg = b"hello";
    let mut h = Sha256::new();
    h.update(COMMITMENT_PREFIX.as_bytes());
    h.update(msg);
    let expected: [u8; 32] = h.finalize().into();
    assert_eq!(commitment_txid(msg).to_byte_array(), expected);
    assert_eq!(commitment_outpoint(msg).vout, 0);
}

#[test]
fn message_encoding_is_canonical_and_round_trips() {
    let v = wsh_vault();
    let t = tr_vault();
    let m = message_for(&[&v, &t]);
    let text = m.encode();
    assert!(text.starts_with("strategic-reserve proof of reserves v1\nnetwork: regtest\n"));
    assert_eq!(text.matches("descriptor: ").count(), 4);
    assert_eq!(ProofMessage::parse(&text).unwrap(), m);
    // Order of vaults does not matter.
    assert_eq!(message_for(&[&t, &v]).encode(), text);
    for bad in [
        format!("{text}\n"),
        text.replace("height: 840", "height: 0840"),
        text.replace("network: regtest", "network: Regtest"),
        text.replace("checkpoint: ", "checkpoint:"),
        text.replacen("descriptor: ", "descriptor:  ", 1),
    ] {
        assert!(
            matches!(ProofMessage::parse(&bad), Err(ReserveError::Message(_))),
            "{bad:?}"
        );
    }
    assert!(ProofMessage::new(Network::Regtest, 1, block_hash(), vec![], "c").is_err());

    // The operator's statement is one line after the block, and round-trips.
    let st = m.clone().with_statement("Q4 2026 attestation").unwrap();
    let st_text = st.encode();
    assert!(st_text.contains("\nstatement: Q4 2026 attestation\ndescriptor: "));
    assert_eq!(ProofMessage::parse(&st_text).unwrap(), st);
    assert_eq!(st.statement(), Some("Q4 2026 attestation"));
    assert_ne!(st_text, text);
    assert!(m.clone().with_statement("two\nlines").is_err());
    assert!(m.clone().with_statement(&"x".repeat(1025)).is_err());
    assert!(
        ProofMessage::parse(&st_text.replace("statement: Q4", "statement:  Q4"))
            .is_ok_and(|p| p != st)
    );
    assert!(
        ProofMessage::parse(&st_text.replace("statement: Q4 2026 attestation", "statement: "))
            .is_err()
    );
    assert!(ProofMessage::new(
        Network::Regtest,
        1,
        block_hash(),
        vec!["abcdefgh".into()],
        "two\nlines"
    )
    .is_err());
    assert!(ProofMessage::new(
        Network::Regtest,
        1,
        block_hash(),
        vec!["ABCDEFGH".into()],
        "c"
    )
    .is_err());
}

#[test]
fn wsh_2_of_3_proof_verifies() {
    let p = wsh_proof();
    assert_eq!(p.total, Amount::from_sat(355_000));
    assert_eq!(p.tx.input.len(), 4);
    assert_eq!(p.tx.output.len(), 1);
    assert!(p.tx.output[0].script_pubkey.is_op_return());
    assert!(p.tx.input[0].witness.is_empty() && p.tx.input[0].script_sig.is_empty());
    // Segwit v0 inputs carry their previous transaction and key origins.
    for i in &p.psbt.inputs[1..] {
        assert!(i.non_witness_utxo.is_some() && i.witness_script.is_some());
        assert_eq!(i.bip32_derivation.len(), 3);
        assert_eq!(
            i.sighash_type,
            Some(PsbtSighashType::from(EcdsaSighashType::All))
        );
    }
    let field = p.psbt.inputs[0]
        .unknown
        .iter()
        .find(|(k, _)| k.type_value == PSBT_IN_POR_COMMITMENT)
        .unwrap();
    assert_eq!(field.1.as_slice(), p.message.as_bytes());
    assert_eq!(
        verify_proof_tx(&p.tx, &p.spent, p.message.as_bytes()),
        Ok(p.total)
    );
}

#[test]
fn tr_multi_a_proof_verifies() {
    let p = tr_proof();
    assert_eq!(p.total, Amount::from_sat(100_000));
    for i in &p.psbt.inputs[1..] {
        assert!(i.tap_internal_key.is_some() && !i.tap_scripts.is_empty());
        // The three signers and the NUMS internal key.
        assert_eq!(i.tap_key_origins.len(), 4);
    }
    assert_eq!(
        verify_proof_tx(&p.tx, &p.spent, p.message.as_bytes()),
        Ok(p.total)
    );
}

#[test]
fn recovery_vault_proof_verifies_through_the_primary_path() {
    let mut v = recovery_vault();
    fund(
        &mut v,
        3,
        &[
            (Keychain::External, 0, 40_000),
            (Keychain::External, 1, 60_000),
        ],
    );
    let msg = message_for(&[&v]);
    let u = v.utxos();
    let built = build_proof(&[(&v, &u)], &msg).unwrap();
    let mut psbt = built.psbt;
    // The officers alone do not satisfy the primary path: the policy key must sign too.
    sign(&mut psbt, &[1, 3]);
    let text = msg.encode();
    assert!(matches!(
        finalize_proof(psbt.clone(), text.as_bytes()),
        Err(ReserveError::Finalize { input: 1, .. })
    ));
    let (sk, _) = hsm_key();
    let secp = Secp256k1::new();
    let hsm: BTreeMap<PublicKey, PrivateKey> = [(sk.public_key(&secp), sk)].into();
    let map = psbt.sign(&hsm, &secp).unwrap();
    assert!(map
        .values()
        .any(|k| matches!(k, SigningKeys::Ecdsa(v) if !v.is_empty())));
    let spent: Vec<TxOut> = psbt.inputs[1..]
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    let tx = finalize_proof(psbt, text.as_bytes()).unwrap();
    assert_eq!(
        verify_proof_tx(&tx, &spent, text.as_bytes()),
        Ok(Amount::from_sat(100_000))
    );
}

#[test]
fn proof_over_two_vaults() {
    let w = funded_wsh();
    let t = funded_tr();
    let msg = message_for(&[&w, &t]);
    let (wu, tu) = (w.utxos(), t.utxos());
    let built = build_proof(&[(&w, &wu), (&t, &tu)], &msg).unwrap();
    assert_eq!(built.total, Amount::from_sat(455_000));
    let mut psbt = built.psbt;
    sign(&mut psbt, &[1, 2, 5, 6]);
    let text = msg.encode();
    let tx = finalize_proof(psbt, text.as_bytes()).unwrap();
    assert_eq!(tx.input.len(), 6);
}

#[test]
fn builder_refuses_a_vault_outside_the_message_and_foreign_utxos() {
    let w = funded_wsh();
    let t = funded_tr();
    let msg = message_for(&[&w]);
    let tu = t.utxos();
    assert!(matches!(
        build_proof(&[(&t, &tu)], &msg),
        Err(ReserveError::VaultNotInMessage { .. })
    ));
    let both = message_for(&[&w, &t]);
    // The tr vault's UTXOs presented as the wsh vault's.
    assert!(matches!(
        build_proof(&[(&w, &tu)], &both),
        Err(ReserveError::Utxo { .. })
    ));
    assert_eq!(build_proof(&[(&w, &[])], &msg), Err(ReserveError::NoUtxos));
    let wu = w.utxos();
    let twice = [wu.clone(), wu].concat();
    assert!(matches!(
        build_proof(&[(&w, &twice)], &msg),
        Err(ReserveError::DuplicateInput(_))
    ));
}

#[test]
fn not_enough_signatures_do_not_finalize() {
    let v = funded_tr();
    let msg = message_for(&[&v]);
    let u = v.utxos();
    let mut psbt = build_proof(&[(&v, &u)], &msg).unwrap().psbt;
    sign(&mut psbt, &[4]);
    assert!(matches!(
        finalize_proof(psbt, msg.encode().as_bytes()),
        Err(ReserveError::Finalize { input: 1, .. })
    ));
}

#[test]
fn a_changed_message_fails() {
    for p in [wsh_proof(), tr_proof()] {
        let other = p.message.replace("height: 840", "height: 841");
        assert!(matches!(
            verify_proof_tx(&p.tx, &p.spent, other.as_bytes()),
            Err(ReserveError::NotACommitment { .. })
        ));
        assert_eq!(
            check_proof_shape(&p.psbt, other.as_bytes()),
            Err(ReserveError::CommitmentFieldMismatch)
        );
    }
}

#[test]
fn a_commitment_input_that_does_not_match_fails() {
    let p = tr_proof();
    let msg = p.message.as_bytes();
    // The field holds the message but input 0 commits to another one.
    let mut psbt = p.psbt.clone();
    psbt.unsigned_tx.input[0].previous_output = commitment_outpoint(b"another message");
    assert!(matches!(
        check_proof_shape(&psbt, msg),
        Err(ReserveError::NotACommitment { .. })
    ));
    let mut tx = p.tx.clone();
    tx.input[0].previous_output.vout = 1;
    assert!(matches!(
        verify_proof_tx(&tx, &p.spent, msg),
        Err(ReserveError::NotACommitment { .. })
    ));
    // No field at all.
    let mut psbt = p.psbt.clone();
    psbt.inputs[0].unknown.clear();
    assert_eq!(
        check_proof_shape(&psbt, msg),
        Err(ReserveError::MissingCommitmentField)
    );
    // A commitment input with a witness.
    let mut tx = p.tx.clone();
    tx.input[0].witness = Witness::from_slice(&[[1u8]]);
    assert!(matches!(
        verify_proof_tx(&tx, &p.spent, msg),
        Err(ReserveError::CommitmentNotEmpty(_))
    ));
    // A second input spending the commitment txid.
    let mut tx = p.tx.clone();
    tx.input[1].previous_output = OutPoint {
        txid: commitment_txid(msg),
        vout: 1,
    };
    assert_eq!(
        verify_proof_tx(&tx, &p.spent, msg),
        Err(ReserveError::CommitmentReused(1))
    );
}

#[test]
fn an_extra_output_fails() {
    for p in [wsh_proof(), tr_proof()] {
        let msg = p.message.as_bytes();
        let extra = TxOut {
            value: Amount::from_sat(1_000),
            script_pubkey: p.spent[0].script_pubkey.clone(),
        };
        let mut psbt = p.psbt.clone();
        psbt.unsigned_tx.output.push(extra.clone());
        psbt.outputs.push(Default::default());
        assert_eq!(
            check_proof_shape(&psbt, msg),
            Err(ReserveError::OutputCount(2))
        );
        let mut tx = p.tx.clone();
        tx.output.push(extra);
        assert_eq!(
            verify_proof_tx(&tx, &p.spent, msg),
            Err(ReserveError::OutputCount(2))
        );
    }
}

#[test]
fn a_spendable_output_fails() {
    let p = wsh_proof();
    let mut tx = p.tx.clone();
    tx.output[0].script_pubkey = p.spent[0].script_pubkey.clone();
    assert_eq!(
        verify_proof_tx(&tx, &p.spent, p.message.as_bytes()),
        Err(ReserveError::SpendableOutput)
    );
}

#[test]
fn a_non_zero_fee_fails() {
    for p in [wsh_proof(), tr_proof()] {
        let msg = p.message.as_bytes();
        let less = p.total - Amount::from_sat(1);
        let mut psbt = p.psbt.clone();
        psbt.unsigned_tx.output[0].value = less;
        assert_eq!(
            check_proof_shape(&psbt, msg),
            Err(ReserveError::Fee {
                inputs: p.total,
                output: less
            })
        );
        let mut tx = p.tx.clone();
        tx.output[0].value = less;
        assert_eq!(
            verify_proof_tx(&tx, &p.spent, msg),
            Err(ReserveError::Fee {
                inputs: p.total,
                output: less
            })
        );
        // A spent output claimed larger than it is.
        let mut spent = p.spent.clone();
        spent[0].value += Amount::from_sat(1);
        assert!(matches!(
            verify_proof_tx(&p.tx, &spent, msg),
            Err(ReserveError::Fee { .. })
        ));
    }
}

#[test]
fn a_real_outpoint_in_position_0_fails() {
    let p = wsh_proof();
    let msg = p.message.as_bytes();
    let real = p.psbt.unsigned_tx.input[1].previous_output;
    let mut psbt = p.psbt.clone();
    psbt.unsigned_tx.input[0].previous_output = real;
    assert_eq!(
        check_proof_shape(&psbt, msg),
        Err(ReserveError::NotACommitment {
            found: real,
            expected: commitment_outpoint(msg)
        })
    );
    // The same with the commitment field removed: refused before anything else.
    psbt.inputs[0].unknown.clear();
    assert_eq!(
        check_proof_shape(&psbt, msg),
        Err(ReserveError::MissingCommitmentField)
    );
    // The finalized transaction with its inputs swapped.
    let mut tx = p.tx.clone();
    tx.input.swap(0, 1);
    assert!(matches!(
        verify_proof_tx(&tx, &p.spent, msg),
        Err(ReserveError::NotACommitment { .. })
    ));
    // A real output as input 0's witness_utxo.
    let mut psbt = p.psbt.clone();
    psbt.inputs[0].witness_utxo = Some(p.spent[0].clone());
    assert!(matches!(
        check_proof_shape(&psbt, msg),
        Err(ReserveError::CommitmentNotEmpty(_))
    ));
}

#[test]
fn a_forged_or_truncated_taproot_witness_fails() {
    let p = tr_proof();
    let msg = p.message.as_bytes();
    // Witness of tr multi_a(2,…): one element per key (signature or empty), script, control block.
    let w: Vec<Vec<u8>> = p.tx.input[1].witness.iter().map(<[u8]>::to_vec).collect();
    let sig_at = w
        .iter()
        .position(|e| e.len() == 64 || e.len() == 65)
        .unwrap();
    for byte in [0usize, 31, 32, 63] {
        let mut forged = w.clone();
        forged[sig_at][byte] ^= 0x01;
        let mut tx = p.tx.clone();
        tx.input[1].witness = Witness::from_slice(&forged);
        let err = verify_proof_tx(&tx, &p.spent, msg).unwrap_err();
        assert!(
            matches!(err, ReserveError::Script { input: 1, .. }),
            "{err}"
        );
    }
    // A truncated signature.
    let mut short = w.clone();
    short[sig_at].truncate(63);
    let mut tx = p.tx.clone();
    tx.input[1].witness = Witness::from_slice(&short);
    assert!(matches!(
        verify_proof_tx(&tx, &p.spent, msg),
        Err(ReserveError::Script { input: 1, .. })
    ));
    // A truncated witness (last element dropped), and an empty one.
    let mut tx = p.tx.clone();
    tx.input[2].witness = Witness::from_slice(&w[..w.len() - 1]);
    assert!(matches!(
        verify_proof_tx(&tx, &p.spent, msg),
        Err(ReserveError::Script { input: 2, .. })
    ));
    let mut tx = p.tx.clone();
    tx.input[1].witness = Witness::new();
    assert!(matches!(
        verify_proof_tx(&tx, &p.spent, msg),
        Err(ReserveError::Script { input: 1, .. })
    ));
    // Another spent output script for a taproot input changes every taproot sighash.
    let mut spent = p.spent.clone();
    spent.swap(0, 1);
    assert!(verify_proof_tx(&p.tx, &spent, msg).is_err());
}

#[test]
fn a_forged_ecdsa_signature_fails() {
    let p = wsh_proof();
    let w: Vec<Vec<u8>> = p.tx.input[2].witness.iter().map(<[u8]>::to_vec).collect();
    let mut forged = w.clone();
    // Element 0 is the CHECKMULTISIG dummy; element 1 a DER signature (byte 10 lies inside r).
    forged[1][10] ^= 0x01;
    let mut tx = p.tx.clone();
    tx.input[2].witness = Witness::from_slice(&forged);
    assert!(matches!(
        verify_proof_tx(&tx, &p.spent, p.message.as_bytes()),
        Err(ReserveError::Script { input: 2, .. })
    ));
}

#[test]
fn signatures_other_than_sighash_all_are_refused() {
    let p = wsh_proof();
    let msg = p.message.as_bytes();
    let mut psbt = p.psbt.clone();
    psbt.inputs[1].sighash_type =
        Some(PsbtSighashType::from(EcdsaSighashType::AllPlusAnyoneCanPay));
    assert!(matches!(
        check_proof_shape(&psbt, msg),
        Err(ReserveError::SighashNotAll { input: 1, .. })
    ));
    // Signed with ANYONECANPAY: every signature verifies, the proof is still refused.
    let mut acp = p.psbt.clone();
    for i in &mut acp.inputs[1..] {
        i.sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::AllPlusAnyoneCanPay));
    }
    sign(&mut acp, &[1, 2]);
    // A signer's check of the partially signed proof refuses those signatures already.
    let mut reset = acp.clone();
    for i in &mut reset.inputs[1..] {
        i.sighash_type = None;
    }
    assert!(matches!(
        check_proof_shape(&reset, msg),
        Err(ReserveError::SighashNotAll { input: 1, .. })
    ));
    let secp = Secp256k1::verification_only();
    use bdk_wallet::miniscript::psbt::PsbtExt;
    for i in 1..acp.inputs.len() {
        acp.finalize_inp_mut(&secp, i).unwrap();
    }
    let tx = acp.extract_tx_unchecked_fee_rate();
    assert!(matches!(
        verify_proof_tx(&tx, &p.spent, msg),
        Err(ReserveError::SighashNotAll { input: 1, .. })
    ));
}

#[test]
fn spent_outputs_must_match_the_inputs() {
    let p = tr_proof();
    assert_eq!(
        verify_proof_tx(&p.tx, &p.spent[1..], p.message.as_bytes()),
        Err(ReserveError::SpentOutputs {
            expected: 2,
            found: 1
        })
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_single_byte_change_of_the_message_fails(pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        for p in [wsh_proof(), tr_proof()] {
            let mut msg = p.message.clone().into_bytes();
            let i = pos.index(msg.len());
            msg[i] ^= flip;
            prop_assert!(verify_proof_tx(&p.tx, &p.spent, &msg).is_err());
            prop_assert!(check_proof_shape(&p.signed, &msg).is_err());
        }
    }
}

#[test]
fn a_proof_without_real_inputs_fails() {
    let p = tr_proof();
    let mut tx = p.tx.clone();
    tx.input.truncate(1);
    tx.output[0].value = Amount::ZERO;
    assert_eq!(
        verify_proof_tx(&tx, &[], p.message.as_bytes()),
        Err(ReserveError::NoUtxos)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn messages_round_trip(
        network in prop::sample::select(vec![Network::Bitcoin, Network::Testnet, Network::Signet, Network::Regtest]),
        height in any::<u32>(),
        hash in any::<[u8; 32]>(),
        sums in prop::collection::vec("[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{8}", 1..5),
        checkpoint in "[ -~]{1,200}",
    ) {
        let m = ProofMessage::new(network, height, BlockHash::from_byte_array(hash), sums, &checkpoint).unwrap();
        prop_assert_eq!(ProofMessage::parse(&m.encode()).unwrap(), m);
    }
}
