//! IQ4_XS weights repacked eight rows at a time, still at 4 bits a weight.
//!
//! One group-superblock holds 256 weights of 8 consecutive rows:
//!
//! ```text
//!     0..32     d of each row, as f32
//!    32..96     for each of the 8 sub-blocks: each row's scale minus 32, one signed byte
//!    96..1120   for each sub-block j, for each 4-byte chunk c (4 a sub-block):
//!               rows 0-7's ggml bytes qs[16j+4c..+4] (low nibbles: values
//!               4c..4c+4 of the sub-block, high nibbles: 16+4c..16+4c+4)
//! ```
//!
//! That is 1,120 bytes for 8 × 136 in ggml's layout: 3% more (the f32 `d`
//! and the unpacked scales), stored in the order the kernel reads them.
//!
//! One 32-byte load feeds eight quants of each of the 8 rows. The indices go
//! through the value table with a byte shuffle, and each product is taken as
//! |w| against x carrying w's sign (exact: Q8_K activations never hold -128),
//! so each row's exact integer sums collect in its own lane. They are finished
//! with the portable kernel's float step (`acc + (dx·d)·sumi`), so results
//! are bit-identical to `vec_dot` on the original rows.

use super::blocks::{as_blocks, BlockIQ4_XS, BlockQ8_K, GgmlBlock, IQ4_VALUES};
use super::packed_q6k::dot_group_scaled;
use super::PACK_ROWS;

/// Bytes of one group-superblock.
pub(crate) const GROUP_BYTES: usize = 1120;
const SCALES: usize = 32;
const QUANTS: usize = 96;
/// Bytes of one Q8_K activation block.
const XBLOCK: usize = <BlockQ8_K as GgmlBlock>::BYTES;

/// Offset of rows 0-7's 4-byte chunk `c` of sub-block `j`.
const fn chunk_at(j: usize, c: usize) -> usize {
    QUANTS + 128 * j + 32 * c
}

/// Writes one group-superblock from the 8 rows' superblocks (136 bytes each:
/// `d` as f16, `scales_h`, `scales_l[4]`, `qs[128]`).
pub(crate) fn pack_group(rows: [&[u8]; PACK_ROWS], out: &mut [u8]) {
    for (r, wb) in rows.iter().enumerate() {
        let d = half::f16::from_le_bytes([wb[0], wb[1]]).to_f32();
        out[4 * r..4 * r + 4].copy_from_slice(&d.to_le_bytes());
        let block = &as_blocks::<BlockIQ4_XS>(wb)[0];
        for j in 0..8 {
            out[SCALES + 8 * j + r] = block.scale(j) as i8 as u8;
            for c in 0..4 {
                let (at, src) = (chunk_at(j, c) + 4 * r, 8 + 16 * j + 4 * c);
                out[at..at + 4].copy_from_slice(&wb[src..src + 4]);
            }
        }
    }
}

/// Rebuilds row `lane`'s superblock (ggml layout) from a group-superblock.
pub(crate) fn unpack_group(g: &[u8], lane: usize, out: &mut [u8]) {
    let d = f32::from_le_bytes([g[4 * lane], g[4 * lane + 1], g[4 * lane + 2], g[4 * lane + 3]]);
    out[0..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    let mut high = 0u16;
    out[4..8].fill(0);
    for j in 0..8 {
        let ls = (g[SCALES + 8 * j + lane] as i8 as i32 + 32) as u8;
        out[4 + j / 2] |= (ls & 0xF) << (4 * (j % 2));
        high |= u16::from(ls >> 4) << (2 * j);
        for c in 0..4 {
            let (at, dst) = (chunk_at(j, c) + 4 * lane, 8 + 16 * j + 4 * c);
            out[dst..dst + 4].copy_from_slice(&g[at..at + 4]);
        }
    }
    out[2..4].copy_from_slice(&high.to_le_bytes());
}

/// Portable dots of one packed group (`nb` group-superblocks) with `R` Q8_K
/// activation rows: `[t][r]`, the same bits as the scalar `vec_dot`.
pub(crate) fn dot_group<const R: usize>(g: &[u8], xs: [&[u8]; R], nb: usize) -> [[f32; 8]; 4] {
    dot_group_scaled(g, xs, nb, GROUP_BYTES, 8, |gb, xb, lane, j| {
        let mut d = 0i32;
        for c in 0..4 {
            for e in 0..4 {
                let q = gb[chunk_at(j, c) + 4 * lane + e];
                let (lo, hi) = (IQ4_VALUES[(q & 0xF) as usize], IQ4_VALUES[(q >> 4) as usize]);
                let at = 4 + 32 * j + 4 * c + e;
                d += lo as i32 * xb[at] as i8 as i32 + hi as i32 * xb[at + 16] as i8 as i32;
            }
        }
        d
    })
}

/// AVX2 version of [`dot_group`], with the same bits (the AVX-VNNI table
/// uses it too: `maddubs` is exact here).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{chunk_at, GROUP_BYTES, SCALES, XBLOCK};
    use crate::kernels::blocks::IQ4_VALUES;
    use crate::kernels::packed_avx2::{bcast4, prefetch_ahead};
    use crate::kernels::packed_q6k::avx2::{finish, lanes, scale_pairs};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2; `g` must cover `nb` group-superblocks and every
    /// `xs[t]` `nb` Q8_K blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot_group<const R: usize>(
        g: *const u8,
        xs: [*const u8; R],
        nb: usize,
    ) -> [[f32; 8]; 4] {
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4_VALUES.as_ptr() as *const __m128i));
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); 4];
        for ib in 0..nb {
            let gb = g.add(ib * GROUP_BYTES);
            prefetch_ahead(gb, GROUP_BYTES);
            let mut sumi = [_mm256_setzero_si256(); R];
            for j in 0..8 {
                // Each lane's scale as the i16 pair (sc, sc), for its pair of sums.
                let sp = scale_pairs(gb.add(SCALES + 8 * j), gb.add(SCALES + 8 * j));
                for c in 0..4 {
                    let w = _mm256_loadu_si256(gb.add(chunk_at(j, c)) as *const __m256i);
                    let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(w, m4));
                    let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(w), m4));
                    let (alo, ahi) = (_mm256_sign_epi8(lo, lo), _mm256_sign_epi8(hi, hi));
                    for t in 0..R {
                        let xb = xs[t].add(ib * XBLOCK + 4 + 32 * j + 4 * c);
                        // One pair sum is at most 2 * 127 * 127: each goes to i32 alone.
                        let plo = _mm256_maddubs_epi16(alo, _mm256_sign_epi8(bcast4(xb), lo));
                        let phi = _mm256_maddubs_epi16(ahi, _mm256_sign_epi8(bcast4(xb.add(16)), hi));
                        let s = _mm256_add_epi32(_mm256_madd_epi16(plo, sp), _mm256_madd_epi16(phi, sp));
                        sumi[t] = _mm256_add_epi32(sumi[t], s);
                    }
                }
            }
            finish(&mut acc, gb, &xs, ib, sumi);
        }
        lanes(acc)
    }
}
