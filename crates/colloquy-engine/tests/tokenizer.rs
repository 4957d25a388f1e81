//! Tokenizer against llama.cpp's own output (tests/fixtures/reference/*/tokenize.json),
//! plus property tests: encoding never panics and decoding gives the input back.
//!
//! The models must be in `$COLLOQUY_HOME/models/` or `~/.cache/colloquy/models/`;
//! a missing model fails the test with the command that fetches it.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use colloquy_engine::error::Error;
use colloquy_engine::gguf::Gguf;
use colloquy_engine::tokenizer::{Tokenizer, Utf8Stream};
use proptest::prelude::*;
use serde::Deserialize;

const SMOLLM2_DIR: &str = "smollm2-135m-instruct-q4_1";
const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA3_DIR: &str = "gemma-3-270m-q4_k_m";
const GEMMA3_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
const R1_DIR: &str = "deepseek-r1-header";
const R1_FILE: &str = "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.header.gguf";

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

/// DeepSeek-R1-Distill-Qwen-7B's tokenizer, read vocab-only from the 199 MB
/// header slice (the weights are not there).
fn r1() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = model_path(R1_FILE, "r1-header");
        Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("tokenizer of {}: {e}", path.display()))
    })
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
fn r1_header_matches_llama_cpp() {
    check_fixture(r1(), R1_DIR);
}

