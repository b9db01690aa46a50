//! Parallel proof verification reports exactly what serial verification reports: the same
//! amount for good proofs and, for tampered ones, the fault of the lowest tampered input,
//! whatever the number of threads. Proofs of 300 UTXOs (above the size where the verifier
//! starts threads), BIP-127 and BIP-322, wsh 2-of-3 and tr multi_a 2-of-3.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bdk_wallet::bitcoin::hashes::Hash;
use bdk_wallet::bitcoin::psbt::{Psbt, PsbtSighashType};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::transaction::Version;
use bdk_wallet::bitcoin::{
    absolute, Amount, BlockHash, EcdsaSighashType, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Txid, Witness,
};
use custody::reserves::bip322::{self, Bip322Error, Challenge};
use custody::reserves::{
    build_proof, finalize_proof, verify_proof_tx, verify_proof_tx_with_threads, ProofMessage,
    ReserveError,
};
use custody::vault::descriptor::{AllowWithoutPolicyKey, Template, TemplateKey};
use custody::vault::{Keychain, Vault, VaultConfig};
use proptest::prelude::*;

const UTXOS: usize = 300;

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

fn vault(kind: &str) -> Vault {
    let t = match kind {
        "wsh" => Template::SortedMulti {
            k: 2,
            officers: vec![account(1).1, account(2).1],
            policy_key: account(3).1,
        },
        _ => Template::TaprootMultiA {
            k: 2,
            keys: vec![account(4).1, account(5).1, account(6).1],
        },
    };
    let d = t
        .build_without_policy_key_guard(
            Network::Regtest,
            AllowWithoutPolicyKey::officers_can_spend_without_the_policy_key(),
        )
        .unwrap();
    let mut v = Vault::create(VaultConfig::new(kind, d, 0).unwrap()).unwrap();
    let scripts: Vec<ScriptBuf> = (0..5)
        .map(|i| {
            v.peek_address(Keychain::External, i)
                .address
                .script_pubkey()
        })
        .collect();
    let txs = (0..UTXOS / 50)
        .map(|t| {
            let tx = Transaction {
                version: Version::TWO,
                lock_time: absolute::LockTime::ZERO,
                input: vec![TxIn {
                    previous_output: OutPoint {
                        txid: Txid::from_byte_array([t as u8 + 1; 32]),
                        vout: 0,
                    },
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::MAX,
                    witness: Witness::from_slice(&[vec![1u8; 72]]),
                }],
                output: (0..50)
                    .map(|k| TxOut {
                        value: Amount::from_sat(10_000 + (t * 50 + k) as u64),
                        script_pubkey: scripts[k % scripts.len()].clone(),
                    })
                    .collect(),
            };
            (Arc::new(tx), 1u64)
        })
        .collect();
    v.apply_mempool(txs, vec![]);
    v
}

fn sign(psbt: &mut Psbt, seeds: &[u8]) {
    let secp = Secp256k1::new();
    for s in seeds {
        psbt.sign(&account(*s).0, &secp).unwrap();
    }
}

struct Proofs {
    message: String,
    spent: Vec<TxOut>,
    bip127: Transaction,
    bip322: Transaction,
    challenge: ScriptBuf,
    /// The BIP-127 proof signed with ANYONECANPAY on every input: signatures valid, refused.
    acp: Transaction,
}

