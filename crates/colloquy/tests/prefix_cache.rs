//! A new session that starts like an earlier one adopts its KV blocks and
//! answers exactly as it would without the cache.

mod common;

use colloquy::language::*;
use common::*;

const SYSTEM: &str = "You are a careful assistant. You answer in one short sentence. You never use lists. \
You always name the main fact first and then stop. If you do not know, you say so plainly.";

#[test]
fn second_session_reuses_blocks_and_answers_the_same() {
    let llm = llm();
    let msgs = [ChatMessage::new(MessageType::SystemPrompt, SYSTEM), user("What is the largest ocean?")];
    let mut first = llm.new_chat_session().unwrap();
    let a = ask_messages(&llm, &mut first, &msgs, 24);
    assert!(llm.prefix_cache_stats().blocks > 0);

    let mut second = llm.new_chat_session().unwrap();
    let b = ask_messages(&llm, &mut second, &msgs, 24);
    let stats = second.last_turn().unwrap();
    assert!(stats.reused_tokens >= 32, "no block was reused: {stats:?}");
    assert_eq!(a, b);
    assert_eq!(first.tokens(), second.tokens());

    // The same turn on a model without a prefix cache.
    let plain = Llama::builder()
        .with_threads(2)
        .with_progress(false)
        .with_prefix_cache_bytes(0)
        .build_blocking()
        .unwrap();
    let mut cold = plain.new_chat_session().unwrap();
    let c = ask_messages(&plain, &mut cold, &msgs, 24);
    assert_eq!(cold.last_turn().unwrap().reused_tokens, 0);
    assert_eq!(a, c);
    assert_eq!(cold.tokens(), first.tokens());
}
