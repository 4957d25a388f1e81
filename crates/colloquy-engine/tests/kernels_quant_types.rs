//! Q2_K, Q3_K, IQ4_NL and IQ4_XS: dequantization bit for bit as llama.cpp's
//! own `gguf` package computes it (fixtures/quant_reference.json, written by
//! scripts/fixtures/quant_reference.py), and dot products that equal the
//! dot of the dequantized rows (in f64) within rounding, the same bits on
//! every backend and for any number of rows at once.

mod kernels_support;

use colloquy_engine::kernels::{self, Backend, GgmlType};
use kernels_support::{random_weights, Rng};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    #[serde(rename = "type")]
    ty: String,
    elements: usize,
    bytes_hex: String,
    value_bits: Vec<u32>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

const TYPES: [GgmlType; 4] = [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::IQ4_NL, GgmlType::IQ4_XS];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn dequantization_matches_llama_cpps_gguf_package() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant_reference.json");
    let f: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(f.cases.len(), TYPES.len());
    for case in &f.cases {
        let ty = TYPES.into_iter().find(|t| t.name() == case.ty).expect("a known type");
        let mut out = vec![0f32; case.elements];
        kernels::dequantize_row(ty, &unhex(&case.bytes_hex), &mut out).unwrap();
        let bad: Vec<usize> = (0..out.len()).filter(|&i| out[i].to_bits() != case.value_bits[i]).collect();
        assert!(bad.is_empty(), "{ty}: {} of {} values differ, first at {}", bad.len(), out.len(), bad[0]);
    }
}

#[test]
fn dots_equal_the_dequantized_dot_on_every_backend() {
    let mut rng = Rng::new(77);
    for ty in TYPES {
        for blocks in [1usize, 3, 8] {
            let n = blocks * 256;
            let w = random_weights(&mut rng, ty, n);
            let x = rng.floats(n, 1.0);
            let mut xq = vec![0u8; kernels::activation_row_bytes(ty, n).unwrap()];
            kernels::quantize_activation(ty, &x, &mut xq).unwrap();
            // The reference: both rows dequantized, summed in f64.
            let (mut wf, mut xf) = (vec![0f32; n], vec![0f32; n]);
            kernels::dequantize_row(ty, &w, &mut wf).unwrap();
            kernels::dequantize_row(ty.vec_dot_type(), &xq, &mut xf).unwrap();
            let want: f64 = wf.iter().zip(&xf).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = wf.iter().zip(&xf).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            let portable = kernels::vec_dot_with(Backend::Scalar, ty, &w, &xq, n).unwrap();
            assert!((portable as f64 - want).abs() <= 1e-5 * mag + 1e-6, "{ty} n={n}: {portable} vs {want}");
            for b in Backend::ALL.into_iter().filter(|b| b.is_available()) {
                let v = kernels::vec_dot_with(b, ty, &w, &xq, n).unwrap();
                assert_eq!(v.to_bits(), portable.to_bits(), "{ty} on {}", b.name());
            }
            // Four activation rows at once give each row's bits.
            let rows: Vec<u8> = xq.iter().chain(&xq).chain(&xq).chain(&xq).copied().collect();
            let mut out = [0f32; 4];
            kernels::vec_dot_rows(ty, &w, &rows, xq.len(), 4, n, &mut out).unwrap();
            assert!(out.iter().all(|v| v.to_bits() == portable.to_bits()), "{ty}: {out:?} vs {portable}");
        }
    }
}