fn make(kind: &str, seeds: [u8; 2]) -> Proofs {
    let v = vault(kind);
    let utxos = v.utxos();
    assert_eq!(utxos.len(), UTXOS);
    let msg = ProofMessage::for_vaults(
        &[&v],
        Network::Regtest,
        840,
        BlockHash::from_byte_array([7; 32]),
        "checkpoint size=12 root=00ff sig=abcd",
    )
    .unwrap();
    let text = msg.encode();
    let built = build_proof(&[(&v, &utxos)], &msg).unwrap();
    let mut acp = built.psbt.clone();
    let mut psbt = built.psbt;
    sign(&mut psbt, &seeds);
    let spent: Vec<TxOut> = psbt
        .inputs
        .iter()
        .skip(1)
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    let bip127 = finalize_proof(psbt, text.as_bytes()).unwrap();
    let acp = if kind == "wsh" {
        for i in &mut acp.inputs[1..] {
            i.sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::AllPlusAnyoneCanPay));
        }
        sign(&mut acp, &seeds);
        let secp = Secp256k1::verification_only();
        use bdk_wallet::miniscript::psbt::PsbtExt;
        for i in 1..acp.inputs.len() {
            acp.finalize_inp_mut(&secp, i).unwrap();
        }
        acp.extract_tx_unchecked_fee_rate()
    } else {
        bip127.clone()
    };
    let built =
        bip322::build_proof_of_funds(&Challenge::first_receive(&v), &[(&v, &utxos)], &msg).unwrap();
    let mut psbt = built.psbt;
    sign(&mut psbt, &seeds);
    let bip322 = bip322::finalize(psbt, text.as_bytes(), &built.challenge).unwrap();
    Proofs {
        message: text,
        spent,
        bip127,
        bip322,
        challenge: built.challenge,
        acp,
    }
}

fn wsh() -> &'static Proofs {
    static P: OnceLock<Proofs> = OnceLock::new();
    P.get_or_init(|| make("wsh", [1, 3]))
}

fn tr() -> &'static Proofs {
    static P: OnceLock<Proofs> = OnceLock::new();
    P.get_or_init(|| make("tr", [4, 6]))
}

