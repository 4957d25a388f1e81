//! Q4_K and Q6_K weights repacked eight rows at a time (Q6_K: see
//! [`pack_group_q6`]).
//!
//! One group-superblock holds 256 weights of 8 consecutive rows, with
//! everything a lane (row) needs already unpacked:
//!
//! ```text
//!    0..32    d of each row, as f32
//!   32..64    dmin of each row, as f32
//!   64..128   for each of the 8 sub-blocks: each row's 6-bit scale, one byte
//!  128..192   for each sub-block: each row's 6-bit min, one byte
//!  192..1216  for each pair of sub-blocks k, for each 4-byte chunk c: rows 0-7's
//!             quant bytes 32k+4c..32k+4c+4 (low nibbles: sub-block 2k, high: 2k+1)
//! ```
//!
//! That is 1,216 bytes for 8 × 144 in ggml's layout: 6% more, for scales
//! that need no unpacking.
//!
//! A 32-byte load feeds all 8 rows; each row's exact integer sums collect in
//! its own lane and are finished with the portable kernel's float steps
//! (`acc + (dx·d·sumi − dx·dmin·summ)`), so results are bit-identical to
//! `vec_dot` on the original rows.

use super::blocks::{finish_k, finish_q6k, k4_scales, BlockQ8_K, GgmlBlock};
use super::PACK_ROWS;

/// Bytes of one group-superblock.
pub(crate) const GROUP_BYTES: usize = 1216;
const SCALES: usize = 64;
const MINS: usize = 128;
const QUANTS: usize = 192;
/// Bytes of one Q8_K activation block.
const XBLOCK: usize = <BlockQ8_K as GgmlBlock>::BYTES;

/// Writes one group-superblock from the 8 rows' superblocks `rows[r]` (144 bytes each).
pub(crate) fn pack_group(rows: [&[u8]; PACK_ROWS], out: &mut [u8]) {
    for (r, wb) in rows.iter().enumerate() {
        let h = |o: usize| half::f16::from_le_bytes([wb[o], wb[o + 1]]).to_f32();
        out[4 * r..4 * r + 4].copy_from_slice(&h(0).to_le_bytes());
        out[32 + 4 * r..32 + 4 * r + 4].copy_from_slice(&h(2).to_le_bytes());
        let (sc, m) = k4_scales(&wb[4..16]);
        for j in 0..8 {
            out[SCALES + 8 * j + r] = sc[j];
            out[MINS + 8 * j + r] = m[j];
        }
        for k in 0..4 {
            for c in 0..8 {
                let at = QUANTS + 256 * k + 32 * c + 4 * r;
                out[at..at + 4].copy_from_slice(&wb[16 + 32 * k + 4 * c..16 + 32 * k + 4 * c + 4]);
            }
        }
    }
}

/// Rebuilds row `lane`'s superblock (ggml layout) from a group-superblock.
pub(crate) fn unpack_group(g: &[u8], lane: usize, out: &mut [u8]) {
    let f = |o: usize| f32::from_le_bytes([g[o], g[o + 1], g[o + 2], g[o + 3]]);
    out[0..2].copy_from_slice(&half::f16::from_f32(f(4 * lane)).to_le_bytes());
    out[2..4].copy_from_slice(&half::f16::from_f32(f(32 + 4 * lane)).to_le_bytes());
    let sc: [u8; 8] = std::array::from_fn(|j| g[SCALES + 8 * j + lane]);
    let m: [u8; 8] = std::array::from_fn(|j| g[MINS + 8 * j + lane]);
    // The inverse of ggml's 12-byte packing of eight 6-bit scales and mins.
    let s = &mut out[4..16];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    for k in 0..4 {
        for c in 0..8 {
            let at = QUANTS + 256 * k + 32 * c + 4 * lane;
            out[16 + 32 * k + 4 * c..16 + 32 * k + 4 * c + 4].copy_from_slice(&g[at..at + 4]);
        }
    }
}

