//! A chat template that rewrites history: DeepSeek-R1's drops the thinking of
//! past answers, so a conversation's next render no longer extends the
//! tokens the session read. The session rewinds its KV cache to the longest
//! common prefix and reads on from there; the result must be exactly what a
//! fresh session computes over the same conversation.
//!
//! The model is synthetic: a tiny `qwen2` with random weights that carries
//! the real R1 header's vocabulary (152k tokens), special tokens and chat
//! template, written by this test from the header (`colloquy pull r1-header`).

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use colloquy::engine::fetch;
use colloquy::engine::gguf::Gguf;
use colloquy::engine::kernels::GgmlType;
use colloquy::engine::synthetic::{qwen2_like, Qwen2Shape};
use colloquy::language::*;
use colloquy::template::{prompt_ids, ChatTemplate};
use common::{block_on, user};

/// The R1 header slice in the model cache.
fn r1_header() -> PathBuf {
    let known = fetch::model("r1-header").expect("r1-header is a known model");
    let path = fetch::models_dir(&fetch::cache_dir()).join(&known.file_name);
    assert!(path.exists(), "{} is missing: run `colloquy pull r1-header` first", path.display());
    path
}

/// The tiny synthetic R1 model, written once per test binary.
fn tiny_r1() -> Llama {
    static LLM: OnceLock<Llama> = OnceLock::new();
    LLM.get_or_init(|| {
        let header = Gguf::open_vocab_only(r1_header()).expect("the header reads");
        let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("synthetic-tiny-r1-qwen2.gguf");
        qwen2_like(&header, &Qwen2Shape::TINY, GgmlType::Q8_0, 7).unwrap().write(&file).unwrap();
        Llama::builder()
            .with_source(LlamaSource::gguf(file))
            .with_threads(2)
            .with_progress(false)
            .build_blocking()
            .expect("the synthetic model loads")
    })
    .clone()
}

/// Greedy, at most `max` tokens.
fn greedy(max: u32) -> GenerationParameters {
    GenerationParameters::new().with_temperature(0.0).with_max_length(max)
}

/// One turn; returns the answer.
fn turn(
    llm: &Llama,
    session: &mut LlamaChatSession,
    msgs: &[ChatMessage],
    p: GenerationParameters,
) -> String {
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = out.clone();
    block_on(llm.add_messages_with_callback(
        session,
        msgs,
        p,
        Box::new(move |t| sink.lock().unwrap().push_str(&t)),
    ))
    .expect("the turn runs");
    let s = out.lock().unwrap().clone();
    s
}

/// An answer that thinks first: the random model is held to it by a constraint.
fn thinking() -> GenerationParameters {
    greedy(48).with_constraints(Constraint::regex("<think>[a-z]{2,12}</think>[a-z]{2,8}"))
}

#[test]
fn the_template_drops_past_thinking() {
    let (template, tokenizer) = ChatTemplate::from_model_file(r1_header()).unwrap();
    let conversation = [
        user("What is 2+2?"),
        ChatMessage::new(MessageType::ModelAnswer, "<think>\nadd them\n</think>\n\n4"),
        user("And 3+3?"),
    ];
    let text = template.render(&conversation, true).unwrap();
    assert!(!text.contains("add them"), "{text}");
    assert!(text.contains("4<｜end▁of▁sentence｜>"), "{text}");
    assert!(text.ends_with("<｜Assistant｜>"), "{text}");
    let ids = prompt_ids(&tokenizer, &text);
    assert_eq!(ids[0], tokenizer.bos().unwrap(), "one BOS in front");
    assert_eq!(ids.iter().filter(|&&t| Some(t) == tokenizer.bos()).count(), 1);
}

#[test]
fn a_rewritten_history_rewinds_and_equals_a_fresh_session() {
    let llm = tiny_r1();
    let mut session = llm.new_chat_session().unwrap();
    let first = turn(&llm, &mut session, &[user("What is 2+2?")], thinking());
    let message = ChatMessage::new(MessageType::ModelAnswer, first.clone());
    let reasoning = message.reasoning().expect("the answer thinks").to_string();
    assert!(!reasoning.is_empty() && !message.answer().is_empty(), "{first:?}");
    assert_eq!(session.last_turn().unwrap().rewound_tokens, 0);
    let held = session.token_count();

    // The next turn: R1's template drops the thinking, so the session rewinds.
    let next = [user("And 3+3?")];
    let second = turn(&llm, &mut session, &next, greedy(12));
    let stats = session.last_turn().unwrap();
    eprintln!("first answer {first:?}; second {second:?}; {stats:?}; {held} tokens held before");
    assert!(stats.rewound_tokens >= 5, "the thinking was not rewound: {stats:?}");
    assert!(stats.reused_tokens + stats.rewound_tokens >= held - 1, "{stats:?}, {held} held");

    // A fresh session over the same conversation computes the same tokens.
    let mut fresh = llm.new_chat_session().unwrap();
    let same =
        [user("What is 2+2?"), ChatMessage::new(MessageType::ModelAnswer, first.clone()), next[0].clone()];
    let fresh_answer = turn(&llm, &mut fresh, &same, greedy(12));
    assert_eq!(second, fresh_answer);
    assert_eq!(session.tokens(), fresh.tokens());
    assert_eq!(fresh.last_turn().unwrap().rewound_tokens, 0);

    // The history keeps the thinking apart from the answer.
    let history = session.transcript();
    assert_eq!(history[1].content(), first);
    assert_eq!(history[1].reasoning(), Some(reasoning.as_str()));
    assert_eq!(history[3].reasoning(), None);

    // Saved and loaded, it continues exactly, thinking turns included.
    let mut loaded = LlamaChatSession::from_bytes(&session.to_bytes().unwrap()).unwrap();
    let third = [user("Think again.")];
    let a = turn(&llm, &mut session, &third, thinking());
    let b = turn(&llm, &mut loaded, &third, thinking());
    assert_eq!(a, b);
    assert_eq!(session.tokens(), loaded.tokens());
    let fourth = [user("Done?")];
    assert_eq!(turn(&llm, &mut session, &fourth, greedy(8)), turn(&llm, &mut loaded, &fourth, greedy(8)));
    assert_eq!(session.tokens(), loaded.tokens());
    assert!(session.last_turn().unwrap().rewound_tokens >= 5);
}
