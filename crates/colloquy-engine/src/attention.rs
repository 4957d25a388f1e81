//! Causal grouped-query attention over the paged KV cache.
//!
//! Batch invariance: the output for a query at position `p` is computed by the
//! same sequence of operations whether `p` is decoded alone or is one query of
//! a long prefill. Keys are visited block by block in position order, scores
//! are normalized with a two-pass softmax over exactly the visible keys (masked
//! keys are skipped, never added as `-inf`), and values are accumulated in
//! position order. Threads split (query, KV head) pairs, never a sum.

use std::sync::Mutex;

use half::slice::HalfFloatSliceExt;

use crate::kernels;
use crate::kv::{KvCache, KvDtype, KvRows, BLOCK_TOKENS};
use crate::pool::{chunk_size, DisjointSlice, ThreadPool};

/// The shape and masking rules of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec {
    /// Query heads.
    pub n_heads: usize,
    /// K/V heads (each serves `n_heads / n_kv_heads` query heads).
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Multiplier applied to `q·k` (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Sliding window: a key at `j` is visible from `p` when `p - j < window`.
    pub window: Option<usize>,
}

/// Per-thread buffers, grown on demand and then reused.
#[derive(Debug, Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
}

/// Reusable buffers for [`attention`]: one set per pool thread, plus the
/// layer's keys and values as f32 rows.
#[derive(Debug, Default)]
pub struct AttentionScratch {
    threads: Vec<Mutex<Scratch>>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl AttentionScratch {
    fn ensure(&mut self, n_threads: usize) {
        while self.threads.len() < n_threads {
            self.threads.push(Mutex::new(Scratch::default()));
        }
    }
}

/// Computes attention for `m` queries at positions `start..start + m`.
///
/// `q` is `[m][n_heads * head_dim]`; `out` has the same shape. K/V for every
/// position up to `start + m - 1` must already be in `kv` for `layer`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    scratch: &mut AttentionScratch,
    spec: &AttentionSpec,
    kv: &KvCache,
    layer: usize,
    start: usize,
    q: &[f32],
    out: &mut [f32],
) {
    let qd = spec.n_heads * spec.head_dim;
    let m = q.len() / qd;
    debug_assert_eq!(out.len(), q.len());
    // A task is one query position and a run of query heads that share a KV
    // head. Sharing saves converting K/V rows once per head; with few queries
    // (decoding) single heads keep every thread busy. Each head's result is the
    // same either way.
    let group = spec.n_heads / spec.n_kv_heads;
    let per_task = if m * spec.n_kv_heads >= 2 * pool.n_threads() { group } else { 1 };
    let tasks = m * spec.n_heads / per_task;
    scratch.ensure(pool.n_threads());
    // Convert the visible K/V rows to f32 once for all queries (the conversion
    // is exact, so each query still sees the same values).
    let lo = match spec.window {
        Some(w) => (start + 1).saturating_sub(w),
        None => 0,
    };
    let end = start + m;
    let row = kv.layout().row();
    let half = kv.layout().dtype == KvDtype::F16;
    if !half {
        fit(&mut scratch.keys, (end - lo) * row);
        fit(&mut scratch.values, (end - lo) * row);
    }
    // An f16 cache is read in place (converted in registers); other types are
    // converted to f32 rows once for all queries.
    if !half {
        let keys = DisjointSlice::new(&mut scratch.keys);
        let values = DisjointSlice::new(&mut scratch.values);
        let blocks = lo / BLOCK_TOKENS..end.div_ceil(BLOCK_TOKENS);
        pool.for_chunks(blocks.len(), chunk_size(blocks.len(), pool.n_threads()), &|_, mine| {
            for b in blocks.start + mine.start..blocks.start + mine.end {
                let p0 = lo.max(b * BLOCK_TOKENS);
                let p1 = end.min((b + 1) * BLOCK_TOKENS);
                let (s0, s1) = (p0 - b * BLOCK_TOKENS, p1 - b * BLOCK_TOKENS);
                let at = (p0 - lo) * row;
                let len = (p1 - p0) * row;
                // SAFETY: each block's positions belong to one thread.
                let (k, v) = unsafe { (keys.slice(at, len), values.slice(at, len)) };
                to_f32(kv.k_rows(layer, b), s0 * row..s1 * row, k);
                to_f32(kv.v_rows(layer, b), s0 * row..s1 * row, v);
            }
        });
    }
    let scratch = &*scratch;
    let rows = if half {
        Rows::Half { kv, layer, row }
    } else {
        Rows::F32 { keys: &scratch.keys, values: &scratch.values, lo, row }
    };
    let out = DisjointSlice::new(out);
    pool.for_chunks(tasks, chunk_size(tasks, pool.n_threads()), &|thread, range| {
        let mut s = scratch.threads[thread].lock().unwrap_or_else(|e| e.into_inner());
        for task in range {
            let per_pos = spec.n_heads / per_task;
            let (t, first_head) = (task / per_pos, task % per_pos * per_task);
            let g = first_head / group;
            let at = t * qd + first_head * spec.head_dim;
            let len = per_task * spec.head_dim;
            // SAFETY: task (t, g) owns exactly these output elements.
            let o = unsafe { out.slice(at, len) };
            attend_one(&mut s, spec, &rows, start + t, g, &q[at..at + len], o);
        }
    });
}

