//! The Q8_0 KV cache: about half the bytes per token, and sessions still
//! resume exactly.

mod common;

use colloquy::engine::kv::KvDtype;
use colloquy::language::*;
use common::*;

#[test]
fn q8_sessions_are_small_and_resume_exactly() {
    let llm = Llama::builder()
        .with_threads(2)
        .with_progress(false)
        .with_kv_cache_type(KvDtype::Q8_0)
        .build_blocking()
        .unwrap();
    let layout = *llm.model().new_kv().layout();
    assert_eq!(layout.dtype, KvDtype::Q8_0);
    assert!(layout.bytes_per_token() <= 12_300, "{} bytes per token", layout.bytes_per_token());

    let mut s = llm.new_chat_session().unwrap();
    let first = ask(&llm, &mut s, "Name two rivers in Europe.", 24);
    assert!(!first.is_empty());
    let bytes = s.to_bytes().unwrap();
    let per_token = bytes.len() / s.token_count();
    assert!(per_token <= 12_300 + 200, "{per_token} saved bytes per token");

    let a = ask(&llm, &mut s, "Which one is longer?", 24);
    let mut loaded = LlamaChatSession::from_bytes(&bytes).unwrap();
    let b = ask(&llm, &mut loaded, "Which one is longer?", 24);
    assert_eq!(a, b);
    assert_eq!(s.tokens(), loaded.tokens());

    // A q8 session is refused by an f16 model: another layout, typed error.
    let f16 = common::llm();
    let mut wrong = LlamaChatSession::from_bytes(&bytes).unwrap();
    let r = block_on(f16.add_messages_with_callback(&mut wrong, &[user("Hi")], greedy(4), Box::new(|_| {})));
    assert!(matches!(r, Err(Error::SessionKvMismatch { .. })), "got {r:?}");
}
