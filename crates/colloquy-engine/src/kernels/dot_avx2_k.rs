//! AVX2 kernels for the K-quants (Q4_K, Q5_K, Q6_K against Q8_K activations).
//!
//! Each super-block's integer sums are reduced exactly to one `i32` per row
//! and then finished with the same scalar float code as the portable kernels
//! ([`finish_k`], [`finish_q6k`]), so these dots are bit-identical to
//! `dot_scalar` and independent of how many rows run together.

use super::blocks::{
    finish_k, finish_q6k, BlockIQ4_XS, BlockQ2_K, BlockQ3_K, BlockQ8_K, GgmlBlock, IQ4_VALUES,
};
use super::dot_avx2::{h2f, hsum_i32};
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn rd_u16(p: *const u8) -> u16 {
    std::ptr::read_unaligned(p as *const u16)
}
#[inline(always)]
unsafe fn rd_u32(p: *const u8) -> u32 {
    std::ptr::read_unaligned(p as *const u32)
}
#[inline(always)]
unsafe fn rd_f32(p: *const u8) -> f32 {
    std::ptr::read_unaligned(p as *const f32)
}

/// The horizontal sums of four vectors, as `[Σa, Σb, Σc, Σd]` (exact, wrapping).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum4(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m128i {
    let abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256::<1>(abcd))
}

/// Shuffle mask that broadcasts i16 lane `lo` over the low 128-bit half and
/// i16 lane `hi` over the high half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pick16(lo: i32, hi: i32) -> __m256i {
    let l = (2 * lo) | ((2 * lo + 1) << 8);
    let h = (2 * hi) | ((2 * hi + 1) << 8);
    _mm256_setr_epi32(
        l | (l << 16),
        l | (l << 16),
        l | (l << 16),
        l | (l << 16),
        h | (h << 16),
        h | (h << 16),
        h | (h << 16),
        h | (h << 16),
    )
}

/// Q4_K (`FIVE = false`) or Q5_K (`FIVE = true`) weight row of `nb`
/// super-blocks against `R` Q8_K activation rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must cover `nb` weight
/// super-blocks and every `xs[r]` `nb` Q8_K blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q45k<const FIVE: bool, const R: usize>(
    w: *const u8,
    xs: [*const u8; R],
    nb: usize,
) -> [f32; R] {
    let bsz = if FIVE { 176 } else { 144 };
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [0.0f32; R];
    for ib in 0..nb {
        let wb = w.add(ib * bsz);
        let wd = h2f(rd_u16(wb));
        let wdmin = h2f(rd_u16(wb.add(2)));
        // 6-bit scales and mins, four per u32.
        let a0 = rd_u32(wb.add(4));
        let a1 = rd_u32(wb.add(8));
        let a2 = rd_u32(wb.add(12));
        let sc_lo = a0 & 0x3f3f_3f3f;
        let m_lo = a1 & 0x3f3f_3f3f;
        let sc_hi = (a2 & 0x0f0f_0f0f) | (((a0 >> 6) & 0x0303_0303) << 4);
        let m_hi = ((a2 >> 4) & 0x0f0f_0f0f) | (((a1 >> 6) & 0x0303_0303) << 4);
        let sc8 = _mm_set_epi32(0, 0, sc_hi as i32, sc_lo as i32);
        let scv = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sc8));
        let m8 = _mm_set_epi32(0, 0, m_hi as i32, m_lo as i32);
        // [m0, m0, m1, m1, ..., m7, m7] as i16, matching bsums pairs.
        let m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));

        let qs = wb.add(if FIVE { 48 } else { 16 });
        let mut q = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            let v = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
            q[2 * c] = _mm256_and_si256(v, m4);
            q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
        }
        if FIVE {
            let qh = _mm256_loadu_si256(wb.add(16) as *const __m256i);
            let sixteen = _mm256_set1_epi8(0x10);
            for (j, qj) in q.iter_mut().enumerate() {
                let bm = _mm256_set1_epi8((1u8 << j) as i8);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bm), bm);
                *qj = _mm256_or_si256(*qj, _mm256_and_si256(set, sixteen));
            }
        }
        let mut s = [_mm256_setzero_si256(); 8];
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = _mm256_shuffle_epi8(scv, pick16(j as i32, j as i32));
        }

        let mut sums = [_mm256_setzero_si256(); R];
        let mut mins = [_mm256_setzero_si256(); R];
        for r in 0..R {
            let xb = xs[r].add(ib * 292);
            let mut sumv = _mm256_setzero_si256();
            for j in 0..8 {
                let y = _mm256_loadu_si256(xb.add(4 + 32 * j) as *const __m256i);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], y), s[j]);
                sumv = _mm256_add_epi32(sumv, p);
            }
            let bs = _mm256_loadu_si256(xb.add(260) as *const __m256i);
            sums[r] = sumv;
            mins[r] = _mm256_madd_epi16(bs, m16);
        }
        if R == 4 {
            // Four rows at once: the same exact sums and float steps, lane by lane.
            let sumi = hsum4(sums[0], sums[1], sums[2], sums[3]);
            let summ = hsum4(mins[0], mins[1], mins[2], mins[3]);
            let dx = _mm_setr_ps(
                rd_f32(xs[0].add(ib * 292)),
                rd_f32(xs[1].add(ib * 292)),
                rd_f32(xs[2].add(ib * 292)),
                rd_f32(xs[3].add(ib * 292)),
            );
            let d = _mm_mul_ps(dx, _mm_set1_ps(wd));
            let dmin = _mm_mul_ps(dx, _mm_set1_ps(wdmin));
            let t = _mm_sub_ps(_mm_mul_ps(d, _mm_cvtepi32_ps(sumi)), _mm_mul_ps(dmin, _mm_cvtepi32_ps(summ)));
            _mm_storeu_ps(acc.as_mut_ptr(), _mm_add_ps(_mm_loadu_ps(acc.as_ptr()), t));
        } else {
            for r in 0..R {
                let dx = rd_f32(xs[r].add(ib * 292));
                acc[r] = finish_k(acc[r], dx, wd, wdmin, hsum_i32(sums[r]), hsum_i32(mins[r]));
            }
        }
    }
    acc
}

