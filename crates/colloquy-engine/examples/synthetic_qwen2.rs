//! Bench tooling: writes a synthetic `qwen2` model (random weights) with a
//! real header's vocabulary and chat template, at a named shape.
//!
//! ```text
//! cargo run --release -p colloquy-engine --example synthetic_qwen2 -- HEADER.gguf {tiny|tiny256|1.5b} OUT.gguf [f32|f16|q8_0]
//! ```
//!
//! `scripts/bench/synthetic-1.5b.sh` runs it and quantizes the result with
//! llama.cpp's `llama-quantize`.

use colloquy_engine::gguf::Gguf;
use colloquy_engine::kernels::GgmlType;
use colloquy_engine::synthetic::{qwen2_like, Qwen2Shape};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [header, shape, out, rest @ ..] = args.as_slice() else {
        return Err("usage: synthetic_qwen2 HEADER.gguf {tiny|tiny256|1.5b} OUT.gguf [f32|f16|q8_0]".into());
    };
    let shape = match shape.as_str() {
        "tiny" => Qwen2Shape::TINY,
        // K-quant and IQ4_XS rows need widths that are multiples of 256.
        "tiny256" => Qwen2Shape { n_embd: 256, n_layer: 2, n_head: 4, n_head_kv: 2, n_ff: 512, n_ctx: 256 },
        "1.5b" => Qwen2Shape::QWEN2_5_1_5B,
        other => return Err(format!("unknown shape {other:?}: use tiny, tiny256 or 1.5b").into()),
    };
    let weights = match rest.first().map(String::as_str).unwrap_or("f16") {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        "q8_0" => GgmlType::Q8_0,
        other => return Err(format!("unknown weight type {other:?}: use f32, f16 or q8_0").into()),
    };
    let header = Gguf::open_vocab_only(header)?;
    qwen2_like(&header, &shape, weights, 1)?.write(out)?;
    eprintln!("wrote {out}");
    Ok(())
}
