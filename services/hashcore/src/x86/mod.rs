//! x86-64 SIMD backends: SHA-NI (interleaved streams), AVX2 (8 lanes), AVX-512 (16 lanes).
//!
//! Every kernel is a `#[target_feature]` function. The engine calls them only after
//! [`crate::Engine::forced`] checked at run time that the CPU has the features (and ran the
//! self-test), which is what makes the `unsafe` calls in `engine.rs` sound.
//!
//! The AVX2 and AVX-512 kernels are generated from one macro, [`lane_kernels`], over a small
//! set of per-backend vector operations, so the AVX2 kernel (testable on every current x86-64
//! CPU) exercises exactly the round, schedule, padding and driver logic the AVX-512 one uses.

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod shani;

/// The words of the last block of a `len`-byte message (its padding inside that block) that do
/// not depend on the message: `Some(word)` for each word at or past the 0x80 byte. Needs
/// `len % 64 <= 55` (the length fits behind the data in the same block).
pub(crate) const fn tail_words(len: usize) -> [Option<u32>; 16] {
    let r = len % 64;
    let bits = (len as u64).wrapping_mul(8);
    let mut out = [None; 16];
    let mut i = 0;
    while i < 16 {
        if 4 * i >= r {
            let mut word = 0u32;
            if 4 * i == r {
                word = 0x8000_0000;
            }
            if i == 14 {
                word |= (bits >> 32) as u32;
            }
            if i == 15 {
                word |= bits as u32;
            }
            out[i] = Some(word);
        }
        i += 1;
    }
    out
}

