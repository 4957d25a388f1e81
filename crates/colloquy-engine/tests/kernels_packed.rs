//! Packed (8-row interleaved) weights: lossless repacking, and products
//! bit-identical to `vec_dot` for every backend, row range and batch size.

mod kernels_support;

use colloquy_engine::kernels::{self, Backend, GgmlType, PackedWeights};
use kernels_support::{activation, random_weights, Rng};
use proptest::prelude::*;

const TYPES: [GgmlType; 5] =
    [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::IQ4_NL];

fn backends() -> Vec<Backend> {
    Backend::ALL.into_iter().filter(|b| b.is_available()).collect()
}

fn check(ty: GgmlType, rows: usize, n: usize, m: usize, range: std::ops::Range<usize>, seed: u64) {
    let mut rng = Rng::new(seed);
    let w: Vec<u8> = (0..rows).flat_map(|_| random_weights(&mut rng, ty, n)).collect();
    let wlen = ty.row_bytes(n).unwrap();
    let xlen = kernels::activation_row_bytes(ty, n).unwrap();
    let xs: Vec<u8> = (0..m).flat_map(|t| activation(ty, &rng.floats(n, 1.0 + t as f32))).collect();
    let p = PackedWeights::pack(ty, &w, rows, n).unwrap();
    for r in 0..rows {
        let back = p.unpack_row(r).unwrap();
        assert_eq!(back, &w[r * wlen..(r + 1) * wlen], "{ty} row {r} repacks losslessly");
    }
    let width = range.end - range.start;
    let stride = width + 1;
    for b in backends() {
        let mut out = vec![f32::NAN; (m.max(1) - 1) * stride + width.max(1)];
        p.matmul_with(b, range.clone(), &xs, m, &mut out, stride).unwrap();
        for t in 0..m {
            for r in range.clone() {
                let want = kernels::vec_dot_with(
                    Backend::Scalar,
                    ty,
                    &w[r * wlen..(r + 1) * wlen],
                    &xs[t * xlen..(t + 1) * xlen],
                    n,
                )
                .unwrap();
                let got = out[t * stride + (r - range.start)];
                assert_eq!(got.to_bits(), want.to_bits(), "{ty} {} rows={rows} m={m} r={r} t={t}", b.name());
            }
        }
    }
}

/// Every batch size on each shape `(rows, n)`, then row ranges not aligned to
/// the 8-row groups, and the tail, on 21 rows of `n_ranges`.
fn check_shapes(ty: GgmlType, shapes: [(usize, usize); 5], n_ranges: usize) {
    for (rows, n) in shapes {
        for m in [1usize, 2, 3, 4, 5, 9] {
            check(ty, rows, n, m, 0..rows, rows as u64 * 31 + m as u64);
        }
    }
    check(ty, 21, n_ranges, 3, 3..19, 5);
    check(ty, 21, n_ranges, 1, 16..21, 6);
    check(ty, 21, n_ranges, 6, 9..10, 7);
}

#[test]
fn packed_matches_vec_dot() {
    for ty in TYPES {
        check_shapes(ty, [(8, 32), (16, 576), (13, 96), (24, 1536), (5, 64)], 128);
    }
}

/// Q4_K, Q5_K, Q6_K and IQ4_XS (256-wide superblocks, their own packed layouts): lossless,
/// and the bits of `vec_dot`.
#[test]
fn packed_k_quants_match_vec_dot() {
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_XS] {
        check_shapes(ty, [(8, 256), (16, 512), (13, 256), (24, 1536), (5, 256)], 512);
    }
}

#[test]
fn packing_rejects_bad_input() {
    assert!(PackedWeights::pack(GgmlType::Q3_K, &[0u8; 110 * 8], 8, 256).is_err());
    assert!(PackedWeights::pack(GgmlType::Q4_1, &[0u8; 20 * 8 - 1], 8, 32).is_err());
    assert!(PackedWeights::pack(GgmlType::Q4_1, &[0u8; 20 * 8], 8, 33).is_err());
    let p = PackedWeights::pack(GgmlType::Q4_1, &[0u8; 20 * 8], 8, 32).unwrap();
    let x = vec![0u8; 36];
    let mut out = [0.0f32; 8];
    assert!(p.matmul(0..9, &x, 1, &mut out, 8).is_err());
    assert!(p.matmul(0..8, &x, 1, &mut out[..7], 8).is_err());
    assert!(p.matmul(0..8, &x[..35], 1, &mut out, 8).is_err());
    assert!(p.matmul(0..8, &x, 1, &mut out, 8).is_ok());
    assert!(p.unpack_row(8).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn prop_packed_bits(ty in prop::sample::select(TYPES.to_vec()), rows in 1usize..30, blocks in 1usize..6,
                        m in 1usize..7, seed in any::<u64>()) {
        check(ty, rows, 32 * blocks, m, 0..rows, seed);
    }
}
