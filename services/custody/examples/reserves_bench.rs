//! `cargo run --release -p custody --example reserves_bench [-- UTXOS [ROUNDS]]`: proofs of
//! reserves over 10,000 UTXOs of a realistic vault, local work only (no node): a 2-of-3
//! `wsh(sortedmulti)` vault and a 2-of-3 `tr(NUMS, multi_a)` vault with software keys, each
//! funded by made-up transactions of 100 outputs. For each vault and each form (BIP-127 and
//! BIP-322 proof of funds): build the PSBT, sign it with two officers' master keys
//! (`Psbt::sign`), finalize (which verifies once), and verify the final transaction (median and
//! best of ROUNDS), each phase in wall time and in the process's on-CPU time (the machine is
//! shared). The target is verify < 2 s for the local work.
//!
//! Verify runs on `std::thread::available_parallelism()` threads; its anchor is the same
//! verification on one thread (`*_with_threads(.., 1)`), measured in the same process, rounds
//! alternated (parallel, serial, parallel, ...). Printed: wall time of each (median, best), the
//! process's CPU time over all threads (`/proc/self/stat`, 10 ms ticks), and the median of the
//! paired ratios t(serial) / t(parallel).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bdk_wallet::bitcoin::hashes::Hash;
use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::transaction::Version;
use bdk_wallet::bitcoin::{
    absolute, Amount, BlockHash, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Txid, Witness,
};
use custody::reserves::bip322::{self, Challenge};
use custody::reserves::{
    build_proof, finalize_proof, verify_proof_tx, verify_proof_tx_with_threads, ProofMessage,
};
use custody::vault::descriptor::{AllowWithoutPolicyKey, Template, TemplateKey};
use custody::vault::{Keychain, Vault, VaultConfig};
use std::num::NonZeroUsize;

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
    Vault::create(VaultConfig::new(kind, d, 0).unwrap()).unwrap()
}

/// `n` UTXOs in transactions of 100 outputs over receive indexes 0..10.
fn fund(v: &mut Vault, n: usize) {
    let scripts: Vec<ScriptBuf> = (0..10)
        .map(|i| {
            v.peek_address(Keychain::External, i)
                .address
                .script_pubkey()
        })
        .collect();
    let mut txs = Vec::new();
    let mut made = 0usize;
    let mut t = 0u32;
    while made < n {
        let outs = (n - made).min(100);
        let mut prev = [0u8; 32];
        prev[..4].copy_from_slice(&t.to_le_bytes());
        let tx = Transaction {
            version: Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint {
                    txid: Txid::from_byte_array(prev),
                    vout: 0,
                },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::from_slice(&[vec![1u8; 72]]),
            }],
            output: (0..outs)
                .map(|k| TxOut {
                    value: Amount::from_sat(10_000 + ((made + k) as u64 % 1_000) * 1_000),
                    script_pubkey: scripts[(made + k) % scripts.len()].clone(),
                })
                .collect(),
        };
        txs.push((Arc::new(tx), 1u64));
        made += outs;
        t += 1;
    }
    v.apply_mempool(txs, vec![]);
}

fn sign(psbt: &mut Psbt, seeds: &[u8]) {
    let secp = Secp256k1::new();
    for s in seeds {
        psbt.sign(&account(*s).0, &secp).unwrap();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Time this process spent on a CPU, all threads: unlike wall time it does not count the time
/// other processes held the cores.
fn cpu_time() -> Duration {
    process_cpu()
}

/// Wall time and on-CPU time of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let (r, wall, cpu) = timed_cpu(f);
    CPU.with(|c| c.set(cpu));
    (r, wall)
}

thread_local! {
    static CPU: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

fn timed_cpu<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let c = cpu_time();
    let t = Instant::now();
    let r = f();
    (r, t.elapsed(), cpu_time().saturating_sub(c))
}

fn last_cpu() -> f64 {
    ms(CPU.with(std::cell::Cell::get))
}

/// CPU time of the whole process, every thread (`/proc/self/stat` utime + stime; 100 Hz).
fn process_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): state is field 3, utime 14.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