/// The batch drivers (whole groups of `$n` messages, then a padded tail group) over the group
/// kernels `g64`, `g64d`, `gnode` and `gfixed` of the module the macro is expanded in. With
/// `pairs` (the lane backends), `hash64` and `merkle_level` first take whole pairs of groups
/// on `g64x2`, which interleaves the two groups' padding blocks.
macro_rules! batch_drivers {
    ($feat:literal, $n:expr $(, $pairs:ident)?) => {
        // `hash64` and `hash64d` below repeat one driver body on purpose: folding it into a
        // shared inner macro measured 56 -> 38 M compressions/s for `hash64` on SHA-NI (same
        // machine, back to back, 2026-11-25), a code-generation difference, so keep two copies.
        /// SHA-256 of each 64-byte message. Requires `out.len() == inputs.len()`.
        ///
        /// # Safety
        /// The CPU must have the features this backend is compiled for.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn hash64(inputs: &[[u8; 64]], out: &mut [Digest]) {
            // With `pairs`: whole pairs of groups first, on the two-group kernel.
            $(
                let _ = stringify!($pairs);
                let mut ic = inputs.chunks_exact(2 * $n);
                let mut oc = out.chunks_exact_mut(2 * $n);
                for (i, o) in (&mut ic).zip(&mut oc) {
                    if let (Ok(i), Ok(o)) = (
                        <&[[u8; 64]; 2 * $n]>::try_from(i),
                        <&mut [Digest; 2 * $n]>::try_from(o),
                    ) {
                        g64x2(i, o);
                    }
                }
                let (inputs, out) = (ic.remainder(), oc.into_remainder());
            )?
            let mut ic = inputs.chunks_exact($n);
            let mut oc = out.chunks_exact_mut($n);
            for (i, o) in (&mut ic).zip(&mut oc) {
                if let (Ok(i), Ok(o)) = (
                    <&[[u8; 64]; $n]>::try_from(i),
                    <&mut [Digest; $n]>::try_from(o),
                ) {
                    g64(i, o);
                }
            }
            let (ir, or) = (ic.remainder(), oc.into_remainder());
            if !ir.is_empty() && ir.len() == or.len() {
                let mut bi = [[0u8; 64]; $n];
                bi[..ir.len()].copy_from_slice(ir);
                let mut bo = [[0u8; 32]; $n];
                g64(&bi, &mut bo);
                or.copy_from_slice(&bo[..ir.len()]);
            }
        }

        /// Double SHA-256 of each 64-byte message. Requires `out.len() == inputs.len()`.
        ///
        /// # Safety
        /// The CPU must have the features this backend is compiled for.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn hash64d(inputs: &[[u8; 64]], out: &mut [Digest]) {
            let mut ic = inputs.chunks_exact($n);
            let mut oc = out.chunks_exact_mut($n);
            for (i, o) in (&mut ic).zip(&mut oc) {
                if let (Ok(i), Ok(o)) = (
                    <&[[u8; 64]; $n]>::try_from(i),
                    <&mut [Digest; $n]>::try_from(o),
                ) {
                    g64d(i, o);
                }
            }
            let (ir, or) = (ic.remainder(), oc.into_remainder());
            if !ir.is_empty() && ir.len() == or.len() {
                let mut bi = [[0u8; 64]; $n];
                bi[..ir.len()].copy_from_slice(ir);
                let mut bo = [[0u8; 32]; $n];
                g64d(&bi, &mut bo);
                or.copy_from_slice(&bo[..ir.len()]);
            }
        }

        /// One Merkle level in place (`nodes.len()` even): the first half becomes the hashes
        /// of the pairs.
        ///
        /// # Safety
        /// The CPU must have the features this backend is compiled for.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn merkle_level(nodes: &mut [Digest]) {
            let half = nodes.len() / 2;
            let mut i = 0;
            // With `pairs`: whole pairs of groups first, read in place as below.
            $(
                let _ = stringify!($pairs);
                while i + 2 * $n <= half {
                    let mut bo = [[0u8; 32]; 2 * $n];
                    let (p, _) = nodes[2 * i..2 * (i + 2 * $n)].as_flattened().as_chunks::<64>();
                    if let Ok(p) = <&[[u8; 64]; 2 * $n]>::try_from(p) {
                        g64x2(p, &mut bo);
                    }
                    nodes[i..i + 2 * $n].copy_from_slice(&bo);
                    i += 2 * $n;
                }
            )?
            // Whole groups read their pairs in place (the pairs of group `i` are
            // `nodes[2i .. 2i + 2n]`, at or above the digests' slots `nodes[i .. i + n]`,
            // which are written after the kernel returned).
            while i + $n <= half {
                let mut bo = [[0u8; 32]; $n];
                let (pairs, _) = nodes[2 * i..2 * (i + $n)].as_flattened().as_chunks::<64>();
                if let Ok(pairs) = <&[[u8; 64]; $n]>::try_from(pairs) {
                    g64(pairs, &mut bo);
                }
                nodes[i..i + $n].copy_from_slice(&bo);
                i += $n;
            }
            while i < half {
                let k = (half - i).min($n);
                let mut bi = [[0u8; 64]; $n];
                for (j, b) in bi.iter_mut().enumerate().take(k) {
                    b[..32].copy_from_slice(&nodes[2 * (i + j)]);
                    b[32..].copy_from_slice(&nodes[2 * (i + j) + 1]);
                }
                let mut bo = [[0u8; 32]; $n];
                g64(&bi, &mut bo);
                nodes[i..i + k].copy_from_slice(&bo[..k]);
                i += k;
            }
        }

        /// RFC 9162 node hash `SHA-256(0x01 || pair)` of each 64-byte pair. Requires
        /// `out.len() == pairs.len()`.
        ///
        /// # Safety
        /// The CPU must have the features this backend is compiled for.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn hash_nodes(pairs: &[[u8; 64]], out: &mut [Digest]) {
            let mut ic = pairs.chunks_exact($n);
            let mut oc = out.chunks_exact_mut($n);
            for (i, o) in (&mut ic).zip(&mut oc) {
                if let (Ok(i), Ok(o)) = (
                    <&[[u8; 64]; $n]>::try_from(i),
                    <&mut [Digest; $n]>::try_from(o),
                ) {
                    gnode(i, o);
                }
            }
            let (ir, or) = (ic.remainder(), oc.into_remainder());
            if !ir.is_empty() && ir.len() == or.len() {
                let mut bi = [[0u8; 64]; $n];
                bi[..ir.len()].copy_from_slice(ir);
                let mut bo = [[0u8; 32]; $n];
                gnode(&bi, &mut bo);
                or.copy_from_slice(&bo[..ir.len()]);
            }
        }

        /// One RFC 9162 level in place (`nodes.len()` even): the first half becomes the node
        /// hashes `SHA-256(0x01 || left || right)` of the pairs.
        ///
        /// # Safety
        /// The CPU must have the features this backend is compiled for.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn node_level(nodes: &mut [Digest]) {
            let half = nodes.len() / 2;
            let mut i = 0;
            // Whole groups read their pairs in place (the pairs of group `i` are
            // `nodes[2i .. 2i + 2n]`, at or above the digests' slots `nodes[i .. i + n]`,
            // which are written after the kernel returned).
            while i + $n <= half {
                let mut bo = [[0u8; 32]; $n];
                let (pairs, _) = nodes[2 * i..2 * (i + $n)].as_flattened().as_chunks::<64>();
                if let Ok(pairs) = <&[[u8; 64]; $n]>::try_from(pairs) {
                    gnode(pairs, &mut bo);
                }
                nodes[i..i + $n].copy_from_slice(&bo);
                i += $n;
            }
            while i < half {
                let k = (half - i).min($n);
                // The group's pairs are copied out before its digests overwrite
                // `nodes[i..i + k]` (which lies at or below them).
                let mut bi = [[0u8; 64]; $n];
                for (j, b) in bi.iter_mut().enumerate().take(k) {
                    b[..32].copy_from_slice(&nodes[2 * (i + j)]);
                    b[32..].copy_from_slice(&nodes[2 * (i + j) + 1]);
                }
                let mut bo = [[0u8; 32]; $n];
                gnode(&bi, &mut bo);
                nodes[i..i + k].copy_from_slice(&bo[..k]);
                i += k;
            }
        }

        /// SHA-256 of `out.len()` messages of `len` bytes laid end to end in `messages`
        /// (`messages.len() == len * out.len()`).
        ///
        /// # Safety
        /// The CPU must have the features this backend is compiled for.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn hash_fixed(messages: &[u8], len: usize, out: &mut [Digest]) {
            let count = out.len();
            if messages.len() != len * count {
                return;
            }
            let mut i = 0;
            while i < count {
                let k = (count - i).min($n);
                let mut lanes: [&[u8]; $n] = [&[]; $n];
                for (j, lane) in lanes.iter_mut().enumerate() {
                    // Tail groups repeat the last real message in the unused lanes.
                    let m = i + j.min(k - 1);
                    *lane = &messages[m * len..(m + 1) * len];
                }
                let mut bo = [[0u8; 32]; $n];
                gfixed(&lanes, len, &mut bo);
                out[i..i + k].copy_from_slice(&bo[..k]);
                i += k;
            }
        }

        /// As `hash_fixed`, each message continuing from the midstate `init` after `prefix`
        /// bytes (a multiple of 64) were compressed: e.g. a tagged hash's tag prefix.
        ///
        /// # Safety
        /// The CPU must have the features this backend is compiled for.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn hash_fixed_from(
            init: &[u32; 8],
            prefix: u64,
            messages: &[u8],
            len: usize,
            out: &mut [Digest],
        ) {
            let count = out.len();
            if messages.len() != len * count {
                return;
            }
            let mut i = 0;
            while i < count {
                let k = (count - i).min($n);
                let mut lanes: [&[u8]; $n] = [&[]; $n];
                for (j, lane) in lanes.iter_mut().enumerate() {
                    // Tail groups repeat the last real message in the unused lanes.
                    let m = i + j.min(k - 1);
                    *lane = &messages[m * len..(m + 1) * len];
                }
                let mut bo = [[0u8; 32]; $n];
                gfixed_from(init, prefix, &lanes, len, &mut bo);
                out[i..i + k].copy_from_slice(&bo[..k]);
                i += k;
            }
        }
    };
}

