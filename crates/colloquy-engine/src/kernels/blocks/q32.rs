//! The 32-wide quant blocks: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights, and
//! the Q8_0 and Q8_1 activations they pair with.
//!
//! Dot products reduce each block to its exact integer dot `sumi`, then:
//! * Q4_0/Q5_0/Q8_0: `acc = acc + sumi as f32 * (d_w * d_x)`;
//! * Q4_1/Q5_1: `acc = acc + ((d_w * d_x) * sumi as f32 + m_w * s_x)`.

use super::{block, f16_table, Dequantize, F16Bits, WeightBlock};
use crate::kernels::types::{GgmlType, QK32};

/// Q4_0: `d * (q - 8)`, 4-bit quants, low nibbles first.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: F16Bits,
    /// Element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble.
    pub qs: [u8; QK32 / 2],
}
block!(BlockQ4_0, GgmlType::Q4_0, elems: QK32, bytes: 18);

/// Q4_1: `d * q + m`, 4-bit quants.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: F16Bits,
    /// Min.
    pub m: F16Bits,
    /// As in [`BlockQ4_0`].
    pub qs: [u8; QK32 / 2],
}
block!(BlockQ4_1, GgmlType::Q4_1, elems: QK32, bytes: 20);

/// Q5_0: `d * (q - 16)`, 5-bit quants: four bits in `qs`, the fifth in `qh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: F16Bits,
    /// Bit `j` of this little-endian u32 is the fifth bit of element `j`.
    pub qh: [u8; 4],
    /// As in [`BlockQ4_0`].
    pub qs: [u8; QK32 / 2],
}
block!(BlockQ5_0, GgmlType::Q5_0, elems: QK32, bytes: 22);

/// Q5_1: `d * q + m`, 5-bit quants.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: F16Bits,
    /// Min.
    pub m: F16Bits,
    /// As in [`BlockQ5_0`].
    pub qh: [u8; 4],
    /// As in [`BlockQ4_0`].
    pub qs: [u8; QK32 / 2],
}
block!(BlockQ5_1, GgmlType::Q5_1, elems: QK32, bytes: 24);

/// Q8_0: `d * q`, 8-bit quants (weights, and the activations of the symmetric types).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: F16Bits,
    /// Quants.
    pub qs: [i8; QK32],
}
block!(BlockQ8_0, GgmlType::Q8_0, elems: QK32, bytes: 34);

/// Q8_1: Q8_0 plus `s = d * sum(q)` (the activations of Q4_1/Q5_1).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: F16Bits,
    /// `d * sum(qs)`.
    pub s: F16Bits,
    /// Quants.
    pub qs: [i8; QK32],
}
block!(BlockQ8_1, GgmlType::Q8_1, elems: QK32, bytes: 36);

/// Bit `j` of a Q5 block's high bits, as the value 16 or 0.
#[inline(always)]
fn high(qh: [u8; 4], j: usize) -> u8 {
    (((u32::from_le_bytes(qh) >> j) & 1) << 4) as u8
}

/// Element `j` of 32 packed as in [`BlockQ4_0`].
#[inline(always)]
fn nibble(qs: &[u8; QK32 / 2], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0xF
    } else {
        qs[j - 16] >> 4
    }
}

/// A 32-wide weight block: its quants as the integers its dot product uses.
pub(crate) trait Q32Weight: WeightBlock {
    /// The 32 quants: `q - offset` for the symmetric types, `q` for those with a min.
    fn quants(&self) -> [i8; QK32];
}

impl Q32Weight for BlockQ4_0 {
    #[inline(always)]
    fn quants(&self) -> [i8; QK32] {
        std::array::from_fn(|j| nibble(&self.qs, j) as i8 - 8)
    }
}
impl Q32Weight for BlockQ4_1 {
    #[inline(always)]
    fn quants(&self) -> [i8; QK32] {
        std::array::from_fn(|j| nibble(&self.qs, j) as i8)
    }
}
impl Q32Weight for BlockQ5_0 {
    #[inline(always)]
    fn quants(&self) -> [i8; QK32] {
        std::array::from_fn(|j| {
            let lo = nibble(&self.qs, j);
            (lo | high(self.qh, j)) as i8 - 16
        })
    }
}
impl Q32Weight for BlockQ5_1 {
    #[inline(always)]
    fn quants(&self) -> [i8; QK32] {
        std::array::from_fn(|j| {
            let lo = nibble(&self.qs, j);
            (lo | high(self.qh, j)) as i8
        })
    }
}
impl Q32Weight for BlockQ8_0 {
    #[inline(always)]
    fn quants(&self) -> [i8; QK32] {
        self.qs
    }
}

