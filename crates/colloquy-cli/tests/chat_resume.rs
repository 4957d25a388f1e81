//! Exact resume across processes: a 3-turn greedy conversation saved after
//! turn 2 and continued by a new `colloquy chat` process gives the same tokens
//! as the uninterrupted run, and the resumed turn reads only the new message.

use std::process::Command;

use colloquy::language::*;

const TURNS: [&str; 3] = ["Name a planet.", "How big is it?", "What was my first question?"];
const MAX: u32 = 40;

fn chat_process(session: &std::path::Path, message: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .args(["chat", "--temperature", "0", "--threads", "2", "--stats", "--max-tokens", &MAX.to_string()])
        .arg("--session")
        .arg(session)
        .arg(message)
        .output()
        .expect("colloquy runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "colloquy chat failed: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn stat(stderr: &str, key: &str) -> usize {
    let line = stderr.lines().find(|l| l.starts_with("stats:")).expect("a stats line");
    let field = line.split_whitespace().find_map(|f| f.strip_prefix(&format!("{key}="))).expect("the field");
    field.parse().unwrap()
}

#[test]
fn resumed_turn_equals_uninterrupted_and_reads_only_the_new_message() {
    // The uninterrupted run, in this process.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let llm = rt
        .block_on(Llama::builder().with_threads(2).with_progress(false).build())
        .expect("default model loads");
    let chat =
        llm.chat().with_sampler(GenerationParameters::new().with_temperature(0.0).with_max_length(MAX));
    let mut answers = Vec::new();
    let mut turn3 = None;
    for t in TURNS {
        answers.push(rt.block_on(async { chat(t).await }).unwrap());
        turn3 = chat.session().unwrap().last_turn();
    }
    let uninterrupted = chat.session().unwrap();

    // Turns 1 and 2 in one process each, saving the session file after each;
    // turn 3 in a third process that loads it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conversation.session");
    for (i, t) in TURNS.iter().enumerate() {
        let (stdout, stderr) = chat_process(&file, t);
        assert_eq!(stdout.trim_end_matches('\n'), answers[i], "turn {} differs", i + 1);
        if i == 2 {
            let before = LlamaChatSession::load(&file).unwrap();
            let processed = stat(&stderr, "prompt_tokens");
            let reused = stat(&stderr, "reused_tokens");
            assert_eq!(processed, turn3.unwrap().prompt_tokens);
            assert!(reused > 60, "the history was not reused ({reused} tokens)");
            // The new suffix is the answer's end-of-turn, the new message and the
            // template's markers: far less than the history.
            assert!(processed < 25, "turn 3 processed {processed} prompt tokens");
            assert_eq!(before.tokens(), uninterrupted.tokens(), "resumed tokens differ");
        }
    }
    let resumed = LlamaChatSession::load(&file).unwrap();
    assert_eq!(resumed.tokens(), uninterrupted.tokens());
    assert_eq!(resumed.transcript(), uninterrupted.transcript());
}
