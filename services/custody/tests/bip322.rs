//! BIP-322 proofs of funds, pure: the BIP's own test vectors (message hashes, `to_spend` and
//! `to_sign` txids, the "simple" signatures of its P2WPKH key), then a wsh 2-of-3 vault and a tr
//! multi_a vault funded by made-up transactions, proofs built, signed with master keys,
//! finalized and verified; then every way a proof can be wrong, each refused with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bdk_wallet::bitcoin::hashes::Hash;
use bdk_wallet::bitcoin::psbt::{Psbt, PsbtSighashType, SigningKeys};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::transaction::Version;
use bdk_wallet::bitcoin::{
    absolute, Address, Amount, BlockHash, EcdsaSighashType, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Txid, Witness,
};
use custody::reserves::bip322::{
    build_proof_of_funds, check_proof_of_funds_psbt, decode_full, encode_full, finalize,
    from_simple, message_hash, to_sign, to_spend, to_spend_outpoint, verify, Bip322Error,
    Challenge, TAG,
};
use custody::reserves::{build_proof, finalize_proof, ProofMessage, ReserveError};
use custody::vault::descriptor::{AllowWithoutPolicyKey, Template, TemplateKey};
use custody::vault::{Keychain, Vault, VaultConfig};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

// ---- the BIP's test vectors (data from the BIP text) ----

const BIP_ADDRESS: &str = "bc1q9vza2e8x573nczrlzms0wvx3gsqjx7vavgkx0l";

fn bip_challenge() -> ScriptBuf {
    Address::from_str(BIP_ADDRESS)
        .unwrap()
        .require_network(Network::Bitcoin)
        .unwrap()
        .script_pubkey()
}

#[test]
fn message_hash_matches_the_bip_vectors() {
    assert_eq!(
        hex::encode(message_hash(b"")),
        "c90c269c4f8fcbe6880f72a721ddfbf1914268a794cbb21cfafee13770ae19f1"
    );
    assert_eq!(
        hex::encode(message_hash(b"Hello World")),
        "f0eb03b1a75ac6d9847f55c624a99169b5dccba2a31f5b23bea77ba270de0a7a"
    );
}

#[test]
fn to_spend_and_to_sign_txids_match_the_bip_vectors() {
    let c = bip_challenge();
    for (msg, spend, sign) in [
        (
            "",
            "c5680aa69bb8d860bf82d4e9cd3504b55dde018de765a91bb566283c545a99a7",
            "1e9654e951a5ba44c8604c4de6c67fd78a27e81dcadcfe1edf638ba3aaebaed6",
        ),
        (
            "Hello World",
            "b79d196740ad5217771c1098fc4a4b51e0535c32236c71f1ea4d61a2d603352b",
            "88737ae86f2077145f93cc4b153ae9a1cb8d56afa511988c149c5c8c9d93bddf",
        ),
    ] {
        let s = to_spend(msg.as_bytes(), &c);
        assert_eq!(s.compute_txid().to_string(), spend, "to_spend of {msg:?}");
        assert_eq!(
            to_spend_outpoint(msg.as_bytes(), &c).txid.to_string(),
            spend
        );
        let t = to_sign(s.compute_txid(), &[]);
        assert_eq!(t.compute_txid().to_string(), sign, "to_sign of {msg:?}");
    }
}

