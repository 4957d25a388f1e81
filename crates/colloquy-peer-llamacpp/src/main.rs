//! `colloquy-peer-llamacpp`: the llama.cpp side of `colloquy bench --peer llama.cpp`.
//!
//! It runs the same measurements as `colloquy bench` (see `crates/colloquy-cli/src/bench.rs`)
//! with llama.cpp, built from source by the `llama-cpp-2` crate, and prints them as JSON
//! lines on stdout. It mirrors llama-bench's method:
//!
//! - `ppP`: a P-token prompt of fixed pseudo-random token ids, decoded in one batch on an
//!   empty KV cache (n_batch = n_ubatch >= P);
//! - `tgN`: N single-token decode steps from an empty KV cache, each feeding a fixed token;
//! - `tgN@dD`: D prompt tokens decoded first (untimed), then N timed decode steps.
//!
//! Every test runs one untimed warm-up repetition, then `--reps` timed ones; the KV cache
//! is cleared before each. The context uses an f16 KV cache and no flash attention, as
//! llama-bench does by default.
//!
//! With `--sessions` it measures instead llama.cpp's equivalents of `colloquy bench-sessions`:
//!
//! - `load`: a 1,046-token state saved with `llama_state_save_file`, then loaded with
//!   `llama_state_load_file` into a second context (median of 20) vs re-processing the
//!   tokens in one batch (median of 3);
//! - `save_full`: `llama_state_save_file` of a 4,068-token context (median of 5; file size);
//! - `fork`: `llama_memory_seq_cp` of a 4,038-token sequence 0 to sequence 1 in a unified
//!   KV cache (metadata only, as colloquy's fork shares blocks), median of 200.
//!
//! This crate is a workspace member but not a default member, so plain `cargo build` and
//! `cargo test` never compile llama.cpp. Build it with
//! `cargo build --release -p colloquy-peer-llamacpp` (see BENCHMARKS.md for the flags that
//! give llama.cpp its native SIMD kernels).

