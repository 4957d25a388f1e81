//! Q4_K and Q5_K weights repacked eight rows at a time (Q6_K: see
//! `packed_q6k`).
//!
//! One group-superblock holds 256 weights of 8 consecutive rows, with
//! everything a lane (row) needs already unpacked:
//!
//! ```text
//!    0..32    d of each row, as f32
//!   32..64    dmin of each row, as f32
//!   64..128   for each of the 8 sub-blocks: each row's 6-bit scale, one byte
//!  128..192   for each sub-block: each row's 6-bit min, one byte
//!  192..      for each pair of sub-blocks k, for each 4-byte chunk c: rows 0-7's
//!             quant bytes 32k+4c..32k+4c+4 (low nibbles: sub-block 2k, high: 2k+1);
//!             Q5_K: after each chunk of k = 0, rows 0-7's ggml bytes qh[4c..4c+4]
//!             (bit j: the fifth bit of sub-block j's quant)
//! ```
//!
//! The kernel reads the bytes in the order they are stored (`qh` with the
//! first pair, and again from L1 for the others): a layout with `qh` apart
//! ran at half the bandwidth, stalled on its loads.
//!
//! That is 1,216 bytes for 8 × 144 in ggml's Q4_K layout (1,472 for 8 × 176
//! in Q5_K's): 6% (5%) more, for scales that need no unpacking.
//!
//! A 32-byte load feeds all 8 rows; each row's exact integer sums collect in
//! its own lane and are finished with the portable kernel's float steps
//! (`acc + (dx·d·sumi − dx·dmin·summ)`), so results are bit-identical to
//! `vec_dot` on the original rows.

use super::blocks::{finish_k, k4_scales, BlockQ8_K, GgmlBlock};
use super::PACK_ROWS;

/// Bytes of one group-superblock: Q4_K (`five = false`) or Q5_K.
pub(crate) const fn group_bytes(five: bool) -> usize {
    // The header, 1,024 bytes of nibbles, and Q5_K's 256 bytes of fifth bits.
    QUANTS + 1024 + if five { 256 } else { 0 }
}
const SCALES: usize = 64;
const MINS: usize = 128;
const QUANTS: usize = 192;

/// Offset of rows 0-7's quant chunk `c` of sub-block pair `k`.
const fn quants_at(five: bool, k: usize, c: usize) -> usize {
    match (five, k) {
        (false, _) => QUANTS + 256 * k + 32 * c,
        (true, 0) => QUANTS + 64 * c,
        (true, _) => QUANTS + 256 * k + 256 + 32 * c,
    }
}

/// Q5_K: offset of rows 0-7's `qh` chunk `c`.
const fn qh_at(c: usize) -> usize {
    QUANTS + 64 * c + 32
}
/// Bytes of one Q8_K activation block.
const XBLOCK: usize = <BlockQ8_K as GgmlBlock>::BYTES;

/// Writes one group-superblock from the 8 rows' superblocks `rows[r]` (144
/// bytes each, or 176 with Q5_K's `qh` before the quants).
pub(crate) fn pack_group<const FIVE: bool>(rows: [&[u8]; PACK_ROWS], out: &mut [u8]) {
    let qs = if FIVE { 48 } else { 16 };
    for (r, wb) in rows.iter().enumerate() {
        let h = |o: usize| half::f16::from_le_bytes([wb[o], wb[o + 1]]).to_f32();
        out[4 * r..4 * r + 4].copy_from_slice(&h(0).to_le_bytes());
        out[32 + 4 * r..32 + 4 * r + 4].copy_from_slice(&h(2).to_le_bytes());
        let (sc, m) = k4_scales(&wb[4..16]);
        for j in 0..8 {
            out[SCALES + 8 * j + r] = sc[j];
            out[MINS + 8 * j + r] = m[j];
        }
        for k in 0..4 {
            for c in 0..8 {
                let at = quants_at(FIVE, k, c) + 4 * r;
                out[at..at + 4].copy_from_slice(&wb[qs + 32 * k + 4 * c..qs + 32 * k + 4 * c + 4]);
            }
        }
        if FIVE {
            for c in 0..8 {
                let at = qh_at(c) + 4 * r;
                out[at..at + 4].copy_from_slice(&wb[16 + 4 * c..16 + 4 * c + 4]);
            }
        }
    }
}

