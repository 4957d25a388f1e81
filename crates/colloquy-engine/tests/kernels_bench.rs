//! Single-thread throughput of the dot kernels on model-sized matrices.
//!
//! Run with: `cargo test --release -p colloquy-engine --test kernels_bench -- --ignored --nocapture`

mod kernels_support;

use colloquy_engine::kernels::{self, Backend, GgmlType, PackedWeights};
use kernels_support::{activation, random_weights, Rng};
use std::hint::black_box;
use std::time::Instant;

/// Times `rows x n` matrix-vector products (and 4-row batches); prints µs per
/// product and effective weight bandwidth.
fn bench(ty: GgmlType, rows: usize, n: usize, backend: Backend) {
    if let Ok(only) = std::env::var("BENCH_TYPES") {
        if !only.split(',').any(|t| t == ty.name()) {
            return;
        }
    }
    let mut rng = Rng::new(1);
    let w: Vec<u8> = (0..rows).flat_map(|_| random_weights(&mut rng, ty, n)).collect();
    let wlen = ty.row_bytes(n).unwrap();
    let xs: Vec<u8> = (0..4).flat_map(|_| activation(ty, &rng.floats(n, 1.0))).collect();
    let xlen = kernels::activation_row_bytes(ty, n).unwrap();
    let mut out = vec![0.0f32; rows * 4];

    // Matrix-vector (decode): one activation row.
    let iters = (2e9 / (rows * n) as f64).clamp(3.0, 2000.0) as usize;
    let reps = if rows * n > 10_000_000 { 15 } else { 5 };
    let mut best = f64::MAX;
    for _ in 0..reps {
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
    for _ in 0..reps {
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
    // Packed weights (Q4_0/Q4_1/Q8_0): one row, and 16 rows at a time.
    let mut packed = String::new();
    if PackedWeights::supports(ty) {
        let pw = PackedWeights::pack(ty, &w, rows, n).unwrap();
        let x16: Vec<u8> = (0..16).flat_map(|_| activation(ty, &rng.floats(n, 1.0))).collect();
        let mut out16 = vec![0.0f32; rows * 16];
        let mut bp = [f64::MAX; 2];
        for _ in 0..reps {
            let t0 = Instant::now();
            for _ in 0..iters {
                pw.matmul_with(backend, 0..rows, &xs[..xlen], 1, &mut out[..rows], rows).unwrap();
                black_box(&out);
            }
            bp[0] = bp[0].min(t0.elapsed().as_secs_f64() / iters as f64);
            let t0 = Instant::now();
            for _ in 0..iters / 16 + 1 {
                pw.matmul_with(backend, 0..rows, &x16, 16, &mut out16, rows).unwrap();
                black_box(&out16);
            }
            bp[1] = bp[1].min(t0.elapsed().as_secs_f64() / (iters / 16 + 1) as f64);
        }
        packed = format!(" | packed {:7.1} us, 16 rows {:6.1} us/row", bp[0] * 1e6, bp[1] * 1e6 / 16.0);
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
    if !packed.is_empty() {
        println!("{:>40}{packed}", "");
    }
}

#[test]
#[ignore]
fn bench_large() {
    // Weights far larger than the caches: memory bandwidth bound.
    let backend = Backend::detect();
    bench(GgmlType::Q4_1, 49152, 2048, backend);
    bench(GgmlType::Q8_0, 49152, 1024, backend);
    // Q5_0 (Gemma 3's Q4_K_M file), the IQ4 types and the K-quants of
    // Q4_K_M/Q5_K_M files, at a 1.5B model's FFN width.
    for ty in
        [GgmlType::Q5_0, GgmlType::IQ4_NL, GgmlType::IQ4_XS, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K]
    {
        bench(ty, 32768, 1536, backend);
    }
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
            GgmlType::IQ4_NL,
            GgmlType::F16,
            GgmlType::F32,
        ] {
            bench(ty, 1536, 1024, backend);
        }
    }
}

/// Decode-like streaming: many 1536x576 matrices, together far larger than
/// the caches, each used once per pass (as the layers of a model are).
#[test]
#[ignore]
fn bench_stream() {
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
        let (rows, n, mats) = (1536usize, 576usize, 300usize);
        let mut rng = Rng::new(9);
        let one: Vec<u8> = (0..rows).flat_map(|_| random_weights(&mut rng, ty, n)).collect();
        let w: Vec<u8> = (0..mats).flat_map(|_| one.iter().copied()).collect();
        let x = activation(ty, &rng.floats(n, 1.0));
        let wlen = ty.row_bytes(n).unwrap();
        let mut out = vec![0.0f32; rows];
        let packs: Vec<PackedWeights> =
            w.chunks_exact(rows * wlen).map(|mat| PackedWeights::pack(ty, mat, rows, n).unwrap()).collect();
        for backend in [Backend::detect()] {
            let mut best = [f64::MAX; 3];
            for _ in 0..5 {
                let t0 = Instant::now();
                for mat in w.chunks_exact(rows * wlen) {
                    for r in 0..rows {
                        out[r] = kernels::vec_dot_with(backend, ty, &mat[r * wlen..(r + 1) * wlen], &x, n)
                            .unwrap();
                    }
                    black_box(&out);
                }
                best[0] = best[0].min(t0.elapsed().as_secs_f64());
                let t0 = Instant::now();
                for mat in w.chunks_exact(rows * wlen) {
                    kernels::matmul_with(backend, ty, mat, rows, &x, 1, n, &mut out, rows).unwrap();
                    black_box(&out);
                }
                best[1] = best[1].min(t0.elapsed().as_secs_f64());
                let t0 = Instant::now();
                for p in &packs {
                    p.matmul_with(backend, 0..rows, &x, 1, &mut out, rows).unwrap();
                    black_box(&out);
                }
                best[2] = best[2].min(t0.elapsed().as_secs_f64());
            }
            let gb = w.len() as f64 / 1e9;
            println!(
                "{:>5} {:>7} stream {} MB: vec_dot {:6.2} GB/s | matmul {:6.2} GB/s | packed {:6.2} GB/s",
                ty.name(),
                backend.name(),
                w.len() / 1_000_000,
                gb / best[0],
                gb / best[1],
                gb / best[2]
            );
        }
    }
}