#[test]
fn r1_header_special_tokens_and_full_load() {
    let tok = r1();
    assert_eq!(tok.pre_tokenizer_name(), "deepseek-r1-qwen");
    assert_eq!(tok.token_to_id("<think>"), Some(151648));
    assert_eq!(tok.token_to_id("</think>"), Some(151649));
    assert_eq!(tok.encode("<｜User｜>", true), [151644]);
    // The whole file is a slice: a full load is the typed error it always was.
    let path = model_path(R1_FILE, "r1-header");
    match Gguf::open(&path) {
        Err(Error::TensorOutOfBounds { .. } | Error::GgufTruncated { .. }) => {}
        other => panic!("a full load of the header slice gave {other:?}"),
    }
    assert!(Gguf::open_vocab_only(&path).unwrap().tensors().is_empty());
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

/// Builds small GGUF files in memory, to test vocabularies without a model file.
mod synthetic {
    use super::*;

    pub enum Meta {
        Str(&'static str),
        Bool(bool),
        U32(u32),
        Strs(Vec<String>),
        I32s(Vec<i32>),
        F32s(Vec<f32>),
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    pub fn gguf(kvs: &[(&str, Meta)]) -> Gguf {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (key, value) in kvs {
            put_str(&mut out, key);
            match value {
                Meta::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    put_str(&mut out, s);
                }
                Meta::Bool(b) => {
                    out.extend_from_slice(&7u32.to_le_bytes());
                    out.push(u8::from(*b));
                }
                Meta::U32(v) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Meta::Strs(v) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    for s in v {
                        put_str(&mut out, s);
                    }
                }
                Meta::I32s(v) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&5u32.to_le_bytes());
                    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    for x in v {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
                Meta::F32s(v) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    for x in v {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        Gguf::from_bytes(out).expect("valid synthetic GGUF")
    }

    /// GPT-2's byte-to-character mapping, for building byte-level vocabularies.
    fn byte_char(b: u8) -> char {
        let mut n = 0;
        for x in 0..=255u8 {
            let direct = matches!(x, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
            if x == b {
                return if direct { char::from(x) } else { char::from_u32(256 + n).unwrap() };
            }
            if !direct {
                n += 1;
            }
        }
        unreachable!()
    }

    /// 256 byte tokens, then `extra` (normal), then `<|x|>` (control); returns the GGUF and `<|x|>`'s id.
    fn byte_level(pre: &'static str, extra: &[&str], merges: &[&str]) -> (Gguf, u32) {
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
        tokens.extend(extra.iter().map(|s| s.to_string()));
        tokens.push("<|x|>".to_string());
        let mut types = vec![1; tokens.len()];
        *types.last_mut().unwrap() = 3;
        let x = tokens.len() as u32 - 1;
        let g = gguf(&[
            ("tokenizer.ggml.model", Meta::Str("gpt2")),
            ("tokenizer.ggml.pre", Meta::Str(pre)),
            ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
            ("tokenizer.ggml.token_type", Meta::I32s(types)),
            ("tokenizer.ggml.merges", Meta::Strs(merges.iter().map(|s| s.to_string()).collect())),
            ("tokenizer.ggml.eos_token_id", Meta::U32(x)),
        ]);
        (g, x)
    }

    fn id(b: u8) -> u32 {
        // Byte tokens are stored in byte order.
        u32::from(b)
    }

    #[test]
    fn unknown_model_is_named() {
        let g = gguf(&[
            ("tokenizer.ggml.model", Meta::Str("bert")),
            ("tokenizer.ggml.tokens", Meta::Strs(vec!["a".into()])),
        ]);
        match Tokenizer::from_gguf(&g) {
            Err(Error::UnsupportedTokenizer(m)) => assert!(m.contains("bert"), "{m}"),
            other => panic!("expected UnsupportedTokenizer, got {other:?}"),
        }
    }

    #[test]
    fn unknown_pre_tokenizer_is_named() {
        let (g, _) = byte_level("frobnicate", &[], &[]);
        match Tokenizer::from_gguf(&g) {
            Err(Error::UnsupportedTokenizer(m)) => assert!(m.contains("frobnicate"), "{m}"),
            other => panic!("expected UnsupportedTokenizer, got {other:?}"),
        }
    }

    #[test]
    fn missing_model_key_is_reported() {
        let g = gguf(&[("tokenizer.ggml.tokens", Meta::Strs(vec!["a".into()]))]);
        assert!(
            matches!(Tokenizer::from_gguf(&g), Err(Error::MissingMetadata(k)) if k == "tokenizer.ggml.model")
        );
    }

    #[test]
    fn byte_level_bpe_merges_by_rank() {
        // "a b" ranks before "Ġ a": " ab" becomes "Ġ" + "ab", not "Ġab".
        let (g, x) = byte_level("gpt-2", &["ab", "Ġa", "Ġab"], &["a b", "Ġ a", "Ġa b"]);
        let tok = Tokenizer::from_gguf(&g).unwrap();
        let (ab, space) = (256, id(b' '));
        let space_tok = tok.token_to_id("Ġ").unwrap();
        assert_eq!(space_tok, space);
        assert_eq!(tok.encode("ab ab<|x|>", true), vec![ab, space_tok, ab, x]);
        assert_eq!(tok.decode(&tok.encode("ab ab<|x|>", false)).unwrap(), b"ab ab<|x|>");
        assert!(tok.is_eog(x));
        assert_eq!(tok.bos(), Some(11), "llama.cpp's default BOS for gpt2 vocabularies");

        // With "Ġ a" first, " ab" becomes "Ġa" then "Ġab".
        let (g, _) = byte_level("gpt-2", &["ab", "Ġa", "Ġab"], &["Ġ a", "a b", "Ġa b"]);
        let tok = Tokenizer::from_gguf(&g).unwrap();
        assert_eq!(tok.encode(" ab", false), vec![258]);
        // A non-ASCII character is its UTF-8 bytes.
        assert_eq!(tok.encode("é", false), vec![id(0xC3), id(0xA9)]);
        assert_eq!(tok.token_to_piece(id(0xC3)).unwrap(), vec![0xC3]);
    }

    #[test]
    fn sentencepiece_with_byte_fallback() {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        for t in ["▁", "a", "b", "ab", "▁ab", "<h1>"] {
            tokens.push(t.into());
            types.push(if t == "<h1>" { 4 } else { 1 });
        }
        let mut scores = vec![0.0; tokens.len()];
        let n = tokens.len();
        scores[n - 3] = -1.0; // ab
        scores[n - 2] = -0.5; // ▁ab
        let g = gguf(&[
            ("tokenizer.ggml.model", Meta::Str("llama")),
            ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
            ("tokenizer.ggml.token_type", Meta::I32s(types)),
            ("tokenizer.ggml.scores", Meta::F32s(scores)),
            ("tokenizer.ggml.add_space_prefix", Meta::Bool(false)),
        ]);
        let tok = Tokenizer::from_gguf(&g).unwrap();
        let byte = |b: u8| 3 + u32::from(b);
        let (space, ab, space_ab, h1) = (259, 262, 263, 264);
        // "▁ab" outscores "ab", so " ab" is one token; "é" is not in the vocabulary.
        assert_eq!(tok.encode(" ab", false), vec![space_ab]);
        assert_eq!(tok.encode("ab é", false), vec![ab, space, byte(0xC3), byte(0xA9)]);
        // User-defined tokens are split out even without parse_special; control tokens only with it.
        assert_eq!(tok.encode("<h1></s>", false)[0], h1);
        assert_eq!(tok.encode("<h1></s>", true), vec![h1, 2]);
        assert_eq!(tok.decode(&tok.encode("ab é <h1>x", false)).unwrap(), "ab é <h1>x".as_bytes());
        assert_eq!(tok.token_to_piece(space_ab).unwrap(), b" ab");
        assert_eq!(tok.token_to_piece(byte(b'\n')).unwrap(), b"\n");
        assert_eq!((tok.bos(), tok.eos(), tok.add_bos()), (Some(1), 2, true));
    }
}
