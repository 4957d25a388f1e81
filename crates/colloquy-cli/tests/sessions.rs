//! `colloquy chat --store` and `colloquy sessions`: two turns in two processes
//! saved incrementally into a store, then list, show, fork, delete and gc, and
//! the errors for bad ids and unknown sessions.

use std::path::Path;
use std::process::{Command, Output};

fn colloquy(args: &[&str], store: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .expect("colloquy runs")
}

fn ok(out: Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "colloquy failed: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn chat(store: &Path, id: &str, message: &str) -> String {
    let args = [
        "chat",
        "--temperature",
        "0",
        "--threads",
        "2",
        "--max-tokens",
        "8",
        "--stats",
        "--session",
        id,
        message,
    ];
    ok(colloquy(&args, store)).1
}

fn saved_stat(stderr: &str, key: &str) -> usize {
    let line = stderr.lines().find(|l| l.starts_with("saved:")).expect("a saved line");
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .expect("the field")
        .parse()
        .unwrap()
}

#[test]
fn chat_saves_into_the_store_and_sessions_manages_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let first = chat(&store, "trip", "Name a country.");
    assert_eq!(saved_stat(&first, "blocks_reused"), 0);
    // The second process loads the session, and saves only what changed.
    let second = chat(&store, "trip", "And its capital?");
    assert!(second.contains("reused_tokens="), "{second}");
    assert!(saved_stat(&second, "blocks_reused") >= 1, "{second}");
    assert!(saved_stat(&second, "blocks_written") <= 2, "{second}");

    let (list, _) = ok(colloquy(&["sessions", "list"], &store));
    assert!(list.lines().any(|l| l.starts_with("trip ")), "{list}");
    let (show, _) = ok(colloquy(&["sessions", "show", "trip"], &store));
    assert!(show.contains("[user] Name a country.") && show.contains("[user] And its capital?"), "{show}");

    ok(colloquy(&["sessions", "fork", "trip", "trip2"], &store));
    let (list, _) = ok(colloquy(&["sessions", "list"], &store));
    assert!(list.lines().any(|l| l.starts_with("trip2 ")), "{list}");
    // The fork continues on its own.
    chat(&store, "trip2", "Name a river there.");

    ok(colloquy(&["sessions", "delete", "trip"], &store));
    let (gc, _) = ok(colloquy(&["sessions", "gc"], &store));
    assert!(gc.starts_with("removed "), "{gc}");
    let (show, _) = ok(colloquy(&["sessions", "show", "trip2"], &store));
    assert!(show.contains("[user] Name a river there."), "{show}");

    for (args, expected) in [
        (&["sessions", "show", "trip"][..], "no session \"trip\""),
        (&["sessions", "show", "../x"][..], "invalid session id"),
        (&["sessions", "fork", "trip2", "trip2"][..], "already exists"),
        (&["chat", "--session", "a/b", "hi"][..], "invalid session id"),
    ] {
        let out = colloquy(args, &store);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
    let out = colloquy(&["sessions", "list"], &dir.path().join("none"));
    assert!(!out.status.success());
}
