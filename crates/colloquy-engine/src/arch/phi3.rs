//! The `phi3` architecture (Phi-3, Phi-3.5, Phi-4 mini): the llama decoder
//! with one fused `attn_qkv` projection, one fused `ffn_up` holding the gate
//! (first half) and up (second half) projections, NeoX-style RoPE, and
//! queries scaled by `1/sqrt(head_dim)` before `q·K` as llama.cpp does. See
//! [`crate::arch::llama`] for the forward pass.
//!
//! Like llama.cpp, the sliding window in the metadata is ignored (llama.cpp
//! disables Phi-3 SWA). LongRoPE files (`rope_factors_long`/`_short`, the
//! 128k-context models) are refused with [`crate::Error::UnsupportedFeature`].

use std::sync::Arc;

use crate::arch::llama::{Family, Llama, RopeStyle};
use crate::error::Result;
use crate::gguf::Gguf;

/// Phi-3's differences from llama.
pub const PHI3: Family =
    Family { arch: "phi3", rope: RopeStyle::Neox, qk_norm: false, fused_gate_up: true, prescale_q: true };

/// Loads a `phi3` model.
pub fn load(gguf: Arc<Gguf>) -> Result<Llama> {
    Llama::load_family(gguf, &PHI3)
}
