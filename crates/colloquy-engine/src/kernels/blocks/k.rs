//! The K-quant super-blocks (256 elements): Q2_K, Q3_K, Q4_K, Q5_K and Q6_K
//! weights and the Q8_K activations they pair with.
//!
//! Each super-block's integer sums are exact; its float finish is
//! [`finish_k`] (the types with mins: Q2_K, Q4_K, Q5_K) or [`finish_q6k`]
//! (Q3_K, Q6_K), shared by every backend.

use super::{block, f16_table, Dequantize, F16Bits, WeightBlock};
use crate::kernels::types::{GgmlType, QK_K};

/// Q2_K: sixteen sub-blocks of 16, each `d * sc * q - dmin * m` with 4-bit `sc`, `m` and 2-bit `q`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ2_K {
    /// 4-bit scale and min of each 16 elements.
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale of the scales.
    pub d: F16Bits,
    /// Super-block scale of the mins.
    pub dmin: F16Bits,
}
block!(BlockQ2_K, GgmlType::Q2_K, elems: QK_K, bytes: 84);

/// Q3_K: sixteen sub-blocks of 16, each `d * (sc - 32) * (q - 4 * !high)` with 6-bit `sc`, 2-bit `q` and a high bit.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ3_K {
    /// The high bit of each quant.
    pub hmask: [u8; QK_K / 8],
    /// The low 2 bits of each quant.
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales, packed.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: F16Bits,
}
block!(BlockQ3_K, GgmlType::Q3_K, elems: QK_K, bytes: 110);

/// Q4_K: eight sub-blocks of 32, each `d * sc * q - dmin * m` with 6-bit `sc`, `m`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_K {
    /// Super-block scale of the scales.
    pub d: F16Bits,
    /// Super-block scale of the mins.
    pub dmin: F16Bits,
    /// Eight 6-bit scales and eight 6-bit mins (ggml's `get_scale_min_k4` layout).
    pub scales: [u8; 12],
    /// 4-bit quants: 64 elements per 32 bytes, low nibbles first.
    pub qs: [u8; QK_K / 2],
}
block!(BlockQ4_K, GgmlType::Q4_K, elems: QK_K, bytes: 144);

/// Q5_K: Q4_K with a fifth bit per quant.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5_K {
    /// Super-block scale of the scales.
    pub d: F16Bits,
    /// Super-block scale of the mins.
    pub dmin: F16Bits,
    /// As in [`BlockQ4_K`].
    pub scales: [u8; 12],
    /// Bit `j` of byte `l` is the fifth bit of element `32 j + l`.
    pub qh: [u8; QK_K / 8],
    /// As in [`BlockQ4_K`].
    pub qs: [u8; QK_K / 2],
}
block!(BlockQ5_K, GgmlType::Q5_K, elems: QK_K, bytes: 176);

/// Q6_K: sixteen sub-blocks of 16, each `d * sc * (q - 32)` with an 8-bit `sc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ6_K {
    /// The low 4 bits of each quant.
    pub ql: [u8; QK_K / 2],
    /// The high 2 bits of each quant.
    pub qh: [u8; QK_K / 4],
    /// Signed sub-block scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: F16Bits,
}
block!(BlockQ6_K, GgmlType::Q6_K, elems: QK_K, bytes: 210);

/// Q8_K: the K-quants' activations, `d * q` with the sums of each 16 quants.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8_K {
    /// Scale, a little-endian f32.
    pub d: [u8; 4],
    /// Quants.
    pub qs: [i8; QK_K],
    /// Little-endian i16 sums of each 16 quants.
    pub bsums: [[u8; 2]; QK_K / 16],
}
block!(BlockQ8_K, GgmlType::Q8_K, elems: QK_K, bytes: 292);

impl BlockQ8_K {
    /// The scale.
    #[inline(always)]
    pub fn scale(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    /// The sum of quants `16 j..16 j + 16`.
    #[inline(always)]
    pub fn bsum(&self, j: usize) -> i32 {
        i16::from_le_bytes(self.bsums[j]) as i32
    }
}

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K
/// super-block from its 12 packed scale bytes (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Unpacked Q4_K/Q5_K scales and mins of one super-block.
#[inline(always)]
pub(crate) fn k4_scales(scales: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        (sc[j], m[j]) = scale_min_k4(j, scales);
    }
    (sc, m)
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

/// The 256 4-bit quants of a Q4_K/Q5_K super-block, with the fifth bits of `qh`.
#[inline(always)]
fn quants_k(qs: &[u8; QK_K / 2], qh: Option<&[u8; QK_K / 8]>) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for j in 0..4 {
        for l in 0..32 {
            q[64 * j + l] = qs[32 * j + l] & 0xF;
            q[64 * j + l + 32] = qs[32 * j + l] >> 4;
        }
    }
    if let Some(qh) = qh {
        for (j, qj) in q.chunks_exact_mut(32).enumerate() {
            for (v, &h) in qj.iter_mut().zip(qh) {
                *v |= ((h >> j) & 1) << 4;
            }
        }
    }
    q
}

