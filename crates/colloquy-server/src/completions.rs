//! `POST /v1/chat/completions` and `POST /v1/completions`, streamed (server-
//! sent events in OpenAI's chunk shape) or not. A turn on a stored session is
//! acknowledged (its finish chunk or its reply sent) only after it is saved.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use colloquy::running::{RunningTurn, TokenLogprob};
use colloquy::{ChatMessage, ChatModel, MessageType};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::reasoning::{self, ReasoningStream};
use crate::scheduler::Event;
use crate::sessions::{new_id, Held};
use crate::structured::{answer_calls, tool_calls_json, CallStream};
use crate::wire::{chat_logprobs, completion_logprobs, ChatRequest, CompletionRequest};
use crate::{blocking, ApiJson, App};

/// Which endpoint a reply is for: its object names and how text is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// What a reply needs besides the turn's events.
struct Reply {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    want_logprobs: bool,
    echo: Option<String>,
    held: Option<Held>,
    /// The answer may be tool calls (the request had tools).
    calls_expected: bool,
    /// The template's generation prompt opened `<think>`: the answer starts in its reasoning.
    thinking_opened: bool,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The request's session id: the `session_id` field, or the `X-Session-Id` header.
fn session_id(req: &ChatRequest, headers: &HeaderMap) -> Option<String> {
    req.session_id
        .clone()
        .or_else(|| headers.get("x-session-id").and_then(|v| v.to_str().ok()).map(str::to_string))
}

/// The messages a request adds to a stored session: those after its
/// transcript when the request repeats it (as stateless clients do), or all
/// of them when it sends only the new ones.
fn new_messages(transcript: &[ChatMessage], sent: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let repeats = sent.len() >= transcript.len()
        && transcript.iter().zip(&sent).all(|(a, b)| a.role() == b.role() && same_text(a, b));
    if repeats {
        sent.into_iter().skip(transcript.len()).collect()
    } else {
        sent
    }
}

/// Whether a resent message is the stored one. A client resends an answer
/// without its reasoning (it got that as `reasoning_content`), so answers
/// compare by their answer part.
fn same_text(stored: &ChatMessage, sent: &ChatMessage) -> bool {
    stored.content() == sent.content()
        || (stored.role() == MessageType::ModelAnswer && stored.answer() == sent.answer())
}

/// `POST /v1/chat/completions`.
pub async fn chat(
    State(app): State<App>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Response {
    let r = chat_reply(app.clone(), headers, req).await;
    app.finish_request("/v1/chat/completions", r)
}

async fn chat_reply(app: App, headers: HeaderMap, req: ChatRequest) -> Result<Response, ApiError> {
    let model = app.check_model(req.model.as_deref())?;
    let structure = req.structure()?;
    let mut params = req.params(app.config.max_tokens)?;
    if let Some(c) = structure.constraint.clone() {
        params = params.with_constraints(c);
    }
    // The tools are rendered into this turn's prompt, not stored in the
    // history: each request offers its own, as OpenAI clients send them.
    params = params.with_tools(structure.tools.clone());
    let messages = req.chat_messages()?;
    let wait = req.session_wait.unwrap_or(true);
    let held = match session_id(&req, &headers) {
        Some(id) => Some(app.sessions.hold(&id, wait).await?),
        None if req.store == Some(true) => Some(app.sessions.create(app.llm.new_chat_session()?).await?),
        None => None,
    };
    let (session, new) = match &held {
        Some(h) => {
            let s = h.session();
            (None, new_messages(&s.transcript(), messages))
        }
        None => (Some(app.llm.new_chat_session()?), messages),
    };
    let asks = |m: &ChatMessage| matches!(m.role(), MessageType::UserMessage | MessageType::ToolResult);
    let last_asks = match held.as_ref().map(|h| h.session().transcript()) {
        _ if !new.is_empty() => new.last().is_some_and(asks),
        Some(t) => t.last().is_some_and(asks),
        None => false,
    };
    if !last_asks {
        return Err(ApiError::invalid("messages", "the conversation must end with a user or tool message"));
    }
    let llm = app.llm.clone();
    let (begun, held) = blocking_turn(held, session, move |s| llm.begin_turn(s, &new, &params)).await?;
    let turn = begun.map_err(|e| match e {
        // A constraint that does not compile is the fault of the field it came from.
        colloquy::Error::ConstraintInvalid(_) | colloquy::Error::ConstraintUnsatisfiable(_) => {
            ApiError::invalid(structure.param, e.to_string())
        }
        e => ApiError::from(e),
    })?;
    let reply = Reply {
        kind: Kind::Chat,
        id: format!("chatcmpl-{}", new_id()?),
        created: now(),
        model,
        include_usage: req.sampling.include_usage(),
        want_logprobs: req.logprobs.unwrap_or(false),
        echo: None,
        held,
        calls_expected: structure.calls_expected,
        thinking_opened: app.llm.opens_thinking(),
    };
    respond(app, turn, reply, req.sampling.stream).await
}

/// Runs `begin` on a blocking thread, on the held session or a fresh one;
/// `begin`'s own error is left to the caller to map.
async fn blocking_turn(
    held: Option<Held>,
    fresh: Option<colloquy::LlamaChatSession>,
    begin: impl FnOnce(&colloquy::LlamaChatSession) -> colloquy::Result<RunningTurn> + Send + 'static,
) -> Result<(colloquy::Result<RunningTurn>, Option<Held>), ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let r = match (&held, &fresh) {
            (Some(h), _) => begin(h.session()),
            (None, Some(s)) => begin(s),
            (None, None) => Err(colloquy::Error::WorkerStopped),
        };
        let _ = tx.send((r, held));
    });
    rx.await.map_err(|_| ApiError::Internal("a worker thread died".into()))
}

