//! Quantizers and dequantizers: agreement with straightforward formulas,
//! round trips, hand-built blocks, and reference data from the `gguf` Python
//! package (tests/fixtures/kernels_fixtures.json, see kernels_gen.py).

mod kernels_support;

use colloquy_engine::kernels::{self, GgmlType};
use half::f16;
use kernels_support::Rng;
use proptest::prelude::*;

fn h(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

/// Q8_0 / Q8_1 written out the obvious way: d = amax / 127 rounded to f16,
/// q = round-half-away(x * (1/d)), s = f16(d * sum q).
fn q8_naive(x: &[f32], with_sum: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks(32) {
        let amax = b.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let q: Vec<i8> = b.iter().map(|v| (v * id).round() as i8).collect();
        out.extend_from_slice(&h(d));
        if with_sum {
            let s: i32 = q.iter().map(|&v| v as i32).sum();
            out.extend_from_slice(&h(s as f32 * d));
        }
        out.extend(q.iter().map(|&v| v as u8));
    }
    out
}

/// Q8_K the obvious way: signed max m, iscale = -127 / m, q = round-half-even
/// (iscale * x) capped at 127, d = 1 / iscale, bsums of 16.
fn q8k_naive(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks(256) {
        let mut m = 0.0f32;
        for &v in b {
            if v.abs() > m.abs() {
                m = v;
            }
        }
        if m == 0.0 {
            out.extend(std::iter::repeat_n(0u8, 292));
            continue;
        }
        let iscale = -127.0f32 / m;
        let q: Vec<i8> = b.iter().map(|&v| ((iscale * v).round_ties_even() as i32).min(127) as i8).collect();
        out.extend_from_slice(&(1.0f32 / iscale).to_le_bytes());
        out.extend(q.iter().map(|&v| v as u8));
        for c in q.chunks(16) {
            let s: i32 = c.iter().map(|&v| v as i32).sum();
            out.extend_from_slice(&(s as i16).to_le_bytes());
        }
    }
    out
}

fn quant(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    kernels::quantize_row(ty, x, &mut out).unwrap();
    out
}

fn dequant(ty: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    kernels::dequantize_row(ty, b, &mut out).unwrap();
    out
}

#[test]
fn q8_quantizers_match_naive_formulas() {
    let mut rng = Rng::new(3);
    for scale in [1e-3f32, 0.5, 30.0] {
        let mut x = rng.floats(512, scale);
        x[40..72].fill(0.0); // an all-zero block
        assert_eq!(quant(GgmlType::Q8_0, &x), q8_naive(&x, false));
        assert_eq!(quant(GgmlType::Q8_1, &x), q8_naive(&x, true));
        let mut y = x.clone();
        y[256..512].fill(0.0);
        assert_eq!(quant(GgmlType::Q8_K, &y), q8k_naive(&y));
    }
    let mut out = vec![0u8; 34];
    kernels::quantize_row_q8_0(&[0.25; 32], &mut out).unwrap();
    assert_eq!(&out[..2], &h(0.25 / 127.0));
    assert!(out[2..].iter().all(|&q| q == 127));
}

#[test]
fn round_trips_stay_within_half_a_step() {
    let mut rng = Rng::new(11);
    let x = rng.floats(1024, 1.0);
    for (ty, steps) in [
        (GgmlType::Q4_0, 8.0f32),
        (GgmlType::Q4_1, 15.0),
        (GgmlType::Q5_0, 16.0),
        (GgmlType::Q5_1, 31.0),
        (GgmlType::Q8_0, 127.0),
        (GgmlType::Q8_1, 127.0),
        (GgmlType::Q8_K, 127.0),
    ] {
        let y = dequant(ty, &quant(ty, &x), x.len());
        for (xb, yb) in x.chunks(ty.block_size()).zip(y.chunks(ty.block_size())) {
            let (lo, hi) = xb.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let amax = lo.abs().max(hi.abs());
            let range = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) { hi - lo } else { amax };
            // Half a step (a full one where Q4_0/Q5_0 clamp the side opposite
            // the signed max), plus f16 rounding of the scale and min.
            let half = if matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0) { 1.0 } else { 0.5 };
            let tol = range / steps * half + amax * 2e-3;
            for (a, b) in xb.iter().zip(yb) {
                assert!((a - b).abs() <= tol, "{ty}: {a} -> {b} (tol {tol})");
            }
        }
    }
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
        let y = dequant(ty, &quant(ty, &x), x.len());
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= a.abs() * 4e-3, "{ty}: {a} -> {b}");
        }
    }
}