/// One SHA-256 round on lane vectors: `$d += T1`, `$h = T1 + T2`. The caller rotates the
/// names instead of moving eight registers per round.
macro_rules! lane_round {
    ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident, $wk:expr) => {
        // The new `e` is a chain from the old one: `d + h + W + K` does not depend on it,
        // `Ch` does through one op and `Sigma1` through two (rotates, then a ternary op), so
        // it is summed in that order: three ops of latency per round instead of five.
        // `add_fixed` keeps that order: with plain adds the compiler reassociates the sums
        // (constants last), which lengthens the chain that bounds the whole compression.
        let hk = add($h, $wk);
        let ch = ch($e, $f, $g);
        let s1 = big_s1($e);
        let e = add_fixed(add(add_fixed($d, hk), ch), s1);
        // T1 = e - d: one op instead of two more sums.
        let t1 = sub(e, $d);
        $d = e;
        $h = add_fixed(add(t1, maj($a, $b, $c)), big_s0($a));
    };
}

/// Eight rounds `$t .. $t + 8`; `$wk($w, t)` gives `W[t] + K[t]` (scheduling as needed).
/// After eight rounds the names are back in their places.
macro_rules! lane_rounds8 {
    ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident,
     $wk:ident, $w:ident, $t:expr) => {
        lane_round!($a, $b, $c, $d, $e, $f, $g, $h, $wk(&mut $w, $t));
        lane_round!($h, $a, $b, $c, $d, $e, $f, $g, $wk(&mut $w, $t + 1));
        lane_round!($g, $h, $a, $b, $c, $d, $e, $f, $wk(&mut $w, $t + 2));
        lane_round!($f, $g, $h, $a, $b, $c, $d, $e, $wk(&mut $w, $t + 3));
        lane_round!($e, $f, $g, $h, $a, $b, $c, $d, $wk(&mut $w, $t + 4));
        lane_round!($d, $e, $f, $g, $h, $a, $b, $c, $wk(&mut $w, $t + 5));
        lane_round!($c, $d, $e, $f, $g, $h, $a, $b, $wk(&mut $w, $t + 6));
        lane_round!($b, $c, $d, $e, $f, $g, $h, $a, $wk(&mut $w, $t + 7));
    };
}

