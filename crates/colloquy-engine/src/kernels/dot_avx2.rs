//! AVX2 + FMA + F16C kernels for the 32-wide quant types and the float types.
//!
//! Callers must have checked that the CPU has these features and that every
//! pointer covers the blocks it is read for (see `mod.rs`).
//!
//! The 32-wide kernels reduce each block to its exact integer dot `sumi` and
//! then run the same float steps as the portable kernels, block by block:
//! `acc + sumi * (d_w * d_x)` (Q4_0/Q5_0/Q8_0) or
//! `acc + ((d_w * d_x) * sumi + m_w * s_x)` (Q4_1/Q5_1), so every backend and
//! every tile shape gives the same bits.
//!
//! Signed-by-signed products (Q8_0 weights) use the `sign` trick, exact for
//! every weight byte as long as the activation bytes avoid -128, which
//! [`super::quantize_row`] never produces.

use super::blocks::{
    BlockIQ4_NL, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, GgmlBlock, WeightBlock,
    IQ4_VALUES,
};
use std::arch::x86_64::*;
use std::mem::offset_of;

/// Horizontal sum of 8 floats in a fixed order: `(lo + hi)`, then pairs, then lanes 0 + 1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Horizontal sum of 8 i32 lanes (exact, wrapping).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Converts one f16 (bit pattern) to f32 with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn h2f(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline(always)]
unsafe fn rd_u16(p: *const u8) -> u16 {
    std::ptr::read_unaligned(p as *const u16)
}
#[inline(always)]
unsafe fn rd_u32(p: *const u8) -> u32 {
    std::ptr::read_unaligned(p as *const u32)
}

/// 16 packed bytes to 32 nibbles: low nibbles in bytes 0..16, high in 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(t), t);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Spreads the 32 bits of `x` to 32 bytes: byte k is 0xFF iff bit k is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits_to_bytes(x: u32) -> __m256i {
    // Byte k takes source byte k / 8, then tests bit k % 8.
    let pick = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), pick);
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit)
}

/// A 32-wide weight block as these kernels read it.
pub(crate) trait Q32Avx: WeightBlock {
    /// No min: pairs with Q8_0 (`d` at 0, quants at 2); otherwise with Q8_1
    /// (`d`, `s`, quants at 4), and the block has its min after `d`.
    const SYM: bool;
    /// Bytes of one activation block.
    const X_BYTES: usize = <Self::Activation as GgmlBlock>::BYTES;
    /// Where the activation block's quants start.
    const X_QS: usize = if Self::SYM { offset_of!(BlockQ8_0, qs) } else { offset_of!(BlockQ8_1, qs) };

    /// The 32 weight quants of the block at `wb` as bytes: signed (`q -
    /// offset`) for the symmetric types, unsigned for those with a min.
    ///
    /// # Safety
    /// AVX2 must be available; `wb` must point at a whole block.
    unsafe fn load_w(wb: *const u8) -> __m256i;
}

impl Q32Avx for BlockQ4_0 {
    const SYM: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w(wb: *const u8) -> __m256i {
        _mm256_sub_epi8(nibbles(wb.add(offset_of!(BlockQ4_0, qs))), _mm256_set1_epi8(8))
    }
}

impl Q32Avx for BlockQ5_0 {
    const SYM: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w(wb: *const u8) -> __m256i {
        // q - 16 as i8: the nibble with 0xF0 or-ed in where the high bit is clear.
        let hb = bits_to_bytes(rd_u32(wb.add(offset_of!(BlockQ5_0, qh))));
        let neg = _mm256_andnot_si256(hb, _mm256_set1_epi8(0xF0u8 as i8));
        _mm256_or_si256(nibbles(wb.add(offset_of!(BlockQ5_0, qs))), neg)
    }
}

impl Q32Avx for BlockQ8_0 {
    const SYM: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w(wb: *const u8) -> __m256i {
        _mm256_loadu_si256(wb.add(offset_of!(BlockQ8_0, qs)) as *const __m256i)
    }
}