#[inline(always)]
fn idot32(q: &[i8; QK32], x: &[i8; QK32]) -> i32 {
    q.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum()
}

/// The dot of a symmetric weight row (no min) with `R` Q8_0 rows.
#[inline(always)]
pub(super) fn dot_sym<const R: usize, B: Q32Weight + WeightBlock<Activation = BlockQ8_0>>(
    w: &[B],
    xs: [&[BlockQ8_0]; R],
    d: impl Fn(&B) -> F16Bits,
) -> [f32; R] {
    let t = f16_table();
    let mut acc = [0.0f32; R];
    for (ib, wb) in w.iter().enumerate() {
        let q = wb.quants();
        let dw = t[u16::from_le_bytes(d(wb).0) as usize];
        for r in 0..R {
            let xb = &xs[r][ib];
            acc[r] += idot32(&q, &xb.qs) as f32 * (dw * xb.d.to_f32());
        }
    }
    acc
}

/// The dot of a weight row with a min with `R` Q8_1 rows.
#[inline(always)]
fn dot_min<const R: usize, B: Q32Weight + WeightBlock<Activation = BlockQ8_1>>(
    w: &[B],
    xs: [&[BlockQ8_1]; R],
    dm: impl Fn(&B) -> (F16Bits, F16Bits),
) -> [f32; R] {
    let mut acc = [0.0f32; R];
    for (ib, wb) in w.iter().enumerate() {
        let q = wb.quants();
        let (d, m) = dm(wb);
        let (dw, mw) = (d.to_f32(), m.to_f32());
        for r in 0..R {
            let xb = &xs[r][ib];
            acc[r] += (dw * xb.d.to_f32()) * idot32(&q, &xb.qs) as f32 + mw * xb.s.to_f32();
        }
    }
    acc
}

macro_rules! weight {
    (sym $block:ty) => {
        impl WeightBlock for $block {
            type Activation = BlockQ8_0;
            fn dot_rows<const R: usize>(w: &[Self], xs: [&[BlockQ8_0]; R]) -> [f32; R] {
                dot_sym(w, xs, |b| b.d)
            }
        }
    };
    (min $block:ty) => {
        impl WeightBlock for $block {
            type Activation = BlockQ8_1;
            fn dot_rows<const R: usize>(w: &[Self], xs: [&[BlockQ8_1]; R]) -> [f32; R] {
                dot_min(w, xs, |b| (b.d, b.m))
            }
        }
    };
}
weight!(sym BlockQ4_0);
weight!(sym BlockQ5_0);
weight!(sym BlockQ8_0);
weight!(min BlockQ4_1);
weight!(min BlockQ5_1);

// Dequantization, in ggml's operation order (no fused multiply-adds).

impl Dequantize for BlockQ4_0 {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for j in 0..16 {
            y[j] = ((self.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            y[j + 16] = ((self.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl Dequantize for BlockQ4_1 {
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for j in 0..16 {
            y[j] = (self.qs[j] & 0x0F) as f32 * d + m;
            y[j + 16] = (self.qs[j] >> 4) as f32 * d + m;
        }
    }
}

impl Dequantize for BlockQ5_0 {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for j in 0..16 {
            let x0 = ((self.qs[j] & 0x0F) | high(self.qh, j)) as i32 - 16;
            let x1 = ((self.qs[j] >> 4) | high(self.qh, j + 16)) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    }
}

impl Dequantize for BlockQ5_1 {
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for j in 0..16 {
            let x0 = ((self.qs[j] & 0x0F) | high(self.qh, j)) as f32;
            let x1 = ((self.qs[j] >> 4) | high(self.qh, j + 16)) as f32;
            y[j] = x0 * d + m;
            y[j + 16] = x1 * d + m;
        }
    }
}

impl Dequantize for BlockQ8_0 {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (v, &q) in y.iter_mut().zip(&self.qs) {
            *v = q as f32 * d;
        }
    }
}

impl Dequantize for BlockQ8_1 {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (v, &q) in y.iter_mut().zip(&self.qs) {
            *v = q as f32 * d;
        }
    }
}
