//! The non-linear 4-bit blocks: IQ4_NL (32 values, one f16 scale) and IQ4_XS
//! (256 values in 8 sub-blocks with 6-bit scales). Each 4-bit index picks one
//! of 16 fixed values ([`IQ4_VALUES`], ggml's `kvalues_iq4nl`), so a dot
//! product is the exact integer dot of those values with the activation's.

use super::{
    block, f16_table, finish_q6k, BlockQ8_0, BlockQ8_K, Dequantize, F16Bits, Q32Weight, WeightBlock,
};
use crate::kernels::types::{GgmlType, QK32, QK_K};

/// The 16 values a 4-bit IQ4 index stands for (ggml's `kvalues_iq4nl`).
pub const IQ4_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// IQ4_NL: `d * IQ4_VALUES[q]`, 32 per block, low nibbles first.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockIQ4_NL {
    /// Scale.
    pub d: F16Bits,
    /// Element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble.
    pub qs: [u8; QK32 / 2],
}
block!(BlockIQ4_NL, GgmlType::IQ4_NL, elems: QK32, bytes: 18);

/// IQ4_XS: eight sub-blocks of 32, each `d * (ls - 32) * IQ4_VALUES[q]` with a 6-bit `ls`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockIQ4_XS {
    /// Super-block scale.
    pub d: F16Bits,
    /// The high 2 bits of each sub-block scale (little-endian u16, two bits per sub-block).
    pub scales_h: [u8; 2],
    /// The low 4 bits of each sub-block scale, two per byte.
    pub scales_l: [u8; QK_K / 64],
    /// Indices: 32 per sub-block in 16 bytes, low nibbles first.
    pub qs: [u8; QK_K / 2],
}
block!(BlockIQ4_XS, GgmlType::IQ4_XS, elems: QK_K, bytes: 136);

/// The values of 32 indices packed as in [`BlockIQ4_NL::qs`].
#[inline(always)]
fn values(qs: &[u8]) -> [i8; 32] {
    std::array::from_fn(|j| IQ4_VALUES[if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 } as usize])
}

impl Q32Weight for BlockIQ4_NL {
    #[inline(always)]
    fn quants(&self) -> [i8; QK32] {
        values(&self.qs)
    }
}

impl WeightBlock for BlockIQ4_NL {
    type Activation = BlockQ8_0;
    fn dot_rows<const R: usize>(w: &[Self], xs: [&[BlockQ8_0]; R]) -> [f32; R] {
        super::q32::dot_sym(w, xs, |b| b.d)
    }
}

impl Dequantize for BlockIQ4_NL {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, v) in y.iter_mut().zip(values(&self.qs)) {
            *o = d * v as f32;
        }
    }
}

impl BlockIQ4_XS {
    /// Sub-block `ib`'s scale, minus 32.
    #[inline(always)]
    pub(crate) fn scale(&self, ib: usize) -> i32 {
        let low = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let high = (u16::from_le_bytes(self.scales_h) >> (2 * ib)) & 3;
        (low as i32 | (high as i32) << 4) - 32
    }
}

impl WeightBlock for BlockIQ4_XS {
    type Activation = BlockQ8_K;
    fn dot_rows<const R: usize>(w: &[Self], xs: [&[BlockQ8_K]; R]) -> [f32; R] {
        let t = f16_table();
        let mut acc = [0.0f32; R];
        for (ib, wb) in w.iter().enumerate() {
            let sub: [[i8; 32]; 8] = std::array::from_fn(|j| values(&wb.qs[16 * j..16 * j + 16]));
            let wd = t[u16::from_le_bytes(wb.d.0) as usize];
            for r in 0..R {
                let xb = &xs[r][ib];
                let mut sumi = 0i32;
                for (j, v) in sub.iter().enumerate() {
                    let dot: i32 =
                        v.iter().zip(&xb.qs[32 * j..32 * j + 32]).map(|(&a, &b)| a as i32 * b as i32).sum();
                    sumi += wb.scale(j) * dot;
                }
                acc[r] = finish_q6k(acc[r], xb.scale(), wd, sumi);
            }
        }
        acc
    }
}

impl Dequantize for BlockIQ4_XS {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (j, out) in y.chunks_exact_mut(32).enumerate() {
            let dl = d * self.scale(j) as f32;
            for (o, v) in out.iter_mut().zip(values(&self.qs[16 * j..16 * j + 16])) {
                *o = dl * v as f32;
            }
        }
    }
}
