//! Weight matrices and the matmul that applies them.
//!
//! `y[t][i] = Σ_k W[i][k] · x[t][k]`. Threads split the output features `i`,
//! never the sum over `k`, and every `(t, i)` dot product runs the same kernel
//! sequence whatever `m` is, so the result is batch- and thread-invariant.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kernels::{self, GgmlType, PackedWeights, PACK_ROWS};
use crate::pool::{chunk_size, DisjointSlice, ThreadPool};

/// How matmuls and the KV cache compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// Activations quantized to 8 bits for the integer dot products, f16 KV cache
    /// (what llama.cpp does).
    #[default]
    Fast,
    /// Weights dequantized to f32, f32 activations and f32 KV cache: the reference
    /// path for checking the architecture's math.
    Precise,
}

/// A 2-D weight tensor stored in the GGUF: `n_out` rows of `n_in` elements.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub ty: GgmlType,
    /// Output features (rows).
    pub n_out: usize,
    /// Input features (row length).
    pub n_in: usize,
    offset: usize,
    row_bytes: usize,
    /// The same weights regrouped for the fast kernels (Q4_0, Q4_1, Q5_0, Q8_0,
    /// IQ4_NL, Q4_K, Q5_K, Q6_K).
    packed: Option<Arc<PackedWeights>>,
}

impl Linear {
    /// Looks up tensor `name` and checks that it is `n_out × n_in`.
    pub fn load(gguf: &Gguf, name: &str, n_in: usize, n_out: usize) -> Result<Linear> {
        let info = gguf.tensor(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let want = [n_in as u64, n_out as u64];
        if info.dims != want {
            return Err(Error::TensorShape {
                tensor: name.to_string(),
                expected: want.to_vec(),
                found: info.dims.clone(),
            });
        }
        if !info.ty.can_dot() {
            return Err(Error::UnknownTensorType { tensor: name.to_string(), type_id: info.ty.id() });
        }
        let row_bytes = info.ty.row_bytes(n_in).ok_or_else(|| {
            Error::GgufCorrupt(format!("{name}: row length {n_in} is not a whole number of blocks"))
        })?;
        let mut linear = Linear {
            name: name.to_string(),
            ty: info.ty,
            n_out,
            n_in,
            offset: info.offset as usize,
            row_bytes,
            packed: None,
        };
        if PackedWeights::supports(info.ty) {
            // The file's pages are dropped as they are repacked, so the peak
            // resident memory never holds both copies of a large matrix.
            let release =
                |r: std::ops::Range<usize>| gguf.release_range(info.offset as usize + r.start, r.len());
            let packed =
                PackedWeights::pack_releasing(info.ty, gguf.tensor_data(info), n_out, n_in, release)?;
            linear.packed = Some(Arc::new(packed));
            gguf.release_tensor(info);
        }
        Ok(linear)
    }

    /// Whether the fast path reads a repacked copy instead of the file's bytes.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// The raw bytes of row `i`, from the model file's bytes.
    pub fn row<'a>(&self, file: &'a [u8], i: usize) -> &'a [u8] {
        let start = self.offset + i * self.row_bytes;
        &file[start..start + self.row_bytes]
    }

    /// Dequantizes row `i` into `out` (`n_in` values), exactly as ggml does.
    pub fn dequantize_row(&self, file: &[u8], i: usize, out: &mut [f32]) {
        checked(kernels::dequantize_row(self.ty, self.row(file, i), out));
    }
}

/// Reusable buffers for [`matmul`].
#[derive(Debug, Default)]
pub struct MatmulScratch {
    xq: Vec<u8>,
    rows: Vec<Mutex<Vec<f32>>>,
}

/// `out[t][i] = W[i] · x[t]` for `m = x.len() / n_in` rows of `x`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &ThreadPool,
    scratch: &mut MatmulScratch,
    precision: Precision,
    file: &[u8],
    w: &Linear,
    x: &[f32],
    out: &mut [f32],
) {
    matmul_many(pool, scratch, precision, file, x, &mut [(w, out)]);
}

/// [`matmul`] of one input by several weights (q, k and v; gate and up): the
/// input is quantized once for all the weights that read the same activation type.
pub fn matmul_many(
    pool: &ThreadPool,
    scratch: &mut MatmulScratch,
    precision: Precision,
    file: &[u8],
    x: &[f32],
    jobs: &mut [(&Linear, &mut [f32])],
) {
    while scratch.rows.len() < pool.n_threads() {
        scratch.rows.push(Mutex::new(Vec::new()));
    }
    if precision == Precision::Precise {
        for (w, out) in jobs.iter_mut() {
            matmul_precise(pool, &scratch.rows, file, w, x, out);
        }
        return;
    }
    // Consecutive weights that read the same activation type share one
    // quantization of the input and one parallel section.
    let mut i = 0;
    while i < jobs.len() {
        let activation = |w: &Linear| (w.ty.vec_dot_type(), w.n_in);
        let first = activation(jobs[i].0);
        let same = jobs[i..].iter().take_while(|(w, _)| activation(w) == first).count();
        let j = i + same.min(MAX_FUSED);
        let m = x.len() / jobs[i].0.n_in;
        quantize_input(pool, &mut scratch.xq, jobs[i].0, x);
        matmul_fast(pool, &scratch.rows, file, &mut jobs[i..j], &scratch.xq, m);
        i = j;
    }
}

