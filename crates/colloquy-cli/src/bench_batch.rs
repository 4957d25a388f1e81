//! `colloquy bench-batch`: aggregate decode throughput of several sequences
//! decoded together (one forward pass per step for all of them), as
//! llama.cpp's `llama-batched-bench` measures it.
//!
//! For each batch size B: B sequences each get the same `--depth` prompt
//! tokens (prefilled untimed), then `-n` decode steps run with one token per
//! sequence per step. The figure is `B × n / time`. Each size runs one
//! untimed warm-up and `--reps` timed repetitions on fresh caches; the median
//! and the sample standard deviation are reported.
//!
//! With `--peer llama.cpp` the same sizes run through llama.cpp's own
//! `llama-batched-bench` (`-npp D -ntg n -npl B,…`, same GGUF and threads),
//! built by `scripts/bench/build-llama-cpp.sh`, in the same run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use colloquy_engine::arch::{LogitsFor, Sequence};
use colloquy_engine::fetch;
use colloquy_engine::model::{Model, ModelOptions};

use crate::bench::{bench_tokens, Peer};

/// Options of `colloquy bench-batch`.
#[derive(Args, Debug)]
pub struct BatchBenchArgs {
    /// A .gguf path or a known model name.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Batch sizes: sequences decoded together.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    sequences: Vec<usize>,
    /// Prompt tokens per sequence, prefilled before the timed steps.
    #[arg(long, default_value_t = 128)]
    depth: usize,
    /// Decode steps.
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    n_gen: usize,
    /// Threads (default: all available cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Timed repetitions per size (after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Also run llama.cpp's llama-batched-bench.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
}

/// Where `scripts/bench/build-llama-cpp.sh` puts llama.cpp's tools.
pub(crate) const LLAMA_CPP_BIN: &str = "target/llama.cpp/bin";

pub fn run(args: BatchBenchArgs) -> Result<()> {
    let path = fetch::resolve_model(&args.model, &fetch::PullOptions::default())?;
    let mut opts = ModelOptions { n_ctx: Some(args.depth + args.n_gen + 1), ..ModelOptions::default() };
    if let Some(t) = args.threads {
        opts.threads = t;
    }
    let model = Model::load(&path, opts).with_context(|| format!("loading {}", path.display()))?;
    let threads = model.threads();
    let peer = match args.peer {
        Some(Peer::LlamaCpp) => Some(run_peer(&args, &path, threads)?),
        None => None,
    };
    println!(
        "| model | threads | depth | tg | sequences | colloquy t/s (aggregate) | llama.cpp t/s | ratio |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|");
    for &b in &args.sequences {
        let (median, sd) = measure(&model, b, &args)?;
        let theirs = peer.as_ref().and_then(|p| p.iter().find(|(pb, _)| *pb == b)).map(|&(_, t)| t);
        let (t, r) = match theirs {
            Some(t) => (format!("{t:.1}"), format!("{:.2}", median / t)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {threads} | {} | {} | {b} | {median:.1} ± {sd:.1} | {t} | {r} |",
            args.model, args.depth, args.n_gen
        );
    }
    Ok(())
}

/// Median and spread of the aggregate decode tokens/s of `b` sequences.
fn measure(model: &Model, b: usize, args: &BatchBenchArgs) -> Result<(f64, f64)> {
    let prompt = bench_tokens(args.depth.max(1), model.n_vocab(), 0x6261_7463_6865_6400);
    let mut base = model.new_kv();
    model.forward(&mut base, &prompt, LogitsFor::Last)?;
    let step_token = [prompt[0]];
    let mut logits = Vec::new();
    let mut rates = Vec::new();
    for rep in 0..=args.reps {
        // Each sequence starts from the prefilled context (shared copy-on-write).
        let mut kvs: Vec<_> = (0..b).map(|_| base.clone()).collect();
        let t0 = Instant::now();
        for _ in 0..args.n_gen {
            let mut batch: Vec<Sequence<'_>> = kvs
                .iter_mut()
                .map(|kv| Sequence { tokens: &step_token, kv, logits: LogitsFor::Last })
                .collect();
            model.forward_batch(&mut batch, &mut logits)?;
        }
        if rep > 0 {
            rates.push((b * args.n_gen) as f64 / t0.elapsed().as_secs_f64());
        }
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (rates.len().max(2) - 1) as f64;
    Ok((median, var.sqrt()))
}

/// Runs llama-batched-bench; returns (sequences, aggregate decode t/s) pairs.
fn run_peer(args: &BatchBenchArgs, gguf: &std::path::Path, threads: usize) -> Result<Vec<(usize, f64)>> {
    let bin = PathBuf::from(LLAMA_CPP_BIN).join("llama-batched-bench");
    if !bin.exists() {
        bail!("{} is missing; build it with `bash scripts/bench/build-llama-cpp.sh`", bin.display());
    }
    let npl: Vec<String> = args.sequences.iter().map(|b| b.to_string()).collect();
    let max_b = args.sequences.iter().copied().max().unwrap_or(1);
    let out = Command::new(&bin)
        .arg("-m")
        .arg(gguf)
        .args(["-c", &((args.depth + args.n_gen) * max_b + 64).to_string()])
        .args(["-b", "2048", "-ub", "512", "-t", &threads.to_string()])
        .args(["-npp", &args.depth.to_string(), "-ntg", &args.n_gen.to_string(), "-npl", &npl.join(",")])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("llama-batched-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_batched_bench(&text)
}

/// Reads llama-batched-bench's table: `| PP | TG | B | N_KV | T_PP s | S_PP t/s
/// | T_TG s | S_TG t/s | T s | S t/s |`; returns (B, S_TG).
fn parse_batched_bench(text: &str) -> Result<Vec<(usize, f64)>> {
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
        if cells.len() < 8 {
            continue;
        }
        if let (Ok(b), Ok(s_tg)) = (cells[2].parse::<usize>(), cells[7].parse::<f64>()) {
            rows.push((b, s_tg));
        }
    }
    if rows.is_empty() {
        bail!("no result rows in llama-batched-bench's output:\n{text}");
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama_batched_bench_rows() {
        let text = "\n|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |\n\
                    |-------|--------|------|--------|----------|----------|----------|----------|----------|----------|\n\
                    |   128 |     64 |    1 |    192 |    0.151 |   848.03 |    0.402 |   159.14 |    0.553 |   347.21 |\n\
                    |   128 |     64 |    8 |   1536 |    1.102 |   929.35 |    1.004 |   509.88 |    2.106 |   729.31 |\n";
        assert_eq!(parse_batched_bench(text).unwrap(), [(1, 159.14), (8, 509.88)]);
        assert!(parse_batched_bench("no table").is_err());
    }
}
