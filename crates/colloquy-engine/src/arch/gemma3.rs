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

use crate::arch::llama::load_vector;
use crate::arch::{rms_norm_rows, Architecture, LogitsFor};
use crate::attention::AttentionSpec;
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kernels;
use crate::kv::{KvCache, KvLayout, KvWindow};
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
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    wo: Linear,
    post_attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
    post_ffn_norm: Vec<f32>,
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
    output_norm: Vec<f32>,
    output: Linear,
}

fn usize_key(g: &Gguf, key: &str) -> Result<usize> {
    usize::try_from(g.get_u64(key)?).map_err(|_| Error::GgufCorrupt(format!("{key} is too large")))
}

fn opt_usize(g: &Gguf, key: &str) -> Result<Option<usize>> {
    g.get(key).map(|_| usize_key(g, key)).transpose()
}

fn opt_f32(g: &Gguf, key: &str) -> Result<Option<f32>> {
    g.get(key).map(|_| g.get_f32(key)).transpose()
}

impl Gemma3Config {
    /// Reads the `gemma3.*` hyper-parameters.
    ///
    /// Rules that are not in the metadata follow llama.cpp: local layers use
    /// RoPE base 10000 and every 6th layer is global; queries are scaled by
    /// `1/sqrt(head_dim)` (`1/sqrt(n_embd / n_heads)` for the 62-layer 27B,
    /// whose `query_pre_attn_scalar` differs).
    pub fn from_gguf(g: &Gguf) -> Result<Gemma3Config> {
        let n_layers = usize_key(g, "gemma3.block_count")?;
        let n_embd = usize_key(g, "gemma3.embedding_length")?;
        let n_heads = usize_key(g, "gemma3.attention.head_count")?;
        let n_kv_heads = opt_usize(g, "gemma3.attention.head_count_kv")?.unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::GgufCorrupt(format!(
                "{n_heads} query heads cannot share {n_kv_heads} KV heads"
            )));
        }
        let head_dim = opt_usize(g, "gemma3.attention.key_length")?.unwrap_or(n_embd / n_heads);
        let v_dim = opt_usize(g, "gemma3.attention.value_length")?.unwrap_or(head_dim);
        if head_dim == 0 || v_dim != head_dim {
            return Err(Error::GgufCorrupt(format!("key length {head_dim} and value length {v_dim} differ")));
        }
        let n_rot = opt_usize(g, "gemma3.rope.dimension_count")?.unwrap_or(head_dim).min(head_dim);
        let rope_scale = match opt_f32(g, "gemma3.rope.scaling.factor")? {
            Some(f) if f > 0.0 && g.get_str("gemma3.rope.scaling.type").unwrap_or("linear") == "linear" => {
                1.0 / f
            }
            _ => 1.0,
        };
        let window = opt_usize(g, "gemma3.attention.sliding_window")?.filter(|&w| w > 0);
        let swa_period = opt_usize(g, "gemma3.attention.sliding_window_pattern")?.unwrap_or(6).max(1);
        let attn_scale = if n_layers == 62 {
            1.0 / ((n_embd / n_heads) as f32).sqrt()
        } else {
            1.0 / (head_dim as f32).sqrt()
        };
        let token_embd =
            g.tensor("token_embd.weight").ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?;
        Ok(Gemma3Config {
            n_layers,
            n_embd,
            n_ff: usize_key(g, "gemma3.feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            n_rot: n_rot & !1,
            rope_base: opt_f32(g, "gemma3.rope.freq_base")?.unwrap_or(1_000_000.0),
            rope_scale,
            rope_base_local: opt_f32(g, "gemma3.rope.freq_base_swa")?.unwrap_or(10_000.0),
            window,
            swa_period,
            attn_scale,
            final_softcap: opt_f32(g, "gemma3.final_logit_softcapping")?.filter(|&c| c > 0.0),
            eps: g.get_f32("gemma3.attention.layer_norm_rms_epsilon")?,
            n_ctx_train: usize_key(g, "gemma3.context_length")?,
            n_vocab: token_embd.dims.get(1).copied().unwrap_or(0) as usize,
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
        let (qd, kvd) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let token_embd = Linear::load(g, "token_embd.weight", c.n_embd, c.n_vocab)?;
        let blocks = (0..c.n_layers)
            .map(|i| {
                let t = |s: &str| format!("blk.{i}.{s}.weight");
                Ok(Block {
                    attn_norm: load_vector(g, &t("attn_norm"), c.n_embd)?,
                    wq: Linear::load(g, &t("attn_q"), c.n_embd, qd)?,
                    wk: Linear::load(g, &t("attn_k"), c.n_embd, kvd)?,
                    wv: Linear::load(g, &t("attn_v"), c.n_embd, kvd)?,
                    q_norm: load_vector(g, &t("attn_q_norm"), c.head_dim)?,
                    k_norm: load_vector(g, &t("attn_k_norm"), c.head_dim)?,
                    wo: Linear::load(g, &t("attn_output"), qd, c.n_embd)?,
                    post_attn_norm: load_vector(g, &t("post_attention_norm"), c.n_embd)?,
                    ffn_norm: load_vector(g, &t("ffn_norm"), c.n_embd)?,
                    w_gate: Linear::load(g, &t("ffn_gate"), c.n_embd, c.n_ff)?,
                    w_up: Linear::load(g, &t("ffn_up"), c.n_embd, c.n_ff)?,
                    w_down: Linear::load(g, &t("ffn_down"), c.n_ff, c.n_embd)?,
                    post_ffn_norm: load_vector(g, &t("post_ffw_norm"), c.n_embd)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output_norm = load_vector(g, "output_norm.weight", c.n_embd)?;
        let output = match g.tensor("output.weight") {
            Some(_) => Linear::load(g, "output.weight", c.n_embd, c.n_vocab)?,
            None => token_embd.clone(),
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

    fn forward(
        &self,
        rt: &mut Runtime,
        tokens: &[u32],
        kv: &mut KvCache,
        want: LogitsFor,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let c = &self.config;
        let file = self.gguf.bytes();
        let m = tokens.len();
        let start = kv.len();
        let (d, hd, qd, kvd) = (c.n_embd, c.head_dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(Error::TokenOutOfRange { id: bad, vocab: c.n_vocab });
        }
        kv.reserve(start, m)?;
        // llama.cpp's stock GELU reads an f16 table; the precise path computes it exactly.
        let geglu = match rt.precision {
            Precision::Fast => gelu_mul_f16_table,
            Precision::Precise => kernels::gelu_mul,
        };
        let mut a = std::mem::take(&mut rt.act);

        // Token embeddings, scaled by sqrt(n_embd).
        let x = fit(&mut a.x, m * d);
        let embd_scale = (d as f32).sqrt();
        for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
            self.token_embd.dequantize_row(file, tok as usize, row);
            kernels::scale_inplace(row, embd_scale);
        }

        // RoPE angles for every new position, built as ggml builds them
        // (theta multiplied in f32, pair by pair): global, then local.
        let nr = c.n_rot;
        // Buffers kept in the runtime between calls: steady decoding does not allocate.
        let mut rope = std::mem::take(&mut a.rope);
        rope.resize(2 * m * nr, 0.0);
        let (rope_global, rope_local) = rope.split_at_mut(m * nr);
        for t in 0..m {
            let pos = start + t;
            let at = t * nr..(t + 1) * nr;
            kernels::rope_cache(pos, nr, c.rope_base, c.rope_scale, &mut rope_global[at.clone()]);
            kernels::rope_cache(pos, nr, c.rope_base_local, 1.0, &mut rope_local[at]);
        }

        let mut head = std::mem::take(&mut a.head);
        head.resize(hd, 0.0);
        for (l, b) in self.blocks.iter().enumerate() {
            let local = c.is_local(l);
            let rope = if local { &*rope_local } else { &*rope_global };
            let spec = AttentionSpec {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: hd,
                scale: 1.0,
                window: if local { c.window } else { None },
            };

            // Attention: h = RMSNorm(x); q, k, v = h·W; per-head RMSNorm and RoPE of q, k.
            rms_norm_rows(&a.x, &b.attn_norm, c.eps, fit(&mut a.h, m * d));
            rt.matmul_many(
                file,
                &a.h,
                &mut [
                    (&b.wq, fit(&mut a.q, m * qd)),
                    (&b.wk, fit(&mut a.k, m * kvd)),
                    (&b.wv, fit(&mut a.v, m * kvd)),
                ],
            );
            for t in 0..m {
                let angles = &rope[t * nr..(t + 1) * nr];
                for q in a.q[t * qd..(t + 1) * qd].chunks_exact_mut(hd) {
                    head.copy_from_slice(q);
                    kernels::rms_norm(&head, &b.q_norm, c.eps, q);
                    kernels::rope_neox_cached(q, angles);
                    // Scaling the queries (not the scores) as llama.cpp does keeps the
                    // f16 rounding of the fast path's attention products the same.
                    kernels::scale_inplace(q, c.attn_scale);
                }
                for k in a.k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd) {
                    head.copy_from_slice(k);
                    kernels::rms_norm(&head, &b.k_norm, c.eps, k);
                    kernels::rope_neox_cached(k, angles);
                }
                kv.write(l, start + t, &a.k[t * kvd..(t + 1) * kvd], &a.v[t * kvd..(t + 1) * kvd]);
            }
            rt.attention(&spec, kv, l, start, &a.q, fit(&mut a.att, m * qd));

            // x += RMSNorm(att·Wo) * post_attention_norm.
            rt.matmul(file, &b.wo, &a.att, fit(&mut a.proj, m * d));
            rms_norm_rows(&a.proj, &b.post_attn_norm, c.eps, fit(&mut a.h, m * d));
            kernels::add_inplace(&mut a.x, &a.h);

            // Feed-forward: x += RMSNorm((GELU(h·Wg) ⊙ h·Wu)·Wd) * post_ffw_norm, h = RMSNorm(x).
            rms_norm_rows(&a.x, &b.ffn_norm, c.eps, fit(&mut a.h, m * d));
            rt.matmul_many(
                file,
                &a.h,
                &mut [(&b.w_gate, fit(&mut a.gate, m * c.n_ff)), (&b.w_up, fit(&mut a.up, m * c.n_ff))],
            );
            geglu(&mut a.gate, &a.up);
            rt.matmul(file, &b.w_down, &a.gate, fit(&mut a.proj, m * d));
            rms_norm_rows(&a.proj, &b.post_ffn_norm, c.eps, fit(&mut a.h, m * d));
            kernels::add_inplace(&mut a.x, &a.h);
        }
        kv.set_len(start + m);

        // Final norm and the output head, only for the rows that are wanted.
        let rows = want.rows(m);
        logits.resize(rows.len() * c.n_vocab, 0.0);
        if !rows.is_empty() {
            let h = fit(&mut a.h, rows.len() * d);
            rms_norm_rows(&a.x[rows.start * d..rows.end * d], &self.output_norm, c.eps, h);
            rt.matmul(file, &self.output, &a.h, logits);
            if let Some(cap) = c.final_softcap {
                for v in logits.iter_mut() {
                    *v = (*v / cap).tanh() * cap;
                }
            }
        }
        a.rope = rope;
        a.head = head;
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
