//! Reference quantizers, matching ggml's `quantize_row_*_ref` bit for bit:
//! the activation formats (Q8_0, Q8_1, Q8_K, F16, F32) and, for tests and
//! tooling, the simple 32-wide weight formats (Q4_0, Q4_1, Q5_0, Q5_1).
//!
//! Each function takes `dst` holding exactly the blocks for `x` (checked by
//! the public wrapper in `mod.rs`).

use super::backend::Kernels;
use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, BlockQ8_K, GgmlBlock};
use super::types::{GgmlType, QK_K};
use half::{bf16, f16};

#[inline(always)]
fn put_f16(dst: &mut [u8], off: usize, v: f32) {
    dst[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// ggml's `nearest_int`: round half to even through the 1.5 * 2^23 trick.
/// Valid for |v| <= 4194303, which every caller guarantees.
#[inline(always)]
pub(crate) fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// `roundf` (half away from zero) without a libm call: truncate through i32,
/// then step by the exact fractional part. Equal to `f32::round` for every
/// input, including NaN and infinities once cast to i8 (saturating casts).
#[inline(always)]
pub(crate) fn round_away(v: f32) -> f32 {
    if v.abs() >= 8_388_608.0 || v.is_nan() {
        return v; // already integral (or NaN)
    }
    let t = v as i32 as f32;
    let f = v - t;
    if f >= 0.5 {
        t + 1.0
    } else if f <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

/// Quantizes `x` into `dst` in format `ty`. `ty` must be an activation type
/// (F32, F16, BF16, Q8_0, Q8_1, Q8_K) or one of Q4_0, Q4_1, Q5_0, Q5_1, and
/// `dst.len()` must equal `ty.row_bytes(x.len())`.
pub(crate) fn quantize(ks: &Kernels, ty: GgmlType, x: &[f32], dst: &mut [u8]) {
    match ty {
        GgmlType::F32 => {
            for (d, v) in dst.chunks_exact_mut(4).zip(x) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (d, v) in dst.chunks_exact_mut(2).zip(x) {
                d.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (d, v) in dst.chunks_exact_mut(2).zip(x) {
                d.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        GgmlType::Q8_0 => blocks::<BlockQ8_0>(x, dst, ks.q8_0),
        GgmlType::Q8_1 => blocks::<BlockQ8_1>(x, dst, ks.q8_1),
        GgmlType::Q8_K => blocks::<BlockQ8_K>(x, dst, ks.q8_k),
        GgmlType::Q4_0 => blocks::<BlockQ4_0>(x, dst, q4_0),
        GgmlType::Q4_1 => blocks::<BlockQ4_1>(x, dst, q4_1),
        GgmlType::Q5_0 => blocks::<BlockQ5_0>(x, dst, q5_0),
        GgmlType::Q5_1 => blocks::<BlockQ5_1>(x, dst, q5_1),
        GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q4_K
        | GgmlType::Q5_K
        | GgmlType::Q6_K
        | GgmlType::IQ4_NL
        | GgmlType::IQ4_XS => {
            debug_assert!(false, "no quantizer for {ty}");
            dst.fill(0);
        }
    }
}

/// Whether [`quantize`] has a quantizer for `ty`.
pub(crate) fn can_quantize(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q8_1
            | GgmlType::Q8_K
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
    )
}

#[inline(always)]
fn blocks<B: GgmlBlock>(x: &[f32], dst: &mut [u8], f: fn(&[f32], &mut [u8])) {
    for (xb, yb) in x.chunks_exact(B::ELEMS).zip(dst.chunks_exact_mut(B::BYTES)) {
        f(xb, yb);
    }
}

/// Absolute max of a block as ggml's `MAX(amax, fabsf(v))` loop computes it.
#[inline(always)]
fn amax_of(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    amax
}

/// The value of largest magnitude (first one wins), ggml's `amax < fabsf(v)` loop.
#[inline(always)]
fn signed_max_of(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// ggml's `quantize_row_q8_0_ref` for one block.
pub(crate) fn q8_0(x: &[f32], y: &mut [u8]) {
    let d = amax_of(x) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    for (q, &v) in y[2..34].iter_mut().zip(x) {
        *q = round_away(v * id) as i8 as u8;
    }
}

/// ggml's `quantize_row_q8_1_ref` for one block.
pub(crate) fn q8_1(x: &[f32], y: &mut [u8]) {
    let d = amax_of(x) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    let mut sum = 0i32;
    for (q, &v) in y[4..36].iter_mut().zip(x) {
        let qi = round_away(v * id) as i8;
        *q = qi as u8;
        sum += qi as i32;
    }
    put_f16(y, 2, sum as f32 * d);
}

/// ggml's `quantize_row_q8_K_ref` for one block.
pub(crate) fn q8_k(x: &[f32], y: &mut [u8]) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    if amax == 0.0 {
        y.fill(0);
        return;
    }
    let iscale = -127.0f32 / max;
    let mut qs = [0i8; QK_K];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    y[0..4].copy_from_slice(&(1.0f32 / iscale).to_le_bytes());
    for (o, &q) in y[4..260].iter_mut().zip(qs.iter()) {
        *o = q as u8;
    }
    for (j, s) in y[260..292].chunks_exact_mut(2).enumerate() {
        let sum: i32 = qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
        s.copy_from_slice(&(sum as i16).to_le_bytes());
    }
}

fn q4_0(x: &[f32], y: &mut [u8]) {
    let (_, max) = signed_max_of(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    for j in 0..16 {
        let x0 = x[j] * id;
        let x1 = x[j + 16] * id;
        let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
        y[2 + j] = xi0 | (xi1 << 4);
    }
}

fn min_max_of(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

fn q4_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max_of(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    for j in 0..16 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[j + 16] - min) * id;
        let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
        y[4 + j] = xi0 | (xi1 << 4);
    }
}

fn q5_0(x: &[f32], y: &mut [u8]) {
    let (_, max) = signed_max_of(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = x[j] * id;
        let x1 = x[j + 16] * id;
        let xi0 = ((x0 + 16.5) as i8).min(31) as u8;
        let xi1 = ((x1 + 16.5) as i8).min(31) as u8;
        y[6 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

fn q5_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max_of(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[j + 16] - min) * id;
        let xi0 = (x0 + 0.5) as u8;
        let xi1 = (x1 + 0.5) as u8;
        y[8 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Backend;

    #[test]
    fn round_away_equals_roundf() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut vals = vec![0.5f32, -0.5, 1.5, -1.5, 2.5, 0.49999997, -0.49999997, 126.5, -127.5, 0.0, -0.0];
        vals.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e30, -1e30, 8_388_607.5]);
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            vals.push(f32::from_bits(x as u32) % 300.0);
            vals.push((x % 2_000_000) as f32 / 1000.0 - 1000.0);
        }
        for v in vals {
            let (a, b) = (round_away(v), v.round());
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) || (a == 0.0 && b == 0.0),
                "{v}: {a} vs {b}"
            );
        }
    }

    /// The AVX2 quantizers write the portable ones' bytes, special values included.
    #[test]
    fn simd_quantizers_equal_portable() {
        let portable_set = Backend::Scalar.kernels();
        for backend in Backend::ALL.into_iter().filter(|b| *b != Backend::Scalar && b.is_available()) {
            check_quantizers(backend.kernels(), portable_set);
        }
    }

    fn check_quantizers(simd: &Kernels, portable_set: &Kernels) {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for case in 0..3000 {
            let scale = [1e-3f32, 1.0, 37.0, 1e4][case % 4];
            let mut x: Vec<f32> =
                (0..256).map(|_| ((next() % 20_001) as f32 / 10_000.0 - 1.0) * scale).collect();
            match case % 7 {
                // Ties after scaling, repeated extremes of both signs, zeros, specials.
                0 => x.iter_mut().for_each(|v| *v = (*v * 4.0).round() / 4.0),
                1 => {
                    x[3] = -scale * 2.0;
                    x[200] = scale * 2.0;
                }
                2 => x[..32].fill(0.0),
                3 => x[(next() % 256) as usize] = [f32::NAN, f32::INFINITY, -f32::INFINITY][case % 3],
                _ => {}
            }
            for (ty, bs, n) in
                [(GgmlType::Q8_0, 34, 32), (GgmlType::Q8_1, 36, 32), (GgmlType::Q8_K, 292, 256)]
            {
                let blocks_n = 256 / n;
                let mut fast = vec![0u8; bs * blocks_n];
                let mut slow = vec![0u8; bs * blocks_n];
                quantize(simd, ty, &x, &mut fast);
                let mut whole = vec![0u8; bs * blocks_n];
                quantize(portable_set, ty, &x, &mut whole);
                let portable = match ty {
                    GgmlType::Q8_0 => q8_0,
                    GgmlType::Q8_1 => q8_1,
                    _ => q8_k,
                };
                for (xb, yb) in x.chunks_exact(n).zip(slow.chunks_exact_mut(bs)) {
                    portable(xb, yb);
                }
                assert_eq!(fast, slow, "{ty} case {case} on {}", simd.backend().name());
                assert_eq!(whole, slow, "{ty} case {case}, portable set");
            }
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-127.0), -127);
        assert_eq!(nearest_int(126.6), 127);
    }
}
