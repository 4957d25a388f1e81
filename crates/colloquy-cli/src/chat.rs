//! `colloquy chat`: one turn against a session file, or an interactive REPL.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use colloquy::language::*;

#[derive(Args)]
pub struct ChatArgs {
    /// A .gguf path or a known model name.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// System prompt for a new session.
    #[arg(long)]
    system: Option<String>,
    /// Session file: loaded if it exists, saved (atomically) after the turn.
    /// With --store, a session id in the store instead.
    #[arg(long)]
    session: Option<PathBuf>,
    /// Session store, a folder or redis://HOST:PORT/DB (see `colloquy sessions`): --session names a session
    /// there, loaded if saved, saved after every turn (only changed KV blocks are written).
    #[arg(long, requires = "session")]
    store: Option<PathBuf>,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Restart the session's random stream at this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// The most tokens per answer.
    #[arg(long, default_value_t = 1024)]
    max_tokens: u32,
    #[arg(long)]
    threads: Option<usize>,
    /// Print prompt tokens processed and time to first token to stderr.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    context: crate::ContextArgs,
    #[command(flatten)]
    constraint: crate::constrain::ConstraintArgs,
    /// Read the message from this file (`-`: standard input), for messages
    /// longer than the shell accepts.
    #[arg(long, conflicts_with = "message")]
    file: Option<PathBuf>,
    /// The message (`-`: read it from standard input); without it (and
    /// without --file), an interactive chat starts.
    message: Option<String>,
}

/// Test hook: milliseconds to wait between loading the session and saving it,
/// which widens the window in which another writer can save first.
const SAVE_DELAY_ENV: &str = "COLLOQUY_TEST_SAVE_DELAY_MS";

/// The one-turn message, from MESSAGE, `-` or --file; `None` for the REPL.
fn one_turn_message(args: &ChatArgs) -> Result<Option<String>> {
    let text = match (&args.message, &args.file) {
        (Some(m), _) if m != "-" => m.clone(),
        (Some(_), _) => crate::read_stdin()?,
        (None, Some(f)) => crate::read_text_file(f)?,
        (None, None) => return Ok(None),
    };
    if text.trim().is_empty() {
        bail!("the message is empty; give some text (as MESSAGE, with --file PATH, or on standard input with -)");
    }
    Ok(Some(text))
}

