//! Weights repacked eight rows at a time for fast matrix products.
//!
//! For Q4_0, Q4_1 and Q8_0 (and Q5_0, see below), groups of 8 consecutive rows are interleaved
//! block by block: the 8 scales (and mins) first, then the quant bytes in
//! 4-byte chunks, row after row (`chunk c = [row0 bytes 4c..4c+4, row1 ...,
//! row7 ...]`). One 32-byte load then feeds 8 rows at once and the integer
//! dot of each row lands in its own SIMD lane, so the float work per block
//! is shared by 8 rows. Rows past the last full group stay in ggml layout.
//!
//! Q5_0 weights are widened to Q8_0 first (each 5-bit quant minus 16 as an
//! `i8`, the same scale): both types finish a block as `acc + sumi * (d_w *
//! d_x)` with the exact integer sum, so the widened rows give the same bits,
//! through the Q8_0 kernels, at 34 bytes per 32 weights instead of 22.
//!
//! Q4_K, Q5_K and Q6_K have their own group-superblock layouts (`packed_k`,
//! `packed_q6k`): 1-6% over the file's bytes, stored in the order their
//! kernels read them.
//!
//! Results are bit-identical to [`super::vec_dot`] on the original rows (the
//! per-row float sequence is the same exact-integer-then-f32 one), for any
//! number of activation rows, row range or backend.

use super::blocks::{as_blocks, as_bytes, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0, GgmlBlock, Q32Weight};
use super::prep::{group_layout, XPrep};
use super::types::GgmlType;
use super::{blocks, dispatch};
use super::{invalid, row_len, Backend};
use super::{packed_k, packed_q6k};
use crate::error::Result;
use std::ops::Range;