impl Q32Avx for BlockIQ4_NL {
    const SYM: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w(wb: *const u8) -> __m256i {
        // Each nibble indexes the 16 values (both 128-bit lanes hold the table).
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4_VALUES.as_ptr() as *const __m128i));
        _mm256_shuffle_epi8(table, nibbles(wb.add(offset_of!(BlockIQ4_NL, qs))))
    }
}

impl Q32Avx for BlockQ4_1 {
    const SYM: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w(wb: *const u8) -> __m256i {
        nibbles(wb.add(offset_of!(BlockQ4_1, qs)))
    }
}

impl Q32Avx for BlockQ5_1 {
    const SYM: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w(wb: *const u8) -> __m256i {
        let hb = bits_to_bytes(rd_u32(wb.add(offset_of!(BlockQ5_1, qh))));
        let hi = _mm256_and_si256(hb, _mm256_set1_epi8(0x10));
        _mm256_or_si256(nibbles(wb.add(offset_of!(BlockQ5_1, qs))), hi)
    }
}

/// Per-block scale products of a tile of `P = max(RW, RX)` (weight row,
/// activation row) pairs, one side having a single row. Symmetric kinds: lane
/// `p` holds `d_w * d_x` of pair `p`. Min kinds: lane `2p` holds `d_w * d_x`
/// and lane `2p + 1` holds `m_w * s_x`. Both products are single IEEE
/// multiplications, whatever the tile shape.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_scales<B: Q32Avx, const RW: usize, const RX: usize>(
    w: &[*const u8; RW],
    xs: &[*const u8; RX],
    wo: usize,
    xo: usize,
) -> __m256 {
    let pc = if RW > RX { RW } else { RX };
    if B::SYM {
        let single = if RW == 1 { rd_u16(w[0].add(wo)) } else { rd_u16(xs[0].add(xo)) };
        let mut lo = 0u64;
        for p in 0..pc {
            let h = if RW == 1 { rd_u16(xs[p].add(xo)) } else { rd_u16(w[p].add(wo)) };
            lo |= (h as u64) << (16 * p);
        }
        let hi = single as u64 * 0x0001_0001_0001_0001;
        let v = _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64));
        _mm256_castps128_ps256(_mm_mul_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v)))
    } else {
        let single = if RW == 1 { rd_u32(w[0].add(wo)) } else { rd_u32(xs[0].add(xo)) };
        let mut m = [0u32; 4];
        for (p, mp) in m.iter_mut().enumerate().take(pc) {
            *mp = if RW == 1 { rd_u32(xs[p].add(xo)) } else { rd_u32(w[p].add(wo)) };
        }
        let a = _mm256_cvtph_ps(_mm_set_epi32(m[3] as i32, m[2] as i32, m[1] as i32, m[0] as i32));
        let b = _mm256_cvtph_ps(_mm_set1_epi32(single as i32));
        _mm256_mul_ps(a, b)
    }
}

