//! `colloquy serve` on loopback, on the real model: the wire shapes, durable
//! sessions across `kill -9`, exactness under concurrent load, forks at a
//! message, parallel turns on one session, and cancellation of a request
//! whose client left. Every request goes to 127.0.0.1 with a timeout, and
//! every server is killed at the end.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::*;

#[test]
fn wire_shapes_errors_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--max-body-bytes", "100000"]);
    let addr = &server.1;

    let (status, body) = request(addr, "GET", "/health", "");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (_, models) = request(addr, "GET", "/v1/models", "");
    assert_eq!(models["data"][0]["id"], "smollm2");
    assert_eq!(models["data"][0]["object"], "model");

    let a = chat(addr, greedy(json!([user("Name a color.")]), 8));
    assert!(a["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["model"], "smollm2");
    assert!(a["created"].as_u64().unwrap() > 1_700_000_000);
    let u = &a["usage"];
    assert_eq!(
        u["total_tokens"],
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(u["completion_tokens"], 8);
    assert_eq!(a["choices"][0]["finish_reason"], "length");
    // The same request again: the prefix cache serves all but the last prompt token.
    let b = chat(addr, greedy(json!([user("Name a color.")]), 8));
    assert_eq!(tokens_of(&a), tokens_of(&b));
    assert!(b["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() >= 16, "{b}");

    // Streamed: the role first, then content, then the finish chunk, the usage, [DONE].
    let mut body = greedy(json!([user("Name a color.")]), 8);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, head, raw) = exchange(addr, "POST", "/v1/chat/completions", "", &body.to_string());
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
    let ev = events(&raw);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, a["choices"][0]["message"]["content"].as_str().unwrap());
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(
        (fin["choices"][0]["delta"].clone(), fin["choices"][0]["finish_reason"].clone()),
        (json!({}), json!("length"))
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 8);
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"] && c["created"] == chunks[0]["created"]));

    // Plain completions.
    let (status, c) = request(
        addr,
        "POST",
        "/v1/completions",
        r#"{"prompt":"The capital of France is","max_tokens":4,"temperature":0}"#,
    );
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["object"], "text_completion");
    assert!(!c["choices"][0]["text"].as_str().unwrap().is_empty());

    // Errors: OpenAI's shape and the right status.
    let bad = |body: &str, status: u16, param: Value| {
        let (s, v) = request(addr, "POST", "/v1/chat/completions", body);
        assert_eq!(s, status, "{body} -> {v}");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        v
    };
    let m = r#""messages":[{"role":"user","content":"hi"}]"#;
    bad(&format!("{{{m},\"n\":2}}"), 400, json!("n"));
    bad(&format!("{{{m},\"temperature\":-1}}"), 400, json!("temperature"));
    bad(&format!("{{{m},\"top_p\":0}}"), 400, json!("top_p"));
    bad(&format!("{{{m},\"top_p\":1.5}}"), 400, json!("top_p"));
    bad(r#"{"messages":[]}"#, 400, json!("messages"));
    bad("{not json", 400, Value::Null);
    let v = bad(&format!("{{{m},\"model\":\"gpt-4\"}}"), 404, Value::Null);
    assert_eq!(v["error"]["code"], "model_not_found");
    let long = "word ".repeat(9000);
    let v = bad(
        &format!("{{\"messages\":[{{\"role\":\"user\",\"content\":\"{long}\"}}]}}"),
        400,
        json!("messages"),
    );
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["n_ctx"], 8192);
    assert!(v["error"]["n_prompt_tokens"].as_u64().unwrap() > 8192);
    let huge = "x".repeat(200_000);
    let v =
        bad(&format!("{{\"messages\":[{{\"role\":\"user\",\"content\":\"{huge}\"}}]}}"), 413, Value::Null);
    assert!(v["error"]["message"].as_str().unwrap().contains("--max-body-bytes"));
    // Unknown fields are ignored.
    let (s, _) = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &format!("{{{m},\"max_tokens\":2,\"frobnicate\":[1]}}"),
    );
    assert_eq!(s, 200);
    let (s, v) = request(addr, "GET", "/v1/nothing", "");
    assert_eq!((s, v["error"]["type"].as_str()), (404, Some("invalid_request_error")));

    let (_, metrics, text) = exchange(addr, "GET", "/metrics", "", "");
    assert!(metrics.contains("text/plain"));
    for name in [
        "colloquy_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}",
        "colloquy_cached_tokens_total",
        "colloquy_queue_depth",
        "colloquy_batch_size",
        "colloquy_time_to_first_token_seconds_count",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}

#[test]
fn api_key_is_required_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--api-key", "sesame"]);
    let addr = &server.1;
    let (s, _, body) = exchange(addr, "GET", "/v1/models", "Authorization: Bearer wrong\r\n", "");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((s, v["error"]["type"].as_str()), (401, Some("authentication_error")));
    let (s, _, _) = exchange(addr, "GET", "/v1/models", "", "");
    assert_eq!(s, 401);
    let (s, _, _) = exchange(addr, "GET", "/v1/models", "Authorization: Bearer sesame\r\n", "");
    assert_eq!(s, 200);
    let (s, _, _) = exchange(addr, "GET", "/health", "", "");
    assert_eq!(s, 200);
}

