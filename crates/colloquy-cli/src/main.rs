//! `colloquy`: run chat models locally.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use colloquy_engine::arch::LogitsFor;
use colloquy_engine::fetch;
use colloquy_engine::linear::Precision;
use colloquy_engine::model::{Model, ModelOptions};
use colloquy_engine::sampler::{Sampler, SamplerParams};
use colloquy_engine::tokenizer::Tokenizer;

mod bench;
mod bench_batch;
mod bench_constrained;
mod bench_serve;
mod bench_sessions;
mod bench_store;
mod chat;
mod constrain;
mod progress;
mod serve;
mod sessions;
mod template;

#[derive(Parser)]
#[command(name = "colloquy", version, about = "Run chat language models locally")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download a known model into the cache and print its path.
    Pull {
        /// smollm2, gemma3, r1-header (the tokenizer and template of DeepSeek-R1-Distill-Qwen-7B, no
        /// weights), or hf:ORG/NAME/FILE (a Hugging Face file, into the hub's own cache; HF_ENDPOINT,
        /// HF_TOKEN, HF_HOME and HF_HUB_CACHE apply).
        #[arg(default_value = "smollm2")]
        name: String,
    },
    /// Print the token ids of a text as a JSON array (reads only the model's vocabulary).
    Tokenize {
        /// A .gguf path or a known model name.
        #[arg(long, default_value = "smollm2")]
        model: String,
        /// Treat special-token text (like `<|im_start|>`) as plain text.
        #[arg(long)]
        no_special: bool,
        #[command(flatten)]
        input: TextInput,
    },
    /// Render a conversation with a model's chat template (reads only the model's metadata).
    Template(template::TemplateArgs),
    /// Chat with a model: one turn (with MESSAGE) or an interactive session.
    Chat(chat::ChatArgs),
    /// Aggregate decode tokens/s of 1, 2, 4, 8 sequences decoded together, optionally beside llama.cpp.
    BenchBatch(bench_batch::BatchBenchArgs),
    /// Decode tokens/s under a JSON Schema against free generation, optionally beside llama-server.
    BenchConstrained(bench_constrained::ConstrainedBenchArgs),
    /// Loopback load at several concurrencies against colloquy serve, optionally beside llama-server.
    BenchServe(bench_serve::ServeBenchArgs),
    /// Benchmark sessions: fork, incremental save, load against re-processing, bytes per token.
    BenchSessions(bench_sessions::SessionBenchArgs),
    /// Benchmark a session store (Redis or a folder): resume against re-processing, incremental saves, forks.
    BenchStore(bench_store::StoreBenchArgs),
    /// An OpenAI-compatible HTTP server with durable sessions and continuous batching.
    Serve(serve::ServeArgs),
    /// List, show, fork, delete and garbage-collect the sessions of a session store.
    Sessions(sessions::SessionsArgs),
    /// Raw completion (no chat template), streamed to stdout.
    Generate(GenerateArgs),
    /// Measure prompt and generation tokens/s (llama-bench style), optionally beside llama.cpp.
    Bench(bench::BenchArgs),
    /// Teacher-forced logits: one JSON line per position with the top-K ids.
    Logits {
        #[arg(long, default_value = "smollm2")]
        model: String,
        #[command(flatten)]
        input: PromptInput,
        /// Token ids as a JSON array, instead of a prompt.
        #[arg(long, conflicts_with_all = ["prompt", "prompt_file"])]
        ids: Option<String>,
        /// How many of the largest logits to print per position.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Dequantized weights, f32 activations and f32 KV cache.
        #[arg(long)]
        precise: bool,
        #[arg(long)]
        threads: Option<usize>,
        /// Context length in tokens (default: the model's trained length).
        #[arg(long)]
        ctx_size: Option<usize>,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct TextInput {
    /// The text.
    #[arg(long)]
    text: Option<String>,
    /// A file holding the text.
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(Args)]
struct PromptInput {
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// A file holding the prompt (`-`: standard input).
    #[arg(long, alias = "file")]
    prompt_file: Option<PathBuf>,
}

impl PromptInput {
    fn read(&self) -> Result<Option<String>> {
        match (&self.prompt, &self.prompt_file) {
            (Some(p), _) if p == "-" => Ok(Some(read_stdin()?)),
            (Some(p), _) => Ok(Some(p.clone())),
            (None, Some(f)) => Ok(Some(read_text_file(f)?)),
            (None, None) => Ok(None),
        }
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[arg(long, default_value = "smollm2")]
    model: String,
    #[command(flatten)]
    input: PromptInput,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    threads: Option<usize>,
    /// Dequantized weights, f32 activations and f32 KV cache.
    #[arg(long)]
    precise: bool,
    /// Print the generated token ids as a JSON array on the last line.
    #[arg(long)]
    ids: bool,
    /// Context length in tokens (default: the model's trained length).
    #[arg(long)]
    ctx_size: Option<usize>,
    #[command(flatten)]
    constraint: constrain::ConstraintArgs,
}

/// Exit status of a save refused because another writer saved first.
const EXIT_CONFLICT: i32 = 3;

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        let conflict = e.chain().any(|c| {
            matches!(c.downcast_ref::<colloquy::Error>(), Some(colloquy::Error::SessionConflict { .. }))
        });
        if conflict {
            eprintln!("hint: this turn's answer was printed but not saved; run the same command again to add the message to the latest saved version");
            std::process::exit(EXIT_CONFLICT);
        }
        std::process::exit(1);
    }
}

