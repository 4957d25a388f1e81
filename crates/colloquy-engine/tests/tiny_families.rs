//! Every llama-like family on a tiny random-weight model, against llama.cpp.
//!
//! The models (2 layers, width 64, 4 query / 2 KV heads, F32 weights, 1024-token
//! vocabulary) and the reference logits are in `tests/fixtures/tiny/`, written by
//! `scripts/fixtures/make_tiny_models.py` and `make_tiny_expected.py`
//! (llama-cpp-python; the version is in each JSON). Each JSON has two cases over
//! the same 40 tokens: `f32-kv` (llama.cpp with an F32 K/V cache: f32 math
//! throughout, compared with the precise path) and `f16-kv` (llama.cpp's
//! default F16 cache, compared with the fast path). `<family>-q8_0.gguf` holds
//! the same weights with every matrix in Q8_0: its reference (`f16-kv` only)
//! checks the fast path's quantized, packed kernels under each family's
//! tensor layout (fused Q/K/V, fused gate/up, biases).

mod common;

use std::path::PathBuf;

use colloquy_engine::arch::LogitsFor;
use colloquy_engine::linear::Precision;
use colloquy_engine::model::{Model, ModelOptions};
use colloquy_engine::Error;
use common::{argmax, logsumexp, LogitsCase, LogitsFile};

/// How close the engine's logits must be to llama.cpp's.
struct Tolerance {
    /// Largest |Δlogit| (and |Δlog-prob|) on the reference top-10 ids.
    max: f32,
    /// Largest mean |Δlogit| over all compared values.
    mean: f64,
    /// Reference top-1/top-2 margin above which the argmax must agree.
    argmax_margin: f32,
}

/// Precise path vs llama.cpp with an F32 cache: the same f32 math, summed in
/// another order (measured: at most 1.4e-5).
const PRECISE: Tolerance = Tolerance { max: 1e-3, mean: 1e-4, argmax_margin: 0.01 };

/// Fast path (F16 cache; the weights are F32, so activations stay f32) vs
/// llama.cpp's F16 cache. Rounding to f16 turns ulp-level differences into
/// occasional f16-ulp steps (measured: at most 2.5e-3).
const FAST: Tolerance = Tolerance { max: 1e-2, mean: 1e-3, argmax_margin: 0.01 };

/// Fast path with Q8_0 weights vs llama.cpp on the same file. Both quantize
/// activations to Q8_0 and most positions agree to 1e-6, but an ulp-level
/// difference upstream (ggml's vectorized `exp` in softmax and SiLU, say) now and then
/// lands on the other side of a Q8_0 rounding step and moves that position's
/// logits by a few hundredths (measured: at most 0.16 on one position).
const FAST_Q8_0: Tolerance = Tolerance { max: 0.5, mean: 2e-2, argmax_margin: 0.5 };

fn tiny(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(file)
}

/// Loads `tests/fixtures/tiny/<stem>.gguf`.
fn load(stem: &str, precision: Precision) -> Model {
    let opts =
        ModelOptions { threads: 2, precision, n_ctx: Some(256), kv_dtype: None, ..ModelOptions::default() };
    Model::load(tiny(&format!("{stem}.gguf")), opts).unwrap_or_else(|e| panic!("{stem} loads: {e}"))
}

/// Case `case` of `tests/fixtures/tiny/<stem>.json`.
fn reference(stem: &str, case: &str) -> LogitsCase {
    let text = std::fs::read_to_string(tiny(&format!("{stem}.json"))).expect("reference JSON");
    let file: LogitsFile = serde_json::from_str(&text).expect("valid reference JSON");
    file.cases.into_iter().find(|c| c.name == case).unwrap_or_else(|| panic!("{stem}: no case {case}"))
}

/// Runs the reference tokens in one batch and compares every position's
/// top-10 logits (and their log-probabilities) with llama.cpp's; returns the
/// largest |Δlogit|.
fn compare(stem: &str, arch: &str, precision: Precision, case: &str, tol: Tolerance) -> f32 {
    let model = load(stem, precision);
    assert_eq!(model.arch().name(), arch);
    let case = reference(stem, case);
    let mut kv = model.new_kv();
    let logits = model.forward(&mut kv, &case.prompt_ids, LogitsFor::All).expect("forward");
    let n_vocab = model.n_vocab();
    assert_eq!(logits.len(), case.prompt_ids.len() * n_vocab);
    let mut failures = Vec::new();
    let mut max_abs = 0.0f32;
    let (mut sum_abs, mut compared) = (0.0f64, 0usize);
    for rec in &case.batched {
        let row = &logits[rec.pos * n_vocab..(rec.pos + 1) * n_vocab];
        let lse = logsumexp(row);
        for &(id, want) in &rec.top {
            let got = row[id as usize];
            let d = (got - want).abs();
            max_abs = max_abs.max(d);
            sum_abs += d as f64;
            compared += 1;
            if d > tol.max {
                failures.push(format!("pos {} id {id}: ours {got} llama.cpp {want} (|d| {d})", rec.pos));
            }
            let dl = ((got - lse) - (want - rec.logsumexp)).abs();
            if dl > tol.max {
                failures.push(format!("pos {} id {id}: log-prob differs by {dl}", rec.pos));
            }
        }
        if rec.margin() >= tol.argmax_margin && argmax(row) != rec.top[0].0 {
            failures.push(format!(
                "pos {}: argmax {} but llama.cpp's is {}",
                rec.pos,
                argmax(row),
                rec.top[0].0
            ));
        }
    }
    let mean = sum_abs / compared.max(1) as f64;
    eprintln!(
        "{stem:<12} {precision:?} vs llama.cpp {}: max |d| {max_abs:.2e}, mean |d| {mean:.2e}",
        case.name
    );
    if mean > tol.mean {
        failures.push(format!("mean |d| {mean:.2e} > {:.0e}", tol.mean));
    }
    assert!(
        failures.is_empty(),
        "{stem} {precision:?}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    max_abs
}

/// One batch, chunks of 7 and one token at a time give bit-identical logits.
fn batch_invariant(stem: &str, precision: Precision) {
    let model = load(stem, precision);
    let tokens = reference(stem, "f16-kv").prompt_ids;
    let n_vocab = model.n_vocab();
    let mut kv = model.new_kv();
    let whole = model.forward(&mut kv, &tokens, LogitsFor::All).unwrap();
    for chunk in [1, 7] {
        let mut kv = model.new_kv();
        let mut pieces = Vec::with_capacity(whole.len());
        for part in tokens.chunks(chunk) {
            pieces.extend(model.forward(&mut kv, part, LogitsFor::All).unwrap());
        }
        assert_eq!(pieces.len(), whole.len());
        for (pos, (a, b)) in whole.chunks(n_vocab).zip(pieces.chunks(n_vocab)).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{stem} {precision:?}: chunks of {chunk} differ from one batch at position {pos}");
        }
    }
}

