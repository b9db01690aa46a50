//! SHA-NI: `sha256rnds2` / `sha256msg1` / `sha256msg2`, with `W` independent messages
//! interleaved so their dependency chains overlap (one chain is bound by the latency of
//! `sha256rnds2`).

use core::arch::x86_64::*;

use super::batch_drivers;
use crate::portable::{
    block_count, fill_block, fill_block_after, D64_TAIL, IV, K, NODE_PREFIX, PAD64_WK,
};
use crate::Digest;

/// Number of interleaved messages in the batched kernels.
pub(crate) const WAYS: usize = 4;

/// A state as the SHA instructions want it: `[ABEF, CDGH]`.
type St = [__m128i; 2];

/// Per-word byte swap (big-endian words).
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn bswap(x: __m128i) -> __m128i {
    _mm_shuffle_epi8(
        x,
        _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203),
    )
}

/// `[u32; 8]` state to `[ABEF, CDGH]`.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn to_st(s: &[u32; 8]) -> St {
    [
        _mm_set_epi32(s[0] as i32, s[1] as i32, s[4] as i32, s[5] as i32),
        _mm_set_epi32(s[2] as i32, s[3] as i32, s[6] as i32, s[7] as i32),
    ]
}

/// `[ABEF, CDGH]` to the vectors of words `[A, B, C, D]` and `[E, F, G, H]` (lane 0 first).
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn to_words(st: St) -> [__m128i; 2] {
    [
        _mm_shuffle_epi32(_mm_unpackhi_epi64(st[0], st[1]), 0xB1),
        _mm_shuffle_epi32(_mm_unpacklo_epi64(st[0], st[1]), 0xB1),
    ]
}

/// The 16 message words of `block` as four vectors.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn load_block(block: &[u8; 64]) -> [__m128i; 4] {
    let p = block.as_ptr().cast::<__m128i>();
    // SAFETY: `block` is 64 readable bytes; the four unaligned 16-byte loads stay inside it.
    unsafe {
        [
            bswap(_mm_loadu_si128(p)),
            bswap(_mm_loadu_si128(p.add(1))),
            bswap(_mm_loadu_si128(p.add(2))),
            bswap(_mm_loadu_si128(p.add(3))),
        ]
    }
}

/// `K[4g..4g + 4]`.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn k4(g: usize) -> __m128i {
    _mm_set_epi32(
        K[4 * g + 3] as i32,
        K[4 * g + 2] as i32,
        K[4 * g + 1] as i32,
        K[4 * g] as i32,
    )
}

/// Four rounds with `wk = W + K` for them.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn rnd4(st: &mut St, wk: __m128i) {
    st[1] = _mm_sha256rnds2_epu32(st[1], st[0], wk);
    st[0] = _mm_sha256rnds2_epu32(st[0], st[1], _mm_shuffle_epi32(wk, 0x0E));
}

/// The next four schedule words from the previous sixteen (`w0` oldest).
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn sched(w0: __m128i, w1: __m128i, w2: __m128i, w3: __m128i) -> __m128i {
    _mm_sha256msg2_epu32(
        _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8(w3, w2, 4)),
        w3,
    )
}

/// 64 rounds of `W` interleaved streams, each on its own block (`w`), without the final
/// addition of the input state.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn rounds<const W: usize>(st: &mut [St; W], mut w: [[__m128i; 4]; W]) {
    macro_rules! group {
        ($g:literal) => {{
            let k = k4($g);
            for l in 0..W {
                if $g >= 4 {
                    w[l][$g % 4] = sched(
                        w[l][$g % 4],
                        w[l][($g + 1) % 4],
                        w[l][($g + 2) % 4],
                        w[l][($g + 3) % 4],
                    );
                }
                rnd4(&mut st[l], _mm_add_epi32(w[l][$g % 4], k));
            }
        }};
    }
    group!(0);
    group!(1);
    group!(2);
    group!(3);
    group!(4);
    group!(5);
    group!(6);
    group!(7);
    group!(8);
    group!(9);
    group!(10);
    group!(11);
    group!(12);
    group!(13);
    group!(14);
    group!(15);
}

