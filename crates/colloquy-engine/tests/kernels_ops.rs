//! Row operations: norms, RoPE, softmax, activations, conversions.

mod kernels_support;

use colloquy_engine::kernels as k;
use half::f16;
use kernels_support::Rng;
use proptest::prelude::*;

#[test]
fn rms_norm_matches_formula() {
    let mut rng = Rng::new(1);
    let x = rng.floats(576, 3.0);
    let w = rng.floats(576, 1.0);
    let mut out = vec![0.0f32; 576];
    k::rms_norm(&x, &w, 1e-5, &mut out);
    let ms: f64 = x.iter().map(|v| (v * v) as f64).sum::<f64>() / 576.0;
    let scale = 1.0f32 / ((ms as f32) + 1e-5).sqrt();
    for i in 0..576 {
        assert_eq!(out[i].to_bits(), ((x[i] * scale) * w[i]).to_bits());
    }
    // Unit weights give unit RMS.
    let ones = vec![1.0f32; 576];
    k::rms_norm(&x, &ones, 0.0, &mut out);
    let rms = (out.iter().map(|v| (v * v) as f64).sum::<f64>() / 576.0).sqrt();
    assert!((rms - 1.0).abs() < 1e-5);
}

#[test]
fn rope_known_values() {
    // One pair, position 1: rotation by exactly 1 radian.
    let mut x = [1.0f32, 0.0];
    k::rope_norm(&mut x, 1, 2, 10000.0, 1.0);
    assert_eq!(x, [1.0f32.cos(), 1.0f32.sin()]);
    // Position 0 is the identity.
    let mut rng = Rng::new(2);
    let v = rng.floats(64, 1.0);
    let mut y = v.clone();
    k::rope_neox(&mut y, 0, 64, 10000.0, 1.0);
    assert_eq!(y, v);
    // Second pair of a 4-wide rotation at position 3: angle 3 * base^(-2/4).
    let mut x = [0.0f32, 0.0, 1.0, 0.0, 7.0];
    k::rope_norm(&mut x, 3, 4, 100.0, 1.0);
    let theta = 3.0f32 * 100.0f32.powf(-0.5);
    assert_eq!(&x[2..4], &[theta.cos(), theta.sin()]);
    assert_eq!(x[4], 7.0, "elements past n_rot are untouched");
}

#[test]
fn rope_neox_is_rope_norm_on_split_halves() {
    let mut rng = Rng::new(3);
    let (d, n_rot) = (64usize, 32usize);
    let v = rng.floats(d, 1.0);
    let mut neox = v.clone();
    k::rope_neox(&mut neox, 17, n_rot, 10000.0, 0.5);
    // Interleave the two halves of the rotated part, apply norm-style RoPE, split back.
    let mut inter: Vec<f32> = (0..n_rot / 2).flat_map(|i| [v[i], v[i + n_rot / 2]]).collect();
    k::rope_norm(&mut inter, 17, n_rot, 10000.0, 0.5);
    for i in 0..n_rot / 2 {
        assert_eq!(neox[i], inter[2 * i]);
        assert_eq!(neox[i + n_rot / 2], inter[2 * i + 1]);
    }
    assert_eq!(&neox[n_rot..], &v[n_rot..]);
}

#[test]
fn rope_cache_repeated_multiplication() {
    let mut cache = vec![0.0f32; 8];
    k::rope_cache(5, 8, 10000.0, 0.25, &mut cache);
    let ts = 10000.0f32.powf(-2.0 / 8.0);
    let mut theta = 5.0f32;
    for p in 0..4 {
        let t = 0.25 * theta;
        assert_eq!(cache[2 * p], t.cos());
        assert_eq!(cache[2 * p + 1], t.sin());
        theta *= ts;
    }
}

#[test]
fn softmax_properties() {
    let mut x = vec![1.0f32, 2.0, 3.0, f32::NEG_INFINITY];
    k::softmax_inplace(&mut x);
    let s: f32 = x.iter().sum();
    assert!((s - 1.0).abs() < 1e-6);
    assert_eq!(x[3], 0.0);
    assert!(x[0] < x[1] && x[1] < x[2]);
    let e = [(-2.0f32).exp(), (-1.0f32).exp(), 1.0];
    let tot = e.iter().map(|v| *v as f64).sum::<f64>();
    assert!((x[2] - (1.0 / tot) as f32).abs() < 1e-7);
    let mut all_masked = vec![f32::NEG_INFINITY; 3];
    k::softmax_inplace(&mut all_masked);
    assert_eq!(all_masked, vec![0.0; 3]);
    let mut big = vec![1000.0f32, 1000.0];
    k::softmax_inplace(&mut big);
    assert_eq!(big, vec![0.5, 0.5]);
}

