//! Nothing acknowledged is lost: two `colloquy chat` processes that take turns
//! on one session (in a store, a Redis store, or a session file) each either save their
//! turn or exit with a conflict (status 3) that says so; the saved session
//! then holds exactly the acknowledged turns. Also: the context policy's
//! messages, and messages from files and standard input.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use colloquy::language::*;

#[path = "../../colloquy/tests/common/redis.rs"]
mod redis_harness;

const TURNS: usize = 50;
/// `colloquy chat`'s exit status when its save lost to another writer.
const EXIT_CONFLICT: i32 = 3;

/// `colloquy chat`, greedy, answering with at most `max` tokens.
fn chat(max: u32) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_colloquy"));
    c.args(["chat", "--temperature", "0", "--threads", "1", "--max-tokens", &max.to_string()]);
    c
}

fn colloquy() -> Command {
    chat(2)
}

/// Where the two writers' turns go.
#[derive(Clone, Copy)]
enum Target<'a> {
    Store(&'a Path),
    File(&'a Path),
}

impl Target<'_> {
    fn args(self, c: &mut Command) {
        match self {
            Target::Store(dir) => c.arg("--store").arg(dir).args(["--session", "shared"]),
            Target::File(f) => c.arg("--session").arg(f),
        };
    }

    fn saved_questions(self) -> Vec<String> {
        let transcript = match self {
            Target::Store(dir) => SessionStore::open(dir).unwrap().load("shared").unwrap().transcript(),
            Target::File(f) => LlamaChatSession::load(f).unwrap().transcript(),
        };
        transcript
            .into_iter()
            .filter(|m| m.role() == MessageType::UserMessage)
            .map(|m| m.content().to_string())
            .collect()
    }
}

/// Two writers, `TURNS / 2` turns each, at the same time. Returns the
/// acknowledged messages and the number of conflicts.
fn alternate(target: Target<'_>, delay_ms: u64) -> (Vec<String>, usize) {
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|w| {
            let mut cmds = Vec::new();
            for k in 0..TURNS / 2 {
                let message = format!("Writer {w}, turn {k}: say hi.");
                let mut c = colloquy();
                target.args(&mut c);
                c.arg(&message).env("COLLOQUY_TEST_SAVE_DELAY_MS", delay_ms.to_string());
                cmds.push((message, c));
            }
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut conflicts = 0;
                for (message, mut c) in cmds {
                    let out = c.output().expect("colloquy runs");
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    match out.status.code() {
                        Some(0) => kept.push(message),
                        Some(EXIT_CONFLICT) => {
                            assert!(stderr.contains("was not saved") && stderr.contains("retry"), "{stderr}");
                            conflicts += 1;
                        }
                        other => panic!("colloquy chat exited with {other:?}: {stderr}"),
                    }
                }
                (kept, conflicts)
            })
        })
        .collect();
    let mut kept = Vec::new();
    let mut conflicts = 0;
    for w in writers {
        let (k, c) = w.join().unwrap();
        kept.extend(k);
        conflicts += c;
    }
    (kept, conflicts)
}

/// Every acknowledged turn is in the saved session, exactly once, and no
/// refused one is.
fn check(target: Target<'_>, kept: &[String], conflicts: usize, delayed: bool) {
    let mut saved = target.saved_questions();
    assert_eq!(saved.len(), kept.len(), "{} turns acknowledged, {} saved", kept.len(), saved.len());
    saved.sort();
    let mut kept = kept.to_vec();
    kept.sort();
    assert_eq!(saved, kept);
    assert_eq!(kept.len() + conflicts, TURNS);
    if delayed {
        // Saves held open for 150 ms overlap: some must have been refused.
        assert!(conflicts > 0, "no conflict among {TURNS} overlapping turns");
    }
}

#[test]
fn two_writers_on_one_store_session_lose_no_acknowledged_turn() {
    for delay in [0, 150] {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Store(dir.path());
        let (kept, conflicts) = alternate(target, delay);
        eprintln!("store, delay {delay} ms: {} kept, {conflicts} conflicts", kept.len());
        check(target, &kept, conflicts, delay > 0);
    }
}

/// The same two writers on a session in Redis, with their saves held open
/// so that they overlap.
#[test]
fn two_writers_on_one_redis_session_lose_no_acknowledged_turn() {
    let Some((url, _guard)) = redis_harness::shared_standalone("cli-writers") else { return };
    let target = Target::Store(Path::new(&url));
    let (kept, conflicts) = alternate(target, 150);
    eprintln!("redis, delay 150 ms: {} kept, {conflicts} conflicts", kept.len());
    check(target, &kept, conflicts, true);
}

#[test]
fn two_writers_on_one_session_file_lose_no_acknowledged_turn() {
    for delay in [0, 150] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shared.session");
        let target = Target::File(&file);
        let (kept, conflicts) = alternate(target, delay);
        eprintln!("file, delay {delay} ms: {} kept, {conflicts} conflicts", kept.len());
        check(target, &kept, conflicts, delay > 0);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "shared.session")
            .collect();
        assert!(leftovers.is_empty(), "files left beside the session: {leftovers:?}");
    }
}

fn run_with_stdin(c: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written from another thread: the child may exit before reading it all.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn messages_come_from_files_or_standard_input_and_empty_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.session");
    // From standard input.
    let out = run_with_stdin(colloquy().arg("--session").arg(&file).arg("-"), b"Name a fruit.");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // From a file.
    let msg = dir.path().join("msg.txt");
    std::fs::write(&msg, "Name a vegetable.").unwrap();
    let out = colloquy().arg("--session").arg(&file).arg("--file").arg(&msg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(Target::File(&file).saved_questions(), ["Name a fruit.", "Name a vegetable."]);

    // Longer than the shell accepts as an argument (about 2 MB): it is read,
    // and refused only because it does not fit, by an error naming the option.
    std::fs::write(&msg, "many words ".repeat(300_000)).unwrap();
    let out = colloquy().arg("--session").arg(&file).arg("--file").arg(&msg).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--ctx-size") && stderr.contains("--context-policy drop-oldest"), "{stderr}");

    // Empty messages, in each form, before any model is loaded.
    std::fs::write(&msg, "  \n").unwrap();
    for out in [
        colloquy().arg("--session").arg(&file).arg("").output().unwrap(),
        colloquy().arg("--session").arg(&file).arg("--file").arg(&msg).output().unwrap(),
        run_with_stdin(colloquy().arg("--session").arg(&file).arg("-"), b""),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("the message is empty"), "{stderr}");
    }
    assert_eq!(Target::File(&file).saved_questions().len(), 2, "a refused turn changed the session");
}

#[test]
fn dropping_old_messages_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let mut notes = 0;
    for k in 0..12 {
        let out = chat(16)
            .args(["--ctx-size", "128", "--context-policy", "drop-oldest"])
            .arg("--store")
            .arg(dir.path())
            .args(["--session", "s"])
            .arg(format!("Tell me one fact about the number {k}."))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        notes += usize::from(stderr.contains("note: the conversation outgrew the context"));
    }
    let session = SessionStore::open(dir.path()).unwrap().load("s").unwrap();
    assert!(notes > 0 && !session.dropped_messages().is_empty(), "{notes} notes");
}

#[test]
fn a_read_only_session_file_is_refused_with_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ro.session");
    assert!(colloquy().arg("--session").arg(&file).arg("Hi.").status().unwrap().success());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = std::fs::read(&file).unwrap();
    let out = colloquy().arg("--session").arg(&file).arg("Hi again.").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("read-only") && stderr.contains("chmod"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
}