#[test]
fn the_bip_simple_signatures_verify_and_only_for_their_message() {
    let c = bip_challenge();
    let cases = [
        ("", "AkcwRAIgM2gBAQqvZX15ZiysmKmQpDrG83avLIT492QBzLnQIxYCIBaTpOaD20qRlEylyxFSeEA2ba9YOixpX8z46TSDtS40ASECx/EgAxlkQpQ9hYjgGu6EBCPMVPwVIVJqO4XCsMvViHI="),
        ("", "AkgwRQIhAPkJ1Q4oYS0htvyuSFHLxRQpFAY56b70UvE7Dxazen0ZAiAtZfFz1S6T6I23MWI2lK/pcNTWncuyL8UL+oMdydVgzAEhAsfxIAMZZEKUPYWI4BruhAQjzFT8FSFSajuFwrDL1Yhy"),
        ("Hello World", "AkcwRAIgZRfIY3p7/DoVTty6YZbWS71bc5Vct9p9Fia83eRmw2QCICK/ENGfwLtptFluMGs2KsqoNSk89pO7F29zJLUx9a/sASECx/EgAxlkQpQ9hYjgGu6EBCPMVPwVIVJqO4XCsMvViHI="),
        ("Hello World", "AkgwRQIhAOzyynlqt93lOKJr+wmmxIens//zPzl9tqIOua93wO6MAiBi5n5EyAcPScOjf1lAqIUIQtr3zKNeavYabHyR8eGhowEhAsfxIAMZZEKUPYWI4BruhAQjzFT8FSFSajuFwrDL1Yhy"),
    ];
    for (msg, sig) in cases {
        let tx = from_simple(sig, msg.as_bytes(), &c).unwrap();
        assert_eq!(verify(&tx, msg.as_bytes(), &c, &[]), Ok(Amount::ZERO));
        // The full format round-trips and verifies the same.
        let full = decode_full(&encode_full(&tx)).unwrap();
        assert_eq!(full, tx);
        // The same witness for the other message: to_spend differs, so the sighash differs.
        let other = if msg.is_empty() { "Hello World" } else { "" };
        let moved = from_simple(sig, other.as_bytes(), &c).unwrap();
        assert!(
            matches!(
                verify(&moved, other.as_bytes(), &c, &[]),
                Err(Bip322Error::Script { input: 0, .. })
            ),
            "{msg:?} signature accepted for {other:?}"
        );
        // Verifying the genuine to_sign for the other message: input 0 is not its to_spend.
        assert!(matches!(
            verify(&tx, other.as_bytes(), &c, &[]),
            Err(Bip322Error::NotToSpend { .. })
        ));
    }
    assert!(matches!(
        from_simple("not base64!", b"", &c),
        Err(Bip322Error::Encoding(_))
    ));
    assert!(matches!(decode_full("AAAA"), Err(Bip322Error::Encoding(_))));
}

// ---- vaults ----

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

fn message_for(vaults: &[&Vault], checkpoint: &str) -> ProofMessage {
    ProofMessage::for_vaults(
        vaults,
        Network::Regtest,
        840,
        BlockHash::from_byte_array([7; 32]),
        checkpoint,
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
    tx: Transaction,
    spent: Vec<TxOut>,
    message: String,
    challenge: ScriptBuf,
    total: Amount,
}

fn prove(vault: &Vault, seeds: &[u8], checkpoint: &str) -> Proof {
    let msg = message_for(&[vault], checkpoint);
    let utxos = vault.utxos();
    let built =
        build_proof_of_funds(&Challenge::first_receive(vault), &[(vault, &utxos)], &msg).unwrap();
    let text = msg.encode();
    assert_eq!(
        check_proof_of_funds_psbt(&built.psbt, text.as_bytes(), &built.challenge),
        Ok(built.total)
    );
    let mut signed = built.psbt.clone();
    sign(&mut signed, seeds);
    let spent = signed
        .inputs
        .iter()
        .skip(1)
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    let tx = finalize(signed, text.as_bytes(), &built.challenge).unwrap();
    Proof {
        psbt: built.psbt,
        tx,
        spent,
        message: text,
        challenge: built.challenge,
        total: built.total,
    }
}

const CHECKPOINT: &str = "checkpoint size=12 root=00ff sig=abcd";

fn wsh_proof() -> &'static Proof {
    static P: OnceLock<Proof> = OnceLock::new();
    P.get_or_init(|| prove(&funded_wsh(), &[1, 3], CHECKPOINT))
}

fn tr_proof() -> &'static Proof {
    static P: OnceLock<Proof> = OnceLock::new();
    P.get_or_init(|| prove(&funded_tr(), &[4, 6], CHECKPOINT))
}

fn check(p: &Proof, tx: &Transaction) -> Result<Amount, Bip322Error> {
    verify(tx, p.message.as_bytes(), &p.challenge, &p.spent)
}

