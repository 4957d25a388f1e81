//! Turns stepped together (`Llama::step` over a batch of `RunningTurn`s) give
//! each session exactly the tokens it gets alone, on both real models, with
//! prompts of different lengths read in chunks between decode steps. Also:
//! a dropped turn leaves its session unchanged, and committing early is a
//! typed error.

use colloquy::language::*;

fn model(source: LlamaSource) -> Llama {
    Llama::builder().with_source(source).with_threads(2).with_progress(false).build_blocking().unwrap()
}

fn questions() -> Vec<(String, u32)> {
    (0..8)
        .map(|k| {
            (format!("Question {k}: {}", "what is the weather like? ".repeat(1 + 4 * k)), 6 + 5 * k as u32)
        })
        .collect()
}

/// Runs every question's turn on a fresh session, all together (`budget`
/// prompt tokens per step), and returns each session's tokens and answer.
fn together(llm: &Llama, qs: &[(String, u32)], budget: usize) -> Vec<(Vec<u32>, String)> {
    let sessions: Vec<_> = qs.iter().map(|_| llm.new_chat_session().unwrap()).collect();
    let mut turns: Vec<RunningTurn> = qs
        .iter()
        .zip(&sessions)
        .map(|((q, n), s)| {
            let p = GenerationParameters::new().with_temperature(0.0).with_max_length(*n);
            llm.begin_turn(s, &[ChatMessage::new(MessageType::UserMessage, q.clone())], &p).unwrap()
        })
        .collect();
    let mut widest = 0;
    while turns.iter().any(|t| !t.is_finished()) {
        let mut refs: Vec<&mut RunningTurn> = turns.iter_mut().collect();
        widest = widest.max(llm.step(&mut refs, budget).unwrap().sequences);
    }
    if qs.len() > 1 {
        assert!(widest > 1, "the turns never shared a pass");
    }
    for t in turns {
        t.commit().unwrap();
    }
    sessions.iter().map(|s| (s.tokens(), s.transcript().last().unwrap().content().to_string())).collect()
}

fn check(source: LlamaSource) {
    let llm = model(source);
    let qs = questions();
    let alone: Vec<_> = qs.iter().map(|q| together(&llm, std::slice::from_ref(q), 512).remove(0)).collect();
    for budget in [32, 512] {
        let batched = together(&llm, &qs, budget);
        for (k, (a, b)) in alone.iter().zip(&batched).enumerate() {
            assert_eq!(a, b, "question {k} changed in a batch (prompt budget {budget})");
        }
    }
    // The library's own turn (add_messages) is the same machine.
    let mut s = llm.new_chat_session().unwrap();
    let p = GenerationParameters::new().with_temperature(0.0).with_max_length(qs[3].1);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(llm.add_messages_with_callback(
        &mut s,
        &[ChatMessage::new(MessageType::UserMessage, qs[3].0.clone())],
        p,
        Box::new(|_| {}),
    ))
    .unwrap();
    assert_eq!(s.tokens(), alone[3].0);
}

#[test]
fn smollm2_turns_are_exact_in_any_batch() {
    check(LlamaSource::smollm2());
}

#[test]
fn gemma3_turns_are_exact_in_any_batch() {
    check(LlamaSource::gemma3());
}

#[test]
fn a_dropped_turn_changes_nothing_and_early_commit_is_an_error() {
    let llm = model(LlamaSource::smollm2());
    let s = llm.new_chat_session().unwrap();
    let hi = [ChatMessage::new(MessageType::UserMessage, "Hi!")];
    let p = GenerationParameters::new().with_max_length(50);
    let mut t = llm.begin_turn(&s, &hi, &p).unwrap();
    llm.step(&mut [&mut t], 512).unwrap();
    drop(t);
    assert_eq!(s.token_count(), 0);
    assert!(s.transcript().is_empty());
    let t = llm.begin_turn(&s, &hi, &p).unwrap();
    assert!(matches!(t.commit(), Err(Error::TurnNotFinished)));
    assert!(matches!(llm.begin_completion("", &p), Err(Error::EmptyPrompt)));
    assert!(matches!(llm.fork_at(&s, 3), Err(Error::ForkOutOfRange { at: 3, len: 0 })));
}
