//! Exact fork on the real model: each branch equals a fresh session fed the
//! same history, and the original is unchanged.

mod common;

use colloquy::language::*;
use common::*;

#[test]
fn forks_are_independent_and_exact() {
    let llm = llm();
    let mut base = llm.new_chat_session().unwrap();
    let first = ask(&llm, &mut base, "Name three fruits.", 32);
    let base_tokens = base.tokens();
    let base_history = base.transcript();

    let mut a = base.try_clone().unwrap();
    let mut b = base.try_clone().unwrap();
    let answer_a = ask(&llm, &mut a, "Which one is red?", 32);
    let answer_b = ask(&llm, &mut b, "Which one is yellow?", 32);

    // The original never saw either branch.
    assert_eq!(base.tokens(), base_tokens);
    assert_eq!(base.transcript(), base_history);

    // Each branch equals a fresh session fed the same messages.
    for (branch, question, answer) in
        [(&a, "Which one is red?", &answer_a), (&b, "Which one is yellow?", &answer_b)]
    {
        let mut fresh = llm.new_chat_session().unwrap();
        let msgs = [
            user("Name three fruits."),
            ChatMessage::new(MessageType::ModelAnswer, first.clone()),
            user(question),
        ];
        let fresh_answer = ask_messages(&llm, &mut fresh, &msgs, 32);
        assert_eq!(&fresh_answer, answer, "branch '{question}' differs from a fresh session");
        assert_eq!(fresh.tokens(), branch.tokens(), "branch '{question}' tokens differ");
        assert_eq!(fresh.transcript(), branch.transcript());
    }

    // And the original still continues exactly like a branch did.
    let again = ask(&llm, &mut base, "Which one is red?", 32);
    assert_eq!(again, answer_a);
    assert_eq!(base.tokens(), a.tokens());
}
