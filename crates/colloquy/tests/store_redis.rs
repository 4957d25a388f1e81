//! The session store on real Redis and a real three-master Redis Cluster, on
//! the real model: exact save, load and continue across store instances (as
//! across servers), incremental saves, forks, compare-and-set under racing
//! writers, garbage collection beside concurrent writers, and faults (Redis
//! restarted, killed, stopped).

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use colloquy::language::*;
use colloquy::store::{RedisBackend, SessionStore};
use common::redis::{shared_cluster, shared_standalone, Redis};
use common::{ask, llm};

/// A second store on the same location with no local cache: what another
/// server sees.
fn other_server(url: &str) -> SessionStore {
    SessionStore::open(url).unwrap().with_cache_bytes(0)
}

fn exact_round_trip(url: &str) {
    let llm = llm();
    let a = SessionStore::open(url).unwrap();
    let mut s = llm.new_chat_session().unwrap();
    ask(&llm, &mut s, "Name three colors.", 24);
    ask(&llm, &mut s, "Which one is the color of the sky?", 24);
    let first = a.save("colors", &s).unwrap();
    assert_eq!(first.blocks_written, s.token_count().div_ceil(32), "{first:?}");

    // Another server loads it from Redis, and continues exactly.
    let b = other_server(url);
    let mut on_b = b.load("colors").unwrap();
    assert_eq!(on_b.tokens(), s.tokens());
    assert_eq!(on_b.to_bytes().unwrap(), s.to_bytes().unwrap());
    let expected = ask(&llm, &mut s, "Why is it that color?", 32);
    assert_eq!(ask(&llm, &mut on_b, "Why is it that color?", 32), expected);
    assert_eq!(on_b.tokens(), s.tokens());

    // B saves the turn: only the changed and new blocks go over the wire.
    let second = b.save("colors", &on_b).unwrap();
    assert!(second.blocks_written <= 3, "{second:?}");
    assert!(second.blocks_reused >= first.blocks_written - 1, "{second:?}");
    // A's copy is stale now, and says so; reloading gives B's turn.
    assert!(!a.is_current("colors", &s).unwrap());
    assert!(matches!(a.save("colors", &s), Err(Error::SessionConflict { .. })));
    let back = a.load("colors").unwrap();
    assert!(a.is_current("colors", &back).unwrap());
    assert_eq!(back.tokens(), s.tokens());

    // A fork shares every block; deleting the original keeps the fork whole.
    a.fork("colors", "colors-fork").unwrap();
    assert!(matches!(a.fork("colors", "colors-fork"), Err(Error::StoreSessionExists { .. })));
    let before = a.usage().unwrap();
    assert_eq!(before.sessions, 2);
    a.delete("colors").unwrap();
    let gc = a.gc().unwrap();
    assert_eq!(gc.blocks_removed, before.blocks - gc.blocks_kept, "{gc:?} {before:?}");
    let mut fork = other_server(url).load("colors-fork").unwrap();
    assert_eq!(fork.tokens(), s.tokens());
    assert_eq!(ask(&llm, &mut fork, "And the grass?", 16), ask(&llm, &mut s, "And the grass?", 16));
    let list = a.list().unwrap();
    assert_eq!(list.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["colors-fork"]);
    assert!(list[0].bytes > 0 && list[0].tokens == back.token_count());
}

#[test]
fn sessions_move_between_stores_exactly_on_redis() {
    let Some((url, _guard)) = shared_standalone("round-trip") else { return };
    exact_round_trip(&url);
}

#[test]
fn sessions_move_between_stores_exactly_on_a_cluster() {
    let Some((url, _guard)) = shared_cluster("round-trip") else { return };
    exact_round_trip(&url);
    // The blocks spread over the masters' slots.
    let store = SessionStore::open(&url).unwrap();
    assert!(store.usage().unwrap().blocks > 0);
}

