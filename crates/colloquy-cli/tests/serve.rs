//! `colloquy serve` on loopback: completions, sessions, forks. Every request
//! goes to 127.0.0.1, is bounded in time, and the server is killed at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status: u16 = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

/// Starts `colloquy serve` on a free loopback port; returns it and its address.
fn start() -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .args(["serve", "--port", "0", "--threads", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").expect("the address line").to_string();
    (Server(child), addr)
}

#[test]
fn serves_completions_sessions_and_forks() {
    let (_server, addr) = start();

    let (status, body) = request(&addr, "GET", "/health", "");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let req = r#"{"messages":[{"role":"user","content":"Name a color."}],"temperature":0,"max_tokens":8}"#;
    let (status, a) = request(&addr, "POST", "/v1/chat/completions", req);
    assert_eq!(status, 200, "{a}");
    let first = a["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!first.is_empty());
    // The same request again: the prefix cache reuses the shared start, same answer.
    let (_, b) = request(&addr, "POST", "/v1/chat/completions", req);
    assert_eq!(b["choices"][0]["message"]["content"].as_str().unwrap(), first);
    assert!(b["usage"]["reused_tokens"].as_u64().unwrap() >= 32, "{b}");

    let (status, s) = request(&addr, "POST", "/sessions", "");
    assert_eq!(status, 201);
    let id = s["id"].as_str().unwrap().to_string();
    let turn = r#"{"content":"Name a color.","temperature":0,"max_tokens":8}"#;
    let (status, t) = request(&addr, "POST", &format!("/sessions/{id}/messages"), turn);
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["answer"].as_str().unwrap(), first);

    let (_, f) = request(&addr, "POST", &format!("/sessions/{id}/fork"), "");
    let fork = f["id"].as_str().unwrap().to_string();
    let (_, shown) = request(&addr, "GET", &format!("/sessions/{fork}"), "");
    assert_eq!(shown["messages"].as_array().unwrap().len(), 2);

    let (status, _) = request(&addr, "GET", "/sessions/nope", "");
    assert_eq!(status, 404);
    let (status, _) = request(&addr, "POST", "/v1/chat/completions", r#"{"messages":[]}"#);
    assert_eq!(status, 400);
}

/// Turns sent at the same time to one session are all kept (they wait for
/// each other), and a session deleted while a turn runs stays deleted.
#[test]
fn parallel_turns_on_one_session_are_all_kept_and_deletes_stick() {
    let (_server, addr) = start();
    let (_, s) = request(&addr, "POST", "/sessions", "");
    let id = s["id"].as_str().unwrap().to_string();
    let turns: Vec<_> = (0..8)
        .map(|k| {
            let (addr, id) = (addr.clone(), id.clone());
            std::thread::spawn(move || {
                let body = format!(r#"{{"content":"Turn {k}: say hi.","temperature":0,"max_tokens":4}}"#);
                request(&addr, "POST", &format!("/sessions/{id}/messages"), &body).0
            })
        })
        .collect();
    for t in turns {
        assert_eq!(t.join().unwrap(), 200);
    }
    let (_, shown) = request(&addr, "GET", &format!("/sessions/{id}"), "");
    let mut users: Vec<String> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    users.sort();
    assert_eq!(users, (0..8).map(|k| format!("Turn {k}: say hi.")).collect::<Vec<_>>());

    // A long turn, and a delete while it runs.
    let running = {
        let (addr, id) = (addr.clone(), id.clone());
        std::thread::spawn(move || {
            let body = r#"{"content":"Tell me a long story.","temperature":0,"max_tokens":200}"#;
            request(&addr, "POST", &format!("/sessions/{id}/messages"), body).0
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let (status, _) = request(&addr, "DELETE", &format!("/sessions/{id}"), "");
    assert_eq!(status, 200);
    running.join().unwrap();
    let (status, _) = request(&addr, "GET", &format!("/sessions/{id}"), "");
    assert_eq!(status, 404, "a deleted session came back");
}
