//! The attention kernels: scores of one query against a run of keys, and the
//! weighted sum of values, over f32 or f16 rows. Each score and each output
//! value is computed the same way however many are computed together, so
//! decoding and prefill give the same bits.
//!
//! The portable kernels follow the AVX2 kernels' order of operations
//! exactly (the same lanes, chains and fused multiply-adds), so every
//! backend gives the same bits. The public entry points are the
//! [`super::Kernels`] table's; bounds are checked there.

use super::blocks::float::{dot_f32_lanes, hsum8_order};
use half::f16;

/// Portable [`super::Kernels::scores_f32`].
pub(crate) fn scores_f32(q: &[f32], rows: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    let n = q.len();
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_f32_lanes(n, |i| q[i], |i| rows[j * stride + i]) * scale;
    }
}

/// Portable [`super::Kernels::scores_f16`]: per key, two 8-lane chains of
/// fused multiply-adds over 16 elements at a time (a last 8 into the first),
/// the chains added lane-wise, then the lanes in [`hsum8_order`]. Lengths that
/// are not a multiple of 8 sum in order (no SIMD kernel takes them).
pub(crate) fn scores_f16(q: &[f32], rows: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    let n = q.len();
    for (j, o) in out.iter_mut().enumerate() {
        let key = &rows[j * stride..j * stride + n];
        if !n.is_multiple_of(8) {
            *o = q.iter().zip(key).fold(0.0f32, |s, (a, b)| s + a * b.to_f32()) * scale;
            continue;
        }
        let mut acc = [[0.0f32; 8]; 2];
        let mut i = 0;
        while i + 16 <= n {
            for (c, a) in acc.iter_mut().enumerate() {
                for (l, v) in a.iter_mut().enumerate() {
                    *v = q[i + 8 * c + l].mul_add(key[i + 8 * c + l].to_f32(), *v);
                }
            }
            i += 16;
        }
        if i < n {
            for (l, v) in acc[0].iter_mut().enumerate() {
                *v = q[i + l].mul_add(key[i + l].to_f32(), *v);
            }
        }
        let lanes: [f32; 8] = std::array::from_fn(|l| acc[0][l] + acc[1][l]);
        *o = hsum8_order(lanes) * scale;
    }
}

/// Portable [`super::Kernels::weighted_sum_f32`].
pub(crate) fn weighted_sum_f32(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let n = out.len();
    for (j, &pj) in p.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&rows[j * stride..j * stride + n]) {
            *o = pj.mul_add(x, *o);
        }
    }
}

/// Portable [`super::Kernels::weighted_sum_f16`].
pub(crate) fn weighted_sum_f16(p: &[f32], rows: &[f16], stride: usize, out: &mut [f32]) {
    let n = out.len();
    for (j, &pj) in p.iter().enumerate() {
        for (o, x) in out.iter_mut().zip(&rows[j * stride..j * stride + n]) {
            *o = pj.mul_add(x.to_f32(), *o);
        }
    }
}