thread_local! {
    static PREPS: std::cell::Cell<Vec<XPrep>> = const { std::cell::Cell::new(Vec::new()) };
    static BLOCK: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

pub use super::prep::PACK_ROWS;

/// A weight matrix (`rows` x `n`, of a type [`PackedWeights::supports`]) repacked for
/// [`PackedWeights::matmul`].
#[derive(Debug, Clone)]
pub struct PackedWeights {
    ty: GgmlType,
    rows: usize,
    n: usize,
    data: Vec<u8>,
}

/// Byte offsets inside one packed group-block: (scales, mins, quants, size).
pub(crate) fn group_block_layout(ty: GgmlType) -> (usize, usize, usize, usize) {
    match ty {
        GgmlType::Q4_0 => group_layout::<BlockQ4_0>(),
        GgmlType::Q4_1 => group_layout::<BlockQ4_1>(),
        // Q5_0 is stored widened to Q8_0 (see the module docs).
        GgmlType::Q8_0 | GgmlType::Q5_0 => group_layout::<BlockQ8_0>(),
        GgmlType::Q4_K => (0, 0, 0, packed_k::group_bytes(false)),
        GgmlType::Q5_K => (0, 0, 0, packed_k::group_bytes(true)),
        GgmlType::Q6_K => (0, 0, 0, packed_q6k::GROUP_BYTES),
        GgmlType::F32
        | GgmlType::F16
        | GgmlType::BF16
        | GgmlType::Q5_1
        | GgmlType::Q8_1
        | GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q8_K
        | GgmlType::IQ4_NL
        | GgmlType::IQ4_XS => unreachable!("{ty} weights are never packed"),
    }
}

/// Bytes that the first `rows` rows take packed: whole groups, then rows in ggml layout.
fn packed_len(ty: GgmlType, rows: usize, n: usize, wlen: usize) -> usize {
    (rows / PACK_ROWS) * (n / ty.block_size()) * group_block_layout(ty).3 + (rows % PACK_ROWS) * wlen
}

impl PackedWeights {
    /// Whether `ty` can be packed.
    pub fn supports(ty: GgmlType) -> bool {
        matches!(
            ty,
            GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q8_0
                | GgmlType::Q4_K
                | GgmlType::Q5_K
                | GgmlType::Q6_K
        )
    }

    /// Repacks `rows` consecutive ggml rows of `n` elements from `w`.
    pub fn pack(ty: GgmlType, w: &[u8], rows: usize, n: usize) -> Result<PackedWeights> {
        Self::pack_releasing(ty, w, rows, n, |_| {})
    }

    /// [`pack`](Self::pack), calling `release` with each byte range of `w` as
    /// soon as it has been repacked (a few hundred rows at a time), so the
    /// caller can drop the source pages before the whole copy exists.
    pub fn pack_releasing(
        ty: GgmlType,
        w: &[u8],
        rows: usize,
        n: usize,
        mut release: impl FnMut(Range<usize>),
    ) -> Result<PackedWeights> {
        /// Rows per step: whole groups, a few hundred KiB of source.
        const STEP_ROWS: usize = 32 * PACK_ROWS;
        if !Self::supports(ty) {
            return Err(invalid(format!("cannot pack {ty} weights")));
        }
        let wlen = row_len(ty, n)?;
        let total = rows.checked_mul(wlen).ok_or_else(|| invalid("weight size overflows".into()))?;
        if w.len() < total {
            return Err(invalid(format!("{rows} {ty} rows of {n} need {total} bytes, got {}", w.len())));
        }
        // Q5_0 is stored widened to Q8_0 (see the module documentation).
        let stored = if ty == GgmlType::Q5_0 { GgmlType::Q8_0 } else { ty };
        let slen = row_len(stored, n)?;
        let mut data = vec![0u8; packed_len(stored, rows, n, slen)];
        let mut wide = Vec::new();
        for start in (0..rows).step_by(STEP_ROWS) {
            let end = (start + STEP_ROWS).min(rows);
            let mut src = &w[start * wlen..end * wlen];
            if ty == GgmlType::Q5_0 {
                wide.clear();
                wide.extend(as_blocks::<BlockQ5_0>(src).iter().flat_map(widen_q5_0));
                src = &wide;
            }
            let dst = &mut data[packed_len(stored, start, n, slen)..packed_len(stored, end, n, slen)];
            pack_rows(stored, src, end - start, n, dst);
            release(start * wlen..end * wlen);
        }
        Ok(PackedWeights { ty: stored, rows, n, data })
    }

    /// The type the rows are stored as (Q5_0 weights are stored as Q8_0).
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Elements per row.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Rebuilds weight row `r` in ggml layout (for checks and tooling), in
    /// the stored type ([`ty`](Self::ty)).
    pub fn unpack_row(&self, r: usize) -> Option<Vec<u8>> {
        if r >= self.rows {
            return None;
        }
        let wlen = self.ty.row_bytes(self.n)?;
        let groups = self.rows / PACK_ROWS;
        if r >= groups * PACK_ROWS {
            let at = packed_len(self.ty, r, self.n, wlen);
            return Some(self.data[at..at + wlen].to_vec());
        }
        let mut out = vec![0u8; wlen];
        for (b, blk) in out.chunks_exact_mut(self.ty.type_size()).enumerate() {
            self.block_of(r, b, blk);
        }
        Some(out)
    }

    /// Writes block `b` of packed row `r` (inside a full group) in ggml layout.
    fn block_of(&self, r: usize, b: usize, blk: &mut [u8]) {
        let nb = self.n / self.ty.block_size();
        let bs = self.ty.type_size();
        let (_, mo, qo, gbs) = group_block_layout(self.ty);
        let qbytes = bs - qo / PACK_ROWS;
        let (g, lane) = (r / PACK_ROWS, r % PACK_ROWS);
        let src = &self.data[(g * nb + b) * gbs..(g * nb + b + 1) * gbs];
        match self.ty {
            GgmlType::Q4_K => return packed_k::unpack_group::<false>(src, lane, blk),
            GgmlType::Q5_K => return packed_k::unpack_group::<true>(src, lane, blk),
            GgmlType::Q6_K => return packed_q6k::unpack_group(src, lane, blk),
            _ => {}
        }
        blk[..2].copy_from_slice(&src[2 * lane..2 * lane + 2]);
        if self.ty == GgmlType::Q4_1 {
            blk[2..4].copy_from_slice(&src[mo + 2 * lane..mo + 2 * lane + 2]);
        }
        let q = &mut blk[bs - qbytes..];
        for c in 0..qbytes / 4 {
            let o = qo + 32 * c + 4 * lane;
            q[4 * c..4 * c + 4].copy_from_slice(&src[o..o + 4]);
        }
    }

    /// `out[t * out_stride + (r - rows.start)] = vec_dot(row r, activation
    /// row t)` for `r` in `rows` and `t < m`, activation rows packed back to
    /// back in `xs` (`ty.vec_dot_type()` format), on the active backend.
    ///
    /// Threads can split the rows into disjoint ranges; ranges starting at
    /// multiples of [`PACK_ROWS`] avoid recomputing shared groups.
    pub fn matmul(
        &self,
        rows: Range<usize>,
        xs: &[u8],
        m: usize,
        out: &mut [f32],
        out_stride: usize,
    ) -> Result<()> {
        self.matmul_with(Backend::active(), rows, xs, m, out, out_stride)
    }

    /// [`PackedWeights::matmul`] on an explicit backend.
    pub fn matmul_with(
        &self,
        backend: Backend,
        rows: Range<usize>,
        xs: &[u8],
        m: usize,
        out: &mut [f32],
        out_stride: usize,
    ) -> Result<()> {
        let (ty, n) = (self.ty, self.n);
        let wlen = row_len(ty, n)?;
        let xlen = row_len(ty.vec_dot_type(), n)?;
        if rows.start > rows.end || rows.end > self.rows {
            return Err(invalid(format!("row range {rows:?} outside 0..{}", self.rows)));
        }
        let width = rows.end - rows.start;
        if width == 0 || m == 0 {
            return Ok(());
        }
        if xs.len() / xlen.max(1) < m {
            return Err(invalid(format!("{m} activation rows need {} bytes, got {}", m * xlen, xs.len())));
        }
        let fits = (m - 1).checked_mul(out_stride).and_then(|v| v.checked_add(width));
        if out_stride < width || fits.is_none_or(|need| out.len() < need) {
            return Err(invalid(format!("output of {} values is too small for {m} x {width}", out.len())));
        }
        let b = backend.usable();
        if matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K) {
            self.matmul_k(b, rows, xs, m, out, out_stride);
            return Ok(());
        }
        let nb = n / ty.block_size();
        let gbytes = nb * group_block_layout(ty).3;
        let groups = self.rows / PACK_ROWS;
        let xr = |t: usize| &xs[t * xlen..(t + 1) * xlen];
        let min = ty == GgmlType::Q4_1;
        // Per-thread buffers, kept between calls so steady decoding does not allocate.
        let mut preps = PREPS.take();
        let mut blk = BLOCK.take();
        if b == Backend::Scalar {
            preps.clear();
        } else {
            preps.truncate(m);
            for (t, p) in preps.iter_mut().enumerate() {
                p.fill(xr(t), nb, min);
            }
            for t in preps.len()..m {
                preps.push(XPrep::new(xr(t), nb, min));
            }
        }
        blk.resize(wlen, 0);
        let pr = |t: usize| &preps[t];
        // Full groups overlapping the range.
        let g0 = rows.start / PACK_ROWS;
        let g1 = rows.end.div_ceil(PACK_ROWS).min(groups);
        // Decoding (one activation row): the groups wholly inside the range
        // in one kernel call, straight into `out`.
        let (fs, fe) = (rows.start.div_ceil(PACK_ROWS), (rows.end / PACK_ROWS).min(groups));
        let run = m == 1 && fs < fe && !preps.is_empty() && {
            let o = &mut out[fs * PACK_ROWS - rows.start..fe * PACK_ROWS - rows.start];
            dispatch::dot_packed_run(
                b,
                ty,
                &self.data[fs * gbytes..fe * gbytes],
                gbytes,
                (xr(0), pr(0)),
                nb,
                o,
            )
        };
        let mut put = |t: usize, r: usize, v: f32| {
            if rows.contains(&r) {
                out[t * out_stride + (r - rows.start)] = v;
            }
        };
        for g in g0..g1 {
            if run && (fs..fe).contains(&g) {
                continue;
            }
            let gdata = &self.data[g * gbytes..(g + 1) * gbytes];
            let mut t = 0;
            while t < m {
                let k = (m - t).min(4);
                let res = if preps.is_empty() {
                    None
                } else {
                    match k {
                        4 => dispatch::dot_packed::<4>(
                            b,
                            ty,
                            gdata,
                            [xr(t), xr(t + 1), xr(t + 2), xr(t + 3)],
                            [pr(t), pr(t + 1), pr(t + 2), pr(t + 3)],
                            nb,
                        ),
                        3 => dispatch::dot_packed::<3>(
                            b,
                            ty,
                            gdata,
                            [xr(t), xr(t + 1), xr(t + 2)],
                            [pr(t), pr(t + 1), pr(t + 2)],
                            nb,
                        ),
                        2 => dispatch::dot_packed::<2>(
                            b,
                            ty,
                            gdata,
                            [xr(t), xr(t + 1)],
                            [pr(t), pr(t + 1)],
                            nb,
                        ),
                        _ => dispatch::dot_packed::<1>(b, ty, gdata, [xr(t)], [pr(t)], nb),
                    }
                };
                let res = match res {
                    Some(r) => r,
                    None => {
                        // Portable path: rebuild each row and use the scalar kernel.
                        let mut r4 = [[0.0f32; PACK_ROWS]; 4];
                        for lane in 0..PACK_ROWS {
                            for (b_i, chunk) in blk.chunks_exact_mut(ty.type_size()).enumerate() {
                                self.block_of(g * PACK_ROWS + lane, b_i, chunk);
                            }
                            for (i, row) in r4.iter_mut().enumerate().take(k) {
                                let [v] = blocks::dot_rows::<1>(ty, &blk, [xr(t + i)], n);
                                row[lane] = v;
                            }
                        }
                        r4
                    }
                };
                for (i, row) in res.iter().enumerate().take(k) {
                    for (lane, v) in row.iter().enumerate() {
                        put(t + i, g * PACK_ROWS + lane, *v);
                    }
                }
                t += k;
            }
        }
        self.tail_dots(b, &rows, xs, xlen, m, &mut put);
        PREPS.set(preps);
        BLOCK.set(blk);
        Ok(())
    }
}

