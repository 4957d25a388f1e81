//! `colloquy serve` with a reasoning model's template: the thinking goes out
//! as `reasoning_content`, whole and streamed alike, and the next turn of a
//! stored session (whose template drops past thinking) rewinds and goes on.
//!
//! The model is synthetic: a tiny `qwen2` with random weights and the real
//! R1 header's vocabulary and chat template (`colloquy pull r1-header`),
//! held to a thinking answer by the `grammar` extension.

mod common;

use std::path::PathBuf;

use colloquy_engine::fetch;
use colloquy_engine::gguf::{Gguf, Value as GgufValue};
use colloquy_engine::kernels::GgmlType;
use colloquy_engine::synthetic::{qwen2_like, Qwen2Shape};
use common::{events, exchange, request, start, user};
use serde_json::{json, Value};

fn tiny_r1(dir: &std::path::Path) -> PathBuf {
    tiny_r1_with(dir, |t| t)
}

/// The tiny R1 model, with its template changed by `edit`.
fn tiny_r1_with(dir: &std::path::Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let known = fetch::model("r1-header").unwrap();
    let header = fetch::models_dir(&fetch::cache_dir()).join(&known.file_name);
    assert!(header.exists(), "{} is missing: run `colloquy pull r1-header` first", header.display());
    let header = Gguf::open_vocab_only(&header).unwrap();
    let template = edit(header.get_str("tokenizer.chat_template").unwrap().to_string());
    let file = dir.join("synthetic-tiny-r1-qwen2.gguf");
    let mut model = qwen2_like(&header, &Qwen2Shape::TINY, GgmlType::Q8_0, 7).unwrap();
    model.set("tokenizer.chat_template", GgufValue::String(template));
    model.write(&file).unwrap();
    file
}

/// A whole reply's `reasoning_content` and `content`, both non-empty and
/// free of the tags.
fn split_reply(whole: &Value) -> (String, String) {
    let msg = &whole["choices"][0]["message"];
    let reasoning = msg["reasoning_content"].as_str().expect("reasoning_content").to_string();
    let content = msg["content"].as_str().unwrap().to_string();
    assert!(!reasoning.is_empty() && !reasoning.contains("think"), "{msg}");
    assert!(!content.is_empty() && !content.contains("think"), "{msg}");
    (reasoning, content)
}

/// A stream's reasoning and content deltas, joined; reasoning must not
/// follow content.
fn streamed(text: &str) -> (String, String) {
    let (mut r, mut c, mut content_started) = (String::new(), String::new(), false);
    for e in events(text).iter().filter(|e| e.as_str() != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        let delta = &v["choices"][0]["delta"];
        if let Some(piece) = delta["reasoning_content"].as_str() {
            assert!(!content_started, "reasoning after content: {text}");
            r += piece;
        }
        if let Some(piece) = delta["content"].as_str() {
            content_started |= !piece.is_empty();
            c += piece;
        }
    }
    (r, c)
}

fn thinking(messages: Value, stream: bool) -> Value {
    json!({"messages": messages, "temperature": 0, "max_tokens": 48, "stream": stream,
           "grammar": {"type": "regex", "value": "<think>[a-z]{2,12}</think>[a-z]{2,8}"}})
}

#[test]
fn thinking_goes_out_as_reasoning_content() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_r1(dir.path());
    let server = start(&dir.path().join("sessions"), &["--model", model.to_str().unwrap()]);
    let addr = &server.1;

    // Whole: the reasoning apart, the content without it.
    let (status, whole) = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &thinking(json!([user("What is 2+2?")]), false).to_string(),
    );
    assert_eq!(status, 200, "{whole}");
    let (reasoning, content) = split_reply(&whole);

    // Streamed: the same two texts, in reasoning deltas, then content deltas.
    let body = thinking(json!([user("What is 2+2?")]), true).to_string();
    let (status, _, text) = exchange(addr, "POST", "/v1/chat/completions", "", &body);
    assert_eq!(status, 200, "{text}");
    assert_eq!(streamed(&text), (reasoning.clone(), content.clone()));

    // A stored session: its next turn renders the answer without its thinking,
    // so the cached tokens stop before the first answer; the client resends
    // the answer as it got it (content only), which matches the stored one.
    let mut first = thinking(json!([user("What is 2+2?")]), false);
    first["store"] = json!(true);
    let (status, a) = request(addr, "POST", "/v1/chat/completions", &first.to_string());
    assert_eq!(status, 200, "{a}");
    let id = a["session_id"].as_str().unwrap().to_string();
    let answer = a["choices"][0]["message"]["content"].as_str().unwrap();
    let resent = json!([user("What is 2+2?"), {"role": "assistant", "content": answer}, user("And 3+3?")]);
    let next = json!({"messages": resent, "session_id": id, "temperature": 0, "max_tokens": 6});
    let (status, b) = request(addr, "POST", "/v1/chat/completions", &next.to_string());
    assert_eq!(status, 200, "{b}");
    let (prompt, cached) = (
        b["usage"]["prompt_tokens"].as_u64().unwrap(),
        b["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(),
    );
    assert!(cached > 5 && cached < prompt, "{}", b["usage"]);
    let (status, s) = request(addr, "GET", &format!("/v1/sessions/{id}"), "");
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["messages"][1]["content"], json!(answer), "{s}");
    assert!(s["messages"][1]["reasoning_content"].as_str().is_some_and(|r| !r.is_empty()), "{s}");
    let shown = s.to_string();
    assert_eq!(shown.matches("What is 2+2?").count(), 1, "the resent transcript was added twice: {shown}");
    assert_eq!(shown.matches("And 3+3?").count(), 1, "{shown}");
}

/// A template whose generation prompt opens `<think>` (as later R1 templates
/// and Qwen3's do): the answer starts inside its reasoning and carries only
/// `</think>`, and still goes out split, whole, streamed and in the session.
#[test]
fn a_prompt_that_opens_thinking_splits_from_the_first_token() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_r1_with(dir.path(), |t| {
        let open = t.replace("{{'<｜Assistant｜>'}}{% endif %}", "{{'<｜Assistant｜><think>\n'}}{% endif %}");
        assert_ne!(open, t, "the R1 template's generation prompt was not found");
        open
    });
    let server = start(&dir.path().join("sessions"), &["--model", model.to_str().unwrap()]);
    let addr = &server.1;
    let ask = |stream: bool| {
        json!({"messages": [user("What is 2+2?")], "temperature": 0, "max_tokens": 48, "stream": stream,
               "store": !stream, "grammar": {"type": "regex", "value": "[a-z]{2,12}</think>[a-z]{2,8}"}})
    };
    let (status, whole) = request(addr, "POST", "/v1/chat/completions", &ask(false).to_string());
    assert_eq!(status, 200, "{whole}");
    let (reasoning, content) = split_reply(&whole);

    let (status, _, text) = exchange(addr, "POST", "/v1/chat/completions", "", &ask(true).to_string());
    assert_eq!(status, 200, "{text}");
    assert_eq!(streamed(&text), (reasoning.clone(), content.clone()));

    let id = whole["session_id"].as_str().unwrap();
    let (status, s) = request(addr, "GET", &format!("/v1/sessions/{id}"), "");
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["messages"][1]["reasoning_content"], json!(reasoning), "{s}");
    assert_eq!(s["messages"][1]["content"], json!(content), "{s}");
}
