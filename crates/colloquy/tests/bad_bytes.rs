//! Damaged or foreign session bytes give their own typed error, never a panic.

mod common;

use colloquy::language::*;
use colloquy::session::format::{MAGIC, VERSION};
use common::*;
use proptest::prelude::*;

fn valid_bytes() -> Vec<u8> {
    let llm = llm();
    let mut s = llm.new_chat_session().unwrap();
    ask(&llm, &mut s, "Hi!", 8);
    s.to_bytes().unwrap()
}

#[test]
fn truncation_at_every_short_length_and_random_points() {
    let bytes = valid_bytes();
    let mut cuts: Vec<usize> = (0..=200).collect();
    let mut x = 0x9e3779b97f4a7c15u64;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        cuts.push((x % bytes.len() as u64) as usize);
    }
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        match LlamaChatSession::from_bytes(&bytes[..cut]) {
            Err(Error::SessionTruncated { .. }) => {}
            other => panic!("cut at {cut}: expected SessionTruncated, got {other:?}"),
        }
    }
    assert!(LlamaChatSession::from_bytes(&bytes).is_ok());
}

#[test]
fn every_flipped_byte_is_detected() {
    let bytes = valid_bytes();
    // Every header byte, then a spread of positions through the KV data.
    let step = (bytes.len() / 3000).max(1);
    let positions = (0..512.min(bytes.len())).chain((512..bytes.len()).step_by(step));
    for i in positions {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        let r = LlamaChatSession::from_bytes(&b);
        let ok = match i {
            0..=7 => matches!(r, Err(Error::SessionBadMagic)),
            8..=11 => matches!(r, Err(Error::SessionUnsupportedVersion { .. })),
            12..=19 => matches!(r, Err(Error::SessionTruncated { .. }) | Err(Error::SessionChecksum)),
            _ => matches!(r, Err(Error::SessionChecksum)),
        };
        assert!(ok, "flipped byte {i}: got {:?}", r.err());
    }
}

#[test]
fn future_version_is_refused() {
    let mut b = valid_bytes();
    b[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    assert!(matches!(
        LlamaChatSession::from_bytes(&b),
        Err(Error::SessionUnsupportedVersion { found, .. }) if found == VERSION + 1
    ));
    assert_eq!(&b[..8], MAGIC);
}

#[test]
fn session_from_a_model_with_one_changed_weight_is_refused() {
    let llm = llm();
    let bytes = valid_bytes();
    // A copy of the model with one byte of one weight changed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("changed.gguf");
    let original = llm.model().path().to_path_buf();
    let mut data = std::fs::read(&original).unwrap();
    let t = llm.model().gguf().tensor("blk.3.ffn_up.weight").unwrap();
    data[t.offset as usize + 100] ^= 1;
    std::fs::write(&path, &data).unwrap();
    let other = Llama::builder()
        .with_source(LlamaSource::gguf(&path))
        .with_threads(2)
        .with_progress(false)
        .build_blocking()
        .unwrap();
    assert_ne!(other.fingerprint(), llm.fingerprint());

    // Loading needs no model; using it with the wrong one fails, typed, and
    // leaves the session as it was.
    let mut session = LlamaChatSession::from_bytes(&bytes).unwrap();
    let before = session.tokens();
    let r = block_on(other.add_messages_with_callback(
        &mut session,
        &[user("Hello")],
        greedy(4),
        Box::new(|_| {}),
    ));
    assert!(matches!(r, Err(Error::SessionModelMismatch { .. })), "got {r:?}");
    assert_eq!(session.tokens(), before);
    // The right model still takes it.
    ask(&llm, &mut session, "Hello", 4);
}

thread_local! {
    static VALID: Vec<u8> = valid_bytes();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = LlamaChatSession::from_bytes(&bytes);
    }

    /// Random bodies behind a valid preamble and checksum reach the parser itself.
    #[test]
    fn checksummed_random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&((20 + body.len() + 8) as u64).to_le_bytes());
        b.extend_from_slice(&body);
        let sum = xxhash_rust::xxh3::xxh3_64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        let r = LlamaChatSession::from_bytes(&b);
        prop_assert!(!matches!(r, Err(Error::SessionChecksum)));
    }

    /// Valid sessions with one field mutated and the checksum fixed up.
    #[test]
    fn checksummed_mutations_never_panic(pos in 20usize..400, val in any::<u8>()) {
        let mut b = VALID.with(|v| v.clone());
        let body_end = b.len() - 8;
        let pos = pos.min(body_end - 1);
        b[pos] = val;
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..body_end]);
        b[body_end..].copy_from_slice(&sum.to_le_bytes());
        let _ = LlamaChatSession::from_bytes(&b);
    }
}

/// A fuzzer find: a checksummed body declaring zero layers and a huge row once
/// overflowed a size computation.
#[test]
fn fuzz_regression_zero_layers_huge_row() {
    let data = include_bytes!("fixtures/fuzz-session-zero-layers.bin");
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&1u32.to_le_bytes()); // found as a version 1 body
    b.extend_from_slice(&((20 + data.len() + 8) as u64).to_le_bytes());
    b.extend_from_slice(data);
    let sum = xxhash_rust::xxh3::xxh3_64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    assert!(LlamaChatSession::from_bytes(&b).is_err());
}

/// A fuzzer find: a version 2 body declaring 4 billion layers and a sliding
/// window once took 22 s to refuse (counting the layers of each lane one by one).
#[test]
fn fuzz_regression_huge_layer_count_with_window() {
    let data = include_bytes!("fixtures/fuzz-session-huge-layer-count.bin");
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&2u32.to_le_bytes()); // found as a version 2 body
    b.extend_from_slice(&((20 + data.len() + 8) as u64).to_le_bytes());
    b.extend_from_slice(data);
    let sum = xxhash_rust::xxh3::xxh3_64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    // It holds no tokens, so it parses; it must survive a round trip, and a
    // model must refuse it (its KV shape is no model's).
    let session = LlamaChatSession::from_bytes(&b).expect("an empty session");
    assert_eq!(session.token_count(), 0);
    let again = LlamaChatSession::from_bytes(&session.to_bytes().unwrap()).unwrap();
    assert_eq!(again.to_bytes().unwrap(), session.to_bytes().unwrap());
    let llm = common::llm();
    let mut session = session;
    let turn =
        block_on(llm.add_messages_with_callback(&mut session, &[user("Hi")], greedy(2), Box::new(|_| {})));
    assert!(
        matches!(turn, Err(Error::SessionModelMismatch { .. } | Error::SessionKvMismatch { .. })),
        "{turn:?}"
    );
}
