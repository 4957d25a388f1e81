//! Q6_K weights repacked eight rows at a time, still at 6 bits a weight.
//!
//! One group-superblock holds 256 weights of 8 consecutive rows:
//!
//! ```text
//!     0..32     d of each row, as f32
//!    32..160    for each of the 16 sub-blocks: each row's signed scale, one byte
//!   160..1696   for each half h, for each 4-byte chunk c (8 a half), 96 bytes:
//!               rows 0-7's ggml bytes ql[64h+4c..+4], then ql[64h+32+4c..+4],
//!               then qh[32h+4c..+4]
//! ```
//!
//! The kernel reads the quants in the order they are stored: a layout with
//! `ql` and `qh` apart (three streams within a group-superblock) ran at half
//! the bandwidth, stalled on its loads.
//!
//! That is 1,696 bytes for 8 × 210 in ggml's layout: 1% more (the f32 `d`).
//! The quants keep ggml's bit planes, so a decode step reads what the file
//! holds; an earlier layout widened them to a byte each (31% more memory and
//! 31% more bytes read per token).
//!
//! One 32-byte load of `ql` and one of `qh` feed four quants of each of the 8
//! rows at four places of the half (`l`, `l+32`, `l+64`, `l+96`), as ggml's
//! `dequantize_row_q6_K` combines them. Each row's exact integer sums collect
//! in its own lane and are finished with the portable kernel's float steps
//! (`acc + (dx·d)·sumi`), so results are bit-identical to `vec_dot` on the
//! original rows.

use super::blocks::{finish_q6k, BlockQ8_K, GgmlBlock};
use super::PACK_ROWS;

/// Bytes of one group-superblock.
pub(crate) const GROUP_BYTES: usize = 1696;
const SCALES: usize = 32;
const QUANTS: usize = 160;

/// Offset of rows 0-7's 4-byte chunk of `ql` (`which` 0: `ql[64h+4c..]`, 1:
/// `ql[64h+32+4c..]`) or of `qh` (`which` 2: `qh[32h+4c..]`).
const fn chunk_at(h: usize, c: usize, which: usize) -> usize {
    QUANTS + 768 * h + 96 * c + 32 * which
}
/// Bytes of one Q8_K activation block.
const XBLOCK: usize = <BlockQ8_K as GgmlBlock>::BYTES;

/// Writes one group-superblock from the 8 rows' superblocks (210 bytes each:
/// `ql[128]`, `qh[64]`, `scales[16]`, `d` as f16).
pub(crate) fn pack_group(rows: [&[u8]; PACK_ROWS], out: &mut [u8]) {
    for (r, wb) in rows.iter().enumerate() {
        let d = half::f16::from_le_bytes([wb[208], wb[209]]).to_f32();
        out[4 * r..4 * r + 4].copy_from_slice(&d.to_le_bytes());
        for j in 0..16 {
            out[SCALES + 8 * j + r] = wb[192 + j];
        }
        for (h, c) in (0..2).flat_map(|h| (0..8).map(move |c| (h, c))) {
            for (which, src) in
                [64 * h + 4 * c, 64 * h + 32 + 4 * c, 128 + 32 * h + 4 * c].into_iter().enumerate()
            {
                let at = chunk_at(h, c, which) + 4 * r;
                out[at..at + 4].copy_from_slice(&wb[src..src + 4]);
            }
        }
    }
}

/// Rebuilds row `lane`'s superblock (ggml layout) from a group-superblock.
pub(crate) fn unpack_group(g: &[u8], lane: usize, out: &mut [u8]) {
    for (h, c) in (0..2).flat_map(|h| (0..8).map(move |c| (h, c))) {
        for (which, dst) in
            [64 * h + 4 * c, 64 * h + 32 + 4 * c, 128 + 32 * h + 4 * c].into_iter().enumerate()
        {
            let at = chunk_at(h, c, which) + 4 * lane;
            out[dst..dst + 4].copy_from_slice(&g[at..at + 4]);
        }
    }
    for j in 0..16 {
        out[192 + j] = g[SCALES + 8 * j + lane];
    }
    let d = f32::from_le_bytes([g[4 * lane], g[4 * lane + 1], g[4 * lane + 2], g[4 * lane + 3]]);
    out[208..210].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
}