use std::ffi::CStr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
// The same tokens as `colloquy bench` (one definition for both engines).
use colloquy_engine::bench_input::{bench_tokens, PROMPT_SEED};
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// Command-line options; they match `colloquy bench`'s.
#[derive(Parser)]
#[command(
    name = "colloquy-peer-llamacpp",
    about = "llama.cpp measurements for `colloquy bench --peer llama.cpp`"
)]
struct Cli {
    /// The GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Prompt length of the ppP test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Decode steps of the tgN tests (0 skips them).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Context depth of the tgN@dD test (0 skips it).
    #[arg(long, default_value_t = 512)]
    depth: usize,
    /// Threads.
    #[arg(short = 't', long, default_value_t = 1)]
    threads: usize,
    /// Timed repetitions per test.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Print JSON lines (the only output format; accepted for symmetry with `colloquy bench`).
    #[arg(long)]
    json: bool,
    /// Keep llama.cpp's own log on stderr.
    #[arg(long)]
    verbose: bool,
    /// Measure llama.cpp's equivalents of colloquy's session operations (state file load vs
    /// re-processing, full state save, in-context sequence copy) instead of throughput.
    #[arg(long)]
    sessions: bool,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The peak resident set size of this process in MiB (`VmHWM` in /proc/self/status).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Median and sample standard deviation.
fn median_stddev(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    let mean = s.iter().sum::<f64>() / n as f64;
    let var = if n > 1 { s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    (median, var.sqrt())
}

/// Decodes `tokens` in one batch after what the KV cache holds.
fn decode(ctx: &mut LlamaContext<'_>, tokens: &[LlamaToken]) -> Result<()> {
    let mut batch = LlamaBatch::get_one(tokens).context("empty batch")?;
    ctx.decode(&mut batch).context("llama_decode failed")?;
    Ok(())
}

/// One repetition's timed part in seconds: what it does depends on the test.
fn one_rep(
    ctx: &mut LlamaContext<'_>,
    test: &Test,
    prompt: &[LlamaToken],
    gen_token: LlamaToken,
    n_batch: usize,
) -> Result<f64> {
    ctx.clear_kv_cache();
    match *test {
        Test::Prompt(p) => {
            let t0 = Instant::now();
            decode(ctx, &prompt[..p])?;
            ctx.synchronize();
            Ok(t0.elapsed().as_secs_f64())
        }
        Test::Gen { n, depth } => {
            // Untimed context, in chunks of at most n_batch tokens.
            for chunk in prompt[..depth].chunks(n_batch) {
                decode(ctx, chunk)?;
            }
            ctx.synchronize();
            let t0 = Instant::now();
            for _ in 0..n {
                decode(ctx, &[gen_token])?;
                ctx.synchronize();
            }
            Ok(t0.elapsed().as_secs_f64())
        }
    }
}

/// A measurement.
enum Test {
    /// `ppP`.
    Prompt(usize),
    /// `tgN` (depth 0) or `tgN@dD`.
    Gen { n: usize, depth: usize },
}

impl Test {
    /// The llama-bench style name.
    fn name(&self) -> String {
        match *self {
            Test::Prompt(p) => format!("pp{p}"),
            Test::Gen { n, depth: 0 } => format!("tg{n}"),
            Test::Gen { n, depth } => format!("tg{n}@d{depth}"),
        }
    }

    /// Tokens the timed part processes.
    fn tokens(&self) -> usize {
        match *self {
            Test::Prompt(p) => p,
            Test::Gen { n, .. } => n,
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let _ = cli.json;
    if cli.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if cli.threads == 0 {
        bail!("--threads must be at least 1");
    }
    if !cli.model.is_file() {
        bail!("no such model file: {}", cli.model.display());
    }
    let mut backend = LlamaBackend::init().context("initializing llama.cpp")?;
    if !cli.verbose {
        backend.void_logs();
    }
    // SAFETY: llama_print_system_info returns a pointer to a static, NUL-terminated string.
    let system_info = unsafe { CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) }
        .to_string_lossy()
        .trim()
        .to_string();

    let model = LlamaModel::load_from_file(&backend, &cli.model, &LlamaModelParams::default())
        .with_context(|| format!("llama.cpp could not load {}", cli.model.display()))?;
    let rss_load = peak_rss_mb();

    let threads = i32::try_from(cli.threads).context("--threads is too large")?;
    if cli.sessions {
        println!("{}", serde_json::json!({"test": "system_info", "llama_cpp": system_info}));
        return run_sessions(&backend, &model, threads);
    }
    let n_ctx = cli.n_prompt.max(cli.depth + cli.n_gen).max(1);
    // >= P so that ppP is one batch; depth prefill (untimed) uses chunks of it.
    let n_batch = cli.n_prompt.max(cli.depth.min(512)).max(1);
    let n_ctx32 = u32::try_from(n_ctx).context("context too large")?;
    let n_batch32 = u32::try_from(n_batch).context("batch too large")?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx32))
        .with_n_batch(n_batch32)
        .with_n_ubatch(n_batch32)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_type_k(KvCacheType::F16)
        .with_type_v(KvCacheType::F16)
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED);
    let mut ctx = model.new_context(&backend, params).context("llama.cpp could not create a context")?;

    let n_vocab = usize::try_from(model.n_vocab()).context("bad vocabulary size")?;
    let to_llama = |ids: Vec<u32>| -> Result<Vec<LlamaToken>> {
        ids.into_iter().map(|t| Ok(LlamaToken(i32::try_from(t).context("token id out of range")?))).collect()
    };
    let prompt = to_llama(bench_tokens(cli.n_prompt.max(cli.depth), n_vocab, PROMPT_SEED))?;
    let gen_token =
        LlamaToken(i32::try_from(bench_tokens(1, n_vocab, PROMPT_SEED ^ 1)[0]).context("token id")?);

    let mut tests = Vec::new();
    if cli.n_prompt > 0 {
        tests.push(Test::Prompt(cli.n_prompt));
    }
    if cli.n_gen > 0 {
        tests.push(Test::Gen { n: cli.n_gen, depth: 0 });
        if cli.depth > 0 {
            tests.push(Test::Gen { n: cli.n_gen, depth: cli.depth });
        }
    }

