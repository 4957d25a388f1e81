//! `colloquy bench`: prompt and generation throughput, optionally beside llama.cpp.
//!
//! The tests follow llama-bench's names and method:
//!
//! - `ppP`: a P-token prompt processed in one forward pass on an empty KV cache;
//! - `tgN`: N single-token decode steps from an empty KV cache;
//! - `tgN@dD`: D tokens of context prefilled first (untimed), then N decode steps.
//!
//! Prompt and context tokens are fixed pseudo-random ids ([`bench_tokens`]); every decode
//! step feeds one fixed token, so no sampling is timed. Each test runs one untimed
//! warm-up repetition, then `--reps` timed ones, each on a fresh KV cache, and reports
//! the median tokens/s with the sample standard deviation as its spread.
//!
//! With `--peer llama.cpp` the same tests run with llama.cpp on the same GGUF file and
//! thread count, through the separately built `colloquy-peer-llamacpp` binary (see
//! [`peer::find_peer`]), which prints its figures as JSON lines.
//!
//! Every decode figure comes with its memory bound: a probe measures this machine's
//! read bandwidth ([`bandwidth`]), and the bound is that ÷ the bytes one step reads.
//! `--contend N` runs N busy loops beside both engines ([`contend`]).

pub mod bandwidth;
pub mod contend;
pub mod peer;
pub mod report;

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use colloquy_engine::arch::LogitsFor;
use colloquy_engine::fetch;
use colloquy_engine::model::{Model, ModelOptions};

/// Options of `colloquy bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A .gguf path or a known model name.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Prompt length of the ppP test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Decode steps of the tgN tests (0 skips them).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Threads (default: all available cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Context depth of the tgN@dD test (0 skips it).
    #[arg(long, default_value_t = 512)]
    pub depth: usize,
    /// Timed repetitions per test (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// One JSON object per line per figure instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also measure another engine on the same file and thread count.
    #[arg(long, value_enum)]
    pub peer: Option<Peer>,
    /// Timed passes of the memory-bandwidth probe that gives each decode figure
    /// its bound (0 skips the probe).
    #[arg(long, default_value_t = 5)]
    pub bandwidth_passes: usize,
    /// Run N busy-loop processes beside both engines while they are measured
    /// (the bandwidth probe runs after, on quiet cores).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub contend: usize,
}

/// An engine to compare with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// llama.cpp, through the `colloquy-peer-llamacpp` binary.
    #[value(name = "llama.cpp", alias = "llamacpp")]
    LlamaCpp,
}

pub use colloquy_engine::bench_input::{bench_tokens, PROMPT_SEED};

/// One measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    /// `ppP`: a P-token prompt in one forward pass.
    Prompt(usize),
    /// `tgN` (depth 0) or `tgN@dD`: N decode steps after D tokens of context.
    Gen {
        /// Decode steps.
        n: usize,
        /// Context tokens prefilled before the timed steps.
        depth: usize,
    },
}

impl Test {
    /// The llama-bench style name: `pp512`, `tg128`, `tg128@d512`.
    pub fn name(&self) -> String {
        match *self {
            Test::Prompt(p) => format!("pp{p}"),
            Test::Gen { n, depth: 0 } => format!("tg{n}"),
            Test::Gen { n, depth } => format!("tg{n}@d{depth}"),
        }
    }

    /// Tokens that the timed part processes.
    pub fn tokens(&self) -> usize {
        match *self {
            Test::Prompt(p) => p,
            Test::Gen { n, .. } => n,
        }
    }
}

/// The tests that `-p`, `-n` and `--depth` ask for, in output order.
pub fn tests_for(n_prompt: usize, n_gen: usize, depth: usize) -> Vec<Test> {
    let mut tests = Vec::new();
    if n_prompt > 0 {
        tests.push(Test::Prompt(n_prompt));
    }
    if n_gen > 0 {
        tests.push(Test::Gen { n: n_gen, depth: 0 });
        if depth > 0 {
            tests.push(Test::Gen { n: n_gen, depth });
        }
    }
    tests
}

