//! The building blocks of the decoder families, as llama.cpp's `build_norm`,
//! `build_qkv`, `build_attn` and `build_ffn` are: each hides its weight
//! layouts (fused or split projections, optional biases) and its loops over
//! rows, so that a family's forward pass reads one line per equation.
//!
//! Every block works on the rows of a whole [`Batch`](super::batch): the
//! projections see all rows at once, attention runs per sequence.

use crate::attention::{AttentionSpec, SeqQueries};
use crate::batch::{BatchPlan, Sequence};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kernels::{self, GgmlType};
use crate::linear::Linear;
use crate::runtime::{fit, Activations, Runtime};

/// Reads an F32 (or F16/BF16) vector tensor of length `n`: norm weights, biases.
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

/// [`load_vector`] for a tensor that may be absent (llama.cpp's `TENSOR_NOT_REQUIRED`).
pub(crate) fn opt_vector(g: &Gguf, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
    g.tensor(name).map(|_| load_vector(g, name, n)).transpose()
}

/// The RoPE position scale of `arch`, as llama.cpp reads it: the type defaults
/// to linear, and `scaling.factor` (or the older `scale_linear`) divides
/// positions. Any other type is refused, never silently ignored.
pub(crate) fn rope_scale(g: &Gguf, arch: &str) -> Result<f32> {
    let key = |k: &str| format!("{arch}.rope.{k}");
    let scaling = g.opt_str(&key("scaling.type"))?.unwrap_or("linear");
    let factor = match g.opt_f32(&key("scaling.factor"))? {
        Some(f) => Some(f),
        None => g.opt_f32(&key("scale_linear"))?,
    };
    match (scaling, factor) {
        ("none", _) => Ok(1.0),
        ("linear", Some(f)) if f > 0.0 => Ok(1.0 / f),
        ("linear", _) => Ok(1.0),
        (other, _) => Err(Error::UnsupportedFeature(format!(
            "{arch} RoPE scaling type {other:?} (colloquy implements none and linear)"
        ))),
    }
}

/// A projection `y = x·Wᵀ + b`; the bias is optional.
#[derive(Debug, Clone)]
pub(crate) struct Proj {
    pub w: Linear,
    pub b: Option<Vec<f32>>,
}

impl Proj {
    /// `<name>.weight` (`n_out × n_in`) and, if the file has it, `<name>.bias`.
    pub fn load(g: &Gguf, name: &str, n_in: usize, n_out: usize) -> Result<Proj> {
        Ok(Proj {
            w: Linear::load(g, &format!("{name}.weight"), n_in, n_out)?,
            b: opt_vector(g, &format!("{name}.bias"), n_out)?,
        })
    }

    /// `out = x·Wᵀ + b`, row by row.
    pub fn forward(&self, rt: &mut Runtime, file: &[u8], x: &[f32], out: &mut [f32]) {
        rt.matmul(file, &self.w, x, out);
        self.add_bias(out);
    }

    /// [`forward`](Self::forward) for several projections of the same input
    /// (quantized once).
    pub fn forward_many<const N: usize>(
        rt: &mut Runtime,
        file: &[u8],
        x: &[f32],
        jobs: [(&Proj, &mut [f32]); N],
    ) {
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

/// RMSNorm with a learned scale, over rows of its width.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    w: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    /// The norm whose scale is tensor `name`, of width `n`.
    pub fn load(g: &Gguf, name: &str, n: usize, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm { w: load_vector(g, name, n)?, eps })
    }

    /// `out = RMSNorm(x) * w`, for each row of `x`.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        for (xr, or) in x.chunks_exact(self.w.len()).zip(out.chunks_exact_mut(self.w.len())) {
            kernels::rms_norm(xr, &self.w, self.eps, or);
        }
    }

    /// Normalizes one row in place, through `scratch` (one row long).
    pub fn forward_inplace(&self, x: &mut [f32], scratch: &mut [f32]) {
        scratch.copy_from_slice(x);
        kernels::rms_norm(scratch, &self.w, self.eps, x);
    }
}

/// The query, key and value projections: three tensors, or one fused
/// `attn_qkv` whose rows are the queries', then the keys', then the values'.
#[derive(Debug)]
pub(crate) enum Qkv {
    Separate { q: Proj, k: Proj, v: Proj },
    Fused(Proj),
}