#[test]
fn wsh_2_of_3_proof_of_funds_verifies() {
    let p = wsh_proof();
    assert_eq!(p.total, Amount::from_sat(355_000));
    assert_eq!(p.tx.input.len(), 4);
    assert_eq!(p.tx.version, Version(0));
    assert_eq!(
        p.tx.output,
        vec![TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(vec![0x6a]),
        }]
    );
    let spend = to_spend(p.message.as_bytes(), &p.challenge);
    assert_eq!(spend.input[0].previous_output, OutPoint::null());
    let mut sig = vec![0x00, 0x20];
    sig.extend_from_slice(&message_hash(p.message.as_bytes()));
    assert_eq!(spend.input[0].script_sig.as_bytes(), sig.as_slice());
    // Input 0 carries to_spend, its output and the vault's key origins, like any vault input.
    let first = &p.psbt.inputs[0];
    assert_eq!(first.non_witness_utxo.as_ref(), Some(&spend));
    assert_eq!(first.witness_utxo.as_ref(), Some(&spend.output[0]));
    for i in &p.psbt.inputs {
        assert!(i.witness_script.is_some());
        assert_eq!(i.bip32_derivation.len(), 3);
        assert_eq!(
            i.sighash_type,
            Some(PsbtSighashType::from(EcdsaSighashType::All))
        );
    }
    // The challenge is the vault's first receive address.
    assert_eq!(
        p.challenge,
        funded_wsh()
            .peek_address(Keychain::External, 0)
            .address
            .script_pubkey()
    );
    assert_eq!(check(p, &p.tx), Ok(p.total));
    let text = encode_full(&p.tx);
    assert_eq!(decode_full(&text).unwrap(), p.tx);
}

#[test]
fn tr_multi_a_proof_of_funds_verifies() {
    let p = tr_proof();
    assert_eq!(p.total, Amount::from_sat(100_000));
    for i in &p.psbt.inputs {
        assert!(i.tap_internal_key.is_some() && !i.tap_scripts.is_empty());
        assert_eq!(i.tap_key_origins.len(), 4);
    }
    assert_eq!(check(p, &p.tx), Ok(p.total));
}

#[test]
fn two_vaults_in_one_proof_with_the_challenge_of_one() {
    let w = funded_wsh();
    let t = funded_tr();
    let msg = message_for(&[&w, &t], CHECKPOINT);
    let (wu, tu) = (w.utxos(), t.utxos());
    let built =
        build_proof_of_funds(&Challenge::first_receive(&t), &[(&w, &wu), (&t, &tu)], &msg).unwrap();
    assert_eq!(built.total, Amount::from_sat(455_000));
    assert_eq!(built.inputs.len(), 5);
    let mut psbt = built.psbt;
    sign(&mut psbt, &[1, 3, 4, 5]);
    let text = msg.encode();
    let tx = finalize(psbt, text.as_bytes(), &built.challenge).unwrap();
    assert_eq!(tx.input.len(), 6);
    // A vault that is not in the message cannot be proven, nor be the challenge.
    let only_w = message_for(&[&w], CHECKPOINT);
    assert!(matches!(
        build_proof_of_funds(&Challenge::first_receive(&w), &[(&t, &tu)], &only_w),
        Err(Bip322Error::Build(ReserveError::VaultNotInMessage { .. }))
    ));
    assert!(matches!(
        build_proof_of_funds(&Challenge::first_receive(&t), &[(&w, &wu)], &only_w),
        Err(Bip322Error::Build(ReserveError::VaultNotInMessage { .. }))
    ));
    assert_eq!(
        build_proof_of_funds(&Challenge::first_receive(&w), &[(&w, &[])], &only_w),
        Err(Bip322Error::NoUtxos)
    );
    assert!(matches!(
        build_proof_of_funds(
            &Challenge::first_receive(&w),
            &[(&w, &wu), (&w, &wu[..1])],
            &only_w
        ),
        Err(Bip322Error::DuplicateInput(_))
    ));
}

#[test]
fn a_changed_message_is_refused() {
    for p in [wsh_proof(), tr_proof()] {
        let other = p.message.replace("height: 840", "height: 841");
        assert!(matches!(
            verify(&p.tx, other.as_bytes(), &p.challenge, &p.spent),
            Err(Bip322Error::NotToSpend { .. })
        ));
        // Re-pointing input 0 at the other message's to_spend keeps the old signatures, which
        // no longer match.
        let mut moved = p.tx.clone();
        moved.input[0].previous_output = to_spend_outpoint(other.as_bytes(), &p.challenge);
        assert!(matches!(
            verify(&moved, other.as_bytes(), &p.challenge, &p.spent),
            Err(Bip322Error::Script { input: 0, .. })
        ));
    }
}

