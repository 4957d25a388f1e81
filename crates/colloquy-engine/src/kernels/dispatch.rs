//! Every choice of a kernel by backend, in one place: the [`Kernels`]
//! tables (quantizers, attention, the f32 dot), chosen once per backend,
//! and the routing of validated dot-product tiles and packed groups, whose
//! kernels are generic over their shape.
//!
//! A tile
//! A tile is `RW` weight rows by `RX` activation rows with one of the two
//! equal to 1; result `p` is the dot of pair `p` (entries past
//! `max(RW, RX)` are unused). Every kernel computes each pair with the same
//! operation sequence as a 1 x 1 tile, so tiling never changes a result.

use super::backend::{Backend, Kernels};
use super::prep::XPrep;
use super::types::GgmlType;
use super::{attend, blocks, packed_iq4xs, packed_k, packed_q6k, quantize};

/// The portable kernels: the reference every other table must equal.
static PORTABLE: Kernels = Kernels {
    backend: Backend::Scalar,
    q8_0: quantize::q8_0,
    q8_1: quantize::q8_1,
    q8_k: quantize::q8_k,
    scores_f32: attend::scores_f32,
    scores_f16: attend::scores_f16,
    weighted_sum_f32: attend::weighted_sum_f32,
    weighted_sum_f16: attend::weighted_sum_f16,
    dot_f32: blocks::float::dot_f32,
};

/// The AVX2 table (the AVX-VNNI one differs only in its dot tiles).
///
/// SAFETY (every entry): these tables are only handed out by
/// [`Backend::kernels`] for a backend that [`Backend::is_available`] on this
/// CPU, which means AVX2, FMA and F16C; the bounds are checked by the
/// [`Kernels`] methods before the entry is called.
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_table {
    ($backend:expr) => {
        Kernels {
            backend: $backend,
            q8_0: |x, y| {
                if !unsafe { super::quantize_avx2::q8_0_or_1(x, y, false) } {
                    quantize::q8_0(x, y)
                }
            },
            q8_1: |x, y| {
                if !unsafe { super::quantize_avx2::q8_0_or_1(x, y, true) } {
                    quantize::q8_1(x, y)
                }
            },
            q8_k: |x, y| {
                if !unsafe { super::quantize_avx2::q8_k(x, y) } {
                    quantize::q8_k(x, y)
                }
            },
            scores_f32: |q, r, s, sc, o| unsafe { attend::avx2::scores_f32(q, r, s, sc, o) },
            scores_f16: |q, r, s, sc, o| unsafe { attend::avx2::scores_f16(q, r, s, sc, o) },
            weighted_sum_f32: |p, r, s, o| unsafe { attend::avx2::weighted_sum_f32(p, r, s, o) },
            weighted_sum_f16: |p, r, s, o| unsafe { attend::avx2::weighted_sum_f16(p, r, s, o) },
            dot_f32: |a, b| unsafe {
                use super::dot_avx2::{dot_float, F_F32};
                dot_float::<F_F32, F_F32>(a.as_ptr().cast(), b.as_ptr().cast(), a.len().min(b.len()))
            },
        }
    };
}

#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = avx2_table!(Backend::Avx2);
#[cfg(target_arch = "x86_64")]
static AVX_VNNI: Kernels = avx2_table!(Backend::AvxVnni);

impl Backend {
    /// The kernel table of this backend, or of [`Backend::Scalar`] when this
    /// CPU cannot run it.
    pub fn kernels(self) -> &'static Kernels {
        match self.usable() {
            Backend::Scalar => &PORTABLE,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => &AVX2,
            #[cfg(target_arch = "x86_64")]
            Backend::AvxVnni => &AVX_VNNI,
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx2 | Backend::AvxVnni => &PORTABLE,
        }
    }
}

impl Kernels {
    /// The table of [`Backend::active`], chosen once per process.
    pub fn active() -> &'static Kernels {
        Backend::active().kernels()
    }
}

