//! A policy signer on a throwaway SoftHSM2 token, and approved PSBTs for its vault (the
//! fixtures of hsm/tests/policy_signer.rs: keys from fixed test secrets, no node).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

/// The hsm crate's SoftHSM2 token helper, shared rather than copied.
#[path = "../../../../hsm/tests/common/softhsm.rs"]
pub mod softhsm;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use bitcoin::absolute::LockTime;
use bitcoin::bip32::DerivationPath;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Keypair, Secp256k1, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, NetworkKind, OutPoint, Psbt, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    Witness,
};
use hsm::policy_signer::SpendAuthorization;
use hsm::{Signer, SoftwareKeystore};
use miniscript::descriptor::DescriptorPublicKey;
use miniscript::psbt::PsbtExt;
use miniscript::Descriptor;
use policies::approval::{sign, ApprovalSubject, Verdict};
use policies::evaluate::ReceivedApproval;
use policies::freeze::AdminSignature;
use policies::{Policy, PolicyHash};
use signer::{HolderConfig, HolderSecret, ManualClock, SignerCore};

pub const EXAMPLE: &str = include_str!("../../../../policies/examples/strategic-reserve.toml");
pub const PERSONS: &[(&str, u8)] = &[
    ("alice", 1),
    ("bob", 2),
    ("carol", 3),
    ("dave", 4),
    ("erin", 5),
    ("frank", 6),
    ("grace", 7),
    ("heidi", 8),
    ("ivan", 9),
    ("judy", 10),
];
pub const NOW: i64 = 1_800_000_000_000;
pub const TIP: u32 = 900_000;
pub const HOUR: i64 = 3_600_000;
pub const BTC: u64 = 100_000_000;
pub const ORIGIN: &str = "reserve.example/ledger";

pub fn secret_of(person: &str) -> SecretKey {
    let b = PERSONS.iter().find(|(p, _)| *p == person).unwrap().1;
    SecretKey::from_slice(&[b; 32]).unwrap()
}

pub fn admin_sig(digest: [u8; 32], admin: &str) -> AdminSignature {
    AdminSignature::sign(digest, admin, &secret_of(admin))
}

pub fn elsewhere() -> ScriptBuf {
    let kp = Keypair::from_secret_key(
        &Secp256k1::new(),
        &SecretKey::from_slice(&[42; 32]).unwrap(),
    );
    let pk = bitcoin::CompressedPublicKey(kp.public_key());
    ScriptBuf::new_p2wpkh(&pk.wpubkey_hash())
}

/// A signer state on the test token, with its vault's officers.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: HolderConfig,
    pub clock: ManualClock,
    pub officers: Vec<SoftwareKeystore>,
    pub external: Descriptor<DescriptorPublicKey>,
    pub internal: Descriptor<DescriptorPublicKey>,
    pub policy_hash: PolicyHash,
    /// Held for the test's life: the tests share one SoftHSM2 token, whose file store fails a
    /// key generation racing another test's object reads and writes (`CKR_GENERAL_ERROR`).
    pub serial: std::sync::MutexGuard<'static, ()>,
}

static ONE_TOKEN_USER: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn secret() -> HolderSecret {
    HolderSecret::new(softhsm::PIN)
}

impl Fixture {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn open(&self) -> Result<SignerCore, signer::CoreError> {
        signer::open(&self.state_dir(), &secret(), Arc::new(self.clock.clone()))
    }

    pub fn log_path(&self) -> PathBuf {
        self.state_dir().join("state.log")
    }
}

/// Initializes a signer with keys labelled after `name`, and registers vault "main".
pub fn fixture(name: &str) -> Option<(Fixture, SignerCore)> {
    softhsm::softhsm()?;
    let serial = ONE_TOKEN_USER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let config = HolderConfig::Pkcs11 {
        module: softhsm::module(),
        token_label: softhsm::TOKEN.to_owned(),
        policy_key_label: format!("{name}-policy"),
        ledger_key_label: format!("{name}-ledger"),
        head_label: format!("{name}-head"),
    };
    let clock = ManualClock::new(NOW);
    let mut core = signer::init(
        &dir.path().join("state"),
        &config,
        &secret(),
        Arc::new(clock.clone()),
        bitcoin::Network::Regtest,
        EXAMPLE,
        ORIGIN,
    )
    .unwrap();
    let policy_key = core.status().unwrap().policy_key;
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let keys: Vec<SoftwareKeystore> = (0..5)
        .map(|i| {
            SoftwareKeystore::generate(format!("k{i}"), NetworkKind::Test, path.clone()).unwrap()
        })
        .collect();
    let k = |i: usize, chain: u32| format!("{}/{chain}/*", keys[i].descriptor_key());
    let text = |chain: u32| {
        format!(
            "wsh(or_d(and_b(pk({policy_key}),a:multi(2,{},{},{})),and_v(v:multi(2,{},{}),older(10))))",
            k(0, chain),
            k(1, chain),
            k(2, chain),
            k(3, chain),
            k(4, chain)
        )
    };
    let external = Descriptor::<DescriptorPublicKey>::from_str(&text(0)).unwrap();
    let internal = Descriptor::<DescriptorPublicKey>::from_str(&text(1)).unwrap();
    core.register_vault("main", &external.to_string(), &internal.to_string())
        .unwrap();
    let policy_hash = Policy::from_toml(EXAMPLE).unwrap().hash();
    Some((
        Fixture {
            dir,
            config,
            clock,
            officers: keys.into_iter().take(3).collect(),
            external,
            internal,
            policy_hash,
            serial,
        },
        core,
    ))
}

