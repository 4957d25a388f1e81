//! Helpers for tests that run `colloquy serve` on loopback: start a server,
//! send raw HTTP/1.1 requests with timeouts, and read replies.
#![allow(dead_code)]

#[path = "../../../colloquy/tests/common/redis.rs"]
pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

pub struct Server(pub Child, pub String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn send(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> TcpStream {
    try_send(addr, method, path, headers, body).unwrap()
}

/// [`send`], for a server that may be gone: a refused connection or a
/// failed write is an error, not a panic.
pub fn try_send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(180)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(s)
}

/// One request; its status, headers and body.
pub fn exchange(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> (u16, String, String) {
    let mut s = send(addr, method, path, headers, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (status, head.to_string(), body.to_string())
}

pub fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = exchange(addr, method, path, "", body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub fn chat(addr: &str, body: Value) -> Value {
    let (status, v) = request(addr, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{v}");
    v
}

/// The `data:` payloads of a streamed reply.
pub fn events(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

/// Starts `colloquy serve` on a free loopback port with its sessions in `store`.
pub fn start(store: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .args(["serve", "--port", "0", "--threads", "2", "--store"])
        .arg(store)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").expect("the address line").to_string();
    Server(child, addr)
}

/// The greedy tokens and their log-probabilities, bit for bit as the
/// server printed them.
pub fn tokens_of(reply: &Value) -> Vec<(String, String)> {
    reply["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["token"].as_str().unwrap().to_string(), t["logprob"].to_string()))
        .collect()
}

pub fn greedy(messages: Value, max: u32) -> Value {
    json!({"messages": messages, "temperature": 0, "max_tokens": max, "logprobs": true})
}

pub fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

pub fn create_session(addr: &str) -> String {
    let (status, s) = request(addr, "POST", "/v1/sessions", "");
    assert_eq!(status, 201, "{s}");
    s["id"].as_str().unwrap().to_string()
}

/// Every acknowledged user message is in session `id` exactly once.
pub fn assert_all_kept(addr: &str, id: &str, acked: &[String]) {
    let (status, shown) = request(addr, "GET", &format!("/v1/sessions/{id}"), "");
    assert_eq!(status, 200, "{shown}");
    let users: Vec<&str> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    for a in acked {
        assert_eq!(
            users.iter().filter(|u| **u == a.as_str()).count(),
            1,
            "acknowledged turn {a:?} lost: {users:?}"
        );
    }
}

/// Back-to-back turns on session `id` (at most `max` tokens each) until the
/// server dies; the thread returns the user messages that got a 200, and
/// the counter counts them as they come.
pub fn turns_until_killed(
    addr: &str,
    id: &str,
    round: u64,
    max: u32,
) -> (std::thread::JoinHandle<Vec<String>>, Arc<AtomicUsize>) {
    let (addr, id) = (addr.to_string(), id.to_string());
    let acks = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&acks);
    let handle = std::thread::spawn(move || {
        let mut ok = Vec::new();
        for k in 0.. {
            let text = format!("Round {round} turn {k}: say hi.");
            let body = json!({"session_id": id, "messages": [user(&text)], "max_tokens": max});
            // The kill may land between two turns: then the next connect
            // is refused, and nothing was sent to lose.
            let Ok(mut s) = try_send(&addr, "POST", "/v1/chat/completions", "", &body.to_string()) else {
                return ok;
            };
            let mut raw = Vec::new();
            if s.read_to_end(&mut raw).is_err() || !String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200")
            {
                return ok; // the server died mid-turn (or mid-save)
            }
            ok.push(text);
            counter.fetch_add(1, Ordering::SeqCst);
        }
        ok
    });
    (handle, acks)
}