/// A figure: median tokens/s and the sample standard deviation over the repetitions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figure {
    /// Median tokens per second.
    pub tps: f64,
    /// Sample standard deviation of the per-repetition tokens per second.
    pub spread: f64,
}

impl Figure {
    /// The median and sample standard deviation of `samples` (NaN when empty).
    pub fn from_samples(samples: &[f64]) -> Figure {
        if samples.is_empty() {
            return Figure { tps: f64::NAN, spread: f64::NAN };
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let tps = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
        let mean = s.iter().sum::<f64>() / n as f64;
        let var =
            if n > 1 { s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        Figure { tps, spread: var.sqrt() }
    }
}

/// One engine's results.
#[derive(Clone, Debug, Default)]
pub struct EngineResults {
    /// `(test name, figure)` in test order.
    pub figures: Vec<(String, Figure)>,
    /// Peak RSS in MiB after loading the model.
    pub rss_load_mb: Option<f64>,
    /// Peak RSS in MiB after all the runs.
    pub rss_peak_mb: Option<f64>,
}

impl EngineResults {
    /// The figure of the test named `name`.
    pub fn get(&self, name: &str) -> Option<Figure> {
        self.figures.iter().find(|(n, _)| n == name).map(|(_, f)| *f)
    }
}

/// The peak resident set size of this process in MiB (`VmHWM` in /proc/self/status).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs `colloquy bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if args.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let tests = tests_for(args.n_prompt, args.n_gen, args.depth);
    if tests.is_empty() {
        bail!("nothing to measure: give -p or -n a positive value");
    }
    // Find the peer before the long colloquy runs, so a missing binary fails at once.
    let peer_bin = match args.peer {
        Some(Peer::LlamaCpp) => Some(peer::find_peer()?),
        None => None,
    };
    let path = fetch::resolve_model(&args.model, &fetch::PullOptions::default())?;
    let mut opts = ModelOptions::default();
    if let Some(t) = args.threads {
        opts.threads = t;
    }
    opts.n_ctx = Some(args.n_prompt.max(args.depth + args.n_gen).max(1));
    let hogs = contend::Hogs::start(args.contend)?;
    let model = Model::load(&path, opts).with_context(|| format!("loading {}", path.display()))?;
    let threads = model.threads();
    let rss_load_mb = peak_rss_mb();

    let mut ours = EngineResults { rss_load_mb, ..Default::default() };
    let mut sections = Vec::new();
    for test in &tests {
        if !args.json {
            eprintln!("colloquy: {} ...", test.name());
        }
        let (figure, per_token) = measure(&model, *test, args.reps)?;
        ours.figures.push((test.name(), figure));
        if let Some(n) = per_token {
            sections.push((test.name(), n));
        }
    }
    ours.rss_peak_mb = peak_rss_mb();
    // Bytes per decode step at each test's mean context position.
    let bytes: Vec<(String, u64)> = tests
        .iter()
        .filter_map(|t| match *t {
            Test::Gen { n, depth } => Some((t.name(), model.decode_bytes(depth + n.saturating_sub(1) / 2))),
            Test::Prompt(_) => None,
        })
        .collect();
    // Free colloquy's weights and worker threads before the peer runs.
    drop(model);

    let peer = match &peer_bin {
        Some(bin) => {
            if !args.json {
                eprintln!("llama.cpp: {} ...", tests.iter().map(Test::name).collect::<Vec<_>>().join(", "));
            }
            Some(peer::run_peer(bin, &path, &args, threads)?)
        }
        None => None,
    };
    let contended = hogs.len();
    drop(hogs);

    let bandwidth = if args.bandwidth_passes > 0 {
        if !args.json {
            eprintln!("memory bandwidth ...");
        }
        bandwidth::probe(threads, args.bandwidth_passes)
    } else {
        Vec::new()
    };
    // The bound of T-thread decoding is what T threads can read.
    let bounds = match bandwidth.iter().find(|b| b.threads == threads) {
        Some(bw) => bytes
            .into_iter()
            .map(|(name, b)| {
                (name, report::Bound { bytes_per_token: b, tps: bw.gbps * 1e9 / b.max(1) as f64 })
            })
            .collect(),
        None => Vec::new(),
    };
    let cx = report::Context { model: args.model.clone(), threads, bandwidth, bounds, sections };

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        report::write_json(&mut out, &cx, &tests, &ours, peer.as_ref())?;
    } else {
        let busy = if contended > 0 {
            format!(", {contended} busy loops beside each engine")
        } else {
            String::new()
        };
        writeln!(
            out,
            "model: {} ({}), {} threads, {} reps{busy}; tokens/s as median ± sample stddev",
            args.model,
            path.display(),
            threads,
            args.reps
        )?;
        report::write_table(&mut out, &cx, &tests, &ours, peer.as_ref())?;
    }
    Ok(())
}

