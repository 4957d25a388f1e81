//! AVX2 (optionally AVX-VNNI) kernels for [`super::packed`] weights: one
//! group of 8 interleaved rows against up to 4 activation rows.
//!
//! Per block, each row's exact integer dot collects in its own i32 lane;
//! the float steps are then those of the portable kernels, lane-wise:
//! `acc + sumi * (d_w * d_x)` or `acc + ((d_w * d_x) * sumi + m_w * s_x)`.

use super::blocks::{BlockIQ4_NL, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0, IQ4_VALUES};
use super::dot_avx2::Q32Avx;
use super::prep::{PackedLayout, XPrep};
use std::arch::x86_64::*;

/// A 32-wide type with packed kernels: how its group-blocks are read.
pub(crate) trait PackedAvx: Q32Avx + PackedLayout {
    /// Whole-byte signed quants (Q8_0), rather than nibbles.
    const BYTE_QUANTS: bool;
    /// What each unsigned nibble stands for minus itself (`-8` for Q4_0's `q - 8`).
    const NIBBLE_OFFSET: i32;
    /// Each nibble indexes IQ4_NL's table of 16 signed values.
    const LOOKUP: bool = false;
}

impl PackedAvx for BlockQ4_0 {
    const BYTE_QUANTS: bool = false;
    const NIBBLE_OFFSET: i32 = -8;
}
impl PackedAvx for BlockQ4_1 {
    const BYTE_QUANTS: bool = false;
    const NIBBLE_OFFSET: i32 = 0;
}
impl PackedAvx for BlockQ5_0 {
    const BYTE_QUANTS: bool = false;
    const NIBBLE_OFFSET: i32 = -16;
}
impl PackedAvx for BlockIQ4_NL {
    const BYTE_QUANTS: bool = false;
    const NIBBLE_OFFSET: i32 = 0;
    const LOOKUP: bool = true;
}
impl PackedAvx for BlockQ8_0 {
    const BYTE_QUANTS: bool = true;
    const NIBBLE_OFFSET: i32 = 0;
}

/// Bytes ahead of the current group-block to prefetch.
const PREFETCH: usize = 2048;

/// Software prefetch of the `len` bytes [`PREFETCH`] past `at`, well ahead
/// of a packed kernel's (single, sequential) weight stream: the hardware
/// prefetchers alone fall short. A hint only; nothing is read.
#[inline(always)]
pub(crate) unsafe fn prefetch_ahead(at: *const u8, len: usize) {
    let mut off = 0;
    while off < len {
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH + off) as *const i8);
        off += 64;
    }
}

/// The 4 bytes at `p` in every 32-bit lane.
#[inline(always)]
pub(crate) unsafe fn bcast4(p: *const u8) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// Q5_0's fifth bits as 0 or 16 in each quant byte of chunk `c`'s low
/// (`hi = false`) or high nibbles. `qh` holds each row's word as packed:
/// byte `e`, bit `c` is element `4c + e`'s fifth bit and bit `4 + c` element
/// `16 + 4c + e`'s, so one shift lines a chunk's bits up at bit 4 of its
/// bytes (16-bit shifts: what crosses between bytes misses bit 4).
#[inline(always)]
unsafe fn fifth_bits(qh: __m256i, c: usize, hi: bool) -> __m256i {
    let m = _mm256_set1_epi8(0x10);
    let v = match (hi, c) {
        (false, 0) => _mm256_slli_epi16::<4>(qh),
        (false, 1) => _mm256_slli_epi16::<3>(qh),
        (false, 2) => _mm256_slli_epi16::<2>(qh),
        (false, _) => _mm256_slli_epi16::<1>(qh),
        (true, 0) => qh,
        (true, 1) => _mm256_srli_epi16::<1>(qh),
        (true, 2) => _mm256_srli_epi16::<2>(qh),
        (true, _) => _mm256_srli_epi16::<3>(qh),
    };
    _mm256_and_si256(v, m)
}