/// All 64 rounds on `$st` (a `[V; 8]`), then the feed-forward addition.
macro_rules! lane_compress {
    ($st:ident, $wk:ident, $w:ident) => {{
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *$st;
        lane_rounds8!(a, b, c, d, e, f, g, h, $wk, $w, 0);
        lane_rounds8!(a, b, c, d, e, f, g, h, $wk, $w, 8);
        lane_rounds8!(a, b, c, d, e, f, g, h, $wk, $w, 16);
        lane_rounds8!(a, b, c, d, e, f, g, h, $wk, $w, 24);
        lane_rounds8!(a, b, c, d, e, f, g, h, $wk, $w, 32);
        lane_rounds8!(a, b, c, d, e, f, g, h, $wk, $w, 40);
        lane_rounds8!(a, b, c, d, e, f, g, h, $wk, $w, 48);
        lane_rounds8!(a, b, c, d, e, f, g, h, $wk, $w, 56);
        let v = [a, b, c, d, e, f, g, h];
        for (s, x) in $st.iter_mut().zip(v) {
            *s = add(*s, x);
        }
    }};
}

/// Eight rounds of two independent groups, one round of each in turn.
macro_rules! lane_rounds8x2 {
    ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident,
     $a1:ident, $b1:ident, $c1:ident, $d1:ident, $e1:ident, $f1:ident, $g1:ident, $h1:ident,
     $wk:ident, $w:ident, $w1:ident, $t:expr) => {
        lane_round!($a, $b, $c, $d, $e, $f, $g, $h, $wk(&mut $w, $t));
        lane_round!($a1, $b1, $c1, $d1, $e1, $f1, $g1, $h1, $wk(&mut $w1, $t));
        lane_round!($h, $a, $b, $c, $d, $e, $f, $g, $wk(&mut $w, $t + 1));
        lane_round!(
            $h1,
            $a1,
            $b1,
            $c1,
            $d1,
            $e1,
            $f1,
            $g1,
            $wk(&mut $w1, $t + 1)
        );
        lane_round!($g, $h, $a, $b, $c, $d, $e, $f, $wk(&mut $w, $t + 2));
        lane_round!(
            $g1,
            $h1,
            $a1,
            $b1,
            $c1,
            $d1,
            $e1,
            $f1,
            $wk(&mut $w1, $t + 2)
        );
        lane_round!($f, $g, $h, $a, $b, $c, $d, $e, $wk(&mut $w, $t + 3));
        lane_round!(
            $f1,
            $g1,
            $h1,
            $a1,
            $b1,
            $c1,
            $d1,
            $e1,
            $wk(&mut $w1, $t + 3)
        );
        lane_round!($e, $f, $g, $h, $a, $b, $c, $d, $wk(&mut $w, $t + 4));
        lane_round!(
            $e1,
            $f1,
            $g1,
            $h1,
            $a1,
            $b1,
            $c1,
            $d1,
            $wk(&mut $w1, $t + 4)
        );
        lane_round!($d, $e, $f, $g, $h, $a, $b, $c, $wk(&mut $w, $t + 5));
        lane_round!(
            $d1,
            $e1,
            $f1,
            $g1,
            $h1,
            $a1,
            $b1,
            $c1,
            $wk(&mut $w1, $t + 5)
        );
        lane_round!($c, $d, $e, $f, $g, $h, $a, $b, $wk(&mut $w, $t + 6));
        lane_round!(
            $c1,
            $d1,
            $e1,
            $f1,
            $g1,
            $h1,
            $a1,
            $b1,
            $wk(&mut $w1, $t + 6)
        );
        lane_round!($b, $c, $d, $e, $f, $g, $h, $a, $wk(&mut $w, $t + 7));
        lane_round!(
            $b1,
            $c1,
            $d1,
            $e1,
            $f1,
            $g1,
            $h1,
            $a1,
            $wk(&mut $w1, $t + 7)
        );
    };
}

