//! Crash safety: a child process chats and saves into a store 50 times, and is
//! killed (SIGKILL) at random points and restarted. Every session it reported
//! as saved must load and continue exactly like an uninterrupted run. Once
//! on a folder store (12 kills), once on Redis (50 kills).
//!
//! The child is this test binary, re-run with `crash_child` and an environment
//! variable naming the store.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use colloquy::language::*;
use common::ask;

const TURNS: usize = 50;
const MAX: u32 = 4;
const ENV: &str = "COLLOQUY_STORE_CRASH_DIR";

/// One thread: on a busy two-core machine, two threads that wait for each
/// other are slower than one. The child and the reference use the same model setup.
fn model() -> Llama {
    Llama::builder().with_threads(1).with_progress(false).build_blocking().expect("default model loads")
}

fn question(k: usize) -> String {
    format!("Question {k}: what is {k} plus one?")
}

/// Chats and saves until turn `TURNS`, resuming from the latest saved turn.
/// Prints `saved <id> <tokens>` after each save returns.
#[test]
#[ignore = "the child of crash_at_random_points_loses_no_saved_session"]
fn crash_child() {
    let Ok(dir) = std::env::var(ENV) else { return };
    let mut store = SessionStore::open(&dir).unwrap();
    if let Some(level) = std::env::var("COLLOQUY_STORE_CRASH_ZSTD").ok().and_then(|l| l.parse().ok()) {
        store = store.with_compression(level);
    }
    let llm = model();
    let resumed = (1..=TURNS).rev().find(|k| store.contains(&format!("t{k}")).unwrap());
    let (mut k, mut session) = match resumed {
        Some(k) => (k, store.load(&format!("t{k}")).unwrap()),
        None => (0, llm.new_chat_session().unwrap()),
    };
    println!("resumed {k}");
    while k < TURNS {
        k += 1;
        ask(&llm, &mut session, &question(k), MAX);
        // A new id per turn (sharing blocks with the previous ones), and one id
        // that is overwritten each time (on purpose: `replace`, not the
        // compare-and-set `save`, since a restarted child never loaded it).
        for id in [format!("t{k}"), "head".to_string()] {
            println!("saving {id}");
            if id == "head" {
                store.replace(&id, &session).unwrap();
            } else {
                store.save(&id, &session).unwrap();
            }
            println!("saved {id} {}", session.token_count());
        }
    }
    println!("done");
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn crash_at_random_points_loses_no_saved_session() {
    let dir = tempfile::tempdir().unwrap();
    crash_run(dir.path().to_str().unwrap(), 12);
    // The temporary files of killed writers were removed by later saves.
    let temp = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
    assert_eq!(temp, 0, "temporary files of killed writers survived later saves");
}

#[test]
fn crash_at_random_points_loses_no_saved_session_in_redis() {
    let Some((url, _guard)) = common::redis::shared_standalone("crash") else { return };
    crash_run(&url, 50);
}

/// Runs the child on the store at `location` until it finishes, killing it
/// `kills_wanted` times, then checks every session it reported.
fn crash_run(location: &str, kills_wanted: usize) {
    let t0 = Instant::now();
    let llm = model();
    // The uninterrupted run, one turn further than the child goes.
    let mut reference = llm.new_chat_session().unwrap();
    let mut ref_tokens = vec![Vec::new()];
    let mut ref_answers = vec![String::new()];
    for k in 1..=TURNS + 1 {
        ref_answers.push(ask(&llm, &mut reference, &question(k), MAX));
        ref_tokens.push(reference.tokens());
    }
    let t_ref = t0.elapsed();

    let seed =
        std::env::var("COLLOQUY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_c0ffee_u64);
    let mut rng = Rng(seed | 1);
    // id -> tokens, as the child reported.
    let mut saved: std::collections::BTreeMap<String, usize> = Default::default();
    let mut kills = 0;
    // Kills that landed between a save's start and its return.
    let mut interrupted = 0;
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs < kills_wanted + 40, "the child did not finish");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1", "--quiet"])
            .env(ENV, location)
            // Every other run compresses its blocks: the store mixes both kinds.
            .env("COLLOQUY_STORE_CRASH_ZSTD", if runs % 2 == 0 { "3" } else { "none" })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of saves: either as the next save starts
        // (within its first milliseconds), or after a random delay (inside a
        // turn, or a save).
        let plan = (kills < kills_wanted).then(|| {
            (rng.below(if kills_wanted > TURNS / 2 { 2 } else { 6 }), rng.below(2) == 0, rng.below(150))
        });
        // Many kills must fit in TURNS turns: then a kill comes one save earlier.
        let early = usize::from(kills_wanted > TURNS / 2);
        let mut seen = 0;
        let mut done = false;
        let mut killed = false;
        // Whether the latest line announced a save that has not returned yet.
        let mut in_flight = false;
        loop {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => {
                    in_flight = line.starts_with("saving ");
                    if let Some(rest) = line.strip_prefix("saved ") {
                        let (id, n) = rest.split_once(' ').unwrap();
                        saved.insert(id.to_string(), n.parse().unwrap());
                        seen += 1;
                    } else if line == "done" {
                        done = true;
                    }
                    if let Some((after, in_save, delay_ms)) = plan {
                        let now =
                            if in_save { line.starts_with("saving ") } else { line.starts_with("saved ") };
                        if seen + early > after as usize && now {
                            let delay = if in_save { delay_ms % 8 } else { delay_ms };
                            std::thread::sleep(Duration::from_millis(delay));
                            child.kill().unwrap();
                            killed = true;
                            break;
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the child hangs"),
            }
        }
        let status = child.wait().unwrap();
        reader.join().unwrap();
        if killed {
            kills += 1;
            interrupted += usize::from(in_flight);
            // Whatever was interrupted, the latest reported save of "head" (or
            // a later one) loads, and is one of the reference states.
            if let Some(&n) = saved.get("head") {
                let head = SessionStore::open(location).unwrap().load("head").unwrap();
                assert!(head.token_count() >= n);
                assert!(ref_tokens.contains(&head.tokens()), "head after kill {kills}");
            }
        } else {
            assert!(status.success(), "child failed: {status}");
            if done {
                break;
            }
        }
    }
    let t_child = t0.elapsed() - t_ref;

    // Every reported session loads, and continues exactly like the reference.
    let store = SessionStore::open(location).unwrap();
    // A kill between a save and its report leaves a saved, unreported turn
    // (the next run resumes from it): check those too.
    assert!(saved.len() > TURNS / 2, "{saved:?}");
    for k in 1..=TURNS {
        let id = format!("t{k}");
        let mut s = store.load(&id).unwrap();
        if let Some(&n) = saved.get(&id) {
            assert_eq!(s.token_count(), n);
        }
        assert_eq!(s.tokens(), ref_tokens[k], "{id}");
        let answer = ask(&llm, &mut s, &question(k + 1), MAX);
        assert_eq!(answer, ref_answers[k + 1], "{id} continues differently");
        assert_eq!(s.tokens(), ref_tokens[k + 1], "{id} continues differently");
    }
    assert_eq!(store.load("head").unwrap().tokens(), ref_tokens[TURNS]);
    // gc keeps every referenced block.
    let g = store.gc().unwrap();
    for (k, tokens) in ref_tokens.iter().enumerate().take(TURNS + 1).skip(1) {
        assert_eq!(&store.load(&format!("t{k}")).unwrap().tokens(), tokens);
    }
    eprintln!(
        "{runs} child runs, {kills} kills ({interrupted} inside a save); \
         reference {:.1}s, child runs {:.1}s, checks {:.1}s; gc: {g:?}",
        t_ref.as_secs_f64(),
        t_child.as_secs_f64(),
        (t0.elapsed() - t_ref - t_child).as_secs_f64()
    );
    assert_eq!(kills, kills_wanted);
    assert!(interrupted >= 1, "no kill landed inside a save");
}