/// Portable dots of one packed group (`nb` group-superblocks) with `R`
/// Q8_K activation rows: `[t][r]`, the same bits as the scalar `vec_dot`.
pub(crate) fn dot_group<const R: usize>(g: &[u8], xs: [&[u8]; R], nb: usize) -> [[f32; 8]; 4] {
    let mut acc = [[0.0f32; 8]; 4];
    let i32_at = |b: &[u8], o: usize| i32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    for ib in 0..nb {
        let gb = &g[ib * GROUP_BYTES..(ib + 1) * GROUP_BYTES];
        for (t, x) in xs.iter().enumerate() {
            let xb = &x[ib * XBLOCK..(ib + 1) * XBLOCK];
            let dx = f32::from_le_bytes([xb[0], xb[1], xb[2], xb[3]]);
            let bsum = |j: usize| i16::from_le_bytes([xb[260 + 2 * j], xb[261 + 2 * j]]) as i32;
            for lane in 0..PACK_ROWS {
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..8 {
                    let (k, nibble) = (j / 2, j % 2);
                    let mut d = 0i32;
                    for c in 0..8 {
                        for e in 0..4 {
                            let byte = gb[QUANTS + 256 * k + 32 * c + 4 * lane + e];
                            let q = if nibble == 0 { byte & 0xF } else { byte >> 4 };
                            d += q as i32 * xb[4 + 32 * j + 4 * c + e] as i8 as i32;
                        }
                    }
                    sumi += gb[SCALES + 8 * j + lane] as i32 * d;
                    summ += gb[MINS + 8 * j + lane] as i32 * (bsum(2 * j) + bsum(2 * j + 1));
                }
                let f = |o: usize| f32::from_bits(i32_at(gb, o) as u32);
                acc[t][lane] = finish_k(acc[t][lane], dx, f(4 * lane), f(32 + 4 * lane), sumi, summ);
            }
        }
    }
    acc
}

/// Q6_K: bytes of one group-superblock (see [`pack_group_q6`]).
pub(crate) const GROUP_BYTES_Q6: usize = 2208;
const Q6_SCALES: usize = 32;
const Q6_QUANTS: usize = 160;

