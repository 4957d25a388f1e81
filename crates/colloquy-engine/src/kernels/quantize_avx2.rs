//! AVX2 activation quantizers (Q8_0, Q8_1, Q8_K), bit-identical to the
//! portable ones in `quantize.rs`: the same IEEE products, the same rounding
//! (half away from zero for Q8_0/Q8_1, ggml's half-to-even trick for Q8_K)
//! and exact integer sums. Blocks with a NaN or an infinity go to the
//! portable code, whose order-dependent max handling they need.

use std::arch::x86_64::*;

use half::f16;

/// Loads block `x` (a multiple of 8 floats) and returns its absolute max, or
/// `None` if some value is not finite.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn finite_amax(x: &[f32]) -> Option<f32> {
    let sign = _mm256_set1_ps(-0.0);
    let inf = _mm256_set1_ps(f32::INFINITY);
    let mut amax = _mm256_setzero_ps();
    let mut bad = _mm256_setzero_ps();
    for c in x.chunks_exact(8) {
        let a = _mm256_andnot_ps(sign, _mm256_loadu_ps(c.as_ptr()));
        // NaN compares unordered, infinity equal to infinity: either is "not less than inf".
        bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(a, inf));
        amax = _mm256_max_ps(amax, a);
    }
    if _mm256_movemask_ps(bad) != 0 {
        return None;
    }
    let h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps::<1>(amax));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_max_ss(h, _mm_movehdup_ps(h));
    Some(_mm_cvtss_f32(h))
}

/// `round_away` of eight finite values of magnitude below 2^23, as i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_away8(v: __m256) -> __m256i {
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    let f = _mm256_sub_ps(v, t);
    let one = _mm256_set1_ps(1.0);
    let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(f, _mm256_set1_ps(0.5)), one);
    let down = _mm256_and_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(f, _mm256_set1_ps(-0.5)), one);
    _mm256_cvtps_epi32(_mm256_sub_ps(_mm256_add_ps(t, up), down))
}

/// Packs 32 i32 values (each in -128..=127) into 32 bytes, in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack32(q: [__m256i; 4], out: *mut u8) {
    let ab = _mm256_packs_epi32(q[0], q[1]);
    let cd = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_packs_epi16(ab, cd);
    // The packs work within 128-bit lanes: restore the element order.
    let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out as *mut __m256i, ordered);
}

/// One Q8_0 (`sum: false`, 34 bytes) or Q8_1 (`sum: true`, 36 bytes) block of
/// 32 values. Returns `false` (writing nothing) for a block the portable code must take.
///
/// # Safety
/// AVX2, FMA and F16C; `x` holds 32 values and `y` 34 or 36 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_0_or_1(x: &[f32], y: &mut [u8], sum: bool) -> bool {
    let Some(amax) = finite_amax(x) else { return false };
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    let idv = _mm256_set1_ps(id);
    let mut q = [_mm256_setzero_si256(); 4];
    for (i, qi) in q.iter_mut().enumerate() {
        *qi = round_away8(_mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * i)), idv));
    }
    let at = if sum { 4 } else { 2 };
    pack32(q, y.as_mut_ptr().add(at));
    if sum {
        let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        let total = _mm_cvtsi128_si32(s);
        y[2..4].copy_from_slice(&f16::from_f32(total as f32 * d).to_bits().to_le_bytes());
    }
    true
}

/// One Q8_K block of 256 values (292 bytes). Returns `false` (writing
/// nothing) for a block the portable code must take.
///
/// # Safety
/// AVX2, FMA and F16C; `x` holds 256 values and `y` 292 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_k(x: &[f32], y: &mut [u8]) -> bool {
    let Some(amax) = finite_amax(x) else { return false };
    if amax == 0.0 {
        y.fill(0);
        return true;
    }
    // The first value of largest magnitude, as the portable loop picks it.
    let Some(&max) = x.iter().find(|v| v.abs() == amax) else { return false };
    let iscale = -127.0f32 / max;
    let scale = _mm256_set1_ps(iscale);
    let magic = _mm256_set1_ps(12_582_912.0);
    let mantissa = _mm256_set1_epi32(0x007f_ffff);
    let offset = _mm256_set1_epi32(0x0040_0000);
    let top = _mm256_set1_epi32(127);
    y[0..4].copy_from_slice(&(1.0f32 / iscale).to_le_bytes());
    for g in 0..8 {
        let mut q = [_mm256_setzero_si256(); 4];
        for (i, qi) in q.iter_mut().enumerate() {
            let v = _mm256_mul_ps(scale, _mm256_loadu_ps(x.as_ptr().add(32 * g + 8 * i)));
            let bits = _mm256_castps_si256(_mm256_add_ps(v, magic));
            let n = _mm256_sub_epi32(_mm256_and_si256(bits, mantissa), offset);
            *qi = _mm256_min_epi32(n, top);
        }
        pack32(q, y.as_mut_ptr().add(4 + 32 * g));
        // Sums of each 16 quants: elements 0-15 are q[0..2], 16-31 are q[2..4].
        for (h, pair) in [[q[0], q[1]], [q[2], q[3]]].iter().enumerate() {
            let s = _mm256_add_epi32(pair[0], pair[1]);
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            let at = 260 + 2 * (2 * g + h);
            y[at..at + 2].copy_from_slice(&(_mm_cvtsi128_si32(s) as i16).to_le_bytes());
        }
    }
    true
}
