//! The server's request parsing: any bytes as a chat or text completion
//! request, then every check the routes run (structured output included);
//! and any text as a model's answer read for tool calls, whole and streamed
//! in pieces. A bad request is an `Err` (a 400 naming its field), never a
//! panic.
#![no_main]

use colloquy_server::structured::CallStream;
use colloquy_server::wire::{ChatRequest, CompletionRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ChatRequest>(data) {
        let _ = req.params(4096);
        let _ = req.chat_messages();
        let _ = req.structure();
        let _ = req.sampling.include_usage();
    }
    if let Ok(req) = serde_json::from_slice::<CompletionRequest>(data) {
        let _ = req.params(4096);
        let _ = req.prompt_text();
    }
    let text = String::from_utf8_lossy(data);
    let whole = colloquy_server::structured::answer_calls(&text);
    // Streamed in pieces of 7 characters: the same verdict, and the text
    // comes out whole or (held as a call) not at all.
    let mut stream = CallStream::new(true);
    let chars: Vec<char> = text.chars().collect();
    let mut deltas = Vec::new();
    for piece in chars.chunks(7) {
        if let Ok(d) = stream.push(&piece.iter().collect::<String>()) {
            deltas.extend(d);
        }
    }
    if let Ok((last, is_call)) = stream.finish() {
        deltas.extend(last);
        let content: String = deltas.iter().filter_map(|d| d["content"].as_str()).collect();
        if whole.is_empty() {
            assert!(!is_call);
            assert!(content == text || content.is_empty());
        } else {
            assert!(is_call && content.is_empty());
        }
    }
});
