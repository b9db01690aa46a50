//! Merkle trees against independent reference code (the `sha2` crate), published vectors and
//! exhaustive and property-based proof checks.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hashcore::merkle::rfc9162::{
    self, consistency_proof, inclusion_proof, CompactTree, ConsistencyProof, InclusionProof,
};
use hashcore::merkle::sum::{SumLeaf, SumNode, SumTree};
use hashcore::merkle::{bitcoin, MerkleError};
use hashcore::{Digest, Engine};
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

fn h(parts: &[&[u8]]) -> Digest {
    let mut s = Sha256::new();
    for p in parts {
        s.update(p);
    }
    s.finalize().into()
}

/// The largest power of two smaller than `n` (n >= 2), computed the slow, obvious way.
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// RFC 9162 MTH, written from the RFC's recursive definition.
fn reference_root(leaves: &[Digest]) -> Digest {
    match leaves.len() {
        0 => h(&[]),
        1 => leaves[0],
        n => {
            let k = split(n);
            h(&[
                &[1],
                &reference_root(&leaves[..k]),
                &reference_root(&leaves[k..]),
            ])
        }
    }
}

fn leaves(n: usize) -> Vec<Digest> {
    (0..n as u64)
        .map(|i| h(&[&[0], &i.to_le_bytes()]))
        .collect()
}

