//! Weights repacked eight rows at a time for fast matrix products.
//!
//! For Q4_0, Q4_1, Q5_0, Q8_0 and IQ4_NL, groups of 8 consecutive rows are interleaved
//! block by block: the 8 scales (and mins, or Q5_0's 4-byte words of fifth
//! bits) first, then the quant bytes in
//! 4-byte chunks, row after row (`chunk c = [row0 bytes 4c..4c+4, row1 ...,
//! row7 ...]`). One 32-byte load then feeds 8 rows at once and the integer
//! dot of each row lands in its own SIMD lane, so the float work per block
//! is shared by 8 rows. Rows past the last full group stay in ggml layout.
//!
//! Every packed type takes the file's bytes (Q5_0 was once widened to Q8_0,
//! 34 bytes per 32 weights instead of 22, which decoding read every token).
//!
//! Q4_K, Q5_K, Q6_K and IQ4_XS have their own group-superblock layouts
//! (`packed_k`, `packed_q6k`, `packed_iq4xs`): 1-6% over the file's bytes,
//! stored in the order their kernels read them.
//!
//! Results are bit-identical to [`super::vec_dot`] on the original rows (the
//! per-row float sequence is the same exact-integer-then-f32 one), for any
//! number of activation rows, row range or backend.

use super::blocks::{BlockIQ4_NL, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0};
use super::prep::{group_layout, PackedLayout, XPrep};
use super::types::GgmlType;
use super::{blocks, dispatch};
use super::{invalid, row_len, Backend};
use super::{packed_iq4xs, packed_k, packed_q6k};
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
        GgmlType::Q5_0 => group_layout::<BlockQ5_0>(),
        GgmlType::Q8_0 => group_layout::<BlockQ8_0>(),
        GgmlType::IQ4_NL => group_layout::<BlockIQ4_NL>(),
        GgmlType::Q4_K => (0, 0, 0, packed_k::group_bytes(false)),
        GgmlType::Q5_K => (0, 0, 0, packed_k::group_bytes(true)),
        GgmlType::Q6_K => (0, 0, 0, packed_q6k::GROUP_BYTES),
        GgmlType::IQ4_XS => (0, 0, 0, packed_iq4xs::GROUP_BYTES),
        GgmlType::F32
        | GgmlType::F16
        | GgmlType::BF16
        | GgmlType::Q5_1
        | GgmlType::Q8_1
        | GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q8_K => unreachable!("{ty} weights are never packed"),
    }
}

/// Whether `ty` packs into 256-wide group-superblocks of its own layout
/// (dotted with Q8_K activations by `dispatch::dot_group_k`).
fn superblock(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::IQ4_XS)
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
                | GgmlType::IQ4_NL
                | GgmlType::Q4_K
                | GgmlType::Q5_K
                | GgmlType::Q6_K
                | GgmlType::IQ4_XS
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
        let mut data = vec![0u8; packed_len(ty, rows, n, wlen)];
        for start in (0..rows).step_by(STEP_ROWS) {
            let end = (start + STEP_ROWS).min(rows);
            let src = &w[start * wlen..end * wlen];
            let dst = &mut data[packed_len(ty, start, n, wlen)..packed_len(ty, end, n, wlen)];
            pack_rows(ty, src, end - start, n, dst);
            release(start * wlen..end * wlen);
        }
        Ok(PackedWeights { ty, rows, n, data })
    }

    /// The weights' type.
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

    /// Rebuilds weight row `r` in ggml layout (for checks and tooling).
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
            GgmlType::IQ4_XS => return packed_iq4xs::unpack_group(src, lane, blk),
            _ => {}
        }
        blk[..2].copy_from_slice(&src[2 * lane..2 * lane + 2]);
        if self.ty == GgmlType::Q4_1 {
            blk[2..4].copy_from_slice(&src[mo + 2 * lane..mo + 2 * lane + 2]);
        }
        if self.ty == GgmlType::Q5_0 {
            let at = <BlockQ5_0 as PackedLayout>::HIGH + 4 * lane;
            let word = u32::from_le_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]]);
            blk[2..6].copy_from_slice(&unsort_fifth_bits(word).to_le_bytes());
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
        if superblock(ty) {
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
    /// [`matmul_with`](Self::matmul_with) for Q4_K, Q5_K, Q6_K and IQ4_XS (arguments already checked).
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

/// Packs `rows` ggml rows of `n` elements (`src`, a type that
/// [`PackedWeights::supports`]) into `dst`: whole groups interleaved, the tail rows as they are.
fn pack_rows(ty: GgmlType, src: &[u8], rows: usize, n: usize, dst: &mut [u8]) {
    let wlen = src.len() / rows.max(1);
    let nb = n / ty.block_size();
    let bs = ty.type_size();
    let groups = rows / PACK_ROWS;
    if superblock(ty) {
        let gbs = group_block_layout(ty).3;
        for g in 0..groups {
            for b in 0..nb {
                let blocks = std::array::from_fn(|r| &src[(g * PACK_ROWS + r) * wlen + b * bs..][..bs]);
                let out = &mut dst[(g * nb + b) * gbs..(g * nb + b + 1) * gbs];
                match ty {
                    GgmlType::Q4_K => packed_k::pack_group::<false>(blocks, out),
                    GgmlType::Q5_K => packed_k::pack_group::<true>(blocks, out),
                    GgmlType::IQ4_XS => packed_iq4xs::pack_group(blocks, out),
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
                if ty == GgmlType::Q5_0 {
                    let at = <BlockQ5_0 as PackedLayout>::HIGH + 4 * r;
                    let word = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                    out[at..at + 4].copy_from_slice(&sort_fifth_bits(word).to_le_bytes());
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

/// Q5_0's `qh` (bit `i`: element `i`'s fifth bit) sorted for the packed
/// kernels: byte `e`, bit `c` holds element `4c + e`'s and bit `4 + c`
/// element `16 + 4c + e`'s, the elements that byte `e` of quant chunk `c`
/// holds in its low and high nibble.
fn sort_fifth_bits(qh: u32) -> u32 {
    let mut out = 0u32;
    for e in 0..4 {
        for c in 0..4 {
            out |= ((qh >> (4 * c + e)) & 1) << (8 * e + c);
            out |= ((qh >> (16 + 4 * c + e)) & 1) << (8 * e + 4 + c);
        }
    }
    out
}

/// The inverse of [`sort_fifth_bits`].
fn unsort_fifth_bits(word: u32) -> u32 {
    let mut qh = 0u32;
    for e in 0..4 {
        for c in 0..4 {
            qh |= ((word >> (8 * e + c)) & 1) << (4 * c + e);
            qh |= ((word >> (8 * e + 4 + c)) & 1) << (16 + 4 * c + e);
        }
    }
    qh
}
