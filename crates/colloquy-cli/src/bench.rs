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
//! [`find_peer`]), which prints its figures as JSON lines.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
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
}

/// An engine to compare with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// llama.cpp, through the `colloquy-peer-llamacpp` binary.
    #[value(name = "llama.cpp", alias = "llamacpp")]
    LlamaCpp,
}

/// The environment variable naming the llama.cpp peer binary.
pub const PEER_ENV: &str = "COLLOQUY_PEER_LLAMACPP";

/// The file name of the llama.cpp peer binary.
const PEER_BIN: &str = "colloquy-peer-llamacpp";

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
        Some(Peer::LlamaCpp) => Some(find_peer()?),
        None => None,
    };
    let path = fetch::resolve_model(&args.model, &fetch::PullOptions::default())?;
    let mut opts = ModelOptions::default();
    if let Some(t) = args.threads {
        opts.threads = t;
    }
    opts.n_ctx = Some(args.n_prompt.max(args.depth + args.n_gen).max(1));
    let model = Model::load(&path, opts).with_context(|| format!("loading {}", path.display()))?;
    let threads = model.threads();
    let rss_load_mb = peak_rss_mb();

    let mut ours = EngineResults { rss_load_mb, ..Default::default() };
    for test in &tests {
        if !args.json {
            eprintln!("colloquy: {} ...", test.name());
        }
        ours.figures.push((test.name(), measure(&model, *test, args.reps)?));
    }
    ours.rss_peak_mb = peak_rss_mb();
    // Free colloquy's weights and worker threads before the peer runs.
    drop(model);

    let peer = match &peer_bin {
        Some(bin) => {
            if !args.json {
                eprintln!("llama.cpp: {} ...", tests.iter().map(Test::name).collect::<Vec<_>>().join(", "));
            }
            Some(run_peer(bin, &path, &args, threads)?)
        }
        None => None,
    };

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        write_json(&mut out, &args.model, threads, &tests, &ours, peer.as_ref())?;
    } else {
        writeln!(
            out,
            "model: {} ({}), {} threads, {} reps; tokens/s as median ± sample stddev",
            args.model,
            path.display(),
            threads,
            args.reps
        )?;
        write_table(&mut out, &tests, &ours, peer.as_ref())?;
    }
    Ok(())
}

/// Measures one test: a warm-up, then `reps` timed repetitions, each on a fresh KV cache.
fn measure(model: &Model, test: Test, reps: usize) -> Result<Figure> {
    let n_vocab = model.n_vocab();
    let (context_len, gen) = match test {
        Test::Prompt(p) => (p, 0),
        Test::Gen { n, depth } => (depth, n),
    };
    let prompt = bench_tokens(context_len, n_vocab, PROMPT_SEED);
    let gen_token = bench_tokens(1, n_vocab, PROMPT_SEED ^ 1)[0];
    let mut logits = Vec::new();
    let mut samples = Vec::with_capacity(reps);
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
                t0.elapsed().as_secs_f64()
            }
        };
        // Repetition 0 is the warm-up.
        if rep > 0 {
            samples.push(test.tokens() as f64 / secs.max(1e-12));
        }
    }
    Ok(Figure::from_samples(&samples))
}

/// Where the llama.cpp peer binary is: `$COLLOQUY_PEER_LLAMACPP` when set, otherwise
/// `colloquy-peer-llamacpp` next to this executable (in `target/<profile>/`). Fails with
/// the command that builds it when it is not there.
pub fn find_peer() -> Result<PathBuf> {
    let how = "build it with `cargo build --release -p colloquy-peer-llamacpp` \
               (see BENCHMARKS.md for the flags that give llama.cpp its native SIMD kernels), \
               or set COLLOQUY_PEER_LLAMACPP to its path";
    if let Some(p) = std::env::var_os(PEER_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{PEER_ENV}={} is not a file; {how}", p.display());
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let candidate = exe.with_file_name(format!("{PEER_BIN}{}", std::env::consts::EXE_SUFFIX));
    if candidate.is_file() {
        return Ok(candidate);
    }
    bail!("the llama.cpp peer binary is missing (looked for {}); {how}", candidate.display())
}

/// Runs the peer binary with the same settings and parses its JSON lines.
fn run_peer(
    bin: &std::path::Path,
    model: &std::path::Path,
    args: &BenchArgs,
    threads: usize,
) -> Result<EngineResults> {
    let output = Command::new(bin)
        .arg("--model")
        .arg(model)
        .args(["-p", &args.n_prompt.to_string()])
        .args(["-n", &args.n_gen.to_string()])
        .args(["--depth", &args.depth.to_string()])
        .args(["-t", &threads.to_string()])
        .args(["--reps", &args.reps.to_string()])
        .arg("--json")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", bin.display(), output.status);
    }
    let text = String::from_utf8(output.stdout).context("the peer printed non-UTF-8 output")?;
    let results = parse_peer(&text)?;
    if let Some(info) = peer_system_info(&text) {
        warn_if_not_native(&info);
    }
    Ok(results)
}

