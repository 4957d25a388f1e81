//! What one synchronization of the thread pool costs: back-to-back
//! parallel sections with (almost) no work, as a decode step runs about 150
//! of them per token. Bench-only; run with
//! `cargo run --release -p colloquy-engine --example pool_sync -- [THREADS] [SECTIONS]`.

use colloquy_engine::pool::{chunk_size, ThreadPool};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let sections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let pool = ThreadPool::new(threads);
    let items = AtomicUsize::new(0);
    // 72 items as a matmul of 576 rows has 72 groups of 8.
    let n = 72;
    let chunk = chunk_size(n, threads);
    for round in 0..3 {
        let t0 = Instant::now();
        for _ in 0..sections {
            pool.for_chunks(n, chunk, &|_, r| {
                items.fetch_add(r.len(), Ordering::Relaxed);
            });
        }
        let per = t0.elapsed().as_secs_f64() / sections as f64;
        println!(
            "round {round}: {threads} threads, {} chunks per section: {:.2} µs per section",
            n.div_ceil(chunk),
            per * 1e6
        );
    }
    assert_eq!(items.load(Ordering::Relaxed), 3 * sections * n);
}