#[test]
fn hand_built_blocks() {
    // Q4_0: d = 0.5, q = 0..16 / 16..32 pattern -> (q - 8) * d.
    let mut b = h(0.5).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequant(GgmlType::Q4_0, &b, 32);
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
    }
    // Q4_1: d = 0.25, m = -1.
    let mut b = h(0.25).to_vec();
    b.extend_from_slice(&h(-1.0));
    b.extend((0..16u8).map(|j| j | (j << 4)));
    let y = dequant(GgmlType::Q4_1, &b, 32);
    for j in 0..16 {
        assert_eq!(y[j], j as f32 * 0.25 - 1.0);
        assert_eq!(y[j + 16], y[j]);
    }
    // Q5_0: high bits set for elements 0 and 17 only.
    let mut b = h(1.0).to_vec();
    b.extend_from_slice(&(1u32 | (1 << 17)).to_le_bytes());
    b.extend(std::iter::repeat_n(0x00u8, 16));
    let y = dequant(GgmlType::Q5_0, &b, 32);
    assert_eq!(y[0], 0.0);
    assert_eq!(y[1], -16.0);
    assert_eq!(y[17], 0.0);
    assert_eq!(y[16], -16.0);
    // Q8_0.
    let mut b = h(2.0).to_vec();
    b.extend((0..32).map(|j| (j as i8 - 16) as u8));
    let y = dequant(GgmlType::Q8_0, &b, 32);
    assert!(y.iter().enumerate().all(|(j, &v)| v == (j as f32 - 16.0) * 2.0));
    // Q6_K: all quants 32 (value 0) except the first, scale 3, d = 0.5.
    let mut b = vec![0u8; 210];
    b[128..192].fill(0b1010_1010); // high bits 2 -> q = 32
    b[0] = 0x05; // element 0: low nibble 5 -> q = 37 -> +5
    b[192..208].fill(3);
    b[208..210].copy_from_slice(&h(0.5));
    let y = dequant(GgmlType::Q6_K, &b, 256);
    assert_eq!(y[0], 0.5 * 3.0 * 5.0);
    assert!(y[1..].iter().all(|&v| v == 0.0));
}

#[test]
fn unsupported_and_malformed() {
    let mut out = vec![0.0f32; 256];
    // Q2_K is supported now: a short block is the error, a whole one reads.
    assert!(kernels::dequantize_row(GgmlType::Q2_K, &[0u8; 83], &mut out).is_err());
    assert!(kernels::dequantize_row(GgmlType::Q2_K, &[0u8; 84], &mut out).is_ok());
    assert!(kernels::dequantize_row(GgmlType::Q4_K, &[0u8; 143], &mut out).is_err());
    assert!(kernels::dequantize_row(GgmlType::Q4_K, &[0u8; 144], &mut out[..255]).is_err());
    assert!(kernels::dequantize_row(GgmlType::Q4_K, &[0u8; 144], &mut out).is_ok());
    let mut bytes = vec![0u8; 100];
    assert!(kernels::quantize_row(GgmlType::Q4_K, &out, &mut bytes).is_err());
    assert!(kernels::quantize_row(GgmlType::Q8_0, &out[..32], &mut bytes[..33]).is_err());
}

// ----------------------------------------------------------- gguf fixtures

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn hex_f32(s: &str) -> Vec<f32> {
    (0..s.len()).step_by(8).map(|i| f32::from_bits(u32::from_str_radix(&s[i..i + 8], 16).unwrap())).collect()
}

fn type_named(name: &str) -> GgmlType {
    GgmlType::ALL.into_iter().find(|t| t.name() == name).unwrap()
}

#[test]
fn matches_gguf_python_reference() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kernels_fixtures.json");
    let text = std::fs::read_to_string(path).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let ty = type_named(c["type"].as_str().unwrap());
        let n = c["n"].as_u64().unwrap() as usize;
        let bytes = hex_bytes(c["bytes"].as_str().unwrap());
        let want = hex_f32(c["f32"].as_str().unwrap());
        let got = dequant(ty, &bytes, n);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{ty} n={n} element {i}: {g} vs gguf {w}");
        }
        if c["kind"] == "quant" {
            let x = hex_f32(c["x"].as_str().unwrap());
            assert_eq!(quant(ty, &x), bytes, "{ty} n={n}: quantization differs from gguf");
        }
    }
}

proptest! {
    #[test]
    fn prop_q8_quantizers(seed in any::<u64>(), blocks in 1usize..4, scale in 1e-4f32..100.0) {
        let mut rng = Rng::new(seed);
        let x = rng.floats(256 * blocks, scale);
        prop_assert_eq!(quant(GgmlType::Q8_0, &x), q8_naive(&x, false));
        prop_assert_eq!(quant(GgmlType::Q8_1, &x), q8_naive(&x, true));
        prop_assert_eq!(quant(GgmlType::Q8_K, &x), q8k_naive(&x));
    }
}
