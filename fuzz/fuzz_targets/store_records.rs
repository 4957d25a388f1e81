//! The session store's on-disk records (`colloquy::store::decode_block` and
//! `decode_manifest`) on any input: a record or a typed error, never a panic.
//! Each input is also wrapped in a valid magic, version and checksum (and, for
//! manifests, a valid length) so that the fuzzer reaches the field parsers.
#![no_main]

use colloquy::store::{
    decode_block, decode_manifest, BLOCK_MAGIC, MANIFEST_MAGIC, MANIFEST_VERSION, RECORD_VERSION,
};
use libfuzzer_sys::fuzz_target;

fn wrap(magic: &[u8; 8], length: bool, data: &[u8]) -> Vec<u8> {
    let mut b = magic.to_vec();
    let version = if length { MANIFEST_VERSION } else { RECORD_VERSION };
    b.extend_from_slice(&version.to_le_bytes());
    if length {
        b.extend_from_slice(&((20 + data.len() + 8) as u64).to_le_bytes());
    }
    b.extend_from_slice(data);
    let sum = xxhash_rust::xxh3::xxh3_64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_block(data);
    let _ = decode_manifest(data);
    if let Ok(b) = decode_block(&wrap(BLOCK_MAGIC, false, data)) {
        // A decoded block is consistent with its header.
        assert!(b.positions >= 1 && b.positions <= 32);
    }
    if let Ok(m) = decode_manifest(&wrap(MANIFEST_MAGIC, true, data)) {
        assert_eq!(m.blocks.len(), m.tokens.len().div_ceil(32));
        assert!(m.window_blocks.iter().all(|&(b, _)| b < m.blocks.len()));
        let _ = m.transcript();
    }
});
