//! Gemma 3 (sliding-window attention): a session longer than the 512-token
//! window is saved, loaded and forked, and each continues with exactly the
//! tokens of the uninterrupted run.

mod common;

use colloquy::language::*;
use common::*;

#[test]
fn long_gemma_session_resumes_and_forks_exactly() {
    let llm = Llama::builder()
        .with_source(LlamaSource::gemma3())
        .with_threads(2)
        .with_progress(false)
        .build_blocking()
        .expect("gemma3 loads");
    let story =
        "The lighthouse keeper wrote down every ship that passed, the weather, and the colour of the sea. ";
    let long = story.repeat(76);
    let mut session = llm.new_chat_session().unwrap();
    ask(&llm, &mut session, &format!("{long}\nWhat did the keeper write down?"), 16);
    assert!(session.token_count() > 1500, "only {} tokens", session.token_count());

    let bytes = session.to_bytes().unwrap();
    let fork = session.try_clone().unwrap();

    let next = "Answer again in three words.";
    let uninterrupted = ask(&llm, &mut session, next, 16);

    let mut loaded = LlamaChatSession::from_bytes(&bytes).unwrap();
    let resumed = ask(&llm, &mut loaded, next, 16);
    assert!(loaded.last_turn().unwrap().prompt_tokens < 40, "the resumed turn re-read the history");
    assert_eq!(resumed, uninterrupted);
    assert_eq!(loaded.tokens(), session.tokens());

    let mut fork = fork;
    let forked = ask(&llm, &mut fork, next, 16);
    assert_eq!(forked, uninterrupted);
    assert_eq!(fork.tokens(), session.tokens());
}
