//! Context overflow: the default policy keeps the system prompt and drops the
//! oldest turns; `ContextPolicy::Error` fails the turn with a typed error.

mod common;

use colloquy::language::*;
use common::*;

fn small(policy: ContextPolicy) -> Llama {
    Llama::builder()
        .with_threads(2)
        .with_context_length(160)
        .with_context_policy(policy)
        .with_progress(false)
        .build_blocking()
        .unwrap()
}

#[test]
fn oldest_turns_are_dropped_and_the_system_prompt_kept() {
    let llm = small(ContextPolicy::DropOldestTurns);
    let mut s = llm.new_chat_session().unwrap();
    let sys = ChatMessage::new(MessageType::SystemPrompt, "You are terse.");
    ask_messages(&llm, &mut s, &[sys, user("Count from one to five in words.")], 24);
    for i in 0..6 {
        ask(&llm, &mut s, &format!("Say the number {i} in words, please."), 24);
        assert!(s.token_count() <= 160);
    }
    let h = s.history();
    assert_eq!(h[0].role(), MessageType::SystemPrompt);
    assert_eq!(h[0].content(), "You are terse.");
    assert!(h.iter().all(|m| m.content() != "Count from one to five in words."), "the oldest turn was kept");
    assert_eq!(h.last().unwrap().content(), "Say the number 5 in words, please.");
}

#[test]
fn error_policy_reports_overflow() {
    let llm = small(ContextPolicy::Error);
    let mut s = llm.new_chat_session().unwrap();
    let long = "word ".repeat(200);
    let r = block_on(llm.add_messages_with_callback(&mut s, &[user(&long)], greedy(4), Box::new(|_| {})));
    assert!(matches!(r, Err(Error::Engine(colloquy::engine::Error::ContextOverflow { .. }))), "got {r:?}");
    assert_eq!(s.token_count(), 0, "a failed turn must not change the session");
}