/// The AVX2 + FMA + F16C kernels. Each takes the portable kernel for
/// lengths that are not a multiple of 8.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::super::dot_avx2::{dot_float, F_F32};
    use half::f16;

    /// # Safety
    /// AVX2, FMA and F16C must be available; bounds as checked by the table.
    pub(crate) unsafe fn scores_f32(q: &[f32], rows: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        let n = q.len();
        for (j, o) in out.iter_mut().enumerate() {
            let key = &rows[j * stride..j * stride + n];
            *o = dot_float::<F_F32, F_F32>(q.as_ptr().cast(), key.as_ptr().cast(), n) * scale;
        }
    }

    /// # Safety
    /// As for [`scores_f32`].
    pub(crate) unsafe fn scores_f16(q: &[f32], rows: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
        if !q.len().is_multiple_of(8) {
            return super::scores_f16(q, rows, stride, scale, out);
        }
        // Four keys at a time share the query loads; each key's sum is the
        // same sequence of operations as alone.
        let done = out.len() / 4 * 4;
        let mut quads = out.chunks_exact_mut(4);
        for (g, o) in (&mut quads).enumerate() {
            let k = |i: usize| rows[(4 * g + i) * stride..].as_ptr();
            let d = dot4_f32_f16_avx2(q, [k(0), k(1), k(2), k(3)]);
            for (o, d) in o.iter_mut().zip(d) {
                *o = d * scale;
            }
        }
        for (j, o) in quads.into_remainder().iter_mut().enumerate() {
            *o = dot_f32_f16_avx2(q, rows.as_ptr().add((done + j) * stride)) * scale;
        }
    }

    /// # Safety
    /// As for [`scores_f32`].
    pub(crate) unsafe fn weighted_sum_f32(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        if !out.len().is_multiple_of(8) {
            return super::weighted_sum_f32(p, rows, stride, out);
        }
        weighted_sum_avx2(p, rows, stride, out)
    }

    /// # Safety
    /// As for [`scores_f32`].
    pub(crate) unsafe fn weighted_sum_f16(p: &[f32], rows: &[f16], stride: usize, out: &mut [f32]) {
        if !out.len().is_multiple_of(8) {
            return super::weighted_sum_f16(p, rows, stride, out);
        }
        weighted_sum_f16_avx2(p, rows, stride, out)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `rows` must cover every row read.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_sum_avx2(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = out.len();
        for c in (0..n).step_by(8) {
            let mut acc = _mm256_loadu_ps(out.as_ptr().add(c));
            for (j, &pj) in p.iter().enumerate() {
                let v = _mm256_loadu_ps(rows.as_ptr().add(j * stride + c));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(pj), v, acc);
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(c), acc);
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C; `k` must point at `q.len()` (a multiple of 8) f16 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f32_f16_avx2(q: &[f32], k: *const f16) -> f32 {
        use std::arch::x86_64::*;
        let n = q.len();
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= n {
            for (c, a) in acc.iter_mut().enumerate() {
                let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.add(i + 8 * c) as *const __m128i));
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i + 8 * c)), kv, *a);
            }
            i += 16;
        }
        finish_dot_f16(q, k, i, acc)
    }

    /// The end of [`dot_f32_f16_avx2`] from position `i`: the last 8 values if
    /// any are left, then the sum of the two accumulators' lanes.
    ///
    /// # Safety
    /// As for [`dot_f32_f16_avx2`]; `i` is a multiple of 16 with `q.len() - i` 0 or 8.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish_dot_f16(
        q: &[f32],
        k: *const f16,
        i: usize,
        mut acc: [std::arch::x86_64::__m256; 2],
    ) -> f32 {
        use std::arch::x86_64::*;
        if i < q.len() {
            let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.add(i) as *const __m128i));
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), kv, acc[0]);
        }
        let s = _mm256_add_ps(acc[0], acc[1]);
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_movehdup_ps(h));
        _mm_cvtss_f32(h)
    }

    /// [`dot_f32_f16_avx2`] of one query against four keys, each key's sum in
    /// exactly the single-key order (the four chains only interleave).
    ///
    /// # Safety
    /// AVX2, FMA and F16C; every `k[i]` must point at `q.len()` (a multiple of 8) f16 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot4_f32_f16_avx2(q: &[f32], k: [*const f16; 4]) -> [f32; 4] {
        use std::arch::x86_64::*;
        let n = q.len();
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut i = 0;
        while i + 16 <= n {
            for c in 0..2 {
                let qv = _mm256_loadu_ps(q.as_ptr().add(i + 8 * c));
                for (a, &kr) in acc.iter_mut().zip(&k) {
                    let kv = _mm256_cvtph_ps(_mm_loadu_si128(kr.add(i + 8 * c) as *const __m128i));
                    a[c] = _mm256_fmadd_ps(qv, kv, a[c]);
                }
            }
            i += 16;
        }
        let mut out = [0.0f32; 4];
        for ((o, a), &kr) in out.iter_mut().zip(acc).zip(&k) {
            *o = finish_dot_f16(q, kr, i, a);
        }
        out
    }

    /// # Safety
    /// AVX2, FMA and F16C; `rows` must cover every row read.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_sum_f16_avx2(p: &[f32], rows: &[f16], stride: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        // Eight, then four 8-wide output chunks at a time: independent chains,
        // each summed in key order exactly as one chunk alone (one chain per
        // chunk would wait on the FMA latency at every key).
        let mut c = 0;
        while c + 64 <= out.len() {
            let mut acc = [0, 8, 16, 24, 32, 40, 48, 56].map(|o| _mm256_loadu_ps(out.as_ptr().add(c + o)));
            for (j, &pj) in p.iter().enumerate() {
                let pv = _mm256_set1_ps(pj);
                let row = rows.as_ptr().add(j * stride + c);
                for (i, a) in acc.iter_mut().enumerate() {
                    let v = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * i) as *const __m128i));
                    *a = _mm256_fmadd_ps(pv, v, *a);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * i), *a);
            }
            c += 64;
        }
        while c + 32 <= out.len() {
            let mut acc = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(out.as_ptr().add(c + o)));
            for (j, &pj) in p.iter().enumerate() {
                let pv = _mm256_set1_ps(pj);
                let row = rows.as_ptr().add(j * stride + c);
                for (i, a) in acc.iter_mut().enumerate() {
                    let v = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * i) as *const __m128i));
                    *a = _mm256_fmadd_ps(pv, v, *a);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * i), *a);
            }
            c += 32;
        }
        while c < out.len() {
            let mut acc = _mm256_loadu_ps(out.as_ptr().add(c));
            for (j, &pj) in p.iter().enumerate() {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(rows.as_ptr().add(j * stride + c) as *const __m128i));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(pj), v, acc);
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(c), acc);
            c += 8;
        }
    }
}
