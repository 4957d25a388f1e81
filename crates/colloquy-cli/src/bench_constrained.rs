//! `colloquy bench-constrained`: decode tokens/s under a JSON Schema against
//! free generation, on the same model, prompt and thread count, rounds
//! interleaved; the schema's compile time; and, with `--peer llama.cpp`,
//! llama-server's own free and `json_schema` throughput on the same GGUF as
//! a reference (from its `timings.predicted_per_second`).

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use colloquy::language::*;
use colloquy_engine::fetch;
use serde_json::{json, Value};

use crate::bench::Peer;
use crate::bench_serve::{median, post_chat, start_llama_server_with};

/// Options of `colloquy bench-constrained`.
#[derive(Args, Debug)]
pub struct ConstrainedBenchArgs {
    /// A .gguf path or a known model name.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Threads.
    #[arg(short = 't', long, default_value_t = 2)]
    threads: usize,
    /// New tokens per turn.
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: u32,
    /// Rounds (free and constrained alternate within each).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Also measure llama.cpp's llama-server.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
}

const PROMPT: &str = "List many people as JSON: each with a name, an age, a city and a list of hobbies.";

/// A schema that admits long answers (at least 40 people), so that both
/// kinds of turn run to the token limit.
fn schema() -> Value {
    json!({ "type": "array", "minItems": 40, "items": { "type": "object",
        "properties": { "name": { "type": "string" }, "age": { "type": "integer", "minimum": 0, "maximum": 120 },
                        "city": { "type": "string" },
                        "hobbies": { "type": "array", "items": { "enum": ["chess", "running", "music", "cooking"] } } },
        "required": ["name", "age", "city", "hobbies"], "additionalProperties": false } })
}

/// One turn on a fresh session: its decode tokens/s, the time `begin_turn`
/// took, and the tokens it generated.
fn turn(llm: &Llama, params: &GenerationParameters) -> Result<(f64, Duration, usize)> {
    let session = llm.new_chat_session()?;
    let msgs = [ChatMessage::new(MessageType::UserMessage, PROMPT)];
    let t0 = Instant::now();
    let mut turn = llm.begin_turn(&session, &msgs, params)?;
    let setup = t0.elapsed();
    let mut first = None;
    while !turn.is_finished() {
        llm.step(&mut [&mut turn], colloquy_engine::model::UBATCH)?;
        if turn.generated_tokens() > 0 && first.is_none() {
            first = Some(Instant::now());
        }
    }
    if let Some(e) = turn.error() {
        bail!("the constrained turn failed: {e}");
    }
    let n = turn.generated_tokens();
    let decode = first.map_or(Duration::ZERO, |f| f.elapsed());
    // Tokens after the first each took one forward pass (and one mask).
    Ok((n.saturating_sub(1) as f64 / decode.as_secs_f64().max(1e-9), setup, n))
}

/// One llama-server chat request: its `timings.predicted_per_second`.
fn peer_turn(addr: &str, n_gen: u32, constrained: bool) -> Result<(f64, u64)> {
    let mut body = json!({ "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
                           "max_tokens": n_gen, "cache_prompt": false });
    if constrained {
        body["response_format"] =
            json!({ "type": "json_schema", "json_schema": { "name": "people", "schema": schema() } });
    }
    let (status, mut reader) = post_chat(addr, &body.to_string())?;
    let mut raw = String::new();
    reader.read_to_string(&mut raw)?;
    if !status.contains(" 200") {
        bail!("llama-server answered {status:?}: {raw}");
    }
    let json_start = raw.find("\r\n\r\n").map_or(0, |i| i + 4);
    let v: Value =
        serde_json::from_str(raw[json_start..].trim()).context("llama-server's reply is not JSON")?;
    let tps = v["timings"]["predicted_per_second"].as_f64().context("no timings in llama-server's reply")?;
    Ok((tps, v["timings"]["predicted_n"].as_u64().unwrap_or(0)))
}

fn show(name: &str, v: &[f64]) -> f64 {
    let (m, lo, hi) = median(v);
    eprintln!("{name}: median {m:.1} tok/s (spread {lo:.1}–{hi:.1}, {} rounds)", v.len());
    m
}

pub fn run(args: ConstrainedBenchArgs) -> Result<()> {
    let llm = Llama::builder()
        .with_source(LlamaSource::named(&args.model))
        .with_threads(args.threads)
        .with_progress(false)
        .build_blocking()?;
    let free = GenerationParameters::new()
        .with_temperature(0.0)
        .with_repetition_penalty(1.0)
        .with_max_length(args.n_gen);
    let constrained = free.clone().with_constraints(Constraint::json_schema(schema()));
    // The token trie is built once per model, on first use.
    let t0 = Instant::now();
    turn(&llm, &GenerationParameters::new().with_max_length(1).with_constraints(Constraint::regex("a")))?;
    let trie = t0.elapsed();
    let peer = match args.peer {
        Some(Peer::LlamaCpp) => Some(start_llama_server_with(
            &fetch::resolve_model(&args.model, &Default::default())?,
            args.threads,
            1,
        )?),
        None => None,
    };
    let (mut f, mut c, mut compile, mut pf, mut pc) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..args.rounds {
        let (tf, sf, nf) = turn(&llm, &free)?;
        let (tc, sc, nc) = turn(&llm, &constrained)?;
        eprintln!("round {round}: free {tf:.1} tok/s ({nf} tokens), constrained {tc:.1} tok/s ({nc} tokens)");
        f.push(tf);
        c.push(tc);
        compile.push((sc.as_secs_f64() - sf.as_secs_f64()) * 1e3);
        if let Some((_, addr)) = &peer {
            let (a, na) = peer_turn(addr, args.n_gen, false)?;
            let (b, nb) = peer_turn(addr, args.n_gen, true)?;
            eprintln!(
                "round {round}: llama-server free {a:.1} tok/s ({na}), json_schema {b:.1} tok/s ({nb})"
            );
            pf.push(a);
            pc.push(b);
        }
    }
    let mf = show("colloquy free", &f);
    let mc = show("colloquy constrained", &c);
    let (cm, clo, chi) = median(&compile);
    println!("| model | threads | free tok/s | JSON Schema tok/s | constrained ÷ free | schema compile ms | trie build ms |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {mf:.1} | {mc:.1} | {:.3} | {cm:.1} ({clo:.1}–{chi:.1}) | {:.0} |",
        args.model,
        args.threads,
        mc / mf,
        trie.as_secs_f64() * 1e3
    );
    if peer.is_some() {
        let pmf = show("llama-server free", &pf);
        let pmc = show("llama-server json_schema", &pc);
        println!("\n| model | llama-server free tok/s | llama-server json_schema tok/s | its ratio | colloquy constrained ÷ llama-server constrained |");
        println!("|---|---|---|---|---|");
        println!("| {} | {pmf:.1} | {pmc:.1} | {:.3} | {:.2} |", args.model, pmc / pmf, mc / pmc);
    }
    Ok(())
}
