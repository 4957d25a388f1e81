//! Saving a session file never surprises: killed saves leave no temporary
//! files after the next save (and the file always loads), a symlink is written
//! through, a read-only file is refused and left alone, the file keeps its
//! mode, and a session that did not read the file cannot replace it.
//!
//! The kill test's child is this test binary, re-run with `save_loop_child`
//! and an environment variable naming the file.

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use colloquy::files::TEMP_SUFFIX;
use colloquy::language::*;
use common::*;

const ENV: &str = "COLLOQUY_SAVE_LOOP_FILE";

/// A session of about 1,200 tokens (28 MB), so that a save takes long enough
/// to be killed in the middle.
fn big_session() -> LlamaChatSession {
    let llm = llm();
    let mut s = llm.new_chat_session().unwrap();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(120);
    ask(&llm, &mut s, &text, 4);
    assert!(s.token_count() > 1000);
    s
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(TEMP_SUFFIX))
        .collect()
}

/// Loads the file, then saves it again and again, printing `saving` first.
#[test]
#[ignore = "the child of killed_saves_leave_no_temp_files_after_the_next_save"]
fn save_loop_child() {
    let Ok(file) = std::env::var(ENV) else { return };
    let session = LlamaChatSession::load(&file).unwrap();
    println!("saving");
    loop {
        session.save(&file).unwrap();
    }
}

#[test]
fn killed_saves_leave_no_temp_files_after_the_next_save() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.session");
    let session = big_session();
    session.save(&file).unwrap();
    let expected = session.to_bytes().unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut left_behind = 0;
    for kill in 0..50 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["save_loop_child", "--exact", "--ignored", "--nocapture", "--test-threads=1", "--quiet"])
            .env(ENV, &file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let started = lines.any(|l| l.is_ok_and(|l| l == "saving"));
        assert!(started, "kill {kill}: the child did not start saving");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 120));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Whatever the kill interrupted, the file is whole: the old or the new bytes.
        assert_eq!(std::fs::read(&file).unwrap(), expected, "kill {kill}: the file changed");
        left_behind += temp_files(dir.path()).len();
    }
    assert!(left_behind > 0, "no kill landed inside a save: the test did not test anything");
    // The next save removes what the killed writers left.
    LlamaChatSession::load(&file).unwrap().save(&file).unwrap();
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
    eprintln!("{left_behind} temporary files seen after kills, none after the next save");
}

#[test]
fn symlinks_are_written_through_and_modes_kept() {
    let llm = llm();
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("sessions").join("real.session");
    std::fs::create_dir(real.parent().unwrap()).unwrap();
    let link = dir.path().join("link.session");
    std::os::unix::fs::symlink("sessions/real.session", &link).unwrap();

    // A dangling link: the save creates its target.
    let mut s = llm.new_chat_session().unwrap();
    ask(&llm, &mut s, "Hi!", 4);
    s.save(&link).unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&real).unwrap(), s.to_bytes().unwrap());

    // A private file stays private through the link, and the link stays a link.
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut s = LlamaChatSession::load(&link).unwrap();
    ask(&llm, &mut s, "And again?", 4);
    s.save(&link).unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&real).unwrap(), s.to_bytes().unwrap());
    assert_eq!(std::fs::metadata(&real).unwrap().permissions().mode() & 0o777, 0o600);
    // The same file by its real path is the same place: the version carries over.
    s.save(&real).unwrap();
}

#[test]
fn read_only_files_are_refused_and_left_alone() {
    let llm = llm();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kept.session");
    let mut s = llm.new_chat_session().unwrap();
    ask(&llm, &mut s, "Hello.", 4);
    s.save(&file).unwrap();
    let before = std::fs::read(&file).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    ask(&llm, &mut s, "Hello again.", 4);
    match s.save(&file) {
        Err(e @ Error::SessionFileReadOnly { .. }) => {
            assert!(e.to_string().contains("read-only"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), before);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o444);
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn a_session_that_did_not_read_the_file_cannot_replace_it() {
    let llm = llm();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.session");
    let mut a = llm.new_chat_session().unwrap();
    ask(&llm, &mut a, "One.", 4);
    a.save(&file).unwrap();
    // Two copies read the same version; the first to save wins.
    let mut b = LlamaChatSession::load(&file).unwrap();
    let mut c = LlamaChatSession::load(&file).unwrap();
    ask(&llm, &mut b, "Two.", 4);
    ask(&llm, &mut c, "Three.", 4);
    b.save(&file).unwrap();
    match c.save(&file) {
        Err(Error::SessionConflict { expected: Some(x), found: Some(y), .. }) => assert_ne!(x, y),
        other => panic!("{other:?}"),
    }
    // A new session cannot replace it either; a stale one after reloading can.
    let fresh = llm.new_chat_session().unwrap();
    assert!(matches!(fresh.save(&file), Err(Error::SessionConflict { expected: None, found: Some(_), .. })));
    assert_eq!(LlamaChatSession::load(&file).unwrap().to_bytes().unwrap(), b.to_bytes().unwrap());
    let mut c = LlamaChatSession::load(&file).unwrap();
    ask(&llm, &mut c, "Three.", 4);
    c.save(&file).unwrap();
    let questions: Vec<String> = LlamaChatSession::load(&file)
        .unwrap()
        .history()
        .iter()
        .filter(|m| m.role() == MessageType::UserMessage)
        .map(|m| m.content().to_string())
        .collect();
    assert_eq!(questions, ["One.", "Two.", "Three."]);
}
