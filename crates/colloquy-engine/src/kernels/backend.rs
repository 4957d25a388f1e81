//! The backends (which instruction set runs the kernels) and the kernel
//! table of each: every choice between a SIMD kernel and its portable twin
//! is one entry of a [`Kernels`] table, chosen once per backend
//! (`dispatch.rs` builds the tables).

use half::f16;
use std::sync::OnceLock;

/// Which implementation runs the dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// [`Backend::Avx2`] plus AVX-VNNI for the 32-wide quants; results are
    /// bit-identical to [`Backend::Avx2`].
    AvxVnni,
}

impl Backend {
    /// Every backend, for tests and benchmarks.
    pub const ALL: [Backend; 3] = [Backend::Scalar, Backend::Avx2, Backend::AvxVnni];

    /// Whether this CPU can run the backend.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Scalar => true,
            Backend::Avx2 => cpu::avx2(),
            Backend::AvxVnni => cpu::avx2() && cpu::avxvnni(),
        }
    }

    /// The fastest backend this CPU supports (ignores the environment).
    pub fn detect() -> Backend {
        [Backend::AvxVnni, Backend::Avx2].into_iter().find(|b| b.is_available()).unwrap_or(Backend::Scalar)
    }

    /// The backend used by the functions without an explicit backend:
    /// [`Backend::detect`], unless the environment variable
    /// `COLLOQUY_KERNELS` names another available one (`scalar`, `avx2`,
    /// `avxvnni`). Decided once per process.
    pub fn active() -> Backend {
        static ACTIVE: OnceLock<Backend> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let wanted = std::env::var("COLLOQUY_KERNELS").ok();
            Backend::ALL
                .into_iter()
                .find(|b| wanted.as_deref().is_some_and(|w| w.eq_ignore_ascii_case(b.name())))
                .filter(|b| b.is_available())
                .unwrap_or_else(Backend::detect)
        })
    }

    /// A short name (`"scalar"`, `"avx2"`, `"avxvnni"`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::AvxVnni => "avxvnni",
        }
    }

    /// `self` if this CPU can run it, [`Backend::Scalar`] otherwise.
    pub(crate) fn usable(self) -> Backend {
        if self.is_available() {
            self
        } else {
            Backend::Scalar
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod cpu {
    use std::sync::OnceLock;

    pub(super) fn avx2() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    pub(super) fn avxvnni() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| is_x86_feature_detected!("avxvnni"))
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod cpu {
    pub(super) fn avx2() -> bool {
        false
    }
    pub(super) fn avxvnni() -> bool {
        false
    }
}

/// One quantizer: `x` (one block's values) into `y` (one block's bytes).
pub(crate) type QuantizeBlock = fn(x: &[f32], y: &mut [u8]);

/// The kernels of one backend, chosen once ([`Backend::kernels`]). A SIMD
/// entry gives, bit for bit, what the portable entry gives (the tests check
/// each against [`Backend::Scalar`]'s), so the choice only changes speed.
///
/// ```
/// use colloquy_engine::kernels::Backend;
///
/// let k = Backend::detect().kernels();
/// assert_eq!(k.backend(), Backend::detect());
/// let (q, key) = ([1.0f32; 8], [half::f16::ONE; 8]);
/// let mut score = [0.0f32];
/// k.scores_f16(&q, &key, 8, 0.5, &mut score);
/// assert_eq!(score, [4.0]);
/// ```
#[derive(Debug)]
pub struct Kernels {
    pub(crate) backend: Backend,
    /// Q8_0, Q8_1 and Q8_K activation blocks.
    pub(crate) q8_0: QuantizeBlock,
    pub(crate) q8_1: QuantizeBlock,
    pub(crate) q8_k: QuantizeBlock,
    /// Attention: scores of a query against keys, weighted sums of values.
    pub(crate) scores_f32: fn(&[f32], &[f32], usize, f32, &mut [f32]),
    pub(crate) scores_f16: fn(&[f32], &[f16], usize, f32, &mut [f32]),
    pub(crate) weighted_sum_f32: fn(&[f32], &[f32], usize, &mut [f32]),
    pub(crate) weighted_sum_f16: fn(&[f32], &[f16], usize, &mut [f32]),
    /// The f32 dot product.
    pub(crate) dot_f32: fn(&[f32], &[f32]) -> f32,
}

impl Kernels {
    /// The backend these kernels run on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `out[j] = q · rows[j * stride..][..q.len()] * scale`: attention scores
    /// against f32 keys. Each value depends only on `q` and its key.
    pub fn scores_f32(&self, q: &[f32], rows: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        if let Some(last) = out.len().checked_sub(1) {
            assert!(last * stride + q.len() <= rows.len(), "scores_f32: rows too short");
        }
        (self.scores_f32)(q, rows, stride, scale, out)
    }

    /// [`Kernels::scores_f32`] for keys stored as f16 (converted in registers).
    pub fn scores_f16(&self, q: &[f32], rows: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
        if let Some(last) = out.len().checked_sub(1) {
            assert!(last * stride + q.len() <= rows.len(), "scores_f16: rows too short");
        }
        (self.scores_f16)(q, rows, stride, scale, out)
    }

    /// `out += Σ_j p[j] · rows[j * stride..][..out.len()]`, accumulated in `j`
    /// order with one fused multiply-add per term: attention's weighted sum.
    pub fn weighted_sum_f32(&self, p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        if let Some(last) = p.len().checked_sub(1) {
            assert!(last * stride + out.len() <= rows.len(), "weighted_sum_f32: rows too short");
        }
        (self.weighted_sum_f32)(p, rows, stride, out)
    }

    /// [`Kernels::weighted_sum_f32`] for values stored as f16.
    pub fn weighted_sum_f16(&self, p: &[f32], rows: &[f16], stride: usize, out: &mut [f32]) {
        if let Some(last) = p.len().checked_sub(1) {
            assert!(last * stride + out.len() <= rows.len(), "weighted_sum_f16: rows too short");
        }
        (self.weighted_sum_f16)(p, rows, stride, out)
    }

    /// The dot product of two f32 slices (over the shorter length).
    pub fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        (self.dot_f32)(&a[..n], &b[..n])
    }
}
