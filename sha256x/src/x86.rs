//! Eight SHA-256 states in the 32-bit lanes of 256-bit registers.
//!
//! Lane `i` of every vector belongs to stream `i`: one instruction performs the
//! same step of the same round for all eight streams. AVX-512VL contributes the
//! two instructions that make this pay off: `vprord` (a rotate in one step,
//! where AVX2 needs two shifts and an OR) and `vpternlogd` (any three-input
//! boolean function in one step: the XORs of Σ/σ, `Ch` and `Maj`).
//!
//! Streams with fewer blocks than others simply leave the batch early: the
//! kernel is called with the largest block count all remaining lanes share.

#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m256i, _mm256_add_epi32, _mm256_extract_epi32, _mm256_loadu_si256, _mm256_permute2x128_si256,
    _mm256_ror_epi32, _mm256_set1_epi32, _mm256_set_epi32, _mm256_set_epi8, _mm256_setzero_si256,
    _mm256_shuffle_epi8, _mm256_srli_epi32, _mm256_ternarylogic_epi32, _mm256_unpackhi_epi32,
    _mm256_unpackhi_epi64, _mm256_unpacklo_epi32, _mm256_unpacklo_epi64,
};

use crate::BLOCK;

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// Whether this CPU can run the kernel.
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Advance every `(state, blocks)` pair by all of its blocks, eight lanes at a time.
pub(crate) fn compress_lanes(lanes: &mut [(&mut [u32; 8], &[u8])]) {
    // Group by remaining length: each pass runs the lanes that still have
    // blocks, for as many blocks as all of them have.
    let mut pending: Vec<(&mut [u32; 8], &[u8])> =
        lanes.iter_mut().filter(|(_, b)| !b.is_empty()).map(|(s, b)| (&mut **s, *b)).collect();
    while !pending.is_empty() {
        let take = pending.len().min(8);
        let group = &mut pending[..take];
        let nblocks = group.iter().map(|(_, b)| b.len() / BLOCK).min().unwrap_or(0);
        let mut states = [[0u32; 8]; 8];
        let mut data: [&[u8]; 8] = [group[0].1; 8];
        for (i, (s, b)) in group.iter().enumerate() {
            states[i] = **s;
            data[i] = &b[..nblocks * BLOCK];
        }
        // SAFETY: `available()` was true when the backend was chosen (the only
        // way to get here), so the CPU supports every feature the kernel is
        // compiled for. The kernel itself is safe code.
        unsafe { compress8(&mut states, &data, nblocks) };
        for (i, (s, b)) in group.iter_mut().enumerate() {
            **s = states[i];
            *b = &b[nblocks * BLOCK..];
        }
        pending.retain(|(_, b)| !b.is_empty());
    }
}

#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl")]
fn add(a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(a, b)
}

#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl")]
fn xor3(a: __m256i, b: __m256i, c: __m256i) -> __m256i {
    _mm256_ternarylogic_epi32::<0x96>(a, b, c)
}

/// The sixteen message words of block `blk` of the eight lanes, big-endian,
/// word `t` of every lane in vector `t` (an 8x8 transpose, twice).
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl")]
fn load_block(data: &[&[u8]; 8], off: usize) -> [__m256i; 16] {
    let bswap = _mm256_set_epi8(
        12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1,
        2, 3,
    );
    let mut out = [_mm256_setzero_si256(); 16];
    for half in 0..2 {
        // Row i: words 8*half..8*half+8 of lane i.
        let rows: [__m256i; 8] = std::array::from_fn(|i| {
            let bytes: &[u8; 32] = match data[i].get(off + 32 * half..off + 32 * half + 32) {
                Some(b) => b.try_into().unwrap_or(&[0; 32]),
                None => &[0; 32],
            };
            // SAFETY: `bytes` is exactly 32 readable bytes; loadu has no alignment requirement.
            let v = unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) };
            _mm256_shuffle_epi8(v, bswap)
        });
        // 8x8 transpose of 32-bit elements.
        let t0 = _mm256_unpacklo_epi32(rows[0], rows[1]);
        let t1 = _mm256_unpackhi_epi32(rows[0], rows[1]);
        let t2 = _mm256_unpacklo_epi32(rows[2], rows[3]);
        let t3 = _mm256_unpackhi_epi32(rows[2], rows[3]);
        let t4 = _mm256_unpacklo_epi32(rows[4], rows[5]);
        let t5 = _mm256_unpackhi_epi32(rows[4], rows[5]);
        let t6 = _mm256_unpacklo_epi32(rows[6], rows[7]);
        let t7 = _mm256_unpackhi_epi32(rows[6], rows[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        let o = &mut out[8 * half..8 * half + 8];
        o[0] = _mm256_permute2x128_si256::<0x20>(u0, u4);
        o[1] = _mm256_permute2x128_si256::<0x20>(u1, u5);
        o[2] = _mm256_permute2x128_si256::<0x20>(u2, u6);
        o[3] = _mm256_permute2x128_si256::<0x20>(u3, u7);
        o[4] = _mm256_permute2x128_si256::<0x31>(u0, u4);
        o[5] = _mm256_permute2x128_si256::<0x31>(u1, u5);
        o[6] = _mm256_permute2x128_si256::<0x31>(u2, u6);
        o[7] = _mm256_permute2x128_si256::<0x31>(u3, u7);
    }
    out
}

