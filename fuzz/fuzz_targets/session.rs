//! `ChatSession::from_bytes` on any input: a session or a typed error, never a
//! panic. Half of the inputs get a valid preamble and checksum so that the
//! fuzzer reaches the field parser behind the checksum.
#![no_main]

use colloquy::language::*;
use colloquy::session::format::{MAGIC, VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = LlamaChatSession::from_bytes(data);
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&((20 + data.len() + 8) as u64).to_le_bytes());
    b.extend_from_slice(data);
    let sum = xxhash_rust::xxh3::xxh3_64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    if let Ok(s) = LlamaChatSession::from_bytes(&b) {
        // A parsed session must serialize again without panicking.
        let _ = s.to_bytes();
        let _ = s.history();
    }
});
