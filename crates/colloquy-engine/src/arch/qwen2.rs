//! The `qwen2` architecture (Qwen2, Qwen2.5): the llama decoder with biases
//! on the query, key and value projections (`attn_q.bias`, ...) and
//! NeoX-style RoPE. See [`crate::arch::llama`] for the forward pass; the
//! biases are picked up there because the file has them.

use std::sync::Arc;

use crate::arch::llama::{Family, Llama, RopeStyle};
use crate::error::Result;
use crate::gguf::Gguf;

/// Qwen2's differences from llama.
pub const QWEN2: Family =
    Family { arch: "qwen2", rope: RopeStyle::Neox, qk_norm: false, fused_gate_up: false, prescale_q: false };

/// Loads a `qwen2` model.
pub fn load(gguf: Arc<Gguf>) -> Result<Llama> {
    Llama::load_family(gguf, &QWEN2)
}
