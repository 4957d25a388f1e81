//! The float types as one-element blocks: F32, F16 and BF16.
//!
//! Their dot product runs over the whole row in the AVX2 kernel's order
//! ([`dot_f32_lanes`]), so every backend gives the same bits.

use super::{block, f16_table, Dequantize, WeightBlock};
use crate::kernels::types::GgmlType;
use half::bf16;

/// One little-endian f32.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct F32Block(pub [u8; 4]);
block!(F32Block, GgmlType::F32, elems: 1, bytes: 4);

/// One little-endian IEEE half.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct F16Block(pub [u8; 2]);
block!(F16Block, GgmlType::F16, elems: 1, bytes: 2);

/// One little-endian bfloat16.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bf16Block(pub [u8; 2]);
block!(Bf16Block, GgmlType::BF16, elems: 1, bytes: 2);

impl F32Block {
    #[inline(always)]
    fn get(self) -> f32 {
        f32::from_le_bytes(self.0)
    }
}
impl F16Block {
    #[inline(always)]
    fn get(self) -> f32 {
        f16_table()[u16::from_le_bytes(self.0) as usize]
    }
}
impl Bf16Block {
    #[inline(always)]
    fn get(self) -> f32 {
        bf16::from_bits(u16::from_le_bytes(self.0)).to_f32()
    }
}

macro_rules! float_block {
    ($block:ty, $act:ty) => {
        impl Dequantize for $block {
            #[inline(always)]
            fn dequantize(&self, out: &mut [f32]) {
                out[0] = self.get();
            }
        }

        impl WeightBlock for $block {
            type Activation = $act;

            fn dot_rows<const R: usize>(w: &[Self], xs: [&[$act]; R]) -> [f32; R] {
                xs.map(|x| dot_f32_lanes(w.len(), |i| w[i].get(), |i| x[i].get()))
            }
        }
    };
}
float_block!(F32Block, F32Block);
float_block!(F16Block, F16Block);
float_block!(Bf16Block, F32Block);

/// The sum of eight lanes as the AVX2 horizontal sum adds them:
/// `((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7))`.
#[inline(always)]
pub(crate) fn hsum8_order(v: [f32; 8]) -> f32 {
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

/// The dot of `n` products `w(i) * x(i)` in the AVX2 float kernel's order:
/// four 8-lane chains of fused multiply-adds over 32 elements at a time,
/// then 8 at a time into the first chain, the chains added as `(c0 + c1) +
/// (c2 + c3)`, the lanes in [`hsum8_order`], then the last `n % 8` products
/// added one by one (multiplied, then added).
#[inline(always)]
pub(crate) fn dot_f32_lanes(n: usize, w: impl Fn(usize) -> f32, x: impl Fn(usize) -> f32) -> f32 {
    let mut a = [[0.0f32; 8]; 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, ak) in a.iter_mut().enumerate() {
            for (l, v) in ak.iter_mut().enumerate() {
                *v = w(i + 8 * k + l).mul_add(x(i + 8 * k + l), *v);
            }
        }
        i += 32;
    }
    while i + 8 <= n {
        for (l, v) in a[0].iter_mut().enumerate() {
            *v = w(i + l).mul_add(x(i + l), *v);
        }
        i += 8;
    }
    let lanes: [f32; 8] = std::array::from_fn(|l| (a[0][l] + a[1][l]) + (a[2][l] + a[3][l]));
    let mut s = hsum8_order(lanes);
    while i < n {
        s += w(i) * x(i);
        i += 1;
    }
    s
}

/// The portable f32 dot: the AVX2 kernel's order ([`dot_f32_lanes`]).
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_lanes(a.len().min(b.len()), |i| a[i], |i| b[i])
}