/// As [`lane_compress`] on two independent groups `$st0`, `$st1`, one round of each in turn
/// (for blocks with little schedule state, so both groups stay in registers).
macro_rules! lane_compress2 {
    ($st0:ident, $w0:ident, $st1:ident, $w1:ident, $wk:ident) => {{
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *$st0;
        let [mut a1, mut b1, mut c1, mut d1, mut e1, mut f1, mut g1, mut h1] = *$st1;
        lane_rounds8x2!(a, b, c, d, e, f, g, h, a1, b1, c1, d1, e1, f1, g1, h1, $wk, $w0, $w1, 0);
        lane_rounds8x2!(a, b, c, d, e, f, g, h, a1, b1, c1, d1, e1, f1, g1, h1, $wk, $w0, $w1, 8);
        lane_rounds8x2!(a, b, c, d, e, f, g, h, a1, b1, c1, d1, e1, f1, g1, h1, $wk, $w0, $w1, 16);
        lane_rounds8x2!(a, b, c, d, e, f, g, h, a1, b1, c1, d1, e1, f1, g1, h1, $wk, $w0, $w1, 24);
        lane_rounds8x2!(a, b, c, d, e, f, g, h, a1, b1, c1, d1, e1, f1, g1, h1, $wk, $w0, $w1, 32);
        lane_rounds8x2!(a, b, c, d, e, f, g, h, a1, b1, c1, d1, e1, f1, g1, h1, $wk, $w0, $w1, 40);
        lane_rounds8x2!(a, b, c, d, e, f, g, h, a1, b1, c1, d1, e1, f1, g1, h1, $wk, $w0, $w1, 48);
        lane_rounds8x2!(a, b, c, d, e, f, g, h, a1, b1, c1, d1, e1, f1, g1, h1, $wk, $w0, $w1, 56);
        let v = [a, b, c, d, e, f, g, h];
        for (s, x) in $st0.iter_mut().zip(v) {
            *s = add(*s, x);
        }
        let v = [a1, b1, c1, d1, e1, f1, g1, h1];
        for (s, x) in $st1.iter_mut().zip(v) {
            *s = add(*s, x);
        }
    }};
}