macro_rules! packed_module {
    ($module:ident, $feat:literal, $vnni:literal) => {
        pub(crate) mod $module {
            use super::*;

            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn dot_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
                if $vnni {
                    _mm256_dpbusd_avx_epi32(acc, a, b)
                } else {
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
                    _mm256_add_epi32(acc, p)
                }
            }

            /// Dots of one packed group (8 rows, `nb` group-blocks at `g`)
            /// with `RX` activation rows `xq` (prepared in `xp`). Result
            /// `[t][r]` is activation row `t` against row `r` of the group.
            ///
            /// # Safety
            /// The CPU must have the module's features; `g` must cover `nb`
            /// group-blocks of type `B`, every `xq[t]` `nb` activation
            /// blocks and every `xp[t]` `nb` entries.
            #[inline]
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn dot_packed<B: PackedAvx, const RX: usize>(
                g: *const u8,
                xq: [*const u8; RX],
                xp: [&XPrep; RX],
                nb: usize,
            ) -> [[f32; 8]; 4] {
                let (gbs, qo, xbs, xhdr) = (B::GROUP, B::QUANTS, B::X_BYTES, B::X_QS);
                let m4 = _mm256_set1_epi8(0x0F);
                // IQ4_NL's values, in both 128-bit lanes (read only with `B::LOOKUP`).
                let table =
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4_VALUES.as_ptr() as *const __m128i));
                let mut acc = [_mm256_setzero_ps(); 4];
                for b in 0..nb {
                    let gb = g.add(b * gbs);
                    prefetch_ahead(gb, gbs);
                    // Integer sums are exact, so they may collect in two
                    // chains that are added at the end: with one or two
                    // activation rows, one chain of eight dependent dot
                    // instructions would bound the loop, not the memory.
                    let mut si = [_mm256_setzero_si256(); 4];
                    let mut sj = [_mm256_setzero_si256(); 4];
                    let two = RX <= 2;
                    if B::BYTE_QUANTS {
                        for c in 0..8 {
                            let v = _mm256_loadu_si256(gb.add(qo + 32 * c) as *const __m256i);
                            let s = if two && c % 2 == 1 { &mut sj } else { &mut si };
                            if $vnni {
                                // (w + 128) . x, corrected by 128 * sum(x) below.
                                let u = _mm256_xor_si256(v, _mm256_set1_epi8(-128));
                                for t in 0..RX {
                                    let y = bcast4(xq[t].add(b * xbs + xhdr + 4 * c));
                                    s[t] = dot_acc(s[t], u, y);
                                }
                            } else {
                                let a = _mm256_sign_epi8(v, v);
                                for t in 0..RX {
                                    let y = bcast4(xq[t].add(b * xbs + xhdr + 4 * c));
                                    s[t] = dot_acc(s[t], a, _mm256_sign_epi8(y, v));
                                }
                            }
                        }
                    } else {
                        let qh = if B::FIFTH_BITS {
                            _mm256_loadu_si256(gb.add(B::HIGH) as *const __m256i)
                        } else {
                            _mm256_setzero_si256()
                        };
                        for c in 0..4 {
                            let v = _mm256_loadu_si256(gb.add(qo + 32 * c) as *const __m256i);
                            let mut lo = _mm256_and_si256(v, m4);
                            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                            if B::FIFTH_BITS {
                                lo = _mm256_or_si256(lo, fifth_bits(qh, c, false));
                                hi = _mm256_or_si256(hi, fifth_bits(qh, c, true));
                            }
                            if B::LOOKUP {
                                // The table's signed values: |w| against x with w's sign
                                // (activations never hold -128, so the product is exact).
                                let (wl, wh) =
                                    (_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi));
                                let (al, ah) = (_mm256_sign_epi8(wl, wl), _mm256_sign_epi8(wh, wh));
                                for t in 0..RX {
                                    let xb = xq[t].add(b * xbs + xhdr);
                                    let yl = _mm256_sign_epi8(bcast4(xb.add(4 * c)), wl);
                                    let yh = _mm256_sign_epi8(bcast4(xb.add(16 + 4 * c)), wh);
                                    si[t] = dot_acc(si[t], al, yl);
                                    if two {
                                        sj[t] = dot_acc(sj[t], ah, yh);
                                    } else {
                                        si[t] = dot_acc(si[t], ah, yh);
                                    }
                                }
                                continue;
                            }
                            for t in 0..RX {
                                let xb = xq[t].add(b * xbs + xhdr);
                                si[t] = dot_acc(si[t], lo, bcast4(xb.add(4 * c)));
                                if two {
                                    sj[t] = dot_acc(sj[t], hi, bcast4(xb.add(16 + 4 * c)));
                                } else {
                                    si[t] = dot_acc(si[t], hi, bcast4(xb.add(16 + 4 * c)));
                                }
                            }
                        }
                    }
                    if two {
                        for t in 0..RX {
                            si[t] = _mm256_add_epi32(si[t], sj[t]);
                        }
                    }
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(gb as *const __m128i));
                    for t in 0..RX {
                        let sumi = if B::NIBBLE_OFFSET != 0 {
                            _mm256_add_epi32(si[t], _mm256_set1_epi32(B::NIBBLE_OFFSET * xp[t].sum[b]))
                        } else if B::BYTE_QUANTS && $vnni {
                            _mm256_sub_epi32(si[t], _mm256_set1_epi32(128 * xp[t].sum[b]))
                        } else {
                            si[t]
                        };
                        let sf = _mm256_cvtepi32_ps(sumi);
                        let dd = _mm256_mul_ps(dw, _mm256_set1_ps(xp[t].d[b]));
                        if B::HAS_MIN {
                            let mw = _mm256_cvtph_ps(_mm_loadu_si128(gb.add(B::MINS) as *const __m128i));
                            let ms = _mm256_mul_ps(mw, _mm256_set1_ps(xp[t].s[b]));
                            acc[t] = _mm256_add_ps(acc[t], _mm256_add_ps(_mm256_mul_ps(dd, sf), ms));
                        } else {
                            acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(sf, dd));
                        }
                    }
                }
                let mut out = [[0.0f32; 8]; 4];
                for t in 0..RX {
                    _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
                }
                out
            }

            /// [`dot_packed`] with one activation row over `groups`
            /// consecutive groups of `gbytes` bytes each, the 8 results of
            /// group `i` stored at `out[8 * i..]`: decoding's matmul, in one
            /// call, so that the weight stream is not broken per group.
            ///
            /// # Safety
            /// As for [`dot_packed`], for every group; `out` must hold
            /// `8 * groups` values.
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn dot_packed_run<B: PackedAvx>(
                g: *const u8,
                gbytes: usize,
                groups: usize,
                xq: *const u8,
                xp: &XPrep,
                nb: usize,
                out: *mut f32,
            ) {
                for i in 0..groups {
                    let r = dot_packed::<B, 1>(g.add(i * gbytes), [xq], [xp], nb);
                    std::ptr::copy_nonoverlapping(r[0].as_ptr(), out.add(8 * i), 8);
                }
            }
        }
    };
}

packed_module!(plain, "avx2,fma,f16c", false);
packed_module!(vnni, "avx2,fma,f16c,avxvnni", true);