/// A session's turns survive `kill -9` of the server (an unacknowledged
/// turn is simply not there), and the session continues after a restart
/// exactly as one that never stopped.
#[test]
fn sessions_survive_kill_9_and_continue_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let q1 = "Name a fruit.";
    let q2 = "Why do people like it?";
    let server = start(dir.path(), &[]);
    let id = create_session(&server.1);
    let first = chat(
        &server.1,
        json!({"session_id": id, "messages": [user(q1)], "temperature": 0, "max_tokens": 12}),
    );
    // A second turn, killed while it streams: not acknowledged, so not kept.
    let body = json!({"session_id": id, "messages": [user(q2)], "temperature": 0, "max_tokens": 400, "stream": true});
    let mut s = send(&server.1, "POST", "/v1/chat/completions", "", &body.to_string());
    let mut buf = [0u8; 512];
    let _ = s.read(&mut buf).unwrap();
    let mut server = server;
    server.0.kill().unwrap(); // SIGKILL
    server.0.wait().unwrap();

    let server = start(dir.path(), &[]);
    let (status, shown) = request(&server.1, "GET", &format!("/v1/sessions/{id}"), "");
    assert_eq!(status, 200, "{shown}");
    let msgs = shown["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{shown}");
    assert_eq!(msgs[1]["content"], first["choices"][0]["message"]["content"]);

    let resumed = chat(
        &server.1,
        json!({"session_id": id, "messages": [user(q2)], "temperature": 0, "max_tokens": 24, "logprobs": true}),
    );
    // The uninterrupted run: both turns on one server, in memory.
    let other = create_session(&server.1);
    chat(&server.1, json!({"session_id": other, "messages": [user(q1)], "temperature": 0, "max_tokens": 12}));
    let straight = chat(
        &server.1,
        json!({"session_id": other, "messages": [user(q2)], "temperature": 0, "max_tokens": 24, "logprobs": true}),
    );
    assert_eq!(tokens_of(&resumed), tokens_of(&straight));
    // The resumed turn read only its new messages.
    assert!(resumed["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 20, "{resumed}");
}

/// The greedy tokens (and their log-probabilities, bit for bit) of a request
/// are the same alone and among 8 concurrent requests of different lengths.
#[test]
fn outputs_are_exact_among_concurrent_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--prompt-budget", "64"]);
    let addr = server.1.clone();
    let prompts: Vec<(String, u32)> = (0..8)
        .map(|k| (format!("Request {k}: {}", "tell me about the sea. ".repeat(1 + 3 * k)), 8 + 6 * k as u32))
        .collect();
    let alone: Vec<_> =
        prompts.iter().map(|(p, n)| tokens_of(&chat(&addr, greedy(json!([user(p)]), *n)))).collect();
    let metric = |name: &str| -> f64 {
        let (_, _, m) = exchange(&addr, "GET", "/metrics", "", "");
        m.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
    };
    let (steps0, seqs0) = (metric("colloquy_steps_total "), metric("colloquy_step_sequences_total "));
    // Twice together (their prompts now come from the prefix cache, which
    // gives the same bits as a fresh read).
    for _ in 0..2 {
        let together: Vec<_> = prompts
            .iter()
            .cloned()
            .map(|(p, n)| {
                let addr = addr.clone();
                std::thread::spawn(move || tokens_of(&chat(&addr, greedy(json!([user(&p)]), n))))
            })
            .collect();
        for (k, t) in together.into_iter().enumerate() {
            assert_eq!(t.join().unwrap(), alone[k], "request {k} changed in a batch");
        }
    }
    // The concurrent requests really shared passes (a mean batch above 2).
    let (steps, seqs) =
        (metric("colloquy_steps_total ") - steps0, metric("colloquy_step_sequences_total ") - seqs0);
    assert!(seqs > 2.0 * steps, "{seqs} sequences in {steps} passes");
}

