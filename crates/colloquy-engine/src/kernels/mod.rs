//! Quantized CPU kernels: ggml block formats, exact dequantization,
//! activation quantization, dot products (portable and AVX2) and the f32 row
//! operations a transformer needs.
//!
//! # Formats
//! Weights and activations travel as raw little-endian bytes laid out exactly
//! like ggml's blocks. A dot product takes a weight row of type `ty` and an
//! activation row already converted to `ty.vec_dot_type()` with
//! [`quantize_row`] (for F32 weights that is just the f32 bytes).
//!
//! # Determinism
//! Every dot product is computed by one fixed sequence of float operations
//! that depends only on the two rows: never on how many rows are computed
//! together ([`vec_dot_rows`], [`matmul`] and [`PackedWeights::matmul`]
//! return, bit for bit, what [`vec_dot`] returns for each pair) nor on
//! threads. For the quantized types the sequence is also the same on every
//! [`Backend`]: each block's integer dot is exact, and the f32 steps that
//! scale and accumulate it block by block are fixed (see `blocks`), so
//! scalar, AVX2 and AVX-VNNI results are bit-identical. The portable F32,
//! F16 and BF16 dots follow the AVX2 kernels' lanes and fused multiply-adds,
//! so they are bit-identical across backends too.
//! The backend is chosen once per process ([`Backend::active`]).
//!
//! # Speed
//! For matrix products prefer [`matmul`] (tiles of 4 weight rows for one
//! activation row, 4 activation rows per weight row otherwise), or repack
//! weights once with [`PackedWeights::pack`] (Q4_0, Q4_1, Q5_0, Q8_0, IQ4_NL,
//! Q4_K, Q5_K, Q6_K, IQ4_XS), whose kernels
//! handle 8 rows per SIMD operation and are 2-3x faster again.

mod attend;
mod backend;
pub mod blocks;
mod dispatch;
mod ops;
mod packed;
mod packed_iq4xs;
mod packed_k;
mod packed_q6k;
mod prep;
mod quantize;
mod types;

#[cfg(target_arch = "x86_64")]
mod dot_avx2;
#[cfg(target_arch = "x86_64")]
mod dot_avx2_k;
#[cfg(target_arch = "x86_64")]
mod packed_avx2;
#[cfg(target_arch = "x86_64")]
mod quantize_avx2;

pub use backend::{Backend, Kernels};
pub use ops::{
    add_inplace, f16_to_f32_row, f32_to_f16_row, gelu_mul, gelu_tanh, gelu_tanh_f32, mul_inplace, rms_norm,
    rope_cache, rope_cache_ext, rope_neox, rope_neox_cached, rope_norm, rope_norm_cached, scale_inplace,
    silu, silu_f32, silu_mul, softmax_inplace,
};
pub use packed::{PackedWeights, PACK_ROWS};
pub use types::{GgmlType, QK32, QK_K};

use crate::error::{Error, Result};

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

fn row_len(ty: GgmlType, n: usize) -> Result<usize> {
    ty.row_bytes(n).ok_or_else(|| {
        invalid(format!("{n} elements is not a whole number of {ty} blocks ({} per block)", ty.block_size()))
    })
}

/// Dequantizes `dst.len()` elements of type `ty` from the start of `src`,
/// bit-identical to ggml's `dequantize_row_*`.
///
/// Errors if `ty` is not supported, `dst.len()` is not a whole number of
/// blocks, or `src` is too short.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    if !ty.is_supported() {
        return Err(invalid(format!("cannot dequantize {ty}")));
    }
    let len = row_len(ty, dst.len())?;
    let src = src.get(..len).ok_or_else(|| {
        invalid(format!("{ty} row of {} elements needs {len} bytes, got {}", dst.len(), src.len()))
    })?;
    blocks::dequantize(ty, src, dst);
    Ok(())
}

/// Quantizes `x` into `dst` (at least `ty.row_bytes(x.len())` bytes) in
/// format `ty`, exactly like ggml's reference quantizers.
///
/// Supported: the activation formats F32, F16, BF16, Q8_0, Q8_1, Q8_K, and
/// the weight formats Q4_0, Q4_1, Q5_0, Q5_1.
pub fn quantize_row(ty: GgmlType, x: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_row_with(Backend::active(), ty, x, dst)
}

/// [`quantize_row`] on an explicit backend (the same bytes on every one).
pub fn quantize_row_with(backend: Backend, ty: GgmlType, x: &[f32], dst: &mut [u8]) -> Result<()> {
    if !quantize::can_quantize(ty) {
        return Err(invalid(format!("no quantizer for {ty}")));
    }
    let len = row_len(ty, x.len())?;
    let have = dst.len();
    let dst = dst
        .get_mut(..len)
        .ok_or_else(|| invalid(format!("{ty} row of {} elements needs {len} bytes, got {have}", x.len())))?;
    quantize::quantize(backend.kernels(), ty, x, dst);
    Ok(())
}