/// Q6_K weight row of `nb` super-blocks against `R` Q8_K activation rows.
///
/// The 6-bit quants are used unsigned (0..63) and the `-32` offset is taken
/// out exactly through the activation's 16-wide sums.
///
/// # Safety
/// As for [`dot_q45k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q6k<const R: usize>(w: *const u8, xs: [*const u8; R], nb: usize) -> [f32; R] {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [0.0f32; R];
    for ib in 0..nb {
        let wb = w.add(ib * 210);
        let wd = h2f(rd_u16(wb.add(208)));
        // 16 signed scales as i16: [sc0..sc7 | sc8..sc15].
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(192) as *const __m128i));
        let halves = [
            _mm256_permute4x64_epi64::<0b01_00_01_00>(sc16),
            _mm256_permute4x64_epi64::<0b11_10_11_10>(sc16),
        ];
        let mut q = [_mm256_setzero_si256(); 8];
        let mut s = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            let ql0 = _mm256_loadu_si256(wb.add(64 * h) as *const __m256i);
            let ql1 = _mm256_loadu_si256(wb.add(64 * h + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(wb.add(128 + 32 * h) as *const __m256i);
            let hb0 = _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)));
            let hb1 = _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C)));
            let hb2 = _mm256_and_si256(qh, _mm256_set1_epi8(0x30));
            let hb3 = _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0xC0u8 as i8)));
            q[4 * h] = _mm256_or_si256(_mm256_and_si256(ql0, m4), hb0);
            q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), hb1);
            q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), hb2);
            q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4), hb3);
            for g in 0..4 {
                s[4 * h + g] = _mm256_shuffle_epi8(halves[h], pick16(2 * g as i32, 2 * g as i32 + 1));
            }
        }
        let mut sums = [_mm256_setzero_si256(); R];
        let mut corrs = [_mm256_setzero_si256(); R];
        for r in 0..R {
            let xb = xs[r].add(ib * 292);
            let mut sumv = _mm256_setzero_si256();
            for k in 0..8 {
                let y = _mm256_loadu_si256(xb.add(4 + 32 * k) as *const __m256i);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], y), s[k]);
                sumv = _mm256_add_epi32(sumv, p);
            }
            let bs = _mm256_loadu_si256(xb.add(260) as *const __m256i);
            sums[r] = sumv;
            corrs[r] = _mm256_madd_epi16(bs, sc16);
        }
        if R == 4 {
            // Four rows at once: the same exact sums and float steps, lane by lane.
            let corr = hsum4(corrs[0], corrs[1], corrs[2], corrs[3]);
            let sumi = _mm_sub_epi32(hsum4(sums[0], sums[1], sums[2], sums[3]), _mm_slli_epi32::<5>(corr));
            let dx = _mm_setr_ps(
                rd_f32(xs[0].add(ib * 292)),
                rd_f32(xs[1].add(ib * 292)),
                rd_f32(xs[2].add(ib * 292)),
                rd_f32(xs[3].add(ib * 292)),
            );
            let t = _mm_mul_ps(_mm_mul_ps(dx, _mm_set1_ps(wd)), _mm_cvtepi32_ps(sumi));
            _mm_storeu_ps(acc.as_mut_ptr(), _mm_add_ps(_mm_loadu_ps(acc.as_ptr()), t));
        } else {
            for r in 0..R {
                let corr = hsum_i32(corrs[r]);
                let sumi = hsum_i32(sums[r]).wrapping_sub(corr.wrapping_mul(32));
                acc[r] = finish_q6k(acc[r], rd_f32(xs[r].add(ib * 292)), wd, sumi);
            }
        }
    }
    acc
}