/// Compress `nblocks` blocks of each of the eight lanes.
#[target_feature(enable = "avx2,avx512f,avx512vl")]
fn compress8(states: &mut [[u32; 8]; 8], data: &[&[u8]; 8], nblocks: usize) {
    let lane_word = |j: usize| {
        let s = |i: usize| states[i][j] as i32;
        _mm256_set_epi32(s(7), s(6), s(5), s(4), s(3), s(2), s(1), s(0))
    };
    let mut h: [__m256i; 8] = std::array::from_fn(lane_word);
    for blk in 0..nblocks {
        let mut w = load_block(data, blk * BLOCK);
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        // Sixteen rounds with constant word indices, four times: the message
        // schedule stays in registers.
        macro_rules! round {
            ($r:expr, $i:expr) => {{
                let t = 16 * $r + $i;
                if $r > 0 {
                    let w15 = w[($i + 1) & 15];
                    let w2 = w[($i + 14) & 15];
                    let s0 = xor3(
                        _mm256_ror_epi32::<7>(w15),
                        _mm256_ror_epi32::<18>(w15),
                        _mm256_srli_epi32::<3>(w15),
                    );
                    let s1 = xor3(
                        _mm256_ror_epi32::<17>(w2),
                        _mm256_ror_epi32::<19>(w2),
                        _mm256_srli_epi32::<10>(w2),
                    );
                    w[$i] = add(add(w[$i], s0), add(w[($i + 9) & 15], s1));
                }
                let kw = add(w[$i], _mm256_set1_epi32(K[t] as i32));
                let big_s1 =
                    xor3(_mm256_ror_epi32::<6>(e), _mm256_ror_epi32::<11>(e), _mm256_ror_epi32::<25>(e));
                let ch = _mm256_ternarylogic_epi32::<0xCA>(e, f, g);
                let t1 = add(add(hh, kw), add(big_s1, ch));
                let big_s0 =
                    xor3(_mm256_ror_epi32::<2>(a), _mm256_ror_epi32::<13>(a), _mm256_ror_epi32::<22>(a));
                let maj = _mm256_ternarylogic_epi32::<0xE8>(a, b, c);
                let t2 = add(big_s0, maj);
                hh = g;
                g = f;
                f = e;
                e = add(d, t1);
                d = c;
                c = b;
                b = a;
                a = add(t1, t2);
            }};
        }
        for r in 0..4 {
            round!(r, 0);
            round!(r, 1);
            round!(r, 2);
            round!(r, 3);
            round!(r, 4);
            round!(r, 5);
            round!(r, 6);
            round!(r, 7);
            round!(r, 8);
            round!(r, 9);
            round!(r, 10);
            round!(r, 11);
            round!(r, 12);
            round!(r, 13);
            round!(r, 14);
            round!(r, 15);
        }
        let out = [a, b, c, d, e, f, g, hh];
        for (hv, o) in h.iter_mut().zip(out) {
            *hv = add(*hv, o);
        }
    }
    for (j, v) in h.iter().enumerate() {
        let lanes = [
            _mm256_extract_epi32::<0>(*v),
            _mm256_extract_epi32::<1>(*v),
            _mm256_extract_epi32::<2>(*v),
            _mm256_extract_epi32::<3>(*v),
            _mm256_extract_epi32::<4>(*v),
            _mm256_extract_epi32::<5>(*v),
            _mm256_extract_epi32::<6>(*v),
            _mm256_extract_epi32::<7>(*v),
        ];
        for (i, x) in lanes.into_iter().enumerate() {
            states[i][j] = x as u32;
        }
    }
}