/// Rebuilds row `lane`'s superblock (ggml layout) from a group-superblock.
pub(crate) fn unpack_group<const FIVE: bool>(g: &[u8], lane: usize, out: &mut [u8]) {
    let qs = if FIVE { 48 } else { 16 };
    let f = |o: usize| f32::from_le_bytes([g[o], g[o + 1], g[o + 2], g[o + 3]]);
    out[0..2].copy_from_slice(&half::f16::from_f32(f(4 * lane)).to_le_bytes());
    out[2..4].copy_from_slice(&half::f16::from_f32(f(32 + 4 * lane)).to_le_bytes());
    let sc: [u8; 8] = std::array::from_fn(|j| g[SCALES + 8 * j + lane]);
    let m: [u8; 8] = std::array::from_fn(|j| g[MINS + 8 * j + lane]);
    // The inverse of ggml's 12-byte packing of eight 6-bit scales and mins.
    let s = &mut out[4..16];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    for k in 0..4 {
        for c in 0..8 {
            let at = quants_at(FIVE, k, c) + 4 * lane;
            out[qs + 32 * k + 4 * c..qs + 32 * k + 4 * c + 4].copy_from_slice(&g[at..at + 4]);
        }
    }
    if FIVE {
        for c in 0..8 {
            let at = qh_at(c) + 4 * lane;
            out[16 + 4 * c..16 + 4 * c + 4].copy_from_slice(&g[at..at + 4]);
        }
    }
}

/// Portable dots of one packed group (`nb` group-superblocks) with `R`
/// Q8_K activation rows: `[t][r]`, the same bits as the scalar `vec_dot`.
pub(crate) fn dot_group<const R: usize, const FIVE: bool>(
    g: &[u8],
    xs: [&[u8]; R],
    nb: usize,
) -> [[f32; 8]; 4] {
    let gbytes = group_bytes(FIVE);
    let mut acc = [[0.0f32; 8]; 4];
    let i32_at = |b: &[u8], o: usize| i32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    for ib in 0..nb {
        let gb = &g[ib * gbytes..(ib + 1) * gbytes];
        for (t, x) in xs.iter().enumerate() {
            let xb = &x[ib * XBLOCK..(ib + 1) * XBLOCK];
            let dx = f32::from_le_bytes([xb[0], xb[1], xb[2], xb[3]]);
            let bsum = |j: usize| i16::from_le_bytes([xb[260 + 2 * j], xb[261 + 2 * j]]) as i32;
            for lane in 0..PACK_ROWS {
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..8 {
                    let (k, nibble) = (j / 2, j % 2);
                    let mut d = 0i32;
                    for c in 0..8 {
                        for e in 0..4 {
                            let byte = gb[quants_at(FIVE, k, c) + 4 * lane + e];
                            let mut q = if nibble == 0 { byte & 0xF } else { byte >> 4 };
                            if FIVE {
                                q |= ((gb[qh_at(c) + 4 * lane + e] >> j) & 1) << 4;
                            }
                            d += q as i32 * xb[4 + 32 * j + 4 * c + e] as i8 as i32;
                        }
                    }
                    sumi += gb[SCALES + 8 * j + lane] as i32 * d;
                    summ += gb[MINS + 8 * j + lane] as i32 * (bsum(2 * j) + bsum(2 * j + 1));
                }
                let f = |o: usize| f32::from_bits(i32_at(gb, o) as u32);
                acc[t][lane] = finish_k(acc[t][lane], dx, f(4 * lane), f(32 + 4 * lane), sumi, summ);
            }
        }
    }
    acc
}