impl PackedWeights {
    /// [`matmul_with`](Self::matmul_with) for Q4_K, Q5_K and Q6_K (arguments already checked).
    fn matmul_k(
        &self,
        b: Backend,
        rows: Range<usize>,
        xs: &[u8],
        m: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let (ty, n) = (self.ty, self.n);
        let xlen = GgmlType::Q8_K.type_size() * (n / 256);
        let nb = n / ty.block_size();
        let gbytes = nb * group_block_layout(ty).3;
        let groups = self.rows / PACK_ROWS;
        let xr = |t: usize| &xs[t * xlen..(t + 1) * xlen];
        let mut put = |t: usize, r: usize, v: f32| {
            if rows.contains(&r) {
                out[t * out_stride + (r - rows.start)] = v;
            }
        };
        for g in rows.start / PACK_ROWS..rows.end.div_ceil(PACK_ROWS).min(groups) {
            let gdata = &self.data[g * gbytes..(g + 1) * gbytes];
            let mut t = 0;
            while t < m {
                let k = (m - t).min(4);
                let x4 = [0, 1, 2, 3].map(|i| xr(t + i.min(k - 1)));
                let res = dispatch::dot_group_k(b, ty, gdata, x4, k, nb);
                let k = if k == 4 { 4 } else { 1 };
                for (i, row) in res.iter().enumerate().take(k) {
                    for (lane, v) in row.iter().enumerate() {
                        put(t + i, g * PACK_ROWS + lane, *v);
                    }
                }
                t += k;
            }
        }
        self.tail_dots(b, &rows, xs, xlen, m, &mut put);
    }

