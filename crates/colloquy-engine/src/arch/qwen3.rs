//! The `qwen3` architecture (dense Qwen3): the llama decoder with a per-head
//! RMSNorm of queries and keys before RoPE (`attn_q_norm`, `attn_k_norm`),
//! NeoX-style RoPE, and a head size from `qwen3.attention.key_length` that
//! need not be `n_embd / n_heads`. See [`crate::arch::llama`] for the forward pass.

use std::sync::Arc;

use crate::arch::llama::{Family, Llama, RopeStyle};
use crate::error::Result;
use crate::gguf::Gguf;

/// Qwen3's differences from llama.
pub const QWEN3: Family =
    Family { arch: "qwen3", rope: RopeStyle::Neox, qk_norm: true, fused_gate_up: false, prescale_q: false };

/// Loads a `qwen3` model.
pub fn load(gguf: Arc<Gguf>) -> Result<Llama> {
    Llama::load_family(gguf, &QWEN3)
}