/// A fork at message k answers as a fresh conversation of those k messages.
#[test]
fn fork_at_a_message_answers_like_a_fresh_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let addr = &server.1;
    let id = create_session(addr);
    let a1 = chat(
        addr,
        json!({"session_id": id, "messages": [user("Name an animal.")], "temperature": 0, "max_tokens": 10}),
    );
    chat(
        addr,
        json!({"session_id": id, "messages": [user("Where does it live?")], "temperature": 0, "max_tokens": 10}),
    );
    let (status, f) = request(addr, "POST", &format!("/v1/sessions/{id}/fork"), r#"{"at":3}"#);
    assert_eq!(status, 201, "{f}");
    let fork = f["id"].as_str().unwrap();
    let (_, shown) = request(addr, "GET", &format!("/v1/sessions/{fork}"), "");
    assert_eq!(shown["messages"].as_array().unwrap().len(), 3);
    let from_fork = chat(
        addr,
        json!({"session_id": fork, "messages": [], "temperature": 0, "max_tokens": 16, "logprobs": true}),
    );
    let answer = a1["choices"][0]["message"]["content"].as_str().unwrap();
    let fresh = chat(
        addr,
        greedy(
            json!([user("Name an animal."), {"role": "assistant", "content": answer}, user("Where does it live?")]),
            16,
        ),
    );
    assert_eq!(tokens_of(&from_fork), tokens_of(&fresh));
    // A whole-session fork is independent: the original keeps its 4 messages.
    let (_, f2) = request(addr, "POST", &format!("/v1/sessions/{id}/fork"), "");
    let whole = f2["id"].as_str().unwrap();
    chat(addr, json!({"session_id": whole, "messages": [user("And what does it eat?")], "max_tokens": 4}));
    let (_, orig) = request(addr, "GET", &format!("/v1/sessions/{id}"), "");
    assert_eq!(orig["messages"].as_array().unwrap().len(), 4);
    let (status, _) = request(addr, "POST", &format!("/v1/sessions/{id}/fork"), r#"{"at":9}"#);
    assert_eq!(status, 400);
    // Export and import round-trip.
    let (status, _, bytes) = exchange(addr, "GET", &format!("/v1/sessions/{id}/export"), "", "");
    assert_eq!(status, 200);
    assert!(bytes.len() > 1000);
}

/// 20 turns sent at once to one session are all kept; a session deleted
/// while a turn runs stays deleted; `session_wait: false` gets 409.
#[test]
fn parallel_turns_on_one_session_are_all_kept_and_deletes_stick() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let addr = server.1.clone();
    let id = create_session(&addr);
    let turns: Vec<_> = (0..20)
        .map(|k| {
            let (addr, id) = (addr.clone(), id.clone());
            std::thread::spawn(move || {
                let body = json!({"session_id": id, "messages": [user(&format!("Turn {k}: say hi."))], "temperature": 0, "max_tokens": 3});
                request(&addr, "POST", "/v1/chat/completions", &body.to_string()).0
            })
        })
        .collect();
    for t in turns {
        assert_eq!(t.join().unwrap(), 200);
    }
    let (_, shown) = request(&addr, "GET", &format!("/v1/sessions/{id}"), "");
    let mut users: Vec<String> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    users.sort();
    let mut want: Vec<String> = (0..20).map(|k| format!("Turn {k}: say hi.")).collect();
    want.sort();
    assert_eq!(users, want);

    // A long turn; a second one that will not wait; a delete while it runs.
    let running = {
        let (addr, id) = (addr.clone(), id.clone());
        std::thread::spawn(move || {
            // A long prompt keeps it running for a while, whatever it answers.
            let long = format!("{} Now tell me a long story.", "The sea is wide. ".repeat(600));
            let body =
                json!({"session_id": id, "messages": [user(&long)], "temperature": 0, "max_tokens": 300});
            request(&addr, "POST", "/v1/chat/completions", &body.to_string()).0
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let body = json!({"session_id": id, "messages": [user("Hi")], "session_wait": false, "max_tokens": 2});
    let (status, v) = request(&addr, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("session_busy")), "{v}");
    let (status, _) = request(&addr, "DELETE", &format!("/v1/sessions/{id}"), "");
    assert_eq!(status, 200);
    assert_eq!(running.join().unwrap(), 404, "the turn on a deleted session was acknowledged");
    let (status, _) = request(&addr, "GET", &format!("/v1/sessions/{id}"), "");
    assert_eq!(status, 404, "a deleted session came back");
}

/// A client that leaves during a 10⁹-token request frees the server: the
/// turn is cancelled, and a short request gets its first token within 2 s.
#[test]
fn a_client_that_leaves_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--max-tokens", "1000000000"]);
    let addr = server.1.clone();
    for stream in [false, true] {
        let body = json!({"messages": [user("Write a very long story.")], "max_tokens": 1_000_000_000u64, "stream": stream});
        let mut s = send(&addr, "POST", "/v1/chat/completions", "", &body.to_string());
        if stream {
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).unwrap();
        } else {
            std::thread::sleep(Duration::from_millis(500));
        }
        drop(s);
        let t = Instant::now();
        let body = json!({"messages": [user("Hi")], "max_tokens": 4, "stream": true});
        let mut s = send(&addr, "POST", "/v1/chat/completions", "", &body.to_string());
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        while !got.contains("\"content\":\"") || got.matches("data: ").count() < 2 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the stream ended early: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let ttft = t.elapsed();
        assert!(ttft < Duration::from_secs(2), "first token after {ttft:?}");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
    }
    // Both long turns were cancelled, not left running.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, m) = exchange(&addr, "GET", "/metrics", "", "");
        let cancelled = m
            .lines()
            .find_map(|l| l.strip_prefix("colloquy_cancelled_total "))
            .unwrap_or("0")
            .trim()
            .to_string();
        let running =
            m.lines().find_map(|l| l.strip_prefix("colloquy_running ")).unwrap_or("?").trim().to_string();
        if cancelled == "2" && running == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "cancelled {cancelled}, running {running}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM stops the server gracefully: a running turn on a session
/// finishes, is saved and answered, and then the process exits.
#[test]
fn sigterm_finishes_and_saves_the_running_turn() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let addr = server.1.clone();
    let id = create_session(&addr);
    let running = {
        let (addr, id) = (addr.clone(), id.clone());
        std::thread::spawn(move || {
            let long = format!("{} Now say something.", "The sea is wide. ".repeat(400));
            let body =
                json!({"session_id": id, "messages": [user(&long)], "temperature": 0, "max_tokens": 40});
            request(&addr, "POST", "/v1/chat/completions", &body.to_string())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let pid = server.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let (status, reply) = running.join().unwrap();
    assert_eq!(status, 200, "{reply}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let server2 = start(dir.path(), &[]);
    let (_, shown) = request(&server2.1, "GET", &format!("/v1/sessions/{id}"), "");
    assert_eq!(shown["messages"].as_array().unwrap().len(), 2, "{shown}");
    assert_eq!(shown["messages"][1]["content"], reply["choices"][0]["message"]["content"]);
}

/// A long prompt does not hold up a short request: prompts are read in
/// chunks that share each pass, so the short one is answered while the
/// long one is still reading.
///
/// The short request needs about six passes (its prompt, then a pass per new
/// token), each carrying a chunk of the long prompt; the long one needs one
/// pass per chunk. With the default 256-token budget that is only about 13
/// passes for its ~3,100 tokens, so the short request's share of the time was
/// close to half by design, and two CI runs on a loaded machine saw it over
/// half (11.2 s of 16.6 s, 17.6 of 17.9). A 64-token budget makes it ~50
/// passes against ~6.
#[test]
fn a_long_prompt_does_not_stall_a_short_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--prompt-budget", "64"]);
    let addr = server.1.clone();
    // One short turn first, so that start-up work (the background token trie,
    // first page faults) is not what the timing below measures.
    let warm = json!({"messages": [user("Hello")], "temperature": 0, "max_tokens": 2});
    assert_eq!(request(&addr, "POST", "/v1/chat/completions", &warm.to_string()).0, 200);
    let t0 = Instant::now();
    let long = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let text = format!("{} Summarize.", "The sea is wide. ".repeat(600));
            let body = json!({"messages": [user(&text)], "temperature": 0, "max_tokens": 2});
            let (status, v) = request(&addr, "POST", "/v1/chat/completions", &body.to_string());
            assert_eq!(status, 200, "{v}");
            (t0.elapsed(), v["usage"]["prompt_tokens"].as_u64().unwrap())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let body = json!({"messages": [user("Hi")], "temperature": 0, "max_tokens": 4});
    let (status, _) = request(&addr, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200);
    let (short_done, short_took) = (t0.elapsed(), t.elapsed());
    let (long_done, long_prompt) = long.join().unwrap();
    assert!(long_prompt > 2500, "the long prompt has {long_prompt} tokens");
    assert!(
        short_done < long_done,
        "the short request ({short_done:?}) waited for the long one ({long_done:?})"
    );
    // Its passes carry a chunk of the long prompt each, so it is slower than
    // alone, but it takes far less than the long prompt's whole read.
    eprintln!("short request {short_took:?}, long one {long_done:?}");
    assert!(short_took * 2 < long_done, "the short request took {short_took:?}, the long one {long_done:?}");
}

/// `kill -9` at varying points while turns run: every turn the server
/// acknowledged (200) is in the session after a restart, exactly once.
#[test]
fn kill_9_at_varying_points_loses_no_acknowledged_turn() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<String> = Vec::new();
    let mut id: Option<String> = None;
    for round in 0..5u64 {
        let mut server = start(dir.path(), &[]);
        let addr = server.1.clone();
        if let Some(id) = &id {
            assert_all_kept(&addr, id, &acked);
        }
        let sid = id.get_or_insert_with(|| create_session(&addr)).clone();
        let (turns, _) = turns_until_killed(&addr, &sid, round, 6);
        // A kill point that varies from round to round (300 ms to 2.3 s).
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        std::thread::sleep(Duration::from_millis(300 + u64::from(nanos) % 2000));
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        acked.extend(turns.join().unwrap());
    }
    let server = start(dir.path(), &[]);
    assert_all_kept(&server.1, id.as_deref().unwrap(), &acked);
    assert!(acked.len() >= 5, "too few turns were acknowledged to test anything: {}", acked.len());
}
