//! The `gemma3` architecture (Gemma 3 text models): pre- and post-norm decoder
//! blocks with RMSNorm, per-head RMSNorm on queries and keys, NeoX-style
//! rotary embeddings with a separate base on the sliding-window layers,
//! grouped-query attention where five local (sliding-window) layers alternate
//! with one global layer, and a GeGLU feed-forward network.
//!
//! The math follows llama.cpp's `gemma3` graph, which is what the reference
//! logits come from:
//!
//! ```text
//! x = embed(token) * sqrt(n_embd)
//! for each layer:
//!     h = RMSNorm(x) * attn_norm
//!     q, k, v = h·Wq, h·Wk, h·Wv                       (head_dim from key_length)
//!     q = RMSNorm_head(q) * q_norm;  k = RMSNorm_head(k) * k_norm
//!     q, k = RoPE_neox(q, k)                           (local base 10000, global base from metadata)
//!     a = softmax((q * attn_scale)·Kᵀ) V               (local layers: p - j < window)
//!     x = x + RMSNorm(a·Wo) * post_attention_norm
//!     f = GELU_tanh(h'·Wg) ⊙ h'·Wu, with h' = RMSNorm(x) * ffn_norm
//!     x = x + RMSNorm(f·Wd) * post_ffw_norm
//! logits = (RMSNorm(x) * output_norm)·Eᵀ             (tied embeddings, optional soft-cap)
//! ```
//!
//! Gemma's RMSNorm multiplies by `1 + w`; GGUF files made by llama.cpp's
//! converter store `1 + w` already, so the weights are used as they are.

use std::sync::Arc;

use crate::arch::layers::{self, Mlp, Proj, Qkv, RmsNorm};
use crate::arch::llama::{attention_heads, vocab_size};
use crate::arch::Architecture;
use crate::attention::AttentionSpec;
use crate::batch::Sequence;
use crate::error::Result;
use crate::gguf::Gguf;
use crate::kernels;
use crate::kv::{KvLayout, KvWindow};
use crate::linear::{Linear, Precision};
use crate::runtime::{fit, Runtime};

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct Gemma3Config {
    /// Decoder blocks.
    pub n_layers: usize,
    /// Embedding width.
    pub n_embd: usize,
    /// FFN hidden width.
    pub n_ff: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimension of one head (`key_length`, not `n_embd / n_heads`).
    pub head_dim: usize,
    /// Dimensions rotated by RoPE.
    pub n_rot: usize,
    /// RoPE base of the global layers.
    pub rope_base: f32,
    /// RoPE position scale of the global layers (`1 / factor` with linear scaling).
    pub rope_scale: f32,
    /// RoPE base of the sliding-window layers.
    pub rope_base_local: f32,
    /// Sliding window of the local layers (`None`: every layer is global).
    pub window: Option<usize>,
    /// Layer `l` is local when `l % swa_period < swa_period - 1`.
    pub swa_period: usize,
    /// Multiplier applied to the queries before `q·k`.
    pub attn_scale: f32,
    /// Final logit soft-capping (`cap * tanh(logit / cap)`), if set.
    pub final_softcap: Option<f32>,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Training context length.
    pub n_ctx_train: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
}

#[derive(Debug)]
struct Block {
    attn_norm: RmsNorm,
    qkv: Qkv,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    wo: Proj,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    mlp: Mlp,
    post_ffn_norm: RmsNorm,
}

/// A loaded `gemma3` model.
#[derive(Debug)]
pub struct Gemma3 {
    gguf: Arc<Gguf>,
    /// Hyper-parameters.
    pub config: Gemma3Config,
    /// Token embeddings, also the output head (tied).
    token_embd: Linear,
    blocks: Vec<Block>,
    output_norm: RmsNorm,
    output: Proj,
}

