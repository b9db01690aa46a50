//! The portable SHA-256 compression function (FIPS 180-4, section 6.2.2).
//!
//! This is the reference every SIMD backend is checked against and the fallback on CPUs
//! without SHA-NI, AVX2 or AVX-512. It is plain safe Rust.

/// The SHA-256 round constants K (FIPS 180-4, 4.2.2).
pub(crate) const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// The SHA-256 initial hash value H(0) (FIPS 180-4, 5.3.3).
pub(crate) const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Compresses each 64-byte block of `blocks` into `state`, in order.
pub(crate) fn compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    for block in blocks {
        compress_one(state, block);
    }
}

/// Compresses one 64-byte block into `state`.
pub(crate) fn compress_one(state: &mut [u32; 8], block: &[u8; 64]) {
    let mut w = [0u32; 64];
    for (i, word) in block.chunks_exact(4).enumerate() {
        w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    }
    for i in 16..64 {
        let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
        let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16]
            .wrapping_add(s0)
            .wrapping_add(w[i - 7])
            .wrapping_add(s1);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for i in 0..64 {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(K[i])
            .wrapping_add(w[i]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = s.wrapping_add(v);
    }
}

/// Writes a state as a big-endian digest.
pub(crate) fn state_to_digest(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// `W[t] + K[t]` for all 64 rounds of a block whose 16 message words are `words`, computed at
/// compile time (for blocks that are the same for every message, such as padding blocks).
pub(crate) const fn schedule_wk(words: [u32; 16]) -> [u32; 64] {
    let mut w = [0u32; 64];
    let mut i = 0;
    while i < 16 {
        w[i] = words[i];
        i += 1;
    }
    while i < 64 {
        let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
        let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16]
            .wrapping_add(s0)
            .wrapping_add(w[i - 7])
            .wrapping_add(s1);
        i += 1;
    }
    let mut j = 0;
    while j < 64 {
        w[j] = w[j].wrapping_add(K[j]);
        j += 1;
    }
    w
}

/// `W[t] + K[t]` of the padding block of a 64-byte message (0x80, zeros, bit length 512).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const PAD64_WK: [u32; 64] =
    schedule_wk([0x8000_0000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 512]);

/// Message words 8..16 of the second hash of SHA256D64 (a 32-byte digest, then 0x80, zeros and
/// the bit length 256): constants.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const D64_TAIL: [u32; 8] = [0x8000_0000, 0, 0, 0, 0, 0, 0, 256];

/// The RFC 9162 prefix byte of an interior node hash (`SHA-256(0x01 || left || right)`).
pub(crate) const NODE_PREFIX: u8 = 0x01;

/// Fills `blk` with block `b` (of `nblocks`) of the padded message `msg`.
pub(crate) fn fill_block(msg: &[u8], b: usize, nblocks: usize, blk: &mut [u8; 64]) {
    fill_block_after(msg, 0, b, nblocks, blk);
}

/// As [`fill_block`] for a message that follows `prefix` bytes already compressed (a multiple
/// of 64, e.g. a tagged hash's midstate): only the bit length in the last block differs.
pub(crate) fn fill_block_after(
    msg: &[u8],
    prefix: u64,
    b: usize,
    nblocks: usize,
    blk: &mut [u8; 64],
) {
    let start = b * 64;
    let len = msg.len();
    if start + 64 <= len {
        blk.copy_from_slice(&msg[start..start + 64]);
        if b + 1 < nblocks {
            return;
        }
    } else {
        *blk = [0; 64];
        if start < len {
            blk[..len - start].copy_from_slice(&msg[start..]);
        }
        if len >= start {
            blk[len - start] = 0x80;
        }
    }
    if b + 1 == nblocks {
        blk[56..].copy_from_slice(&(len as u64 + prefix).wrapping_mul(8).to_be_bytes());
    }
}

/// Number of blocks of a padded message of `len` bytes.
pub(crate) fn block_count(len: usize) -> usize {
    (len + 9).div_ceil(64)
}
