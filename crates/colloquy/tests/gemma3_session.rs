//! Gemma 3 (sliding-window attention): a session longer than the 512-token
//! window is saved, loaded and forked, and each continues with exactly the
//! tokens of the uninterrupted run, while the local layers hold (in memory
//! and in the saved bytes) only the window.

mod common;

use std::sync::OnceLock;

use colloquy::language::*;
use common::*;

/// Gemma 3 270M's KV bytes per position with an f16 cache (models.md: 18
/// layers, one KV head of 256): 3 global layers and 15 local ones, K and V.
const GLOBAL_BYTES_PER_TOKEN: usize = 3 * 2 * 256 * 2;
const LOCAL_BYTES_PER_TOKEN: usize = 15 * 2 * 256 * 2;
const WINDOW: usize = 512;

fn gemma() -> Llama {
    static LLM: OnceLock<Llama> = OnceLock::new();
    LLM.get_or_init(|| {
        Llama::builder()
            .with_source(LlamaSource::gemma3())
            .with_threads(2)
            .with_progress(false)
            .build_blocking()
            .expect("gemma3 loads")
    })
    .clone()
}

/// The local layers hold at most the window before the last answer's start,
/// plus the answer, one block of slack and rounding to blocks.
fn check_window_bounded(session: &LlamaChatSession, answer_tokens: usize) {
    let held = session.window_positions();
    let bound = WINDOW + answer_tokens + 2 * 32;
    assert!(held.len() <= bound, "{} local positions held, bound {bound}", held.len());
    assert_eq!(held.end, session.token_count());
    let n = session.token_count();
    assert!(
        session.kv_bytes() <= n * GLOBAL_BYTES_PER_TOKEN + bound * LOCAL_BYTES_PER_TOKEN,
        "{} KV bytes for {n} tokens",
        session.kv_bytes()
    );
}

#[test]
fn long_gemma_session_resumes_and_forks_exactly_holding_only_the_window() {
    let llm = gemma();
    let story =
        "The lighthouse keeper wrote down every ship that passed, the weather, and the colour of the sea. ";
    let long = format!("{}\nWhat did the keeper write down?", story.repeat(76));
    let mut session = llm.new_chat_session().unwrap();
    let first = ask(&llm, &mut session, &long, 16);
    let n = session.token_count();
    assert!(n > 1500, "only {n} tokens");
    check_window_bounded(&session, 16);
    eprintln!(
        "{n} tokens: local layers hold {:?}, {} KV bytes (every layer, every position: {})",
        session.window_positions(),
        session.kv_bytes(),
        n * (GLOBAL_BYTES_PER_TOKEN + LOCAL_BYTES_PER_TOKEN)
    );
    // Every layer holding every position would take 2.4 times as much.
    assert!(session.kv_bytes() * 2 < n * (GLOBAL_BYTES_PER_TOKEN + LOCAL_BYTES_PER_TOKEN));

    // The saved bytes hold the same: global layers for every position, local ones for the window.
    let bytes = session.to_bytes().unwrap();
    eprintln!("saved: {} bytes", bytes.len());
    assert!(bytes.len() <= session.kv_bytes() + 8 * n + 4096, "{} saved bytes", bytes.len());
    let fork = session.try_clone().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(store_dir.path()).unwrap();
    store.save("long", &session).unwrap();
    let manifest = store.manifest("long").unwrap();
    assert_eq!(manifest.blocks.len(), n.div_ceil(32));
    assert!(manifest.window_blocks.len() <= (WINDOW + 16 + 64).div_ceil(32) + 1);

    let next = "Answer again in three words.";
    let uninterrupted = ask(&llm, &mut session, next, 16);
    check_window_bounded(&session, 16);

    let mut loaded = LlamaChatSession::from_bytes(&bytes).unwrap();
    let resumed = ask(&llm, &mut loaded, next, 16);
    assert!(loaded.last_turn().unwrap().prompt_tokens < 40, "the resumed turn re-read the history");
    assert_eq!(resumed, uninterrupted);
    assert_eq!(loaded.tokens(), session.tokens());

    let mut fork = fork;
    let forked = ask(&llm, &mut fork, next, 16);
    assert_eq!(forked, uninterrupted);
    assert_eq!(fork.tokens(), session.tokens());

    let mut from_store = store.load("long").unwrap();
    assert_eq!(ask(&llm, &mut from_store, next, 16), uninterrupted);
    assert_eq!(from_store.tokens(), session.tokens());

    // Another session with the same long prompt adopts the cached prefix
    // (whose last blocks carry their window) and answers identically.
    let mut again = llm.new_chat_session().unwrap();
    assert_eq!(ask(&llm, &mut again, &long, 16), first);
    let turn = again.last_turn().unwrap();
    eprintln!("prefix cache: {} of {n} tokens reused", turn.reused_tokens);
    assert!(turn.reused_tokens >= n - 16 - 64, "reused only {} of {n}", turn.reused_tokens);
}

/// Sessions saved by colloquy before the window lane (format and manifest
/// version 1, every layer in one lane) load, and continue exactly like a
/// fresh session fed the same conversation.
#[test]
fn version_1_gemma_sessions_continue_exactly() {
    let llm = gemma();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let bytes = std::fs::read(dir.join("gemma3-v1.session")).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1, "a version 1 fixture");
    let mut old = LlamaChatSession::from_bytes(&bytes).unwrap();
    let transcript = old.transcript();
    assert_eq!(transcript.len(), 2, "a user message and the pending answer");

    // A copy of the version 1 store, so the test does not write into the fixture.
    let store_dir = tempfile::tempdir().unwrap();
    for sub in ["blocks", "sessions"] {
        std::fs::create_dir_all(store_dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(dir.join("store").join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), store_dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    let store = SessionStore::open(store_dir.path()).unwrap();
    let mut old_stored = store.load("hi").unwrap();
    assert_eq!(old_stored.transcript(), transcript);

    let next = user("Tell me more.");
    let mut fresh = llm.new_chat_session().unwrap();
    let mut all = transcript.clone();
    all.push(next.clone());
    let expected = ask_messages(&llm, &mut fresh, &all, 12);

    assert_eq!(ask_messages(&llm, &mut old, std::slice::from_ref(&next), 12), expected);
    assert!(old.last_turn().unwrap().reused_tokens > 0, "the old KV was used");
    assert_eq!(old.tokens(), fresh.tokens());
    assert_eq!(ask_messages(&llm, &mut old_stored, &[next], 12), expected);
    assert_eq!(old_stored.tokens(), fresh.tokens());

    // Saved again, it is written in the current format and stays exact.
    let resaved = LlamaChatSession::from_bytes(&old.to_bytes().unwrap()).unwrap();
    assert_eq!(resaved.tokens(), fresh.tokens());
    store.save("hi", &old_stored).unwrap();
    assert!(store.load("hi").unwrap().window_positions().end == fresh.token_count());
}