impl Gemma3Config {
    /// Reads the `gemma3.*` hyper-parameters.
    ///
    /// Rules that are not in the metadata follow llama.cpp: local layers use
    /// RoPE base 10000 and every 6th layer is global; queries are scaled by
    /// `1/sqrt(head_dim)` (`1/sqrt(n_embd / n_heads)` for the 62-layer 27B,
    /// whose `query_pre_attn_scalar` differs).
    pub fn from_gguf(g: &Gguf) -> Result<Gemma3Config> {
        let n_layers = g.get_usize("gemma3.block_count")?;
        let n_embd = g.get_usize("gemma3.embedding_length")?;
        let (n_heads, n_kv_heads, head_dim) = attention_heads(g, "gemma3", n_embd)?;
        let n_rot = g.opt_usize("gemma3.rope.dimension_count")?.unwrap_or(head_dim).min(head_dim);
        let window = g.opt_usize("gemma3.attention.sliding_window")?.filter(|&w| w > 0);
        let swa_period = g.opt_usize("gemma3.attention.sliding_window_pattern")?.unwrap_or(6).max(1);
        let attn_scale = if n_layers == 62 {
            1.0 / ((n_embd / n_heads) as f32).sqrt()
        } else {
            1.0 / (head_dim as f32).sqrt()
        };
        Ok(Gemma3Config {
            n_layers,
            n_embd,
            n_ff: g.get_usize("gemma3.feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            n_rot: n_rot & !1,
            rope_base: g.opt_f32("gemma3.rope.freq_base")?.unwrap_or(1_000_000.0),
            rope_scale: layers::rope_scale(g, "gemma3")?,
            rope_base_local: g.opt_f32("gemma3.rope.freq_base_swa")?.unwrap_or(10_000.0),
            window,
            swa_period,
            attn_scale,
            final_softcap: g.opt_f32("gemma3.final_logit_softcapping")?.filter(|&c| c > 0.0),
            eps: g.get_f32("gemma3.attention.layer_norm_rms_epsilon")?,
            n_ctx_train: g.get_usize("gemma3.context_length")?,
            n_vocab: vocab_size(g)?,
        })
    }

    /// Whether layer `l` attends through the sliding window.
    pub fn is_local(&self, l: usize) -> bool {
        self.window.is_some() && l % self.swa_period < self.swa_period - 1
    }
}

impl Gemma3 {
    /// Loads the weights (memory-mapped, never copied) and checks every shape.
    pub fn load(gguf: Arc<Gguf>) -> Result<Gemma3> {
        let c = Gemma3Config::from_gguf(&gguf)?;
        let g = &*gguf;
        let (d, hd, eps) = (c.n_embd, c.head_dim, c.eps);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        let token_embd = Linear::load(g, "token_embd.weight", d, c.n_vocab)?;
        let blocks = (0..c.n_layers)
            .map(|i| {
                let p = format!("blk.{i}.");
                let norm = |s: &str, n: usize| RmsNorm::load(g, &format!("{p}{s}.weight"), n, eps);
                Ok(Block {
                    attn_norm: norm("attn_norm", d)?,
                    qkv: Qkv::load(g, &p, d, qd, kvd)?,
                    q_norm: norm("attn_q_norm", hd)?,
                    k_norm: norm("attn_k_norm", hd)?,
                    wo: Proj::load(g, &format!("{p}attn_output"), qd, d)?,
                    post_attn_norm: norm("post_attention_norm", d)?,
                    ffn_norm: norm("ffn_norm", d)?,
                    mlp: Mlp::load(g, &p, d, c.n_ff, false)?,
                    post_ffn_norm: norm("post_ffw_norm", d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output_norm = RmsNorm::load(g, "output_norm.weight", d, eps)?;
        let output = match g.tensor("output.weight") {
            Some(_) => Proj::load(g, "output", d, c.n_vocab)?,
            None => Proj { w: token_embd.clone(), b: None },
        };
        Ok(Gemma3 { gguf, config: c, token_embd, blocks, output_norm, output })
    }
}

impl Architecture for Gemma3 {
    fn name(&self) -> &'static str {
        "gemma3"
    }

    fn n_vocab(&self) -> usize {
        self.config.n_vocab
    }

    fn n_ctx_train(&self) -> usize {
        self.config.n_ctx_train
    }

    fn kv_layout(&self, rt: &Runtime) -> KvLayout {
        let c = &self.config;
        // Local layers keep only their window (past 128 layers, everything is kept).
        let layers = (0..c.n_layers.min(128)).filter(|&l| c.is_local(l)).fold(0u128, |m, l| m | 1 << l);
        let window = c.window.filter(|_| c.n_layers <= 128).map(|size| KvWindow { size, layers });
        KvLayout::new(c.n_layers, c.n_kv_heads, c.head_dim, rt.kv_dtype()).with_window(window)
    }

    fn forward(&self, rt: &mut Runtime, batch: &mut [Sequence<'_>], logits: &mut Vec<f32>) -> Result<()> {
        let c = &self.config;
        let file = self.gguf.bytes();
        let mut a = layers::begin(rt, batch, c.n_vocab)?;
        let m = a.plan.rows();
        let (d, hd, nr) = (c.n_embd, c.head_dim, c.n_rot);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        // llama.cpp's stock GELU reads an f16 table; the precise path computes it exactly.
        let geglu = match rt.precision {
            Precision::Fast => gelu_mul_f16_table,
            Precision::Precise => kernels::gelu_mul,
        };

        // x = embed(token) * sqrt(n_embd).
        layers::embed(&self.token_embd, file, &a.plan.tokens, d, &mut a.x);
        kernels::scale_inplace(&mut a.x, (d as f32).sqrt());
        // RoPE angles of every row, built as ggml builds them: global, then local.
        layers::rope_table(&a.plan.positions, nr, &mut a.rope, |pos, angles| {
            kernels::rope_cache(pos, nr, c.rope_base, c.rope_scale, angles)
        });
        layers::rope_table(&a.plan.positions, nr, &mut a.rope_local, |pos, angles| {
            kernels::rope_cache(pos, nr, c.rope_base_local, 1.0, angles)
        });
        a.head.resize(hd, 0.0);
        for (l, b) in self.blocks.iter().enumerate() {
            let local = c.is_local(l);
            let spec = AttentionSpec {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: hd,
                scale: 1.0,
                window: if local { c.window } else { None },
            };

            // h = RMSNorm(x); q, k, v = h·W; q, k = RoPE(RMSNorm_head(q), RMSNorm_head(k)).
            b.attn_norm.forward(&a.x, fit(&mut a.h, m * d));
            b.qkv.project(rt, file, &mut a, m, (qd, kvd));
            let rope = if local { &a.rope_local } else { &a.rope };
            for (t, angles) in rope.chunks_exact(nr.max(1)).enumerate().take(m) {
                for q in a.q[t * qd..(t + 1) * qd].chunks_exact_mut(hd) {
                    b.q_norm.forward_inplace(q, &mut a.head);
                    kernels::rope_neox_cached(q, angles);
                    // Scaling the queries (not the scores) as llama.cpp does keeps the
                    // f16 rounding of the fast path's attention products the same.
                    kernels::scale_inplace(q, c.attn_scale);
                }
                for k in a.k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd) {
                    b.k_norm.forward_inplace(k, &mut a.head);
                    kernels::rope_neox_cached(k, angles);
                }
            }
            layers::attend(rt, &spec, batch, &a.plan, l, (&a.q, &a.k, &a.v), fit(&mut a.att, m * qd));

            // x += RMSNorm(att·Wo) * post_attention_norm.
            b.wo.forward(rt, file, &a.att, fit(&mut a.proj, m * d));
            b.post_attn_norm.forward(&a.proj, fit(&mut a.h, m * d));
            kernels::add_inplace(&mut a.x, &a.h);

            // x += RMSNorm((GELU(h·Wg) ⊙ h·Wu)·Wd) * post_ffw_norm, with h = RMSNorm(x).
            b.ffn_norm.forward(&a.x, fit(&mut a.h, m * d));
            b.mlp.forward(rt, file, &a.h, m, geglu, (&mut a.gate, &mut a.up), fit(&mut a.proj, m * d));
            b.post_ffn_norm.forward(&a.proj, fit(&mut a.h, m * d));
            kernels::add_inplace(&mut a.x, &a.h);
        }
        layers::commit(batch);

        // logits = RMSNorm(x)·Eᵀ, soft-capped, only for the rows that are wanted.
        layers::output_logits(rt, file, (&self.output_norm, &self.output), &mut a, d, logits);
        if let Some(cap) = c.final_softcap {
            for v in logits.iter_mut() {
                *v = (*v / cap).tanh() * cap;
            }
        }
        rt.act = a;
        Ok(())
    }
}

/// GeGLU with ggml's stock GELU (`GGML_GELU_FP16`): the input is rounded to
/// f16 and looked up in a 65536-entry table of the tanh-GELU of every f16
/// value, rounded to f16; inputs at or beyond ±10 bypass the table (0 and `x`).
fn gelu_mul_f16_table(gate: &mut [f32], up: &[f32]) {
    use half::f16;
    let table = gelu_f16_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            table[f16::from_f32(x).to_bits() as usize] * u
        };
    }
}

/// The GELU of every f16 value, rounded to f16 and stored as f32 (256 KiB),
/// built once.
fn gelu_f16_table() -> &'static [f32] {
    use half::f16;
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(kernels::gelu_tanh_f32(f16::from_bits(bits).to_f32())).to_f32())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table gives the bits of the direct computation for every f16 input
    /// (and the bypass beyond ±10).
    #[test]
    fn gelu_table_equals_direct_computation() {
        use half::f16;
        let xs: Vec<f32> = (0..=u16::MAX)
            .map(|b| f16::from_bits(b).to_f32())
            .filter(|x| x.is_finite())
            .chain([-10.5, 10.5, 0.123_456_7, -3.333_333])
            .collect();
        let mut gate = xs.clone();
        let up: Vec<f32> = xs.iter().map(|x| 1.0 + x.abs().min(4.0)).collect();
        gelu_mul_f16_table(&mut gate, &up);
        for ((&x, &u), &got) in xs.iter().zip(&up).zip(&gate) {
            let want = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x * u
            } else {
                let xr = f16::from_f32(x).to_f32();
                f16::from_f32(kernels::gelu_tanh_f32(xr)).to_f32() * u
            };
            assert_eq!(got.to_bits(), want.to_bits(), "x = {x}");
        }
    }
}