/// Dots of one Q4_K/Q5_K row (each super-block read as its scales and quants by `parts`) with `R` Q8_K rows.
#[inline(always)]
fn dot_k45<const R: usize, B>(
    w: &[B],
    parts: impl Fn(&B) -> (F16Bits, F16Bits, [u8; 12], [u8; QK_K]),
    xs: [&[BlockQ8_K]; R],
) -> [f32; R] {
    let t = f16_table();
    let mut acc = [0.0f32; R];
    for (ib, wb) in w.iter().enumerate() {
        let (d, dmin, scales, q) = parts(wb);
        let (wd, wdmin) = (t[u16::from_le_bytes(d.0) as usize], t[u16::from_le_bytes(dmin.0) as usize]);
        let (sc, m) = k4_scales(&scales);
        for r in 0..R {
            let xb = &xs[r][ib];
            let mut sumi = 0i32;
            let mut summ = 0i32;
            for j in 0..8 {
                let mut dot = 0i32;
                for l in 0..32 {
                    dot += q[32 * j + l] as i32 * xb.qs[32 * j + l] as i32;
                }
                sumi += sc[j] as i32 * dot;
                summ += m[j] as i32 * (xb.bsum(2 * j) + xb.bsum(2 * j + 1));
            }
            acc[r] = finish_k(acc[r], xb.scale(), wd, wdmin, sumi, summ);
        }
    }
    acc
}

impl WeightBlock for BlockQ4_K {
    type Activation = BlockQ8_K;
    fn dot_rows<const R: usize>(w: &[Self], xs: [&[BlockQ8_K]; R]) -> [f32; R] {
        dot_k45(w, |b| (b.d, b.dmin, b.scales, quants_k(&b.qs, None)), xs)
    }
}

impl WeightBlock for BlockQ5_K {
    type Activation = BlockQ8_K;
    fn dot_rows<const R: usize>(w: &[Self], xs: [&[BlockQ8_K]; R]) -> [f32; R] {
        dot_k45(w, |b| (b.d, b.dmin, b.scales, quants_k(&b.qs, Some(&b.qh))), xs)
    }
}