/// Exact sums of up to four i32x8 vectors, one per lane of the result.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum4_i32(v: [__m256i; 4]) -> __m128i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h = _mm256_hadd_epi32(h01, h23);
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// Generates a module with the 32-wide-quant tile kernel for one feature set
/// (`vnni` selects AVX-VNNI `vpdpbusd` for the u8 x i8 dot, which gives the
/// same exact i32 sums as `maddubs` + `madd` since the i16 pairs never
/// saturate here: a in 0..=128, b in -128..=127).
macro_rules! q32_module {
    ($module:ident, $feat:literal, $vnni:literal) => {
        pub(crate) mod $module {
            use super::*;

            /// Sums of 4 adjacent u8 x i8 products as 8 i32 lanes.
            #[inline]
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn mul_sum(a: __m256i, b: __m256i) -> __m256i {
                if $vnni {
                    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, b)
                } else {
                    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
                }
            }

            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn block<B: Q32Avx, const RW: usize, const RX: usize>(
                w: &[*const u8; RW],
                xs: &[*const u8; RX],
                ib: usize,
                pf: usize,
                acc: &mut __m128,
            ) {
                let pc = if RW > RX { RW } else { RX };
                let wo = ib * B::BYTES;
                if pf != 0 {
                    for wi in w.iter() {
                        _mm_prefetch::<_MM_HINT_T0>(wi.wrapping_add(wo + pf) as *const i8);
                    }
                }
                let xo = ib * B::X_BYTES;
                let mut qw = [_mm256_setzero_si256(); 4];
                for i in 0..RW {
                    qw[i] = B::load_w(w[i].add(wo));
                }
                let mut qy = [_mm256_setzero_si256(); 4];
                for t in 0..RX {
                    qy[t] = _mm256_loadu_si256(xs[t].add(xo + B::X_QS) as *const __m256i);
                }
                let mut v = [_mm256_setzero_si256(); 4];
                for p in 0..pc {
                    let (i, t) = if RW == 1 { (0, p) } else { (p, 0) };
                    v[p] = if B::SYM {
                        mul_sum(_mm256_sign_epi8(qw[i], qw[i]), _mm256_sign_epi8(qy[t], qw[i]))
                    } else {
                        mul_sum(qw[i], qy[t])
                    };
                }
                let sumi = _mm_cvtepi32_ps(hsum4_i32(v));
                let s = tile_scales::<B, RW, RX>(w, xs, wo, xo);
                if B::SYM {
                    *acc = _mm_add_ps(*acc, _mm_mul_ps(sumi, _mm256_castps256_ps128(s)));
                } else {
                    let lo = _mm256_castps256_ps128(s);
                    let hi = _mm256_extractf128_ps::<1>(s);
                    let dd = _mm_shuffle_ps::<0b10_00_10_00>(lo, hi);
                    let ms = _mm_shuffle_ps::<0b11_01_11_01>(lo, hi);
                    *acc = _mm_add_ps(*acc, _mm_add_ps(_mm_mul_ps(dd, sumi), ms));
                }
            }

            /// Four consecutive blocks of a single row pair: the four block
            /// sums and scale products are computed side by side, then added
            /// to lane 0 of `acc` one block at a time, in order.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn single4<B: Q32Avx>(w: *const u8, x: *const u8, ib: usize, acc: &mut __m128) {
                let (wsz, xsz, hdr) = (B::BYTES, B::X_BYTES, B::X_QS);
                let mut v = [_mm256_setzero_si256(); 4];
                for (k, vk) in v.iter_mut().enumerate() {
                    let wb = w.add((ib + k) * wsz);
                    let qw = B::load_w(wb);
                    let qy = _mm256_loadu_si256(x.add((ib + k) * xsz + hdr) as *const __m256i);
                    *vk = if B::SYM {
                        mul_sum(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qy, qw))
                    } else {
                        mul_sum(qw, qy)
                    };
                }
                let sumi = _mm_cvtepi32_ps(hsum4_i32(v));
                let t = if B::SYM {
                    let mut wl = 0u64;
                    let mut xl = 0u64;
                    for k in 0..4 {
                        wl |= (rd_u16(w.add((ib + k) * wsz)) as u64) << (16 * k);
                        xl |= (rd_u16(x.add((ib + k) * xsz)) as u64) << (16 * k);
                    }
                    let s = _mm256_cvtph_ps(_mm_set_epi64x(xl as i64, wl as i64));
                    let dd = _mm_mul_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
                    _mm_mul_ps(sumi, dd)
                } else {
                    let mut wh = [0i32; 4];
                    let mut xh = [0i32; 4];
                    for k in 0..4 {
                        wh[k] = rd_u32(w.add((ib + k) * wsz)) as i32;
                        xh[k] = rd_u32(x.add((ib + k) * xsz)) as i32;
                    }
                    let a = _mm256_cvtph_ps(_mm_set_epi32(wh[3], wh[2], wh[1], wh[0]));
                    let b = _mm256_cvtph_ps(_mm_set_epi32(xh[3], xh[2], xh[1], xh[0]));
                    let s = _mm256_mul_ps(a, b);
                    let lo = _mm256_castps256_ps128(s);
                    let hi = _mm256_extractf128_ps::<1>(s);
                    let dd = _mm_shuffle_ps::<0b10_00_10_00>(lo, hi);
                    let ms = _mm_shuffle_ps::<0b11_01_11_01>(lo, hi);
                    _mm_add_ps(_mm_mul_ps(dd, sumi), ms)
                };
                let mut a = _mm_add_ss(*acc, t);
                a = _mm_add_ss(a, _mm_movehdup_ps(t));
                a = _mm_add_ss(a, _mm_movehl_ps(t, t));
                a = _mm_add_ss(a, _mm_shuffle_ps::<0b11_11_11_11>(t, t));
                *acc = a;
            }

            /// Dots of a tile of 32-wide-quant weight rows and activation
            /// rows (Q8_0 for the symmetric kinds, Q8_1 otherwise): `RW`
            /// weight rows by `RX` activation rows, one of them 1. Result
            /// `p` is pair `p`; entries past `max(RW, RX)` are 0.
            ///
            /// A non-zero `pf` software-prefetches the weight bytes `pf`
            /// bytes ahead of each row (the rows of a later tile), which keeps
            /// several interleaved row streams flowing from memory.
            ///
            /// # Safety
            /// The CPU must have the module's features; every pointer must
            /// cover `nb` blocks of its format.
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn dot_q32<B: Q32Avx, const RW: usize, const RX: usize>(
                w: [*const u8; RW],
                xs: [*const u8; RX],
                nb: usize,
                pf: usize,
            ) -> [f32; 4] {
                debug_assert!(RW == 1 || RX == 1);
                let mut acc = _mm_setzero_ps();
                let mut ib = 0;
                if RW == 1 && RX == 1 {
                    while ib + 4 <= nb {
                        single4::<B>(w[0], xs[0], ib, &mut acc);
                        ib += 4;
                    }
                }
                while ib < nb {
                    block::<B, RW, RX>(&w, &xs, ib, pf, &mut acc);
                    ib += 1;
                }
                let mut out = [0.0f32; 4];
                _mm_storeu_ps(out.as_mut_ptr(), acc);
                out
            }
        }
    };
}