/// Dots of one packed Q4_K, Q5_K, Q6_K or IQ4_XS group (`g`, `nb` group-blocks of
/// type `ty`) with `xs` (1 or 4 Q8_K rows; with fewer than 4, only the first
/// is read). Result `[t][r]`: activation row `t`, group row `r`.
pub(super) fn dot_group_k(
    b: Backend,
    ty: GgmlType,
    g: &[u8],
    xs: [&[u8]; 4],
    k: usize,
    nb: usize,
) -> [[f32; 8]; 4] {
    let four = k == 4;
    #[cfg(target_arch = "x86_64")]
    if b != Backend::Scalar {
        use super::packed_k::{plain, vnni};
        use super::packed_q6k::avx2;
        let (g4, x4) = (g.as_ptr(), xs.map(|x| x.as_ptr()));
        macro_rules! go {
            ($m:ident) => {
                // SAFETY: SIMD backends are only passed in when available; the
                // caller checked that the group and the rows cover `nb` blocks.
                unsafe {
                    match (ty, four) {
                        (GgmlType::Q6_K, true) => avx2::dot_group(g4, x4, nb),
                        (GgmlType::Q6_K, false) => avx2::dot_group(g4, [x4[0]], nb),
                        (GgmlType::IQ4_XS, true) => packed_iq4xs::avx2::dot_group(g4, x4, nb),
                        (GgmlType::IQ4_XS, false) => packed_iq4xs::avx2::dot_group(g4, [x4[0]], nb),
                        (GgmlType::Q5_K, true) => $m::dot_group::<4, true>(g4, x4, nb),
                        (GgmlType::Q5_K, false) => $m::dot_group::<1, true>(g4, [x4[0]], nb),
                        (_, true) => $m::dot_group::<4, false>(g4, x4, nb),
                        (_, false) => $m::dot_group::<1, false>(g4, [x4[0]], nb),
                    }
                }
            };
        }
        return if b == Backend::AvxVnni { go!(vnni) } else { go!(plain) };
    }
    let _ = b;
    match (ty, four) {
        (GgmlType::Q6_K, true) => packed_q6k::dot_group(g, xs, nb),
        (GgmlType::Q6_K, false) => packed_q6k::dot_group(g, [xs[0]], nb),
        (GgmlType::IQ4_XS, true) => packed_iq4xs::dot_group(g, xs, nb),
        (GgmlType::IQ4_XS, false) => packed_iq4xs::dot_group(g, [xs[0]], nb),
        (GgmlType::Q5_K, true) => packed_k::dot_group::<4, true>(g, xs, nb),
        (GgmlType::Q5_K, false) => packed_k::dot_group::<1, true>(g, [xs[0]], nb),
        (_, true) => packed_k::dot_group::<4, false>(g, xs, nb),
        (_, false) => packed_k::dot_group::<1, false>(g, [xs[0]], nb),
    }
}

/// Dots of one packed 8-row group (`g`, `nb` group-blocks of type `ty`)
/// with `RX` activation rows; `None` on the portable backend (which then
/// rebuilds the rows). Result `[t][r]`: activation row `t`, group row `r`.
pub(super) fn dot_packed<const RX: usize>(
    b: Backend,
    ty: GgmlType,
    g: &[u8],
    xs: [&[u8]; RX],
    xp: [&XPrep; RX],
    nb: usize,
) -> Option<[[f32; 8]; 4]> {
    debug_assert!(RX <= 4 && xp.iter().all(|p| p.d.len() >= nb));
    #[cfg(target_arch = "x86_64")]
    if b != Backend::Scalar {
        use super::blocks::{BlockIQ4_NL, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0};
        use super::packed_avx2::{plain, vnni};
        let (gp, xq) = (g.as_ptr(), xs.map(|s| s.as_ptr()));
        macro_rules! go {
            ($k:ty) => {
                // SAFETY: SIMD backends are only passed in when available; the
                // caller sized the group, activation rows and preparations.
                unsafe {
                    if b == Backend::AvxVnni {
                        vnni::dot_packed::<$k, RX>(gp, xq, xp, nb)
                    } else {
                        plain::dot_packed::<$k, RX>(gp, xq, xp, nb)
                    }
                }
            };
        }
        return match ty {
            GgmlType::Q4_0 => Some(go!(BlockQ4_0)),
            GgmlType::Q4_1 => Some(go!(BlockQ4_1)),
            GgmlType::Q5_0 => Some(go!(BlockQ5_0)),
            GgmlType::Q8_0 => Some(go!(BlockQ8_0)),
            GgmlType::IQ4_NL => Some(go!(BlockIQ4_NL)),
            _ => None,
        };
    }
    let _ = (b, ty, g, xs, xp, nb);
    None
}

