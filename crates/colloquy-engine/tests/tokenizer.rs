//! Tokenizer against llama.cpp's own output (tests/fixtures/reference/*/tokenize.json),
//! plus property tests: encoding never panics and decoding gives the input back.
//!
//! The models must be in `$COLLOQUY_HOME/models/` or `~/.cache/colloquy/models/`;
//! a missing model fails the test with the command that fetches it.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use colloquy_engine::gguf::Gguf;
use colloquy_engine::tokenizer::{Tokenizer, Utf8Stream};
use proptest::prelude::*;
use serde::Deserialize;

const SMOLLM2_DIR: &str = "smollm2-135m-instruct-q4_1";
const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA3_DIR: &str = "gemma-3-270m-q4_k_m";
const GEMMA3_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

#[derive(Deserialize)]
struct Case {
    name: String,
    index: usize,
    text: String,
    ids_parse_special: Vec<u32>,
    ids_no_parse_special: Vec<u32>,
    detok_parse_special: String,
    detok_no_parse_special: String,
    pieces_parse_special_hex: Vec<String>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn model_path(file: &str, pull_name: &str) -> PathBuf {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("COLLOQUY_HOME").filter(|h| !h.is_empty()) {
        dirs.push(PathBuf::from(home).join("models"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/colloquy/models"));
    }
    for d in &dirs {
        let p = d.join(file);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "model file {file} not found in {dirs:?}; fetch it with `cargo run -p colloquy-cli -- pull {pull_name}` \
         (or set COLLOQUY_HOME to the cache that holds models/{file})"
    );
}

fn load(file: &str, pull_name: &str) -> Tokenizer {
    let path = model_path(file, pull_name);
    let gguf = Gguf::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("tokenizer of {}: {e}", path.display()))
}

fn smollm2() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| load(SMOLLM2_FILE, "smollm2"))
}

fn gemma3() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| load(GEMMA3_FILE, "gemma3"))
}