/// 64 rounds of a constant block given its `W + K` (no schedule), for `W` streams.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn rounds_wk<const W: usize>(st: &mut [St; W], wk: &[u32; 64]) {
    for g in 0..16 {
        let v = _mm_set_epi32(
            wk[4 * g + 3] as i32,
            wk[4 * g + 2] as i32,
            wk[4 * g + 1] as i32,
            wk[4 * g] as i32,
        );
        for s in st.iter_mut() {
            rnd4(s, v);
        }
    }
}

/// `st += add` lane-wise for every stream.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn add_st<const W: usize>(st: &mut [St; W], add: &[St; W]) {
    for (s, a) in st.iter_mut().zip(add) {
        s[0] = _mm_add_epi32(s[0], a[0]);
        s[1] = _mm_add_epi32(s[1], a[1]);
    }
}

/// Writes a state as a big-endian digest.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn store_digest(st: St, out: &mut Digest) {
    let [abcd, efgh] = to_words(st);
    let p = out.as_mut_ptr().cast::<__m128i>();
    // SAFETY: `out` is 32 writable bytes; the two unaligned 16-byte stores stay inside it.
    unsafe {
        _mm_storeu_si128(p, bswap(abcd));
        _mm_storeu_si128(p.add(1), bswap(efgh));
    }
}

/// Compresses `blocks` into `state`, one stream.
///
/// # Safety
/// The CPU must have SHA, SSE2, SSSE3 and SSE4.1.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
pub(crate) unsafe fn compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    let mut st = [to_st(state)];
    for block in blocks {
        let save = st;
        rounds(&mut st, [load_block(block)]);
        add_st(&mut st, &save);
    }
    let [abcd, efgh] = to_words(st[0]);
    let mut words = [0u32; 8];
    let p = words.as_mut_ptr().cast::<__m128i>();
    // SAFETY: `words` is 32 writable bytes; the two unaligned 16-byte stores stay inside it.
    unsafe {
        _mm_storeu_si128(p, abcd);
        _mm_storeu_si128(p.add(1), efgh);
    }
    *state = words;
}

/// The initial state of `W` streams.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn iv<const W: usize>() -> [St; W] {
    [to_st(&IV); W]
}

/// SHA-256 of `W` 64-byte messages (interleaved); the padding block uses precomputed `W + K`.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn g64<const W: usize>(blocks: &[[u8; 64]; W], out: &mut [Digest; W]) {
    let init = iv::<W>();
    let mut st = init;
    let mut w = [[_mm_setzero_si128(); 4]; W];
    for (wl, b) in w.iter_mut().zip(blocks) {
        *wl = load_block(b);
    }
    rounds(&mut st, w);
    add_st(&mut st, &init);
    let save = st;
    rounds_wk(&mut st, &PAD64_WK);
    add_st(&mut st, &save);
    for (s, o) in st.iter().zip(out.iter_mut()) {
        store_digest(*s, o);
    }
}

/// Double SHA-256 of `W` 64-byte messages (interleaved).
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn g64d<const W: usize>(blocks: &[[u8; 64]; W], out: &mut [Digest; W]) {
    let init = iv::<W>();
    let mut st = init;
    let mut w = [[_mm_setzero_si128(); 4]; W];
    for (wl, b) in w.iter_mut().zip(blocks) {
        *wl = load_block(b);
    }
    rounds(&mut st, w);
    add_st(&mut st, &init);
    let save = st;
    rounds_wk(&mut st, &PAD64_WK);
    add_st(&mut st, &save);
    // Second hash: words 0..8 are the first digest's state words, 8..16 constants.
    let tail = [
        _mm_set_epi32(
            D64_TAIL[3] as i32,
            D64_TAIL[2] as i32,
            D64_TAIL[1] as i32,
            D64_TAIL[0] as i32,
        ),
        _mm_set_epi32(
            D64_TAIL[7] as i32,
            D64_TAIL[6] as i32,
            D64_TAIL[5] as i32,
            D64_TAIL[4] as i32,
        ),
    ];
    for (wl, s) in w.iter_mut().zip(st.iter()) {
        let [abcd, efgh] = to_words(*s);
        *wl = [abcd, efgh, tail[0], tail[1]];
    }
    let mut st2 = init;
    rounds(&mut st2, w);
    add_st(&mut st2, &init);
    for (s, o) in st2.iter().zip(out.iter_mut()) {
        store_digest(*s, o);
    }
}