/// Parses the peer's JSON lines into results.
pub fn parse_peer(text: &str) -> Result<EngineResults> {
    let mut res = EngineResults::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("bad JSON line from the peer: {line}"))?;
        let Some(test) = v.get("test").and_then(|t| t.as_str()) else {
            bail!("peer line without a test name: {line}");
        };
        match test {
            "system_info" => {}
            "rss_load_mb" => res.rss_load_mb = v.get("mb").and_then(|x| x.as_f64()),
            "rss_peak_mb" => res.rss_peak_mb = v.get("mb").and_then(|x| x.as_f64()),
            name => {
                let (Some(tps), Some(spread)) =
                    (v.get("tps").and_then(|x| x.as_f64()), v.get("spread").and_then(|x| x.as_f64()))
                else {
                    bail!("peer line without tps or spread: {line}");
                };
                res.figures.push((name.to_string(), Figure { tps, spread }));
            }
        }
    }
    Ok(res)
}

/// llama.cpp's system-info line from the peer's output.
fn peer_system_info(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v.get("test")?.as_str()? == "system_info")
            .then(|| v.get("llama_cpp")?.as_str().map(str::to_string))?
    })
}

/// Warns when llama.cpp was built without the AVX2 kernels that this CPU has, which
/// makes the comparison unfair to it.
fn warn_if_not_native(info: &str) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && !info.contains("AVX2 = 1") {
        eprintln!(
            "warning: llama.cpp was built without AVX2 although this CPU has it; rebuild it with \
             CFLAGS=-march=native CXXFLAGS=-march=native (see BENCHMARKS.md)"
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = info;
}

/// colloquy / peer, when both are finite and the peer's is positive.
fn ratio(ours: f64, theirs: f64) -> Option<f64> {
    (ours.is_finite() && theirs.is_finite() && theirs > 0.0).then(|| ours / theirs)
}

/// Writes one JSON object per line per figure, then the RSS lines.
fn write_json(
    out: &mut impl Write,
    model: &str,
    threads: usize,
    tests: &[Test],
    ours: &EngineResults,
    peer: Option<&EngineResults>,
) -> Result<()> {
    for test in tests {
        let name = test.name();
        let Some(f) = ours.get(&name) else { continue };
        let mut obj = serde_json::json!({
            "test": name,
            "model": model,
            "threads": threads,
            "colloquy_tps": f.tps,
            "colloquy_spread": f.spread,
        });
        if let Some(p) = peer.and_then(|p| p.get(&name)) {
            obj["peer"] = "llama.cpp".into();
            obj["peer_tps"] = p.tps.into();
            obj["peer_spread"] = p.spread.into();
            obj["ratio"] = ratio(f.tps, p.tps).into();
        }
        writeln!(out, "{obj}")?;
    }
    for (name, ours_mb, peer_mb) in [
        ("rss_load_mb", ours.rss_load_mb, peer.and_then(|p| p.rss_load_mb)),
        ("rss_peak_mb", ours.rss_peak_mb, peer.and_then(|p| p.rss_peak_mb)),
    ] {
        let mut obj =
            serde_json::json!({"test": name, "model": model, "threads": threads, "colloquy_mb": ours_mb});
        if peer.is_some() {
            obj["peer_mb"] = peer_mb.into();
        }
        writeln!(out, "{obj}")?;
    }
    Ok(())
}

/// Writes a Markdown table of the figures and the peak RSS.
fn write_table(
    out: &mut impl Write,
    tests: &[Test],
    ours: &EngineResults,
    peer: Option<&EngineResults>,
) -> Result<()> {
    let fig = |f: Option<Figure>| f.map_or("-".to_string(), |f| format!("{:.2} ± {:.2}", f.tps, f.spread));
    let mb = |m: Option<f64>| m.map_or("-".to_string(), |m| format!("{m:.1}"));
    let mut rows: Vec<[String; 4]> = Vec::new();
    for test in tests {
        let name = test.name();
        let o = ours.get(&name);
        let p = peer.and_then(|p| p.get(&name));
        let r = match (o, p) {
            (Some(o), Some(p)) => ratio(o.tps, p.tps).map_or("-".to_string(), |r| format!("{r:.2}")),
            _ => "-".to_string(),
        };
        rows.push([name, fig(o), fig(p), r]);
    }
    rows.push([
        "peak RSS after load (MiB)".into(),
        mb(ours.rss_load_mb),
        mb(peer.and_then(|p| p.rss_load_mb)),
        String::new(),
    ]);
    rows.push([
        "peak RSS after runs (MiB)".into(),
        mb(ours.rss_peak_mb),
        mb(peer.and_then(|p| p.rss_peak_mb)),
        String::new(),
    ]);
    let header: [&str; 4] = if peer.is_some() {
        ["test", "colloquy t/s", "llama.cpp t/s", "colloquy/llama.cpp"]
    } else {
        ["test", "colloquy t/s", "", ""]
    };
    let cols = if peer.is_some() { 4 } else { 2 };
    let mut widths = [0usize; 4];
    for (i, w) in widths.iter_mut().enumerate() {
        *w = rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0);
    }
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> =
            cells.iter().take(cols).enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        format!("| {} |", parts.join(" | "))
    };
    writeln!(out, "{}", line(&header.map(String::from)))?;
    let sep: Vec<String> = widths.iter().take(cols).map(|w| "-".repeat(*w)).collect();
    writeln!(out, "|-{}-|", sep.join("-|-"))?;
    for r in &rows {
        writeln!(out, "{}", line(r))?;
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

    #[test]
    fn parses_peer_lines() {
        let text = r#"{"test":"system_info","llama_cpp":"CPU : AVX2 = 1"}
{"test":"pp512","threads":2,"tps":100.5,"spread":1.5,"samples":[100.5]}
{"test":"tg128","threads":2,"tps":50.0,"spread":0.5,"samples":[50.0]}
{"test":"rss_load_mb","threads":2,"mb":12.5}
{"test":"rss_peak_mb","threads":2,"mb":40.0}
"#;
        let r = parse_peer(text).unwrap();
        assert_eq!(r.get("pp512"), Some(Figure { tps: 100.5, spread: 1.5 }));
        assert_eq!(r.get("tg128").map(|f| f.tps), Some(50.0));
        assert_eq!(r.rss_load_mb, Some(12.5));
        assert_eq!(r.rss_peak_mb, Some(40.0));
        assert_eq!(peer_system_info(text).as_deref(), Some("CPU : AVX2 = 1"));
        assert!(parse_peer("not json").is_err());
        assert!(parse_peer(r#"{"test":"pp512"}"#).is_err());
    }

    #[test]
    fn json_lines_have_the_issue_keys() {
        let tests = tests_for(8, 4, 0);
        let ours = EngineResults {
            figures: vec![
                ("pp8".into(), Figure { tps: 10.0, spread: 1.0 }),
                ("tg4".into(), Figure { tps: 5.0, spread: 0.5 }),
            ],
            rss_load_mb: Some(1.0),
            rss_peak_mb: Some(2.0),
        };
        let peer = EngineResults {
            figures: vec![("pp8".into(), Figure { tps: 20.0, spread: 2.0 })],
            ..ours.clone()
        };
        let mut buf = Vec::new();
        write_json(&mut buf, "m", 2, &tests, &ours, Some(&peer)).unwrap();
        let lines: Vec<serde_json::Value> =
            String::from_utf8(buf).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["test"], "pp8");
        assert_eq!(lines[0]["threads"], 2);
        assert_eq!(lines[0]["colloquy_tps"], 10.0);
        assert_eq!(lines[0]["peer_tps"], 20.0);
        assert_eq!(lines[0]["ratio"], 0.5);
        assert!(lines[1].get("peer_tps").is_none());
        assert_eq!(lines[2]["test"], "rss_load_mb");
        assert_eq!(lines[3]["peer_mb"], 2.0);
    }

    #[test]
    fn table_has_a_row_per_test() {
        let tests = tests_for(8, 4, 2);
        let ours = EngineResults {
            figures: tests.iter().map(|t| (t.name(), Figure { tps: 1.0, spread: 0.0 })).collect(),
            ..Default::default()
        };
        let mut buf = Vec::new();
        write_table(&mut buf, &tests, &ours, Some(&ours)).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(s.contains("| pp8 "), "{s}");
        assert!(s.contains("| tg4@d2 "), "{s}");
        assert!(s.contains("1.00"), "{s}");
        assert_eq!(s.lines().count(), 2 + 3 + 2);
    }
}
