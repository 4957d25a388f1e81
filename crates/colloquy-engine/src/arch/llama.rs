//! The `llama` architecture (Llama 2/3, SmolLM, Mistral): pre-norm decoder
//! blocks with RMSNorm, rotary position embeddings on interleaved pairs,
//! grouped-query attention and a SwiGLU feed-forward network.

use std::sync::Arc;

use crate::arch::{Architecture, LogitsFor};
use crate::attention::AttentionSpec;
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kernels::{self, GgmlType};
use crate::kv::{KvCache, KvLayout};
use crate::linear::Linear;
use crate::runtime::{fit, Runtime};

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
    /// Dimension of one head.
    pub head_dim: usize,
    /// Dimensions rotated by RoPE.
    pub n_rot: usize,
    /// RoPE base frequency.
    pub rope_base: f32,
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
    wo: Linear,
    ffn_norm: Vec<f32>,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// A loaded `llama` model.
#[derive(Debug)]
pub struct Llama {
    gguf: Arc<Gguf>,
    /// Hyper-parameters.
    pub config: LlamaConfig,
    token_embd: Linear,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    /// The output head; `token_embd` itself when the embeddings are tied.
    output: Linear,
}

fn usize_key(g: &Gguf, key: &str) -> Result<usize> {
    usize::try_from(g.get_u64(key)?).map_err(|_| Error::GgufCorrupt(format!("{key} is too large")))
}