#[test]
fn a_wrong_challenge_is_refused() {
    let p = wsh_proof();
    let wrong = funded_wsh()
        .peek_address(Keychain::External, 1)
        .address
        .script_pubkey();
    assert!(matches!(
        verify(&p.tx, p.message.as_bytes(), &wrong, &p.spent),
        Err(Bip322Error::NotToSpend { .. })
    ));
    let mut moved = p.tx.clone();
    moved.input[0].previous_output = to_spend_outpoint(p.message.as_bytes(), &wrong);
    assert!(matches!(
        verify(&moved, p.message.as_bytes(), &wrong, &p.spent),
        Err(Bip322Error::Script { input: 0, .. })
    ));
    // The PSBT check refuses a PSBT for another challenge too.
    assert!(matches!(
        check_proof_of_funds_psbt(&p.psbt, p.message.as_bytes(), &wrong),
        Err(Bip322Error::NotToSpend { .. })
    ));
}

#[test]
fn structural_tampering_is_refused_with_its_reason() {
    let p = tr_proof();
    let mut extra = p.tx.clone();
    extra.output.push(TxOut {
        value: Amount::from_sat(1),
        script_pubkey: p.challenge.clone(),
    });
    assert_eq!(check(p, &extra), Err(Bip322Error::OutputCount(2)));
    let mut paid = p.tx.clone();
    paid.output[0].value = Amount::from_sat(1);
    assert!(matches!(check(p, &paid), Err(Bip322Error::Output(_))));
    let mut data = p.tx.clone();
    data.output[0].script_pubkey = ScriptBuf::new_op_return([1u8; 4]);
    assert!(matches!(check(p, &data), Err(Bip322Error::Output(_))));
    let mut v1 = p.tx.clone();
    v1.version = Version::ONE;
    assert_eq!(check(p, &v1), Err(Bip322Error::Version(1)));
    let mut lt = p.tx.clone();
    lt.lock_time = absolute::LockTime::from_consensus(500);
    assert_eq!(check(p, &lt), Err(Bip322Error::LockTime(500)));
    let mut seq = p.tx.clone();
    seq.input[0].sequence = Sequence::MAX;
    assert_eq!(check(p, &seq), Err(Bip322Error::Sequence(0xffff_ffff)));
    let mut dup = p.tx.clone();
    dup.input.push(dup.input[1].clone());
    let mut spent = p.spent.clone();
    spent.push(p.spent[0].clone());
    assert!(matches!(
        verify(&dup, p.message.as_bytes(), &p.challenge, &spent),
        Err(Bip322Error::DuplicateInput(_))
    ));
    let mut reuse = p.tx.clone();
    let mut again = reuse.input[0].clone();
    again.previous_output.vout = 1;
    reuse.input.push(again);
    assert_eq!(check(p, &reuse), Err(Bip322Error::ToSpendReused(3)));
    let mut none = p.tx.clone();
    none.input.clear();
    assert_eq!(check(p, &none), Err(Bip322Error::NoInputs));
    assert_eq!(
        verify(&p.tx, p.message.as_bytes(), &p.challenge, &p.spent[1..]),
        Err(Bip322Error::SpentOutputs {
            expected: 2,
            found: 1
        })
    );
    // Removing a proven input drops a signed input: every signature covers all inputs.
    let mut fewer = p.tx.clone();
    fewer.input.pop();
    assert!(matches!(
        verify(&fewer, p.message.as_bytes(), &p.challenge, &p.spent[..1]),
        Err(Bip322Error::Script { .. })
    ));
}

#[test]
fn forged_or_truncated_witnesses_are_refused() {
    for p in [wsh_proof(), tr_proof()] {
        for input in 0..p.tx.input.len() {
            // Flip a byte of the first signature.
            let mut forged = p.tx.clone();
            let mut items: Vec<Vec<u8>> = forged.input[input].witness.to_vec();
            let k = items.iter().position(|i| i.len() >= 64).unwrap();
            items[k][10] ^= 1;
            forged.input[input].witness = Witness::from_slice(&items);
            assert!(
                matches!(check(p, &forged), Err(Bip322Error::Script { input: i, .. }) if i == input),
                "forged input {input}: {:?}",
                check(p, &forged)
            );
            // Drop the first stack element.
            let mut cut = p.tx.clone();
            let items: Vec<Vec<u8>> = cut.input[input].witness.to_vec();
            cut.input[input].witness = Witness::from_slice(&items[1..]);
            assert!(
                matches!(check(p, &cut), Err(Bip322Error::Script { input: i, .. }) if i == input),
                "truncated input {input}"
            );
            // No witness at all.
            let mut bare = p.tx.clone();
            bare.input[input].witness = Witness::new();
            assert!(matches!(check(p, &bare), Err(Bip322Error::Script { .. })));
        }
    }
    // A wrong spent amount changes every taproot sighash (and the input's own v0 sighash).
    for p in [wsh_proof(), tr_proof()] {
        let mut spent = p.spent.clone();
        spent[0].value += Amount::from_sat(1);
        assert!(matches!(
            verify(&p.tx, p.message.as_bytes(), &p.challenge, &spent),
            Err(Bip322Error::Script { .. })
        ));
    }
}

