//! The `llama` architecture (Llama 2/3, SmolLM, Mistral) and the families that
//! differ from it only in details (Qwen2, Qwen3, Phi-3): pre-norm decoder
//! blocks with RMSNorm, rotary position embeddings, grouped-query attention
//! and a SwiGLU feed-forward network.
//!
//! The math follows llama.cpp's `llama`, `qwen2`, `qwen3` and `phi3` graphs:
//!
//! ```text
//! x = embed(token)
//! for each layer:
//!     h = RMSNorm(x) * attn_norm
//!     q, k, v = h·Wq + bq, h·Wk + bk, h·Wv + bv      (biases if present: Qwen2; one fused Wqkv: Phi-3)
//!     q = RMSNorm_head(q) * q_norm                   (Qwen3, and the same for k)
//!     q, k = RoPE(q, k)                              (adjacent pairs for llama, split halves for
//!                                                     NeoX-style families; Llama 3 frequency factors)
//!     x = x + softmax(q·Kᵀ / sqrt(head_dim))·V·Wo
//!     h = RMSNorm(x) * ffn_norm
//!     x = x + (SiLU(h·Wg) ⊙ h·Wu)·Wd                 (Wg and Wu fused into one Wup: Phi-3)
//! logits = (RMSNorm(x) * output_norm)·Wout          (Wout = the embeddings when tied)
//! ```
//!
//! A family is a [`Family`] value: its GGUF name and which of the optional
//! steps it takes. Biases and a fused Wqkv are used wherever the file has
//! them, as llama.cpp does.

use std::sync::Arc;

use crate::arch::layers::{self, opt_vector, Mlp, Proj, Qkv, RmsNorm};
use crate::arch::Architecture;
use crate::attention::AttentionSpec;
use crate::batch::Sequence;
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kernels;
use crate::kv::KvLayout;
use crate::linear::Linear;
use crate::runtime::{fit, Runtime};

/// How RoPE pairs up the dimensions of a head (llama.cpp's `llama_model_rope_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])`: `LLAMA_ROPE_TYPE_NORM` (llama).
    Norm,
    /// Pairs `(x[i], x[i + n_rot/2])`: `LLAMA_ROPE_TYPE_NEOX` (Qwen2, Qwen3, Phi-3).
    Neox,
}

/// What one llama-like family changes in the shared decoder.
#[derive(Debug)]
pub struct Family {
    /// The GGUF `general.architecture`, also the prefix of its metadata keys.
    pub arch: &'static str,
    /// How RoPE pairs dimensions.
    pub rope: RopeStyle,
    /// Per-head RMSNorm of queries and keys before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// Gate and up projections stored as one `ffn_up` of `2 * n_ff` rows, gate first.
    pub fused_gate_up: bool,
    /// The queries are multiplied by `1/sqrt(head_dim)` before `q·K` instead of
    /// the scores after it (same math; it changes the rounding of an f16 KV path).
    pub prescale_q: bool,
}

/// Llama 2/3, Mistral, SmolLM.
pub const LLAMA: Family =
    Family { arch: "llama", rope: RopeStyle::Norm, qk_norm: false, fused_gate_up: false, prescale_q: false };

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
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
    /// Dimension of one head (`attention.key_length`, else `n_embd / n_heads`).
    pub head_dim: usize,
    /// Dimensions rotated by RoPE.
    pub n_rot: usize,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// RoPE position scale (`1 / factor` with linear scaling, else 1).
    pub rope_scale: f32,
    /// RoPE cos/sin multiplier (`rope.scaling.attn_factor`, else 1).
    pub rope_mscale: f32,
    /// Per-pair RoPE frequency divisors (Llama 3's `rope_freqs.weight`).
    pub rope_factors: Option<Vec<f32>>,
    /// Multiplier of `q·k` (`attention.scale`, else `1/sqrt(head_dim)`).
    pub attn_scale: f32,
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
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    wo: Proj,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

/// A loaded model of a llama-like family.
#[derive(Debug)]
pub struct Llama {
    gguf: Arc<Gguf>,
    family: &'static Family,
    /// Hyper-parameters.
    pub config: LlamaConfig,
    token_embd: Linear,
    blocks: Vec<Block>,
    output_norm: RmsNorm,
    /// The output head; `token_embd` itself when the embeddings are tied.
    output: Proj,
}