/// Writes one Q6_K group-superblock from the 8 rows' superblocks (210 bytes each):
/// `d` as f32 (0..32), the 16 signed scales `[j][row]` (32..160), then each 6-bit
/// quant unsigned (0..63) in element order, 4-byte chunks `[c][row]` (160..2208).
/// 2,208 bytes against 8 × 210: 31% more, for quants that need no unpacking.
pub(crate) fn pack_group_q6(rows: [&[u8]; PACK_ROWS], out: &mut [u8]) {
    for (r, wb) in rows.iter().enumerate() {
        let d = half::f16::from_le_bytes([wb[208], wb[209]]).to_f32();
        out[4 * r..4 * r + 4].copy_from_slice(&d.to_le_bytes());
        for j in 0..16 {
            out[Q6_SCALES + 8 * j + r] = wb[192 + j];
        }
        let mut u = [0u8; 256];
        for h in 0..2 {
            let (ql, qh) = (&wb[64 * h..64 * h + 64], &wb[128 + 32 * h..128 + 32 * h + 32]);
            for l in 0..32 {
                u[128 * h + l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                u[128 * h + l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                u[128 * h + l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                u[128 * h + l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
        for c in 0..64 {
            let at = Q6_QUANTS + 32 * c + 4 * r;
            out[at..at + 4].copy_from_slice(&u[4 * c..4 * c + 4]);
        }
    }
}

/// Rebuilds row `lane`'s Q6_K superblock (ggml layout) from a group-superblock.
pub(crate) fn unpack_group_q6(g: &[u8], lane: usize, out: &mut [u8]) {
    let u: [u8; 256] = std::array::from_fn(|e| g[Q6_QUANTS + 32 * (e / 4) + 4 * lane + e % 4]);
    for h in 0..2 {
        for l in 0..32 {
            let v = [0, 32, 64, 96].map(|o| u[128 * h + l + o]);
            out[64 * h + l] = (v[0] & 0xF) | ((v[2] & 0xF) << 4);
            out[64 * h + l + 32] = (v[1] & 0xF) | ((v[3] & 0xF) << 4);
            out[128 + 32 * h + l] =
                (v[0] >> 4) | ((v[1] >> 4) << 2) | ((v[2] >> 4) << 4) | ((v[3] >> 4) << 6);
        }
    }
    for j in 0..16 {
        out[192 + j] = g[Q6_SCALES + 8 * j + lane];
    }
    let d = f32::from_le_bytes([g[4 * lane], g[4 * lane + 1], g[4 * lane + 2], g[4 * lane + 3]]);
    out[208..210].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
}

/// Portable dots of one packed Q6_K group with `R` Q8_K activation rows, the
/// same bits as the scalar `vec_dot`.
pub(crate) fn dot_group_q6<const R: usize>(g: &[u8], xs: [&[u8]; R], nb: usize) -> [[f32; 8]; 4] {
    let mut acc = [[0.0f32; 8]; 4];
    for ib in 0..nb {
        let gb = &g[ib * GROUP_BYTES_Q6..(ib + 1) * GROUP_BYTES_Q6];
        for (t, x) in xs.iter().enumerate() {
            let xb = &x[ib * XBLOCK..(ib + 1) * XBLOCK];
            let dx = f32::from_le_bytes([xb[0], xb[1], xb[2], xb[3]]);
            for lane in 0..PACK_ROWS {
                let mut sumi = 0i32;
                for j in 0..16 {
                    let mut d = 0i32;
                    for e in 16 * j..16 * j + 16 {
                        let q = gb[Q6_QUANTS + 32 * (e / 4) + 4 * lane + e % 4] as i32 - 32;
                        d += q * xb[4 + e] as i8 as i32;
                    }
                    sumi += gb[Q6_SCALES + 8 * j + lane] as i8 as i32 * d;
                }
                let wd =
                    f32::from_le_bytes([gb[4 * lane], gb[4 * lane + 1], gb[4 * lane + 2], gb[4 * lane + 3]]);
                acc[t][lane] = finish_q6k(acc[t][lane], dx, wd, sumi);
            }
        }
    }
    acc
}

/// AVX2 versions of [`dot_group`], with the same bits: `plain` (AVX2) and
/// `vnni` (AVX-VNNI, whose `vpdpbusd` sums each lane's four products in i32).
#[cfg(target_arch = "x86_64")]
macro_rules! q4k_module {
    ($module:ident, $feat:literal, $vnni:literal) => {
        pub(crate) mod $module {
            use super::{GROUP_BYTES, GROUP_BYTES_Q6, MINS, Q6_QUANTS, Q6_SCALES, QUANTS, SCALES, XBLOCK};
            use std::arch::x86_64::*;

            /// # Safety
            /// The CPU must have the module's features; `g` must cover `nb`
            /// group-superblocks and every `xs[t]` `nb` Q8_K blocks.
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn dot_group<const R: usize>(
                g: *const u8,
                xs: [*const u8; R],
                nb: usize,
            ) -> [[f32; 8]; 4] {
                let bcast4 = |p: *const u8| _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32));
                let bytes8 = |p: *const u8| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
                let m4 = _mm256_set1_epi8(0x0F);
                let mut acc = [_mm256_setzero_ps(); 4];
                for ib in 0..nb {
                    let gb = g.add(ib * GROUP_BYTES);
                    let mut sumi = [_mm256_setzero_si256(); R];
                    for k in 0..4 {
                        // Plain: each lane's pair of i16 sums stays within 8 * 2 * 15 * 127 = 30,480.
                        let mut lo = [_mm256_setzero_si256(); R];
                        let mut hi = [_mm256_setzero_si256(); R];
                        for c in 0..8 {
                            let w = _mm256_loadu_si256(gb.add(QUANTS + 256 * k + 32 * c) as *const __m256i);
                            let wl = _mm256_and_si256(w, m4);
                            let wh = _mm256_and_si256(_mm256_srli_epi16::<4>(w), m4);
                            for t in 0..R {
                                let xb = xs[t].add(ib * XBLOCK + 4 + 64 * k + 4 * c);
                                let (yl, yh) = (bcast4(xb), bcast4(xb.add(32)));
                                if $vnni {
                                    lo[t] = _mm256_dpbusd_avx_epi32(lo[t], wl, yl);
                                    hi[t] = _mm256_dpbusd_avx_epi32(hi[t], wh, yh);
                                } else {
                                    lo[t] = _mm256_add_epi16(lo[t], _mm256_maddubs_epi16(wl, yl));
                                    hi[t] = _mm256_add_epi16(hi[t], _mm256_maddubs_epi16(wh, yh));
                                }
                            }
                        }
                        let (sl, sh) = (bytes8(gb.add(SCALES + 16 * k)), bytes8(gb.add(SCALES + 16 * k + 8)));
                        for t in 0..R {
                            let s = if $vnni {
                                _mm256_add_epi32(_mm256_mullo_epi32(lo[t], sl), _mm256_mullo_epi32(hi[t], sh))
                            } else {
                                // Each lane's scale as the i16 pair (sc, sc), for its pair of sums.
                                let pair = |v: __m256i| _mm256_or_si256(v, _mm256_slli_epi32::<16>(v));
                                _mm256_add_epi32(
                                    _mm256_madd_epi16(lo[t], pair(sl)),
                                    _mm256_madd_epi16(hi[t], pair(sh)),
                                )
                            };
                            sumi[t] = _mm256_add_epi32(sumi[t], s);
                        }
                    }
                    let wd = _mm256_loadu_ps(gb as *const f32);
                    let wdmin = _mm256_loadu_ps(gb.add(32) as *const f32);
                    for t in 0..R {
                        let xb = xs[t].add(ib * XBLOCK);
                        // Sums of each 32 activations, from the Q8_K sums of 16.
                        let ones = _mm256_set1_epi16(1);
                        let pairs =
                            _mm256_madd_epi16(_mm256_loadu_si256(xb.add(260) as *const __m256i), ones);
                        let mut bs = [0i32; 8];
                        _mm256_storeu_si256(bs.as_mut_ptr() as *mut __m256i, pairs);
                        let mut summ = _mm256_setzero_si256();
                        for (j, &b) in bs.iter().enumerate() {
                            let m = bytes8(gb.add(MINS + 8 * j));
                            summ = _mm256_add_epi32(summ, _mm256_mullo_epi32(m, _mm256_set1_epi32(b)));
                        }
                        let dx = _mm256_set1_ps(std::ptr::read_unaligned(xb as *const f32));
                        let d = _mm256_mul_ps(dx, wd);
                        let dmin = _mm256_mul_ps(dx, wdmin);
                        let v = _mm256_sub_ps(
                            _mm256_mul_ps(d, _mm256_cvtepi32_ps(sumi[t])),
                            _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(summ)),
                        );
                        acc[t] = _mm256_add_ps(acc[t], v);
                    }
                }
                let mut out = [[0.0f32; 8]; 4];
                for (o, a) in out.iter_mut().zip(acc) {
                    _mm256_storeu_ps(o.as_mut_ptr(), a);
                }
                out
            }

            /// The Q6_K kernel: unsigned quants, the `-32` taken out exactly
            /// through the activation's sums of 16.
            ///
            /// # Safety
            /// As for [`dot_group`], with Q6_K group-superblocks.
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn dot_group_q6<const R: usize>(
                g: *const u8,
                xs: [*const u8; R],
                nb: usize,
            ) -> [[f32; 8]; 4] {
                let bcast4 = |p: *const u8| _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32));
                let scales = |p: *const u8| _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i));
                // Two signed i32 lanes' low halves as one i16 pair per lane.
                let pair = |a: __m256i, b: __m256i| {
                    _mm256_or_si256(
                        _mm256_and_si256(a, _mm256_set1_epi32(0xFFFF)),
                        _mm256_slli_epi32::<16>(b),
                    )
                };
                let mut acc = [_mm256_setzero_ps(); 4];
                for ib in 0..nb {
                    let gb = g.add(ib * GROUP_BYTES_Q6);
                    let mut sumu = [_mm256_setzero_si256(); R];
                    let mut corr = [_mm256_setzero_si256(); R];
                    for j in 0..16 {
                        let sc = scales(gb.add(Q6_SCALES + 8 * j));
                        let w: [__m256i; 4] = std::array::from_fn(|c| {
                            _mm256_loadu_si256(gb.add(Q6_QUANTS + 32 * (4 * j + c)) as *const __m256i)
                        });
                        for t in 0..R {
                            let xb = xs[t].add(ib * XBLOCK + 4 + 16 * j);
                            let s = if $vnni {
                                let mut d = _mm256_setzero_si256();
                                for (c, wc) in w.iter().enumerate() {
                                    d = _mm256_dpbusd_avx_epi32(d, *wc, bcast4(xb.add(4 * c)));
                                }
                                _mm256_mullo_epi32(d, sc)
                            } else {
                                // Two chunks per i16 sum: at most 2 * 2 * 63 * 127 = 32,004.
                                let p = |c: usize| _mm256_maddubs_epi16(w[c], bcast4(xb.add(4 * c)));
                                let sp = pair(sc, sc);
                                _mm256_add_epi32(
                                    _mm256_madd_epi16(_mm256_add_epi16(p(0), p(1)), sp),
                                    _mm256_madd_epi16(_mm256_add_epi16(p(2), p(3)), sp),
                                )
                            };
                            sumu[t] = _mm256_add_epi32(sumu[t], s);
                        }
                    }
                    // Σ_j sc_j · bsum_j, two sub-blocks per madd.
                    for i in 0..8 {
                        let sp =
                            pair(scales(gb.add(Q6_SCALES + 16 * i)), scales(gb.add(Q6_SCALES + 16 * i + 8)));
                        for t in 0..R {
                            let b = bcast4(xs[t].add(ib * XBLOCK + 260 + 4 * i));
                            corr[t] = _mm256_add_epi32(corr[t], _mm256_madd_epi16(sp, b));
                        }
                    }
                    let wd = _mm256_loadu_ps(gb as *const f32);
                    for t in 0..R {
                        let sumi = _mm256_sub_epi32(sumu[t], _mm256_slli_epi32::<5>(corr[t]));
                        let dx =
                            _mm256_set1_ps(std::ptr::read_unaligned(xs[t].add(ib * XBLOCK) as *const f32));
                        let v = _mm256_mul_ps(_mm256_mul_ps(dx, wd), _mm256_cvtepi32_ps(sumi));
                        acc[t] = _mm256_add_ps(acc[t], v);
                    }
                }
                let mut out = [[0.0f32; 8]; 4];
                for (o, a) in out.iter_mut().zip(acc) {
                    _mm256_storeu_ps(o.as_mut_ptr(), a);
                }
                out
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
q4k_module!(plain, "avx2,fma,f16c", false);
#[cfg(target_arch = "x86_64")]
q4k_module!(vnni, "avx2,fma,f16c,avxvnni", true);
