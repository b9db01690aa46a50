//! Backend choice and the batched API.
//!
//! An [`Engine`] is a chosen [`Backend`]. [`Engine::auto`] picks the fastest backend the CPU
//! supports, once, after a self-test against fixed vectors; [`Engine::forced`] gives any backend
//! the CPU supports (for tests and benchmarks).

use std::sync::OnceLock;

use crate::portable::{self, state_to_digest, IV};
#[cfg(target_arch = "x86_64")]
use crate::x86;
use crate::Digest;

/// A SHA-256 implementation strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// AVX-512 (F, BW, VL): 16 independent messages, one per 32-bit lane.
    Avx512,
    /// SHA-NI with two interleaved message streams.
    ShaNi,
    /// AVX2: 8 independent messages, one per 32-bit lane.
    Avx2,
    /// Plain Rust, on every CPU.
    Portable,
}

impl Backend {
    /// Every backend, fastest first (the order [`Engine::auto`] tries them in).
    pub const ALL: [Backend; 4] = [
        Backend::Avx512,
        Backend::ShaNi,
        Backend::Avx2,
        Backend::Portable,
    ];

    /// A short lowercase name (`avx512`, `sha-ni`, `avx2`, `portable`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Avx512 => "avx512",
            Backend::ShaNi => "sha-ni",
            Backend::Avx2 => "avx2",
            Backend::Portable => "portable",
        }
    }

    /// Whether this CPU has the instructions the backend needs.
    pub fn is_supported(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => {
                std::is_x86_feature_detected!("sha")
                    && std::is_x86_feature_detected!("sse4.1")
                    && std::is_x86_feature_detected!("ssse3")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

impl core::fmt::Display for Backend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend that cannot be used on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedBackend {
    /// The CPU lacks the instructions.
    #[error("backend {0} is not supported by this cpu")]
    MissingCpuFeatures(Backend),
    /// The backend gave a wrong digest on a fixed vector and was disabled.
    #[error("backend {0} failed its self-test and is disabled")]
    SelfTestFailed(Backend),
}

/// Errors of the batched API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The output slice does not have one digest per input message.
    #[error("output has room for {outputs} digests but there are {inputs} messages")]
    OutputLength {
        /// Number of input messages.
        inputs: usize,
        /// Number of output slots.
        outputs: usize,
    },
    /// The message buffer is not a whole number of messages of the given length.
    #[error("buffer of {buffer} bytes is not a whole number of {message_len}-byte messages")]
    RaggedMessages {
        /// The buffer length.
        buffer: usize,
        /// The message length.
        message_len: usize,
    },
    /// A Merkle level needs an even number of nodes.
    #[error("a merkle level needs an even number of nodes, got {0}")]
    OddLevel(usize),
}

/// A SHA-256 engine bound to one backend.
#[derive(Debug)]
pub struct Engine {
    backend: Backend,
    /// Whether single-stream compression runs on SHA-NI (verified present at construction);
    /// multi-lane kernels do not help one stream, so every SIMD engine uses SHA-NI for it.
    shani_compress: bool,
}

static AUTO: OnceLock<&'static Engine> = OnceLock::new();
static FORCED: [OnceLock<Result<Engine, UnsupportedBackend>>; 4] = [
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
];
static PORTABLE: Engine = Engine {
    backend: Backend::Portable,
    shani_compress: false,
};

fn index(b: Backend) -> usize {
    match b {
        Backend::Avx512 => 0,
        Backend::ShaNi => 1,
        Backend::Avx2 => 2,
        Backend::Portable => 3,
    }
}

impl Engine {
    /// The engine on the fastest backend this CPU supports that passed its self-test.
    pub fn auto() -> &'static Engine {
        AUTO.get_or_init(|| {
            Backend::ALL
                .into_iter()
                .find_map(|b| Engine::forced(b).ok())
                .unwrap_or(&PORTABLE)
        })
    }

    /// The engine on `backend`, if this CPU supports it and it passes its self-test.
    ///
    /// # Errors
    /// [`UnsupportedBackend`] when the CPU lacks the instructions or the self-test failed.
    pub fn forced(backend: Backend) -> Result<&'static Engine, UnsupportedBackend> {
        FORCED[index(backend)]
            .get_or_init(|| {
                if !backend.is_supported() {
                    return Err(UnsupportedBackend::MissingCpuFeatures(backend));
                }
                let shani_compress = backend != Backend::Portable && Backend::ShaNi.is_supported();
                let engine = Engine {
                    backend,
                    shani_compress,
                };
                if engine.self_test() {
                    Ok(engine)
                } else {
                    Err(UnsupportedBackend::SelfTestFailed(backend))
                }
            })
            .as_ref()
            .map_err(|e| *e)
    }

    /// The engines of every backend this CPU supports (portable always included).
    pub fn available() -> Vec<&'static Engine> {
        Backend::ALL
            .into_iter()
            .filter_map(|b| Engine::forced(b).ok())
            .collect()
    }

    /// This engine's backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The backend of single-stream compression ([`crate::Sha256`], [`crate::TaggedHash`]):
    /// SHA-NI whenever the CPU has it and the engine is not the portable one (multi-lane
    /// kernels do not help one stream), else portable.
    pub fn single_stream_backend(&self) -> Backend {
        if self.shani_compress {
            Backend::ShaNi
        } else {
            Backend::Portable
        }
    }

    /// Checks the backend against fixed vectors (single stream and batched).
    fn self_test(&self) -> bool {
        // FIPS 180-4 "abc" and the SHA256D64 vector of 64 zero bytes, through every entry point.
        let mut state = IV;
        let mut block = [0u8; 64];
        block[..3].copy_from_slice(b"abc");
        block[3] = 0x80;
        block[63] = 24;
        self.compress(&mut state, core::slice::from_ref(&block));
        let abc = state_to_digest(&state);
        let want_abc = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad,
        ];
        if abc != want_abc {
            return false;
        }
        // Batched: compare against the portable code on 37 distinct messages (odd count, so
        // every backend exercises both full lane groups and a tail).
        let msgs: Vec<[u8; 64]> = (0..37u8)
            .map(|i| core::array::from_fn(|j| i.wrapping_mul(31).wrapping_add(j as u8)))
            .collect();
        let mut got = vec![[0u8; 32]; msgs.len()];
        let mut want = vec![[0u8; 32]; msgs.len()];
        if self.hash64(&msgs, &mut got).is_err() || PORTABLE.hash64(&msgs, &mut want).is_err() {
            return false;
        }
        if got != want {
            return false;
        }
        if self.hash64d(&msgs, &mut got).is_err() || PORTABLE.hash64d(&msgs, &mut want).is_err() {
            return false;
        }
        if got != want {
            return false;
        }
        // Merkle level in place (37 pairs).
        let mut level: Vec<Digest> = msgs
            .iter()
            .flat_map(|m| {
                [
                    m[..32].try_into().unwrap_or([0; 32]),
                    m[32..].try_into().unwrap_or([0; 32]),
                ]
            })
            .collect();
        if self.merkle_level_in_place(&mut level).is_err() {
            return false;
        }
        if PORTABLE.hash64(&msgs, &mut want).is_err() || level[..msgs.len()] != want[..] {
            return false;
        }
        // RFC 9162 node hashes (37 pairs, straight and in place) against the portable
        // `hash_fixed` of the 65-byte messages.
        let node_msgs: Vec<u8> = msgs
            .iter()
            .flat_map(|m| core::iter::once(portable::NODE_PREFIX).chain(m.iter().copied()))
            .collect();
        if PORTABLE.hash_fixed(&node_msgs, 65, &mut want).is_err()
            || self.hash_nodes(&msgs, &mut got).is_err()
            || got != want
        {
            return false;
        }
        let mut level: Vec<Digest> = msgs
            .iter()
            .flat_map(|m| {
                [
                    m[..32].try_into().unwrap_or([0; 32]),
                    m[32..].try_into().unwrap_or([0; 32]),
                ]
            })
            .collect();
        if self.node_level_in_place(&mut level).is_err() || level[..msgs.len()] != want[..] {
            return false;
        }
        // Multi-block single stream: 3 blocks from a non-initial state.
        let flat: Vec<u8> = msgs.iter().flatten().copied().collect();
        let (blocks, _) = flat.as_chunks::<64>();
        let (mut s1, mut s2) = (IV, IV);
        self.compress(&mut s1, &blocks[..3]);
        portable::compress(&mut s2, &blocks[..3]);
        self.compress(&mut s1, &blocks[3..4]);
        portable::compress(&mut s2, &blocks[3..4]);
        if s1 != s2 {
            return false;
        }
        // Fixed-length batches: one, two and three blocks per message, with tails.
        for len in [33usize, 65, 81, 119] {
            let count = flat.len() / len;
            let data = &flat[..count * len];
            let mut got = vec![[0u8; 32]; count];
            let mut want = vec![[0u8; 32]; count];
            if self.hash_fixed(data, len, &mut got).is_err()
                || PORTABLE.hash_fixed(data, len, &mut want).is_err()
                || got != want
            {
                return false;
            }
        }
        // The same from a midstate (one and two blocks after a 64-byte prefix, with tails).
        let mid = [
            0x6a09_e667,
            0xbb67_ae85,
            0x3c6e_f372,
            0xa54f_f53a,
            0x510e_527f,
            0x9b05_688c,
            0x1f83_d9ab,
            0x5be0_cd19,
        ]
        .map(|x: u32| x.rotate_left(7));
        for len in [47usize, 96] {
            let count = flat.len() / len;
            let data = &flat[..count * len];
            let mut got = vec![[0u8; 32]; count];
            let mut want = vec![[0u8; 32]; count];
            if self.hash_fixed_from(&mid, 64, data, len, &mut got).is_err()
                || PORTABLE
                    .hash_fixed_from(&mid, 64, data, len, &mut want)
                    .is_err()
                || got != want
            {
                return false;
            }
        }
        true
    }

    /// Compresses whole blocks into `state` (single stream).
    pub(crate) fn compress(&self, state: &mut [u32; 8], blocks: &[[u8; 64]]) {
        #[cfg(target_arch = "x86_64")]
        if self.shani_compress {
            // SAFETY: `shani_compress` is only set by `Engine::forced` after
            // `Backend::ShaNi.is_supported()` confirmed the CPU has SHA, SSSE3 and SSE4.1.
            unsafe { x86::shani::compress(state, blocks) };
            return;
        }
        portable::compress(state, blocks)
    }

    /// SHA-256 of one message on the single-stream path (SHA-NI when the CPU has it): for
    /// lone messages, where a lane kernel would hash a whole group of lanes.
    pub(crate) fn digest_one(&self, msg: &[u8]) -> Digest {
        let nblocks = portable::block_count(msg.len());
        // Every block wholly inside the message is compressed in place; a padded message
        // always has at least one more block after them.
        let whole = msg.len() / 64;
        let (blocks, _) = msg[..whole * 64].as_chunks::<64>();
        let mut state = IV;
        self.compress(&mut state, blocks);
        let mut blk = [0u8; 64];
        for b in whole..nblocks {
            portable::fill_block(msg, b, nblocks, &mut blk);
            self.compress(&mut state, core::slice::from_ref(&blk));
        }
        state_to_digest(&state)
    }

    /// SHA-256 of each 64-byte message: `out[i] = SHA-256(inputs[i])`.
    ///
    /// # Errors
    /// [`BatchError::OutputLength`] when `out.len() != inputs.len()`.
    pub fn hash64(&self, inputs: &[[u8; 64]], out: &mut [Digest]) -> Result<(), BatchError> {
        check_len(inputs.len(), out.len())?;
        match self.backend {
            // Soundness of the arms below: an `Engine` with this backend is only built by
            // `Engine::forced` after `is_supported()` confirmed the CPU features the kernel is
            // compiled for; lengths were checked above.
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => unsafe { x86::shani::hash64(inputs, out) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => unsafe { x86::avx2::hash64(inputs, out) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => unsafe {
                self.wide_then_narrow(inputs, out, x86::avx512::hash64, x86::shani::hash64)
            },
            _ => {
                for (msg, o) in inputs.iter().zip(out.iter_mut()) {
                    *o = hash64_portable(msg);
                }
            }
        }
        Ok(())
    }

    /// Measurement hook, not API: [`Engine::hash64`] on SHA-NI with `ways` (1, 2, 3, 4, 6 or 8) interleaved
    /// streams. Returns `false` (and does nothing) when this engine is not SHA-NI.
    #[doc(hidden)]
    pub fn bench_shani_hash64_ways(
        &self,
        ways: usize,
        inputs: &[[u8; 64]],
        out: &mut [Digest],
    ) -> bool {
        if self.backend != Backend::ShaNi || inputs.len() != out.len() {
            return false;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = ways;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: this engine is SHA-NI, which `Engine::forced` only builds after checking the
        // CPU features; lengths are equal.
        unsafe {
            match ways {
                1 => x86::shani::hash64_ways::<1>(inputs, out),
                2 => x86::shani::hash64_ways::<2>(inputs, out),
                3 => x86::shani::hash64_ways::<3>(inputs, out),
                4 => x86::shani::hash64_ways::<4>(inputs, out),
                6 => x86::shani::hash64_ways::<6>(inputs, out),
                8 => x86::shani::hash64_ways::<8>(inputs, out),
                _ => return false,
            }
        }
        true
    }

    /// Double SHA-256 of each 64-byte message (Bitcoin's SHA256D64, as used in transaction
    /// Merkle trees): `out[i] = SHA-256(SHA-256(inputs[i]))`.
    ///
    /// # Errors
    /// [`BatchError::OutputLength`] when `out.len() != inputs.len()`.
    pub fn hash64d(&self, inputs: &[[u8; 64]], out: &mut [Digest]) -> Result<(), BatchError> {
        check_len(inputs.len(), out.len())?;
        match self.backend {
            // Soundness of the arms below: an `Engine` with this backend is only built by
            // `Engine::forced` after `is_supported()` confirmed the CPU features the kernel is
            // compiled for; lengths were checked above.
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => unsafe { x86::shani::hash64d(inputs, out) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => unsafe { x86::avx2::hash64d(inputs, out) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => unsafe {
                self.wide_then_narrow(inputs, out, x86::avx512::hash64d, x86::shani::hash64d)
            },
            _ => {
                for (msg, o) in inputs.iter().zip(out.iter_mut()) {
                    let first = hash64_portable(msg);
                    *o = hash32_portable(&first);
                }
            }
        }
        Ok(())
    }

    /// One Merkle level in place: the first `nodes.len() / 2` entries become
    /// `SHA-256(nodes[2i] || nodes[2i+1])`; returns that count. The rest is left unspecified.
    ///
    /// # Errors
    /// [`BatchError::OddLevel`] when `nodes.len()` is odd.
    pub fn merkle_level_in_place(&self, nodes: &mut [Digest]) -> Result<usize, BatchError> {
        if !nodes.len().is_multiple_of(2) {
            return Err(BatchError::OddLevel(nodes.len()));
        }
        let half = nodes.len() / 2;
        match self.backend {
            // Soundness of the arms below: an `Engine` with this backend is only built by
            // `Engine::forced` after `is_supported()` confirmed the CPU features the kernel is
            // compiled for; the length is even (checked above).
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => unsafe { x86::shani::merkle_level(nodes) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => unsafe { x86::avx2::merkle_level(nodes) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => unsafe {
                self.level_wide_then_narrow(
                    nodes,
                    x86::avx512::merkle_level,
                    x86::shani::merkle_level,
                )
            },
            _ => {
                for i in 0..half {
                    let mut msg = [0u8; 64];
                    msg[..32].copy_from_slice(&nodes[2 * i]);
                    msg[32..].copy_from_slice(&nodes[2 * i + 1]);
                    nodes[i] = hash64_portable(&msg);
                }
            }
        }
        Ok(half)
    }

    /// RFC 9162 interior node hashes: `out[i] = SHA-256(0x01 || pairs[i])`, each 64-byte pair
    /// being `left || right`. The kernels read the pairs in place (no 65-byte copies).
    ///
    /// # Errors
    /// [`BatchError::OutputLength`] when `out.len() != pairs.len()`.
    pub fn hash_nodes(&self, pairs: &[[u8; 64]], out: &mut [Digest]) -> Result<(), BatchError> {
        check_len(pairs.len(), out.len())?;
        match self.backend {
            // Soundness of the arms below: an `Engine` with this backend is only built by
            // `Engine::forced` after `is_supported()` confirmed the CPU features the kernel is
            // compiled for; lengths were checked above.
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => unsafe { x86::shani::hash_nodes(pairs, out) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => unsafe { x86::avx2::hash_nodes(pairs, out) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => unsafe {
                self.wide_then_narrow(pairs, out, x86::avx512::hash_nodes, x86::shani::hash_nodes)
            },
            _ => {
                for (pair, o) in pairs.iter().zip(out.iter_mut()) {
                    *o = node_portable(pair);
                }
            }
        }
        Ok(())
    }

    /// One RFC 9162 level in place: the first `nodes.len() / 2` entries become
    /// `SHA-256(0x01 || nodes[2i] || nodes[2i+1])`; returns that count. The rest is left
    /// unspecified.
    ///
    /// # Errors
    /// [`BatchError::OddLevel`] when `nodes.len()` is odd.
    pub fn node_level_in_place(&self, nodes: &mut [Digest]) -> Result<usize, BatchError> {
        if !nodes.len().is_multiple_of(2) {
            return Err(BatchError::OddLevel(nodes.len()));
        }
        let half = nodes.len() / 2;
        match self.backend {
            // Soundness of the arms below: an `Engine` with this backend is only built by
            // `Engine::forced` after `is_supported()` confirmed the CPU features the kernel is
            // compiled for; the length is even (checked above).
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => unsafe { x86::shani::node_level(nodes) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => unsafe { x86::avx2::node_level(nodes) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => unsafe {
                self.level_wide_then_narrow(nodes, x86::avx512::node_level, x86::shani::node_level)
            },
            _ => {
                for i in 0..half {
                    let mut pair = [0u8; 64];
                    pair[..32].copy_from_slice(&nodes[2 * i]);
                    pair[32..].copy_from_slice(&nodes[2 * i + 1]);
                    nodes[i] = node_portable(&pair);
                }
            }
        }
        Ok(half)
    }

    /// SHA-256 of many messages of the same length `message_len`, laid end to end in
    /// `messages`: `out[i] = SHA-256(messages[i*len .. (i+1)*len])`. Used for RFC 9162 node
    /// hashes (65 bytes) and sum-tree nodes, whose lengths are fixed.
    ///
    /// # Errors
    /// [`BatchError::RaggedMessages`] when `messages.len()` is not a multiple of `message_len`
    /// (or `message_len` is 0 with a non-empty buffer); [`BatchError::OutputLength`] when `out`
    /// does not have one slot per message.
    pub fn hash_fixed(
        &self,
        messages: &[u8],
        message_len: usize,
        out: &mut [Digest],
    ) -> Result<(), BatchError> {
        if fixed_count(messages, message_len, out.len())? == 0 {
            return Ok(());
        }
        match self.backend {
            // Soundness of the arms below: an `Engine` with this backend is only built by
            // `Engine::forced` after `is_supported()` confirmed the CPU features the kernel is
            // compiled for; `messages.len() == message_len * out.len()` was checked above.
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi if message_len <= SHORT_MAX => unsafe {
                x86::shani::hash_short(&IV, 0, messages, message_len, out)
            },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => unsafe { x86::shani::hash_fixed(messages, message_len, out) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 if message_len <= SHORT_MAX => unsafe {
                x86::avx2::hash_short(&IV, 0, messages, message_len, out)
            },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => unsafe { x86::avx2::hash_fixed(messages, message_len, out) },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => unsafe { self.fixed_wide_then_narrow(messages, message_len, out) },
            _ => {
                for (i, o) in out.iter_mut().enumerate() {
                    let mut h = crate::Sha256::with_engine(&PORTABLE);
                    h.update(&messages[i * message_len..(i + 1) * message_len]);
                    *o = h.finalize();
                }
            }
        }
        Ok(())
    }
}

/// The number of `message_len`-byte messages laid end to end in `messages`, checked against
/// the `out_len` output slots.
///
/// # Errors
/// [`BatchError::RaggedMessages`], [`BatchError::OutputLength`] (see [`Engine::hash_fixed`]).
fn fixed_count(messages: &[u8], message_len: usize, out_len: usize) -> Result<usize, BatchError> {
    let count = match messages.len().checked_div(message_len) {
        Some(n) if messages.len().is_multiple_of(message_len) => n,
        None if messages.is_empty() => 0,
        _ => {
            return Err(BatchError::RaggedMessages {
                buffer: messages.len(),
                message_len,
            })
        }
    };
    check_len(count, out_len)?;
    Ok(count)
}

impl Engine {
    /// As [`Engine::hash_fixed`], every message continuing from the midstate `init` after
    /// `prefix` bytes (a multiple of 64) were compressed: `out[i]` is the digest of
    /// `prefix_bytes || messages[i*len .. (i+1)*len]` (the tagged hashes of
    /// [`crate::TaggedHash::hash_fixed`]).
    ///
    /// # Errors
    /// As [`Engine::hash_fixed`].
    pub(crate) fn hash_fixed_from(
        &self,
        init: &[u32; 8],
        prefix: u64,
        messages: &[u8],
        message_len: usize,
        out: &mut [Digest],
    ) -> Result<(), BatchError> {
        if fixed_count(messages, message_len, out.len())? == 0 {
            return Ok(());
        }
        match self.backend {
            // Soundness of the arms below: an `Engine` with this backend is only built by
            // `Engine::forced` after `is_supported()` confirmed the CPU features the kernel is
            // compiled for; `messages.len() == message_len * out.len()` was checked above.
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi if message_len <= SHORT_MAX => unsafe {
                x86::shani::hash_short(init, prefix, messages, message_len, out)
            },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => unsafe {
                x86::shani::hash_fixed_from(init, prefix, messages, message_len, out)
            },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 if message_len <= SHORT_MAX => unsafe {
                x86::avx2::hash_short(init, prefix, messages, message_len, out)
            },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => unsafe {
                x86::avx2::hash_fixed_from(init, prefix, messages, message_len, out)
            },
            // SAFETY: the engine was built by `Engine::forced` after `is_supported()`.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => unsafe {
                self.fixed_from_wide_then_narrow(init, prefix, messages, message_len, out)
            },
            _ => {
                for (m, o) in messages.chunks_exact(message_len).zip(out.iter_mut()) {
                    let mut h = crate::Sha256::from_midstate(*init, prefix, &PORTABLE);
                    h.update(m);
                    *o = h.finalize();
                }
            }
        }
        Ok(())
    }
}

/// Batch kernels of one backend: `out[i]` from `inputs[i]`, `out.len() == inputs.len()`.
#[cfg(target_arch = "x86_64")]
type BatchKernel<T> = unsafe fn(&[T], &mut [Digest]);
/// In-place level kernels: the first half of `nodes` (even length) becomes the parents.
#[cfg(target_arch = "x86_64")]
type LevelKernel = unsafe fn(&mut [Digest]);

/// Longest message the SIMD backends hash with `hash_short` (one block: data, the 0x80 byte
/// and the 8-byte length fit in 64 bytes). Messages of length 0 never reach a kernel.
#[cfg(target_arch = "x86_64")]
const SHORT_MAX: usize = 55;

/// At most this many messages after the last whole 16-lane group go to SHA-NI 4-way (each
/// costs about 1/9 of a 16-lane group there: measured ~60 M compressions/s against ~110 M/s
/// for a whole AVX-512 group of 32 compressions) instead of a padded AVX-512 group.
#[cfg(target_arch = "x86_64")]
const AVX512_NARROW_TAIL: usize = 8;

#[cfg(target_arch = "x86_64")]
impl Engine {
    /// How many of `n` messages the AVX-512 kernel takes (the rest go to SHA-NI): all of them
    /// unless the tail after whole groups is short and SHA-NI is there.
    fn wide_count(&self, n: usize) -> usize {
        let tail = n % x86::avx512::N;
        if self.shani_compress && tail <= AVX512_NARROW_TAIL {
            n - tail
        } else {
            n
        }
    }

    /// `wide` (AVX-512) on whole groups, `narrow` (SHA-NI) on a short tail.
    ///
    /// # Safety
    /// This engine is AVX-512 (so the CPU has it) and `out.len() == inputs.len()`.
    unsafe fn wide_then_narrow<T>(
        &self,
        inputs: &[T],
        out: &mut [Digest],
        wide: BatchKernel<T>,
        narrow: BatchKernel<T>,
    ) {
        let w = self.wide_count(inputs.len());
        let (wi, ni) = inputs.split_at(w);
        let (wo, no) = out.split_at_mut(w);
        // SAFETY: the caller's guarantee; equal lengths on both sides of the split.
        unsafe { wide(wi, wo) };
        if !ni.is_empty() {
            // SAFETY: `wide_count` leaves a tail only when `shani_compress`, which
            // `Engine::forced` sets only after confirming the CPU has SHA-NI's features.
            unsafe { narrow(ni, no) };
        }
    }

    /// As [`Engine::wide_then_narrow`] for an in-place level: the whole groups' parents land
    /// in `nodes[..w]`, then the tail's pairs (at `2w..`) are reduced and moved down.
    ///
    /// # Safety
    /// This engine is AVX-512 and `nodes.len()` is even.
    unsafe fn level_wide_then_narrow(
        &self,
        nodes: &mut [Digest],
        wide: LevelKernel,
        narrow: LevelKernel,
    ) {
        let half = nodes.len() / 2;
        let w = self.wide_count(half);
        // SAFETY: the caller's guarantee; an even slice.
        unsafe { wide(&mut nodes[..2 * w]) };
        if w < half {
            // SAFETY: as in `wide_then_narrow`; an even slice.
            unsafe { narrow(&mut nodes[2 * w..]) };
            nodes.copy_within(2 * w..w + half, w);
        }
    }

    /// As [`Engine::wide_then_narrow`] for fixed-length messages.
    ///
    /// # Safety
    /// This engine is AVX-512 and `messages.len() == len * out.len()`.
    unsafe fn fixed_wide_then_narrow(&self, messages: &[u8], len: usize, out: &mut [Digest]) {
        let w = self.wide_count(out.len());
        let (wm, nm) = messages.split_at(w * len);
        let (wo, no) = out.split_at_mut(w);
        if len <= SHORT_MAX {
            // SAFETY: the caller's guarantee; `wm.len() == len * wo.len()`.
            unsafe { x86::avx512::hash_short(&IV, 0, wm, len, wo) };
        } else {
            // SAFETY: the caller's guarantee; `wm.len() == len * wo.len()`.
            unsafe { x86::avx512::hash_fixed(wm, len, wo) };
        }
        if !no.is_empty() && len <= SHORT_MAX {
            // SAFETY: as in `wide_then_narrow`; `nm.len() == len * no.len()`.
            unsafe { x86::shani::hash_short(&IV, 0, nm, len, no) };
        } else if !no.is_empty() {
            // SAFETY: as in `wide_then_narrow`; `nm.len() == len * no.len()`.
            unsafe { x86::shani::hash_fixed(nm, len, no) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Engine {
    /// As [`Engine::fixed_wide_then_narrow`] from a midstate.
    ///
    /// # Safety
    /// This engine is AVX-512 and `messages.len() == len * out.len()`.
    unsafe fn fixed_from_wide_then_narrow(
        &self,
        init: &[u32; 8],
        prefix: u64,
        messages: &[u8],
        len: usize,
        out: &mut [Digest],
    ) {
        let w = self.wide_count(out.len());
        let (wm, nm) = messages.split_at(w * len);
        let (wo, no) = out.split_at_mut(w);
        if len <= SHORT_MAX {
            // SAFETY: the caller's guarantee; `wm.len() == len * wo.len()`.
            unsafe { x86::avx512::hash_short(init, prefix, wm, len, wo) };
        } else {
            // SAFETY: the caller's guarantee; `wm.len() == len * wo.len()`.
            unsafe { x86::avx512::hash_fixed_from(init, prefix, wm, len, wo) };
        }
        if !no.is_empty() && len <= SHORT_MAX {
            // SAFETY: as in `wide_then_narrow`; `nm.len() == len * no.len()`.
            unsafe { x86::shani::hash_short(init, prefix, nm, len, no) };
        } else if !no.is_empty() {
            // SAFETY: as in `wide_then_narrow`; `nm.len() == len * no.len()`.
            unsafe { x86::shani::hash_fixed_from(init, prefix, nm, len, no) };
        }
    }
}

fn check_len(inputs: usize, outputs: usize) -> Result<(), BatchError> {
    if inputs == outputs {
        Ok(())
    } else {
        Err(BatchError::OutputLength { inputs, outputs })
    }
}

/// The constant second block of a 64-byte message: 0x80, zeros, bit length 512.
pub(crate) const PAD64: [u8; 64] = {
    let mut b = [0u8; 64];
    b[0] = 0x80;
    b[62] = 0x02;
    b
};

/// The constant tail of a 32-byte message: 0x80, zeros, bit length 256.
fn hash32_portable(msg: &[u8; 32]) -> Digest {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(msg);
    block[32] = 0x80;
    block[62] = 0x01;
    let mut state = IV;
    portable::compress_one(&mut state, &block);
    state_to_digest(&state)
}

/// `SHA-256(0x01 || pair)`, the RFC 9162 node hash, on the portable code.
fn node_portable(pair: &[u8; 64]) -> Digest {
    let mut block = [0u8; 64];
    block[0] = portable::NODE_PREFIX;
    block[1..].copy_from_slice(&pair[..63]);
    let mut state = IV;
    portable::compress_one(&mut state, &block);
    let mut last = [0u8; 64];
    last[0] = pair[63];
    last[1] = 0x80;
    last[62..].copy_from_slice(&(65u16 * 8).to_be_bytes());
    portable::compress_one(&mut state, &last);
    state_to_digest(&state)
}

fn hash64_portable(msg: &[u8; 64]) -> Digest {
    let mut state = IV;
    portable::compress_one(&mut state, msg);
    portable::compress_one(&mut state, &PAD64);
    state_to_digest(&state)
}