    println!("{}", serde_json::json!({"test": "system_info", "llama_cpp": system_info}));
    for test in &tests {
        one_rep(&mut ctx, test, &prompt, gen_token, n_batch)?; // warm-up
        let mut tps = Vec::with_capacity(cli.reps);
        for _ in 0..cli.reps {
            let secs = one_rep(&mut ctx, test, &prompt, gen_token, n_batch)?;
            tps.push(test.tokens() as f64 / secs.max(1e-12));
        }
        let (median, spread) = median_stddev(&tps);
        println!(
            "{}",
            serde_json::json!({
                "test": test.name(),
                "threads": cli.threads,
                "tps": median,
                "spread": spread,
                "samples": tps,
            })
        );
    }
    println!("{}", serde_json::json!({"test": "rss_load_mb", "threads": cli.threads, "mb": rss_load}));
    println!("{}", serde_json::json!({"test": "rss_peak_mb", "threads": cli.threads, "mb": peak_rss_mb()}));
    Ok(())
}

/// Tokens of the `load` test (the session colloquy's bench-sessions loads).
const LOAD_TOKENS: usize = 1046;
/// Tokens of the `save_full` test (colloquy's session after one more turn).
const SAVE_TOKENS: usize = 4068;
/// Tokens of the `fork` test.
const FORK_TOKENS: usize = 4038;
/// Chunk size of untimed prefills.
const PREFILL_CHUNK: usize = 512;

/// A context for the session tests: f16 KV, no flash attention, as the throughput tests.
fn session_params(n_ctx: usize, n_batch: usize, threads: i32) -> Result<LlamaContextParams> {
    let n_ctx32 = u32::try_from(n_ctx).context("context too large")?;
    let n_batch32 = u32::try_from(n_batch).context("batch too large")?;
    Ok(LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx32))
        .with_n_batch(n_batch32)
        .with_n_ubatch(n_batch32)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_type_k(KvCacheType::F16)
        .with_type_v(KvCacheType::F16)
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED))
}

/// Decodes `tokens` into an emptied KV cache (sequence 0), in chunks of at most `chunk`.
fn prefill(ctx: &mut LlamaContext<'_>, tokens: &[LlamaToken], chunk: usize) -> Result<()> {
    ctx.clear_kv_cache();
    for c in tokens.chunks(chunk) {
        decode(ctx, c)?;
    }
    ctx.synchronize();
    Ok(())
}

/// Median of a sample.
fn median(xs: &[f64]) -> f64 {
    median_stddev(xs).0
}