/// `POST /v1/completions`.
pub async fn completion(State(app): State<App>, ApiJson(req): ApiJson<CompletionRequest>) -> Response {
    let r = completion_reply(app.clone(), req).await;
    app.finish_request("/v1/completions", r)
}

async fn completion_reply(app: App, req: CompletionRequest) -> Result<Response, ApiError> {
    let model = app.check_model(req.model.as_deref())?;
    let params = req.params(app.config.max_tokens)?;
    let prompt = req.prompt_text()?;
    let (llm, text) = (app.llm.clone(), prompt.clone());
    let turn = blocking(move || llm.begin_completion(&text, &params)).await?;
    let reply = Reply {
        kind: Kind::Text,
        id: format!("cmpl-{}", new_id()?),
        created: now(),
        model,
        include_usage: req.sampling.include_usage(),
        want_logprobs: req.logprobs.is_some(),
        echo: req.echo.then_some(prompt),
        held: None,
        calls_expected: false,
        thinking_opened: false,
    };
    respond(app, turn, reply, req.sampling.stream).await
}

/// Submits the turn and answers: all at once, or as a stream.
async fn respond(app: App, turn: RunningTurn, reply: Reply, stream: bool) -> Result<Response, ApiError> {
    app.metrics.record_prompt(turn.prompt_tokens(), turn.cached_tokens());
    let events = app.scheduler.submit(turn)?;
    if stream {
        Ok(stream_reply(app, events, reply))
    } else {
        whole_reply(app, events, reply).await
    }
}

/// What a finished turn reports: its usage and why it stopped.
struct Finished {
    usage: Value,
    finish_reason: &'static str,
    held: Option<Held>,
}

