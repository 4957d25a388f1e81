//! The official `openai` Python client (pinned in tests/openai/requirements.txt,
//! installed into target/openai-venv from PyPI by scripts/openai-venv.sh)
//! against a real `colloquy serve` with an API key: completions streamed and
//! not, models, a resumed session, logprobs, and the typed errors. The
//! checks live in tests/openai/check_client.py; any failure fails this test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[test]
fn the_official_openai_client_works_unmodified() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new("bash").arg(root.join("scripts/openai-venv.sh")).status().unwrap();
    assert!(status.success(), "could not install the openai client (scripts/openai-venv.sh)");
    let store = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .args(["serve", "--port", "0", "--threads", "2", "--api-key", "test-key", "--store"])
        .arg(store.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").expect("the address line").to_string();
    let out = Command::new(root.join("target/openai-venv/bin/python"))
        .arg(root.join("tests/openai/check_client.py"))
        .args([&base, "test-key"])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "the openai client checks failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("all openai client checks passed"));
}
