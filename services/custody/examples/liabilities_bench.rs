//! `cargo run --release -p custody --example liabilities_bench [-- ACCOUNTS [ROUNDS]]`: the
//! liabilities tree over 1,000,000 accounts (commitments, sort, sum tree, published root, one
//! proof and its verification), with hashcore against the same tree built with the `sha2`
//! crate, in one process, rounds alternated (ours, sha2, ours, sha2, ...). Both must give the
//! same root. Prints the median of the paired ratios and the ratio of the best rounds, then
//! every phase of both sides and the commitments alone. `LIAB_BACKEND=sha-ni` (or `avx2`,
//! `avx512`, `portable`) forces hashcore's backend instead of `Engine::auto()`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use bdk_wallet::bitcoin::Amount;
use custody::liabilities::{Account, AccountId, LiabilitiesTree, ACCOUNT_TAG, ROOT_TAG};
use hashcore::merkle::sum::SumLeaf;
use sha2::Digest as _;

type Digest = [u8; 32];

fn accounts(n: u64) -> Vec<Account> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|i| {
            let mut salt = [0u8; 32];
            for c in salt.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            let id = AccountId::new(format!("program-{i:07}")).unwrap();
            Account::new(id, Amount::from_sat(1_000 + (x % 100_000_000)), salt).unwrap()
        })
        .collect()
}