/// Dots of one activation row `x` (prepared in `xp`) with `out.len() / 8` consecutive packed
/// groups (`gbytes` each, starting at `g`), the 8 results of each group in
/// turn; `false` (nothing written) on the portable backend or a type
/// without a packed SIMD kernel. Bit for bit what [`dot_packed`] gives per
/// group.
pub(super) fn dot_packed_run(
    b: Backend,
    ty: GgmlType,
    g: &[u8],
    gbytes: usize,
    (x, xp): (&[u8], &XPrep),
    nb: usize,
    out: &mut [f32],
) -> bool {
    let groups = out.len() / 8;
    assert!(g.len() >= groups * gbytes && xp.d.len() >= nb, "dot_packed_run: short group or activation data");
    #[cfg(target_arch = "x86_64")]
    if b != Backend::Scalar {
        use super::blocks::{BlockIQ4_NL, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0};
        use super::packed_avx2::{plain, vnni};
        let (gp, xq, op) = (g.as_ptr(), x.as_ptr(), out.as_mut_ptr());
        macro_rules! go {
            ($k:ty) => {
                // SAFETY: SIMD backends are only passed in when available; the
                // groups and the output are sized above, the activation row
                // and its preparation by the caller.
                unsafe {
                    if b == Backend::AvxVnni {
                        vnni::dot_packed_run::<$k>(gp, gbytes, groups, xq, xp, nb, op)
                    } else {
                        plain::dot_packed_run::<$k>(gp, gbytes, groups, xq, xp, nb, op)
                    }
                }
            };
        }
        match ty {
            GgmlType::Q4_0 => go!(BlockQ4_0),
            GgmlType::Q4_1 => go!(BlockQ4_1),
            GgmlType::Q5_0 => go!(BlockQ5_0),
            GgmlType::Q8_0 => go!(BlockQ8_0),
            GgmlType::IQ4_NL => go!(BlockIQ4_NL),
            _ => return false,
        }
        return true;
    }
    let _ = (b, ty, g, gbytes, x, xp, nb, out);
    false
}

/// Copies the first `R` results into a 4-wide result array.
#[inline(always)]
fn widen<const R: usize>(r: [f32; R]) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    out[..R].copy_from_slice(&r);
    out
}

/// Dots of the tile `w` x `xs`. Every slice must be exactly sized for `n`
/// elements of its format, `ty` must be a dot type and `b` usable here.
pub(super) fn dot_tile<const RW: usize, const RX: usize>(
    b: Backend,
    ty: GgmlType,
    w: [&[u8]; RW],
    xs: [&[u8]; RX],
    n: usize,
) -> [f32; 4] {
    dot_tile_pf::<RW, RX>(b, ty, w, xs, n, 0)
}

