//! Portable dot-product kernels: one weight row against `R` activation rows.
//!
//! Each kernel unpacks a weight block once and then, for every activation
//! row, runs exactly the same sequence of operations as it would for that row
//! alone, so the result for a row never depends on `R` (batch invariance).
//! These kernels define the result of every quantized dot product: each
//! block's integer dot `sumi` is exact, and the float steps per block, in
//! block order, are:
//!
//! * Q4_0/Q5_0/Q8_0: `acc = acc + sumi as f32 * (d_w * d_x)`
//! * Q4_1/Q5_1: `acc = acc + ((d_w * d_x) * sumi as f32 + m_w * s_x)`
//! * K-quants: [`finish_k`] / [`finish_q6k`] once per super-block.
//!
//! The SIMD kernels (unpacked, packed, AVX2 or AVX-VNNI) compute the same
//! exact integers and apply these same IEEE operations lane by lane, so all
//! backends agree bit for bit.
//! F32/F16/BF16: eight interleaved accumulators, combined pairwise (the SIMD
//! kernels use their own fixed order here).

use super::dequant::{f16_at_t, f16_table, scale_min_k4};
use super::types::GgmlType;
use half::bf16;

/// Rows of activations, one byte slice per row.
pub(crate) type Rows<'a, const R: usize> = [&'a [u8]; R];

/// Dot products of weight row `w` (type `ty`, `n` elements) with the `R` rows
/// in `xs` (each in `ty.vec_dot_type()` format). Lengths are pre-validated.
pub(crate) fn dot_rows<const R: usize>(ty: GgmlType, w: &[u8], xs: Rows<'_, R>, n: usize) -> [f32; R] {
    match ty {
        GgmlType::F32 => dot_float(w, xs, n, rd_f32, rd_f32),
        GgmlType::F16 => dot_float(w, xs, n, rd_f16, rd_f16),
        GgmlType::BF16 => dot_float(w, xs, n, rd_bf16, rd_f32),
        GgmlType::Q4_0 => q32_sym(w, xs, 18, unpack_q4_0),
        GgmlType::Q5_0 => q32_sym(w, xs, 22, unpack_q5_0),
        GgmlType::Q8_0 => q32_sym(w, xs, 34, unpack_q8_0),
        GgmlType::Q4_1 => q32_min(w, xs, 20, unpack_q4_1),
        GgmlType::Q5_1 => q32_min(w, xs, 24, unpack_q5_1),
        GgmlType::Q4_K => q4k_q5k(w, xs, false),
        GgmlType::Q5_K => q4k_q5k(w, xs, true),
        GgmlType::Q6_K => q6k(w, xs),
        _ => {
            debug_assert!(false, "dot for unsupported type {ty}");
            [0.0; R]
        }
    }
}

// ---------------------------------------------------------------- floats

#[inline(always)]
fn rd_f32(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}
#[inline(always)]
fn rd_f16(b: &[u8], i: usize) -> f32 {
    f16_at_t(f16_table(), b, 2 * i)
}
#[inline(always)]
fn rd_bf16(b: &[u8], i: usize) -> f32 {
    bf16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
}

/// Combines eight lane accumulators in a fixed pairwise order.
#[inline(always)]
pub(crate) fn combine8(a: [f32; 8]) -> f32 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

#[inline(always)]
fn dot_float<const R: usize, FW, FX>(w: &[u8], xs: Rows<'_, R>, n: usize, rw: FW, rx: FX) -> [f32; R]
where
    FW: Fn(&[u8], usize) -> f32,
    FX: Fn(&[u8], usize) -> f32,
{
    let mut acc = [[0.0f32; 8]; R];
    let mut wv = [0.0f32; 8];
    let mut i = 0;
    while i < n {
        let len = (n - i).min(8);
        for (l, v) in wv.iter_mut().enumerate().take(len) {
            *v = rw(w, i + l);
        }
        for r in 0..R {
            for l in 0..len {
                acc[r][l] += wv[l] * rx(xs[r], i + l);
            }
        }
        i += 8;
    }
    acc.map(combine8)
}

/// Plain scalar f32 dot with the same lane structure as [`dot_float`].
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for l in 0..ra.len() {
        acc[l] += ra[l] * rb[l];
    }
    combine8(acc)
}

