//! The memory-bandwidth probe of `colloquy bench`: how fast this machine
//! streams a buffer far larger than its last-level cache, on 1 and on T
//! threads. Decoding reads every weight once per token, so bandwidth ÷ the
//! bytes a step reads ([`Model::decode_bytes`](colloquy_engine::model::Model::decode_bytes))
//! is the most tokens/s any engine can decode here; `colloquy bench` prints
//! each decode figure's fraction of it.

use std::time::Instant;

use colloquy_engine::pool::{split_range, DisjointSlice, ThreadPool};

/// The probe's buffer: 512 MiB, or 16× the last-level cache if that is larger,
/// so that no pass is served from cache.
fn buffer_bytes() -> usize {
    let l3 = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index3/size")
        .ok()
        .and_then(|s| parse_cache_size(s.trim()))
        .unwrap_or(32 << 20);
    (512usize << 20).max(16 * l3)
}

/// Parses sysfs cache sizes such as `32768K` or `32M`.
fn parse_cache_size(s: &str) -> Option<usize> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: usize = digits.parse().ok()?;
    match unit {
        "" => Some(n),
        "K" => Some(n << 10),
        "M" => Some(n << 20),
        "G" => Some(n << 30),
        _ => None,
    }
}

/// Read bandwidth in GB/s (10⁹ bytes/s): the median of `passes` timed passes
/// over the buffer, each thread streaming its own contiguous part, as a matmul's
/// rows are split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bandwidth {
    /// Threads that read.
    pub threads: usize,
    /// Median GB/s.
    pub gbps: f64,
    /// Lowest and highest pass.
    pub range: (f64, f64),
}

/// Measures read bandwidth on 1 thread and, when `threads > 1`, on `threads`.
pub fn probe(threads: usize, passes: usize) -> Vec<Bandwidth> {
    let words = buffer_bytes() / 8;
    let mut buf = vec![0u64; words];
    let pool = ThreadPool::new(threads);
    {
        // Write every page (from the threads that will read it), so that the
        // passes read memory, not the shared zero page.
        let out = DisjointSlice::new(&mut buf);
        pool.run(&|t| {
            let r = split_range(words, threads, t);
            // SAFETY: each thread writes its own range.
            let part = unsafe { out.slice(r.start, r.len()) };
            for (i, w) in part.iter_mut().enumerate() {
                *w = (r.start + i) as u64;
            }
        });
    }
    let mut counts = vec![1];
    if threads > 1 {
        counts.push(threads);
    }
    counts.into_iter().map(|n| measure(&pool, &buf, n, passes.max(1))).collect()
}

fn measure(pool: &ThreadPool, buf: &[u64], readers: usize, passes: usize) -> Bandwidth {
    let mut samples = Vec::with_capacity(passes);
    // One untimed pass first, as the benches warm up.
    for pass in 0..=passes {
        let t0 = Instant::now();
        pool.run(&|t| {
            if t < readers {
                std::hint::black_box(sum(&buf[split_range(buf.len(), readers, t)]));
            }
        });
        let secs = t0.elapsed().as_secs_f64();
        if pass > 0 {
            samples.push(std::mem::size_of_val(buf) as f64 / secs.max(1e-12) / 1e9);
        }
    }
    samples.sort_by(f64::total_cmp);
    let gbps = samples[samples.len() / 2];
    Bandwidth { threads: readers, gbps, range: (samples[0], samples[samples.len() - 1]) }
}

/// Reads every word as fast as this CPU can: with AVX2 and software
/// prefetch when it has them (as the matmul kernels read their weights), so
/// that the bound is never below what a kernel could reach.
fn sum(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        return unsafe { sum_avx2(words) };
    }
    sum_portable(words)
}

/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(words: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut chunks = words.chunks_exact(16);
    for c in &mut chunks {
        let p = c.as_ptr();
        _mm_prefetch::<_MM_HINT_T0>((p as *const i8).wrapping_add(2048));
        _mm_prefetch::<_MM_HINT_T0>((p as *const i8).wrapping_add(2048 + 64));
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_epi64(*a, _mm256_loadu_si256(p.add(4 * i) as *const __m256i));
        }
    }
    let mut lanes = [0u64; 4];
    let total = _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, total);
    lanes.iter().fold(sum_portable(chunks.remainder()), |a, w| a.wrapping_add(*w))
}

/// Reads every word, with independent accumulators so that the loop is bound
/// by loads, not by one add chain.
fn sum_portable(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = words.chunks_exact(8);
    for c in &mut chunks {
        for (a, w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*w);
        }
    }
    let tail: u64 = chunks.remainder().iter().fold(0, |a, w| a.wrapping_add(*w));
    acc.iter().fold(tail, |a, w| a.wrapping_add(*w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("32768K"), Some(32 << 20));
        assert_eq!(parse_cache_size("32M"), Some(32 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("12X"), None);
        assert_eq!(parse_cache_size(""), None);
    }

    #[test]
    fn the_sum_reads_every_word() {
        let words: Vec<u64> = (1..=1003).collect();
        assert_eq!(sum(&words), 1003 * 1004 / 2);
        assert_eq!(sum_portable(&words), 1003 * 1004 / 2);
    }
}
