//! Shared helpers for tests on the real default model.
#![allow(dead_code)]

pub mod redis;

use std::sync::OnceLock;

use colloquy::language::*;

/// The default model, loaded once per test binary (2 threads, quiet).
pub fn llm() -> Llama {
    static LLM: OnceLock<Llama> = OnceLock::new();
    LLM.get_or_init(|| {
        Llama::builder().with_threads(2).with_progress(false).build_blocking().expect("default model loads")
    })
    .clone()
}

pub fn greedy(max: u32) -> GenerationParameters {
    GenerationParameters::new().with_temperature(0.0).with_max_length(max)
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

pub fn user(text: &str) -> ChatMessage {
    ChatMessage::new(MessageType::UserMessage, text)
}

/// Runs one turn on `session` and returns the answer text.
pub fn ask(llm: &Llama, session: &mut LlamaChatSession, text: &str, max: u32) -> String {
    ask_messages(llm, session, &[user(text)], max)
}

pub fn ask_messages(llm: &Llama, session: &mut LlamaChatSession, msgs: &[ChatMessage], max: u32) -> String {
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = out.clone();
    block_on(llm.add_messages_with_callback(
        session,
        msgs,
        greedy(max),
        Box::new(move |piece| sink.lock().unwrap().push_str(&piece)),
    ))
    .expect("turn runs");
    let s = out.lock().unwrap().clone();
    s
}