/// Two writers that loaded the same version append at once: exactly one
/// save wins, the other gets `SessionConflict`, and after reloading, its turn
/// is saved on top. 100 rounds; nothing is lost.
#[test]
fn racing_appends_exactly_one_wins_and_none_is_lost_100_times() {
    let Some((url, _guard)) = shared_standalone("race") else { return };
    let llm = llm();
    let stores = [Arc::new(other_server(&url)), Arc::new(other_server(&url))];
    let mut conflicts = 0;
    for round in 0..100 {
        // A fresh conversation every 10 rounds keeps the turns short.
        let id = format!("race-{}", round / 10);
        if round % 10 == 0 {
            stores[0].save(&id, &llm.new_chat_session().unwrap()).unwrap();
        }
        let mut sessions: Vec<LlamaChatSession> = stores.iter().map(|s| s.load(&id).unwrap()).collect();
        let asks = [format!("Round {round}, writer A: say hi."), format!("Round {round}, writer B: say hi.")];
        for (s, q) in sessions.iter_mut().zip(&asks) {
            ask(&llm, s, q, 1);
        }
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = sessions
                .iter()
                .zip(&stores)
                .map(|(s, store)| {
                    let (barrier, id) = (Arc::clone(&barrier), id.clone());
                    scope.spawn(move || {
                        barrier.wait();
                        store.save(&id, s).map(|st| st.version)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        let lost = 1 - won[0];
        assert!(matches!(results[lost], Err(Error::SessionConflict { .. })), "{results:?}");
        conflicts += 1;
        // The loser reloads and redoes its turn on the winner's version.
        let mut again = stores[lost].load(&id).unwrap();
        ask(&llm, &mut again, &asks[lost], 1);
        stores[lost].save(&id, &again).unwrap();
        let stored = stores[won[0]].load(&id).unwrap();
        let users: Vec<String> = stored
            .transcript()
            .iter()
            .filter(|m| m.role() == MessageType::UserMessage)
            .map(|m| m.content().to_string())
            .collect();
        for q in &asks {
            assert_eq!(users.iter().filter(|u| *u == q).count(), 1, "round {round}: {users:?}");
        }
    }
    assert_eq!(conflicts, 100);
}

/// gc runs in a loop beside writers that save new turns and forks: every
/// session a writer saved still loads and equals what the writer holds. The
/// grace period is short, so marks expire while the writers run.
#[test]
fn gc_beside_concurrent_writers_never_removes_a_named_block() {
    let Some((url, _guard)) = shared_standalone("gc") else { return };
    let llm = llm();
    let grace = Duration::from_millis(300);
    let open =
        || SessionStore::with_backend(Box::new(RedisBackend::open(&url).unwrap().with_gc_grace(grace)));
    let collector = open();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (saved, removed) = std::thread::scope(|scope| {
        let gc = scope.spawn(|| {
            let mut removed = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                removed += collector.gc().unwrap().blocks_removed;
            }
            removed
        });
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (llm, store) = (llm.clone(), open());
                scope.spawn(move || {
                    let mut saved = Vec::new();
                    let mut s = llm.new_chat_session().unwrap();
                    for k in 0..8 {
                        ask(&llm, &mut s, &format!("Writer {w}, turn {k}: name an animal."), 6);
                        // One id saved again and again, and a new one every
                        // other turn: the last blocks of the odd turns
                        // become garbage when the next turn replaces them.
                        store.save(&format!("w{w}"), &s).unwrap();
                        if k % 2 == 0 {
                            let fork_id = format!("w{w}-{k}");
                            store.save(&fork_id, &s).unwrap();
                            saved.push((fork_id, s.tokens()));
                        }
                        std::thread::sleep(grace / 3);
                    }
                    saved.push((format!("w{w}"), s.tokens()));
                    saved
                })
            })
            .collect();
        let saved: Vec<_> = writers.into_iter().flat_map(|h| h.join().unwrap()).collect();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (saved, gc.join().unwrap())
    });
    assert!(removed > 0, "gc removed nothing: the replaced last blocks are garbage");
    let check = other_server(&url);
    for (id, tokens) in &saved {
        assert_eq!(&check.load(id).unwrap().tokens(), tokens, "{id}");
    }
    // What is left is exactly what the sessions name.
    std::thread::sleep(grace * 2);
    collector.gc().unwrap();
    let u = collector.usage().unwrap();
    let named: std::collections::HashSet<_> = saved
        .iter()
        .flat_map(|(id, _)| check.manifest(id).unwrap().all_blocks().collect::<Vec<_>>())
        .collect();
    assert_eq!(u.blocks, named.len());
}

/// Redis restarted (its AOF replayed) between turns, then killed with
/// SIGKILL: every acknowledged save survives and continues exactly. Stopped,
/// it makes saves and loads fail fast with `StoreUnavailable`; started again,
/// the same store object works without being reopened.
#[test]
fn redis_restarts_kills_and_outages_lose_no_acknowledged_save() {
    if common::redis::redis_server().is_none() {
        return;
    }
    let llm = llm();
    let mut redis = Redis::start();
    let url = redis.url("faults");
    let store = SessionStore::open(&url).unwrap();
    let mut reference = llm.new_chat_session().unwrap();
    let mut s = llm.new_chat_session().unwrap();
    let questions = ["Name a river.", "Where is it?", "How long is it?", "Name another."];
    ask(&llm, &mut reference, questions[0], 12);
    ask(&llm, &mut s, questions[0], 12);
    store.save("river", &s).unwrap();

    redis.restart();
    let mut s = store.load("river").unwrap();
    assert_eq!(s.tokens(), reference.tokens());
    ask(&llm, &mut reference, questions[1], 12);
    ask(&llm, &mut s, questions[1], 12);
    store.save("river", &s).unwrap();

    // appendfsync always: an acknowledged save is on disk before its reply.
    redis.kill9();
    let t0 = Instant::now();
    ask(&llm, &mut s, questions[2], 12);
    let down = store.save("river", &s);
    assert!(matches!(down, Err(Error::StoreUnavailable { .. })), "{down:?}");
    assert!(matches!(store.load("river"), Err(Error::StoreUnavailable { .. })));
    assert!(store.health().is_err());
    assert!(t0.elapsed() < Duration::from_secs(10), "an outage must fail fast: {:?}", t0.elapsed());

    redis.resume();
    store.health().unwrap();
    let mut s = store.load("river").unwrap();
    assert_eq!(s.tokens(), reference.tokens(), "the unacknowledged turn is not there");
    for q in &questions[2..] {
        assert_eq!(ask(&llm, &mut s, q, 12), ask(&llm, &mut reference, q, 12));
        store.save("river", &s).unwrap();
    }
    assert_eq!(other_server(&url).load("river").unwrap().tokens(), reference.tokens());
}
