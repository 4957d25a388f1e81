//! `ChatSession::from_bytes` on any input: a session or a typed error, never a
//! panic. Half of the inputs get a valid preamble and checksum so that the
//! fuzzer reaches the field parser behind the checksum, as version 1, 2 or the
//! current version (the first input byte picks).
#![no_main]

use colloquy::language::*;
use colloquy::session::format::{MAGIC, OLDEST_VERSION, VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = LlamaChatSession::from_bytes(data);
    let mut b = MAGIC.to_vec();
    let version = match data.first().map(|x| x % 3) {
        Some(1) => OLDEST_VERSION,
        Some(2) => OLDEST_VERSION + 1,
        _ => VERSION,
    };
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&((20 + data.len() + 8) as u64).to_le_bytes());
    b.extend_from_slice(data);
    let sum = xxhash_rust::xxh3::xxh3_64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    if let Ok(s) = LlamaChatSession::from_bytes(&b) {
        // A parsed session serializes again, and reads back the same.
        let again = LlamaChatSession::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(again.history(), s.history());
        assert_eq!(again.dropped_messages(), s.dropped_messages());
    }
});