fn threads(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

const THREAD_COUNTS: [usize; 5] = [2, 3, 4, 7, 16];

fn bip127_all(p: &Proofs, tx: &Transaction) -> Result<Amount, ReserveError> {
    let m = p.message.as_bytes();
    let serial = verify_proof_tx_with_threads(tx, &p.spent, m, threads(1));
    for n in THREAD_COUNTS {
        assert_eq!(
            verify_proof_tx_with_threads(tx, &p.spent, m, threads(n)),
            serial,
            "{n} threads"
        );
    }
    assert_eq!(verify_proof_tx(tx, &p.spent, m), serial);
    serial
}

fn bip322_all(p: &Proofs, tx: &Transaction) -> Result<Amount, Bip322Error> {
    let m = p.message.as_bytes();
    let serial = bip322::verify_with_threads(tx, m, &p.challenge, &p.spent, threads(1));
    for n in THREAD_COUNTS {
        assert_eq!(
            bip322::verify_with_threads(tx, m, &p.challenge, &p.spent, threads(n)),
            serial,
            "{n} threads"
        );
    }
    assert_eq!(bip322::verify(tx, m, &p.challenge, &p.spent), serial);
    serial
}

/// Damages one input's witness in one of several ways.
fn tamper(tx: &mut Transaction, input: usize, how: u8) {
    let mut w: Vec<Vec<u8>> = tx.input[input].witness.iter().map(<[u8]>::to_vec).collect();
    // The first signature-like element (DER for wsh, 64/65 bytes for taproot).
    let sig = w
        .iter()
        .position(|e| e.len() >= 64 && e.len() <= 73)
        .unwrap();
    match how % 4 {
        0 => w[sig][10] ^= 0x01,
        1 => {
            let n = w[sig].len() - 1;
            w[sig].truncate(n);
        }
        2 => {
            w.pop();
        }
        _ => w.clear(),
    }
    tx.input[input].witness = Witness::from_slice(&w);
}

#[test]
fn good_proofs_verify_the_same_on_any_number_of_threads() {
    for p in [wsh(), tr()] {
        let total: Amount = p.spent.iter().map(|o| o.value).sum();
        assert_eq!(bip127_all(p, &p.bip127), Ok(total));
        assert_eq!(bip322_all(p, &p.bip322), Ok(total));
    }
}

#[test]
fn the_lowest_tampered_input_is_reported_at_fixed_positions() {
    for p in [wsh(), tr()] {
        for positions in [
            vec![1],
            vec![UTXOS],
            vec![64],
            vec![65, 66],
            vec![UTXOS, 2],
            vec![129, 200, 7],
            vec![250, 130],
        ] {
            for how in 0..4u8 {
                let mut tx = p.bip127.clone();
                for &i in &positions {
                    tamper(&mut tx, i, how);
                }
                let lowest = *positions.iter().min().unwrap();
                let err = bip127_all(p, &tx).unwrap_err();
                assert!(
                    matches!(err, ReserveError::Script { input, .. } if input == lowest),
                    "{positions:?} {how}: {err}"
                );
                // BIP-322: input i of the BIP-127 proof is input i here too (input 0 is the
                // challenge), and input 0 itself can be damaged.
                let mut tx = p.bip322.clone();
                for &i in &positions {
                    tamper(&mut tx, i - 1, how);
                }
                let err = bip322_all(p, &tx).unwrap_err();
                assert!(
                    matches!(err, Bip322Error::Script { input, .. } if input == lowest - 1),
                    "{positions:?} {how}: {err}"
                );
            }
        }
    }
}

#[test]
fn sighash_faults_are_reported_the_same() {
    let p = wsh();
    let err = bip127_all(p, &p.acp).unwrap_err();
    assert!(
        matches!(err, ReserveError::SighashNotAll { input: 1, .. }),
        "{err}"
    );
    // A forged signature on an input signed with ANYONECANPAY: which of its two faults is met
    // first depends on the order the interpreter checks its signatures, the same on any
    // number of threads (`bip127_all` asserts that); the input is the lowest.
    let mut tx = p.acp.clone();
    tamper(&mut tx, 1, 0);
    let err = bip127_all(p, &tx).unwrap_err();
    assert!(
        matches!(
            err,
            ReserveError::Script { input: 1, .. } | ReserveError::SighashNotAll { input: 1, .. }
        ),
        "{err}"
    );
    // A forged signature on an ALL input below the ANYONECANPAY ones wins.
    let mut tx = p.acp.clone();
    tx.input[1].witness = p.bip127.input[1].witness.clone();
    tamper(&mut tx, 1, 0);
    let err = bip127_all(p, &tx).unwrap_err();
    assert!(
        matches!(err, ReserveError::Script { input: 1, .. }),
        "{err}"
    );
    // A mix: ANYONECANPAY spends from input 150 on, a forged one at 200.
    let mut tx = p.bip127.clone();
    for i in 150..=UTXOS {
        tx.input[i].witness = p.acp.input[i].witness.clone();
    }
    tamper(&mut tx, 200, 0);
    let err = bip127_all(p, &tx).unwrap_err();
    assert!(
        matches!(err, ReserveError::SighashNotAll { input: 150, .. }),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn parallel_equals_serial_for_any_tampering(
        // Distinct inputs: tampering one twice could find no signature left to damage.
        positions in prop::collection::btree_set(1..=UTXOS, 0..4),
        how in any::<u8>(),
        taproot in any::<bool>(),
    ) {
        let p = if taproot { tr() } else { wsh() };
        let mut tx = p.bip127.clone();
        for &i in &positions {
            tamper(&mut tx, i, how);
        }
        let result = bip127_all(p, &tx);
        match positions.iter().min() {
            None => prop_assert!(result.is_ok()),
            Some(&lowest) => {
                let found = matches!(result, Err(ReserveError::Script { input, .. }) if input == lowest);
                prop_assert!(found, "{:?} lowest {}", result, lowest);
            }
        }
        let mut tx = p.bip322.clone();
        for &i in &positions {
            tamper(&mut tx, i - 1, how);
        }
        let result = bip322_all(p, &tx);
        match positions.iter().min() {
            None => prop_assert!(result.is_ok()),
            Some(&lowest) => {
                let found =
                    matches!(result, Err(Bip322Error::Script { input, .. }) if input == lowest - 1);
                prop_assert!(found, "{:?} lowest {}", result, lowest);
            }
        }
    }
}