/// Quantizes an activation row for dot products against weights of type
/// `weight_ty` (into `weight_ty.vec_dot_type()`).
pub fn quantize_activation(weight_ty: GgmlType, x: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_row(weight_ty.vec_dot_type(), x, dst)
}

/// Bytes [`quantize_activation`] writes for `n` elements against weights of
/// type `weight_ty`, `None` if `n` is not a whole number of blocks.
pub fn activation_row_bytes(weight_ty: GgmlType, n: usize) -> Option<usize> {
    weight_ty.vec_dot_type().row_bytes(n)
}

/// ggml's `quantize_row_q8_0_ref`: 32-wide blocks, `d = amax / 127` (f16),
/// `q = round(x / d)`.
pub fn quantize_row_q8_0(x: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_row(GgmlType::Q8_0, x, dst)
}

/// ggml's `quantize_row_q8_1_ref`: as Q8_0 plus `s = d * sum(q)` (f16).
pub fn quantize_row_q8_1(x: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_row(GgmlType::Q8_1, x, dst)
}

/// ggml's `quantize_row_q8_K_ref`: 256-wide blocks, f32 `d`, i8 quants and
/// i16 sums of each 16 quants.
pub fn quantize_row_q8_k(x: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_row(GgmlType::Q8_K, x, dst)
}

fn check_dot(ty: GgmlType, w: &[u8], n: usize) -> Result<(usize, usize)> {
    if !ty.can_dot() {
        return Err(invalid(format!("no dot product for weight type {ty}")));
    }
    let wlen = row_len(ty, n)?;
    let xlen = row_len(ty.vec_dot_type(), n)?;
    if w.len() < wlen {
        return Err(invalid(format!("{ty} weight row of {n} elements needs {wlen} bytes, got {}", w.len())));
    }
    Ok((wlen, xlen))
}

/// Dot product of an `n`-element weight row of type `ty` with an activation
/// row in `ty.vec_dot_type()` format, on the [`Backend::active`] backend.
pub fn vec_dot(ty: GgmlType, w_row: &[u8], x_row: &[u8], n: usize) -> Result<f32> {
    vec_dot_with(Backend::active(), ty, w_row, x_row, n)
}

/// [`vec_dot`] on an explicit backend (falls back to scalar if this CPU
/// cannot run it).
pub fn vec_dot_with(backend: Backend, ty: GgmlType, w_row: &[u8], x_row: &[u8], n: usize) -> Result<f32> {
    let (wlen, xlen) = check_dot(ty, w_row, n)?;
    if x_row.len() < xlen {
        return Err(invalid(format!("activation row needs {xlen} bytes, got {}", x_row.len())));
    }
    let r = dispatch::dot_tile::<1, 1>(backend.usable(), ty, [&w_row[..wlen]], [&x_row[..xlen]], n);
    Ok(r[0])
}

/// Dot products of one weight row with `m` activation rows: row `t` starts at
/// byte `t * x_stride` of `xs`; `out[t]` gets its dot for `t < m`.
///
/// Each `out[t]` is bit-identical to [`vec_dot`] on that row alone; rows run
/// four at a time, sharing the unpacked weight blocks.
pub fn vec_dot_rows(
    ty: GgmlType,
    w_row: &[u8],
    xs: &[u8],
    x_stride: usize,
    m: usize,
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    vec_dot_rows_with(Backend::active(), ty, w_row, xs, x_stride, m, n, out)
}

/// [`vec_dot_rows`] on an explicit backend.
#[allow(clippy::too_many_arguments)]
pub fn vec_dot_rows_with(
    backend: Backend,
    ty: GgmlType,
    w_row: &[u8],
    xs: &[u8],
    x_stride: usize,
    m: usize,
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    let (wlen, xlen) = check_dot(ty, w_row, n)?;
    if m == 0 {
        return Ok(());
    }
    if x_stride < xlen {
        return Err(invalid(format!("activation stride {x_stride} is below the row size {xlen}")));
    }
    let need = (m - 1)
        .checked_mul(x_stride)
        .and_then(|v| v.checked_add(xlen))
        .ok_or_else(|| invalid("activation rows overflow".into()))?;
    if xs.len() < need {
        return Err(invalid(format!("{m} activation rows need {need} bytes, got {}", xs.len())));
    }
    if out.len() < m {
        return Err(invalid(format!("output holds {} values, {m} needed", out.len())));
    }
    let b = backend.usable();
    let w = &w_row[..wlen];
    let row = |t: usize| &xs[t * x_stride..t * x_stride + xlen];
    let mut t = 0;
    while t + 4 <= m {
        let r = dispatch::dot_tile::<1, 4>(b, ty, [w], [row(t), row(t + 1), row(t + 2), row(t + 3)], n);
        out[t..t + 4].copy_from_slice(&r);
        t += 4;
    }
    if t + 2 <= m {
        let r = dispatch::dot_tile::<1, 2>(b, ty, [w], [row(t), row(t + 1)], n);
        out[t..t + 2].copy_from_slice(&r[..2]);
        t += 2;
    }
    if t < m {
        out[t] = dispatch::dot_tile::<1, 1>(b, ty, [w], [row(t)], n)[0];
    }
    Ok(())
}