/// RFC 9162 node hashes `SHA-256(0x01 || pair)` of `W` 64-byte pairs (interleaved), read
/// straight from the pairs: the words of the first block are the pair's words shifted right by
/// one byte behind the prefix; the second block is the pair's last byte and constants.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn gnode<const W: usize>(pairs: &[[u8; 64]; W], out: &mut [Digest; W]) {
    let init = iv::<W>();
    let zero = _mm_setzero_si128();
    let prefix = _mm_set_epi32(i32::from(NODE_PREFIX), 0, 0, 0);
    let pad = _mm_set_epi32(0, 0, 0, 0x0080_0000);
    let bits = _mm_set_epi32(65 * 8, 0, 0, 0);
    let mut w1 = [[zero; 4]; W];
    let mut w2 = [[zero; 4]; W];
    for ((a, b), pair) in w1.iter_mut().zip(w2.iter_mut()).zip(pairs) {
        let p = load_block(pair);
        let mut prev = prefix;
        for (ak, pk) in a.iter_mut().zip(p) {
            // [prev[3], p[0], p[1], p[2]]: each word's predecessor in the message.
            let before = _mm_alignr_epi8::<12>(pk, prev);
            *ak = _mm_or_si128(_mm_srli_epi32::<8>(pk), _mm_slli_epi32::<24>(before));
            prev = pk;
        }
        let last = _mm_srli_si128::<12>(_mm_slli_epi32::<24>(p[3]));
        *b = [_mm_or_si128(last, pad), zero, zero, bits];
    }
    let mut st = init;
    rounds(&mut st, w1);
    add_st(&mut st, &init);
    let save = st;
    rounds(&mut st, w2);
    add_st(&mut st, &save);
    for (s, o) in st.iter().zip(out.iter_mut()) {
        store_digest(*s, o);
    }
}

/// SHA-256 of `W` messages of `len` bytes each (interleaved).
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn gfixed<const W: usize>(lanes: &[&[u8]; W], len: usize, out: &mut [Digest; W]) {
    let nblocks = block_count(len);
    let mut st = iv::<W>();
    let mut blk = [0u8; 64];
    let mut w = [[_mm_setzero_si128(); 4]; W];
    for b in 0..nblocks {
        for (wl, m) in w.iter_mut().zip(lanes.iter()) {
            // Blocks wholly inside the message are read in place; only tails are built.
            let whole = m
                .get(b * 64..b * 64 + 64)
                .and_then(|s| <&[u8; 64]>::try_from(s).ok());
            *wl = match whole {
                Some(full) if b + 1 < nblocks => load_block(full),
                _ => {
                    fill_block(m, b, nblocks, &mut blk);
                    load_block(&blk)
                }
            };
        }
        let save = st;
        rounds(&mut st, w);
        add_st(&mut st, &save);
    }
    for (s, o) in st.iter().zip(out.iter_mut()) {
        store_digest(*s, o);
    }
}

/// As [`gfixed`], every message continuing from the midstate `init` after `prefix` compressed
/// bytes (a multiple of 64).
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn gfixed_from<const W: usize>(
    init: &[u32; 8],
    prefix: u64,
    lanes: &[&[u8]; W],
    len: usize,
    out: &mut [Digest; W],
) {
    let nblocks = block_count(len);
    let mut st = [to_st(init); W];
    let mut blk = [0u8; 64];
    let mut w = [[_mm_setzero_si128(); 4]; W];
    for b in 0..nblocks {
        for (wl, m) in w.iter_mut().zip(lanes.iter()) {
            let whole = m
                .get(b * 64..b * 64 + 64)
                .and_then(|s| <&[u8; 64]>::try_from(s).ok());
            *wl = match whole {
                Some(full) if b + 1 < nblocks => load_block(full),
                _ => {
                    fill_block_after(m, prefix, b, nblocks, &mut blk);
                    load_block(&blk)
                }
            };
        }
        let save = st;
        rounds(&mut st, w);
        add_st(&mut st, &save);
    }
    for (s, o) in st.iter().zip(out.iter_mut()) {
        store_digest(*s, o);
    }
}

