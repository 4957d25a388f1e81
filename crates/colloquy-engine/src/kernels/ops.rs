//! Row operations on f32 slices: normalization, rotary embeddings, softmax,
//! activations, element-wise arithmetic and f16 conversions.
//!
//! All are scalar, sequential and deterministic per row; they follow ggml's
//! formulas and operation order where ggml's reference is scalar. Slices of
//! different lengths are processed up to the shorter one (debug builds
//! assert equal lengths).

use half::f16;

/// RMS normalization with a weight, as ggml's `rms_norm` followed by `mul`:
/// the mean of squares is summed in f64, `scale = 1 / sqrt(mean + eps)` in
/// f32, then `out[i] = (x[i] * scale) * w[i]`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert!(x.len() == w.len() && x.len() == out.len());
    let mut sum = 0.0f64;
    for &v in x {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len().max(1) as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * g;
    }
}

/// Fills `cache` (length `n_rot`) with `[cos, sin]` pairs for position `pos`,
/// as ggml's `rope_cache_init` does without YaRN: `theta_scale =
/// base^(-2/n_rot)`, `theta` starts at `pos` and is multiplied by
/// `theta_scale` per pair (in f32), each angle is `freq_scale * theta`.
pub fn rope_cache(pos: usize, n_rot: usize, freq_base: f32, freq_scale: f32, cache: &mut [f32]) {
    debug_assert!(n_rot.is_multiple_of(2) && cache.len() >= n_rot);
    let theta_scale = freq_base.powf(-2.0f32 / n_rot as f32);
    let mut theta = pos as f32;
    for pair in cache.chunks_exact_mut(2).take(n_rot / 2) {
        let t = freq_scale * theta;
        pair[0] = t.cos();
        pair[1] = t.sin();
        theta *= theta_scale;
    }
}

/// [`rope_cache`] with per-pair frequency factors and a magnitude scale, as
/// ggml's `rope_cache_init` does when `freq_factors` is given (Llama 3's
/// `rope_freqs`, Phi-3's LongRoPE factors) and YaRN is off: pair `i`'s angle
/// is `freq_scale * (theta_i / factors[i])` and its cos/sin are multiplied
/// by `mscale` (ggml's `attn_factor`, 1 unless the model sets one).
pub fn rope_cache_ext(
    pos: usize,
    n_rot: usize,
    freq_base: f32,
    freq_scale: f32,
    factors: Option<&[f32]>,
    mscale: f32,
    cache: &mut [f32],
) {
    debug_assert!(n_rot.is_multiple_of(2) && cache.len() >= n_rot);
    if let Some(f) = factors {
        debug_assert!(f.len() >= n_rot / 2);
    }
    let theta_scale = freq_base.powf(-2.0f32 / n_rot as f32);
    let mut theta = pos as f32;
    for (i, pair) in cache.chunks_exact_mut(2).take(n_rot / 2).enumerate() {
        let ff = factors.map_or(1.0, |f| f[i]);
        let t = freq_scale * (theta / ff);
        pair[0] = t.cos() * mscale;
        pair[1] = t.sin() * mscale;
        theta *= theta_scale;
    }
}

/// Rotates adjacent pairs `(x[2i], x[2i+1])` of the first `cache.len()`
/// elements of a head vector by the angles in `cache` (from [`rope_cache`]);
/// llama-style ("normal") RoPE.
pub fn rope_norm_cached(x: &mut [f32], cache: &[f32]) {
    debug_assert!(cache.len() <= x.len());
    for (p, cs) in x.chunks_exact_mut(2).zip(cache.chunks_exact(2)) {
        let (c, s) = (cs[0], cs[1]);
        let (x0, x1) = (p[0], p[1]);
        p[0] = x0 * c - x1 * s;
        p[1] = x0 * s + x1 * c;
    }
}

/// Rotates pairs `(x[i], x[i + n_rot/2])` of the first `n_rot = cache.len()`
/// elements by the angles in `cache`; NeoX-style RoPE (Gemma, Qwen).
pub fn rope_neox_cached(x: &mut [f32], cache: &[f32]) {
    let n_rot = cache.len() & !1;
    debug_assert!(n_rot <= x.len());
    let half = n_rot / 2;
    if n_rot > x.len() {
        return;
    }
    let (lo, hi) = x[..n_rot].split_at_mut(half);
    for ((a, b), cs) in lo.iter_mut().zip(hi.iter_mut()).zip(cache.chunks_exact(2)) {
        let (c, s) = (cs[0], cs[1]);
        let (x0, x1) = (*a, *b);
        *a = x0 * c - x1 * s;
        *b = x0 * s + x1 * c;
    }
}