/// The query and KV head counts and the head width, checked as llama.cpp
/// checks them: `(n_heads, n_kv_heads, head_dim)`.
pub(crate) fn attention_heads(g: &Gguf, arch: &str, n_embd: usize) -> Result<(usize, usize, usize)> {
    let key = |k: &str| format!("{arch}.{k}");
    let n_heads = g.get_usize(&key("attention.head_count"))?;
    let n_kv_heads = g.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(n_heads);
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(Error::GgufCorrupt(format!("{n_heads} query heads cannot share {n_kv_heads} KV heads")));
    }
    let head_dim = match g.opt_usize(&key("attention.key_length"))? {
        Some(hd) => hd,
        None if n_embd.is_multiple_of(n_heads) => n_embd / n_heads,
        None => {
            return Err(Error::GgufCorrupt(format!("{n_heads} heads do not divide embedding width {n_embd}")))
        }
    };
    let v_dim = g.opt_usize(&key("attention.value_length"))?.unwrap_or(head_dim);
    if head_dim == 0 || v_dim != head_dim {
        return Err(Error::GgufCorrupt(format!("key length {head_dim} and value length {v_dim} differ")));
    }
    Ok((n_heads, n_kv_heads, head_dim))
}

/// The vocabulary size: the rows of `token_embd.weight`.
pub(crate) fn vocab_size(g: &Gguf) -> Result<usize> {
    let t = g.tensor("token_embd.weight").ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?;
    Ok(t.dims.get(1).copied().unwrap_or(0) as usize)
}

impl LlamaConfig {
    /// Reads the `llama.*` hyper-parameters.
    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig> {
        LlamaConfig::for_family(g, &LLAMA)
    }