/// Removes a file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `--sessions`: llama.cpp's equivalents of `colloquy bench-sessions`, as JSON lines.
fn run_sessions(backend: &LlamaBackend, model: &LlamaModel, threads: i32) -> Result<()> {
    let n_vocab = usize::try_from(model.n_vocab()).context("bad vocabulary size")?;
    let tokens: Vec<LlamaToken> = bench_tokens(SAVE_TOKENS.max(FORK_TOKENS), n_vocab, PROMPT_SEED)
        .into_iter()
        .map(|t| Ok(LlamaToken(i32::try_from(t).context("token id out of range")?)))
        .collect::<Result<_>>()?;
    let dir = std::env::temp_dir();
    let pid = std::process::id();

    // load: state file of LOAD_TOKENS tokens vs re-processing them in one batch.
    {
        let toks = &tokens[..LOAD_TOKENS];
        let params = || session_params(LOAD_TOKENS, LOAD_TOKENS, threads);
        let mut ctx = model.new_context(backend, params()?).context("creating a context")?;
        let file = TempFile(dir.join(format!("colloquy-peer-llamacpp-{pid}-load.state")));
        prefill(&mut ctx, toks, LOAD_TOKENS)?;
        ctx.state_save_file(&file.0, toks).context("llama_state_save_file failed")?;
        let mut fresh = model.new_context(backend, params()?).context("creating a context")?;
        let mut load_ms = Vec::new();
        for rep in 0..=20 {
            fresh.clear_kv_cache();
            let t0 = Instant::now();
            let got = fresh.state_load_file(&file.0, LOAD_TOKENS).context("llama_state_load_file failed")?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if got.len() != LOAD_TOKENS {
                bail!("state_load_file returned {} tokens, not {LOAD_TOKENS}", got.len());
            }
            if rep > 0 {
                load_ms.push(ms); // rep 0 is a warm-up
            }
        }
        let mut reprocess_ms = Vec::new();
        for rep in 0..=3 {
            ctx.clear_kv_cache();
            let t0 = Instant::now();
            decode(&mut ctx, toks)?;
            ctx.synchronize();
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if rep > 0 {
                reprocess_ms.push(ms);
            }
        }
        let bytes = std::fs::metadata(&file.0).map(|m| m.len()).unwrap_or(0);
        println!(
            "{}",
            serde_json::json!({
                "test": "load",
                "tokens": LOAD_TOKENS,
                "threads": threads,
                "load_ms": median(&load_ms),
                "reprocess_ms": median(&reprocess_ms),
                "bytes": bytes,
                "load_samples_ms": load_ms,
                "reprocess_samples_ms": reprocess_ms,
            })
        );
    }

    // save_full: the whole state of a SAVE_TOKENS-token context.
    {
        let toks = &tokens[..SAVE_TOKENS];
        let mut ctx = model
            .new_context(backend, session_params(SAVE_TOKENS, PREFILL_CHUNK, threads)?)
            .context("creating a context")?;
        prefill(&mut ctx, toks, PREFILL_CHUNK)?;
        let file = TempFile(dir.join(format!("colloquy-peer-llamacpp-{pid}-save.state")));
        let mut save_ms = Vec::new();
        for rep in 0..=5 {
            let _ = std::fs::remove_file(&file.0);
            let t0 = Instant::now();
            ctx.state_save_file(&file.0, toks).context("llama_state_save_file failed")?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if rep > 0 {
                save_ms.push(ms);
            }
        }
        let bytes = std::fs::metadata(&file.0).map(|m| m.len()).context("stat of the state file")?;
        println!(
            "{}",
            serde_json::json!({
                "test": "save_full",
                "tokens": SAVE_TOKENS,
                "ms": median(&save_ms),
                "bytes": bytes,
                "samples_ms": save_ms,
            })
        );
    }

    // fork: llama_memory_seq_cp of sequence 0 to 1 in a unified KV cache (the copy only
    // tags the cells with sequence 1; with per-sequence streams it would copy the buffers
    // at the next decode instead).
    {
        let toks = &tokens[..FORK_TOKENS];
        let params =
            session_params(FORK_TOKENS, PREFILL_CHUNK, threads)?.with_n_seq_max(2).with_kv_unified(true);
        let mut ctx = model.new_context(backend, params).context("creating a context")?;
        prefill(&mut ctx, toks, PREFILL_CHUNK)?;
        let mut us = Vec::new();
        for rep in 0..=200 {
            let t0 = Instant::now();
            ctx.copy_kv_cache_seq(0, 1, None, None).context("llama_memory_seq_cp")?;
            let t = t0.elapsed().as_secs_f64() * 1e6;
            if ctx.kv_cache_seq_pos_max(1) != ctx.kv_cache_seq_pos_max(0) {
                bail!("sequence 1 does not hold the copy");
            }
            ctx.kv_cache_seq_rm(1, None, None).context("llama_memory_seq_rm")?;
            if rep > 0 {
                us.push(t);
            }
        }
        println!(
            "{}",
            serde_json::json!({
                "test": "fork",
                "tokens": FORK_TOKENS,
                "kv_unified": true,
                "median_us": median(&us),
                "max_us": us.iter().copied().fold(0.0, f64::max),
            })
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fixed_and_in_range() {
        let a = bench_tokens(100, 1000, PROMPT_SEED);
        assert_eq!(a, bench_tokens(100, 1000, PROMPT_SEED));
        assert!(a.iter().all(|&t| t < 1000));
    }

    #[test]
    fn tokens_match_the_other_side() {
        // The same known answer is tested in the other crate (colloquy bench / the peer).
        assert_eq!(bench_tokens(4, 49152, PROMPT_SEED), [42702, 5506, 16897, 41692]);
    }

    #[test]
    fn median_and_stddev() {
        let (m, s) = median_stddev(&[1.0, 3.0, 2.0]);
        assert_eq!(m, 2.0);
        assert!((s - 1.0).abs() < 1e-12);
    }
}