// ---------------------------------------------------------- 32-wide quants

#[inline(always)]
fn unpack_q4_0(b: &[u8], q: &mut [i8; 32]) {
    for j in 0..16 {
        q[j] = (b[2 + j] & 0xF) as i8 - 8;
        q[j + 16] = (b[2 + j] >> 4) as i8 - 8;
    }
}
#[inline(always)]
fn unpack_q5_0(b: &[u8], q: &mut [i8; 32]) {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let h0 = (((qh >> j) & 1) << 4) as u8;
        let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
        q[j] = ((b[6 + j] & 0xF) | h0) as i8 - 16;
        q[j + 16] = ((b[6 + j] >> 4) | h1) as i8 - 16;
    }
}
#[inline(always)]
fn unpack_q8_0(b: &[u8], q: &mut [i8; 32]) {
    for j in 0..32 {
        q[j] = b[2 + j] as i8;
    }
}
#[inline(always)]
fn unpack_q4_1(b: &[u8], q: &mut [i8; 32]) {
    for j in 0..16 {
        q[j] = (b[4 + j] & 0xF) as i8;
        q[j + 16] = (b[4 + j] >> 4) as i8;
    }
}
#[inline(always)]
fn unpack_q5_1(b: &[u8], q: &mut [i8; 32]) {
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let h0 = (((qh >> j) & 1) << 4) as u8;
        let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
        q[j] = ((b[8 + j] & 0xF) | h0) as i8;
        q[j + 16] = ((b[8 + j] >> 4) | h1) as i8;
    }
}

#[inline(always)]
fn idot32(q: &[i8; 32], x: &[u8]) -> i32 {
    let mut s = 0i32;
    for j in 0..32 {
        s += q[j] as i32 * (x[j] as i8) as i32;
    }
    s
}

/// Weight types without a min (paired with Q8_0: `d`, then 32 quants).
#[inline(always)]
fn q32_sym<const R: usize, U: Fn(&[u8], &mut [i8; 32])>(
    w: &[u8],
    xs: Rows<'_, R>,
    bsz: usize,
    unpack: U,
) -> [f32; R] {
    let t = f16_table();
    let mut acc = [0.0f32; R];
    let mut q = [0i8; 32];
    for (ib, wb) in w.chunks_exact(bsz).enumerate() {
        unpack(wb, &mut q);
        let dw = f16_at_t(t, wb, 0);
        for r in 0..R {
            let xb = &xs[r][34 * ib..34 * ib + 34];
            let sumi = idot32(&q, &xb[2..]);
            acc[r] += sumi as f32 * (dw * f16_at_t(t, xb, 0));
        }
    }
    acc
}

/// Weight types with a min (paired with Q8_1: `d`, `s`, then 32 quants).
#[inline(always)]
fn q32_min<const R: usize, U: Fn(&[u8], &mut [i8; 32])>(
    w: &[u8],
    xs: Rows<'_, R>,
    bsz: usize,
    unpack: U,
) -> [f32; R] {
    let t = f16_table();
    let mut acc = [0.0f32; R];
    let mut q = [0i8; 32];
    for (ib, wb) in w.chunks_exact(bsz).enumerate() {
        unpack(wb, &mut q);
        let dw = f16_at_t(t, wb, 0);
        let mw = f16_at_t(t, wb, 2);
        for r in 0..R {
            let xb = &xs[r][36 * ib..36 * ib + 36];
            let sumi = idot32(&q, &xb[4..]);
            acc[r] += (dw * f16_at_t(t, xb, 0)) * sumi as f32 + mw * f16_at_t(t, xb, 2);
        }
    }
    acc
}

// ------------------------------------------------------------------ K-quants

/// Q8_K block field accessors: `d` (f32), `qs` (256 x i8), `bsums` (16 x i16).
#[inline(always)]
pub(crate) fn q8k_d(xb: &[u8]) -> f32 {
    f32::from_le_bytes([xb[0], xb[1], xb[2], xb[3]])
}
#[inline(always)]
pub(crate) fn q8k_bsum(xb: &[u8], j: usize) -> i32 {
    i16::from_le_bytes([xb[260 + 2 * j], xb[261 + 2 * j]]) as i32
}