/// Commits a finished turn and, for a stored session, saves it: only then is
/// the turn acknowledged.
async fn finish(app: &App, turn: RunningTurn, held: Option<Held>) -> Result<Finished, ApiError> {
    let (p, c) = (turn.prompt_tokens(), turn.generated_tokens());
    let usage = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                       "prompt_tokens_details": {"cached_tokens": turn.cached_tokens()}});
    let finish_reason = turn.finish_reason().map_or("stop", |f| f.as_str());
    blocking(move || turn.commit()).await?;
    let held = match held {
        Some(h) => Some(app.sessions.save(h).await?),
        None => None,
    };
    Ok(Finished { usage, finish_reason, held })
}

fn logprobs_json(reply: &Reply, lps: &[TokenLogprob], offset: usize) -> Value {
    match (reply.want_logprobs, reply.kind) {
        (false, _) => Value::Null,
        (true, Kind::Chat) => chat_logprobs(lps),
        (true, Kind::Text) => completion_logprobs(lps, offset),
    }
}

fn session_headers(held: &Option<Held>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(v) = held.as_ref().and_then(|h| h.id.parse().ok()) {
        headers.insert("x-session-id", v);
    }
    headers
}

/// The non-streamed reply: one JSON body once the turn is saved. A client
/// that goes away drops this future, and with it the turn.
async fn whole_reply(
    app: App,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut reply: Reply,
) -> Result<Response, ApiError> {
    let mut text = reply.echo.take().unwrap_or_default();
    let mut lps: Vec<TokenLogprob> = Vec::new();
    let turn = loop {
        match events.recv().await {
            Some(Event::Text(t, l)) => {
                text.push_str(&t);
                lps.extend(l);
            }
            Some(Event::Done(turn)) => break *turn,
            Some(Event::Failed(e)) => return Err(e),
            None => return Err(ApiError::Internal("the scheduler dropped the turn".into())),
        }
    };
    let done = finish(&app, turn, reply.held.take()).await?;
    let logprobs = logprobs_json(&reply, &lps, 0);
    let (thinking, answer) = match reply.kind {
        Kind::Chat if reply.thinking_opened => reasoning::split_opened(&text),
        Kind::Chat => reasoning::split(&text),
        Kind::Text => (None, text.as_str()),
    };
    let calls = if reply.calls_expected { answer_calls(answer) } else { Vec::new() };
    let mut choice = match reply.kind {
        Kind::Chat if !calls.is_empty() => json!({"index": 0,
            "message": {"role": "assistant", "content": null, "tool_calls": tool_calls_json(&calls)?},
            "logprobs": logprobs, "finish_reason": "tool_calls"}),
        Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": answer},
                              "logprobs": logprobs, "finish_reason": done.finish_reason}),
        Kind::Text => {
            json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": done.finish_reason})
        }
    };
    if let Some(r) = thinking.filter(|r| !r.is_empty()) {
        choice["message"]["reasoning_content"] = json!(r);
    }
    let object = if reply.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
    let mut body = json!({"id": reply.id, "object": object, "created": reply.created, "model": reply.model,
                          "system_fingerprint": app.system_fingerprint(),
                          "choices": [choice], "usage": done.usage});
    if let Some(h) = &done.held {
        body["session_id"] = json!(h.id);
    }
    Ok((session_headers(&done.held), Json(body)).into_response())
}

/// One chunk of a stream.
fn chunk(
    reply: &Reply,
    fp: &str,
    delta: Option<Value>,
    text: &str,
    logprobs: Value,
    finish: Option<&str>,
) -> Value {
    let choice = match reply.kind {
        Kind::Chat => json!({"index": 0, "delta": delta.unwrap_or_else(|| json!({})), "logprobs": logprobs,
                              "finish_reason": finish}),
        Kind::Text => json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}),
    };
    let object = if reply.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
    let mut c = json!({"id": reply.id, "object": object, "created": reply.created, "model": reply.model,
                       "system_fingerprint": fp, "choices": [choice]});
    if reply.include_usage {
        c["usage"] = Value::Null;
    }
    c
}

