//! Routes a validated tile of dot products to the backend's kernel.
//!
//! A tile is `RW` weight rows by `RX` activation rows with one of the two
//! equal to 1; result `p` is the dot of pair `p` (entries past
//! `max(RW, RX)` are unused). Every kernel computes each pair with the same
//! operation sequence as a 1 x 1 tile, so tiling never changes a result.

use super::dot_scalar;
use super::prep::XPrep;
use super::types::GgmlType;
use super::Backend;

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
        use super::dot_avx2::{K_Q4_0, K_Q4_1, K_Q8_0};
        use super::packed_avx2::{plain, vnni};
        let (gp, xq) = (g.as_ptr(), xs.map(|s| s.as_ptr()));
        macro_rules! go {
            ($k:expr) => {
                // SAFETY: SIMD backends are only passed in when available; the
                // caller sized the group, activation rows and preparations.
                unsafe {
                    if b == Backend::AvxVnni {
                        vnni::dot_packed::<{ $k }, RX>(gp, xq, xp, nb)
                    } else {
                        plain::dot_packed::<{ $k }, RX>(gp, xq, xp, nb)
                    }
                }
            };
        }
        return match ty {
            GgmlType::Q4_0 => Some(go!(K_Q4_0)),
            GgmlType::Q4_1 => Some(go!(K_Q4_1)),
            GgmlType::Q8_0 => Some(go!(K_Q8_0)),
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
        use super::dot_avx2::{K_Q4_0, K_Q4_1, K_Q8_0};
        use super::packed_avx2::{plain, vnni};
        let (gp, xq, op) = (g.as_ptr(), x.as_ptr(), out.as_mut_ptr());
        macro_rules! go {
            ($k:expr) => {
                // SAFETY: SIMD backends are only passed in when available; the
                // groups and the output are sized above, the activation row
                // and its preparation by the caller.
                unsafe {
                    if b == Backend::AvxVnni {
                        vnni::dot_packed_run::<{ $k }>(gp, gbytes, groups, xq, xp, nb, op)
                    } else {
                        plain::dot_packed_run::<{ $k }>(gp, gbytes, groups, xq, xp, nb, op)
                    }
                }
            };
        }
        match ty {
            GgmlType::Q4_0 => go!(K_Q4_0),
            GgmlType::Q4_1 => go!(K_Q4_1),
            GgmlType::Q8_0 => go!(K_Q8_0),
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
        widen(dot_scalar::dot_rows::<RX>(ty, w[0], xs, n))
    } else {
        let mut out = [0.0f32; 4];
        for (o, wr) in out.iter_mut().zip(w) {
            let [v] = dot_scalar::dot_rows::<1>(ty, wr, [xs[0]], n);
            *o = v;
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::dot_avx2::{self, plain, vnni, F_BF16, F_F16, F_F32};
    use super::super::dot_avx2::{K_Q4_0, K_Q4_1, K_Q5_0, K_Q5_1, K_Q8_0};
    use super::super::dot_avx2_k::{dot_q45k, dot_q6k};
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
            ($k:expr) => {
                if use_vnni {
                    vnni::dot_q32::<{ $k }, RW, RX>(wp, xp, nb, pf)
                } else {
                    plain::dot_q32::<{ $k }, RW, RX>(wp, xp, nb, pf)
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
            GgmlType::Q4_0 => q32!(K_Q4_0),
            GgmlType::Q4_1 => q32!(K_Q4_1),
            GgmlType::Q5_0 => q32!(K_Q5_0),
            GgmlType::Q5_1 => q32!(K_Q5_1),
            GgmlType::Q8_0 => q32!(K_Q8_0),
            GgmlType::Q4_K => per_w!(dot_q45k, false),
            GgmlType::Q5_K => per_w!(dot_q45k, true),
            GgmlType::Q6_K => per_w!(dot_q6k),
            GgmlType::F32 => float!(F_F32, F_F32),
            GgmlType::F16 => float!(F_F16, F_F16),
            GgmlType::BF16 => float!(F_BF16, F_F32),
            _ => super::dot_tile::<RW, RX>(super::Backend::Scalar, ty, w, xs, n),
        }
    }
}