#[test]
fn activations() {
    assert_eq!(k::silu_f32(0.0), 0.0);
    assert!((k::silu_f32(1.0) - 0.731_058_6).abs() < 1e-6);
    assert!((k::silu_f32(-20.0) + 4.122e-8).abs() < 1e-9);
    assert!((k::gelu_tanh_f32(1.0) - 0.841_192).abs() < 1e-6);
    assert!((k::gelu_tanh_f32(-3.0) + 0.003_637_4).abs() < 1e-6);
    let mut g = vec![1.0f32, -1.0];
    k::silu_mul(&mut g, &[2.0, 3.0]);
    assert_eq!(g, vec![k::silu_f32(1.0) * 2.0, k::silu_f32(-1.0) * 3.0]);
    let mut g = vec![0.5f32];
    k::gelu_mul(&mut g, &[4.0]);
    assert_eq!(g[0], k::gelu_tanh_f32(0.5) * 4.0);
    let mut a = vec![1.0f32, 2.0];
    k::add_inplace(&mut a, &[0.5, 0.25]);
    k::mul_inplace(&mut a, &[2.0, 4.0]);
    k::scale_inplace(&mut a, 0.5);
    assert_eq!(a, vec![1.5, 4.5]);
}

#[test]
fn f16_rows() {
    let src = [0.1f32, -2.5, 65504.0, 1e-8];
    let mut h = [f16::ZERO; 4];
    k::f32_to_f16_row(&src, &mut h);
    let mut back = [0.0f32; 4];
    k::f16_to_f32_row(&h, &mut back);
    assert_eq!(back[1], -2.5);
    assert_eq!(back[2], 65504.0);
    assert!((back[0] - 0.1).abs() < 1e-4);
    assert_eq!(h[0], f16::from_f32(0.1));
}

proptest! {
    #[test]
    fn prop_rope_preserves_norm(seed in any::<u64>(), pos in 0usize..100_000, neox in any::<bool>()) {
        let mut rng = Rng::new(seed);
        let v = rng.floats(128, 1.0);
        let mut y = v.clone();
        if neox {
            k::rope_neox(&mut y, pos, 128, 1_000_000.0, 1.0);
        } else {
            k::rope_norm(&mut y, pos, 128, 10_000.0, 1.0);
        }
        let n0: f64 = v.iter().map(|a| (a * a) as f64).sum();
        let n1: f64 = y.iter().map(|a| (a * a) as f64).sum();
        prop_assert!((n0 - n1).abs() <= 1e-5 * n0);
    }

    #[test]
    fn prop_softmax_sums_to_one(seed in any::<u64>(), n in 1usize..300, scale in 0.01f32..50.0) {
        let mut rng = Rng::new(seed);
        let mut x = rng.floats(n, scale);
        k::softmax_inplace(&mut x);
        let s: f64 = x.iter().map(|v| *v as f64).sum();
        prop_assert!((s - 1.0).abs() < 1e-5);
        prop_assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

/// Attention over an f16 cache: scoring keys four at a time and summing
/// values 32 outputs at a time give each key's score and each output the
/// bits they get alone (so decoding and prefill stay identical).
#[test]
fn f16_attention_kernels_group_without_changing_bits() {
    let mut rng = Rng::new(9);
    for (dim, keys) in [(64usize, 13usize), (256, 37), (72, 5), (8, 4)] {
        let stride = dim + 8;
        let rows: Vec<f16> = rng.floats(keys * stride, 2.0).into_iter().map(f16::from_f32).collect();
        let q = rng.floats(dim, 1.0);
        let mut all = vec![0.0f32; keys];
        k::scores_f16(&q, &rows, stride, 0.125, &mut all);
        for (j, &s) in all.iter().enumerate() {
            let mut one = [0.0f32];
            k::scores_f16(&q, &rows[j * stride..], stride, 0.125, &mut one);
            assert_eq!(s.to_bits(), one[0].to_bits(), "dim {dim}, key {j}");
        }
        let p = rng.floats(keys, 1.0);
        let start = rng.floats(dim, 1.0);
        let mut out = start.clone();
        k::weighted_sum_f16(&p, &rows, stride, &mut out);
        for c in (0..dim).step_by(8) {
            let mut chunk = start[c..c + 8].to_vec();
            k::weighted_sum_f16(&p, &rows[c..], stride, &mut chunk);
            for i in 0..8 {
                assert_eq!(out[c + i].to_bits(), chunk[i].to_bits(), "dim {dim}, output {}", c + i);
            }
        }
    }
}