impl BlockQ6_K {
    /// The 256 quants minus 32.
    #[inline(always)]
    fn quants(&self) -> [i8; QK_K] {
        let mut q = [0i8; QK_K];
        for h in 0..2 {
            let ql = &self.ql[64 * h..64 * h + 64];
            let qh = &self.qh[32 * h..32 * h + 32];
            let o = &mut q[128 * h..128 * h + 128];
            for l in 0..32 {
                o[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                o[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        q
    }
}

impl WeightBlock for BlockQ6_K {
    type Activation = BlockQ8_K;
    fn dot_rows<const R: usize>(w: &[Self], xs: [&[BlockQ8_K]; R]) -> [f32; R] {
        let mut acc = [0.0f32; R];
        for (ib, wb) in w.iter().enumerate() {
            let q = wb.quants();
            let wd = wb.d.to_f32();
            for r in 0..R {
                let xb = &xs[r][ib];
                let mut sumi = 0i32;
                for j in 0..16 {
                    let mut dot = 0i32;
                    for l in 0..16 {
                        dot += q[16 * j + l] as i32 * xb.qs[16 * j + l] as i32;
                    }
                    sumi += wb.scales[j] as i32 * dot;
                }
                acc[r] = finish_q6k(acc[r], xb.scale(), wd, sumi);
            }
        }
        acc
    }
}

// Dequantization, in ggml's operation order (no fused multiply-adds).

/// Q4_K/Q5_K: `d * sc * q - dmin * m` per sub-block of 32.
fn dequantize_k45(d: F16Bits, dmin: F16Bits, scales: &[u8; 12], q: &[u8; QK_K], y: &mut [f32]) {
    let (d, min) = (d.to_f32(), dmin.to_f32());
    for (j, (qj, out)) in q.chunks_exact(32).zip(y.chunks_exact_mut(32)).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        for (o, &v) in out.iter_mut().zip(qj) {
            *o = d1 * v as f32 - m1;
        }
    }
}

impl Dequantize for BlockQ4_K {
    fn dequantize(&self, y: &mut [f32]) {
        dequantize_k45(self.d, self.dmin, &self.scales, &quants_k(&self.qs, None), y);
    }
}

impl Dequantize for BlockQ5_K {
    fn dequantize(&self, y: &mut [f32]) {
        dequantize_k45(self.d, self.dmin, &self.scales, &quants_k(&self.qs, Some(&self.qh)), y);
    }
}

impl Dequantize for BlockQ6_K {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let q = self.quants();
        // Sub-block `j` of 16 has scale `j`; ggml multiplies `d * sc` first.
        for (j, (qj, out)) in q.chunks_exact(16).zip(y.chunks_exact_mut(16)).enumerate() {
            let ds = d * self.scales[j] as f32;
            for (o, &v) in out.iter_mut().zip(qj) {
                *o = ds * v as f32;
            }
        }
    }
}

impl Dequantize for BlockQ8_K {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.scale();
        for (v, &q) in y.iter_mut().zip(&self.qs) {
            *v = d * q as f32;
        }
    }
}

impl BlockQ2_K {
    /// The 256 2-bit quants, in element order.
    #[inline(always)]
    fn quants(&self) -> [u8; QK_K] {
        let mut q = [0u8; QK_K];
        // Each 32 bytes hold four 32-element groups, two bits apiece.
        for (half, qs) in self.qs.chunks_exact(32).enumerate() {
            for shift in 0..4 {
                for l in 0..32 {
                    q[128 * half + 32 * shift + l] = (qs[l] >> (2 * shift)) & 3;
                }
            }
        }
        q
    }
}

impl WeightBlock for BlockQ2_K {
    type Activation = BlockQ8_K;
    fn dot_rows<const R: usize>(w: &[Self], xs: [&[BlockQ8_K]; R]) -> [f32; R] {
        let mut acc = [0.0f32; R];
        for (ib, wb) in w.iter().enumerate() {
            let q = wb.quants();
            let (wd, wdmin) = (wb.d.to_f32(), wb.dmin.to_f32());
            for r in 0..R {
                let xb = &xs[r][ib];
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..16 {
                    let mut dot = 0i32;
                    for l in 0..16 {
                        dot += q[16 * j + l] as i32 * xb.qs[16 * j + l] as i32;
                    }
                    sumi += (wb.scales[j] & 0xF) as i32 * dot;
                    summ += (wb.scales[j] >> 4) as i32 * xb.bsum(j);
                }
                acc[r] = finish_k(acc[r], xb.scale(), wd, wdmin, sumi, summ);
            }
        }
        acc
    }
}

impl Dequantize for BlockQ2_K {
    fn dequantize(&self, y: &mut [f32]) {
        let (d, min) = (self.d.to_f32(), self.dmin.to_f32());
        let q = self.quants();
        for (j, (qj, out)) in q.chunks_exact(16).zip(y.chunks_exact_mut(16)).enumerate() {
            let (dl, ml) = (d * (self.scales[j] & 0xF) as f32, min * (self.scales[j] >> 4) as f32);
            for (o, &v) in out.iter_mut().zip(qj) {
                *o = dl * v as f32 - ml;
            }
        }
    }
}

impl BlockQ3_K {
    /// The sixteen 6-bit scales, unpacked (ggml's `kmask1`/`kmask2` shuffle), minus 32.
    #[inline(always)]
    pub(crate) fn scales(&self) -> [i8; 16] {
        let s = &self.scales;
        std::array::from_fn(|j| {
            let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
            let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
            (low | (high << 4)) as i8 - 32
        })
    }

    /// The 256 quants: the 2-bit value, minus 4 where the high bit is clear.
    #[inline(always)]
    fn quants(&self) -> [i8; QK_K] {
        let mut q = [0i8; QK_K];
        for (half, qs) in self.qs.chunks_exact(32).enumerate() {
            for shift in 0..4 {
                let bit = 1u8 << (4 * half + shift);
                for l in 0..32 {
                    let low = ((qs[l] >> (2 * shift)) & 3) as i8;
                    q[128 * half + 32 * shift + l] = low - if self.hmask[l] & bit != 0 { 0 } else { 4 };
                }
            }
        }
        q
    }
}

impl WeightBlock for BlockQ3_K {
    type Activation = BlockQ8_K;
    fn dot_rows<const R: usize>(w: &[Self], xs: [&[BlockQ8_K]; R]) -> [f32; R] {
        let mut acc = [0.0f32; R];
        for (ib, wb) in w.iter().enumerate() {
            let (q, sc, wd) = (wb.quants(), wb.scales(), wb.d.to_f32());
            for r in 0..R {
                let xb = &xs[r][ib];
                let mut sumi = 0i32;
                for j in 0..16 {
                    let mut dot = 0i32;
                    for l in 0..16 {
                        dot += q[16 * j + l] as i32 * xb.qs[16 * j + l] as i32;
                    }
                    sumi += sc[j] as i32 * dot;
                }
                acc[r] = finish_q6k(acc[r], xb.scale(), wd, sumi);
            }
        }
        acc
    }
}

impl Dequantize for BlockQ3_K {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let (q, sc) = (self.quants(), self.scales());
        for (j, (qj, out)) in q.chunks_exact(16).zip(y.chunks_exact_mut(16)).enumerate() {
            let dl = d * sc[j] as f32;
            for (o, &v) in out.iter_mut().zip(qj) {
                *o = dl * v as f32;
            }
        }
    }
}
