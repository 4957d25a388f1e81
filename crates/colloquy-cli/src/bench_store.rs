//! `colloquy bench-store`: a session store on Redis (or a folder) with a
//! long session: resuming it against re-processing its tokens (colloquy's
//! own forward pass, and llama.cpp's `llama-bench` on the same GGUF and
//! threads), the incremental save after a turn (bytes that reach Redis),
//! and what 100 forks cost in Redis memory.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use colloquy::language::*;
use colloquy::store::RedisBackend;
use serde_json::json;

use crate::bench_serve::median;

#[derive(Args)]
pub struct StoreBenchArgs {
    /// The store: `redis://HOST:PORT/DB` (a fresh prefix is used, and removed
    /// after), or a folder.
    #[arg(long)]
    store: String,
    /// A .gguf path or a known model name.
    #[arg(long, default_value = "smollm2")]
    model: String,
    #[arg(short = 't', long, default_value_t = 2)]
    threads: usize,
    /// Tokens in the session.
    #[arg(long, default_value_t = 4000)]
    tokens: usize,
    /// Timed repetitions of each load (re-processing runs a third as often).
    #[arg(long, default_value_t = 9)]
    reps: usize,
    /// llama.cpp's `llama-bench`, for its time to process the same tokens
    /// (default: target/llama.cpp/bin/llama-bench, built by
    /// scripts/bench/build-llama-cpp.sh; skipped when missing).
    #[arg(long)]
    llama_bench: Option<PathBuf>,
}

pub fn run(args: StoreBenchArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(run_async(args))
}

/// A Redis counter from `INFO` (0 when the store is not Redis).
fn redis_stat(redis: Option<&RedisBackend>, section: &str, field: &str) -> Result<u64> {
    let Some(r) = redis else { return Ok(0) };
    let info = r.info(section)?;
    let prefix = format!("{field}:");
    Ok(info.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}

/// llama-bench's median time, in seconds, to process `tokens` prompt tokens.
fn llama_bench_pp(
    bin: &std::path::Path,
    model: &std::path::Path,
    tokens: usize,
    threads: usize,
) -> Result<f64> {
    let out = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["-p", &tokens.to_string(), "-n", "0", "-t", &threads.to_string(), "-r", "3", "-o", "json"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    }
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).context("llama-bench's JSON")?;
    let ns = rows[0]["avg_ns"].as_f64().context("llama-bench printed no avg_ns")?;
    Ok(ns / 1e9)
}

async fn run_async(args: StoreBenchArgs) -> Result<()> {
    let is_redis = args.store.starts_with("redis");
    let location = if is_redis {
        let sep = if args.store.contains('?') { '&' } else { '?' };
        format!("{}{sep}prefix=bench-{}", args.store, std::process::id())
    } else {
        args.store.clone()
    };
    let redis = if is_redis { Some(RedisBackend::open(&location)?) } else { None };
    let llm = Llama::builder()
        .with_source(LlamaSource::named(&args.model))
        .with_threads(args.threads)
        .with_context_length(args.tokens + 512)
        .with_prefix_cache_bytes(0)
        .build()
        .await
        .context("loading the model")?;
    let mut s = crate::bench_sessions::session_with(&llm, args.tokens).await?;
    let n = s.token_count();
    let mem0 = redis_stat(redis.as_ref(), "memory", "used_memory")?;
    let store = SessionStore::open(&location)?;
    let first = store.save("bench", &s)?;
    let mem1 = redis_stat(redis.as_ref(), "memory", "used_memory")?;

    // Resume: a store with no local cache, as a replica that never saw the session.
    let mut loads = Vec::new();
    for _ in 0..args.reps {
        let cold = SessionStore::open(&location)?.with_cache_bytes(0);
        let t = Instant::now();
        std::hint::black_box(cold.load("bench")?);
        loads.push(t.elapsed().as_secs_f64());
    }
    let mut warm = Vec::new();
    for _ in 0..args.reps {
        let t = Instant::now();
        std::hint::black_box(store.load("bench")?);
        warm.push(t.elapsed().as_secs_f64());
    }
    let tokens = s.tokens();
    let model = llm.model();
    let mut reprocess = Vec::new();
    for _ in 0..args.reps.div_ceil(3) {
        let mut kv = model.new_kv();
        let t = Instant::now();
        model.forward(&mut kv, &tokens, colloquy::engine::arch::LogitsFor::Last)?;
        reprocess.push(t.elapsed().as_secs_f64());
    }
    let (load_med, load_lo, load_hi) = median(&loads);
    let (warm_med, _, _) = median(&warm);
    let (rep_med, rep_lo, rep_hi) = median(&reprocess);
    let bench_bin =
        args.llama_bench.clone().unwrap_or_else(|| PathBuf::from("target/llama.cpp/bin/llama-bench"));
    let peer = if bench_bin.is_file() {
        Some(llama_bench_pp(&bench_bin, model.path(), n, args.threads)?)
    } else {
        eprintln!(
            "{} is missing: no llama.cpp figure (scripts/bench/build-llama-cpp.sh builds it)",
            bench_bin.display()
        );
        None
    };
    println!(
        "{}",
        json!({"test": "resume", "store": store.location(), "tokens": n,
            "load_ms": {"median": load_med * 1e3, "min": load_lo * 1e3, "max": load_hi * 1e3},
            "load_cached_ms": warm_med * 1e3,
            "reprocess_ms": {"median": rep_med * 1e3, "min": rep_lo * 1e3, "max": rep_hi * 1e3},
            "speedup": rep_med / load_med,
            "llama_bench_pp_ms": peer.map(|p| p * 1e3),
            "speedup_vs_llama_cpp": peer.map(|p| p / load_med)})
    );

    // The save after one more turn: bytes that reach Redis, against the session's.
    let net0 = redis_stat(redis.as_ref(), "stats", "total_net_input_bytes")?;
    crate::bench_sessions::another_turn(&llm, &mut s).await?;
    let t = Instant::now();
    let stats = store.save("bench", &s)?;
    let save_ms = t.elapsed().as_secs_f64() * 1e3;
    let net1 = redis_stat(redis.as_ref(), "stats", "total_net_input_bytes")?;
    println!(
        "{}",
        json!({"test": "save_after_turn", "tokens": s.token_count(), "ms": save_ms,
            "blocks_written": stats.blocks_written, "blocks_reused": stats.blocks_reused,
            "bytes_written": stats.bytes_written, "bytes_received_by_redis": net1 - net0,
            "first_save_bytes": first.bytes_written})
    );

    // 100 forks (manifest copies), then each fork one turn further.
    let before = redis_stat(redis.as_ref(), "memory", "used_memory")?;
    for i in 0..100 {
        store.fork("bench", &format!("fork-{i}"))?;
    }
    let after_forks = redis_stat(redis.as_ref(), "memory", "used_memory")?;
    println!(
        "{}",
        json!({"test": "forks", "forks": 100, "session_bytes_in_redis": mem1.saturating_sub(mem0),
            "forks_bytes_in_redis": after_forks.saturating_sub(before),
            "ratio_to_one_session": after_forks.saturating_sub(before) as f64 / mem1.saturating_sub(mem0).max(1) as f64})
    );

    // The sessions go; their blocks stay marked for the gc grace period
    // (10 minutes), and the next gc after that removes them.
    for id in store.list()?.into_iter().map(|i| i.id) {
        store.delete(&id)?;
    }
    Ok(())
}
