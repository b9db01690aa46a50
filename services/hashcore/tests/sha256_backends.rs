//! Every SHA-256 backend this CPU supports against FIPS 180-4 vectors, Bitcoin Core's
//! SHA256D64 property and the `sha2` crate (one-shot, streaming, every batched entry point).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use hashcore::{Backend, BatchError, Digest, Engine, Sha256, UnsupportedBackend};
use sha2::Digest as _;

fn engines() -> Vec<&'static Engine> {
    let e = Engine::available();
    let names: Vec<&str> = e.iter().map(|e| e.backend().name()).collect();
    println!("backends covered: {names:?}");
    assert!(e.iter().any(|e| e.backend() == Backend::Portable));
    e
}

fn reference(data: &[u8]) -> Digest {
    sha2::Sha256::digest(data).into()
}

fn hash_on(engine: &'static Engine, data: &[u8]) -> Digest {
    Sha256::with_engine(engine).chain(data).finalize()
}

/// Deterministic pseudo-random bytes.
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
fn fips_180_4_vectors() {
    let vectors: [(&[u8], &str); 4] = [
        (
            b"",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            b"abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        ),
        (
            b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
        ),
    ];
    let million = vec![b'a'; 1_000_000];
    let million_want = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    for e in engines() {
        for (msg, want) in vectors {
            assert_eq!(hex::encode(hash_on(e, msg)), want, "{}", e.backend());
            let mut fixed = [[0u8; 32]; 1];
            e.hash_fixed(
                msg,
                msg.len().max(1),
                &mut fixed[..usize::from(!msg.is_empty())],
            )
            .unwrap();
            if !msg.is_empty() {
                assert_eq!(hex::encode(fixed[0]), want, "{} hash_fixed", e.backend());
            }
        }
        assert_eq!(
            hex::encode(hash_on(e, &million)),
            million_want,
            "{}",
            e.backend()
        );
    }
}

#[test]
fn sha256d64_bitcoin_core_property() {
    // Bitcoin Core's SHA256D64 self-test hashes 64-byte chunks of a long text and compares with
    // double SHA-256 of each chunk.
    let text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Sed do eiusmod tempor \
                incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis \
                nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. \
                Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu \
                fugiat nulla pariatur. Excepteur sint occaecat cupidatat non proident, sunt in \
                culpa qui officia deserunt mollit anim id est laborum.";
    let mut data = Vec::new();
    while data.len() < 64 * 100 {
        data.extend_from_slice(text.as_bytes());
    }
    let (chunks, _) = data.as_chunks::<64>();
    let chunks = &chunks[..100];
    for e in engines() {
        for n in [1usize, 2, 3, 7, 8, 9, 15, 16, 17, 32, 33, 100] {
            let mut out = vec![[0u8; 32]; n];
            e.hash64d(&chunks[..n], &mut out).unwrap();
            for (c, o) in chunks.iter().zip(&out) {
                assert_eq!(*o, reference(&reference(c)), "{} n={n}", e.backend());
            }
        }
    }
}

#[test]
fn every_length_one_shot_and_streaming() {
    let data = bytes(1000, 1);
    let engines = engines();
    for len in 0..=1000 {
        let msg = &data[..len];
        let want = reference(msg);
        for &e in &engines {
            assert_eq!(hash_on(e, msg), want, "{} len={len}", e.backend());
            // Streaming with a few split points (every one for short messages).
            let splits: Vec<usize> = if len <= 130 {
                (0..=len).collect()
            } else {
                vec![1, 63, 64, 65, len / 2, len - 1]
            };
            for s in splits {
                let got = Sha256::with_engine(e)
                    .chain(&msg[..s])
                    .chain(&msg[s..])
                    .finalize();
                assert_eq!(got, want, "{} len={len} split={s}", e.backend());
            }
        }
    }
    assert_eq!(hashcore::sha256(b"abc"), reference(b"abc"));
    assert_eq!(hashcore::sha256d(b"abc"), reference(&reference(b"abc")));
}

#[test]
fn tagged_hash_matches_definition() {
    for e in engines() {
        let t = hashcore::TaggedHash::with_engine("BIP0340/challenge", e);
        let tag = reference(b"BIP0340/challenge");
        for len in [0usize, 1, 32, 64, 100] {
            let msg = bytes(len, 9);
            let mut full = Vec::new();
            full.extend_from_slice(&tag);
            full.extend_from_slice(&tag);
            full.extend_from_slice(&msg);
            assert_eq!(t.hash(&msg), reference(&full), "{}", e.backend());
        }
    }
}

#[test]
fn batches_of_every_size() {
    let engines = engines();
    let data = bytes(64 * 100, 2);
    let (msgs, _) = data.as_chunks::<64>();
    let single: Vec<Digest> = msgs.iter().map(|m| reference(m)).collect();
    let double: Vec<Digest> = single.iter().map(|d| reference(d)).collect();
    let fixed_lens = [1usize, 33, 55, 56, 64, 65, 81, 200];
    let fixed_data = bytes(200 * 100, 3);
    for &e in &engines {
        for n in 1..=100 {
            let mut out = vec![[0u8; 32]; n];
            e.hash64(&msgs[..n], &mut out).unwrap();
            assert_eq!(out, single[..n], "{} hash64 n={n}", e.backend());
            e.hash64d(&msgs[..n], &mut out).unwrap();
            assert_eq!(out, double[..n], "{} hash64d n={n}", e.backend());

            let mut nodes: Vec<Digest> = msgs[..n]
                .iter()
                .flat_map(|m| {
                    let (l, r) = m.split_at(32);
                    [l.try_into().unwrap(), r.try_into().unwrap()]
                })
                .collect();
            assert_eq!(e.merkle_level_in_place(&mut nodes).unwrap(), n);
            assert_eq!(nodes[..n], single[..n], "{} merkle n={n}", e.backend());

            for len in fixed_lens {
                let buf = &fixed_data[..n * len];
                e.hash_fixed(buf, len, &mut out).unwrap();
                for (i, o) in out.iter().enumerate() {
                    assert_eq!(
                        *o,
                        reference(&buf[i * len..(i + 1) * len]),
                        "{} hash_fixed len={len} n={n} i={i}",
                        e.backend()
                    );
                }
            }
        }
        // Length 0: an empty buffer holds zero messages.
        let mut none: [Digest; 0] = [];
        e.hash_fixed(&[], 0, &mut none).unwrap();
        e.hash64(&[], &mut none).unwrap();
        e.hash64d(&[], &mut none).unwrap();
        assert_eq!(e.merkle_level_in_place(&mut []).unwrap(), 0);
    }
}

#[test]
fn hash_fixed_every_length() {
    // Every message length 1..=1000 in a batch of 33 (two full 16-lane groups and a tail of
    // one; four 8-lane groups and a tail; eight 4-way groups and a tail), and in a batch of 5
    // (a tail group only), against `sha2`.
    let data = bytes(1000 * 33, 5);
    for e in engines() {
        for len in 1..=1000 {
            for count in [5usize, 33] {
                let buf = &data[..len * count];
                let mut out = vec![[0u8; 32]; count];
                e.hash_fixed(buf, len, &mut out).unwrap();
                for (i, o) in out.iter().enumerate() {
                    assert_eq!(
                        *o,
                        reference(&buf[i * len..(i + 1) * len]),
                        "{} hash_fixed len={len} count={count} i={i}",
                        e.backend()
                    );
                }
            }
        }
    }
}

/// `SHA-256(0x01 || pair)` by `sha2`.
fn node_reference(pair: &[u8]) -> Digest {
    let mut msg = vec![0x01];
    msg.extend_from_slice(pair);
    reference(&msg)
}

#[test]
fn rfc9162_node_batches_of_every_size() {
    let data = bytes(64 * 100, 4);
    let (pairs, _) = data.as_chunks::<64>();
    let want: Vec<Digest> = pairs.iter().map(|p| node_reference(p)).collect();
    for e in engines() {
        for n in 0..=100 {
            let mut out = vec![[0u8; 32]; n];
            e.hash_nodes(&pairs[..n], &mut out).unwrap();
            assert_eq!(out, want[..n], "{} hash_nodes n={n}", e.backend());
            // In place: the level holds the 2n children; the first n become the parents.
            let mut nodes: Vec<Digest> = pairs[..n]
                .iter()
                .flat_map(|m| {
                    let (l, r) = m.split_at(32);
                    [l.try_into().unwrap(), r.try_into().unwrap()]
                })
                .collect();
            assert_eq!(e.node_level_in_place(&mut nodes).unwrap(), n);
            assert_eq!(nodes[..n], want[..n], "{} node level n={n}", e.backend());
        }
        // Edge bytes: all zero and all 0xff pairs (the spliced first and last bytes).
        for fill in [0u8, 0xff] {
            let pair = [[fill; 64]; 17];
            let mut out = [[0u8; 32]; 17];
            e.hash_nodes(&pair, &mut out).unwrap();
            assert!(out.iter().all(|o| *o == node_reference(&[fill; 64])));
        }
        let mut out = [[0u8; 32]; 2];
        assert_eq!(
            e.hash_nodes(&pairs[..3], &mut out),
            Err(BatchError::OutputLength {
                inputs: 3,
                outputs: 2
            })
        );
        let mut odd = [[0u8; 32]; 3];
        assert_eq!(
            e.node_level_in_place(&mut odd),
            Err(BatchError::OddLevel(3))
        );
    }
}

#[test]
fn forced_unsupported_backend_is_an_error() {
    assert!(Engine::forced(Backend::Portable).is_ok());
    for b in Backend::ALL {
        match Engine::forced(b) {
            Ok(e) => {
                assert!(b.is_supported());
                assert_eq!(e.backend(), b);
            }
            Err(err) => {
                assert!(!b.is_supported(), "{b} is supported but failed: {err}");
                assert_eq!(err, UnsupportedBackend::MissingCpuFeatures(b));
            }
        }
    }
    let auto = Engine::auto();
    assert!(Engine::available()
        .iter()
        .any(|e| e.backend() == auto.backend()));
    println!("auto backend: {}", auto.backend());
}

#[test]
fn batch_errors() {
    for e in engines() {
        let msgs = [[0u8; 64]; 3];
        let mut out = [[0u8; 32]; 2];
        let want = BatchError::OutputLength {
            inputs: 3,
            outputs: 2,
        };
        assert_eq!(e.hash64(&msgs, &mut out), Err(want.clone()));
        assert_eq!(e.hash64d(&msgs, &mut out), Err(want));
        assert_eq!(
            e.hash_fixed(&[0u8; 100], 33, &mut out),
            Err(BatchError::RaggedMessages {
                buffer: 100,
                message_len: 33
            })
        );
        assert_eq!(
            e.hash_fixed(&[0u8; 99], 33, &mut out),
            Err(BatchError::OutputLength {
                inputs: 3,
                outputs: 2
            })
        );
        assert_eq!(
            e.hash_fixed(&[0u8; 5], 0, &mut out),
            Err(BatchError::RaggedMessages {
                buffer: 5,
                message_len: 0
            })
        );
        let mut odd = [[0u8; 32]; 5];
        assert_eq!(
            e.merkle_level_in_place(&mut odd),
            Err(BatchError::OddLevel(5))
        );
    }
}