    /// Reads the hyper-parameters of `family` (keys `<arch>.*`), with
    /// llama.cpp's defaults for the optional ones.
    pub fn for_family(g: &Gguf, family: &Family) -> Result<LlamaConfig> {
        let key = |k: &str| format!("{}.{k}", family.arch);
        let n_embd = g.get_usize(&key("embedding_length"))?;
        let (n_heads, n_kv_heads, head_dim) = attention_heads(g, family.arch, n_embd)?;
        let n_rot = g.opt_usize(&key("rope.dimension_count"))?.unwrap_or(head_dim).min(head_dim) & !1;
        let rope_scale = layers::rope_scale(g, family.arch)?;
        if g.tensor("rope_factors_long.weight").is_some() || g.tensor("rope_factors_short.weight").is_some() {
            return Err(Error::UnsupportedFeature(format!(
                "{} LongRoPE (rope_factors_long/rope_factors_short tensors)",
                family.arch
            )));
        }
        Ok(LlamaConfig {
            n_layers: g.get_usize(&key("block_count"))?,
            n_embd,
            n_ff: g.get_usize(&key("feed_forward_length"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            n_rot,
            rope_base: g.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scale,
            rope_mscale: g.opt_f32(&key("rope.scaling.attn_factor"))?.unwrap_or(1.0),
            rope_factors: opt_vector(g, "rope_freqs.weight", n_rot / 2)?,
            attn_scale: g
                .opt_f32(&key("attention.scale"))?
                .filter(|&s| s != 0.0)
                .unwrap_or(1.0 / (head_dim as f32).sqrt()),
            eps: g.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            n_ctx_train: g.get_usize(&key("context_length"))?,
            n_vocab: vocab_size(g)?,
        })
    }
}

impl Llama {
    /// Loads a `llama` model.
    pub fn load(gguf: Arc<Gguf>) -> Result<Llama> {
        Llama::load_family(gguf, &LLAMA)
    }

    /// Loads a model of `family` (memory-mapped, never copied) and checks every shape.
    pub fn load_family(gguf: Arc<Gguf>, family: &'static Family) -> Result<Llama> {
        let c = LlamaConfig::for_family(&gguf, family)?;
        let g = &*gguf;
        let (d, hd, eps) = (c.n_embd, c.head_dim, c.eps);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        let token_embd = Linear::load(g, "token_embd.weight", d, c.n_vocab)?;
        let blocks = (0..c.n_layers)
            .map(|i| {
                let p = format!("blk.{i}.");
                let t = |s: &str| format!("{p}{s}");
                let head_norm = |name: &str| match family.qk_norm {
                    true => RmsNorm::load(g, &t(name), hd, eps).map(Some),
                    false => Ok(None),
                };
                Ok(Block {
                    attn_norm: RmsNorm::load(g, &t("attn_norm.weight"), d, eps)?,
                    qkv: Qkv::load(g, &p, d, qd, kvd)?,
                    q_norm: head_norm("attn_q_norm.weight")?,
                    k_norm: head_norm("attn_k_norm.weight")?,
                    wo: Proj::load(g, &t("attn_output"), qd, d)?,
                    ffn_norm: RmsNorm::load(g, &t("ffn_norm.weight"), d, eps)?,
                    mlp: Mlp::load(g, &p, d, c.n_ff, family.fused_gate_up)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output_norm = RmsNorm::load(g, "output_norm.weight", d, eps)?;
        let output = match g.tensor("output.weight") {
            Some(_) => Proj::load(g, "output", d, c.n_vocab)?,
            None => Proj { w: token_embd.clone(), b: None },
        };
        Ok(Llama { gguf, family, config: c, token_embd, blocks, output_norm, output })
    }
}

impl Architecture for Llama {
    fn name(&self) -> &'static str {
        self.family.arch
    }

    fn n_vocab(&self) -> usize {
        self.config.n_vocab
    }

    fn n_ctx_train(&self) -> usize {
        self.config.n_ctx_train
    }

    fn kv_layout(&self, rt: &Runtime) -> KvLayout {
        KvLayout::new(self.config.n_layers, self.config.n_kv_heads, self.config.head_dim, rt.kv_dtype())
    }

    fn forward(&self, rt: &mut Runtime, batch: &mut [Sequence<'_>], logits: &mut Vec<f32>) -> Result<()> {
        let (c, f) = (&self.config, self.family);
        let file = self.gguf.bytes();
        let mut a = layers::begin(rt, batch, c.n_vocab)?;
        let m = a.plan.rows();
        let (d, hd, nr) = (c.n_embd, c.head_dim, c.n_rot);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        let rotate = match f.rope {
            RopeStyle::Norm => kernels::rope_norm_cached,
            RopeStyle::Neox => kernels::rope_neox_cached,
        };
        let spec = AttentionSpec {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: hd,
            scale: if f.prescale_q { 1.0 } else { c.attn_scale },
            window: None,
        };

        // x = embed(token); RoPE angles of every row's position, as ggml builds them.
        layers::embed(&self.token_embd, file, &a.plan.tokens, d, &mut a.x);
        layers::rope_table(&a.plan.positions, nr, &mut a.rope, |pos, angles| {
            let factors = c.rope_factors.as_deref();
            kernels::rope_cache_ext(pos, nr, c.rope_base, c.rope_scale, factors, c.rope_mscale, angles)
        });
        a.head.resize(hd, 0.0);
        for (l, b) in self.blocks.iter().enumerate() {
            // h = RMSNorm(x); q, k, v = h·W (+ b).
            b.attn_norm.forward(&a.x, fit(&mut a.h, m * d));
            b.qkv.project(rt, file, &mut a, m, (qd, kvd));

            // q, k = RoPE(RMSNorm_head(q), RMSNorm_head(k)) (the head norms: Qwen3).
            for (t, angles) in a.rope.chunks_exact(nr.max(1)).enumerate().take(m) {
                for q in a.q[t * qd..(t + 1) * qd].chunks_exact_mut(hd) {
                    if let Some(norm) = &b.q_norm {
                        norm.forward_inplace(q, &mut a.head);
                    }
                    rotate(q, angles);
                    if f.prescale_q {
                        kernels::scale_inplace(q, c.attn_scale);
                    }
                }
                for k in a.k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd) {
                    if let Some(norm) = &b.k_norm {
                        norm.forward_inplace(k, &mut a.head);
                    }
                    rotate(k, angles);
                }
            }

            // x += Attn(q, K, V)·Wo (+ b), each sequence over its own cache.
            layers::attend(rt, &spec, batch, &a.plan, l, (&a.q, &a.k, &a.v), fit(&mut a.att, m * qd));
            b.wo.forward(rt, file, &a.att, fit(&mut a.proj, m * d));
            kernels::add_inplace(&mut a.x, &a.proj);

            // x += (SiLU(h·Wg) ⊙ h·Wu)·Wd, with h = RMSNorm(x).
            b.ffn_norm.forward(&a.x, fit(&mut a.h, m * d));
            b.mlp.forward(
                rt,
                file,
                &a.h,
                m,
                kernels::silu_mul,
                (&mut a.gate, &mut a.up),
                fit(&mut a.proj, m * d),
            );
            kernels::add_inplace(&mut a.x, &a.proj);
        }
        layers::commit(batch);

        // logits = RMSNorm(x)·Wout, only for the rows that are wanted.
        layers::output_logits(rt, file, (&self.output_norm, &self.output), &mut a, d, logits);
        rt.act = a;
        Ok(())
    }
}
