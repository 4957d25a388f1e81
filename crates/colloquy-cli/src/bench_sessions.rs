//! `colloquy bench-sessions`: what sessions cost — fork, save, load, bytes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use colloquy::engine::kv::KvDtype;
use colloquy::language::*;
use colloquy::session::write_atomic;
use serde_json::json;

#[derive(Args)]
pub struct SessionBenchArgs {
    /// A .gguf path or a known model name.
    #[arg(long, default_value = "smollm2")]
    model: String,
    #[arg(short = 't', long, default_value_t = 2)]
    threads: usize,
    /// Tokens in the session that is forked.
    #[arg(long, default_value_t = 4000)]
    fork_tokens: usize,
    /// Tokens in the session that is loaded (and re-processed for comparison).
    #[arg(long, default_value_t = 1000)]
    load_tokens: usize,
    /// Print one JSON object per figure.
    #[arg(long)]
    json: bool,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

/// A text of at least `tokens` tokens for this model.
fn text_of(llm: &Llama, tokens: usize) -> String {
    let unit = "The archive kept letters, maps and ledgers from every harbour along the coast. ";
    let mut text = String::new();
    while llm.model().tokenizer().encode(&text, false).len() < tokens {
        text.push_str(unit);
    }
    text
}

pub(crate) async fn session_with(llm: &Llama, tokens: usize) -> Result<LlamaChatSession> {
    let mut s = llm.new_chat_session()?;
    let msg = [ChatMessage::new(MessageType::UserMessage, text_of(llm, tokens))];
    let p = GenerationParameters::new().with_temperature(0.0).with_max_length(8);
    llm.add_messages_with_callback(&mut s, &msg, p, Box::new(|_| {})).await?;
    Ok(s)
}

pub(crate) async fn another_turn(llm: &Llama, s: &mut LlamaChatSession) -> Result<()> {
    let msg = [ChatMessage::new(MessageType::UserMessage, "And then?")];
    let p = GenerationParameters::new().with_temperature(0.0).with_max_length(16);
    llm.add_messages_with_callback(s, &msg, p, Box::new(|_| {})).await?;
    Ok(())
}

pub fn run(args: SessionBenchArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: SessionBenchArgs) -> Result<()> {
    let build = |kv: KvDtype| {
        Llama::builder()
            .with_source(LlamaSource::named(&args.model))
            .with_threads(args.threads)
            .with_context_length(args.fork_tokens.max(args.load_tokens) + 512)
            .with_prefix_cache_bytes(0)
            .with_kv_cache_type(kv)
            .build()
    };
    let llm = build(KvDtype::F16).await.context("loading the model")?;
    let mut rows = Vec::new();

    // Fork: the KV blocks are shared; only the block table and small state are copied.
    let big = session_with(&llm, args.fork_tokens).await?;
    let n_big = big.token_count();
    let fork_time = time(200, || big.try_clone());
    let fork = big.try_clone()?;
    let shared = big.shares_blocks_with(&fork);
    let blocks = n_big.div_ceil(colloquy::engine::kv::BLOCK_TOKENS);
    rows.push(json!({"test": "fork", "tokens": n_big, "median_us": fork_time.as_secs_f64() * 1e6,
        "kv_bytes_copied": (blocks - shared) * 32 * llm.model().new_kv().layout().bytes_per_token()}));

    // Save after one more turn: incremental (store) against full (one blob).
    let dir = tempfile_dir()?;
    let store = SessionStore::open(dir.join("store"))?;
    let mut s = big.try_clone()?;
    store.save("bench", &s)?;
    another_turn(&llm, &mut s).await?;
    let t = Instant::now();
    let stats = store.save("bench", &s)?;
    let incremental = t.elapsed();
    let blob = dir.join("full.session");
    let t = Instant::now();
    write_atomic(&blob, &s.to_bytes()?)?;
    let full = t.elapsed();
    rows.push(json!({"test": "save_after_turn", "tokens": s.token_count(),
        "incremental_ms": incremental.as_secs_f64() * 1e3, "incremental_bytes": stats.bytes_written,
        "full_ms": full.as_secs_f64() * 1e3, "full_bytes": std::fs::metadata(&blob)?.len()}));

    // Load a session against re-processing its tokens.
    let small = session_with(&llm, args.load_tokens).await?;
    let bytes = small.to_bytes()?;
    let n_small = small.token_count();
    let load = time(20, || LlamaChatSession::from_bytes(&bytes));
    // From a file, as llama.cpp's `llama_state_load_file` reads one.
    let file = dir.join("small.session");
    small.save(&file)?;
    let load_file = time(20, || LlamaChatSession::load(&file));
    let tokens = small.tokens();
    let model = llm.model();
    let reprocess = time(3, || {
        let mut kv = model.new_kv();
        model.forward(&mut kv, &tokens, colloquy::engine::arch::LogitsFor::Last)
    });
    rows.push(json!({"test": "load", "tokens": n_small, "load_ms": load.as_secs_f64() * 1e3,
        "load_file_ms": load_file.as_secs_f64() * 1e3,
        "reprocess_ms": reprocess.as_secs_f64() * 1e3,
        "speedup": reprocess.as_secs_f64() / load.as_secs_f64().max(1e-9)}));

    // Bytes per token, f16 and q8_0, in memory and saved. "every_layer" is what a
    // position costs while every layer holds it; with sliding-window layers a
    // session holds less ("memory", from the session itself).
    rows.push(json!({"test": "bytes_per_token", "kv": "f16", "tokens": n_small,
        "every_layer": llm.model().new_kv().layout().bytes_per_token(),
        "memory": small.kv_bytes() as f64 / n_small as f64,
        "saved": bytes.len() as f64 / n_small as f64}));
    drop(llm);
    let q8 = build(KvDtype::Q8_0).await?;
    let sq = session_with(&q8, args.load_tokens).await?;
    rows.push(json!({"test": "bytes_per_token", "kv": "q8_0", "tokens": sq.token_count(),
        "every_layer": q8.model().new_kv().layout().bytes_per_token(),
        "memory": sq.kv_bytes() as f64 / sq.token_count() as f64,
        "saved": sq.to_bytes()?.len() as f64 / sq.token_count() as f64}));
    let _ = std::fs::remove_dir_all(&dir);

    for r in &rows {
        if args.json {
            println!("{r}");
        } else {
            println!("{}", serde_json::to_string_pretty(r)?);
        }
    }
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("colloquy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