/// The digest order both sides sort by (as `LiabilitiesTree::build`): lexicographic, compared
/// as four big-endian words (same order as `[u8; 32]`'s, without a `memcmp` call).
fn cmp_digest(a: &Digest, b: &Digest) -> std::cmp::Ordering {
    let w = |d: &Digest, i: usize| u64::from_be_bytes(d[8 * i..8 * i + 8].try_into().unwrap());
    (0..4)
        .map(|i| w(a, i).cmp(&w(b, i)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

fn tagged(tag: &str) -> sha2::Sha256 {
    let t: Digest = sha2::Sha256::digest(tag.as_bytes()).into();
    let mut h = sha2::Sha256::new();
    h.update(t);
    h.update(t);
    h
}

/// The same tree with sha2: returns the published root and the proof path of the first leaf
/// (and checks that path leads back to the root).
fn sha2_tree(accounts: &[Account]) -> (Digest, u64, usize) {
    // The same input checks as `LiabilitiesTree::build` (unique ids, checked total).
    let mut seen = std::collections::HashSet::with_capacity(accounts.len());
    let mut total = Amount::ZERO;
    for a in accounts {
        assert!(seen.insert(a.id().as_str()));
        total = total.checked_add(a.balance()).unwrap();
    }
    drop(seen);
    let tag = tagged(ACCOUNT_TAG);
    let mut leaves: Vec<(Digest, u64)> = accounts
        .iter()
        .map(|a| {
            let mut h = tag.clone();
            h.update(a.salt());
            h.update(a.id().as_str().as_bytes());
            (h.finalize().into(), a.balance().to_sat())
        })
        .collect();
    leaves.sort_unstable_by(|a, b| cmp_digest(&a.0, &b.0));
    let mut level: Vec<(Digest, u64)> = leaves
        .iter()
        .map(|(c, b)| {
            let mut m = [0u8; 41];
            m[1..33].copy_from_slice(c);
            m[33..].copy_from_slice(&b.to_be_bytes());
            (sha2::Sha256::digest(m).into(), *b)
        })
        .collect();
    let node = |l: &(Digest, u64), r: &(Digest, u64)| -> (Digest, u64) {
        let mut m = [0u8; 81];
        m[0] = 1;
        m[1..33].copy_from_slice(&l.0);
        m[33..41].copy_from_slice(&l.1.to_be_bytes());
        m[41..73].copy_from_slice(&r.0);
        m[73..].copy_from_slice(&r.1.to_be_bytes());
        (
            sha2::Sha256::digest(m).into(),
            l.1.checked_add(r.1).unwrap(),
        )
    };
    let mut path = Vec::new();
    let mut i = 0usize;
    while level.len() > 1 {
        if let Some(s) = level.get(i ^ 1) {
            path.push(*s);
        }
        let mut next: Vec<(Digest, u64)> =
            level.chunks_exact(2).map(|p| node(&p[0], &p[1])).collect();
        if level.len() % 2 == 1 {
            next.push(level[level.len() - 1]);
        }
        level = next;
        i /= 2;
    }
    let root = level[0];
    // Verify the first leaf's proof (index 0: every sibling is on the right).
    let mut acc = {
        let (c, b) = leaves[0];
        let mut m = [0u8; 41];
        m[1..33].copy_from_slice(&c);
        m[33..].copy_from_slice(&b.to_be_bytes());
        (sha2::Sha256::digest(m).into(), b)
    };
    for s in &path {
        acc = node(&acc, s);
    }
    assert_eq!(acc, root);
    let mut h = tagged(ROOT_TAG);
    h.update(root.0);
    h.update(root.1.to_be_bytes());
    h.update((leaves.len() as u64).to_be_bytes());
    (h.finalize().into(), root.1, path.len())
}

/// The tree with hashcore; the tree is returned so that freeing it is not timed (the sha2
/// side does not own the accounts either).
fn ours(accounts: Vec<Account>) -> ((Digest, u64, usize), LiabilitiesTree) {
    let tree = LiabilitiesTree::build_with(engine(), accounts).unwrap();
    let root = tree.root();
    let proof = tree.proof(0).unwrap();
    proof.verify(&root.hash_hex(), Some(root.total)).unwrap();
    ((root.hash, root.total.to_sat(), proof.path.len()), tree)
}

const PHASES: [&str; 6] = [
    "id checks + total",
    "commitments",
    "sort",
    "leaf hashes",
    "node levels",
    "account moves",
];

/// Our engine: `Engine::auto()`, or the backend named by `LIAB_BACKEND` (`sha-ni`, `avx2`,
/// `avx512`, `portable`), e.g. to see a CPU without AVX-512 on one that has it.
fn engine() -> &'static hashcore::Engine {
    match std::env::var("LIAB_BACKEND") {
        Ok(name) => {
            let b = hashcore::Backend::ALL
                .into_iter()
                .find(|b| b.name() == name)
                .expect("LIAB_BACKEND: sha-ni, avx2, avx512 or portable");
            hashcore::Engine::forced(b).unwrap()
        }
        Err(_) => hashcore::Engine::auto(),
    }
}

fn lap(t: &mut Instant) -> f64 {
    let e = t.elapsed().as_secs_f64();
    *t = Instant::now();
    e
}

fn id_checks(accounts: &[Account]) -> Amount {
    let mut seen = std::collections::HashSet::with_capacity(accounts.len());
    let mut total = Amount::ZERO;
    for a in accounts {
        assert!(seen.insert(a.id().as_str()));
        total = total.checked_add(a.balance()).unwrap();
    }
    total
}

/// The phases of `LiabilitiesTree::build` as the library runs them, through the public API.
fn phases_ours(accounts: Vec<Account>) -> [f64; 6] {
    const CHUNK: usize = 4096; // as `SumTree::build`
    let engine = engine();
    let mut p = [0.0; 6];
    let mut t = Instant::now();
    // As the library: the balances are gathered in the same loop as the id checks.
    let mut seen = std::collections::HashSet::with_capacity(accounts.len());
    let mut total = Amount::ZERO;
    let mut balances = Vec::with_capacity(accounts.len());
    for a in &accounts {
        assert!(seen.insert(a.id().as_str()));
        balances.push(a.balance().to_sat());
        total = total.checked_add(a.balance()).unwrap();
    }
    drop(seen);
    black_box(total);
    p[0] = lap(&mut t);
    // (The library writes these pairs directly; the public function returns the digests.)
    let commitments = custody::liabilities::account_commitments(engine, &accounts);
    let mut keyed: Vec<(Digest, u32)> = commitments.into_iter().zip(0u32..).collect();
    p[1] = lap(&mut t);
    keyed.sort_unstable_by(|a, b| cmp_digest(&a.0, &b.0));
    p[2] = lap(&mut t);
    // `SumTree::from_leaves` in its two halves: the leaf level straight from the sorted
    // pairs, then the node levels, each in batched `hash_fixed` calls of `CHUNK` messages (41
    // and 81 bytes).
    let mut msgs = Vec::with_capacity(CHUNK * 81);
    let mut out = vec![[0u8; 32]; CHUNK];
    let mut level: Vec<(Digest, u64)> = Vec::with_capacity(keyed.len());
    for chunk in keyed.chunks(CHUNK) {
        msgs.clear();
        let leaves = chunk.iter().map(|&(c, i)| SumLeaf {
            account_commitment: c,
            balance: balances[i as usize],
        });
        let mut sums = Vec::with_capacity(CHUNK);
        for l in leaves {
            msgs.push(0);
            msgs.extend_from_slice(&l.account_commitment);
            msgs.extend_from_slice(&l.balance.to_be_bytes());
            sums.push(l.balance);
        }
        let o = &mut out[..chunk.len()];
        engine.hash_fixed(&msgs, 41, o).unwrap();
        level.extend(o.iter().copied().zip(sums));
    }
    p[3] = lap(&mut t);
    let mut levels = Vec::new();
    let mut sums = Vec::with_capacity(CHUNK);
    while level.len() > 1 {
        let mut next: Vec<(Digest, u64)> = Vec::with_capacity(level.len().div_ceil(2));
        for chunk in level.chunks(2 * CHUNK) {
            msgs.clear();
            sums.clear();
            for p in chunk.chunks_exact(2) {
                sums.push(p[0].1.checked_add(p[1].1).unwrap());
                msgs.push(1);
                msgs.extend_from_slice(&p[0].0);
                msgs.extend_from_slice(&p[0].1.to_be_bytes());
                msgs.extend_from_slice(&p[1].0);
                msgs.extend_from_slice(&p[1].1.to_be_bytes());
            }
            let o = &mut out[..sums.len()];
            engine.hash_fixed(&msgs, 81, o).unwrap();
            next.extend(o.iter().copied().zip(sums.iter().copied()));
        }
        if level.len() % 2 == 1 {
            next.push(level[level.len() - 1]);
        }
        levels.push(std::mem::replace(&mut level, next));
    }
    let tree = (levels, level);
    p[4] = lap(&mut t);
    let order: Vec<u32> = keyed.iter().map(|k| k.1).collect();
    black_box((&order, &accounts));
    p[5] = lap(&mut t);
    drop((tree, order, accounts));
    p
}

fn sha2_leaf(c: &Digest, b: u64) -> (Digest, u64) {
    let mut m = [0u8; 41];
    m[1..33].copy_from_slice(c);
    m[33..].copy_from_slice(&b.to_be_bytes());
    (sha2::Sha256::digest(m).into(), b)
}

fn sha2_node(l: &(Digest, u64), r: &(Digest, u64)) -> (Digest, u64) {
    let mut m = [0u8; 81];
    m[0] = 1;
    m[1..33].copy_from_slice(&l.0);
    m[33..41].copy_from_slice(&l.1.to_be_bytes());
    m[41..73].copy_from_slice(&r.0);
    m[73..].copy_from_slice(&r.1.to_be_bytes());
    (
        sha2::Sha256::digest(m).into(),
        l.1.checked_add(r.1).unwrap(),
    )
}

/// The same phases with sha2 (no account moves: 0).
fn phases_sha2(accounts: &[Account]) -> [f64; 6] {
    let mut p = [0.0; 6];
    let mut t = Instant::now();
    black_box(id_checks(accounts));
    p[0] = lap(&mut t);
    let tag = tagged(ACCOUNT_TAG);
    let mut leaves: Vec<(Digest, u64)> = accounts
        .iter()
        .map(|a| {
            let mut h = tag.clone();
            h.update(a.salt());
            h.update(a.id().as_str().as_bytes());
            (h.finalize().into(), a.balance().to_sat())
        })
        .collect();
    p[1] = lap(&mut t);
    leaves.sort_unstable_by(|a, b| cmp_digest(&a.0, &b.0));
    p[2] = lap(&mut t);
    let mut level: Vec<(Digest, u64)> = leaves.iter().map(|(c, b)| sha2_leaf(c, *b)).collect();
    p[3] = lap(&mut t);
    let mut levels = Vec::new();
    while level.len() > 1 {
        let mut next: Vec<(Digest, u64)> = level
            .chunks_exact(2)
            .map(|p| sha2_node(&p[0], &p[1]))
            .collect();
        if level.len() % 2 == 1 {
            next.push(level[level.len() - 1]);
        }
        levels.push(std::mem::replace(&mut level, next));
    }
    p[4] = lap(&mut t);
    black_box((&levels, &level));
    p
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |s| s.parse().unwrap());
    let rounds: usize = std::env::args().nth(2).map_or(7, |s| s.parse().unwrap());
    let list = accounts(n);
    println!(
        "liabilities tree: {n} accounts, {rounds} rounds, hashcore backend {}",
        engine().backend()
    );
    // Warm-up pair, which must agree.
    let a = ours(list.clone()).0;
    let b = sha2_tree(&list);
    assert_eq!(a, b, "hashcore and sha2 disagree");
    println!(
        "root {} total {} sat, proof of {} siblings",
        hex::encode(a.0),
        a.1,
        a.2
    );
    let (mut ours_s, mut sha2_s, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let input = list.clone();
        let t = Instant::now();
        let kept = black_box(ours(input));
        let t_ours = t.elapsed().as_secs_f64();
        drop(kept);
        let t = Instant::now();
        black_box(sha2_tree(&list));
        let t_sha2 = t.elapsed().as_secs_f64();
        ours_s.push(t_ours);
        sha2_s.push(t_sha2);
        ratios.push(t_sha2 / t_ours);
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (bo, bs) = (best(&ours_s), best(&sha2_s));
    println!(
        "hashcore: median {:.1} ms (best {:.1} ms)",
        median(&mut ours_s) * 1e3,
        bo * 1e3
    );
    println!(
        "sha2:     median {:.1} ms (best {:.1} ms)",
        median(&mut sha2_s) * 1e3,
        bs * 1e3
    );
    println!(
        "best/best {:.2}x speedup vs sha2: {:.2}x",
        bs / bo,
        median(&mut ratios)
    );
    // Every phase apart, both sides, median of `rounds` (alternated).
    let mut po: Vec<[f64; 6]> = Vec::new();
    let mut ps: Vec<[f64; 6]> = Vec::new();
    for _ in 0..rounds {
        let input = list.clone();
        po.push(phases_ours(input));
        ps.push(phases_sha2(&list));
    }
    println!("phases (median ms)      hashcore     sha2");
    for (k, name) in PHASES.iter().enumerate() {
        let mut a: Vec<f64> = po.iter().map(|p| p[k]).collect();
        let mut b: Vec<f64> = ps.iter().map(|p| p[k]).collect();
        println!(
            "  {name:<20} {:>9.1} {:>9.1}",
            median(&mut a) * 1e3,
            median(&mut b) * 1e3
        );
    }
    // The commitments alone, best of 5: the library's batched `account_commitments`, the
    // batched kernel alone over prebuilt `salt || id` messages (all ids here are 15 bytes), and
    // sha2 one message at a time.
    let engine = engine();
    let tag = hashcore::TaggedHash::new(ACCOUNT_TAG);
    let len = 32 + list[0].id().as_str().len();
    let mut flat = Vec::with_capacity(list.len() * len);
    for a in &list {
        assert_eq!(a.id().as_str().len() + 32, len);
        flat.extend_from_slice(a.salt());
        flat.extend_from_slice(a.id().as_str().as_bytes());
    }
    let (mut c_lib, mut c_kernel, mut c_sha2) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for _ in 0..5 {
        let t = Instant::now();
        let a = custody::liabilities::account_commitments(engine, &list);
        c_lib = c_lib.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut k = vec![[0u8; 32]; list.len()];
        tag.hash_fixed(engine, &flat, len, &mut k).unwrap();
        c_kernel = c_kernel.min(t.elapsed().as_secs_f64());
        let tag2 = tagged(ACCOUNT_TAG);
        let t = Instant::now();
        let b: Vec<Digest> = list
            .iter()
            .map(|a| {
                let mut h = tag2.clone();
                h.update(a.salt());
                h.update(a.id().as_str().as_bytes());
                h.finalize().into()
            })
            .collect();
        c_sha2 = c_sha2.min(t.elapsed().as_secs_f64());
        assert_eq!(a, b);
        assert_eq!(k, b);
    }
    println!(
        "commitments only (best of 5): hashcore account_commitments {:.1} ms, \
         TaggedHash::hash_fixed on prebuilt messages {:.1} ms, sha2 {:.1} ms",
        c_lib * 1e3,
        c_kernel * 1e3,
        c_sha2 * 1e3
    );
}