/// Row `lane`'s quant `e` (0..256) of a group-superblock, unsigned (0..63).
fn quant(g: &[u8], lane: usize, e: usize) -> u8 {
    let (h, k, l) = (e / 128, e % 128 / 32, e % 32);
    // ql[l] for quarters 0 and 2, ql[l + 32] for 1 and 3; low nibble for 0 and 1.
    let ql = g[chunk_at(h, l / 4, k & 1) + 4 * lane + l % 4];
    let qh = g[chunk_at(h, l / 4, 2) + 4 * lane + l % 4];
    let lo = if k < 2 { ql & 0xF } else { ql >> 4 };
    lo | (((qh >> (2 * k)) & 3) << 4)
}

/// Portable dots of one packed group (`nb` group-superblocks) with `R` Q8_K
/// activation rows: `[t][r]`, the same bits as the scalar `vec_dot`.
pub(crate) fn dot_group<const R: usize>(g: &[u8], xs: [&[u8]; R], nb: usize) -> [[f32; 8]; 4] {
    dot_group_scaled(g, xs, nb, GROUP_BYTES, 16, |gb, xb, lane, j| {
        (16 * j..16 * j + 16).map(|e| (quant(gb, lane, e) as i32 - 32) * xb[4 + e] as i8 as i32).sum()
    })
}

/// The portable dots of a layout that starts with each row's `d` as f32 and
/// then, for each of `subs` sub-blocks, each row's signed scale (Q6_K's and
/// IQ4_XS's): `sub_dot(gb, xb, lane, j)` is row `lane`'s exact integer dot of
/// sub-block `j`, and each superblock ends with [`finish_q6k`].
pub(crate) fn dot_group_scaled<const R: usize>(
    g: &[u8],
    xs: [&[u8]; R],
    nb: usize,
    group_bytes: usize,
    subs: usize,
    sub_dot: impl Fn(&[u8], &[u8], usize, usize) -> i32,
) -> [[f32; 8]; 4] {
    let mut acc = [[0.0f32; 8]; 4];
    for ib in 0..nb {
        let gb = &g[ib * group_bytes..(ib + 1) * group_bytes];
        for (t, x) in xs.iter().enumerate() {
            let xb = &x[ib * XBLOCK..(ib + 1) * XBLOCK];
            let dx = f32::from_le_bytes([xb[0], xb[1], xb[2], xb[3]]);
            for lane in 0..PACK_ROWS {
                let sumi: i32 = (0..subs)
                    .map(|j| gb[SCALES + 8 * j + lane] as i8 as i32 * sub_dot(gb, xb, lane, j))
                    .sum();
                let wd =
                    f32::from_le_bytes([gb[4 * lane], gb[4 * lane + 1], gb[4 * lane + 2], gb[4 * lane + 3]]);
                acc[t][lane] = finish_q6k(acc[t][lane], dx, wd, sumi);
            }
        }
    }
    acc
}

