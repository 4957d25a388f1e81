//! `colloquy serve`: the OpenAI-compatible server of `colloquy-server`, on
//! one loaded model, with its sessions in a session store.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use colloquy::language::*;
use colloquy_server::{router, Server, ServerConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// A .gguf path or a known model name.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes it to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one (the chosen address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    context: crate::ContextArgs,
    /// The session store that keeps every stored conversation: a folder, or
    /// Redis shared by several servers (`redis://HOST:PORT/DB`,
    /// `redis+cluster://HOST:PORT,HOST:PORT`; see docs/deploy.md). Default:
    /// `$COLLOQUY_HOME/sessions`.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Seconds between garbage collections of the store's unused blocks
    /// (0: never). Default: 600 for Redis; a folder store collects as it saves.
    #[arg(long)]
    store_gc_interval: Option<u64>,
    /// Require `Authorization: Bearer KEY` on every request but /health.
    #[arg(long, env = "COLLOQUY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests decoded together in one batch (llama-server's -np).
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Requests admitted (running and waiting) before new ones get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// The ceiling on one request's new tokens (also capped by the context left).
    #[arg(long, default_value_t = 4096)]
    max_tokens: u32,
    /// The largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Prompt tokens read per batch step, shared by the prompts being read.
    #[arg(long, default_value_t = 256)]
    prompt_budget: usize,
}

pub fn run(args: ServeArgs) -> Result<()> {
    // One async thread: the model runs on the scheduler's thread, and on two
    // cores a second HTTP thread only takes time from the forward pass.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut builder =
        args.context.apply(Llama::builder().with_source(LlamaSource::named(&args.model)).with_progress(true));
    if let Some(t) = args.threads {
        builder = builder.with_threads(t);
    }
    let llm = builder.build().await.with_context(|| format!("loading model {}", args.model))?;
    let dir = args.store.unwrap_or_else(|| colloquy::engine::fetch::cache_dir().join("sessions"));
    let store = SessionStore::open(&dir).with_context(|| {
        format!(
            "opening the session store {} (start it, or choose another with --store DIR or --store redis://HOST:PORT/DB)",
            without_password(&dir.display().to_string())
        )
    })?;
    let remote = store.backend().location().starts_with("redis");
    // Printed as the store names itself: a Redis URL without its password.
    let shown = store.location().to_string();
    let gc_every = args.store_gc_interval.unwrap_or(if remote { 600 } else { 0 });
    let file_stem = llm.model().path().file_stem().map(|s| s.to_string_lossy().into_owned());
    let config = ServerConfig {
        model_id: args.model.clone(),
        model_aliases: file_stem.into_iter().collect(),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        parallel: args.parallel,
        max_queue: args.max_queue,
        max_tokens: args.max_tokens,
        max_body_bytes: args.max_body_bytes,
        prompt_budget: args.prompt_budget,
    };
    let server = Server::start(llm, store, config)?;
    if gc_every > 0 {
        collect_every(std::sync::Arc::clone(server.store()), std::time::Duration::from_secs(gc_every));
    }
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{} (is the port in use? try --port 0)", args.host, args.port))?;
    // The address line is what scripts wait for; stdout may be closed after
    // it (a parent that read it and left), which must not stop the server.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on http://{}", listener.local_addr()?);
    let _ = writeln!(out, "sessions in {shown}");
    let _ = out.flush();
    colloquy_server::serve(listener, router(server)).await?;
    eprintln!("stopped");
    Ok(())
}

/// Runs the store's garbage collection every `every`, on its own thread
/// (it reads every manifest, and must not hold up requests). A failure is
/// reported and retried next time.
fn collect_every(store: std::sync::Arc<SessionStore>, every: std::time::Duration) {
    std::thread::spawn(move || loop {
        std::thread::sleep(every);
        match store.gc() {
            Ok(s) => eprintln!("store gc: {} blocks removed, {} kept", s.blocks_removed, s.blocks_kept),
            Err(e) => eprintln!("store gc failed (retried in {}s): {e}", every.as_secs()),
        }
    });
}

/// A store argument as it may be printed: a URL's `user:password@` becomes `***@`.
fn without_password(store: &str) -> String {
    colloquy::store::RedisBackend::redact_url(store)
}

#[cfg(test)]
mod tests {
    #[test]
    fn store_passwords_are_not_printed() {
        assert_eq!(super::without_password("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(super::without_password("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(super::without_password("/var/sessions"), "/var/sessions");
    }
}