/// SHA-256 of `out.len()` messages of `len` bytes (`1 <= len <= 55`: one block each) laid end
/// to end in `messages`, each continuing from the midstate `init` after `prefix` compressed
/// bytes (a multiple of 64; `IV` and 0 for plain hashes), `WAYS` streams interleaved.
///
/// As the lane kernels' `hash_short`: each block is read in place as the 64 bytes from its
/// message's start (only messages near the buffer's end are copied), then its words are
/// masked to the data and the padding (0x80, zeros, bit length) is or-ed in: no block is
/// built byte by byte.
///
/// # Safety
/// The CPU must have SHA, SSE2, SSSE3 and SSE4.1.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
pub(crate) unsafe fn hash_short(
    init: &[u32; 8],
    prefix: u64,
    messages: &[u8],
    len: usize,
    out: &mut [Digest],
) {
    let count = out.len();
    if len == 0 || len > 55 || messages.len() != len * count {
        return;
    }
    let mut keep = [0u32; 16];
    let mut pad = [0u32; 16];
    for (t, k) in keep.iter_mut().enumerate() {
        let lo = 4 * t;
        *k = if lo + 4 <= len {
            !0
        } else if lo < len {
            !0u32 << (32 - 8 * (len - lo))
        } else {
            0
        };
    }
    pad[len / 4] |= 0x80u32 << (24 - 8 * (len % 4));
    let bits = (prefix.wrapping_add(len as u64)).wrapping_mul(8);
    pad[14] = (bits >> 32) as u32;
    pad[15] = bits as u32;
    let v = |x: &[u32; 16], g: usize| {
        _mm_set_epi32(
            x[4 * g + 3] as i32,
            x[4 * g + 2] as i32,
            x[4 * g + 1] as i32,
            x[4 * g] as i32,
        )
    };
    let km: [__m128i; 4] = core::array::from_fn(|g| v(&keep, g));
    let pm: [__m128i; 4] = core::array::from_fn(|g| v(&pad, g));
    let st0 = [to_st(init); WAYS];
    let mut spare = [[0u8; 64]; WAYS];
    let mut i = 0;
    while i < count {
        let k = (count - i).min(WAYS);
        // Tail groups repeat the last real message in the unused streams.
        let off: [usize; WAYS] = core::array::from_fn(|j| (i + j.min(k - 1)) * len);
        for (sp, &o) in spare.iter_mut().zip(&off) {
            if o + 64 > messages.len() {
                sp[..len].copy_from_slice(&messages[o..o + len]);
            }
        }
        let mut w = [[_mm_setzero_si128(); 4]; WAYS];
        for ((wl, &o), sp) in w.iter_mut().zip(&off).zip(&spare) {
            let row = match messages
                .get(o..o + 64)
                .and_then(|r| <&[u8; 64]>::try_from(r).ok())
            {
                Some(r) => r,
                None => sp,
            };
            let b = load_block(row);
            for g in 0..4 {
                wl[g] = _mm_or_si128(_mm_and_si128(b[g], km[g]), pm[g]);
            }
        }
        let mut st = st0;
        rounds(&mut st, w);
        add_st(&mut st, &st0);
        let mut bo = [[0u8; 32]; WAYS];
        for (s, o) in st.iter().zip(bo.iter_mut()) {
            store_digest(*s, o);
        }
        out[i..i + k].copy_from_slice(&bo[..k]);
        i += k;
    }
}

batch_drivers!("sha,sse2,ssse3,sse4.1", WAYS);

/// [`hash64`] with `W` interleaved streams (tails padded with dummy streams), for measuring
/// which interleave is fastest.
///
/// # Safety
/// The CPU must have SHA, SSE2, SSSE3 and SSE4.1.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
pub(crate) unsafe fn hash64_ways<const W: usize>(inputs: &[[u8; 64]], out: &mut [Digest]) {
    for (i, o) in inputs.chunks(W).zip(out.chunks_mut(W)) {
        let mut bi = [[0u8; 64]; W];
        bi[..i.len()].copy_from_slice(i);
        let mut bo = [[0u8; 32]; W];
        g64(&bi, &mut bo);
        o.copy_from_slice(&bo[..o.len()]);
    }
}