/// IQ4_XS weight row of `nb` super-blocks against `R` Q8_K activation rows:
/// each 32-wide sub-block's values are looked up by a byte shuffle, its exact
/// integer dot (the sign trick, as for Q8_0) is scaled by the sub-block's
/// scale, and the super-block ends with [`finish_q6k`], as the portable dot.
///
/// # Safety
/// As for [`dot_q45k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_iq4xs<const R: usize>(w: *const u8, xs: [*const u8; R], nb: usize) -> [f32; R] {
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4_VALUES.as_ptr() as *const __m128i));
    let (m4, ones) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(1));
    let xbytes = <BlockQ8_K as GgmlBlock>::BYTES;
    let mut acc = [0.0f32; R];
    for ib in 0..nb {
        // SAFETY: the caller sized the row; blocks have alignment 1.
        let blk = &*(w.add(ib * <BlockIQ4_XS as GgmlBlock>::BYTES) as *const BlockIQ4_XS);
        let wd = h2f(u16::from_le_bytes(blk.d.0));
        let mut v = [_mm256_setzero_si256(); 8];
        for (j, vj) in v.iter_mut().enumerate() {
            let t = _mm_loadu_si128(blk.qs.as_ptr().add(16 * j) as *const __m128i);
            let idx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(t), t), m4);
            *vj = _mm256_shuffle_epi8(table, idx);
        }
        for r in 0..R {
            let xb = xs[r].add(ib * xbytes);
            let mut sumi = 0i32;
            for (j, vj) in v.iter().enumerate() {
                let y = _mm256_loadu_si256(xb.add(4 + 32 * j) as *const __m256i);
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(*vj, *vj), _mm256_sign_epi8(y, *vj));
                sumi += blk.scale(j) * hsum_i32(_mm256_madd_epi16(p, ones));
            }
            acc[r] = finish_q6k(acc[r], rd_f32(xb), wd, sumi);
        }
    }
    acc
}

/// The 2-bit groups of a Q2_K/Q3_K super-block: group `4 h + s` holds
/// elements `128 h + 32 s ..+ 32`, bits `2 s` of bytes `32 h ..+ 32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn two_bit_groups(qs: *const u8) -> [__m256i; 8] {
    let m3 = _mm256_set1_epi8(3);
    let mut g = [_mm256_setzero_si256(); 8];
    for h in 0..2 {
        let v = _mm256_loadu_si256(qs.add(32 * h) as *const __m256i);
        g[4 * h] = _mm256_and_si256(v, m3);
        g[4 * h + 1] = _mm256_and_si256(_mm256_srli_epi16::<2>(v), m3);
        g[4 * h + 2] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m3);
        g[4 * h + 3] = _mm256_and_si256(_mm256_srli_epi16::<6>(v), m3);
    }
    g
}

/// Sixteen i16 lanes: `a` for the first 8 (the group's first 16 bytes), `b` for the rest.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn two_scales(a: i16, b: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(b), _mm_set1_epi16(a))
}

/// `sum_k sc[k] . (q[k] x activation group k)` over the eight 32-byte groups
/// of a Q8_K block at `xb`, as 8 exact i32 lanes (unsigned `q` up to 7).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scaled_groups(q: &[__m256i; 8], sc: &[__m256i; 8], xb: *const u8) -> __m256i {
    let mut sumv = _mm256_setzero_si256();
    for k in 0..8 {
        let y = _mm256_loadu_si256(xb.add(4 + 32 * k) as *const __m256i);
        sumv = _mm256_add_epi32(sumv, _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], y), sc[k]));
    }
    sumv
}

