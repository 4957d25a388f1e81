//! Dot-product kernels: backends agree, match a dequantize-then-f64 reference,
//! and the multi-row kernel is bit-identical to the single-row one.

mod kernels_support;

use colloquy_engine::kernels::{self, Backend, GgmlType};
use kernels_support::{activation, activation_values, random_weights, sizes, Rng};
use proptest::prelude::*;

fn backends() -> Vec<Backend> {
    Backend::ALL.into_iter().filter(|b| b.is_available()).collect()
}

/// Exact dot of the dequantized rows in f64, plus the magnitude sum |w||x|.
///
/// For Q4_1/Q5_1 the min term uses the activation's stored `s` (an f16
/// rounding of `d * sum(q)`), as ggml's formula does.
fn reference(ty: GgmlType, w: &[u8], xq: &[u8], n: usize) -> (f64, f64) {
    let mut wf = vec![0.0f32; n];
    let mut dot = 0.0f64;
    let mut mag = 0.0f64;
    if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
        let mut w0 = w.to_vec();
        for (wb, xb) in w0.chunks_exact_mut(ty.type_size()).zip(xq.chunks_exact(36)) {
            let m = half::f16::from_le_bytes([wb[2], wb[3]]).to_f64();
            let s = half::f16::from_le_bytes([xb[2], xb[3]]).to_f64();
            dot += m * s;
            mag += (m * s).abs();
            wb[2] = 0;
            wb[3] = 0;
        }
        kernels::dequantize_row(ty, &w0, &mut wf).unwrap();
    } else {
        kernels::dequantize_row(ty, w, &mut wf).unwrap();
    }
    let xf = activation_values(ty, xq, n);
    for (a, b) in wf.iter().zip(&xf) {
        dot += *a as f64 * *b as f64;
        mag += (*a as f64 * *b as f64).abs();
    }
    (dot, mag)
}

fn check_case(ty: GgmlType, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let w = random_weights(&mut rng, ty, n);
    let x = rng.floats(n, 1.0);
    let xq = activation(ty, &x);
    let (want, mag) = reference(ty, &w, &xq, n);
    let tol = 1e-4 * mag + 1e-6;
    let mut got = Vec::new();
    for b in backends() {
        let v = kernels::vec_dot_with(b, ty, &w, &xq, n).unwrap();
        assert!(
            (v as f64 - want).abs() <= tol,
            "{ty} n={n} seed={seed} {}: got {v}, reference {want} (tol {tol})",
            b.name()
        );
        got.push(v);
    }
    // Every dot, the float types' included, is bit-identical on every backend:
    // the portable kernels follow the SIMD kernels' order of operations.
    for v in &got[1..] {
        assert_eq!(v.to_bits(), got[0].to_bits(), "{ty} n={n}: backends differ {got:?}");
    }
}

#[test]
fn vec_dot_matches_reference_all_types() {
    for ty in GgmlType::DOT_TYPES {
        for n in sizes(ty) {
            for seed in 0..3 {
                check_case(ty, n, seed * 1000 + n as u64);
            }
        }
    }
}