/// Measures one test: a warm-up, then `reps` timed repetitions, each on a fresh KV cache.
/// Also returns, for a decode test, the pool's parallel sections per step.
fn measure(model: &Model, test: Test, reps: usize) -> Result<(Figure, Option<f64>)> {
    let n_vocab = model.n_vocab();
    let (context_len, gen) = match test {
        Test::Prompt(p) => (p, 0),
        Test::Gen { n, depth } => (depth, n),
    };
    let prompt = bench_tokens(context_len, n_vocab, PROMPT_SEED);
    let gen_token = bench_tokens(1, n_vocab, PROMPT_SEED ^ 1)[0];
    let mut logits = Vec::new();
    let mut samples = Vec::with_capacity(reps);
    let mut sections = None;
    for rep in 0..=reps {
        let mut kv = model.new_kv();
        let secs = match test {
            Test::Prompt(p) => {
                let t0 = Instant::now();
                model.forward_chunked(&mut kv, &prompt, LogitsFor::Last, p, &mut logits, &mut |_, _| {})?;
                t0.elapsed().as_secs_f64()
            }
            Test::Gen { .. } => {
                if !prompt.is_empty() {
                    // Untimed context, in chunks of at most UBATCH tokens.
                    logits = model.forward(&mut kv, &prompt, LogitsFor::Last)?;
                }
                let s0 = model.pool_sections();
                let t0 = Instant::now();
                for _ in 0..gen {
                    model.forward_chunked(
                        &mut kv,
                        &[gen_token],
                        LogitsFor::Last,
                        1,
                        &mut logits,
                        &mut |_, _| {},
                    )?;
                }
                let secs = t0.elapsed().as_secs_f64();
                sections = Some((model.pool_sections() - s0) as f64 / gen.max(1) as f64);
                secs
            }
        };
        // Repetition 0 is the warm-up.
        if rep > 0 {
            samples.push(test.tokens() as f64 / secs.max(1e-12));
        }
    }
    Ok((Figure::from_samples(&samples), sections))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fixed_and_in_range() {
        let a = bench_tokens(100, 1000, PROMPT_SEED);
        assert_eq!(a, bench_tokens(100, 1000, PROMPT_SEED));
        assert!(a.iter().all(|&t| t < 1000));
        assert_ne!(a, bench_tokens(100, 1000, PROMPT_SEED ^ 1));
    }

    #[test]
    fn tokens_match_the_other_side() {
        // The same known answer is tested in the other crate (colloquy bench / the peer).
        assert_eq!(bench_tokens(4, 49152, PROMPT_SEED), [42702, 5506, 16897, 41692]);
    }

    #[test]
    fn test_names_follow_llama_bench() {
        let names: Vec<String> = tests_for(512, 128, 512).iter().map(Test::name).collect();
        assert_eq!(names, ["pp512", "tg128", "tg128@d512"]);
        assert_eq!(tests_for(0, 16, 0).iter().map(Test::name).collect::<Vec<_>>(), ["tg16"]);
        assert!(tests_for(0, 0, 64).is_empty());
    }

    #[test]
    fn median_and_stddev() {
        let f = Figure::from_samples(&[1.0, 3.0, 2.0]);
        assert_eq!(f.tps, 2.0);
        assert!((f.spread - 1.0).abs() < 1e-12);
        let f = Figure::from_samples(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(f.tps, 2.5);
        assert_eq!(Figure::from_samples(&[5.0]).spread, 0.0);
    }
}