/// Quantizes the rows of `x` to the activation type of `w` (rows split over the threads).
fn quantize_input(pool: &ThreadPool, xq: &mut Vec<u8>, w: &Linear, x: &[f32]) {
    let m = x.len() / w.n_in;
    let stride = w.ty.vec_dot_type().row_bytes(w.n_in).unwrap_or(0);
    xq.resize(m * stride, 0);
    if m < 2 * pool.n_threads() {
        for (xr, q) in x.chunks_exact(w.n_in).zip(xq.chunks_exact_mut(stride)) {
            checked(kernels::quantize_activation(w.ty, xr, q));
        }
        return;
    }
    let out = DisjointSlice::new(xq);
    pool.for_chunks(m, chunk_size(m, pool.n_threads()), &|_, rows| {
        for t in rows {
            // SAFETY: each chunk writes the rows of its own range.
            let q = unsafe { out.slice(t * stride, stride) };
            checked(kernels::quantize_activation(w.ty, &x[t * w.n_in..(t + 1) * w.n_in], q));
        }
    });
}

/// Weights that share one parallel section at most (q, k and v are three).
const MAX_FUSED: usize = 4;

/// The fast path: quantized activations `xq` against the (packed) weights of
/// every job, in one parallel section over all their groups of rows. Each
/// output row is computed as it would be alone, whichever chunk holds it.
fn matmul_fast(
    pool: &ThreadPool,
    rows: &[Mutex<Vec<f32>>],
    file: &[u8],
    jobs: &mut [(&Linear, &mut [f32])],
    xq: &[u8],
    m: usize,
) {
    // On the stack: decoding must not allocate.
    debug_assert!(jobs.len() <= MAX_FUSED);
    let mut starts = [0usize; MAX_FUSED + 1];
    let mut outs: [Option<(&Linear, DisjointSlice<'_>)>; MAX_FUSED] = [None, None, None, None];
    let n_jobs = jobs.len();
    for (k, (w, out)) in jobs.iter_mut().enumerate() {
        debug_assert_eq!(out.len(), m * w.n_out);
        starts[k + 1] = starts[k] + w.n_out.div_ceil(PACK_ROWS);
        outs[k] = Some((*w, DisjointSlice::new(out)));
    }
    let n_groups = starts[n_jobs];
    pool.for_chunks(n_groups, chunk_size(n_groups, pool.n_threads()), &|thread, groups| {
        for (k, (w, out)) in outs.iter().flatten().enumerate() {
            let (lo, hi) = (groups.start.max(starts[k]), groups.end.min(starts[k + 1]));
            if lo < hi {
                matmul_groups(&rows[thread], file, w, xq, m, lo - starts[k]..hi - starts[k], out);
            }
        }
    });
}

/// Rows `groups` (in groups of [`PACK_ROWS`]) of one weight against `xq`,
/// into the columns of those rows in every output row.
fn matmul_groups(
    tmp: &Mutex<Vec<f32>>,
    file: &[u8],
    w: &Linear,
    xq: &[u8],
    m: usize,
    groups: std::ops::Range<usize>,
    out: &DisjointSlice<'_>,
) {
    let n_out = w.n_out;
    let range = (groups.start * PACK_ROWS).min(n_out)..(groups.end * PACK_ROWS).min(n_out);
    if range.is_empty() {
        return;
    }
    let len = range.len();
    if m == 1 {
        // SAFETY: this chunk owns out[range] (one row of output).
        let o = unsafe { out.slice(range.start, len) };
        match &w.packed {
            Some(p) => checked(p.matmul(range, xq, 1, o, len)),
            None => {
                let w_bytes = &file[w.offset + range.start * w.row_bytes..w.offset + range.end * w.row_bytes];
                checked(kernels::matmul(w.ty, w_bytes, len, xq, 1, w.n_in, o, len));
            }
        }
        return;
    }
    let mut tmp = tmp.lock().unwrap_or_else(|e| e.into_inner());
    tmp.resize(m * len, 0.0);
    match &w.packed {
        Some(p) => checked(p.matmul(range.clone(), xq, m, &mut tmp, len)),
        None => {
            let w_bytes = &file[w.offset + range.start * w.row_bytes..w.offset + range.end * w.row_bytes];
            checked(kernels::matmul(w.ty, w_bytes, len, xq, m, w.n_in, &mut tmp, len));
        }
    }
    for t in 0..m {
        // SAFETY: this chunk owns columns `range` of every output row.
        let o = unsafe { out.slice(t * n_out + range.start, len) };
        o.copy_from_slice(&tmp[t * len..(t + 1) * len]);
    }
}

/// The precise path: dequantized weights against f32 activations.
fn matmul_precise(
    pool: &ThreadPool,
    rows: &[Mutex<Vec<f32>>],
    file: &[u8],
    w: &Linear,
    x: &[f32],
    out: &mut [f32],
) {
    let n_out = w.n_out;
    let out = DisjointSlice::new(out);
    pool.for_chunks(n_out, chunk_size(n_out, pool.n_threads()), &|thread, range| {
        let mut buf = rows[thread].lock().unwrap_or_else(|e| e.into_inner());
        buf.resize(w.n_in, 0.0);
        for i in range {
            w.dequantize_row(file, i, &mut buf);
            for (t, xr) in x.chunks_exact(w.n_in).enumerate() {
                // SAFETY: this thread owns column i of every row.
                unsafe { out.slice(t * n_out + i, 1)[0] = kernels::dot_f32(&buf, xr) };
            }
        }
    });
}

/// Shapes are validated when a [`Linear`] is loaded, so a kernel's length
/// check failing here is a bug in this crate, not bad input.
fn checked<T>(r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("kernel called with inconsistent shapes (a colloquy bug): {e}"),
    }
}
