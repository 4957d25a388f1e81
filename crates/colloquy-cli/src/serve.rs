//! `colloquy serve`: an HTTP server for chat sessions on one loaded model.
//!
//! Endpoints (JSON in and out):
//! - `GET  /health`
//! - `POST /v1/chat/completions`: an OpenAI-style completion of `messages`
//!   (a fresh session per request; the prefix cache reuses shared beginnings);
//! - `POST /sessions` → `{"id"}`; `GET /sessions/{id}` → history and token count;
//! - `POST /sessions/{id}/messages` with `{"content"}` → the answer;
//! - `POST /sessions/{id}/fork` → `{"id"}` of an independent copy;
//! - `DELETE /sessions/{id}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use colloquy::language::*;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Args)]
pub struct ServeArgs {
    /// A .gguf path or a known model name.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one (the chosen address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    context: crate::ContextArgs,
}

/// A session and the lock its turns take, one at a time.
type Slot = Arc<tokio::sync::Mutex<LlamaChatSession>>;

struct AppState {
    llm: Llama,
    sessions: Mutex<HashMap<String, Slot>>,
    next_id: AtomicU64,
}

type App = Arc<AppState>;
type Reply = (StatusCode, Json<Value>);

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct CompletionRequest {
    messages: Vec<WireMessage>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    seed: Option<u64>,
}

#[derive(Deserialize)]
struct TurnRequest {
    content: String,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    seed: Option<u64>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut builder = args.context.apply(Llama::builder().with_source(LlamaSource::named(&args.model)));
    if let Some(t) = args.threads {
        builder = builder.with_threads(t);
    }
    let llm = builder.build().await.with_context(|| format!("loading model {}", args.model))?;
    let state = Arc::new(AppState { llm, sessions: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1) });
    let app = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/chat/completions", post(completions))
        .route("/sessions", post(create_session))
        .route("/sessions/{id}", get(show_session).delete(delete_session))
        .route("/sessions/{id}/messages", post(add_message))
        .route("/sessions/{id}/fork", post(fork_session))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{} (is the port in use? try --port 0)", args.host, args.port))?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

fn params(temperature: Option<f32>, max_tokens: Option<u32>, seed: Option<u64>) -> GenerationParameters {
    let mut p = GenerationParameters::new();
    if let Some(t) = temperature {
        p = p.with_temperature(t);
    }
    if let Some(n) = max_tokens {
        p = p.with_max_length(n);
    }
    if let Some(s) = seed {
        p = p.with_seed(s);
    }
    p
}

fn error(status: StatusCode, e: impl std::fmt::Display) -> Reply {
    (status, Json(json!({"error": e.to_string()})))
}

/// A failed turn: a conversation that does not fit is the client's to fix
/// (400, in OpenAI's shape, naming the server option that makes room).
fn turn_error(e: colloquy::Error) -> Reply {
    match e {
        colloquy::Error::ContextOverflow { needed, n_ctx } => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {
                "message": format!("the conversation needs {needed} tokens, the context holds {n_ctx}; shorten it, or restart the server with a larger --ctx-size or with --context-policy drop-oldest"),
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }, "n_prompt_tokens": needed, "n_ctx": n_ctx})),
        ),
        e => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

/// Runs one turn and returns the answer and the turn's counters.
async fn turn(
    llm: &Llama,
    session: &mut LlamaChatSession,
    messages: &[ChatMessage],
    p: GenerationParameters,
) -> Result<(String, Value), Reply> {
    let answer = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&answer);
    let on_token =
        Box::new(move |piece: String| sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&piece));
    llm.add_messages_with_callback(session, messages, p, on_token).await.map_err(turn_error)?;
    let stats = session.last_turn().map_or(Value::Null, |s| {
        json!({"prompt_tokens": s.prompt_tokens, "reused_tokens": s.reused_tokens,
               "completion_tokens": s.generated_tokens,
               "time_to_first_token_ms": s.time_to_first_token.as_secs_f64() * 1e3})
    });
    let text = answer.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((text, stats))
}

