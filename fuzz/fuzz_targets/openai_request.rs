//! The server's request parsing: any bytes as a chat or text completion
//! request, then every check the routes run. A bad request is an `Err`
//! (a 400 naming its field), never a panic.
#![no_main]

use colloquy_server::wire::{ChatRequest, CompletionRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ChatRequest>(data) {
        let _ = req.params(4096);
        let _ = req.chat_messages();
        let _ = req.sampling.include_usage();
    }
    if let Ok(req) = serde_json::from_slice::<CompletionRequest>(data) {
        let _ = req.params(4096);
        let _ = req.prompt_text();
    }
});