/// Float finish of one Q4_K/Q5_K super-block, shared by every backend.
///
/// `sumi = sum_j sc_j * dot_j` and `summ = sum_j m_j * bsum_j` are exact.
#[inline(always)]
pub(crate) fn finish_k(acc: f32, dx: f32, wd: f32, wdmin: f32, sumi: i32, summ: i32) -> f32 {
    let d = dx * wd;
    let dmin = dx * wdmin;
    acc + (d * sumi as f32 - dmin * summ as f32)
}

/// Float finish of one Q6_K super-block (`sumi` includes the -32 offset).
#[inline(always)]
pub(crate) fn finish_q6k(acc: f32, dx: f32, wd: f32, sumi: i32) -> f32 {
    acc + (dx * wd) * sumi as f32
}

/// Unpacked Q4_K/Q5_K scales and mins of one super-block.
#[inline(always)]
pub(crate) fn k4_scales(scales: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        let (s, mm) = scale_min_k4(j, scales);
        sc[j] = s;
        m[j] = mm;
    }
    (sc, m)
}

fn q4k_q5k<const R: usize>(w: &[u8], xs: Rows<'_, R>, five: bool) -> [f32; R] {
    let bsz = if five { 176 } else { 144 };
    let t = f16_table();
    let mut acc = [0.0f32; R];
    let mut q = [0u8; 256];
    for (ib, wb) in w.chunks_exact(bsz).enumerate() {
        let wd = f16_at_t(t, wb, 0);
        let wdmin = f16_at_t(t, wb, 2);
        let (sc, m) = k4_scales(&wb[4..16]);
        let qs = if five { &wb[48..176] } else { &wb[16..144] };
        for j in 0..4 {
            for l in 0..32 {
                q[64 * j + l] = qs[32 * j + l] & 0xF;
                q[64 * j + l + 32] = qs[32 * j + l] >> 4;
            }
        }
        if five {
            let qh: &[u8; 32] = wb[16..48].try_into().unwrap_or(&[0; 32]);
            for (j, qj) in q.chunks_exact_mut(32).enumerate() {
                for (v, &h) in qj.iter_mut().zip(qh) {
                    *v |= ((h >> j) & 1) << 4;
                }
            }
        }
        for r in 0..R {
            let xb = &xs[r][292 * ib..292 * ib + 292];
            let mut sumi = 0i32;
            let mut summ = 0i32;
            for j in 0..8 {
                let mut d = 0i32;
                for l in 0..32 {
                    d += q[32 * j + l] as i32 * (xb[4 + 32 * j + l] as i8) as i32;
                }
                sumi += sc[j] as i32 * d;
                summ += m[j] as i32 * (q8k_bsum(xb, 2 * j) + q8k_bsum(xb, 2 * j + 1));
            }
            acc[r] = finish_k(acc[r], q8k_d(xb), wd, wdmin, sumi, summ);
        }
    }
    acc
}

fn q6k<const R: usize>(w: &[u8], xs: Rows<'_, R>) -> [f32; R] {
    let t = f16_table();
    let mut acc = [0.0f32; R];
    let mut q = [0i8; 256];
    for (ib, wb) in w.chunks_exact(210).enumerate() {
        for h in 0..2 {
            let ql = &wb[64 * h..64 * h + 64];
            let qh = &wb[128 + 32 * h..128 + 32 * h + 32];
            let o = &mut q[128 * h..128 * h + 128];
            for l in 0..32 {
                o[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                o[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        let sc = &wb[192..208];
        let wd = f16_at_t(t, wb, 208);
        for r in 0..R {
            let xb = &xs[r][292 * ib..292 * ib + 292];
            let mut sumi = 0i32;
            for j in 0..16 {
                let mut d = 0i32;
                for l in 0..16 {
                    d += q[16 * j + l] as i32 * (xb[4 + 16 * j + l] as i8) as i32;
                }
                sumi += (sc[j] as i8) as i32 * d;
            }
            acc[r] = finish_q6k(acc[r], q8k_d(xb), wd, sumi);
        }
    }
    acc
}