/// AVX2 version of [`dot_group`], with the same bits. The AVX-VNNI table
/// uses it too: `maddubs` is exact here, and a `vpdpbusd` variant could not
/// be checked on the AVX2-only machines this was measured on.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{chunk_at, GROUP_BYTES, SCALES, XBLOCK};
    use crate::kernels::packed_avx2::{bcast4, prefetch_ahead};
    use std::arch::x86_64::*;

    /// Four quarters' quants (unsigned, 0..63) of one 4-byte chunk of 8 rows,
    /// from ggml's `ql[l]`, `ql[l + 32]` and `qh[l]` bytes. The 16-bit shifts
    /// move bits across bytes only where the masks drop them.
    #[inline(always)]
    unsafe fn quarters(qa: __m256i, qb: __m256i, qh: __m256i) -> [__m256i; 4] {
        let (m4, m30) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
        [
            _mm256_or_si256(_mm256_and_si256(qa, m4), _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30)),
            _mm256_or_si256(_mm256_and_si256(qb, m4), _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(qa), m4), _mm256_and_si256(qh, m30)),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(qb), m4),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
            ),
        ]
    }

    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }

    /// Each lane's signed scales from the 8 bytes at `a` and at `b` as one
    /// i16 pair (a, b) per lane.
    #[inline(always)]
    pub(crate) unsafe fn scale_pairs(a: *const u8, b: *const u8) -> __m256i {
        let lo = _mm256_cvtepi8_epi32(_mm_loadl_epi64(a as *const __m128i));
        let hi = _mm256_cvtepi8_epi32(_mm_loadl_epi64(b as *const __m128i));
        _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32::<16>(hi))
    }

    /// # Safety
    /// The CPU must have AVX2; `g` must cover `nb` group-superblocks and every
    /// `xs[t]` `nb` Q8_K blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot_group<const R: usize>(
        g: *const u8,
        xs: [*const u8; R],
        nb: usize,
    ) -> [[f32; 8]; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        for ib in 0..nb {
            let gb = g.add(ib * GROUP_BYTES);
            prefetch_ahead(gb, GROUP_BYTES);
            let mut sumu = [_mm256_setzero_si256(); R];
            let mut corr = [_mm256_setzero_si256(); R];
            for h in 0..2 {
                for s in 0..2 {
                    // Positions 16s..16s+16 of quarter k of this half: sub-block 8h + 2k + s.
                    let sc = gb.add(SCALES + 8 * (8 * h + s));
                    for p in 0..2 {
                        // Chunks c and c + 1 (positions 4c..4c+8 of each quarter).
                        let c = 4 * s + 2 * p;
                        let at = |c: usize, which: usize| load(gb.add(chunk_at(h, c, which)));
                        let a = quarters(at(c, 0), at(c, 1), at(c, 2));
                        let b = quarters(at(c + 1, 0), at(c + 1, 1), at(c + 1, 2));
                        for t in 0..R {
                            let xb = xs[t].add(ib * XBLOCK + 4 + 128 * h + 4 * c);
                            for k in 0..4 {
                                // Two chunks per i16 sum: at most 2 * 2 * 63 * 127 = 32,004.
                                let x = xb.add(32 * k);
                                let d = _mm256_add_epi16(
                                    _mm256_maddubs_epi16(a[k], bcast4(x)),
                                    _mm256_maddubs_epi16(b[k], bcast4(x.add(4))),
                                );
                                let sp = scale_pairs(sc.add(16 * k), sc.add(16 * k));
                                sumu[t] = _mm256_add_epi32(sumu[t], _mm256_madd_epi16(d, sp));
                            }
                        }
                    }
                }
            }
            // Σ_j sc_j · bsum_j, two sub-blocks per madd: the `-32` taken out exactly.
            for i in 0..8 {
                let sp = scale_pairs(gb.add(SCALES + 16 * i), gb.add(SCALES + 16 * i + 8));
                for t in 0..R {
                    let b = bcast4(xs[t].add(ib * XBLOCK + 260 + 4 * i));
                    corr[t] = _mm256_add_epi32(corr[t], _mm256_madd_epi16(sp, b));
                }
            }
            let sumi = std::array::from_fn(|t| _mm256_sub_epi32(sumu[t], _mm256_slli_epi32::<5>(corr[t])));
            finish(&mut acc, gb, &xs, ib, sumi);
        }
        lanes(acc)
    }

    /// Each lane's `acc + (dx·d)·sumi` ([`finish_q6k`](super::finish_q6k)),
    /// with `d` the row's f32 at the start of the group-superblock `gb` and
    /// `dx` activation row `t`'s scale in its block `ib`.
    #[inline(always)]
    pub(crate) unsafe fn finish<const R: usize>(
        acc: &mut [__m256; 4],
        gb: *const u8,
        xs: &[*const u8; R],
        ib: usize,
        sumi: [__m256i; R],
    ) {
        let wd = _mm256_loadu_ps(gb as *const f32);
        for t in 0..R {
            let dx = _mm256_set1_ps(std::ptr::read_unaligned(xs[t].add(ib * XBLOCK) as *const f32));
            acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_mul_ps(dx, wd), _mm256_cvtepi32_ps(sumi[t])));
        }
    }

    /// The accumulators as `[t][r]`.
    #[inline(always)]
    pub(crate) unsafe fn lanes(acc: [__m256; 4]) -> [[f32; 8]; 4] {
        let mut out = [[0.0f32; 8]; 4];
        for (o, a) in out.iter_mut().zip(acc) {
            _mm256_storeu_ps(o.as_mut_ptr(), a);
        }
        out
    }
}
