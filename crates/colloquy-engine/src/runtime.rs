//! What a forward pass runs on: the thread pool, the precision, and reusable buffers.

use crate::attention::{self, AttentionScratch, AttentionSpec};
use crate::kv::{KvCache, KvDtype};
use crate::linear::{self, Linear, MatmulScratch, Precision};
use crate::pool::ThreadPool;

/// Activation buffers shared by the transformer families. They are resized per
/// call and keep their capacity, so steady decoding does not allocate.
#[derive(Debug, Default)]
pub struct Activations {
    /// The residual stream.
    pub x: Vec<f32>,
    /// The normalized residual.
    pub h: Vec<f32>,
    /// Queries.
    pub q: Vec<f32>,
    /// Keys of the new positions.
    pub k: Vec<f32>,
    /// Values of the new positions.
    pub v: Vec<f32>,
    /// Attention output, before the output projection.
    pub att: Vec<f32>,
    /// A projection back to the embedding width.
    pub proj: Vec<f32>,
    /// FFN gate.
    pub gate: Vec<f32>,
    /// FFN up.
    pub up: Vec<f32>,
    /// RoPE cos/sin of each new position.
    pub rope: Vec<f32>,
    /// The same for the sliding-window layers, where their base differs.
    pub rope_local: Vec<f32>,
    /// Where each row of the batch comes from.
    pub plan: crate::batch::BatchPlan,
    /// One head, for per-head norms.
    pub head: Vec<f32>,
}

/// The execution context of a loaded model.
#[derive(Debug)]
pub struct Runtime {
    /// Worker threads.
    pub pool: ThreadPool,
    /// Fast (quantized activations, f16 KV) or precise (f32).
    pub precision: Precision,
    /// Reusable activation buffers.
    pub act: Activations,
    /// KV storage type; `None` follows the precision (f16 fast, f32 precise).
    pub kv_override: Option<KvDtype>,
    matmul: MatmulScratch,
    attn: AttentionScratch,
}

impl Runtime {
    /// A runtime with `threads` threads.
    pub fn new(threads: usize, precision: Precision) -> Runtime {
        Runtime {
            pool: ThreadPool::new(threads),
            precision,
            act: Activations::default(),
            kv_override: None,
            matmul: MatmulScratch::default(),
            attn: AttentionScratch::default(),
        }
    }

    /// The KV storage type: the override, or the one that goes with the precision.
    pub fn kv_dtype(&self) -> KvDtype {
        if let Some(d) = self.kv_override {
            return d;
        }
        match self.precision {
            Precision::Fast => KvDtype::F16,
            Precision::Precise => KvDtype::F32,
        }
    }

    /// `out = x · Wᵀ` (see [`linear::matmul`]).
    pub fn matmul(&mut self, file: &[u8], w: &Linear, x: &[f32], out: &mut [f32]) {
        linear::matmul(&self.pool, &mut self.matmul, self.precision, file, w, x, out);
    }

    /// `out = x · Wᵀ` for several weights that read the same input, which is
    /// quantized once (see [`linear::matmul_many`]).
    pub fn matmul_many(&mut self, file: &[u8], x: &[f32], jobs: &mut [(&Linear, &mut [f32])]) {
        linear::matmul_many(&self.pool, &mut self.matmul, self.precision, file, x, jobs);
    }

    /// Causal attention of queries at `start..` (see [`attention::attention`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        spec: &AttentionSpec,
        kv: &KvCache,
        layer: usize,
        start: usize,
        q: &[f32],
        out: &mut [f32],
    ) {
        attention::attention(&self.pool, &mut self.attn, spec, kv, layer, start, q, out);
    }
}

impl Runtime {
    /// Causal attention of several sequences, each over its own cache (see
    /// [`attention::attention_batch`]).
    pub fn attention_batch(
        &mut self,
        spec: &AttentionSpec,
        layer: usize,
        seqs: &[attention::SeqQueries<'_>],
        out: &mut [f32],
    ) {
        attention::attention_batch(&self.pool, &mut self.attn, spec, layer, seqs, out);
    }
}

/// Resizes `v` to `n` elements without shrinking its capacity.
pub fn fit(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..]
}
