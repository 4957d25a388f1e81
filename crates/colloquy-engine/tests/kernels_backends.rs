//! Every SIMD kernel against its portable twin, bit for bit: each backend's
//! [`Kernels`] table (attention, the f32 dot, the activation quantizers)
//! and the `_with(Backend)` forms give exactly what [`Backend::Scalar`] gives.

mod kernels_support;

use colloquy_engine::kernels::{self, Backend, GgmlType, Kernels};
use half::f16;
use kernels_support::Rng;

/// The SIMD backends this CPU runs (none on a machine without AVX2, where
/// the tables all are the portable one and there is nothing to compare).
fn simd_tables() -> Vec<&'static Kernels> {
    Backend::ALL
        .into_iter()
        .filter(|b| *b != Backend::Scalar && b.is_available())
        .map(Backend::kernels)
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn tables_name_their_backend_and_fall_back_to_portable() {
    for b in Backend::ALL {
        let want = if b.is_available() { b } else { Backend::Scalar };
        assert_eq!(b.kernels().backend(), want);
    }
    assert_eq!(Kernels::active().backend(), Backend::active());
}

#[test]
fn attention_kernels_equal_portable_bit_for_bit() {
    let portable = Backend::Scalar.kernels();
    let mut rng = Rng::new(11);
    // Head sizes: SmolLM2's 64, Gemma 3's 256, and odd ones that take the
    // portable path everywhere; key counts around the 4-key grouping.
    for (hd, keys) in [(64, 1), (64, 7), (256, 9), (8, 4), (16, 5), (40, 3), (24, 6), (12, 3), (1, 2)] {
        let stride = hd + 8;
        let q = rng.floats(hd, 1.0);
        let rows32 = rng.floats(stride * keys, 1.0);
        let rows16: Vec<f16> = rows32.iter().map(|&v| f16::from_f32(v)).collect();
        let p = rng.floats(keys, 0.3);
        let base = rng.floats(hd, 0.1);
        let run = |k: &Kernels| {
            let mut s32 = vec![0.0f32; keys];
            let mut s16 = vec![0.0f32; keys];
            k.scores_f32(&q, &rows32, stride, 0.125, &mut s32);
            k.scores_f16(&q, &rows16, stride, 0.125, &mut s16);
            let (mut w32, mut w16) = (base.clone(), base.clone());
            k.weighted_sum_f32(&p, &rows32, stride, &mut w32);
            k.weighted_sum_f16(&p, &rows16, stride, &mut w16);
            [s32, s16, w32, w16].map(|v| bits(&v))
        };
        let want = run(portable);
        for k in simd_tables() {
            let got = run(k);
            for (i, name) in
                ["scores_f32", "scores_f16", "weighted_sum_f32", "weighted_sum_f16"].iter().enumerate()
            {
                assert_eq!(got[i], want[i], "{name} hd={hd} keys={keys} on {}", k.backend().name());
            }
        }
        // The free functions use the active table.
        let mut s16 = vec![0.0f32; keys];
        kernels::scores_f16(&q, &rows16, stride, 0.125, &mut s16);
        assert_eq!(bits(&s16), want[1]);
    }
}

#[test]
fn f32_dot_equals_portable_bit_for_bit() {
    let mut rng = Rng::new(12);
    for n in [0usize, 1, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 200, 576] {
        let (a, b) = (rng.floats(n, 1.0), rng.floats(n, 1.0));
        let want = kernels::dot_f32_with(Backend::Scalar, &a, &b).to_bits();
        for k in simd_tables() {
            assert_eq!(k.dot_f32(&a, &b).to_bits(), want, "n={n} on {}", k.backend().name());
        }
    }
}

#[test]
fn quantizers_equal_portable_bit_for_bit() {
    let mut rng = Rng::new(13);
    let types =
        [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K, GgmlType::F16, GgmlType::BF16, GgmlType::F32];
    for case in 0..200 {
        let mut x = rng.floats(512, [1e-3f32, 1.0, 300.0][case % 3]);
        match case % 5 {
            0 => x[..64].fill(0.0),
            1 => x[17] = f32::NAN,
            2 => x[300] = f32::INFINITY,
            _ => {}
        }
        for ty in types {
            let len = ty.row_bytes(x.len()).unwrap();
            let mut want = vec![0u8; len];
            kernels::quantize_row_with(Backend::Scalar, ty, &x, &mut want).unwrap();
            for b in Backend::ALL.into_iter().filter(|b| b.is_available()) {
                let mut got = vec![0u8; len];
                kernels::quantize_row_with(b, ty, &x, &mut got).unwrap();
                assert!(got == want, "{ty} case {case} on {}", b.name());
            }
        }
    }
}