/// llama-style RoPE of one head vector in place at position `pos`, rotating
/// its first `n_rot` elements (even) and leaving the rest unchanged.
pub fn rope_norm(x: &mut [f32], pos: usize, n_rot: usize, freq_base: f32, freq_scale: f32) {
    with_rope_cache(pos, n_rot, freq_base, freq_scale, |cache| rope_norm_cached(x, cache));
}

/// NeoX-style RoPE of one head vector in place at position `pos`, rotating
/// its first `n_rot` elements (even) and leaving the rest unchanged.
pub fn rope_neox(x: &mut [f32], pos: usize, n_rot: usize, freq_base: f32, freq_scale: f32) {
    with_rope_cache(pos, n_rot, freq_base, freq_scale, |cache| rope_neox_cached(x, cache));
}

/// Builds the cos/sin cache for one position and hands it to `f`. The cache is
/// on the stack for usual head sizes: this runs per head per token.
fn with_rope_cache(pos: usize, n_rot: usize, freq_base: f32, freq_scale: f32, f: impl FnOnce(&[f32])) {
    let n = n_rot & !1;
    let mut stack = [0.0f32; 512];
    let mut heap = Vec::new();
    let cache = if n <= stack.len() {
        &mut stack[..n]
    } else {
        heap.resize(n, 0.0);
        &mut heap[..]
    };
    rope_cache(pos, n, freq_base, freq_scale, cache);
    f(cache);
}

/// Softmax in place: subtract the max, exponentiate, sum in f64, scale by
/// the f32 reciprocal of the sum. `-inf` entries (masked) become 0.
pub fn softmax_inplace(x: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for &v in x.iter() {
        max = max.max(v);
    }
    if max == f32::NEG_INFINITY {
        // Everything masked: leave a uniform zero row rather than NaNs.
        x.fill(0.0);
        return;
    }
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        let e = (*v - max).exp();
        *v = e;
        sum += e as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SiLU of one value: `x / (1 + exp(-x))`.
#[inline]
pub fn silu_f32(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU (tanh approximation) of one value:
/// `0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2)))`.
#[inline]
pub fn gelu_tanh_f32(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const GELU_COEF_A: f32 = 0.044715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// SiLU in place.
pub fn silu(x: &mut [f32]) {
    for v in x {
        *v = silu_f32(*v);
    }
}

/// GELU (tanh approximation) in place.
pub fn gelu_tanh(x: &mut [f32]) {
    for v in x {
        *v = gelu_tanh_f32(*v);
    }
}

/// SwiGLU: `gate[i] = silu(gate[i]) * up[i]`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu_f32(*g) * u;
    }
}

/// GeGLU: `gate[i] = gelu_tanh(gate[i]) * up[i]`.
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = gelu_tanh_f32(*g) * u;
    }
}

/// `a[i] += b[i]`.
pub fn add_inplace(a: &mut [f32], b: &[f32]) {
    debug_assert_eq!(a.len(), b.len());
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// `a[i] *= b[i]`.
pub fn mul_inplace(a: &mut [f32], b: &[f32]) {
    debug_assert_eq!(a.len(), b.len());
    for (x, &y) in a.iter_mut().zip(b) {
        *x *= y;
    }
}

/// `a[i] *= s`.
pub fn scale_inplace(a: &mut [f32], s: f32) {
    for x in a {
        *x *= s;
    }
}

/// f16 to f32, element by element (exact).
pub fn f16_to_f32_row(src: &[f16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// f32 to f16, round to nearest even (as F16C and ggml).
pub fn f32_to_f16_row(src: &[f32], dst: &mut [f16]) {
    debug_assert_eq!(src.len(), dst.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(*s);
    }
}

#[cfg(test)]
mod rope_ext_tests {
    use super::*;

    #[test]
    fn rope_cache_ext_without_factors_is_rope_cache() {
        let (mut a, mut b) = ([0.0f32; 16], [0.0f32; 16]);
        rope_cache(37, 16, 500_000.0, 0.5, &mut a);
        rope_cache_ext(37, 16, 500_000.0, 0.5, None, 1.0, &mut b);
        assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits));
    }

    #[test]
    fn rope_cache_ext_divides_each_pair_frequency() {
        let factors = [1.0f32, 2.0, 4.0, 8.0];
        let mut c = [0.0f32; 8];
        rope_cache_ext(10, 8, 10_000.0, 1.0, Some(&factors), 2.0, &mut c);
        let theta_scale = 10_000.0f32.powf(-2.0 / 8.0);
        let mut theta = 10.0f32;
        for (i, pair) in c.chunks_exact(2).enumerate() {
            let t = theta / factors[i];
            assert_eq!(pair[0], t.cos() * 2.0);
            assert_eq!(pair[1], t.sin() * 2.0);
            theta *= theta_scale;
        }
    }
}
