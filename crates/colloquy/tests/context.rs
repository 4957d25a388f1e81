//! Context overflow: by default a typed error that names the options that fix
//! it; with `ContextPolicy::DropOldest`, the oldest messages are dropped in
//! one large step (so the re-read is amortized), every drop is reported, the
//! dropped messages are kept, and a store does not grow with the drops.

mod common;

use colloquy::language::*;
use common::*;

fn small(policy: ContextPolicy, n_ctx: usize) -> Llama {
    Llama::builder()
        .with_threads(2)
        .with_context_length(n_ctx)
        .with_context_policy(policy)
        .with_progress(false)
        .build_blocking()
        .unwrap()
}

fn question(i: usize) -> String {
    format!("Question {i}: name one animal that starts with the letter {}.", (b'a' + (i % 26) as u8) as char)
}

#[test]
fn the_default_policy_is_a_typed_error_naming_the_options() {
    let llm = Llama::builder()
        .with_threads(2)
        .with_context_length(160)
        .with_progress(false)
        .build_blocking()
        .unwrap();
    let mut s = llm.new_chat_session().unwrap();
    ask(&llm, &mut s, "Hello there.", 4);
    let before = s.token_count();
    let long = "word ".repeat(200);
    let r = block_on(llm.add_messages_with_callback(&mut s, &[user(&long)], greedy(4), Box::new(|_| {})));
    let Err(e @ Error::ContextOverflow { needed, n_ctx: 160 }) = r else { panic!("got {r:?}") };
    assert!(needed > 160);
    let text = e.to_string();
    for option in ["--ctx-size", "LlamaBuilder::with_context_length", "--context-policy drop-oldest"] {
        assert!(text.contains(option), "{text:?} does not name {option}");
    }
    assert_eq!(s.token_count(), before, "a failed turn must not change the session");
    assert_eq!(s.history().len(), 1);
    assert!(s.dropped_messages().is_empty());
}

#[test]
fn the_default_context_is_the_trained_length_within_the_memory_budget() {
    let full = Llama::builder().with_threads(1).with_progress(false).build_blocking().unwrap();
    assert_eq!(full.model().n_ctx(), 8192, "SmolLM2 was trained on 8,192 tokens and fits in 1 GiB");
    // 23,040 bytes per token: 64 MiB hold 2,912 tokens.
    let capped = Llama::builder()
        .with_threads(1)
        .with_context_memory(64 << 20)
        .with_progress(false)
        .build_blocking()
        .unwrap();
    assert_eq!(capped.model().n_ctx(), (64 << 20) / 23_040);
}

#[test]
fn drops_are_reported_kept_and_amortized() {
    const N_CTX: usize = 512;
    let llm = small(ContextPolicy::DropOldest, N_CTX);
    let mut s = llm.new_chat_session().unwrap();
    let sys = ChatMessage::new(MessageType::SystemPrompt, "You are terse.");
    ask_messages(&llm, &mut s, &[sys, user(&question(0))], 24);
    let (mut processed, mut drops) = (s.last_turn().unwrap().prompt_tokens, 0);
    for i in 1..40 {
        let before = s.dropped_messages().len();
        ask(&llm, &mut s, &question(i), 24);
        let stats = s.last_turn().unwrap();
        assert_eq!(
            stats.dropped_messages,
            s.dropped_messages().len() - before,
            "turn {i}: a drop went unreported"
        );
        drops += usize::from(stats.dropped_messages > 0);
        processed += stats.prompt_tokens;
        assert!(s.token_count() <= N_CTX);
        let h = s.history();
        assert_eq!(h[0].content(), "You are terse.", "the system prompt is never dropped");
        assert_eq!(h.last().unwrap().content(), question(i));
    }
    assert!(drops >= 2, "the conversation should have outgrown the context several times ({drops} drops)");
    // Nothing is lost: the dropped messages, then the history, are the whole conversation.
    let dropped = s.dropped_messages();
    let mut all = dropped.clone();
    all.extend(s.history().into_iter().skip(1));
    let questions: Vec<String> = all
        .iter()
        .filter(|m| m.role() == MessageType::UserMessage)
        .map(|m| m.content().to_string())
        .collect();
    assert_eq!(questions, (0..40).map(question).collect::<Vec<_>>());
    // What a conversation of this length must read: all of it, once.
    let mut conversation = vec![s.history()[0].clone()];
    conversation.extend(all);
    let must = llm.render_tokens(&conversation).unwrap().len();
    assert!(
        processed < 2 * must,
        "{processed} prompt tokens processed over 40 turns, for a {must}-token conversation"
    );
}

#[test]
fn a_store_does_not_grow_with_the_drops() {
    let llm = small(ContextPolicy::DropOldest, 384);
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    let mut s = llm.new_chat_session().unwrap();
    let (mut drops, mut removed) = (0, 0);
    for i in 0..20 {
        ask(&llm, &mut s, &question(i), 32);
        drops += usize::from(s.last_turn().unwrap().dropped_messages > 0);
        removed += store.save("chat", &s).unwrap().blocks_removed;
        let live = store.info("chat").unwrap().bytes;
        let usage = store.usage().unwrap();
        let total = usage.block_bytes + usage.manifest_bytes;
        assert!(total * 2 <= live * 3, "turn {i}: the store holds {total} bytes for a {live}-byte session");
    }
    assert!(drops >= 2, "only {drops} drops");
    assert!(removed > 0);
    // What the store kept continues exactly like the session in memory.
    let mut loaded = store.load("chat").unwrap();
    assert_eq!(loaded.dropped_messages(), s.dropped_messages());
    let a = ask(&llm, &mut s, &question(20), 16);
    let b = ask(&llm, &mut loaded, &question(20), 16);
    assert_eq!(a, b);
    assert_eq!(loaded.tokens(), s.tokens());
}