/// The streamed reply: the role delta, content deltas, then (once the turn
/// is saved) the finish chunk, the usage chunk if asked for, and `[DONE]`.
/// An error after the stream began is sent as `data: {"error": ...}`. A
/// client that goes away closes the stream, which cancels the turn.
fn stream_reply(app: App, mut events: mpsc::UnboundedReceiver<Event>, mut reply: Reply) -> Response {
    let (tx, rx) = mpsc::channel::<Value>(64);
    let headers = session_headers(&reply.held);
    tokio::spawn(async move {
        let fp = app.system_fingerprint();
        let first = match reply.kind {
            Kind::Chat => {
                chunk(&reply, &fp, Some(json!({"role": "assistant", "content": ""})), "", Value::Null, None)
            }
            Kind::Text => {
                let echo = reply.echo.take().unwrap_or_default();
                chunk(&reply, &fp, None, &echo, Value::Null, None)
            }
        };
        if tx.send(first).await.is_err() {
            return;
        }
        let mut offset = 0;
        let mut thinking =
            if reply.thinking_opened { ReasoningStream::opened() } else { ReasoningStream::new() };
        let mut calls = CallStream::new(reply.calls_expected);
        let turn = loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = tx.closed() => return,
            };
            match ev {
                Some(Event::Text(t, l)) => {
                    let lp = logprobs_json(&reply, &l, offset);
                    offset += t.len();
                    let (r, t) = match reply.kind {
                        Kind::Chat => thinking.push(&t),
                        Kind::Text => (String::new(), t),
                    };
                    let mut deltas = match calls.push(&t) {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = tx.send(e.body()).await;
                            return;
                        }
                    };
                    if !r.is_empty() {
                        deltas.insert(0, json!({"reasoning_content": r}));
                    }
                    // Log-probabilities go out even while text is held back.
                    let deltas = if deltas.is_empty() && !lp.is_null() {
                        vec![json!({"content": ""})]
                    } else {
                        deltas
                    };
                    let mut lp = Some(lp);
                    for d in deltas {
                        let text = d["content"].as_str().unwrap_or_default().to_string();
                        let c = chunk(&reply, &fp, Some(d), &text, lp.take().unwrap_or(Value::Null), None);
                        if tx.send(c).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Event::Done(turn)) => break *turn,
                Some(Event::Failed(e)) => {
                    let _ = tx.send(e.body()).await;
                    return;
                }
                None => return,
            }
        };
        let (r, t) = thinking.finish();
        let mut last = Vec::new();
        if !r.is_empty() {
            last.push(json!({"reasoning_content": r}));
        }
        match calls.push(&t) {
            Ok(d) => last.extend(d),
            Err(e) => {
                let _ = tx.send(e.body()).await;
                return;
            }
        }
        let (tail, is_call) = match calls.finish() {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(e.body()).await;
                return;
            }
        };
        last.extend(tail);
        match finish(&app, turn, reply.held.take()).await {
            Ok(done) => {
                for d in last {
                    let text = d["content"].as_str().unwrap_or_default().to_string();
                    let _ = tx.send(chunk(&reply, &fp, Some(d), &text, Value::Null, None)).await;
                }
                let reason = if is_call { "tool_calls" } else { done.finish_reason };
                let _ = tx.send(chunk(&reply, &fp, None, "", Value::Null, Some(reason))).await;
                if reply.include_usage {
                    let mut u = chunk(&reply, &fp, None, "", Value::Null, None);
                    u["choices"] = json!([]);
                    u["usage"] = done.usage;
                    let _ = tx.send(u).await;
                }
            }
            Err(e) => {
                let _ = tx.send(e.body()).await;
            }
        }
    });
    let stream = futures_util::stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(v) => Some((Ok::<_, Infallible>(SseEvent::default().data(v.to_string())), (rx, false))),
            None => Some((Ok(SseEvent::default().data("[DONE]")), (rx, true))),
        }
    });
    let sse =
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)).text("keep-alive"));
    (headers, sse).into_response()
}