/// The activation's sum of quants `16 j ..+ 16` (Q8_K's `bsums`).
#[inline(always)]
unsafe fn bsum(xb: *const u8, j: usize) -> i32 {
    i16::from_le_bytes([*xb.add(260 + 2 * j), *xb.add(261 + 2 * j)]) as i32
}

/// Q2_K weight row of `nb` super-blocks against `R` Q8_K activation rows: the
/// unsigned 2-bit quants against the activations (exact), each 16-element
/// sum times its 4-bit scale, the mins through the activation's 16-wide sums,
/// then [`finish_k`], as the portable dot.
///
/// # Safety
/// As for [`dot_q45k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q2k<const R: usize>(w: *const u8, xs: [*const u8; R], nb: usize) -> [f32; R] {
    let xbytes = <BlockQ8_K as GgmlBlock>::BYTES;
    let mut acc = [0.0f32; R];
    for ib in 0..nb {
        // SAFETY: the caller sized the row; blocks have alignment 1.
        let blk = &*(w.add(ib * <BlockQ2_K as GgmlBlock>::BYTES) as *const BlockQ2_K);
        let (wd, wdmin) = (h2f(u16::from_le_bytes(blk.d.0)), h2f(u16::from_le_bytes(blk.dmin.0)));
        let q = two_bit_groups(blk.qs.as_ptr());
        let sc: [__m256i; 8] = std::array::from_fn(|k| {
            two_scales((blk.scales[2 * k] & 0xF) as i16, (blk.scales[2 * k + 1] & 0xF) as i16)
        });
        for r in 0..R {
            let xb = xs[r].add(ib * xbytes);
            let sumv = scaled_groups(&q, &sc, xb);
            let mut summ = 0i32;
            for j in 0..16 {
                summ += (blk.scales[j] >> 4) as i32 * bsum(xb, j);
            }
            acc[r] = finish_k(acc[r], rd_f32(xb), wd, wdmin, hsum_i32(sumv), summ);
        }
    }
    acc
}

/// Q3_K weight row of `nb` super-blocks against `R` Q8_K activation rows: the
/// quants as `q + 4` (0..7, unsigned, the high bit at bit 2) against the
/// activations, each 16-element sum times its signed scale, the `-4` taken
/// out exactly through the activation's 16-wide sums, then [`finish_q6k`].
///
/// # Safety
/// As for [`dot_q45k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q3k<const R: usize>(w: *const u8, xs: [*const u8; R], nb: usize) -> [f32; R] {
    let xbytes = <BlockQ8_K as GgmlBlock>::BYTES;
    let one = _mm256_set1_epi8(1);
    let mut acc = [0.0f32; R];
    for ib in 0..nb {
        // SAFETY: the caller sized the row; blocks have alignment 1.
        let blk = &*(w.add(ib * <BlockQ3_K as GgmlBlock>::BYTES) as *const BlockQ3_K);
        let wd = h2f(u16::from_le_bytes(blk.d.0));
        let scales = blk.scales();
        let hmask = _mm256_loadu_si256(blk.hmask.as_ptr() as *const __m256i);
        let mut q = two_bit_groups(blk.qs.as_ptr());
        for (k, qk) in q.iter_mut().enumerate() {
            // Group k's high bits are bit k of each hmask byte.
            let hb = _mm256_and_si256(_mm256_srl_epi16(hmask, _mm_cvtsi32_si128(k as i32)), one);
            *qk = _mm256_or_si256(*qk, _mm256_slli_epi16::<2>(hb));
        }
        let sc: [__m256i; 8] =
            std::array::from_fn(|k| two_scales(scales[2 * k] as i16, scales[2 * k + 1] as i16));
        for r in 0..R {
            let xb = xs[r].add(ib * xbytes);
            let sumv = scaled_groups(&q, &sc, xb);
            let mut corr = 0i32;
            for (j, &s) in scales.iter().enumerate() {
                corr += s as i32 * bsum(xb, j);
            }
            let sumi = hsum_i32(sumv).wrapping_sub(corr.wrapping_mul(4));
            acc[r] = finish_q6k(acc[r], rd_f32(xb), wd, sumi);
        }
    }
    acc
}