async fn completions(State(app): State<App>, Json(req): Json<CompletionRequest>) -> Reply {
    let mut messages = Vec::new();
    for m in req.messages {
        let role = match m.role.as_str() {
            "system" => MessageType::SystemPrompt,
            "user" => MessageType::UserMessage,
            "assistant" => MessageType::ModelAnswer,
            other => return error(StatusCode::BAD_REQUEST, format!("unknown role {other:?}")),
        };
        messages.push(ChatMessage::new(role, m.content));
    }
    if messages.last().is_none_or(|m| m.role() != MessageType::UserMessage) {
        return error(StatusCode::BAD_REQUEST, "the last message must be from the user");
    }
    let mut session = match app.llm.new_chat_session() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let p = params(req.temperature, req.max_tokens, req.seed);
    let max = p.max_length() as usize;
    match turn(&app.llm, &mut session, &messages, p).await {
        Ok((text, usage)) => {
            let hit_limit = session.last_turn().is_some_and(|s| s.generated_tokens >= max);
            let finish = if hit_limit { "length" } else { "stop" };
            (
                StatusCode::OK,
                Json(json!({
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                    "usage": usage,
                })),
            )
        }
        Err(reply) => reply,
    }
}

async fn create_session(State(app): State<App>) -> Reply {
    match app.llm.new_chat_session() {
        Ok(s) => {
            let id = format!("s{}", app.next_id.fetch_add(1, Ordering::Relaxed));
            let slot = Arc::new(tokio::sync::Mutex::new(s));
            app.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), slot);
            (StatusCode::CREATED, Json(json!({"id": id})))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The slot of session `id`.
fn slot(app: &AppState, id: &str) -> Result<Slot, Reply> {
    let sessions = app.sessions.lock().unwrap_or_else(|e| e.into_inner());
    sessions.get(id).cloned().ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no session {id}")))
}

async fn add_message(State(app): State<App>, Path(id): Path<String>, Json(req): Json<TurnRequest>) -> Reply {
    let slot = match slot(&app, &id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Turns on one session wait for each other, so none is lost; a session
    // deleted meanwhile is only a detached slot and stays deleted.
    let mut session = slot.lock().await;
    if !app.sessions.lock().unwrap_or_else(|e| e.into_inner()).get(&id).is_some_and(|s| Arc::ptr_eq(s, &slot))
    {
        return error(StatusCode::NOT_FOUND, format!("session {id} was deleted"));
    }
    let msg = [ChatMessage::new(MessageType::UserMessage, req.content)];
    let p = params(req.temperature, req.max_tokens, req.seed);
    match turn(&app.llm, &mut session, &msg, p).await {
        Ok((text, usage)) => (StatusCode::OK, Json(json!({"answer": text, "usage": usage}))),
        Err(r) => r,
    }
}

async fn show_session(State(app): State<App>, Path(id): Path<String>) -> Reply {
    let slot = match slot(&app, &id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let s = slot.lock().await;
    let history: Vec<Value> =
        s.transcript().iter().map(|m| json!({"role": m.role().as_role(), "content": m.content()})).collect();
    (StatusCode::OK, Json(json!({"id": id, "tokens": s.token_count(), "messages": history})))
}

async fn fork_session(State(app): State<App>, Path(id): Path<String>) -> Reply {
    let slot = match slot(&app, &id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    // After any running turn, so the copy holds it.
    let copy = match slot.lock().await.try_clone() {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let new_id = format!("s{}", app.next_id.fetch_add(1, Ordering::Relaxed));
    let copy = Arc::new(tokio::sync::Mutex::new(copy));
    app.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(new_id.clone(), copy);
    (StatusCode::CREATED, Json(json!({"id": new_id})))
}

async fn delete_session(State(app): State<App>, Path(id): Path<String>) -> Reply {
    match app.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
        Some(_) => (StatusCode::OK, Json(json!({"deleted": id}))),
        None => error(StatusCode::NOT_FOUND, format!("no session {id}")),
    }
}