q32_module!(plain, "avx2,fma,f16c", false);
q32_module!(vnni, "avx2,fma,f16c,avxvnni", true);

/// Float element kinds for [`dot_float`].
pub(crate) const F_F32: u8 = 0;
pub(crate) const F_F16: u8 = 1;
pub(crate) const F_BF16: u8 = 2;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<const T: u8>(p: *const u8, i: usize) -> __m256 {
    match T {
        F_F32 => _mm256_loadu_ps((p as *const f32).add(i)),
        F_F16 => _mm256_cvtph_ps(_mm_loadu_si128((p as *const u16).add(i) as *const __m128i)),
        _ => {
            let h = _mm_loadu_si128((p as *const u16).add(i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load1<const T: u8>(p: *const u8, i: usize) -> f32 {
    match T {
        F_F32 => std::ptr::read_unaligned((p as *const f32).add(i)),
        F_F16 => h2f(rd_u16(p.add(2 * i))),
        _ => f32::from_bits((rd_u16(p.add(2 * i)) as u32) << 16),
    }
}

/// Dot product of `n` float elements: weights of kind `W`, activations of kind `X`.
///
/// Fixed order: four 8-lane FMA accumulators over 32-element steps, then
/// 8-element steps into the first, then `(a0 + a1) + (a2 + a3)` reduced by
/// [`hsum8`], then the last `n % 8` products added one by one.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` and `x` must cover `n` elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_float<const W: u8, const X: u8>(w: *const u8, x: *const u8, n: usize) -> f32 {
    let mut a = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in a.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(load8::<W>(w, i + 8 * k), load8::<X>(x, i + 8 * k), *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        a[0] = _mm256_fmadd_ps(load8::<W>(w, i), load8::<X>(x, i), a[0]);
        i += 8;
    }
    let mut s = hsum8(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    while i < n {
        s += load1::<W>(w, i) * load1::<X>(x, i);
        i += 1;
    }
    s
}