impl Qkv {
    /// The projections of block `prefix` (`blk.N.`): `attn_qkv`, or `attn_q`,
    /// `attn_k` and `attn_v`, each with its bias if the file has one.
    pub fn load(g: &Gguf, prefix: &str, d: usize, qd: usize, kvd: usize) -> Result<Qkv> {
        let t = |s: &str| format!("{prefix}{s}");
        if g.tensor(&t("attn_qkv.weight")).is_none() {
            return Ok(Qkv::Separate {
                q: Proj::load(g, &t("attn_q"), d, qd)?,
                k: Proj::load(g, &t("attn_k"), d, kvd)?,
                v: Proj::load(g, &t("attn_v"), d, kvd)?,
            });
        }
        let mut fused = Proj::load(g, &t("attn_qkv"), d, qd + 2 * kvd)?;
        if fused.b.is_none() {
            // Older files keep separate biases next to a fused weight.
            let parts = [("attn_q.bias", qd), ("attn_k.bias", kvd), ("attn_v.bias", kvd)]
                .map(|(name, n)| opt_vector(g, &t(name), n));
            if let [Ok(Some(q)), Ok(Some(k)), Ok(Some(v))] = parts {
                fused.b = Some([q, k, v].concat());
            }
        }
        Ok(Qkv::Fused(fused))
    }