/// Reads an F32 vector tensor (norm weights) of length `n`.
pub(crate) fn load_vector(g: &Gguf, name: &str, n: usize) -> Result<Vec<f32>> {
    let info = g.tensor(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
    if info.dims != [n as u64] {
        return Err(Error::TensorShape {
            tensor: name.to_string(),
            expected: vec![n as u64],
            found: info.dims.clone(),
        });
    }
    if !matches!(info.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return Err(Error::UnknownTensorType { tensor: name.to_string(), type_id: info.ty.id() });
    }
    let mut out = vec![0.0; n];
    kernels::dequantize_row(info.ty, g.tensor_data(info), &mut out)?;
    Ok(out)
}

impl LlamaConfig {
    /// Reads the `llama.*` hyper-parameters.
    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig> {
        let n_embd = usize_key(g, "llama.embedding_length")?;
        let n_heads = usize_key(g, "llama.attention.head_count")?;
        let n_kv_heads = match g.get("llama.attention.head_count_kv") {
            Some(_) => usize_key(g, "llama.attention.head_count_kv")?,
            None => n_heads,
        };
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || n_embd % n_heads != 0 {
            return Err(Error::GgufCorrupt(format!(
                "{n_heads} heads and {n_kv_heads} KV heads do not divide embedding width {n_embd}"
            )));
        }
        let head_dim = n_embd / n_heads;
        let n_rot = match g.get("llama.rope.dimension_count") {
            Some(_) => usize_key(g, "llama.rope.dimension_count")?,
            None => head_dim,
        };
        let token_embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?;
        let n_vocab = token_embd.dims.get(1).copied().unwrap_or(0) as usize;
        Ok(LlamaConfig {
            n_layers: usize_key(g, "llama.block_count")?,
            n_embd,
            n_ff: usize_key(g, "llama.feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            n_rot: n_rot.min(head_dim),
            rope_base: g.get("llama.rope.freq_base").and_then(|v| v.as_f32()).unwrap_or(10_000.0),
            eps: g.get_f32("llama.attention.layer_norm_rms_epsilon")?,
            n_ctx_train: usize_key(g, "llama.context_length")?,
            n_vocab,
        })
    }
}

impl Llama {
    /// Loads the weights (memory-mapped, never copied) and checks every shape.
    pub fn load(gguf: Arc<Gguf>) -> Result<Llama> {
        let c = LlamaConfig::from_gguf(&gguf)?;
        let g = &*gguf;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let token_embd = Linear::load(g, "token_embd.weight", c.n_embd, c.n_vocab)?;
        let blocks = (0..c.n_layers)
            .map(|i| {
                let t = |s: &str| format!("blk.{i}.{s}.weight");
                Ok(Block {
                    attn_norm: load_vector(g, &t("attn_norm"), c.n_embd)?,
                    wq: Linear::load(g, &t("attn_q"), c.n_embd, c.n_heads * c.head_dim)?,
                    wk: Linear::load(g, &t("attn_k"), c.n_embd, kv_dim)?,
                    wv: Linear::load(g, &t("attn_v"), c.n_embd, kv_dim)?,
                    wo: Linear::load(g, &t("attn_output"), c.n_heads * c.head_dim, c.n_embd)?,
                    ffn_norm: load_vector(g, &t("ffn_norm"), c.n_embd)?,
                    w_gate: Linear::load(g, &t("ffn_gate"), c.n_embd, c.n_ff)?,
                    w_up: Linear::load(g, &t("ffn_up"), c.n_embd, c.n_ff)?,
                    w_down: Linear::load(g, &t("ffn_down"), c.n_ff, c.n_embd)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output_norm = load_vector(g, "output_norm.weight", c.n_embd)?;
        let output = match g.tensor("output.weight") {
            Some(_) => Linear::load(g, "output.weight", c.n_embd, c.n_vocab)?,
            None => token_embd.clone(),
        };
        Ok(Llama { gguf, config: c, token_embd, blocks, output_norm, output })
    }
}

impl Architecture for Llama {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn n_vocab(&self) -> usize {
        self.config.n_vocab
    }

    fn n_ctx_train(&self) -> usize {
        self.config.n_ctx_train
    }

    fn kv_layout(&self, rt: &Runtime) -> KvLayout {
        KvLayout {
            n_layers: self.config.n_layers,
            n_kv_heads: self.config.n_kv_heads,
            head_dim: self.config.head_dim,
            dtype: rt.kv_dtype(),
        }
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
        let (d, qd, kvd) = (c.n_embd, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(Error::TokenOutOfRange { id: bad, vocab: c.n_vocab });
        }
        kv.reserve(start, m)?;
        let mut a = std::mem::take(&mut rt.act);

        // Token embeddings.
        let x = fit(&mut a.x, m * d);
        for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
            self.token_embd.dequantize_row(file, tok as usize, row);
        }

        let spec = AttentionSpec {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            window: None,
        };
        for (l, b) in self.blocks.iter().enumerate() {
            // Attention: h = RMSNorm(x); q, k, v = h·W; RoPE(q, k); x += Attn(q, K, V)·Wo.
            rms_norm_rows(&a.x, &b.attn_norm, c.eps, fit(&mut a.h, m * d));
            rt.matmul(file, &b.wq, &a.h, fit(&mut a.q, m * qd));
            rt.matmul(file, &b.wk, &a.h, fit(&mut a.k, m * kvd));
            rt.matmul(file, &b.wv, &a.h, fit(&mut a.v, m * kvd));
            for t in 0..m {
                let pos = start + t;
                for head in a.q[t * qd..(t + 1) * qd].chunks_exact_mut(c.head_dim) {
                    kernels::rope_norm(head, pos, c.n_rot, c.rope_base, 1.0);
                }
                for head in a.k[t * kvd..(t + 1) * kvd].chunks_exact_mut(c.head_dim) {
                    kernels::rope_norm(head, pos, c.n_rot, c.rope_base, 1.0);
                }
                kv.write(l, pos, &a.k[t * kvd..(t + 1) * kvd], &a.v[t * kvd..(t + 1) * kvd]);
            }
            rt.attention(&spec, kv, l, start, &a.q, fit(&mut a.att, m * qd));
            rt.matmul(file, &b.wo, &a.att, fit(&mut a.proj, m * d));
            kernels::add_inplace(&mut a.x, &a.proj);

            // Feed-forward: x += (SiLU(h·Wg) ⊙ h·Wu)·Wd, with h = RMSNorm(x).
            rms_norm_rows(&a.x, &b.ffn_norm, c.eps, fit(&mut a.h, m * d));
            rt.matmul(file, &b.w_gate, &a.h, fit(&mut a.gate, m * c.n_ff));
            rt.matmul(file, &b.w_up, &a.h, fit(&mut a.up, m * c.n_ff));
            kernels::silu_mul(&mut a.gate, &a.up);
            rt.matmul(file, &b.w_down, &a.gate, fit(&mut a.proj, m * d));
            kernels::add_inplace(&mut a.x, &a.proj);
        }
        kv.set_len(start + m);

        // Final norm and the output head, only for the rows that are wanted.
        let rows = match want {
            LogitsFor::None => 0..0,
            LogitsFor::Last => m.saturating_sub(1)..m,
            LogitsFor::All => 0..m,
        };
        let h = fit(&mut a.h, rows.len() * d);
        rms_norm_rows(&a.x[rows.start * d..rows.end * d], &self.output_norm, c.eps, h);
        logits.resize(rows.len() * c.n_vocab, 0.0);
        rt.matmul(file, &self.output, &a.h, logits);
        rt.act = a;
        Ok(())
    }
}

/// RMSNorm of each `w.len()`-wide row of `x`, scaled by `w`.
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        kernels::rms_norm(xr, w, eps, or);
    }
}
