//! Property tests of the liabilities sum tree: totals, proofs, tampering and overflow.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hashcore::merkle::sum::{SumLeaf, SumNode, SumProof, SumTree};
use hashcore::merkle::MerkleError;
use hashcore::Engine;
use proptest::prelude::*;

fn leaves(balances: &[u64]) -> Vec<SumLeaf> {
    balances
        .iter()
        .enumerate()
        .map(|(i, b)| SumLeaf {
            account_commitment: [i as u8; 32],
            balance: *b,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn build_fails_exactly_when_the_total_overflows(
        balances in proptest::collection::vec(any::<u64>(), 1..40),
    ) {
        let total: u128 = balances.iter().map(|b| u128::from(*b)).sum();
        let built = SumTree::build(Engine::auto(), &leaves(&balances));
        match u64::try_from(total) {
            Ok(t) => prop_assert_eq!(built.map(|tree| tree.root().sum), Ok(t)),
            Err(_) => prop_assert_eq!(built, Err(MerkleError::SumOverflow)),
        }
    }

    #[test]
    fn proofs_verify_and_tampering_fails(
        balances in proptest::collection::vec(0u64..=21_000_000 * 100_000_000, 1..80),
        index in any::<usize>(),
        which in any::<usize>(),
    ) {
        let engine = Engine::auto();
        let ls = leaves(&balances);
        let tree = SumTree::build(engine, &ls).unwrap();
        let root = tree.root();
        prop_assert_eq!(root.sum, balances.iter().sum::<u64>());
        prop_assert_eq!(tree.len(), ls.len() as u64);
        let i = index % ls.len();
        let p = tree.proof(i as u64).unwrap();
        prop_assert_eq!(p.root_from(engine, &ls[i]), Ok(root));
        prop_assert!(p.verify(&ls[i], &root).is_ok());
        // Another balance, another account, another total or hash: all fail.
        let lower = SumLeaf { balance: ls[i].balance.wrapping_sub(1), ..ls[i] };
        prop_assert!(p.verify(&lower, &root).is_err());
        let other = SumLeaf { account_commitment: [0xee; 32], ..ls[i] };
        prop_assert!(p.verify(&other, &root).is_err());
        let more = SumNode { sum: root.sum + 1, ..root };
        prop_assert!(p.verify(&ls[i], &more).is_err());
        let rehashed = SumNode { hash: [0; 32], ..root };
        prop_assert!(p.verify(&ls[i], &rehashed).is_err());
        if !p.path.is_empty() {
            // Moving value between a sibling and the leaf keeps the total but not the hash:
            // each node commits to both child sums.
            let k = which % p.path.len();
            let mut q = p.clone();
            q.path[k].sum = q.path[k].sum.wrapping_sub(1);
            prop_assert!(q.verify(&ls[i], &root).is_err());
            let mut q = p.clone();
            q.path[0].sum = q.path[0].sum.wrapping_sub(1);
            let richer = SumLeaf { balance: ls[i].balance + 1, ..ls[i] };
            prop_assert!(q.verify(&richer, &root).is_err());
            let mut q = p.clone();
            q.path.pop();
            let bad_len = matches!(q.verify(&ls[i], &root), Err(MerkleError::PathLength { .. }));
            prop_assert!(bad_len);
        }
        let mut q = p.clone();
        q.path.push(root);
        let bad_len = matches!(q.verify(&ls[i], &root), Err(MerkleError::PathLength { .. }));
            prop_assert!(bad_len);
        if ls.len() > 1 {
            let q = SumProof { leaf_index: ((i + 1) % ls.len()) as u64, ..p.clone() };
            prop_assert!(q.verify(&ls[i], &root).is_err());
        }
    }

    #[test]
    fn arbitrary_sum_proofs_never_panic(
        index in any::<u64>(),
        size in any::<u64>(),
        path in proptest::collection::vec((any::<[u8; 32]>(), any::<u64>()), 0..70),
        balance in any::<u64>(),
    ) {
        let p = SumProof {
            leaf_index: index,
            tree_size: size,
            path: path.into_iter().map(|(hash, sum)| SumNode { hash, sum }).collect(),
        };
        let leaf = SumLeaf { account_commitment: [3; 32], balance };
        let root = SumNode { hash: [9; 32], sum: 0 };
        prop_assert!(p.verify(&leaf, &root).is_err());
    }
}