fn fixture(dir: &str) -> Fixture {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(dir)
        .join("tokenize.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    let f: Fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", p.display()));
    assert!(!f.cases.is_empty(), "{} has no cases", p.display());
    f
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks every case of a fixture; reports all mismatches at once.
fn check_fixture(tok: &Tokenizer, dir: &str) {
    let fixture = fixture(dir);
    let mut failures = Vec::new();
    for c in &fixture.cases {
        let label = format!("case {} ({})", c.index, c.name);
        let with = tok.encode(&c.text, true);
        if with != c.ids_parse_special {
            failures.push(format!(
                "{label}: parse_special=true\n  got      {with:?}\n  expected {:?}",
                c.ids_parse_special
            ));
        }
        let without = tok.encode(&c.text, false);
        if without != c.ids_no_parse_special {
            failures.push(format!(
                "{label}: parse_special=false\n  got      {without:?}\n  expected {:?}",
                c.ids_no_parse_special
            ));
        }
        match tok.decode(&c.ids_parse_special) {
            Ok(d) if d == c.detok_parse_special.as_bytes() => {}
            other => failures.push(format!("{label}: decode(ids_parse_special) = {other:?}")),
        }
        match tok.decode(&c.ids_no_parse_special) {
            Ok(d) if d == c.detok_no_parse_special.as_bytes() => {}
            other => failures.push(format!("{label}: decode(ids_no_parse_special) = {other:?}")),
        }
        let pieces: Vec<String> = c
            .ids_parse_special
            .iter()
            .map(|&id| hex(&tok.token_to_piece(id).expect("id in vocab")))
            .collect();
        if pieces != c.pieces_parse_special_hex {
            failures.push(format!(
                "{label}: pieces\n  got      {pieces:?}\n  expected {:?}",
                c.pieces_parse_special_hex
            ));
        }
        for (ids, what) in [(&with, "parse_special=true"), (&without, "parse_special=false")] {
            match tok.decode(ids) {
                Ok(d) if d == c.text.as_bytes() => {}
                other => failures.push(format!("{label}: round trip ({what}) = {other:?}")),
            }
        }
        // Streaming the pieces gives the same text.
        let mut stream = Utf8Stream::new();
        let mut streamed = String::new();
        for &id in &c.ids_parse_special {
            streamed += &stream.push(&tok.token_to_piece(id).unwrap());
        }
        streamed += &stream.finish();
        if streamed != c.text {
            failures.push(format!("{label}: streamed decode = {streamed:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases of {dir} differ from llama.cpp:\n{}",
        failures.len(),
        fixture.cases.len(),
        failures.join("\n")
    );
    eprintln!("{dir}: all {} cases match llama.cpp", fixture.cases.len());
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_fixture(smollm2(), SMOLLM2_DIR);
}

#[test]
fn gemma3_matches_llama_cpp() {
    check_fixture(gemma3(), GEMMA3_DIR);
}

#[test]
fn smollm2_special_tokens_and_flags() {
    let tok = smollm2();
    assert_eq!(tok.model_name(), "gpt2");
    assert_eq!(tok.pre_tokenizer_name(), "smollm");
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), 2);
    assert!(!tok.add_bos());
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert!(tok.is_eog(2), "<|im_end|> ends generation");
    assert!(tok.is_eog(0), "<|endoftext|> ends generation");
    assert!(!tok.is_eog(1));
    assert!(tok.is_control(1));
    assert_eq!(tok.encode("<|im_start|>user", true)[0], 1);
    assert_ne!(tok.encode("<|im_start|>user", false)[0], 1);
    assert_eq!(tok.encode("", true), Vec::<u32>::new());
    assert!(tok.token_to_piece(49152).is_err());
    assert!(tok.decode(&[0, 49152]).is_err());
}

#[test]
fn gemma3_special_tokens_and_flags() {
    let tok = gemma3();
    assert_eq!(tok.model_name(), "llama");
    assert_eq!(tok.vocab_size(), 262144);
    assert_eq!(tok.bos(), Some(2));
    assert_eq!(tok.eos(), 1);
    assert!(tok.add_bos());
    assert!(tok.is_eog(1));
    assert!(tok.is_eog(106), "<end_of_turn> ends generation");
    assert!(!tok.is_eog(105));
    assert_eq!(tok.encode("<start_of_turn>", true), vec![105]);
    assert_ne!(tok.encode("<start_of_turn>", false), vec![105]);
    // User-defined tokens are split out even without parse_special.
    assert_eq!(tok.encode("<h1>", false), vec![184]);
    assert_eq!(tok.token_to_piece(248).unwrap(), b"\n", "<0x0A> is the newline byte");
}

#[test]
fn encoding_the_long_paragraph_is_fast() {
    for (tok, dir) in [(smollm2(), SMOLLM2_DIR), (gemma3(), GEMMA3_DIR)] {
        let fixture = fixture(dir);
        let text = &fixture.cases.iter().max_by_key(|c| c.text.len()).unwrap().text;
        assert!(text.len() >= 1500);
        let _ = tok.encode(text, true);
        let runs = 10;
        let t = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(tok.encode(std::hint::black_box(text), true));
        }
        let per = t.elapsed() / runs;
        eprintln!("{dir}: encoding {} bytes takes {per:?}", text.len());
        // Well under 10 ms in an optimized build; generous here for slow, shared CI machines.
        assert!(per.as_millis() < 100, "{dir}: encoding {} bytes took {per:?}", text.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn smollm2_round_trips_any_text(s in any::<String>()) {
        let tok = smollm2();
        let ids = tok.encode(&s, false);
        prop_assert_eq!(tok.decode(&ids).unwrap(), s.as_bytes());
        let ids = tok.encode(&s, true);
        prop_assert_eq!(tok.decode(&ids).unwrap(), s.as_bytes());
    }

    #[test]
    fn gemma3_round_trips_any_text(s in any::<String>()) {
        let tok = gemma3();
        let ids = tok.encode(&s, false);
        prop_assert_eq!(tok.decode(&ids).unwrap(), s.as_bytes());
        let ids = tok.encode(&s, true);
        prop_assert_eq!(tok.decode(&ids).unwrap(), s.as_bytes());
    }

    #[test]
    fn round_trips_text_made_of_tricky_parts(
        parts in proptest::collection::vec(
            prop_oneof![
                Just(" ".to_string()), Just("  ".to_string()), Just("\n".to_string()), Just("\r\n".to_string()),
                Just("\t".to_string()), Just("\u{a0}".to_string()), Just("\u{3000}".to_string()),
                Just("<|im_start|>".to_string()), Just("<|im_end|>".to_string()), Just("<start_of_turn>".to_string()),
                Just("<end_of_turn>".to_string()), Just("</s>".to_string()), Just("<h1>".to_string()),
                Just("'s".to_string()), Just("'LL".to_string()), Just("123".to_string()), Just("٣".to_string()),
                Just("🍕".to_string()), Just("🇫🇷".to_string()), Just("e\u{301}".to_string()), Just("\u{feff}".to_string()),
                "[a-zA-Z]{1,6}", "[0-9]{1,5}", "[!-/:-@]{1,3}", "\\PC{1,3}",
            ],
            0..24,
        )
    ) {
        let s: String = parts.concat();
        for tok in [smollm2(), gemma3()] {
            for special in [false, true] {
                let ids = tok.encode(&s, special);
                prop_assert_eq!(tok.decode(&ids).unwrap(), s.as_bytes());
            }
        }
    }
}
