//! Single-thread throughput of the dot kernels on model-sized matrices.
//!
//! Run with: `cargo test --release -p colloquy-engine --test kernels_bench -- --ignored --nocapture`

mod kernels_support;

use colloquy_engine::kernels::{self, Backend, GgmlType};
use kernels_support::{activation, random_weights, Rng};
use std::hint::black_box;
use std::time::Instant;

/// Times `rows x n` matrix-vector products (and 4-row batches); prints µs per
/// product and effective weight bandwidth.
fn bench(ty: GgmlType, rows: usize, n: usize, backend: Backend) {
    let mut rng = Rng::new(1);
    let w: Vec<u8> = (0..rows).flat_map(|_| random_weights(&mut rng, ty, n)).collect();
    let wlen = ty.row_bytes(n).unwrap();
    let xs: Vec<u8> = (0..4).flat_map(|_| activation(ty, &rng.floats(n, 1.0))).collect();
    let xlen = kernels::activation_row_bytes(ty, n).unwrap();
    let mut out = vec![0.0f32; rows * 4];

    // Matrix-vector (decode): one activation row.
    let iters = (2e9 / (rows * n) as f64).clamp(3.0, 2000.0) as usize;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..iters {
            for r in 0..rows {
                out[r] =
                    kernels::vec_dot_with(backend, ty, &w[r * wlen..(r + 1) * wlen], &xs[..xlen], n).unwrap();
            }
            black_box(&out);
        }
        best = best.min(t0.elapsed().as_secs_f64() / iters as f64);
    }
    // The same through `matmul` (four weight rows per tile).
    let mut best_mm = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..iters {
            kernels::matmul_with(backend, ty, &w, rows, &xs[..xlen], 1, n, &mut out[..rows], rows).unwrap();
            black_box(&out);
        }
        best_mm = best_mm.min(t0.elapsed().as_secs_f64() / iters as f64);
    }
    // Four activation rows at once (prompt processing).
    let mut best4 = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..iters / 4 + 1 {
            for r in 0..rows {
                kernels::vec_dot_rows_with(
                    backend,
                    ty,
                    &w[r * wlen..(r + 1) * wlen],
                    &xs,
                    xlen,
                    4,
                    n,
                    &mut out[4 * r..4 * r + 4],
                )
                .unwrap();
            }
            black_box(&out);
        }
        best4 = best4.min(t0.elapsed().as_secs_f64() / (iters / 4 + 1) as f64);
    }
    let bytes = (rows * wlen) as f64;
    println!(
        "{:>5} {:>7} {rows:>5}x{n:<5} vec_dot {:7.1} us | matmul {:7.1} us ({:6.2} GB/s, {:6.2} Gelem/s) | 4 rows {:8.1} us ({:6.1} us/row)",
        ty.name(),
        backend.name(),
        best * 1e6,
        best_mm * 1e6,
        bytes / best_mm / 1e9,
        (rows * n) as f64 / best_mm / 1e9,
        best4 * 1e6,
        best4 * 1e6 / 4.0,
    );
}

#[test]
#[ignore]
fn bench_matvec() {
    let only = std::env::var("BENCH_BACKEND").ok();
    for backend in Backend::ALL
        .into_iter()
        .rev()
        .filter(|b| b.is_available() && only.as_deref().is_none_or(|o| o == b.name()))
    {
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
            bench(ty, 1536, 576, backend);
            bench(ty, 576, 1536, backend);
        }
        bench(GgmlType::Q8_0, 49152, 576, backend);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::F16,
            GgmlType::F32,
        ] {
            bench(ty, 1536, 1024, backend);
        }
    }
}