    /// `put(t, r, dot)` for the rows of `rows` past the last full group (kept
    /// in ggml layout) against each of the `m` activation rows.
    fn tail_dots(
        &self,
        b: Backend,
        rows: &Range<usize>,
        xs: &[u8],
        xlen: usize,
        m: usize,
        mut put: impl FnMut(usize, usize, f32),
    ) {
        let wlen = self.ty.type_size() * (self.n / self.ty.block_size());
        for r in rows.start.max(self.rows / PACK_ROWS * PACK_ROWS)..rows.end {
            let at = packed_len(self.ty, r, self.n, wlen);
            let w = &self.data[at..at + wlen];
            for t in 0..m {
                let x = &xs[t * xlen..(t + 1) * xlen];
                put(t, r, dispatch::dot_tile::<1, 1>(b, self.ty, [w], [x], self.n)[0]);
            }
        }
    }
}

/// Packs `rows` ggml rows of `n` elements (`src`, type `ty`, one of Q4_0,
/// Q4_1 and Q8_0) into `dst`: whole groups interleaved, the tail rows as they are.
fn pack_rows(ty: GgmlType, src: &[u8], rows: usize, n: usize, dst: &mut [u8]) {
    let wlen = src.len() / rows.max(1);
    let nb = n / ty.block_size();
    let bs = ty.type_size();
    let groups = rows / PACK_ROWS;
    if matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K) {
        let gbs = group_block_layout(ty).3;
        for g in 0..groups {
            for b in 0..nb {
                let blocks = std::array::from_fn(|r| &src[(g * PACK_ROWS + r) * wlen + b * bs..][..bs]);
                let out = &mut dst[(g * nb + b) * gbs..(g * nb + b + 1) * gbs];
                match ty {
                    GgmlType::Q4_K => packed_k::pack_group::<false>(blocks, out),
                    GgmlType::Q5_K => packed_k::pack_group::<true>(blocks, out),
                    _ => packed_q6k::pack_group(blocks, out),
                }
            }
        }
        let (at, tail) = (groups * nb * gbs, groups * PACK_ROWS * wlen);
        dst[at..].copy_from_slice(&src[tail..]);
        return;
    }
    let (_, mo, qo, gbs) = group_block_layout(ty);
    // Quant bytes per row block (16 or 32): the block minus its share of the header.
    let qbytes = bs - qo / PACK_ROWS;
    for g in 0..groups {
        for b in 0..nb {
            let out = &mut dst[(g * nb + b) * gbs..(g * nb + b + 1) * gbs];
            for r in 0..PACK_ROWS {
                let blk = &src[(g * PACK_ROWS + r) * wlen + b * bs..][..bs];
                out[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
                if ty == GgmlType::Q4_1 {
                    out[mo + 2 * r..mo + 2 * r + 2].copy_from_slice(&blk[2..4]);
                }
                let q = &blk[bs - qbytes..];
                for c in 0..qbytes / 4 {
                    let o = qo + 32 * c + 4 * r;
                    out[o..o + 4].copy_from_slice(&q[4 * c..4 * c + 4]);
                }
            }
        }
    }
    let tail = groups * PACK_ROWS * wlen;
    dst[tail..].copy_from_slice(&src[tail..]);
}

/// One Q5_0 block as a Q8_0 block with the same scale and the same values (`q - 16`).
fn widen_q5_0(b: &BlockQ5_0) -> [u8; BlockQ8_0::BYTES] {
    let wide = BlockQ8_0 { d: b.d, qs: b.quants() };
    let mut out = [0u8; BlockQ8_0::BYTES];
    out.copy_from_slice(as_bytes(std::slice::from_ref(&wide)));
    out
}
