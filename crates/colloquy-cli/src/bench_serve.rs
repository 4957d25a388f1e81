//! `colloquy bench-serve`: a loopback load against `colloquy serve` and,
//! with `--peer llama.cpp`, llama.cpp's own `llama-server` (`-np` slots,
//! the same GGUF and thread count), interleaved in one run.
//!
//! At each concurrency C, C client threads send streamed chat requests back
//! to back (distinct prompts, `-n` new tokens each, greedy) until
//! `--requests` have been answered. Reported per server and level: the
//! aggregate generated tokens/s (all tokens ÷ wall time), time to first
//! token (first content chunk; p50 and p99) and failed requests. Each level
//! runs `--rounds` times, servers alternating, and the medians (with the
//! spread) are printed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use colloquy_engine::fetch;

use crate::bench::Peer;

/// Options of `colloquy bench-serve`.
#[derive(Args, Debug)]
pub struct ServeBenchArgs {
    /// A .gguf path or a known model name.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Concurrency levels (client threads).
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    concurrency: Vec<usize>,
    /// Requests per level and round.
    #[arg(long, default_value_t = 48)]
    requests: usize,
    /// New tokens per request.
    #[arg(short = 'n', long = "n-gen", default_value_t = 32)]
    n_gen: usize,
    /// Threads of each server.
    #[arg(short = 't', long, default_value_t = 2)]
    threads: usize,
    /// Batch slots of each server (`--parallel`, llama-server's `-np`).
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Rounds (servers alternate within each).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also load llama.cpp's llama-server.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
}

/// A server process, killed on drop.
pub(crate) struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one level of load measured.
#[derive(Debug, Clone, Default)]
struct Level {
    tokens_per_s: f64,
    ttft_ms: Vec<f64>,
    errors: usize,
    requests: usize,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_colloquy(args: &ServeBenchArgs, store: &std::path::Path) -> Result<(Proc, String)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["serve", "--port", "0", "--model", &args.model])
        .args(["--threads", &args.threads.to_string(), "--parallel", &args.parallel.to_string()])
        .args(["--max-queue", "1024", "--store"])
        .arg(store)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("serve's stdout")?).read_line(&mut line)?;
    let addr = line.trim().strip_prefix("listening on http://").context("serve did not start")?.to_string();
    Ok((Proc(child), addr))
}

fn start_llama_server(args: &ServeBenchArgs, gguf: &std::path::Path) -> Result<(Proc, String)> {
    start_llama_server_with(gguf, args.threads, args.parallel)
}

/// llama.cpp's `llama-server` on a free loopback port with `threads` threads
/// and `parallel` slots of 1,024 tokens each, once it reports healthy.
pub(crate) fn start_llama_server_with(
    gguf: &std::path::Path,
    threads: usize,
    parallel: usize,
) -> Result<(Proc, String)> {
    let bin = PathBuf::from(crate::bench_batch::LLAMA_CPP_BIN).join("llama-server");
    if !bin.exists() {
        bail!("{} is missing: build it with scripts/bench/build-llama-cpp.sh", bin.display());
    }
    let port = free_port()?;
    // llama-server splits -c among its slots: give each one the tokens it needs.
    let ctx = parallel * 1024;
    let child = Command::new(&bin)
        .arg("-m")
        .arg(gguf)
        .args(["-t", &threads.to_string(), "-np", &parallel.to_string(), "-c", &ctx.to_string()])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr = format!("127.0.0.1:{port}");
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while get_status(&addr, "/health") != Some(200) {
        if Instant::now() > deadline {
            bail!("llama-server did not become healthy within 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((proc, addr))
}

fn get_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `body` to `addr`'s `/v1/chat/completions` (one connection, closed
/// after the reply); returns the status line and the rest of the reply.
pub(crate) fn post_chat(addr: &str, body: &str) -> Result<(String, BufReader<TcpStream>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    Ok((status, reader))
}

/// One streamed greedy chat request: its time to first content and its
/// generated tokens (from the usage chunk, else the content chunks).
fn one_request(addr: &str, prompt: &str, n_gen: usize) -> Result<(Duration, usize)> {
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": n_gen,
        "stream": true, "stream_options": {"include_usage": true},
    })
    .to_string();
    let t0 = Instant::now();
    let (mut line, mut reader) = post_chat(addr, &body)?;
    if !line.contains(" 200") {
        bail!("status line {line:?}");
    }
    let (mut ttft, mut chunks, mut usage, mut done) = (None, 0, None, false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let Some(data) = line.trim().strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: serde_json::Value = serde_json::from_str(data).context("a chunk that is not JSON")?;
        if v.get("error").is_some() {
            bail!("error chunk {v}");
        }
        if v["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
            ttft.get_or_insert_with(|| t0.elapsed());
            chunks += 1;
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            usage = Some(n as usize);
        }
    }
    if !done {
        bail!("the stream ended without [DONE]");
    }
    Ok((ttft.unwrap_or_else(|| t0.elapsed()), usage.unwrap_or(chunks)))
}

/// Runs `requests` requests at `concurrency` against `addr`.
fn load(addr: &str, concurrency: usize, requests: usize, n_gen: usize, round: usize) -> Level {
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (addr, next) = (addr.to_string(), Arc::clone(&next));
            std::thread::spawn(move || {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= requests {
                        return out;
                    }
                    let prompt = format!(
                        "Request {round}-{i}: write a long story about a {} who finds a {}.",
                        ["sailor", "baker", "robot", "child", "painter", "farmer"][i % 6],
                        ["map", "key", "door", "song", "letter", "river"][(i / 6) % 6]
                    );
                    out.push(one_request(&addr, &prompt, n_gen));
                }
            })
        })
        .collect();
    let mut level = Level::default();
    let mut tokens = 0;
    for w in workers {
        for r in w.join().unwrap_or_default() {
            level.requests += 1;
            match r {
                Ok((ttft, n)) => {
                    level.ttft_ms.push(ttft.as_secs_f64() * 1e3);
                    tokens += n;
                }
                Err(e) => {
                    level.errors += 1;
                    eprintln!("request failed: {e:#}");
                }
            }
        }
    }
    level.tokens_per_s = tokens as f64 / t0.elapsed().as_secs_f64();
    level
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// The median of `v`, and its spread as (min, max).
pub(crate) fn median(v: &[f64]) -> (f64, f64, f64) {
    (percentile(v, 0.5), percentile(v, 0.0), percentile(v, 1.0))
}