/// The context options of commands that chat.
#[derive(Args)]
pub(crate) struct ContextArgs {
    /// Context length in tokens (default: the model's trained length, capped so
    /// that one session's KV cache takes at most 1 GiB).
    #[arg(long)]
    ctx_size: Option<usize>,
    /// What a turn does when the conversation outgrows the context: fail
    /// (`error`, the default) or drop the oldest messages (`drop-oldest`).
    #[arg(long, value_enum, default_value = "error")]
    context_policy: PolicyArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PolicyArg {
    Error,
    DropOldest,
}

impl ContextArgs {
    pub(crate) fn apply(&self, mut b: colloquy::LlamaBuilder) -> colloquy::LlamaBuilder {
        if let Some(n) = self.ctx_size {
            b = b.with_context_length(n);
        }
        b.with_context_policy(match self.context_policy {
            PolicyArg::Error => colloquy::ContextPolicy::Error,
            PolicyArg::DropOldest => colloquy::ContextPolicy::DropOldest,
        })
    }
}

/// All of standard input, as text.
pub(crate) fn read_stdin() -> Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading standard input")?;
    Ok(text)
}

/// A text file's contents (`-`: standard input).
pub(crate) fn read_text_file(path: &std::path::Path) -> Result<String> {
    if path == std::path::Path::new("-") {
        return read_stdin();
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn load(model: &str, threads: Option<usize>, precise: bool, ctx_size: Option<usize>) -> Result<Model> {
    let path = fetch::resolve_model(model, &fetch::PullOptions::default())?;
    let mut opts = ModelOptions { n_ctx: ctx_size, ..ModelOptions::default() };
    if let Some(t) = threads {
        opts.threads = t;
    }
    if precise {
        opts.precision = Precision::Precise;
    }
    Model::load(&path, opts).with_context(|| format!("loading {}", path.display()))
}

fn prompt_ids(model: &Model, text: &str) -> Vec<u32> {
    let tok = model.tokenizer();
    let mut ids = Vec::new();
    if tok.add_bos() {
        ids.extend(tok.bos());
    }
    ids.extend(tok.encode(text, true));
    ids
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Pull { name } => {
            let path = fetch::pull(&name, &fetch::PullOptions::default())?;
            println!("{}", path.display());
        }
        Cmd::Tokenize { model, no_special, input } => {
            let text = match (input.text, input.file) {
                (Some(t), _) => t,
                (None, Some(f)) => {
                    std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
                }
                (None, None) => unreachable!("clap requires one input"),
            };
            let path = fetch::resolve_model(&model, &fetch::PullOptions::default())?;
            let tokenizer = Tokenizer::from_file(&path)
                .with_context(|| format!("reading the vocabulary of {}", path.display()))?;
            let ids = tokenizer.encode(&text, !no_special);
            println!("{}", serde_json::to_string(&ids)?);
        }
        Cmd::Generate(args) => generate(args)?,
        Cmd::Template(args) => template::run(args)?,
        Cmd::Chat(args) => chat::run(args)?,
        Cmd::Serve(args) => serve::run(args)?,
        Cmd::BenchSessions(args) => bench_sessions::run(args)?,
        Cmd::BenchStore(args) => bench_store::run(args)?,
        Cmd::BenchBatch(args) => bench_batch::run(args)?,
        Cmd::BenchConstrained(args) => bench_constrained::run(args)?,
        Cmd::BenchServe(args) => bench_serve::run(args)?,
        Cmd::Sessions(args) => sessions::run(args)?,
        Cmd::Bench(args) => bench::run(args)?,
        Cmd::Logits { model, input, ids, top, precise, threads, ctx_size } => {
            let model = load(&model, threads, precise, ctx_size)?;
            let tokens: Vec<u32> = match (ids, input.read()?) {
                (Some(j), _) => {
                    serde_json::from_str(&j).context("--ids must be a JSON array of token ids")?
                }
                (None, Some(text)) => prompt_ids(&model, &text),
                (None, None) => bail!("give --prompt, --prompt-file or --ids"),
            };
            let mut kv = model.new_kv();
            let logits = model.forward(&mut kv, &tokens, LogitsFor::All)?;
            let out = std::io::stdout();
            let mut out = out.lock();
            for (pos, row) in logits.chunks_exact(model.n_vocab()).enumerate() {
                let mut idx: Vec<u32> = (0..row.len() as u32).collect();
                let k = top.min(idx.len()).max(1);
                idx.select_nth_unstable_by(k - 1, |&a, &b| {
                    row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
                });
                idx.truncate(k);
                idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
                let top: Vec<(u32, f32)> = idx.iter().map(|&i| (i, row[i as usize])).collect();
                writeln!(out, "{}", serde_json::json!({"pos": pos, "top": top}))?;
            }
        }
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    let Some(text) = args.input.read()? else {
        bail!("give --prompt TEXT, --prompt-file PATH or --prompt -")
    };
    if text.is_empty() {
        bail!("the prompt is empty; give some text to complete");
    }
    if let Some(c) = args.constraint.constraint()? {
        return generate_constrained(&args, &text, c);
    }
    let model = load(&args.model, args.threads, args.precise, args.ctx_size)?;
    let prompt = prompt_ids(&model, &text);
    let mut kv = model.new_kv();
    let t0 = Instant::now();
    let bar = progress::prompt_bar(prompt.len());
    let mut logits = Vec::new();
    model.forward_chunked(
        &mut kv,
        &prompt,
        LogitsFor::Last,
        colloquy_engine::model::UBATCH,
        &mut logits,
        &mut |d, _| bar.set_position(d as u64),
    )?;
    bar.finish_and_clear();
    let t_prompt = t0.elapsed();
    let mut sampler =
        Sampler::new(SamplerParams { temperature: args.temperature, seed: args.seed, ..Default::default() });
    let mut history = prompt.clone();
    let mut stream = colloquy_engine::tokenizer::Utf8Stream::new();
    let stdout = std::io::stdout();
    let t1 = Instant::now();
    let mut write_err = None;
    let new = model.generate(&mut kv, logits, &mut history, &mut sampler, args.max_tokens, &mut |tok| {
        let piece = model.tokenizer().token_to_piece(tok).unwrap_or_default();
        let text = stream.push(&piece);
        let mut out = stdout.lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            write_err = Some(e);
            return false;
        }
        true
    })?;
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    let t_gen = t1.elapsed();
    let mut out = stdout.lock();
    write!(out, "{}", stream.finish())?;
    writeln!(out)?;
    if args.ids {
        writeln!(out, "{}", serde_json::to_string(&new)?)?;
    }
    eprintln!(
        "prompt: {} tokens in {:.3}s ({:.1} tok/s); generation: {} tokens in {:.3}s ({:.1} tok/s); {} threads",
        prompt.len(),
        t_prompt.as_secs_f64(),
        prompt.len() as f64 / t_prompt.as_secs_f64(),
        new.len(),
        t_gen.as_secs_f64(),
        // The first sampled token needs no forward pass; the rest each need one.
        new.len().saturating_sub(1) as f64 / t_gen.as_secs_f64().max(1e-9),
        model.threads(),
    );
    Ok(())
}

/// `generate` under a constraint: the library's completion turn, which
/// applies the constraint's mask at every step.
fn generate_constrained(args: &GenerateArgs, text: &str, c: colloquy::Constraint) -> Result<()> {
    let mut builder = colloquy::Llama::builder().with_source(colloquy::LlamaSource::named(&args.model));
    if let Some(t) = args.threads {
        builder = builder.with_threads(t);
    }
    if let Some(n) = args.ctx_size {
        builder = builder.with_context_length(n);
    }
    if args.precise {
        builder = builder.with_precision(Precision::Precise);
    }
    let llm = builder.build_blocking().with_context(|| format!("loading model {}", args.model))?;
    let params = colloquy::GenerationParameters::new()
        .with_temperature(args.temperature)
        .with_seed(args.seed)
        .with_repetition_penalty(1.0)
        .with_max_length(args.max_tokens as u32)
        .with_constraints(c);
    let mut turn = llm.begin_completion(text, &params).context("starting the constrained completion")?;
    let t0 = Instant::now();
    let stdout = std::io::stdout();
    while !turn.is_finished() {
        llm.step(&mut [&mut turn], colloquy_engine::model::UBATCH)?;
        let mut out = stdout.lock();
        out.write_all(turn.take_text().as_bytes()).and_then(|_| out.flush()).context("writing to stdout")?;
    }
    if let Some(e) = turn.error() {
        bail!("{e}");
    }
    writeln!(stdout.lock())?;
    eprintln!(
        "{} tokens in {:.3}s under the constraint; finished: {}",
        turn.generated_tokens(),
        t0.elapsed().as_secs_f64(),
        turn.finish_reason().map_or("stop", |f| f.as_str())
    );
    Ok(())
}