fn unhex32(s: &str) -> Digest {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn reference_split_is_the_largest_power_of_two_below_n() {
    let want = [
        (2, 1),
        (3, 2),
        (4, 2),
        (5, 4),
        (8, 4),
        (9, 8),
        (16, 8),
        (17, 16),
    ];
    for (n, k) in want {
        assert_eq!(split(n), k, "n={n}");
    }
}

#[test]
fn root_matches_reference_for_every_size_on_every_engine() {
    let all = leaves(300);
    for engine in Engine::available() {
        for n in 0..=300 {
            assert_eq!(
                rfc9162::root(engine, &all[..n]),
                reference_root(&all[..n]),
                "size {n} on {}",
                engine.backend()
            );
        }
        // Around the cache-sized subtrees of 4096 leaves: a last subtree of one leaf, of an
        // odd count, several subtrees.
        for n in [
            1023,
            1024,
            1025,
            4095,
            4096,
            4097,
            8191,
            8192,
            8193,
            8192 + 3,
            12_289,
            3 * 4096 + 1001,
        ] {
            let l = leaves(n);
            assert_eq!(rfc9162::root(engine, &l), reference_root(&l), "size {n}");
        }
    }
}

#[test]
fn root_parallel_equals_root() {
    let engine = Engine::auto();
    for n in [0, 1, 2, 3, 8191, 8192, 8193, 20_000, 65_536, 100_003] {
        let l = leaves(n);
        let want = rfc9162::root(engine, &l);
        for threads in 1..=4 {
            assert_eq!(
                rfc9162::root_parallel(engine, &l, threads),
                want,
                "n={n} t={threads}"
            );
        }
    }
}

#[test]
fn certificate_transparency_known_answers() {
    // The eight test inputs of RFC 6962's reference implementation and the tree head of every
    // prefix, as published with certificate-transparency's tests.
    let inputs: [&[u8]; 8] = [
        b"",
        &[0x00],
        &[0x10],
        &[0x20, 0x21],
        &[0x30, 0x31],
        &[0x40, 0x41, 0x42, 0x43],
        &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
        &[
            0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
            0x6e, 0x6f,
        ],
    ];
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let engine = Engine::auto();
    let lh: Vec<Digest> = inputs
        .iter()
        .map(|d| rfc9162::leaf_hash(engine, d))
        .collect();
    for (i, want) in roots.iter().enumerate() {
        assert_eq!(
            hex::encode(rfc9162::root(engine, &lh[..=i])),
            *want,
            "size {}",
            i + 1
        );
    }
    assert_eq!(
        hex::encode(rfc9162::empty_root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn leaf_hashes_fixed_matches_one_by_one() {
    let engine = Engine::auto();
    let data: Vec<u8> = (0..33 * 50).map(|i| i as u8).collect();
    let batched = rfc9162::leaf_hashes_fixed(engine, &data, 33).unwrap();
    let single: Vec<Digest> = data
        .chunks(33)
        .map(|c| rfc9162::leaf_hash(engine, c))
        .collect();
    assert_eq!(batched, single);
    assert_eq!(batched[7], h(&[&[0], &data[7 * 33..8 * 33]]));
    assert!(rfc9162::leaf_hashes_fixed(engine, &data[..40], 33).is_err());
    assert!(rfc9162::leaf_hashes_fixed(engine, &data, 0).is_err());
}

#[test]
fn every_inclusion_proof_verifies_and_wrong_inputs_fail() {
    let all = leaves(71);
    let engine = Engine::auto();
    for n in 1..=70usize {
        let root = rfc9162::root(engine, &all[..n]);
        for i in 0..n as u64 {
            let p = inclusion_proof(engine, &all[..n], i).unwrap();
            p.verify(&all[i as usize], &root).unwrap();
            // Another leaf, another index, another size, another root: all fail.
            let other = all[(i as usize + 1) % n];
            if n > 1 {
                assert!(p.verify(&other, &root).is_err(), "n={n} i={i} leaf");
                let q = InclusionProof {
                    leaf_index: (i + 1) % n as u64,
                    ..p.clone()
                };
                assert!(
                    q.verify(&all[i as usize], &root).is_err(),
                    "n={n} i={i} index"
                );
            }
            // The size is bound to the root by the signed checkpoint, not by the path: a size
            // with another path shape fails, and so does a size that excludes the leaf.
            let bigger = inclusion_proof(engine, &all[..n + 1], i).unwrap();
            if bigger.path.len() != p.path.len() {
                let q = InclusionProof {
                    tree_size: n as u64 + 1,
                    ..p.clone()
                };
                assert!(
                    q.verify(&all[i as usize], &root).is_err(),
                    "n={n} i={i} size"
                );
            }
            let q = InclusionProof {
                tree_size: i,
                ..p.clone()
            };
            assert!(matches!(
                q.verify(&all[i as usize], &root),
                Err(MerkleError::IndexOutOfRange { .. })
            ));
            assert!(p.verify(&all[i as usize], &h(&[b"x"])).is_err());
        }
    }
    assert!(matches!(
        inclusion_proof(engine, &all[..5], 5),
        Err(MerkleError::IndexOutOfRange { index: 5, size: 5 })
    ));
}

#[test]
fn every_consistency_proof_verifies_and_wrong_roots_fail() {
    let all = leaves(64);
    let engine = Engine::auto();
    for n in 1..=64usize {
        let new_root = rfc9162::root(engine, &all[..n]);
        for m in 0..=n {
            let old_root = rfc9162::root(engine, &all[..m]);
            let p = consistency_proof(engine, &all[..n], m as u64).unwrap();
            p.verify(&old_root, &new_root)
                .unwrap_or_else(|e| panic!("m={m} n={n}: {e}"));
            if m > 0 && m < n {
                let forked = h(&[b"fork"]);
                assert!(p.verify(&forked, &new_root).is_err(), "m={m} n={n}");
                assert!(p.verify(&old_root, &forked).is_err(), "m={m} n={n}");
                // Every path element matters, and so does every leaf of the new tree: a
                // changed leaf (above or below m) changes one root or the proof.
                for k in 0..p.path.len() {
                    let mut q = p.clone();
                    q.path[k][k % 32] ^= 0x40;
                    assert!(q.verify(&old_root, &new_root).is_err(), "m={m} n={n} k={k}");
                }
                let mut short = p.clone();
                short.path.pop();
                assert!(matches!(
                    short.verify(&old_root, &new_root),
                    Err(MerkleError::PathLength { .. })
                ));
                let mut long = p.clone();
                long.path.insert(0, old_root);
                assert!(matches!(
                    long.verify(&old_root, &new_root),
                    Err(MerkleError::PathLength { .. })
                ));
                // A proof for another old size does not fit this pair of roots.
                if m > 1 {
                    let other = consistency_proof(engine, &all[..n], m as u64 - 1).unwrap();
                    let q = ConsistencyProof {
                        old_size: m as u64,
                        ..other
                    };
                    assert!(q.verify(&old_root, &new_root).is_err(), "m={m} n={n}");
                }
            }
        }
    }
    assert!(matches!(
        consistency_proof(engine, &all[..3], 4),
        Err(MerkleError::OldAboveNew { old: 4, new: 3 })
    ));
}

#[test]
fn compact_tree_matches_root_at_every_size_and_round_trips() {
    let all = leaves(600);
    let engine = Engine::auto();
    let mut t = CompactTree::new();
    assert_eq!(t.root(engine), rfc9162::empty_root());
    for (i, l) in all.iter().enumerate() {
        t.push(engine, *l);
        assert_eq!(t.size(), i as u64 + 1);
        assert_eq!(t.root(engine), reference_root(&all[..=i]), "size {}", i + 1);
        let (size, frontier) = t.to_parts();
        assert_eq!(frontier.len(), size.count_ones() as usize);
        assert_eq!(CompactTree::from_parts(size, frontier).unwrap(), t);
    }
    // A tree restored at the largest size refuses to grow instead of wrapping.
    let mut full = CompactTree::from_parts(u64::MAX, vec![[1; 32]; 64]).unwrap();
    assert_eq!(full.try_push(engine, [2; 32]), Err(MerkleError::Full));
    full.push(engine, [2; 32]);
    assert_eq!(full.size(), u64::MAX);
    let mut t2 = CompactTree::new();
    for l in &all[..5] {
        t2.try_push(engine, *l).unwrap();
    }
    assert_eq!(t2.root(engine), reference_root(&all[..5]));
    assert!(matches!(
        CompactTree::from_parts(3, vec![[0; 32]]),
        Err(MerkleError::Frontier {
            size: 3,
            got: 1,
            expected: 2
        })
    ));
}

fn mutate(d: &mut Digest, bit: usize) {
    d[bit / 8 % 32] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mutated_inclusion_proofs_fail(
        n in 1usize..200,
        i in 0usize..200,
        which in 0usize..64,
        bit in 0usize..256,
    ) {
        let i = i % n;
        let all = leaves(n);
        let engine = Engine::auto();
        let root = rfc9162::root(engine, &all);
        let p = inclusion_proof(engine, &all, i as u64).unwrap();
        prop_assert!(p.verify(&all[i], &root).is_ok());
        // A flipped bit in the leaf, in any path element, or in the root fails.
        let mut leaf = all[i];
        mutate(&mut leaf, bit);
        prop_assert!(p.verify(&leaf, &root).is_err());
        if !p.path.is_empty() {
            let mut q = p.clone();
            let k = which % q.path.len();
            mutate(&mut q.path[k], bit);
            prop_assert!(q.verify(&all[i], &root).is_err());
            let mut truncated = p.clone();
            truncated.path.pop();
            prop_assert!(truncated.verify(&all[i], &root).is_err());
        }
        let mut extended = p.clone();
        extended.path.push(root);
        prop_assert!(extended.verify(&all[i], &root).is_err());
        let mut r = root;
        mutate(&mut r, bit);
        prop_assert!(p.verify(&all[i], &r).is_err());
    }

    #[test]
    fn mutated_consistency_proofs_fail(
        n in 2usize..200,
        m in 1usize..200,
        which in 0usize..64,
        bit in 0usize..256,
    ) {
        let m = 1 + (m - 1) % (n - 1); // 1 <= m < n
        let all = leaves(n);
        let engine = Engine::auto();
        let (old, new) = (rfc9162::root(engine, &all[..m]), rfc9162::root(engine, &all));
        let p = consistency_proof(engine, &all, m as u64).unwrap();
        prop_assert!(p.verify(&old, &new).is_ok());
        let mut q = p.clone();
        let k = which % q.path.len();
        mutate(&mut q.path[k], bit);
        prop_assert!(q.verify(&old, &new).is_err());
        let mut short = p.clone();
        short.path.pop();
        prop_assert!(short.verify(&old, &new).is_err());
        let mut long = p.clone();
        long.path.push(new);
        prop_assert!(long.verify(&old, &new).is_err());
        let same = ConsistencyProof { new_size: m as u64, ..p.clone() };
        prop_assert!(same.verify(&old, &new).is_err());
        let backwards = ConsistencyProof { old_size: n as u64 + 1, ..p.clone() };
        prop_assert!(backwards.verify(&old, &new).is_err());
        let mut o = old;
        mutate(&mut o, bit);
        prop_assert!(p.verify(&o, &new).is_err());
    }

    #[test]
    fn arbitrary_proofs_never_panic(
        index in any::<u64>(),
        size in any::<u64>(),
        path in proptest::collection::vec(any::<[u8; 32]>(), 0..70),
        leaf in any::<[u8; 32]>(),
        root in any::<[u8; 32]>(),
    ) {
        let p = InclusionProof { leaf_index: index, tree_size: size, path: path.clone() };
        prop_assert!(p.verify(&leaf, &root).is_err());
        let c = ConsistencyProof { old_size: index, new_size: size, path };
        // Random roots are never consistent unless the proof is trivially about equal roots.
        if leaf != root {
            prop_assert!(c.verify(&leaf, &root).is_err());
        }
    }
}

fn display_hash(s: &str) -> Digest {
    let mut d = unhex32(s);
    d.reverse();
    d
}

#[test]
fn bitcoin_merkle_root_of_block_100000() {
    let txids: Vec<Digest> = [
        "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
        "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
        "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
        "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
    ]
    .iter()
    .map(|s| display_hash(s))
    .collect();
    let want = display_hash("f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766");
    for engine in Engine::available() {
        assert_eq!(
            bitcoin::merkle_root(engine, &txids),
            Some(want),
            "{}",
            engine.backend()
        );
    }
    for (i, txid) in txids.iter().enumerate() {
        let branch = bitcoin::branch(Engine::auto(), &txids, i).unwrap();
        assert_eq!(bitcoin::root_from_branch(txid, i as u64, &branch), want);
        assert_ne!(
            bitcoin::root_from_branch(txid, (i as u64) ^ 1, &branch),
            want
        );
    }
}

fn bitcoin_reference(txids: &[Digest]) -> Digest {
    let mut level = txids.to_vec();
    while level.len() > 1 {
        if level.len() % 2 == 1 {
            level.push(*level.last().unwrap());
        }
        level = level.chunks(2).map(|p| h(&[&h(&[&p[0], &p[1]])])).collect();
    }
    level[0]
}

#[test]
fn bitcoin_merkle_root_matches_reference_and_flags_mutation() {
    let all = leaves(77);
    let engine = Engine::auto();
    assert_eq!(bitcoin::merkle_root(engine, &[]), None);
    for n in 1..=77 {
        let (root, mutated) = bitcoin::merkle_root_checked(engine, &all[..n]).unwrap();
        assert_eq!(root, bitcoin_reference(&all[..n]), "n={n}");
        assert!(!mutated);
        for i in 0..n {
            let br = bitcoin::branch(engine, &all[..n], i).unwrap();
            assert_eq!(bitcoin::root_from_branch(&all[i], i as u64, &br), root);
        }
    }
    // CVE-2012-2459: [a, b, c] and [a, b, c, c] share a root; the second is flagged.
    let three = &all[..3];
    let mut four = three.to_vec();
    four.push(three[2]);
    let (r3, m3) = bitcoin::merkle_root_checked(engine, three).unwrap();
    let (r4, m4) = bitcoin::merkle_root_checked(engine, &four).unwrap();
    assert_eq!(r3, r4);
    assert!(!m3 && m4);
    assert_eq!(bitcoin::branch(engine, three, 3), None);
}

fn sum_leaves(n: usize) -> Vec<SumLeaf> {
    (0..n as u64)
        .map(|i| SumLeaf {
            account_commitment: h(&[b"acct", &i.to_le_bytes()]),
            balance: i * 1_000 + 7,
        })
        .collect()
}

fn sum_reference(leaves: &[SumLeaf]) -> SumNode {
    if leaves.len() == 1 {
        let l = leaves[0];
        return SumNode {
            hash: h(&[&[0], &l.account_commitment, &l.balance.to_be_bytes()]),
            sum: l.balance,
        };
    }
    let k = split(leaves.len());
    let (l, r) = (sum_reference(&leaves[..k]), sum_reference(&leaves[k..]));
    SumNode {
        hash: h(&[
            &[1],
            &l.hash,
            &l.sum.to_be_bytes(),
            &r.hash,
            &r.sum.to_be_bytes(),
        ]),
        sum: l.sum + r.sum,
    }
}

#[test]
fn sum_tree_matches_reference_and_proofs_verify() {
    for engine in Engine::available() {
        for n in 1..=40 {
            let ls = sum_leaves(n);
            let tree = SumTree::build(engine, &ls).unwrap();
            let root = tree.root();
            assert_eq!(root, sum_reference(&ls), "n={n}");
            assert_eq!(root.sum, ls.iter().map(|l| l.balance).sum::<u64>());
            for (i, leaf) in ls.iter().enumerate() {
                let p = tree.proof(i as u64).unwrap();
                p.verify(leaf, &root).unwrap();
                let lied = SumLeaf {
                    balance: leaf.balance + 1,
                    ..*leaf
                };
                assert!(p.verify(&lied, &root).is_err());
                if !p.path.is_empty() {
                    // A sibling that claims a smaller sum, or another hash, fails.
                    let mut q = p.clone();
                    q.path[0].sum = q.path[0].sum.wrapping_sub(1);
                    assert!(q.verify(leaf, &root).is_err());
                    let mut q = p.clone();
                    q.path[0].hash[0] ^= 1;
                    assert!(q.verify(leaf, &root).is_err());
                }
                let wrong_total = SumNode {
                    sum: root.sum - 1,
                    ..root
                };
                assert!(p.verify(leaf, &wrong_total).is_err());
            }
        }
    }
}

#[test]
fn sum_tree_rejects_overflow_and_empty_and_bad_index() {
    let engine = Engine::auto();
    let big = [
        SumLeaf {
            account_commitment: [1; 32],
            balance: u64::MAX,
        },
        SumLeaf {
            account_commitment: [2; 32],
            balance: 1,
        },
    ];
    assert_eq!(SumTree::build(engine, &big), Err(MerkleError::SumOverflow));
    assert!(SumTree::build(engine, &[]).is_err());
    let tree = SumTree::build(engine, &sum_leaves(5)).unwrap();
    assert!(matches!(
        tree.proof(5),
        Err(MerkleError::IndexOutOfRange { .. })
    ));
    // A proof whose sibling sum would overflow is an error, not a wrap.
    let mut p = tree.proof(0).unwrap();
    p.path[0].sum = u64::MAX;
    assert_eq!(
        p.verify(&sum_leaves(1)[0], &tree.root()),
        Err(MerkleError::SumOverflow)
    );
}

#[test]
fn compact_tree_extend_equals_push_one_by_one() {
    let all = leaves(1100);
    for engine in Engine::available() {
        for start in [0usize, 1, 2, 3, 5, 7, 8, 13, 64, 100, 255, 256, 511] {
            for n in [
                0usize, 1, 2, 3, 4, 7, 8, 9, 31, 64, 65, 100, 255, 256, 300, 589,
            ] {
                let mut pushed = CompactTree::new();
                for l in &all[..start] {
                    pushed.push(engine, *l);
                }
                let mut extended = pushed.clone();
                for l in &all[start..start + n] {
                    pushed.push(engine, *l);
                }
                extended.extend(engine, &all[start..start + n]);
                assert_eq!(extended, pushed, "start {start} n {n}");
                assert_eq!(
                    extended.root(engine),
                    reference_root(&all[..start + n]),
                    "start {start} n {n}"
                );
            }
        }
    }
    // Extending in uneven pieces gives the same state as one call.
    let engine = Engine::auto();
    let mut whole = CompactTree::new();
    whole.extend(engine, &all);
    let mut pieces = CompactTree::new();
    let mut at = 0;
    for step in [1usize, 6, 33, 128, 2, 500, 17].iter().cycle() {
        let end = (at + step).min(all.len());
        pieces.extend(engine, &all[at..end]);
        at = end;
        if at == all.len() {
            break;
        }
    }
    assert_eq!(pieces, whole);
    // A full tree stays full.
    let mut full = CompactTree::from_parts(u64::MAX, vec![[1; 32]; 64]).unwrap();
    full.extend(engine, &all[..3]);
    assert_eq!(full.size(), u64::MAX);
}
