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

use crate::arch::{rms_norm_rows, Architecture, LogitsFor};
use crate::attention::AttentionSpec;
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kernels::{self, GgmlType};
use crate::kv::{KvCache, KvLayout};
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

/// A projection `y = x·Wᵀ + b`; the bias is optional.
#[derive(Debug)]
struct Proj {
    w: Linear,
    b: Option<Vec<f32>>,
}

/// The query, key and value projections: three tensors, or one fused `attn_qkv`
/// whose rows are the queries', then the keys', then the values'.
#[derive(Debug)]
enum Qkv {
    Separate { q: Proj, k: Proj, v: Proj },
    Fused(Proj),
}

/// The gate and up projections of the FFN: two tensors, or one `ffn_up` whose
/// first `n_ff` rows are the gate's.
#[derive(Debug)]
enum GateUp {
    Separate { gate: Proj, up: Proj },
    Fused(Proj),
}

#[derive(Debug)]
struct Block {
    attn_norm: Vec<f32>,
    qkv: Qkv,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Proj,
    ffn_norm: Vec<f32>,
    gate_up: GateUp,
    down: Proj,
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
    output_norm: Vec<f32>,
    /// The output head; `token_embd` itself when the embeddings are tied.
    output: Proj,
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

/// [`load_vector`] for a tensor that may be absent.
fn opt_vector(g: &Gguf, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
    g.tensor(name).map(|_| load_vector(g, name, n)).transpose()
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
        let n_embd = usize_key(g, &key("embedding_length"))?;
        let n_heads = usize_key(g, &key("attention.head_count"))?;
        let n_kv_heads = opt_usize(g, &key("attention.head_count_kv"))?.unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::GgufCorrupt(format!(
                "{n_heads} query heads cannot share {n_kv_heads} KV heads"
            )));
        }
        let head_dim = match opt_usize(g, &key("attention.key_length"))? {
            Some(hd) => hd,
            None if n_embd % n_heads == 0 => n_embd / n_heads,
            None => {
                return Err(Error::GgufCorrupt(format!(
                    "{n_heads} heads do not divide embedding width {n_embd}"
                )))
            }
        };
        let v_dim = opt_usize(g, &key("attention.value_length"))?.unwrap_or(head_dim);
        if head_dim == 0 || v_dim != head_dim {
            return Err(Error::GgufCorrupt(format!("key length {head_dim} and value length {v_dim} differ")));
        }
        let n_rot = opt_usize(g, &key("rope.dimension_count"))?.unwrap_or(head_dim).min(head_dim) & !1;

        // RoPE scaling, as llama.cpp reads it: the type defaults to linear,
        // `scaling.factor` (or the older `scale_linear`) divides positions.
        let scaling = match g.get(&key("rope.scaling.type")) {
            Some(_) => g.get_str(&key("rope.scaling.type"))?.to_string(),
            None => "linear".to_string(),
        };
        let factor = match opt_f32(g, &key("rope.scaling.factor"))? {
            Some(f) => Some(f),
            None => opt_f32(g, &key("rope.scale_linear"))?,
        };
        let rope_scale = match (scaling.as_str(), factor) {
            ("none", _) => 1.0,
            ("linear", Some(f)) if f != 0.0 => 1.0 / f,
            ("linear", _) => 1.0,
            (other, _) => {
                return Err(Error::UnsupportedFeature(format!(
                    "{} RoPE scaling type {other:?} (colloquy implements none and linear)",
                    family.arch
                )))
            }
        };
        if g.tensor("rope_factors_long.weight").is_some() || g.tensor("rope_factors_short.weight").is_some() {
            return Err(Error::UnsupportedFeature(format!(
                "{} LongRoPE (rope_factors_long/rope_factors_short tensors)",
                family.arch
            )));
        }
        let rope_factors = opt_vector(g, "rope_freqs.weight", n_rot / 2)?;

        let token_embd =
            g.tensor("token_embd.weight").ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?;
        Ok(LlamaConfig {
            n_layers: usize_key(g, &key("block_count"))?,
            n_embd,
            n_ff: usize_key(g, &key("feed_forward_length"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            n_rot,
            rope_base: opt_f32(g, &key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scale,
            rope_mscale: opt_f32(g, &key("rope.scaling.attn_factor"))?.unwrap_or(1.0),
            rope_factors,
            attn_scale: opt_f32(g, &key("attention.scale"))?
                .filter(|&s| s != 0.0)
                .unwrap_or(1.0 / (head_dim as f32).sqrt()),
            eps: g.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            n_ctx_train: usize_key(g, &key("context_length"))?,
            n_vocab: token_embd.dims.get(1).copied().unwrap_or(0) as usize,
        })
    }
}

impl Proj {
    /// `<name>.weight` (`n_out × n_in`) and, if the file has it, `<name>.bias`.
    fn load(g: &Gguf, name: &str, n_in: usize, n_out: usize) -> Result<Proj> {
        Ok(Proj {
            w: Linear::load(g, &format!("{name}.weight"), n_in, n_out)?,
            b: opt_vector(g, &format!("{name}.bias"), n_out)?,
        })
    }

    /// `out = x·Wᵀ + b`, row by row.
    fn apply(&self, rt: &mut Runtime, file: &[u8], x: &[f32], out: &mut [f32]) {
        rt.matmul(file, &self.w, x, out);
        self.add_bias(out);
    }

    /// [`apply`](Self::apply) for several projections of the same input
    /// (quantized once).
    fn apply_many<const N: usize>(rt: &mut Runtime, file: &[u8], x: &[f32], jobs: [(&Proj, &mut [f32]); N]) {
        let projs = jobs.each_ref().map(|(p, _)| *p);
        let mut linear = jobs.map(|(p, out)| (&p.w, out));
        rt.matmul_many(file, x, &mut linear);
        for (p, (_, out)) in projs.iter().zip(linear.iter_mut()) {
            p.add_bias(out);
        }
    }

    fn add_bias(&self, out: &mut [f32]) {
        if let Some(b) = &self.b {
            for row in out.chunks_exact_mut(b.len()) {
                kernels::add_inplace(row, b);
            }
        }
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
        let (d, qd, kvd) = (c.n_embd, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let token_embd = Linear::load(g, "token_embd.weight", d, c.n_vocab)?;
        let blocks = (0..c.n_layers)
            .map(|i| {
                let t = |s: &str| format!("blk.{i}.{s}");
                let qkv = if g.tensor(&t("attn_qkv.weight")).is_some() {
                    let mut fused = Proj::load(g, &t("attn_qkv"), d, qd + 2 * kvd)?;
                    if fused.b.is_none() {
                        // Older files keep separate biases next to a fused weight.
                        let parts = [("attn_q.bias", qd), ("attn_k.bias", kvd), ("attn_v.bias", kvd)]
                            .map(|(name, n)| opt_vector(g, &t(name), n));
                        if let [Ok(Some(q)), Ok(Some(k)), Ok(Some(v))] = parts {
                            fused.b = Some([q, k, v].concat());
                        }
                    }
                    Qkv::Fused(fused)
                } else {
                    Qkv::Separate {
                        q: Proj::load(g, &t("attn_q"), d, qd)?,
                        k: Proj::load(g, &t("attn_k"), d, kvd)?,
                        v: Proj::load(g, &t("attn_v"), d, kvd)?,
                    }
                };
                let (q_norm, k_norm) = if family.qk_norm {
                    (
                        Some(load_vector(g, &t("attn_q_norm.weight"), c.head_dim)?),
                        Some(load_vector(g, &t("attn_k_norm.weight"), c.head_dim)?),
                    )
                } else {
                    (None, None)
                };
                let gate_up = if family.fused_gate_up {
                    GateUp::Fused(Proj::load(g, &t("ffn_up"), d, 2 * c.n_ff)?)
                } else {
                    GateUp::Separate {
                        gate: Proj::load(g, &t("ffn_gate"), d, c.n_ff)?,
                        up: Proj::load(g, &t("ffn_up"), d, c.n_ff)?,
                    }
                };
                Ok(Block {
                    attn_norm: load_vector(g, &t("attn_norm.weight"), d)?,
                    qkv,
                    q_norm,
                    k_norm,
                    wo: Proj::load(g, &t("attn_output"), qd, d)?,
                    ffn_norm: load_vector(g, &t("ffn_norm.weight"), d)?,
                    gate_up,
                    down: Proj::load(g, &t("ffn_down"), c.n_ff, d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output_norm = load_vector(g, "output_norm.weight", d)?;
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

    fn forward(
        &self,
        rt: &mut Runtime,
        tokens: &[u32],
        kv: &mut KvCache,
        want: LogitsFor,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let (c, f) = (&self.config, self.family);
        let file = self.gguf.bytes();
        let m = tokens.len();
        let start = kv.len();
        let (d, hd, qd, kvd, nff) =
            (c.n_embd, c.head_dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_ff);
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

        // RoPE angles of every new position, built as ggml builds them.
        let nr = c.n_rot;
        let rope = fit(&mut a.rope, m * nr);
        for (t, angles) in rope.chunks_exact_mut(nr.max(1)).enumerate().take(m) {
            let factors = c.rope_factors.as_deref();
            kernels::rope_cache_ext(start + t, nr, c.rope_base, c.rope_scale, factors, c.rope_mscale, angles);
        }
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
        fit(&mut a.head, hd);
        for (l, b) in self.blocks.iter().enumerate() {
            // Attention: h = RMSNorm(x); q, k, v = h·W (+ b).
            rms_norm_rows(&a.x, &b.attn_norm, c.eps, fit(&mut a.h, m * d));
            match &b.qkv {
                Qkv::Separate { q, k, v } => {
                    let outs = [
                        (q, fit(&mut a.q, m * qd)),
                        (k, fit(&mut a.k, m * kvd)),
                        (v, fit(&mut a.v, m * kvd)),
                    ];
                    Proj::apply_many(rt, file, &a.h, outs);
                }
                Qkv::Fused(qkv) => {
                    qkv.apply(rt, file, &a.h, fit(&mut a.att, m * (qd + 2 * kvd)));
                    let (q, k, v) = (fit(&mut a.q, m * qd), fit(&mut a.k, m * kvd), fit(&mut a.v, m * kvd));
                    for (t, row) in a.att.chunks_exact(qd + 2 * kvd).enumerate() {
                        q[t * qd..(t + 1) * qd].copy_from_slice(&row[..qd]);
                        k[t * kvd..(t + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
                        v[t * kvd..(t + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
                    }
                }
            }

            // Per-head RMSNorm (Qwen3), RoPE, then into the cache.
            for t in 0..m {
                let angles = &a.rope[t * nr..(t + 1) * nr];
                for q in a.q[t * qd..(t + 1) * qd].chunks_exact_mut(hd) {
                    if let Some(w) = &b.q_norm {
                        a.head.copy_from_slice(q);
                        kernels::rms_norm(&a.head, w, c.eps, q);
                    }
                    rotate(q, angles);
                    if f.prescale_q {
                        kernels::scale_inplace(q, c.attn_scale);
                    }
                }
                for k in a.k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd) {
                    if let Some(w) = &b.k_norm {
                        a.head.copy_from_slice(k);
                        kernels::rms_norm(&a.head, w, c.eps, k);
                    }
                    rotate(k, angles);
                }
                kv.write(l, start + t, &a.k[t * kvd..(t + 1) * kvd], &a.v[t * kvd..(t + 1) * kvd]);
            }

            // x += Attn(q, K, V)·Wo (+ b).
            rt.attention(&spec, kv, l, start, &a.q, fit(&mut a.att, m * qd));
            b.wo.apply(rt, file, &a.att, fit(&mut a.proj, m * d));
            kernels::add_inplace(&mut a.x, &a.proj);

            // Feed-forward: x += (SiLU(h·Wg) ⊙ h·Wu)·Wd, with h = RMSNorm(x).
            rms_norm_rows(&a.x, &b.ffn_norm, c.eps, fit(&mut a.h, m * d));
            match &b.gate_up {
                GateUp::Separate { gate, up } => {
                    let outs = [(gate, fit(&mut a.gate, m * nff)), (up, fit(&mut a.up, m * nff))];
                    Proj::apply_many(rt, file, &a.h, outs);
                }
                GateUp::Fused(gate_up) => {
                    gate_up.apply(rt, file, &a.h, fit(&mut a.up, m * 2 * nff));
                    let gate = fit(&mut a.gate, m * nff);
                    for t in 0..m {
                        gate[t * nff..(t + 1) * nff].copy_from_slice(&a.up[2 * t * nff..(2 * t + 1) * nff]);
                        a.up.copy_within((2 * t + 1) * nff..(2 * t + 2) * nff, t * nff);
                    }
                    a.up.truncate(m * nff);
                }
            }
            kernels::silu_mul(&mut a.gate, &a.up);
            b.down.apply(rt, file, &a.gate, fit(&mut a.proj, m * d));
            kernels::add_inplace(&mut a.x, &a.proj);
        }
        kv.set_len(start + m);

        // Final norm and the output head, only for the rows that are wanted.
        let rows = want.rows(m);
        logits.resize(rows.len() * c.n_vocab, 0.0);
        if !rows.is_empty() {
            let h = fit(&mut a.h, rows.len() * d);
            rms_norm_rows(&a.x[rows.start * d..rows.end * d], &self.output_norm, c.eps, h);
            self.output.apply(rt, file, &a.h, logits);
        }
        rt.act = a;
        Ok(())
    }
}