#[test]
fn unsigned_or_non_all_psbts_are_refused() {
    let w = funded_wsh();
    let msg = message_for(&[&w], CHECKPOINT);
    let u = w.utxos();
    let built = build_proof_of_funds(&Challenge::first_receive(&w), &[(&w, &u)], &msg).unwrap();
    let text = msg.encode();
    // One signature of two.
    let mut half = built.psbt.clone();
    sign(&mut half, &[2]);
    assert!(matches!(
        finalize(half, text.as_bytes(), &built.challenge),
        Err(Bip322Error::Finalize { input: 0, .. })
    ));
    let mut none = built.psbt.clone();
    none.inputs[2].sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::None));
    assert!(matches!(
        check_proof_of_funds_psbt(&none, text.as_bytes(), &built.challenge),
        Err(Bip322Error::SighashNotAll { input: 2, .. })
    ));
    let mut wrong_utxo = built.psbt.clone();
    wrong_utxo.inputs[0].witness_utxo.as_mut().unwrap().value = Amount::from_sat(1);
    assert!(matches!(
        check_proof_of_funds_psbt(&wrong_utxo, text.as_bytes(), &built.challenge),
        Err(Bip322Error::PsbtInput { input: 0, .. })
    ));
    let mut missing = built.psbt.clone();
    missing.inputs[1].witness_utxo = None;
    assert!(matches!(
        check_proof_of_funds_psbt(&missing, text.as_bytes(), &built.challenge),
        Err(Bip322Error::PsbtInput { input: 1, .. })
    ));
}

#[test]
fn a_bip127_proof_is_not_a_bip322_proof() {
    let w = funded_wsh();
    let msg = message_for(&[&w], CHECKPOINT);
    let u = w.utxos();
    let mut proof = build_proof(&[(&w, &u)], &msg).unwrap().psbt;
    sign(&mut proof, &[1, 2]);
    let text = msg.encode();
    let tx = finalize_proof(proof, text.as_bytes()).unwrap();
    let challenge = Challenge::first_receive(&w).script_pubkey();
    let spent: Vec<TxOut> = u
        .iter()
        .map(|x| TxOut {
            value: x.value,
            script_pubkey: w.peek_address(x.keychain, x.index).address.script_pubkey(),
        })
        .collect();
    assert!(matches!(
        verify(&tx, text.as_bytes(), &challenge, &spent),
        Err(Bip322Error::Version(2) | Bip322Error::NotToSpend { .. })
    ));
}

fn sha2_tagged(msg: &[u8]) -> [u8; 32] {
    let tag = Sha256::digest(TAG.as_bytes());
    let mut h = Sha256::new();
    h.update(tag);
    h.update(tag);
    h.update(msg);
    h.finalize().into()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn message_hash_is_the_tagged_hash_and_binds_to_spend(msg in proptest::collection::vec(any::<u8>(), 0..300)) {
        prop_assert_eq!(message_hash(&msg), sha2_tagged(&msg));
        let c = bip_challenge();
        let s = to_spend(&msg, &c);
        prop_assert_eq!(&s.input[0].script_sig.as_bytes()[..2], &[0x00, 0x20][..]);
        prop_assert_eq!(&s.input[0].script_sig.as_bytes()[2..], &sha2_tagged(&msg)[..]);
        prop_assert_eq!(s.output[0].value, Amount::ZERO);
        prop_assert_eq!(&s.output[0].script_pubkey, &c);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn a_proof_verifies_for_its_message_only(checkpoint in "[ -~]{1,80}", other in "[ -~]{1,80}") {
        prop_assume!(checkpoint != other);
        let p = prove(&funded_tr(), &[5, 6], &checkpoint);
        prop_assert_eq!(check(&p, &p.tx), Ok(p.total));
        let changed = p.message.replace(&format!("checkpoint: {checkpoint}"), &format!("checkpoint: {other}"));
        let refused = matches!(
            verify(&p.tx, changed.as_bytes(), &p.challenge, &p.spent),
            Err(Bip322Error::NotToSpend { .. })
        );
        prop_assert!(refused);
    }
}