pub fn run(args: ChatArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: ChatArgs) -> Result<()> {
    // Read the message first: a bad one costs no model load.
    let message = one_turn_message(&args)?;
    let constraint = args.constraint.constraint()?;
    let mut builder = args.context.apply(Llama::builder().with_source(LlamaSource::named(&args.model)));
    if let Some(t) = args.threads {
        builder = builder.with_threads(t);
    }
    let llm = builder.build().await.with_context(|| format!("loading model {}", args.model))?;
    let mut params =
        GenerationParameters::new().with_temperature(args.temperature).with_max_length(args.max_tokens);
    if let Some(s) = args.seed {
        params = params.with_seed(s);
    }
    if let Some(c) = constraint {
        params = params.with_constraints(c);
    }
    let store = match &args.store {
        Some(dir) => Some(
            SessionStore::open(dir).with_context(|| format!("opening session store {}", dir.display()))?,
        ),
        None => None,
    };
    let session = match (&store, &args.session) {
        (Some(store), Some(id)) => {
            let id = crate::sessions::id_arg(id)?;
            if store.contains(id)? {
                store.load(id).with_context(|| format!("loading session {id} from {}", store.location()))?
            } else {
                llm.new_chat_session()?
            }
        }
        (None, Some(p)) if p.exists() => LlamaChatSession::load(p)
            .with_context(|| format!("loading session {} (delete it to start over)", p.display()))?,
        _ => llm.new_chat_session()?,
    };
    let mut chat = new_chat(&llm, &args, session, &params);
    match &message {
        Some(message) => {
            turn(&mut chat, message, args.stats).await?;
            if let Some(ms) = std::env::var(SAVE_DELAY_ENV).ok().and_then(|v| v.parse().ok()) {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            if let Some(p) = &args.session {
                save_to(&chat, p, store.as_ref(), args.stats)?;
            }
        }
        None => repl(&llm, &args, chat, &params, store.as_ref()).await?,
    }
    Ok(())
}

/// Saves to the session file `p`, or as session `p` in the store.
fn save_to(chat: &Chat<Llama>, p: &Path, store: Option<&SessionStore>, stats: bool) -> Result<()> {
    let Some(store) = store else { return save(chat, p) };
    let id = crate::sessions::id_arg(p)?;
    let s = store
        .save(id, &chat.session()?)
        .with_context(|| format!("saving session {id} to {}", store.location()))?;
    if stats {
        eprintln!(
            "saved: version={} blocks_written={} blocks_reused={} blocks_removed={} bytes_written={}",
            s.version, s.blocks_written, s.blocks_reused, s.blocks_removed, s.bytes_written
        );
    }
    Ok(())
}

fn new_chat(
    llm: &Llama,
    args: &ChatArgs,
    session: LlamaChatSession,
    params: &GenerationParameters,
) -> Chat<Llama> {
    let mut chat = llm.chat().with_sampler(params.clone()).with_session(session);
    if let Some(sys) = &args.system {
        chat = chat.with_system_prompt(sys.clone());
    }
    chat
}

async fn turn(chat: &mut Chat<Llama>, message: &str, stats: bool) -> Result<()> {
    chat(message).to_std_out().await?;
    println!();
    let last = chat.session()?.last_turn();
    if let Some(s) = last.filter(|s| s.dropped_messages > 0) {
        eprintln!(
            "note: the conversation outgrew the context: its {} oldest messages were dropped (the model no longer reads them; /history lists them)",
            s.dropped_messages
        );
    }
    if stats {
        if let Some(s) = last {
            eprintln!(
                "stats: prompt_tokens={} reused_tokens={} rewound_tokens={} generated_tokens={} ttft_ms={:.1} total_ms={:.1}",
                s.prompt_tokens,
                s.reused_tokens,
                s.rewound_tokens,
                s.generated_tokens,
                s.time_to_first_token.as_secs_f64() * 1e3,
                s.total_time.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}

fn save(chat: &Chat<Llama>, path: &Path) -> Result<()> {
    chat.session()?.save(path).with_context(|| format!("saving session to {}", path.display()))
}

const HELP: &str =
    "commands: /save FILE, /load FILE, /fork, /history, /reset, /exit (with --store: /save ID, /load ID)";

/// Loads the session file `arg`, or session `arg` of the store.
fn load_from(store: Option<&SessionStore>, arg: &str) -> colloquy::Result<LlamaChatSession> {
    match store {
        Some(s) => s.load(arg),
        None => LlamaChatSession::load(arg),
    }
}

async fn repl(
    llm: &Llama,
    args: &ChatArgs,
    mut chat: Chat<Llama>,
    params: &GenerationParameters,
    store: Option<&SessionStore>,
) -> Result<()> {
    eprintln!("colloquy chat: type a message, or {HELP}");
    // Forks kept by /fork: switching to one keeps the current branch as another fork.
    let mut forks: Vec<LlamaChatSession> = Vec::new();
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        let (cmd, arg) = line.split_once(' ').map_or((line, ""), |(c, a)| (c, a.trim()));
        match cmd {
            "" => {}
            "/exit" | "/quit" => break,
            "/help" => eprintln!("{HELP}"),
            "/save" if !arg.is_empty() => match save_to(&chat, Path::new(arg), store, args.stats) {
                Ok(()) => eprintln!("saved to {arg}"),
                Err(e) => eprintln!("error: {e:#}"),
            },
            "/load" if !arg.is_empty() => match load_from(store, arg) {
                Ok(s) => {
                    chat = new_chat(llm, args, s, params);
                    eprintln!("loaded {arg}");
                }
                Err(e) => eprintln!("error: {e:#}"),
            },
            "/fork" if !arg.is_empty() => match arg.parse::<usize>() {
                Ok(n) if (1..=forks.len()).contains(&n) => {
                    let target = std::mem::replace(&mut forks[n - 1], chat.session()?);
                    chat = new_chat(llm, args, target, params);
                    eprintln!("switched to fork #{n}; the previous branch is now fork #{n}");
                }
                _ => eprintln!("no fork {arg}; there are {}", forks.len()),
            },
            "/fork" => {
                let current = chat.session()?;
                forks.push(current.try_clone()?);
                eprintln!("forked: the copy is fork #{} (switch with /fork N)", forks.len());
            }
            "/history" => {
                let session = chat.session()?;
                let dropped = session.dropped_messages();
                for m in &dropped {
                    eprintln!("[{}, dropped] {}", m.role().as_role(), m.content());
                }
                if !dropped.is_empty() {
                    eprintln!(
                        "--- {} messages dropped from the context; the model reads from here ---",
                        dropped.len()
                    );
                }
                for m in session.transcript() {
                    eprintln!("[{}] {}", m.role().as_role(), m.content());
                }
            }
            "/reset" => {
                chat = new_chat(llm, args, llm.new_chat_session()?, params);
                eprintln!("new session");
            }
            c if c.starts_with('/') => eprintln!("unknown command {c}; {HELP}"),
            _ => {
                if let Err(e) = turn(&mut chat, line, args.stats).await {
                    eprintln!("error: {e:#}");
                } else if let (Some(_), Some(id)) = (store, &args.session) {
                    // With a store, every turn is saved (incrementally).
                    if let Err(e) = save_to(&chat, id, store, args.stats) {
                        eprintln!("error: {e:#}");
                    }
                }
            }
        }
    }
    Ok(())
}