/// One sequence's queries for [`attention_batch`]: `q` holds its queries at
/// positions `start..`, over its own cache.
#[derive(Debug, Clone, Copy)]
pub struct SeqQueries<'a> {
    /// The sequence's cache (K/V of every position up to its last query).
    pub kv: &'a KvCache,
    /// The position of its first query.
    pub start: usize,
    /// Its queries, `[m][n_heads * head_dim]`.
    pub q: &'a [f32],
}

/// [`attention`] for several sequences at once, each over its own cache;
/// `out` holds their outputs one after another. With f16 caches every
/// (query, head) task of every sequence goes to the threads in one parallel
/// section, instead of one section per sequence; each output is the one
/// [`attention`] computes for that sequence alone.
pub fn attention_batch(
    pool: &ThreadPool,
    scratch: &mut AttentionScratch,
    spec: &AttentionSpec,
    layer: usize,
    seqs: &[SeqQueries<'_>],
    out: &mut [f32],
) {
    let qd = spec.n_heads * spec.head_dim;
    let half = seqs.iter().all(|s| s.kv.layout().dtype == KvDtype::F16);
    if !half || seqs.len() < 2 {
        let mut at = 0;
        for s in seqs {
            attention(pool, scratch, spec, s.kv, layer, s.start, s.q, &mut out[at..at + s.q.len()]);
            at += s.q.len();
        }
        return;
    }
    let m: usize = seqs.iter().map(|s| s.q.len() / qd).sum();
    let group = spec.n_heads / spec.n_kv_heads;
    let per_task = if m * spec.n_kv_heads >= 2 * pool.n_threads() { group } else { 1 };
    let per_pos = spec.n_heads / per_task;
    scratch.ensure(pool.n_threads());
    let scratch = &*scratch;
    let out = DisjointSlice::new(out);
    let tasks = m * per_pos;
    pool.for_chunks(tasks, chunk_size(tasks, pool.n_threads()), &|thread, range| {
        let mut s = scratch.threads[thread].lock().unwrap_or_else(|e| e.into_inner());
        // Walk the sequences alongside the tasks (both in order).
        let (mut seq, mut first_task, mut first_row) = (0, 0, 0);
        for task in range {
            while task >= first_task + seqs[seq].q.len() / qd * per_pos {
                first_task += seqs[seq].q.len() / qd * per_pos;
                first_row += seqs[seq].q.len() / qd;
                seq += 1;
            }
            let sq = &seqs[seq];
            let local = task - first_task;
            let (t, first_head) = (local / per_pos, local % per_pos * per_task);
            let g = first_head / group;
            let at = t * qd + first_head * spec.head_dim;
            let len = per_task * spec.head_dim;
            let rows = Rows::Half { kv: sq.kv, layer, row: sq.kv.layout().row() };
            // SAFETY: task (sequence, t, g) owns exactly these output elements.
            let o = unsafe { out.slice(first_row * qd + at, len) };
            attend_one(&mut s, spec, &rows, sq.start + t, g, &sq.q[at..at + len], o);
        }
    });
}

/// Where a layer's keys and values are read from.
enum Rows<'a> {
    /// The f16 cache itself, block by block.
    Half { kv: &'a KvCache, layer: usize, row: usize },
    /// f32 copies of the rows from position `lo` on.
    F32 { keys: &'a [f32], values: &'a [f32], lo: usize, row: usize },
}

/// One query position, one KV head, and query heads that share it.
fn attend_one(
    s: &mut Scratch,
    spec: &AttentionSpec,
    rows: &Rows<'_>,
    pos: usize,
    g: usize,
    q: &[f32],
    out: &mut [f32],
) {
    let hd = spec.head_dim;
    // The query heads of this task (all or some of KV head g's group).
    let group = q.len() / hd;
    let first = match spec.window {
        Some(w) => (pos + 1).saturating_sub(w),
        None => 0,
    };
    let n_keys = pos + 1 - first;
    s.scores.resize(group * n_keys, 0.0);
    let half = matches!(rows, Rows::Half { .. });
    // With an f16 cache, llama.cpp multiplies in f16: queries and probabilities
    // are rounded to f16 before the two products. Doing the same keeps the fast
    // path close to it.
    s.q.clear();
    s.q.extend_from_slice(q);
    if half {
        round_f16(&mut s.q);
    }

    for h in 0..group {
        let qh = &s.q[h * hd..(h + 1) * hd];
        let sc = &mut s.scores[h * n_keys..(h + 1) * n_keys];
        // Scores in position order; each key's dot is independent of the others.
        match *rows {
            Rows::Half { kv, layer, row } => for_each_block(first, pos, |b, lo, hi| {
                let KvRows::F16(r) = kv.k_rows(layer, b) else { return };
                let kj = b * BLOCK_TOKENS + lo - first;
                kernels::scores_f16(qh, &r[lo * row + g * hd..], row, spec.scale, &mut sc[kj..kj + hi - lo]);
            }),
            Rows::F32 { keys, lo, row, .. } => {
                let base = (first - lo) * row + g * hd;
                kernels::scores_f32(qh, &keys[base..], row, spec.scale, sc);
            }
        }
        // Two-pass softmax, summed in position order.
        let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for x in sc.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in sc.iter_mut() {
            *x *= inv;
        }
        if half {
            round_f16(sc);
        }
        // Weighted sum of values, in position order.
        let o = &mut out[h * hd..(h + 1) * hd];
        o.fill(0.0);
        match *rows {
            Rows::Half { kv, layer, row } => for_each_block(first, pos, |b, lo, hi| {
                let KvRows::F16(r) = kv.v_rows(layer, b) else { return };
                let kj = b * BLOCK_TOKENS + lo - first;
                kernels::weighted_sum_f16(&sc[kj..kj + hi - lo], &r[lo * row + g * hd..], row, o);
            }),
            Rows::F32 { values, lo, row, .. } => {
                let base = (first - lo) * row + g * hd;
                kernels::weighted_sum_f32(sc, &values[base..], row, o);
            }
        }
    }
}

/// Calls `f(block, lo, hi)` for the in-block slot ranges covering positions `first..=last`.
fn for_each_block(first: usize, last: usize, mut f: impl FnMut(usize, usize, usize)) {
    for b in first / BLOCK_TOKENS..=last / BLOCK_TOKENS {
        let lo = first.max(b * BLOCK_TOKENS) - b * BLOCK_TOKENS;
        let hi = (last + 1).min((b + 1) * BLOCK_TOKENS) - b * BLOCK_TOKENS;
        f(b, lo, hi);
    }
}

/// Converts elements `range` of stored K or V rows to f32.
fn to_f32(rows: KvRows<'_>, range: std::ops::Range<usize>, dst: &mut [f32]) {
    match rows {
        KvRows::F16(r) => r[range].convert_to_f32_slice(dst),
        KvRows::F32(r) => dst.copy_from_slice(&r[range]),
        KvRows::Q8_0(r) => {
            let q = &r[range.start / 32 * 34..range.end / 32 * 34];
            let _ = kernels::dequantize_row(kernels::GgmlType::Q8_0, q, dst);
        }
    }
}

fn fit(v: &mut Vec<f32>, n: usize) {
    v.resize(n, 0.0);
}

/// Rounds each value to the nearest f16 (vectorized through F16C when available).
fn round_f16(x: &mut [f32]) {
    let mut buf = [half::f16::ZERO; 64];
    for chunk in x.chunks_mut(64) {
        let h = &mut buf[..chunk.len()];
        h.convert_from_f32_slice(chunk);
        h.convert_to_f32_slice(chunk);
    }
}