/// Verify rounds: `parallel` and `serial` alternated; prints both and their paired ratio.
fn verify_rounds(label: &str, rounds: usize, parallel: impl Fn(), serial: impl Fn()) {
    let (mut pw, mut pc, mut sw, mut sc, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let c = process_cpu();
        let ((), t) = timed(&parallel);
        pc.push(process_cpu().saturating_sub(c));
        pw.push(t);
        let c = process_cpu();
        let ((), s) = timed(&serial);
        sc.push(process_cpu().saturating_sub(c));
        sw.push(s);
        ratios.push(s.as_secs_f64() / t.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[ratios.len() / 2];
    let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let (pwm, pwb) = stats(pw);
    let (pcm, pcb) = stats(pc);
    let (swm, swb) = stats(sw);
    let (scm, scb) = stats(sc);
    println!(
        "{label}  verify {threads} threads: wall median {pwm:8.1} ms best {pwb:8.1} ms, cpu median {pcm:8.1} ms best {pcb:8.1} ms | 1 thread (anchor): wall median {swm:8.1} ms best {swb:8.1} ms, cpu median {scm:8.1} ms best {scb:8.1} ms | speedup (median of paired ratios) {ratio:.2}x"
    );
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (ms(v[v.len() / 2]), ms(v[0]))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(10_000, |a| a.parse().unwrap());
    let rounds: usize = args.next().map_or(5, |a| a.parse().unwrap());
    println!("utxos {n}, verify rounds {rounds}");
    for (kind, seeds) in [("wsh", [1u8, 3]), ("tr", [4u8, 6])] {
        let mut v = vault(kind);
        let ((), t_fund) = timed(|| fund(&mut v, n));
        let (utxos, t_utxos) = timed(|| v.utxos());
        assert_eq!(utxos.len(), n);
        println!(
            "{kind:4} setup: fund {:.1} ms, list utxos {:.1} ms (not timed below)",
            ms(t_fund),
            ms(t_utxos)
        );
        let msg = ProofMessage::for_vaults(
            &[&v],
            Network::Regtest,
            840_000,
            BlockHash::from_byte_array([7; 32]),
            "checkpoint size=1000000 root=00ff sig=abcd",
        )
        .unwrap();
        let text = msg.encode();
        let m = text.as_bytes();

        // BIP-127.
        let (built, t_build) = timed(|| build_proof(&[(&v, &utxos)], &msg).unwrap());
        let c_build = last_cpu();
        let mut psbt = built.psbt;
        let ((), t_sign) = timed(|| sign(&mut psbt, &seeds));
        let c_sign = last_cpu();
        let spent: Vec<TxOut> = psbt
            .inputs
            .iter()
            .skip(1)
            .map(|i| i.witness_utxo.clone().unwrap())
            .collect();
        let (tx, t_fin) = timed(|| finalize_proof(psbt, m).unwrap());
        let c_fin = last_cpu();
        println!(
            "{kind:4} bip127  cpu: build {c_build:8.1} ms  sign {c_sign:8.1} ms  finalize {c_fin:8.1} ms"
        );
        println!(
            "{kind:4} bip127  build {:8.1} ms  sign {:8.1} ms  finalize(+verify) {:8.1} ms  ({} inputs, {})",
            ms(t_build),
            ms(t_sign),
            ms(t_fin),
            tx.input.len(),
            built.total
        );
        let one = NonZeroUsize::MIN;
        verify_rounds(
            &format!("{kind:4} bip127"),
            rounds,
            || {
                assert_eq!(verify_proof_tx(&tx, &spent, m).unwrap(), built.total);
            },
            || {
                assert_eq!(
                    verify_proof_tx_with_threads(&tx, &spent, m, one).unwrap(),
                    built.total
                );
            },
        );

        // BIP-322 proof of funds.
        let challenge = Challenge::first_receive(&v);
        let (built, t_build) =
            timed(|| bip322::build_proof_of_funds(&challenge, &[(&v, &utxos)], &msg).unwrap());
        let c_build = last_cpu();
        let mut psbt = built.psbt;
        let ((), t_sign) = timed(|| sign(&mut psbt, &seeds));
        let c_sign = last_cpu();
        let (tx, t_fin) = timed(|| bip322::finalize(psbt, m, &built.challenge).unwrap());
        let c_fin = last_cpu();
        println!(
            "{kind:4} bip322  cpu: build {c_build:8.1} ms  sign {c_sign:8.1} ms  finalize {c_fin:8.1} ms"
        );
        println!(
            "{kind:4} bip322  build {:8.1} ms  sign {:8.1} ms  finalize(+verify) {:8.1} ms  ({} inputs, {})",
            ms(t_build),
            ms(t_sign),
            ms(t_fin),
            tx.input.len(),
            built.total
        );
        verify_rounds(
            &format!("{kind:4} bip322"),
            rounds,
            || {
                assert_eq!(
                    bip322::verify(&tx, m, &built.challenge, &spent).unwrap(),
                    built.total
                );
            },
            || {
                assert_eq!(
                    bip322::verify_with_threads(&tx, m, &built.challenge, &spent, one).unwrap(),
                    built.total
                );
            },
        );
    }
}