/// AVX2 versions of [`dot_group`], with the same bits: `plain` (AVX2) and
/// `vnni` (AVX-VNNI, whose `vpdpbusd` sums each lane's four products in i32).
#[cfg(target_arch = "x86_64")]
macro_rules! q4k_module {
    ($module:ident, $feat:literal, $vnni:literal) => {
        pub(crate) mod $module {
            use super::{group_bytes, qh_at, quants_at, MINS, SCALES, XBLOCK};
            use std::arch::x86_64::*;

            /// # Safety
            /// The CPU must have the module's features; `g` must cover `nb`
            /// group-superblocks (Q5_K's with `FIVE`) and every `xs[t]` `nb` Q8_K blocks.
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn dot_group<const R: usize, const FIVE: bool>(
                g: *const u8,
                xs: [*const u8; R],
                nb: usize,
            ) -> [[f32; 8]; 4] {
                let bcast4 = |p: *const u8| _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32));
                let bytes8 = |p: *const u8| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
                let (m4, m10) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x10));
                // Plain: each lane's pair of i16 sums stays within 8 * 2 * 15 * 127 = 30,480
                // for 4-bit quants; 5-bit ones (up to 31) take two halves of 4 chunks.
                let halves = if FIVE && !$vnni { 2 } else { 1 };
                let mut acc = [_mm256_setzero_ps(); 4];
                for ib in 0..nb {
                    let gb = g.add(ib * group_bytes(FIVE));
                    crate::kernels::packed_avx2::prefetch_ahead(gb, group_bytes(FIVE));
                    let mut sumi = [_mm256_setzero_si256(); R];
                    for k in 0..4 {
                        // Bits 2k and 2k + 1 of qh, moved to bits 0 and 1 of each byte
                        // (a 16-bit shift: the high byte's bits land above bit 1).
                        let shift = _mm_cvtsi32_si128(2 * k as i32);
                        let (sl, sh) = (bytes8(gb.add(SCALES + 16 * k)), bytes8(gb.add(SCALES + 16 * k + 8)));
                        for half in 0..halves {
                            let mut lo = [_mm256_setzero_si256(); R];
                            let mut hi = [_mm256_setzero_si256(); R];
                            for c in half * 8 / halves..(half + 1) * 8 / halves {
                                let w = _mm256_loadu_si256(gb.add(quants_at(FIVE, k, c)) as *const __m256i);
                                let mut wl = _mm256_and_si256(w, m4);
                                let mut wh = _mm256_and_si256(_mm256_srli_epi16::<4>(w), m4);
                                if FIVE {
                                    let qh = _mm256_srl_epi16(
                                        _mm256_loadu_si256(gb.add(qh_at(c)) as *const __m256i),
                                        shift,
                                    );
                                    wl = _mm256_or_si256(
                                        wl,
                                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m10),
                                    );
                                    wh = _mm256_or_si256(
                                        wh,
                                        _mm256_and_si256(_mm256_slli_epi16::<3>(qh), m10),
                                    );
                                }
                                for t in 0..R {
                                    let xb = xs[t].add(ib * XBLOCK + 4 + 64 * k + 4 * c);
                                    let (yl, yh) = (bcast4(xb), bcast4(xb.add(32)));
                                    if $vnni {
                                        lo[t] = _mm256_dpbusd_avx_epi32(lo[t], wl, yl);
                                        hi[t] = _mm256_dpbusd_avx_epi32(hi[t], wh, yh);
                                    } else {
                                        lo[t] = _mm256_add_epi16(lo[t], _mm256_maddubs_epi16(wl, yl));
                                        hi[t] = _mm256_add_epi16(hi[t], _mm256_maddubs_epi16(wh, yh));
                                    }
                                }
                            }
                            for t in 0..R {
                                let s = if $vnni {
                                    _mm256_add_epi32(
                                        _mm256_mullo_epi32(lo[t], sl),
                                        _mm256_mullo_epi32(hi[t], sh),
                                    )
                                } else {
                                    // Each lane's scale as the i16 pair (sc, sc), for its pair of sums.
                                    let pair = |v: __m256i| _mm256_or_si256(v, _mm256_slli_epi32::<16>(v));
                                    _mm256_add_epi32(
                                        _mm256_madd_epi16(lo[t], pair(sl)),
                                        _mm256_madd_epi16(hi[t], pair(sh)),
                                    )
                                };
                                sumi[t] = _mm256_add_epi32(sumi[t], s);
                            }
                        }
                    }
                    let wd = _mm256_loadu_ps(gb as *const f32);
                    let wdmin = _mm256_loadu_ps(gb.add(32) as *const f32);
                    for t in 0..R {
                        let xb = xs[t].add(ib * XBLOCK);
                        // Sums of each 32 activations, from the Q8_K sums of 16.
                        let ones = _mm256_set1_epi16(1);
                        let pairs =
                            _mm256_madd_epi16(_mm256_loadu_si256(xb.add(260) as *const __m256i), ones);
                        let mut bs = [0i32; 8];
                        _mm256_storeu_si256(bs.as_mut_ptr() as *mut __m256i, pairs);
                        let mut summ = _mm256_setzero_si256();
                        for (j, &b) in bs.iter().enumerate() {
                            let m = bytes8(gb.add(MINS + 8 * j));
                            summ = _mm256_add_epi32(summ, _mm256_mullo_epi32(m, _mm256_set1_epi32(b)));
                        }
                        let dx = _mm256_set1_ps(std::ptr::read_unaligned(xb as *const f32));
                        let d = _mm256_mul_ps(dx, wd);
                        let dmin = _mm256_mul_ps(dx, wdmin);
                        let v = _mm256_sub_ps(
                            _mm256_mul_ps(d, _mm256_cvtepi32_ps(sumi[t])),
                            _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(summ)),
                        );
                        acc[t] = _mm256_add_ps(acc[t], v);
                    }
                }
                let mut out = [[0.0f32; 8]; 4];
                for (o, a) in out.iter_mut().zip(acc) {
                    _mm256_storeu_ps(o.as_mut_ptr(), a);
                }
                out
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
q4k_module!(plain, "avx2,fma,f16c", false);
#[cfg(target_arch = "x86_64")]
q4k_module!(vnni, "avx2,fma,f16c,avxvnni", true);
