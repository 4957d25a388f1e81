//! Shared helpers for the `kernels_*` tests: a tiny deterministic PRNG and
//! generators of valid random weight rows.
#![allow(dead_code)]

use colloquy_engine::kernels::{self, GgmlType};
use half::f16;

/// xorshift64* — deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    /// Roughly normal (sum of uniforms), times `scale`.
    pub fn normal(&mut self, scale: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum::<f32>() - 2.0;
        s * 1.7 * scale
    }
    pub fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(scale)).collect()
    }
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// A random, valid weight row of `n` elements of type `ty`: random quant
/// bits with finite, realistic f16 scales.
pub fn random_weights(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    let len = ty.row_bytes(n).expect("whole blocks");
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let x = rng.floats(n, 0.5);
            let mut out = vec![0u8; len];
            kernels::quantize_row(ty, &x, &mut out).unwrap();
            return out;
        }
        _ => {}
    }
    let mut out: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
    let bs = ty.type_size();
    for b in out.chunks_exact_mut(bs) {
        let sign = if rng.byte() & 1 == 0 { 1.0 } else { -1.0 };
        match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => put_f16(b, 0, sign * rng.range(1e-3, 2e-2)),
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                put_f16(b, 0, rng.range(1e-3, 2e-2));
                put_f16(b, 2, sign * rng.range(0.0, 0.2));
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                put_f16(b, 0, rng.range(1e-4, 2e-3));
                put_f16(b, 2, rng.range(1e-4, 2e-3));
            }
            GgmlType::Q6_K => put_f16(b, 208, sign * rng.range(1e-4, 2e-3)),
            GgmlType::Q2_K => {
                put_f16(b, 80, rng.range(1e-4, 2e-3));
                put_f16(b, 82, rng.range(1e-4, 2e-3));
            }
            GgmlType::Q3_K => put_f16(b, 108, sign * rng.range(1e-4, 2e-3)),
            GgmlType::IQ4_NL | GgmlType::IQ4_XS => put_f16(b, 0, sign * rng.range(1e-4, 2e-3)),
            _ => panic!("no generator for {ty}"),
        }
    }
    out
}

/// Activation row for weights of type `ty`, quantized from `x`.
pub fn activation(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; kernels::activation_row_bytes(ty, x.len()).unwrap()];
    kernels::quantize_activation(ty, x, &mut out).unwrap();
    out
}

/// Dequantized activation row (the values the dot product really sees).
pub fn activation_values(ty: GgmlType, xq: &[u8], n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    kernels::dequantize_row(ty.vec_dot_type(), xq, &mut v).unwrap();
    v
}

/// Element counts worth testing for a type.
pub fn sizes(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        1 => vec![1, 7, 8, 31, 32, 33, 100, 576],
        32 => vec![32, 64, 96, 576, 1536],
        _ => vec![256, 512, 768, 1536],
    }
}