pub fn run(args: ServeBenchArgs) -> Result<()> {
    let gguf = fetch::resolve_model(&args.model, &fetch::PullOptions::default())?;
    let store = tempfile_dir()?;
    let mut servers = vec![("colloquy", start_colloquy(&args, &store)?)];
    if args.peer == Some(Peer::LlamaCpp) {
        servers.push(("llama-server", start_llama_server(&args, &gguf)?));
    }
    // One warm-up level per server (untimed).
    for (_, (_, addr)) in &servers {
        load(addr, 2, 4, 8, 999);
    }
    // results[server][level] = one Level per round
    let mut results = vec![vec![Vec::<Level>::new(); args.concurrency.len()]; servers.len()];
    for round in 0..args.rounds {
        for (li, &c) in args.concurrency.iter().enumerate() {
            for (si, (name, (_, addr))) in servers.iter().enumerate() {
                let l = load(addr, c, args.requests, args.n_gen, round);
                eprintln!(
                    "round {round} {name} c={c}: {:.1} tok/s, ttft p50 {:.0} ms p99 {:.0} ms, {} errors",
                    l.tokens_per_s,
                    percentile(&l.ttft_ms, 0.5),
                    percentile(&l.ttft_ms, 0.99),
                    l.errors
                );
                results[si][li].push(l);
            }
        }
    }
    println!(
        "model {} | {} threads | {} slots | {} requests x {} rounds per level | {} new tokens each",
        gguf.display(),
        args.threads,
        args.parallel,
        args.requests,
        args.rounds,
        args.n_gen
    );
    println!(
        "| server | concurrency | tok/s (median, min–max) | TTFT p50 ms | TTFT p99 ms | failed / requests |"
    );
    println!("|---|---|---|---|---|---|");
    for (si, (name, _)) in servers.iter().enumerate() {
        for (li, &c) in args.concurrency.iter().enumerate() {
            let rounds = &results[si][li];
            let tps: Vec<f64> = rounds.iter().map(|l| l.tokens_per_s).collect();
            let p50: Vec<f64> = rounds.iter().map(|l| percentile(&l.ttft_ms, 0.5)).collect();
            let p99: Vec<f64> = rounds.iter().map(|l| percentile(&l.ttft_ms, 0.99)).collect();
            let (t, lo, hi) = median(&tps);
            let errors: usize = rounds.iter().map(|l| l.errors).sum();
            let requests: usize = rounds.iter().map(|l| l.requests).sum();
            println!(
                "| {name} | {c} | {t:.1} ({lo:.1}–{hi:.1}) | {:.0} | {:.0} | {errors} / {requests} |",
                median(&p50).0,
                median(&p99).0
            );
        }
    }
    if servers.len() == 2 {
        println!("\n| concurrency | tok/s colloquy ÷ llama-server | TTFT p99 colloquy ÷ llama-server |");
        println!("|---|---|---|");
        for (li, &c) in args.concurrency.iter().enumerate() {
            let tps =
                |si: usize| median(&results[si][li].iter().map(|l| l.tokens_per_s).collect::<Vec<_>>()).0;
            let p99 = |si: usize| {
                median(&results[si][li].iter().map(|l| percentile(&l.ttft_ms, 0.99)).collect::<Vec<_>>()).0
            };
            println!("| {c} | {:.2}× | {:.2}× |", tps(0) / tps(1), p99(0) / p99(1));
        }
    }
    let _ = std::fs::remove_dir_all(&store);
    Ok(())
}

/// A fresh folder for the benchmark server's store.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("colloquy-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
