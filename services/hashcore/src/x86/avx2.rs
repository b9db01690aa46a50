//! AVX2: 8 independent messages, one per 32-bit lane of `__m256i`.

use core::arch::x86_64::*;

use super::{
    batch_drivers, lane_compress, lane_compress2, lane_kernels, lane_round, lane_rounds8,
    lane_rounds8x2, tail_words,
};
use crate::portable::{
    block_count, fill_block, fill_block_after, D64_TAIL, IV, K, NODE_PREFIX, PAD64_WK,
};
use crate::Digest;

/// Lanes per vector.
pub(crate) const N: usize = 8;
/// The vector type.
type V = __m256i;

#[inline]
#[target_feature(enable = "avx2")]
fn add(a: V, b: V) -> V {
    _mm256_add_epi32(a, b)
}

/// `a + b` per lane, as an instruction the compiler cannot reassociate with other adds (so
/// the round keeps its short dependency chain).
#[inline]
#[target_feature(enable = "avx2")]
fn add_fixed(a: V, b: V) -> V {
    let r: V;
    // SAFETY: one `vpaddd` on registers: no memory, no stack, no flags; the CPU has the
    // instruction (this function's target features).
    unsafe {
        core::arch::asm!(
            "vpaddd {r}, {a}, {b}",
            r = lateout(ymm_reg) r,
            a = in(ymm_reg) a,
            b = in(ymm_reg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    r
}

#[inline]
#[target_feature(enable = "avx2")]
fn sub(a: V, b: V) -> V {
    _mm256_sub_epi32(a, b)
}

#[inline]
#[target_feature(enable = "avx2")]
fn set1(x: u32) -> V {
    _mm256_set1_epi32(x as i32)
}

#[inline]
#[target_feature(enable = "avx2")]
fn xor3(a: V, b: V, c: V) -> V {
    _mm256_xor_si256(_mm256_xor_si256(a, b), c)
}

/// Rotate right by `R`; `L` must be `32 - R`.
#[inline]
#[target_feature(enable = "avx2")]
fn ror<const R: i32, const L: i32>(x: V) -> V {
    _mm256_or_si256(_mm256_srli_epi32::<R>(x), _mm256_slli_epi32::<L>(x))
}

#[inline]
#[target_feature(enable = "avx2")]
fn big_s0(a: V) -> V {
    xor3(ror::<2, 30>(a), ror::<13, 19>(a), ror::<22, 10>(a))
}

#[inline]
#[target_feature(enable = "avx2")]
fn big_s1(e: V) -> V {
    xor3(ror::<6, 26>(e), ror::<11, 21>(e), ror::<25, 7>(e))
}

#[inline]
#[target_feature(enable = "avx2")]
fn small_s0(w: V) -> V {
    xor3(ror::<7, 25>(w), ror::<18, 14>(w), _mm256_srli_epi32::<3>(w))
}

#[inline]
#[target_feature(enable = "avx2")]
fn small_s1(w: V) -> V {
    xor3(
        ror::<17, 15>(w),
        ror::<19, 13>(w),
        _mm256_srli_epi32::<10>(w),
    )
}

/// `(cur >> 8) | (prev << 24)`: the big-endian word of a message that starts one byte
/// before `cur`'s bytes, `prev`'s last byte first.
#[inline]
#[target_feature(enable = "avx2")]
fn splice8(prev: V, cur: V) -> V {
    _mm256_or_si256(_mm256_srli_epi32::<8>(cur), _mm256_slli_epi32::<24>(prev))
}

/// `(e & f) ^ (!e & g)`.
#[inline]
#[target_feature(enable = "avx2")]
fn ch(e: V, f: V, g: V) -> V {
    _mm256_xor_si256(_mm256_and_si256(_mm256_xor_si256(f, g), e), g)
}

/// `(a & b) ^ (a & c) ^ (b & c)`.
#[inline]
#[target_feature(enable = "avx2")]
fn maj(a: V, b: V, c: V) -> V {
    _mm256_or_si256(
        _mm256_and_si256(a, b),
        _mm256_and_si256(c, _mm256_or_si256(a, b)),
    )
}

/// The 16 big-endian message words of `N` blocks, lane `l` from `blocks[l]` (gathered).
#[inline]
#[target_feature(enable = "avx2")]
fn load_words(blocks: &[[u8; 64]; N]) -> [V; 16] {
    let offsets = _mm256_setr_epi32(0, 64, 128, 192, 256, 320, 384, 448);
    let swap = _mm256_setr_epi8(
        3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8,
        15, 14, 13, 12,
    );
    let base = blocks.as_ptr().cast::<i32>();
    let mut w = [_mm256_setzero_si256(); 16];
    for (t, wt) in w.iter_mut().enumerate() {
        // SAFETY: `blocks` is `N * 64` contiguous bytes; lane `l` reads the 4 bytes at
        // `64 * l + 4 * t` with `t < 16`, inside it.
        *wt = _mm256_shuffle_epi8(
            unsafe { _mm256_i32gather_epi32::<1>(base.add(t), offsets) },
            swap,
        );
    }
    w
}

/// The 16 big-endian message words of `N` blocks, lane `l` from `rows[l]` (copied side by side,
/// then gathered).
#[inline]
#[target_feature(enable = "avx2")]
fn load_rows(rows: &[&[u8; 64]; N]) -> [V; 16] {
    let blocks: [[u8; 64]; N] = core::array::from_fn(|l| *rows[l]);
    load_words(&blocks)
}

/// The `N` lanes of `v`.
#[inline]
#[target_feature(enable = "avx2")]
fn store_words(v: V) -> [u32; N] {
    let mut out = [0u32; N];
    // SAFETY: `out` is 32 writable bytes, the size of one unaligned 256-bit store.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast::<V>(), v) };
    out
}

/// Writes lane `l`'s state as the digest `out[l]`.
#[inline]
#[target_feature(enable = "avx2")]
fn store_digests(st: &[V; 8], out: &mut [Digest; N]) {
    for (j, v) in st.iter().enumerate() {
        let words = store_words(*v);
        for (o, w) in out.iter_mut().zip(words) {
            o[4 * j..4 * j + 4].copy_from_slice(&w.to_be_bytes());
        }
    }
}

lane_kernels!("avx2");