    /// `q, k, v = h·W (+ b)` for the `m` rows of `a.h`, into `a.q`, `a.k`
    /// and `a.v` (`qd` and `kvd` wide); `a.att` holds the fused projection's
    /// interleaved rows.
    pub fn project(
        &self,
        rt: &mut Runtime,
        file: &[u8],
        a: &mut Activations,
        m: usize,
        (qd, kvd): (usize, usize),
    ) {
        let (h, scratch) = (&a.h, &mut a.att);
        let (q, k, v) = (fit(&mut a.q, m * qd), fit(&mut a.k, m * kvd), fit(&mut a.v, m * kvd));
        match self {
            Qkv::Separate { q: wq, k: wk, v: wv } => {
                Proj::forward_many(rt, file, h, [(wq, q), (wk, k), (wv, v)])
            }
            Qkv::Fused(w) => {
                w.forward(rt, file, h, fit(scratch, m * (qd + 2 * kvd)));
                for (t, row) in scratch.chunks_exact(qd + 2 * kvd).enumerate() {
                    q[t * qd..(t + 1) * qd].copy_from_slice(&row[..qd]);
                    k[t * kvd..(t + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
                    v[t * kvd..(t + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
                }
            }
        }
    }
}

/// The gated feed-forward network `(act(h·Wg) ⊙ h·Wu)·Wd`, with the gate and
/// up projections as two tensors or one fused `ffn_up` whose first `n_ff`
/// rows are the gate's.
#[derive(Debug)]
pub(crate) struct Mlp {
    gate_up: GateUp,
    down: Proj,
    n_ff: usize,
}

#[derive(Debug)]
enum GateUp {
    Separate { gate: Proj, up: Proj },
    Fused(Proj),
}

/// A gated activation: `gate = act(gate) ⊙ up`.
pub(crate) type GatedActivation = fn(&mut [f32], &[f32]);

impl Mlp {
    /// The FFN of block `prefix` (`blk.N.`).
    pub fn load(g: &Gguf, prefix: &str, d: usize, n_ff: usize, fused: bool) -> Result<Mlp> {
        let t = |s: &str| format!("{prefix}{s}");
        let gate_up = if fused {
            GateUp::Fused(Proj::load(g, &t("ffn_up"), d, 2 * n_ff)?)
        } else {
            GateUp::Separate {
                gate: Proj::load(g, &t("ffn_gate"), d, n_ff)?,
                up: Proj::load(g, &t("ffn_up"), d, n_ff)?,
            }
        };
        Ok(Mlp { gate_up, down: Proj::load(g, &t("ffn_down"), n_ff, d)?, n_ff })
    }

    /// `out = (act(h·Wg) ⊙ h·Wu)·Wd` for the `m` rows of `h`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        rt: &mut Runtime,
        file: &[u8],
        h: &[f32],
        m: usize,
        act: GatedActivation,
        (gate, up): (&mut Vec<f32>, &mut Vec<f32>),
        out: &mut [f32],
    ) {
        let nff = self.n_ff;
        match &self.gate_up {
            GateUp::Separate { gate: wg, up: wu } => {
                Proj::forward_many(rt, file, h, [(wg, fit(gate, m * nff)), (wu, fit(up, m * nff))]);
            }
            GateUp::Fused(w) => {
                w.forward(rt, file, h, fit(up, m * 2 * nff));
                let gate = fit(gate, m * nff);
                for t in 0..m {
                    gate[t * nff..(t + 1) * nff].copy_from_slice(&up[2 * t * nff..(2 * t + 1) * nff]);
                    up.copy_within((2 * t + 1) * nff..(2 * t + 2) * nff, t * nff);
                }
                up.truncate(m * nff);
            }
        }
        act(gate, up);
        self.down.forward(rt, file, gate, out);
    }
}

/// The rows of the token embeddings, one per batch row.
pub(crate) fn embed(table: &Linear, file: &[u8], tokens: &[u32], d: usize, x: &mut Vec<f32>) {
    for (row, &tok) in fit(x, tokens.len() * d).chunks_exact_mut(d).zip(tokens) {
        table.dequantize_row(file, tok as usize, row);
    }
}

/// RoPE cos/sin tables, `nr` values per row, one row per position.
pub(crate) fn rope_table(
    positions: &[usize],
    nr: usize,
    out: &mut Vec<f32>,
    build: impl Fn(usize, &mut [f32]),
) {
    let table = fit(out, positions.len() * nr);
    for (&pos, angles) in positions.iter().zip(table.chunks_exact_mut(nr.max(1))) {
        build(pos, angles);
    }
}

/// Causal attention of every sequence over its own cache at `layer`: the
/// new rows' K/V go into each sequence's cache, then its queries attend.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    rt: &mut Runtime,
    spec: &AttentionSpec,
    batch: &mut [Sequence<'_>],
    plan: &BatchPlan,
    layer: usize,
    (q, k, v): (&[f32], &[f32], &[f32]),
    out: &mut [f32],
) {
    let (qd, kvd) = (spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim);
    for (i, seq) in batch.iter_mut().enumerate() {
        let start = plan.seqs[i].1;
        for (t, row) in plan.rows_of(i).enumerate() {
            seq.kv.write(layer, start + t, &k[row * kvd..(row + 1) * kvd], &v[row * kvd..(row + 1) * kvd]);
        }
    }
    if let [seq] = batch {
        // One sequence (decoding alone, prefill): no list to build.
        rt.attention(spec, seq.kv, layer, plan.seqs[0].1, q, out);
        return;
    }
    let seqs: Vec<SeqQueries<'_>> = batch
        .iter()
        .enumerate()
        .map(|(i, seq)| {
            let rows = plan.rows_of(i);
            SeqQueries { kv: &*seq.kv, start: plan.seqs[i].1, q: &q[rows.start * qd..rows.end * qd] }
        })
        .collect();
    rt.attention_batch(spec, layer, &seqs, out);
}

/// Gives every sequence its new positions, once all layers have written them.
pub(crate) fn commit(batch: &mut [Sequence<'_>]) {
    for seq in batch {
        let len = seq.kv.len() + seq.tokens.len();
        seq.kv.set_len(len);
    }
}

/// Takes the runtime's activation buffers and lays out `batch` in them (see
/// [`BatchPlan::build`]); on an error the buffers go back untouched.
pub(crate) fn begin(rt: &mut Runtime, batch: &mut [Sequence<'_>], n_vocab: usize) -> Result<Activations> {
    let mut a = std::mem::take(&mut rt.act);
    match a.plan.build(batch, n_vocab) {
        Ok(()) => Ok(a),
        Err(e) => {
            rt.act = a;
            Err(e)
        }
    }
}

/// The output head over the rows that want logits: `logits = norm(x)·Wᵀ`,
/// `[wanted rows][n_vocab]` (`x` is `a.x`, rows of width `d`).
pub(crate) fn output_logits(
    rt: &mut Runtime,
    file: &[u8],
    (norm, output): (&RmsNorm, &Proj),
    a: &mut Activations,
    d: usize,
    logits: &mut Vec<f32>,
) {
    let wanted = &a.plan.wanted;
    logits.resize(wanted.len() * output.w.n_out, 0.0);
    if wanted.is_empty() {
        return;
    }
    let g = fit(&mut a.proj, wanted.len() * d);
    for (dst, &r) in g.chunks_exact_mut(d).zip(wanted) {
        dst.copy_from_slice(&a.x[r * d..(r + 1) * d]);
    }
    norm.forward(g, fit(&mut a.h, wanted.len() * d));
    output.forward(rt, file, &a.h, logits);
}
