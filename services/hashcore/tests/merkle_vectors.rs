//! Published vectors (Certificate Transparency proofs, a mainnet block header and its
//! transactions), txoutproofs and the edges of the batched helpers.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hashcore::merkle::bitcoin::{self, PartialMerkleTree, TxOutProof};
use hashcore::merkle::rfc9162::{self, consistency_proof, inclusion_proof, ConsistencyProof};
use hashcore::merkle::MerkleError;
use hashcore::{Digest, Engine};
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

fn unhex32(s: &str) -> Digest {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn h(parts: &[&[u8]]) -> Digest {
    let mut s = Sha256::new();
    for p in parts {
        s.update(p);
    }
    s.finalize().into()
}

const CT_INPUTS: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

const CT_ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn ct_leaves() -> Vec<Digest> {
    let data: Vec<Vec<u8>> = CT_INPUTS.iter().map(|s| hex::decode(s).unwrap()).collect();
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    rfc9162::leaf_hashes(Engine::auto(), &refs)
}

fn ct_root(size: usize) -> Digest {
    unhex32(CT_ROOTS[size - 1])
}

#[test]
fn certificate_transparency_inclusion_proofs() {
    // Published with the RFC 6962 reference implementation's tests (index, size, path).
    let vectors: [(u64, usize, [&str; 3]); 2] = [
        (
            0,
            8,
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    let leaves = ct_leaves();
    let engine = Engine::auto();
    for (index, size, path) in vectors {
        let want: Vec<Digest> = path.iter().map(|s| unhex32(s)).collect();
        let p = inclusion_proof(engine, &leaves[..size], index).unwrap();
        assert_eq!(p.path, want, "index {index} size {size}");
        p.verify(&leaves[index as usize], &ct_root(size)).unwrap();
        assert_eq!(
            p.root_from(engine, &leaves[index as usize]).unwrap(),
            ct_root(size)
        );
    }
}

#[test]
fn certificate_transparency_consistency_proofs() {
    let vectors: [(u64, usize, &[&str]); 3] = [
        (
            2,
            8,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    let leaves = ct_leaves();
    let engine = Engine::auto();
    for (old, new, path) in vectors {
        let want: Vec<Digest> = path.iter().map(|s| unhex32(s)).collect();
        let p = consistency_proof(engine, &leaves[..new], old).unwrap();
        assert_eq!(p.path, want, "{old} -> {new}");
        p.verify(&ct_root(old as usize), &ct_root(new)).unwrap();
        // The same proof between other published heads fails.
        assert_eq!(
            p.verify(&ct_root(old as usize + 1), &ct_root(new)),
            Err(MerkleError::RootMismatch)
        );
    }
}

#[test]
fn consistency_path_length_is_checked_before_hashing() {
    let leaves = ct_leaves();
    let engine = Engine::auto();
    let p = consistency_proof(engine, &leaves, 6).unwrap();
    let mut short = p.clone();
    short.path.pop();
    assert_eq!(
        short.verify(&ct_root(6), &ct_root(8)),
        Err(MerkleError::PathLength {
            got: 2,
            expected: 3
        })
    );
    let mut long = p.clone();
    long.path.push([7; 32]);
    assert_eq!(
        long.verify(&ct_root(6), &ct_root(8)),
        Err(MerkleError::PathLength {
            got: 4,
            expected: 3
        })
    );
    // Degenerate cases: equal sizes need equal roots and no path; size 0 needs the empty root.
    let same = ConsistencyProof {
        old_size: 4,
        new_size: 4,
        path: vec![],
    };
    same.verify(&ct_root(4), &ct_root(4)).unwrap();
    assert!(same.verify(&ct_root(4), &ct_root(5)).is_err());
    let from_empty = ConsistencyProof {
        old_size: 0,
        new_size: 8,
        path: vec![],
    };
    from_empty
        .verify(&rfc9162::empty_root(), &ct_root(8))
        .unwrap();
    assert!(from_empty.verify(&ct_root(1), &ct_root(8)).is_err());
    let empty_path = ConsistencyProof {
        old_size: 6,
        new_size: 8,
        path: vec![],
    };
    assert!(empty_path.verify(&ct_root(6), &ct_root(8)).is_err());
}

#[test]
fn leaf_hash_helpers_agree() {
    let engine = Engine::auto();
    // Runs of equal and unequal lengths, empty entries, and a run longer than one batch.
    let mut data: Vec<Vec<u8>> = (0..5000u32).map(|i| i.to_be_bytes().to_vec()).collect();
    data.insert(17, vec![]);
    data.insert(18, vec![]);
    data.insert(40, vec![1, 2, 3]);
    data.push(vec![9; 200]);
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let batched = rfc9162::leaf_hashes(engine, &refs);
    let want: Vec<Digest> = data.iter().map(|d| h(&[&[0], d])).collect();
    assert_eq!(batched, want);
    assert!(rfc9162::leaf_hashes(engine, &[]).is_empty());
    let flat: Vec<u8> = (0..32 * 9000).map(|i| (i * 7) as u8).collect();
    let fixed = rfc9162::leaf_hashes_fixed(engine, &flat, 32).unwrap();
    assert_eq!(fixed.len(), 9000);
    assert_eq!(fixed[8999], h(&[&[0], &flat[32 * 8999..]]));
    assert_eq!(
        rfc9162::leaf_hashes_fixed(engine, &flat[..33], 32),
        Err(MerkleError::LeafLength {
            len: 32,
            buffer: 33
        })
    );
    assert_eq!(rfc9162::leaf_hashes_fixed(engine, &[], 32), Ok(Vec::new()));
}

#[test]
fn root_parallel_equals_root_for_awkward_sizes_and_thread_counts() {
    let engine = Engine::auto();
    let all: Vec<Digest> = (0..70_001u32).map(|i| h(&[&i.to_le_bytes()])).collect();
    for n in [8192, 12_289, 32_768, 40_000, 70_001] {
        let want = rfc9162::root(engine, &all[..n]);
        for threads in [0, 1, 2, 3, 4, 5, 7, 64, usize::MAX] {
            assert_eq!(
                rfc9162::root_parallel(engine, &all[..n], threads),
                want,
                "n={n} threads={threads}"
            );
        }
    }
}

fn display(s: &str) -> Digest {
    let mut d = unhex32(s);
    d.reverse();
    d
}

/// Mainnet block 100,000: its header fields and its four transactions.
fn block_100000() -> ([u8; 80], Vec<Digest>) {
    let mut header = Vec::new();
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&display(
        "000000000002d01c1fccc21636b607dfd930d31d01c3a62104612a1719011250",
    ));
    header.extend_from_slice(&display(
        "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766",
    ));
    header.extend_from_slice(&1_293_623_863u32.to_le_bytes());
    header.extend_from_slice(&0x1b04_864cu32.to_le_bytes());
    header.extend_from_slice(&274_148_111u32.to_le_bytes());
    let txids = [
        "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
        "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
        "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
        "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
    ]
    .iter()
    .map(|s| display(s))
    .collect();
    (header.try_into().unwrap(), txids)
}

#[test]
fn txoutproof_of_block_100000() {
    let (header, txids) = block_100000();
    let engine = Engine::auto();
    for pick in 0..4 {
        let matched: Vec<bool> = (0..4).map(|i| i == pick).collect();
        let proof = TxOutProof {
            header,
            tree: PartialMerkleTree::build(&txids, &matched).unwrap(),
        };
        // The header is the real one: its hash is the block's published hash.
        assert_eq!(
            proof.block_hash(),
            display("000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506")
        );
        assert_eq!(
            Some(proof.header_merkle_root()),
            bitcoin::merkle_root(engine, &txids)
        );
        let bytes = proof.to_bytes();
        // header, total, 1-byte count, 3 hashes (the txid, its sibling, the other pair), flags.
        assert_eq!(bytes.len(), 80 + 4 + 1 + 3 * 32 + 1 + 1);
        let parsed = TxOutProof::parse(&bytes).unwrap();
        assert_eq!(parsed, proof);
        assert_eq!(parsed.verify().unwrap(), vec![(pick as u32, txids[pick])]);
        // Another header (one nonce bit) or a flipped hash fails.
        let mut other = parsed.clone();
        other.header[36] ^= 1;
        assert_eq!(other.verify(), Err(MerkleError::RootMismatch));
        let mut other = parsed.clone();
        other.tree.hashes[1][0] ^= 1;
        assert_eq!(other.verify(), Err(MerkleError::RootMismatch));
        // Truncated or padded bytes are refused.
        assert!(TxOutProof::parse(&bytes[..bytes.len() - 1]).is_err());
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(TxOutProof::parse(&padded).is_err());
    }
}

#[test]
fn partial_tree_rejects_malformed_and_mutated_trees() {
    let (_, txids) = block_100000();
    let tree = PartialMerkleTree::build(&txids, &[false, true, false, false]).unwrap();
    let want = bitcoin::merkle_root(Engine::auto(), &txids).unwrap();
    assert_eq!(tree.extract_matches().unwrap().root, want);
    let bad =
        |t: &PartialMerkleTree| matches!(t.extract_matches(), Err(MerkleError::PartialTree(_)));
    let mut t = tree.clone();
    t.total_transactions = 0;
    assert!(bad(&t));
    let mut t = tree.clone();
    t.total_transactions = bitcoin::MAX_BLOCK_TRANSACTIONS + 1;
    assert!(bad(&t));
    let mut t = tree.clone();
    t.hashes.pop();
    assert!(bad(&t));
    let mut t = tree.clone();
    t.hashes.push([0; 32]);
    assert!(bad(&t));
    let mut t = tree.clone();
    t.flags.push(0);
    assert!(bad(&t));
    let mut t = tree.clone();
    t.flags.clear();
    assert!(bad(&t));
    let mut t = tree.clone();
    t.total_transactions = 5; // another shape: the walk no longer fits the hashes
    assert!(t.extract_matches().map(|m| m.root) != Ok(want));
    // CVE-2012-2459: [a, b, c, c] against the root of [a, b, c] is refused.
    let mut dup = txids[..3].to_vec();
    dup.push(txids[2]);
    let t = PartialMerkleTree::build(&dup, &[false, false, true, false]).unwrap();
    assert!(bad(&t));
    assert_eq!(PartialMerkleTree::build(&[], &[]), Err(MerkleError::Empty));
    assert!(PartialMerkleTree::build(&txids, &[true]).is_err());
    // Non-canonical compact size.
    let mut bytes = vec![0u8; 80];
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&[0xfd, 0x01, 0x00]);
    assert!(TxOutProof::parse(&bytes).is_err());
}

fn txids(n: usize) -> Vec<Digest> {
    (0..n as u64)
        .map(|i| h(&[b"tx", &i.to_le_bytes()]))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn partial_trees_round_trip(n in 1usize..300, picks in proptest::collection::vec(any::<u16>(), 0..6)) {
        let ids = txids(n);
        let mut matched = vec![false; n];
        for p in &picks {
            matched[*p as usize % n] = true;
        }
        let tree = PartialMerkleTree::build(&ids, &matched).unwrap();
        let found = tree.extract_matches().unwrap();
        prop_assert_eq!(Some(found.root), bitcoin::merkle_root(Engine::auto(), &ids));
        let want: Vec<(u32, Digest)> = (0..n).filter(|i| matched[*i]).map(|i| (i as u32, ids[i])).collect();
        prop_assert_eq!(found.matches, want);
    }

    #[test]
    fn arbitrary_txoutproof_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(p) = TxOutProof::parse(&bytes) {
            let _ = p.verify();
            prop_assert_eq!(p.to_bytes(), bytes);
        }
    }

    #[test]
    fn arbitrary_partial_trees_never_panic(
        total in any::<u32>(),
        hashes in proptest::collection::vec(any::<[u8; 32]>(), 0..20),
        flags in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let t = PartialMerkleTree { total_transactions: total % 64, hashes, flags };
        let _ = t.extract_matches();
    }
}