/// Matrix product against `rows` consecutive weight rows of `n` elements:
/// `out[t * out_stride + r] = vec_dot(w row r, activation row t)` for
/// `r < rows`, `t < m`; activation rows are packed back to back in `xs`.
///
/// Each value is bit-identical to [`vec_dot`]. A single activation row
/// (decode) runs four weight rows at a time, sharing the activation loads;
/// several run four activation rows at a time per weight row.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    xs: &[u8],
    m: usize,
    n: usize,
    out: &mut [f32],
    out_stride: usize,
) -> Result<()> {
    matmul_with(Backend::active(), ty, w, rows, xs, m, n, out, out_stride)
}

/// [`matmul`] on an explicit backend.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    backend: Backend,
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    xs: &[u8],
    m: usize,
    n: usize,
    out: &mut [f32],
    out_stride: usize,
) -> Result<()> {
    if !ty.can_dot() {
        return Err(invalid(format!("no dot product for weight type {ty}")));
    }
    let wlen = row_len(ty, n)?;
    let xlen = row_len(ty.vec_dot_type(), n)?;
    if rows == 0 || m == 0 {
        return Ok(());
    }
    if xs.len() / xlen.max(1) < m {
        return Err(invalid(format!("{m} activation rows need {} bytes, got {}", m * xlen, xs.len())));
    }
    if w.len() / wlen.max(1) < rows {
        return Err(invalid(format!("{rows} weight rows need {} bytes, got {}", rows * wlen, w.len())));
    }
    let fits = (m - 1).checked_mul(out_stride).and_then(|v| v.checked_add(rows));
    if out_stride < rows || fits.is_none_or(|need| out.len() < need) {
        return Err(invalid(format!("output of {} values is too small for {m} x {rows}", out.len())));
    }
    let b = backend.usable();
    let wr = |r: usize| &w[r * wlen..(r + 1) * wlen];
    let xr = |t: usize| &xs[t * xlen..(t + 1) * xlen];
    if m == 1 {
        let x = xr(0);
        // Prefetch two tiles ahead: the interleaved row streams defeat the
        // hardware prefetchers once the weights come from memory.
        let pf = 8 * wlen;
        let mut r = 0;
        while r + 4 <= rows {
            let v =
                dispatch::dot_tile_pf::<4, 1>(b, ty, [wr(r), wr(r + 1), wr(r + 2), wr(r + 3)], [x], n, pf);
            out[r..r + 4].copy_from_slice(&v);
            r += 4;
        }
        while r < rows {
            out[r] = dispatch::dot_tile::<1, 1>(b, ty, [wr(r)], [x], n)[0];
            r += 1;
        }
        return Ok(());
    }
    for r in 0..rows {
        let mut t = 0;
        while t + 4 <= m {
            let v = dispatch::dot_tile::<1, 4>(b, ty, [wr(r)], [xr(t), xr(t + 1), xr(t + 2), xr(t + 3)], n);
            for (i, val) in v.iter().enumerate() {
                out[(t + i) * out_stride + r] = *val;
            }
            t += 4;
        }
        while t < m {
            out[t * out_stride + r] = dispatch::dot_tile::<1, 1>(b, ty, [wr(r)], [xr(t)], n)[0];
            t += 1;
        }
    }
    Ok(())
}

/// Dot product of two f32 slices (the shorter length), in one fixed order
/// that every backend follows.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    Kernels::active().dot_f32(a, b)
}

/// [`dot_f32`] on an explicit backend.
pub fn dot_f32_with(backend: Backend, a: &[f32], b: &[f32]) -> f32 {
    backend.kernels().dot_f32(a, b)
}

/// `out[j] = dot_f32(q, rows[j * stride..j * stride + q.len()]) * scale` for
/// `j < out.len()`: the attention scores of one query against a run of keys.
/// Each value depends only on `q` and its key, and is the same on every backend.
pub fn scores_f32(q: &[f32], rows: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    Kernels::active().scores_f32(q, rows, stride, scale, out)
}

/// [`scores_f32`] for keys stored as f16, converting in registers (no f32
/// copy of the cache).
pub fn scores_f16(q: &[f32], rows: &[half::f16], stride: usize, scale: f32, out: &mut [f32]) {
    Kernels::active().scores_f16(q, rows, stride, scale, out)
}

/// `out += Σ_j p[j] · rows[j * stride..j * stride + out.len()]`, accumulated
/// in `j` order: the weighted sum of values in attention.
pub fn weighted_sum_f32(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    Kernels::active().weighted_sum_f32(p, rows, stride, out)
}

/// [`weighted_sum_f32`] for values stored as f16.
pub fn weighted_sum_f16(p: &[f32], rows: &[half::f16], stride: usize, out: &mut [f32]) {
    Kernels::active().weighted_sum_f16(p, rows, stride, out)
}
