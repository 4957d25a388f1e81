//! Several `colloquy serve` replicas on one Redis (and one Redis Cluster), on
//! the real model: a conversation that moves between servers is exact and
//! reuses the other server's blocks, two servers appending to one session at
//! once lose nothing, and Redis stopped during a request gives 503 and then
//! recovers. Every Redis and server is started here, on 127.0.0.1.

mod common;

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::redis::{shared_cluster, shared_standalone, Redis};
use common::*;
use serde_json::{json, Value};

fn serve_on(url: &str) -> Server {
    start(Path::new(url), &[])
}

fn turn(addr: &str, id: &str, text: &str, max: u32) -> Value {
    chat(
        addr,
        json!({"session_id": id, "messages": [user(text)], "temperature": 0, "max_tokens": max, "logprobs": true}),
    )
}

fn cached(reply: &Value) -> u64 {
    reply["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
}

fn moves_between_servers_exactly(url: &str) {
    let (a, b) = (serve_on(url), serve_on(url));
    let qs = ["Name a mountain.", "Where is it?", "How high is it?"];
    let id = create_session(&a.1);
    let t1 = turn(&a.1, &id, qs[0], 16);
    // B never saw the session: it loads A's blocks from Redis.
    let t2 = turn(&b.1, &id, qs[1], 16);
    let prompt2 = t2["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(cached(&t2) > 20 && cached(&t2) < prompt2, "B reused A's prefix blocks: {t2}");
    // Back on A, whose copy is stale now: it reads B's turn.
    let t3 = turn(&a.1, &id, qs[2], 16);
    assert!(cached(&t3) > cached(&t2), "{t3}");

    // One uninterrupted session on one server.
    let straight = create_session(&a.1);
    let s: Vec<Value> = qs.iter().map(|q| turn(&a.1, &straight, q, 16)).collect();
    for (moved, alone) in [&t1, &t2, &t3].into_iter().zip(&s) {
        assert_eq!(tokens_of(moved), tokens_of(alone));
    }
    let (status, shown) = request(&b.1, "GET", &format!("/v1/sessions/{id}"), "");
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["messages"].as_array().unwrap().len(), 6, "{shown}");
    let (_, health) = request(&a.1, "GET", "/health", "");
    assert_eq!(health["store"]["status"], "ok", "{health}");
}

#[test]
fn a_conversation_moves_between_servers_exactly_on_redis() {
    let Some((url, _guard)) = shared_standalone("serve-move") else { return };
    moves_between_servers_exactly(&url);
}

#[test]
fn a_conversation_moves_between_servers_exactly_on_a_cluster() {
    let Some((url, _guard)) = shared_cluster("serve-move") else { return };
    moves_between_servers_exactly(&url);
}

/// Two servers get a turn on the same session at the same moment, 100
/// times. A turn that got 409 (`session_conflict`) is sent again. At the end
/// the session holds every acknowledged turn exactly once, and nothing else.
#[test]
fn two_servers_appending_at_once_lose_no_turn_100_times() {
    let Some((url, _guard)) = shared_standalone("serve-race") else { return };
    let servers = [serve_on(&url), serve_on(&url)];
    let mut acked: Vec<String> = Vec::new();
    let (mut conflicts, mut ids) = (0, Vec::new());
    for round in 0..100 {
        // A new session every 20 rounds keeps the prompts short.
        if round % 20 == 0 {
            ids.push(create_session(&servers[0].1));
        }
        let id = ids.last().unwrap().clone();
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<(u16, Value, String)> = std::thread::scope(|scope| {
            let hs: Vec<_> = servers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let (barrier, addr, id) = (Arc::clone(&barrier), s.1.clone(), id.clone());
                    scope.spawn(move || {
                        let text = format!("Round {round} on server {i}: say one word.");
                        let body = json!({"session_id": id, "messages": [user(&text)], "temperature": 0, "max_tokens": 1});
                        barrier.wait();
                        let (status, v) = request(&addr, "POST", "/v1/chat/completions", &body.to_string());
                        (status, v, text)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, (status, v, text)) in results.into_iter().enumerate() {
            match status {
                200 => acked.push(text),
                409 => {
                    assert_eq!(v["error"]["code"], "session_conflict", "{v}");
                    conflicts += 1;
                    // The client's retry: the server reads the new version.
                    let body = json!({"session_id": id, "messages": [user(&text)], "temperature": 0, "max_tokens": 1});
                    let (status, v) =
                        request(&servers[i].1, "POST", "/v1/chat/completions", &body.to_string());
                    assert_eq!(status, 200, "retry after a conflict: {v}");
                    acked.push(text);
                }
                other => panic!("round {round}: {other} {v}"),
            }
        }
    }
    let mut stored: Vec<String> = Vec::new();
    for id in &ids {
        let (status, shown) = request(&servers[1].1, "GET", &format!("/v1/sessions/{id}"), "");
        assert_eq!(status, 200, "{shown}");
        for m in shown["messages"].as_array().unwrap() {
            if m["role"] == "user" {
                stored.push(m["content"].as_str().unwrap().to_string());
            }
        }
    }
    let (mut a, mut s) = (acked.clone(), stored.clone());
    a.sort();
    s.sort();
    assert_eq!(s, a, "every acknowledged turn exactly once, and nothing else");
    assert_eq!(stored.len(), 200);
    eprintln!("{conflicts} conflicts in 100 rounds");
    assert!(conflicts > 0, "the two servers never raced");
}

/// Redis stops while a turn is generated: the turn is answered 503
/// (`store_unavailable`, nothing saved), requests that need the store fail
/// fast while it is down, `/health` says so, and once Redis is back the same
/// server works again and the session holds exactly its acknowledged turns.
#[test]
fn redis_stopped_during_a_request_gives_503_then_recovers() {
    if common::redis::redis_server().is_none() {
        return;
    }
    let mut redis = Redis::start();
    let server = serve_on(&redis.url("outage"));
    let addr = server.1.clone();
    let id = create_session(&addr);
    let first = turn(&addr, &id, "Name a bird.", 8);

    let running = {
        let (addr, id) = (addr.clone(), id.clone());
        std::thread::spawn(move || {
            let body = json!({"session_id": id, "messages": [user("Tell me a long story about it.")],
                              "temperature": 0, "max_tokens": 300});
            request(&addr, "POST", "/v1/chat/completions", &body.to_string())
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    redis.stop();
    let (status, v) = running.join().unwrap();
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "store_unavailable", "{v}");

    let t0 = Instant::now();
    let body = json!({"session_id": id, "messages": [user("Again?")], "temperature": 0, "max_tokens": 4});
    let (status, v) = request(&addr, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 503, "{v}");
    assert!(t0.elapsed() < Duration::from_secs(5), "fail fast: {:?}", t0.elapsed());
    let (status, _) = request(&addr, "POST", "/v1/sessions", "");
    assert_eq!(status, 503);
    let (status, health) = request(&addr, "GET", "/health", "");
    assert_eq!((status, health["status"].as_str()), (200, Some("degraded")), "{health}");
    assert_eq!(health["store"]["status"], "unavailable", "{health}");
    // A request without a session still works.
    chat(&addr, json!({"messages": [user("Hi")], "temperature": 0, "max_tokens": 2}));

    redis.resume();
    let (_, health) = request(&addr, "GET", "/health", "");
    assert_eq!(health["status"], "ok", "{health}");
    let next = turn(&addr, &id, "Where does it live?", 8);
    let (_, shown) = request(&addr, "GET", &format!("/v1/sessions/{id}"), "");
    let msgs = shown["messages"].as_array().unwrap();
    let contents: Vec<&str> = msgs.iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(
        contents,
        [
            "Name a bird.",
            first["choices"][0]["message"]["content"].as_str().unwrap(),
            "Where does it live?",
            next["choices"][0]["message"]["content"].as_str().unwrap()
        ],
        "only the acknowledged turns"
    );
}

/// A server is killed with SIGKILL at a random point (in a turn, or in the
/// middle of its save) while it takes back-to-back turns on one session,
/// after at least one of them was acknowledged, and started again: 50 times. After every kill another server, which stays up,
/// finds every acknowledged turn exactly once; at the end the session
/// continues the same (tokens and log-probabilities) on two fresh servers.
#[test]
fn kill_9_of_a_server_50_times_loses_no_acknowledged_turn() {
    let Some((url, _guard)) = shared_standalone("serve-kill") else { return };
    let witness = serve_on(&url);
    let id = create_session(&witness.1);
    let mut acked: Vec<String> = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..50u64 {
        let mut server = serve_on(&url);
        let (turns, acks) = turns_until_killed(&server.1, &id, round, 4);
        // One turn acknowledged first, so that every round has something to
        // lose; then a kill at a random point of the next turns.
        let t0 = Instant::now();
        while acks.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(t0.elapsed() < Duration::from_secs(60), "round {round}: no turn was acknowledged");
            std::thread::sleep(Duration::from_millis(5));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(150 + rng % 700));
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        acked.extend(turns.join().unwrap());
        assert_all_kept(&witness.1, &id, &acked);
    }
    assert!(acked.len() >= 50, "too few turns were acknowledged to test anything: {}", acked.len());
    // Two fresh servers continue two copies of the stored session.
    let (a, b) = (serve_on(&url), serve_on(&url));
    let next = |addr: &str| {
        let (status, fork) = request(addr, "POST", &format!("/v1/sessions/{id}/fork"), "");
        assert_eq!(status, 201, "{fork}");
        turn(addr, fork["id"].as_str().unwrap(), "Now say bye.", 8)
    };
    assert_eq!(tokens_of(&next(&a.1)), tokens_of(&next(&b.1)));
}
