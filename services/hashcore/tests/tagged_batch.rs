//! `TaggedHash::hash_fixed` (batched tagged hashes from the tag's midstate) on every backend
//! this CPU supports, against the portable backend, the streaming `TaggedHash::hash` and the
//! `sha2` crate's `SHA-256(SHA-256(tag) || SHA-256(tag) || msg)`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use hashcore::{Backend, BatchError, Digest, Engine, TaggedHash};
use proptest::prelude::*;
use sha2::Digest as _;

const TAG: &str = "strategic-reserve/liabilities/account/v1";

fn reference(tag: &str, msg: &[u8]) -> Digest {
    let t: Digest = sha2::Sha256::digest(tag.as_bytes()).into();
    let mut h = sha2::Sha256::new();
    h.update(t);
    h.update(t);
    h.update(msg);
    h.finalize().into()
}

fn portable() -> &'static Engine {
    Engine::forced(Backend::Portable).unwrap()
}

/// Checks one batch on every engine against the portable engine and `sha2`.
fn check(tag: &str, buf: &[u8], len: usize) {
    let count = buf.len().checked_div(len).unwrap_or(0);
    let th = TaggedHash::new(tag);
    let mut want = vec![[0u8; 32]; count];
    th.hash_fixed(portable(), buf, len, &mut want).unwrap();
    for (i, w) in want.iter().enumerate() {
        let m = &buf[i * len..(i + 1) * len];
        assert_eq!(*w, reference(tag, m), "portable len={len} i={i}");
        assert_eq!(*w, th.hash(m), "streaming len={len} i={i}");
    }
    for e in Engine::available() {
        let mut got = vec![[0u8; 32]; count];
        th.hash_fixed(e, buf, len, &mut got).unwrap();
        assert_eq!(got, want, "{} len={len} count={count}", e.backend());
    }
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn every_length_and_tail() {
    // Lengths 1..=300 (one to six blocks after the prefix, every padding position), batches
    // of 1, 5, 16, 17 and 33 (tail groups only, whole groups, whole groups and a tail).
    let data = bytes(300 * 33, 11);
    for len in 1..=300 {
        for count in [1usize, 5, 16, 17, 33] {
            check(TAG, &data[..len * count], len);
        }
    }
}

#[test]
fn empty_and_errors() {
    let th = TaggedHash::new(TAG);
    let e = Engine::auto();
    th.hash_fixed(e, &[], 47, &mut []).unwrap();
    th.hash_fixed(e, &[], 0, &mut []).unwrap();
    assert_eq!(
        th.hash_fixed(e, &[0u8; 48], 47, &mut [[0u8; 32]; 1]),
        Err(BatchError::RaggedMessages {
            buffer: 48,
            message_len: 47
        })
    );
    assert_eq!(
        th.hash_fixed(e, &[0u8; 94], 47, &mut [[0u8; 32]; 1]),
        Err(BatchError::OutputLength {
            inputs: 2,
            outputs: 1
        })
    );
    assert!(th.hash_fixed(e, &[0u8; 4], 0, &mut []).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_batches_match_sha2(
        tag in "[a-z/]{0,80}",
        len in 1usize..=200,
        count in 1usize..=40,
        seed in any::<u64>(),
    ) {
        let buf = bytes(len * count, seed);
        check(&tag, &buf, len);
    }
}