#[test]
fn multi_row_is_bit_identical_to_single_row() {
    for ty in GgmlType::DOT_TYPES {
        for n in sizes(ty) {
            let mut rng = Rng::new(n as u64 ^ ty.id() as u64);
            let w = random_weights(&mut rng, ty, n);
            let xlen = kernels::activation_row_bytes(ty, n).unwrap();
            for m in [1usize, 2, 3, 4, 5, 7, 8, 9] {
                // Padded stride, to exercise non-packed rows.
                let stride = xlen + 4 * (m % 3);
                let mut xs = vec![0u8; stride * m];
                for t in 0..m {
                    let x = rng.floats(n, 1.0 + t as f32);
                    let q = activation(ty, &x);
                    xs[t * stride..t * stride + xlen].copy_from_slice(&q);
                }
                for b in backends() {
                    let mut out = vec![0.0f32; m];
                    kernels::vec_dot_rows_with(b, ty, &w, &xs, stride, m, n, &mut out).unwrap();
                    for t in 0..m {
                        let single =
                            kernels::vec_dot_with(b, ty, &w, &xs[t * stride..t * stride + xlen], n).unwrap();
                        assert_eq!(
                            out[t].to_bits(),
                            single.to_bits(),
                            "{ty} n={n} m={m} row {t} {}: multi {} vs single {single}",
                            b.name(),
                            out[t]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_is_bit_identical_to_vec_dot() {
    for ty in GgmlType::DOT_TYPES {
        for (rows, m) in [(9usize, 1usize), (5, 6), (4, 1), (3, 9)] {
            let n = if ty.block_size() == 256 { 512 } else { 96 };
            let mut rng = Rng::new(77 + rows as u64);
            let w: Vec<u8> = (0..rows).flat_map(|_| random_weights(&mut rng, ty, n)).collect();
            let xs: Vec<u8> = (0..m).flat_map(|_| activation(ty, &rng.floats(n, 1.0))).collect();
            let xlen = kernels::activation_row_bytes(ty, n).unwrap();
            let wlen = ty.row_bytes(n).unwrap();
            let stride = rows + 3;
            for b in backends() {
                let mut out = vec![f32::NAN; (m - 1) * stride + rows];
                kernels::matmul_with(b, ty, &w, rows, &xs, m, n, &mut out, stride).unwrap();
                for t in 0..m {
                    for r in 0..rows {
                        let v = kernels::vec_dot_with(
                            b,
                            ty,
                            &w[r * wlen..(r + 1) * wlen],
                            &xs[t * xlen..(t + 1) * xlen],
                            n,
                        )
                        .unwrap();
                        assert_eq!(
                            out[t * stride + r].to_bits(),
                            v.to_bits(),
                            "{ty} {} rows={rows} m={m} ({r},{t})",
                            b.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn dot_f32_backends_agree() {
    let mut rng = Rng::new(5);
    for n in [0usize, 1, 5, 8, 9, 31, 32, 33, 64, 100, 1000] {
        let a = rng.floats(n, 1.0);
        let b = rng.floats(n, 1.0);
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let mag: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
        let portable = kernels::dot_f32_with(Backend::Scalar, &a, &b);
        for be in backends() {
            let got = kernels::dot_f32_with(be, &a, &b);
            assert_eq!(
                got.to_bits(),
                portable.to_bits(),
                "n={n} {}: {got} vs portable {portable}",
                be.name()
            );
            assert!((got as f64 - want).abs() <= 1e-5 * mag + 1e-6, "n={n} {}: {got} vs {want}", be.name());
            // Same answer every call.
            assert_eq!(got.to_bits(), kernels::dot_f32_with(be, &a, &b).to_bits());
        }
    }
}

#[test]
fn bad_lengths_are_errors() {
    let w = vec![0u8; 20];
    let x = vec![0u8; 36];
    assert!(kernels::vec_dot(GgmlType::Q4_1, &w, &x, 32).is_ok());
    assert!(kernels::vec_dot(GgmlType::Q4_1, &w, &x, 33).is_err());
    assert!(kernels::vec_dot(GgmlType::Q4_1, &w[..19], &x, 32).is_err());
    assert!(kernels::vec_dot(GgmlType::Q4_1, &w, &x[..35], 32).is_err());
    assert!(kernels::vec_dot(GgmlType::Q2_K, &w, &x, 256).is_err());
    let mut out = [0.0f32; 2];
    assert!(kernels::vec_dot_rows(GgmlType::Q4_1, &w, &x, 36, 2, 32, &mut out).is_err());
    assert!(kernels::vec_dot_rows(GgmlType::Q4_1, &w, &x, 30, 1, 32, &mut out).is_err());
    assert!(kernels::vec_dot_rows(GgmlType::Q4_1, &w, &x, 36, 1, 32, &mut out[..0]).is_err());
}

fn dot_type() -> impl Strategy<Value = GgmlType> {
    prop::sample::select(GgmlType::DOT_TYPES.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_backends_agree(ty in dot_type(), blocks in 1usize..8, seed in any::<u64>()) {
        let n = blocks * ty.block_size().max(32);
        check_case(ty, n, seed);
    }

    #[test]
    fn prop_multi_row_bits(ty in dot_type(), blocks in 1usize..4, m in 1usize..7, seed in any::<u64>()) {
        let n = blocks * ty.block_size().max(32);
        let mut rng = Rng::new(seed);
        let w = random_weights(&mut rng, ty, n);
        let xlen = kernels::activation_row_bytes(ty, n).unwrap();
        let xs: Vec<u8> = (0..m).flat_map(|_| activation(ty, &rng.floats(n, 2.0))).collect();
        for b in backends() {
            let mut out = vec![0.0f32; m];
            kernels::vec_dot_rows_with(b, ty, &w, &xs, xlen, m, n, &mut out).unwrap();
            for t in 0..m {
                let single = kernels::vec_dot_with(b, ty, &w, &xs[t * xlen..(t + 1) * xlen], n).unwrap();
                prop_assert_eq!(out[t].to_bits(), single.to_bits());
            }
        }
    }
}