/// [`dot_tile`] with a software-prefetch distance `pf` (bytes past each
/// weight row start, 0 for none; a hint only, results are unaffected).
pub(super) fn dot_tile_pf<const RW: usize, const RX: usize>(
    b: Backend,
    ty: GgmlType,
    w: [&[u8]; RW],
    xs: [&[u8]; RX],
    n: usize,
    pf: usize,
) -> [f32; 4] {
    debug_assert!((RW == 1 || RX == 1) && RW <= 4 && RX <= 4);
    #[cfg(target_arch = "x86_64")]
    if b != Backend::Scalar {
        // SAFETY: non-scalar backends are only passed in when
        // `Backend::is_available` holds, and the caller sized every slice.
        return unsafe { x86::dot_tile::<RW, RX>(b == Backend::AvxVnni, ty, w, xs, n, pf) };
    }
    let _ = (b, pf);
    if RW == 1 {
        widen(blocks::dot_rows::<RX>(ty, w[0], xs, n))
    } else {
        let mut out = [0.0f32; 4];
        for (o, wr) in out.iter_mut().zip(w) {
            let [v] = blocks::dot_rows::<1>(ty, wr, [xs[0]], n);
            *o = v;
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::blocks::{BlockIQ4_NL, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
    use super::super::dot_avx2::{self, plain, vnni, F_BF16, F_F16, F_F32};
    use super::super::dot_avx2_k::{dot_iq4xs, dot_q2k, dot_q3k, dot_q45k, dot_q6k};
    use super::widen;
    use super::GgmlType;

    /// # Safety
    /// AVX2/FMA/F16C (and AVX-VNNI when `use_vnni`) must be available; the
    /// slices must be sized as for [`super::dot_tile`].
    #[inline]
    pub(super) unsafe fn dot_tile<const RW: usize, const RX: usize>(
        use_vnni: bool,
        ty: GgmlType,
        w: [&[u8]; RW],
        xs: [&[u8]; RX],
        n: usize,
        pf: usize,
    ) -> [f32; 4] {
        let wp = w.map(|s| s.as_ptr());
        let xp = xs.map(|s| s.as_ptr());
        let nb = n / ty.block_size();
        macro_rules! q32 {
            ($k:ty) => {
                if use_vnni {
                    vnni::dot_q32::<$k, RW, RX>(wp, xp, nb, pf)
                } else {
                    plain::dot_q32::<$k, RW, RX>(wp, xp, nb, pf)
                }
            };
        }
        // Kernels that only tile over activation rows: loop over weight rows.
        macro_rules! per_w {
            ($f:ident $(, $g:expr)?) => {{
                if RW == 1 {
                    widen($f::<$({ $g },)? RX>(wp[0], xp, nb))
                } else {
                    let mut out = [0.0f32; 4];
                    for (o, &p) in out.iter_mut().zip(wp.iter()) {
                        let [v] = $f::<$({ $g },)? 1>(p, [xp[0]], nb);
                        *o = v;
                    }
                    out
                }
            }};
        }
        macro_rules! float {
            ($wt:expr, $xt:expr) => {{
                let mut out = [0.0f32; 4];
                for p in 0..RW.max(RX) {
                    let (i, t) = if RW == 1 { (0, p) } else { (p, 0) };
                    out[p] = dot_avx2::dot_float::<{ $wt }, { $xt }>(wp[i], xp[t], n);
                }
                out
            }};
        }
        match ty {
            GgmlType::Q4_0 => q32!(BlockQ4_0),
            GgmlType::Q4_1 => q32!(BlockQ4_1),
            GgmlType::Q5_0 => q32!(BlockQ5_0),
            GgmlType::Q5_1 => q32!(BlockQ5_1),
            GgmlType::Q8_0 => q32!(BlockQ8_0),
            GgmlType::IQ4_NL => q32!(BlockIQ4_NL),
            GgmlType::Q4_K => per_w!(dot_q45k, false),
            GgmlType::Q5_K => per_w!(dot_q45k, true),
            GgmlType::Q6_K => per_w!(dot_q6k),
            GgmlType::IQ4_XS => per_w!(dot_iq4xs),
            GgmlType::Q2_K => per_w!(dot_q2k),
            GgmlType::Q3_K => per_w!(dot_q3k),
            GgmlType::F32 => float!(F_F32, F_F32),
            GgmlType::F16 => float!(F_F16, F_F16),
            GgmlType::BF16 => float!(F_BF16, F_F32),
            // Activation-only types never reach a tile.
            GgmlType::Q8_1 | GgmlType::Q8_K => {
                super::dot_tile::<RW, RX>(super::Backend::Scalar, ty, w, xs, n)
            }
        }
    }
}