/// A PSBT spending two vault coins (100 BTC and 200 BTC) to `dest` with change to the vault;
/// output 0 pays `dest`, output 1 is change.
pub fn psbt(f: &Fixture, dest: ScriptBuf, amount: Amount, fee: Amount) -> Psbt {
    let coins = [(0u32, 100 * BTC), (1, 200 * BTC)];
    let funding = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([9; 32]), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: coins
            .iter()
            .map(|(i, v)| TxOut {
                value: Amount::from_sat(*v),
                script_pubkey: f.external.at_derivation_index(*i).unwrap().script_pubkey(),
            })
            .collect(),
    };
    let total = Amount::from_sat(300 * BTC);
    let change = total - amount - fee;
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: (0..2)
            .map(|vout| TxIn {
                previous_output: OutPoint::new(funding.compute_txid(), vout),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output: vec![
            TxOut {
                value: amount,
                script_pubkey: dest,
            },
            TxOut {
                value: change,
                script_pubkey: f.internal.at_derivation_index(0).unwrap().script_pubkey(),
            },
        ],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    for (i, (index, _)) in coins.iter().enumerate() {
        psbt.inputs[i].witness_utxo = Some(funding.output[i].clone());
        psbt.inputs[i].non_witness_utxo = Some(funding.clone());
        psbt.update_input_with_descriptor(i, &f.external.at_derivation_index(*index).unwrap())
            .unwrap();
    }
    psbt.update_output_with_descriptor(1, &f.internal.at_derivation_index(0).unwrap())
        .unwrap();
    psbt
}

/// `sat` to a stranger with a 5,000 sat fee.
pub fn spend(f: &Fixture, sat: u64) -> Psbt {
    psbt(
        f,
        elsewhere(),
        Amount::from_sat(sat),
        Amount::from_sat(5_000),
    )
}

pub fn subject(f: &Fixture, id: &str, psbt: &Psbt) -> ApprovalSubject {
    let tx = &psbt.unsigned_tx;
    let inputs: Vec<(OutPoint, Amount)> = tx
        .input
        .iter()
        .zip(&psbt.inputs)
        .map(|(i, p)| (i.previous_output, p.witness_utxo.as_ref().unwrap().value))
        .collect();
    let outputs: Vec<(ScriptBuf, Amount)> = tx
        .output
        .iter()
        .map(|o| (o.script_pubkey.clone(), o.value))
        .collect();
    let total_in: Amount = inputs.iter().map(|(_, a)| *a).sum();
    let total_out: Amount = outputs.iter().map(|(_, a)| *a).sum();
    ApprovalSubject {
        request_id: id.to_owned(),
        vault: "main".to_owned(),
        txid: tx.compute_txid(),
        inputs,
        outputs,
        fee: total_in - total_out,
        policy: f.policy_hash,
        decision: Verdict::Approve,
        expires_at_ms: NOW + 48 * HOUR,
        expires_at_height: Some(TIP + 288),
    }
}

/// An authorization for `psbt` approved by `people`.
pub fn auth(f: &Fixture, id: &str, psbt: &Psbt, people: &[&str]) -> SpendAuthorization {
    let subject = subject(f, id, psbt);
    let approvals = people
        .iter()
        .map(|p| ReceivedApproval {
            approval: sign(&subject, p, &secret_of(p)),
            received_ms: NOW,
        })
        .collect();
    SpendAuthorization {
        request_id: id.to_owned(),
        vault: "main".to_owned(),
        initiator: "alice".to_owned(),
        created_ms: NOW,
        created_height: TIP,
        requested_fee_rate: None,
        subject,
        change_outputs: vec![1],
        approvals,
        history: Vec::new(),
    }
}

/// Officers 0 and 1 sign, then miniscript finalizes and its interpreter checks everything.
pub fn officers_finalize(f: &Fixture, mut psbt: Psbt) -> Transaction {
    for o in &f.officers[..2] {
        assert_eq!(o.sign_psbt(&mut psbt).unwrap().inputs(), vec![0, 1]);
    }
    let secp = Secp256k1::verification_only();
    let psbt = psbt.finalize(&secp).map_err(|(_, e)| e).unwrap();
    psbt.extract(&secp).unwrap()
}

/// Copies a directory tree (files only, one level of subdirectories is enough here).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Rewrites the log with every hash recomputed (the strongest editor: no key is needed to
/// rehash the chain).
pub fn rechain(records: &mut [signer::state::Record]) {
    let mut prev = [0u8; 32];
    for (i, r) in records.iter_mut().enumerate() {
        r.seq = i as u64;
        r.prev = hex::encode(prev);
        let h = signer::state::record_hash(r.seq, &prev, r.time_ms, &r.kind, &r.body).unwrap();
        r.hash = hex::encode(h);
        prev = h;
    }
}

pub fn read_records(path: &Path) -> Vec<signer::state::Record> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn write_records(path: &Path, records: &[signer::state::Record]) {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}