macro_rules! family_tests {
    ($family:ident, $arch:literal) => {
        mod $family {
            use super::*;

            #[test]
            fn precise_matches_llama_cpp_f32_kv() {
                compare(stringify!($family), $arch, Precision::Precise, "f32-kv", PRECISE);
            }

            #[test]
            fn fast_matches_llama_cpp_f16_kv() {
                compare(stringify!($family), $arch, Precision::Fast, "f16-kv", FAST);
            }

            #[test]
            fn batch_invariant_precise() {
                batch_invariant(stringify!($family), Precision::Precise);
            }

            #[test]
            fn batch_invariant_fast() {
                batch_invariant(stringify!($family), Precision::Fast);
            }

            #[test]
            fn fast_q8_0_matches_llama_cpp() {
                let stem = concat!(stringify!($family), "-q8_0");
                compare(stem, $arch, Precision::Fast, "f16-kv", FAST_Q8_0);
            }

            #[test]
            fn batch_invariant_fast_q8_0() {
                batch_invariant(concat!(stringify!($family), "-q8_0"), Precision::Fast);
            }
        }
    };
}

family_tests!(llama3, "llama");
family_tests!(mistral, "llama");
family_tests!(qwen2, "qwen2");
family_tests!(qwen3, "qwen3");
family_tests!(phi3, "phi3");

/// A copy of a tiny model with `edit` applied to its bytes, loaded.
fn load_edited(family: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Result<Model, Error> {
    let mut bytes = std::fs::read(tiny(&format!("{family}.gguf"))).unwrap();
    edit(&mut bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edited.gguf");
    std::fs::write(&path, &bytes).unwrap();
    Model::load(&path, ModelOptions { threads: 1, ..ModelOptions::default() })
}

fn find(bytes: &[u8], pat: &[u8]) -> usize {
    bytes.windows(pat.len()).position(|w| w == pat).expect("pattern in the file")
}

#[test]
fn unknown_tensor_type_is_named() {
    // Tensor info: name | n_dims u32 | dims u64 × n_dims | type u32.
    let name = b"blk.1.attn_qkv.weight";
    let r = load_edited("phi3", |b| {
        let at = find(b, name) + name.len() + 4 + 8 * 2;
        b[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    });
    match r {
        Err(Error::UnknownTensorType { tensor, type_id: 77 }) => assert_eq!(tensor, "blk.1.attn_qkv.weight"),
        other => panic!("expected UnknownTensorType, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn unknown_architecture_is_named() {
    // general.architecture | type u32 | len u64 | "qwen3"
    let key = b"general.architecture";
    let r = load_edited("qwen3", |b| {
        let at = find(b, key) + key.len() + 12;
        b[at..at + 5].copy_from_slice(b"qwen9");
    });
    match r {
        Err(e @ Error::UnknownArchitecture(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("\"qwen9\"") && msg.contains("qwen3") && msg.contains("phi3"), "{msg}");
        }
        other => panic!("expected UnknownArchitecture, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn missing_family_tensor_is_named() {
    // Qwen3 needs its per-head norms: rename one so it is not found.
    let name = b"blk.0.attn_k_norm.weight";
    let r = load_edited("qwen3", |b| {
        let at = find(b, name);
        b[at..at + 5].copy_from_slice(b"blk.9");
    });
    match r {
        Err(Error::MissingTensor(t)) => assert_eq!(t, "blk.0.attn_k_norm.weight"),
        other => panic!("expected MissingTensor, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn unsupported_rope_scaling_is_named() {
    // qwen3.rope.scaling.type | type u32 | len u64 | "none" -> "yarn"
    let key = b"qwen3.rope.scaling.type";
    let r = load_edited("qwen3", |b| {
        let at = find(b, key) + key.len() + 12;
        assert_eq!(&b[at..at + 4], b"none");
        b[at..at + 4].copy_from_slice(b"yarn");
    });
    match r {
        Err(e @ Error::UnsupportedFeature(_)) => assert!(e.to_string().contains("\"yarn\""), "{e}"),
        other => panic!("expected UnsupportedFeature, got {:?}", other.map(|_| ())),
    }
}