/// The multi-lane SHA-256 kernels (one message per 32-bit lane), over the vector type `V`,
/// the lane count `N` and these functions of the module the macro is expanded in: `add`,
/// `add_fixed` (an add the compiler cannot reassociate),
/// `set1`, `big_s0`, `big_s1`, `small_s0`, `small_s1`, `ch`, `maj`, `splice8` (`(cur >> 8) |
/// (prev << 24)`, for messages one byte off the word grid), `load_words` (the 16
/// big-endian words of `N` contiguous blocks, lane `l` = block `l`), `load_rows` (the same
/// from `N` separate blocks) and `store_digests` (lane `l`'s state as digest `l`).
///
/// The 64 rounds are written out (macros above), so the eight state words and the sixteen
/// schedule words stay in registers, and blocks with constant words (padding, the second hash
/// of SHA256D64, the last block of a fixed-length message) have their constant schedule
/// folded away at compile time.
macro_rules! lane_kernels {
    ($feat:literal) => {
        /// The initial state in every lane.
        #[inline]
        #[target_feature(enable = $feat)]
        fn iv() -> [V; 8] {
            [
                set1(IV[0]),
                set1(IV[1]),
                set1(IV[2]),
                set1(IV[3]),
                set1(IV[4]),
                set1(IV[5]),
                set1(IV[6]),
                set1(IV[7]),
            ]
        }

        /// `W[t] + K[t]`, computing `W[t]` in place in the 16-word window for `t >= 16`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn sched_wk(w: &mut [V; 16], t: usize) -> V {
            if t >= 16 {
                w[t % 16] = add(
                    add(small_s1(w[(t - 2) % 16]), w[(t - 7) % 16]),
                    add(small_s0(w[(t - 15) % 16]), w[t % 16]),
                );
            }
            add(w[t % 16], set1(K[t]))
        }

        /// `W[t] + K[t]` of a constant block, precomputed.
        #[inline]
        #[target_feature(enable = $feat)]
        fn const_wk(wk: &mut &[u32; 64], t: usize) -> V {
            set1(wk[t])
        }

        /// Compresses one block per lane, given its 16 message words.
        #[inline]
        #[target_feature(enable = $feat)]
        fn compress_w(st: &mut [V; 8], mut w: [V; 16]) {
            lane_compress!(st, sched_wk, w);
        }

        /// Compresses one constant block (the same in every lane), given its precomputed
        /// `W[t] + K[t]`: no message schedule.
        #[inline]
        #[target_feature(enable = $feat)]
        fn compress_wk(st: &mut [V; 8], wk: &[u32; 64]) {
            let mut wk = wk;
            lane_compress!(st, const_wk, wk);
        }

        /// SHA-256 of `N` 64-byte messages: one scheduled block, then the constant padding
        /// block.
        #[target_feature(enable = $feat)]
        fn g64(blocks: &[[u8; 64]; N], out: &mut [Digest; N]) {
            let mut st = iv();
            compress_w(&mut st, load_words(blocks));
            compress_wk(&mut st, &PAD64_WK);
            store_digests(&st, out);
        }

        /// Splits `2 * N` items into two groups of `N`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn halves<T>(x: &[T; 2 * N]) -> (&[T; N], &[T; N]) {
            let (a, b) = x.split_at(N);
            match (<&[T; N]>::try_from(a), <&[T; N]>::try_from(b)) {
                (Ok(a), Ok(b)) => (a, b),
                // Unreachable: `split_at(N)` of `2 * N` items. `x` twice keeps it total.
                _ => {
                    let (a, _) = x.as_chunks::<N>();
                    (&a[0], &a[a.len() - 1])
                }
            }
        }

        /// Writes two groups' states as the digests `out[..N]` and `out[N..]`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn store_digests2(st0: &[V; 8], st1: &[V; 8], out: &mut [Digest; 2 * N]) {
            let (o0, o1) = out.split_at_mut(N);
            if let (Ok(o0), Ok(o1)) = (
                <&mut [Digest; N]>::try_from(o0),
                <&mut [Digest; N]>::try_from(o1),
            ) {
                store_digests(st0, o0);
                store_digests(st1, o1);
            }
        }

        /// As `g64` on two groups of `N` messages: each group's first block alone (its
        /// schedule needs all the registers), then both padding blocks (no schedule)
        /// interleaved round by round, so one group's dependency chain fills the other's
        /// stalls.
        #[target_feature(enable = $feat)]
        fn g64x2(blocks: &[[u8; 64]; 2 * N], out: &mut [Digest; 2 * N]) {
            let (b0, b1) = halves(blocks);
            let (mut st0, mut st1) = (iv(), iv());
            compress_w(&mut st0, load_words(b0));
            compress_w(&mut st1, load_words(b1));
            let (mut k0, mut k1) = (&PAD64_WK, &PAD64_WK);
            let (s0, s1) = (&mut st0, &mut st1);
            lane_compress2!(s0, k0, s1, k1, const_wk);
            store_digests2(&st0, &st1, out);
        }

        /// Double SHA-256 of `N` 64-byte messages: the second hash's words 0..8 are the first
        /// digest's state words, 8..16 constants.
        #[target_feature(enable = $feat)]
        fn g64d(blocks: &[[u8; 64]; N], out: &mut [Digest; N]) {
            let mut st = iv();
            compress_w(&mut st, load_words(blocks));
            compress_wk(&mut st, &PAD64_WK);
            let st2 = second_hash(&st);
            store_digests(&st2, out);
        }

        /// The state after hashing the 32-byte digests held in `st` (one per lane).
        #[inline]
        #[target_feature(enable = $feat)]
        fn second_hash(st: &[V; 8]) -> [V; 8] {
            let mut w = [
                st[0],
                st[1],
                st[2],
                st[3],
                st[4],
                st[5],
                st[6],
                st[7],
                set1(D64_TAIL[0]),
                set1(D64_TAIL[1]),
                set1(D64_TAIL[2]),
                set1(D64_TAIL[3]),
                set1(D64_TAIL[4]),
                set1(D64_TAIL[5]),
                set1(D64_TAIL[6]),
                set1(D64_TAIL[7]),
            ];
            let mut st2 = iv();
            // Written out here (not a call) so the constant words 8..16 fold into the schedule.
            let s2 = &mut st2;
            lane_compress!(s2, sched_wk, w);
            st2
        }

        /// RFC 9162 node hashes `SHA-256(0x01 || pair)` of `N` 64-byte pairs (`left ||
        /// right`), read straight from the pairs: the 65-byte message's first block is the
        /// pair's words shifted right by one byte behind the prefix, its second block holds
        /// the pair's last byte, then constants (so most of its schedule folds away).
        #[target_feature(enable = $feat)]
        fn gnode(pairs: &[[u8; 64]; N], out: &mut [Digest; N]) {
            let mut st = iv();
            let last = node_first_block(&mut st, pairs);
            let mut w = node_second_words(last);
            let s = &mut st;
            lane_compress!(s, sched_wk, w);
            store_digests(&st, out);
        }

        /// Compresses the first block of the 65-byte node messages `0x01 || pair` into `st`;
        /// returns the pairs' last words (whose last byte goes into the second block).
        #[inline]
        #[target_feature(enable = $feat)]
        fn node_first_block(st: &mut [V; 8], pairs: &[[u8; 64]; N]) -> V {
            let p = load_words(pairs);
            let mut w = [set1(0); 16];
            w[0] = splice8(set1(u32::from(NODE_PREFIX)), p[0]);
            for t in 1..16 {
                w[t] = splice8(p[t - 1], p[t]);
            }
            compress_w(st, w);
            p[15]
        }

        /// The second block of the node messages: the pair's last byte, 0x80, zeros, the bit
        /// length 520.
        #[inline]
        #[target_feature(enable = $feat)]
        fn node_second_words(last: V) -> [V; 16] {
            let mut w = [set1(0); 16];
            w[0] = splice8(last, set1(0x8000_0000));
            w[15] = set1(65 * 8);
            w
        }

        /// SHA-256 of `N` messages of the same length `len` (`lanes[l].len() == len`): the
        /// lengths of the reserve's fixed-size nodes get a kernel of their own.
        #[target_feature(enable = $feat)]
        fn gfixed(lanes: &[&[u8]; N], len: usize, out: &mut [Digest; N]) {
            match len {
                // RFC 9162 nodes (0x01 || left || right) and sum-tree nodes (81 bytes).
                65 => gfixed_tail1::<65>(lanes, out),
                81 => gfixed_tail1::<81>(lanes, out),
                _ => gfixed_any(lanes, len, out),
            }
        }

        /// As `gfixed` for any length: blocks wholly inside the messages are read in place,
        /// the padded ones built.
        #[target_feature(enable = $feat)]
        fn gfixed_any(lanes: &[&[u8]; N], len: usize, out: &mut [Digest; N]) {
            let nblocks = block_count(len);
            let whole = (len / 64).min(nblocks - 1);
            let mut st = iv();
            for b in 0..whole {
                let rows: [&[u8; 64]; N] =
                    core::array::from_fn(|l| &lanes[l].as_chunks::<64>().0[b]);
                compress_w(&mut st, load_rows(&rows));
            }
            let mut blk = [[0u8; 64]; N];
            for b in whole..nblocks {
                for (bl, m) in blk.iter_mut().zip(lanes.iter()) {
                    fill_block(m, b, nblocks, bl);
                }
                compress_w(&mut st, load_words(&blk));
            }
            store_digests(&st, out);
        }

        /// As `gfixed_any`, every lane starting from the midstate `init` after `prefix`
        /// compressed bytes (a multiple of 64).
        #[target_feature(enable = $feat)]
        fn gfixed_from(
            init: &[u32; 8],
            prefix: u64,
            lanes: &[&[u8]; N],
            len: usize,
            out: &mut [Digest; N],
        ) {
            let nblocks = block_count(len);
            let whole = (len / 64).min(nblocks - 1);
            let mut st = [
                set1(init[0]),
                set1(init[1]),
                set1(init[2]),
                set1(init[3]),
                set1(init[4]),
                set1(init[5]),
                set1(init[6]),
                set1(init[7]),
            ];
            for b in 0..whole {
                let rows: [&[u8; 64]; N] =
                    core::array::from_fn(|l| &lanes[l].as_chunks::<64>().0[b]);
                compress_w(&mut st, load_rows(&rows));
            }
            let mut blk = [[0u8; 64]; N];
            for b in whole..nblocks {
                for (bl, m) in blk.iter_mut().zip(lanes.iter()) {
                    fill_block_after(m, prefix, b, nblocks, bl);
                }
                compress_w(&mut st, load_words(&blk));
            }
            store_digests(&st, out);
        }

        /// As `gfixed` for a length `LEN` whose padding fits in the block after its whole
        /// blocks (`64 <= LEN`, `LEN % 64 <= 55`): the words of that last block past the data
        /// are constants, so their part of the schedule folds away at compile time.
        #[target_feature(enable = $feat)]
        fn gfixed_tail1<const LEN: usize>(lanes: &[&[u8]; N], out: &mut [Digest; N]) {
            let whole = LEN / 64;
            let mut st = iv();
            for b in 0..whole {
                let rows: [&[u8; 64]; N] =
                    core::array::from_fn(|l| &lanes[l].as_chunks::<64>().0[b]);
                compress_w(&mut st, load_rows(&rows));
            }
            let r = LEN % 64;
            let mut w = if r % 4 == 1 {
                // The last 64 bytes of each message (in bounds, `LEN >= 64`) hold its `r` tail
                // bytes at their end, from byte 3 of word `15 - q` on: the tail block's words
                // are those words spliced one byte over, then the 0x80 byte.
                let q = r / 4;
                let rows: [&[u8; 64]; N] =
                    core::array::from_fn(|l| &lanes[l][LEN - 64..].as_chunks::<64>().0[0]);
                let p = load_rows(&rows);
                let mut w = [set1(0); 16];
                for j in 0..q {
                    w[j] = splice8(p[15 - q + j], p[16 - q + j]);
                }
                w[q] = splice8(p[15], set1(0x8000_0000));
                w
            } else {
                let mut blk = [[0u8; 64]; N];
                for (bl, m) in blk.iter_mut().zip(lanes.iter()) {
                    fill_block(m, whole, whole + 1, bl);
                }
                load_words(&blk)
            };
            let tail = const { tail_words(LEN) };
            for (wi, c) in w.iter_mut().zip(tail) {
                if let Some(c) = c {
                    *wi = set1(c);
                }
            }
            let s = &mut st;
            lane_compress!(s, sched_wk, w);
            store_digests(&st, out);
        }

        /// SHA-256 of `out.len()` messages of `len` bytes (`1 <= len <= 55`: one block each)
        /// laid end to end in `messages`, each continuing from the midstate `init` after
        /// `prefix` compressed bytes (a multiple of 64; `IV` and 0 for plain hashes).
        ///
        /// Each lane's block is read in place as the 64 bytes from its message's start (they
        /// run on into the next messages; only messages near the buffer's end are copied),
        /// then the words from the one holding the 0x80 byte on are replaced in registers:
        /// no per-lane block is built.
        ///
        /// # Safety
        /// The CPU must have the features this backend is compiled for.
        #[target_feature(enable = $feat)]
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
            // The padding: word `q` keeps its first `rem` data bytes and takes 0x80 after
            // them (a `Ch` with a byte mask selects between the two), words past it are zero
            // but the two of the bit length.
            let (q, rem) = (len / 4, len % 4);
            let keep = if rem == 0 { 0 } else { !0u32 << (32 - 8 * rem) };
            let pad = 0x80u32 << (24 - 8 * rem);
            let bits = (prefix.wrapping_add(len as u64)).wrapping_mul(8);
            let mut tail = [0u32; 16];
            tail[14] = (bits >> 32) as u32;
            tail[15] = bits as u32;
            let (keep, pad) = (set1(keep), set1(pad));
            let tail: [V; 16] = core::array::from_fn(|t| set1(tail[t]));
            let st0 = [
                set1(init[0]),
                set1(init[1]),
                set1(init[2]),
                set1(init[3]),
                set1(init[4]),
                set1(init[5]),
                set1(init[6]),
                set1(init[7]),
            ];
            let mut spare = [[0u8; 64]; N];
            let mut i = 0;
            while i < count {
                let k = (count - i).min(N);
                // Tail groups repeat the last real message in the unused lanes.
                let off: [usize; N] = core::array::from_fn(|j| (i + j.min(k - 1)) * len);
                for (sp, &o) in spare.iter_mut().zip(&off) {
                    if o + 64 > messages.len() {
                        let m = &messages[o..o + len];
                        sp[..len].copy_from_slice(m);
                    }
                }
                let rows: [&[u8; 64]; N] = core::array::from_fn(|j| {
                    match messages
                        .get(off[j]..off[j] + 64)
                        .and_then(|r| <&[u8; 64]>::try_from(r).ok())
                    {
                        Some(r) => r,
                        None => &spare[j],
                    }
                });
                let mut w = load_rows(&rows);
                w[q] = ch(keep, w[q], pad);
                for t in q + 1..16 {
                    w[t] = tail[t];
                }
                let mut st = st0;
                compress_w(&mut st, w);
                let mut bo = [[0u8; 32]; N];
                store_digests(&st, &mut bo);
                out[i..i + k].copy_from_slice(&bo[..k]);
                i += k;
            }
        }

        batch_drivers!($feat, N, pairs);
    };
}

pub(crate) use {
    batch_drivers, lane_compress, lane_compress2, lane_kernels, lane_round, lane_rounds8,
    lane_rounds8x2,
};
