//! The ggml block formats as typed `#[repr(C)]` structs, one per type.
//!
//! A type's layout (its struct, with a compile-time size check against
//! ggml's), its exact dequantization and its portable dot product live
//! together, behind three traits:
//!
//! * [`GgmlBlock`]: the layout;
//! * [`Dequantize`]: the block as f32, bit-identical to ggml's
//!   `dequantize_row_*`;
//! * [`WeightBlock`]: the activation block it pairs with (ggml's
//!   `vec_dot_type`) and the portable dot product that defines every
//!   backend's result: each block's integer dot is exact, and the float
//!   steps that scale and accumulate it are fixed, so the SIMD kernels,
//!   which compute the same integers and apply the same IEEE operations lane
//!   by lane, agree bit for bit. The float types follow the AVX2 kernel's
//!   lanes and fused multiply-adds, so they agree bit for bit too.
//!
//! Blocks have alignment 1 and hold only byte arrays, so any byte slice
//! casts to a slice of blocks ([`as_blocks`]) without copying. The matches
//! from a [`GgmlType`] to its block ([`GgmlType::type_size`],
//! `dequantize`, `dot_rows`) list every type by name: a new
//! type fails to compile until it is placed in each, instead of falling
//! into another type's layout.

pub(crate) mod float;
mod iq4;
mod k;
mod q32;

pub use float::{Bf16Block, F16Block, F32Block};
pub use iq4::{BlockIQ4_NL, BlockIQ4_XS, IQ4_VALUES};
pub use k::{BlockQ2_K, BlockQ3_K, BlockQ4_K, BlockQ5_K, BlockQ6_K, BlockQ8_K};
pub use q32::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};

pub(crate) use k::{finish_k, finish_q6k, k4_scales};
pub(crate) use q32::Q32Weight;

use super::types::GgmlType;
use half::f16;
use std::sync::OnceLock;

/// A ggml block: its type and geometry.
///
/// # Safety
/// Implementors are `#[repr(C)]`, have alignment 1 and no padding, and hold
/// only integer byte arrays, so every byte pattern is a valid block and
/// [`as_blocks`] may reinterpret bytes as blocks. The `block!` macro checks this at
/// compile time.
pub unsafe trait GgmlBlock: Copy + Send + Sync + 'static {
    /// The ggml type these blocks make up.
    const TYPE: GgmlType;
    /// Elements per block.
    const ELEMS: usize;
    /// Bytes per block, exactly ggml's.
    const BYTES: usize = std::mem::size_of::<Self>();
}

/// A block that decodes to f32.
pub trait Dequantize: GgmlBlock {
    /// Writes the block's [`GgmlBlock::ELEMS`] values to `out`, bit-identical
    /// to ggml's `dequantize_row_*`.
    fn dequantize(&self, out: &mut [f32]);
}

/// A weight block with a dot product.
pub trait WeightBlock: Dequantize {
    /// The format activations take for the dot product (ggml's `vec_dot_type`).
    type Activation: Dequantize;

    /// Dots of the weight row `w` with each of the `R` activation rows `xs`
    /// (each as many elements as `w`). Each result is the same sequence of
    /// float operations whatever `R` is (batch invariance), and it defines
    /// the result of every SIMD kernel for this type.
    fn dot_rows<const R: usize>(w: &[Self], xs: [&[Self::Activation]; R]) -> [f32; R];
}

/// Declares a block's `GgmlBlock` impl and checks its size against ggml's and
/// its alignment at compile time.
macro_rules! block {
    ($block:ty, $ty:expr, elems: $elems:expr, bytes: $bytes:expr) => {
        const _: () = assert!(std::mem::size_of::<$block>() == $bytes && std::mem::align_of::<$block>() == 1);
        // SAFETY: `#[repr(C)]` over byte arrays only; size and alignment checked above.
        unsafe impl $crate::kernels::blocks::GgmlBlock for $block {
            const TYPE: GgmlType = $ty;
            const ELEMS: usize = $elems;
        }
    };
}
use block;

/// `bytes` as whole blocks (trailing bytes that do not fill a block are left out).
///
/// ```
/// use colloquy_engine::kernels::blocks::{as_blocks, BlockQ8_0};
///
/// let bytes = [0u8; 70];
/// let blocks: &[BlockQ8_0] = as_blocks(&bytes);
/// assert_eq!(blocks.len(), 2);
/// ```
pub fn as_blocks<B: GgmlBlock>(bytes: &[u8]) -> &[B] {
    let n = bytes.len() / B::BYTES;
    // SAFETY: `B` has alignment 1, no padding and accepts every byte pattern
    // (the `GgmlBlock` contract); `n` blocks fit in `bytes`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), n) }
}

/// The bytes of `blocks`, as ggml stores them.
pub fn as_bytes<B: GgmlBlock>(blocks: &[B]) -> &[u8] {
    // SAFETY: `B` has no padding (the `GgmlBlock` contract), so every byte is initialized.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks)) }
}

/// A little-endian IEEE half as stored in a block.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct F16Bits(pub [u8; 2]);

impl F16Bits {
    /// The value as f32 (exact).
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f16_table()[u16::from_le_bytes(self.0) as usize]
    }

    /// The nearest half to `v` (round to nearest even, as ggml's `GGML_FP32_TO_FP16`).
    #[inline(always)]
    pub fn from_f32(v: f32) -> F16Bits {
        F16Bits(f16::from_f32(v).to_bits().to_le_bytes())
    }
}

/// All 65536 f16 values as f32 (exact), for fast portable conversion.
pub(crate) type F16Table = [f32; 65536];

/// The shared f16 -> f32 table, built on first use.
pub(crate) fn f16_table() -> &'static F16Table {
    static TABLE: OnceLock<Box<F16Table>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0.0f32; 65536]);
        for (i, v) in t.iter_mut().enumerate() {
            *v = f16::from_bits(i as u16).to_f32();
        }
        t
    })
}

/// Dequantizes whole blocks of `B` from `src` into `dst` (`dst.len()` a
/// multiple of `B::ELEMS`, `src` holding at least as many blocks).
fn dequantize_as<B: Dequantize>(src: &[u8], dst: &mut [f32]) {
    for (b, y) in as_blocks::<B>(src).iter().zip(dst.chunks_exact_mut(B::ELEMS)) {
        b.dequantize(y);
    }
}

/// Dequantizes `dst.len()` elements of type `ty` from `src`.
///
/// `ty` must be supported ([`GgmlType::is_supported`]) and `src.len()` must
/// equal `ty.row_bytes(dst.len())` (the public wrapper checks both).
pub(crate) fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::F32 => dequantize_as::<F32Block>(src, dst),
        GgmlType::F16 => dequantize_as::<F16Block>(src, dst),
        GgmlType::BF16 => dequantize_as::<Bf16Block>(src, dst),
        GgmlType::Q4_0 => dequantize_as::<BlockQ4_0>(src, dst),
        GgmlType::Q4_1 => dequantize_as::<BlockQ4_1>(src, dst),
        GgmlType::Q5_0 => dequantize_as::<BlockQ5_0>(src, dst),
        GgmlType::Q5_1 => dequantize_as::<BlockQ5_1>(src, dst),
        GgmlType::Q8_0 => dequantize_as::<BlockQ8_0>(src, dst),
        GgmlType::Q8_1 => dequantize_as::<BlockQ8_1>(src, dst),
        GgmlType::Q4_K => dequantize_as::<BlockQ4_K>(src, dst),
        GgmlType::Q5_K => dequantize_as::<BlockQ5_K>(src, dst),
        GgmlType::Q6_K => dequantize_as::<BlockQ6_K>(src, dst),
        GgmlType::Q8_K => dequantize_as::<BlockQ8_K>(src, dst),
        GgmlType::Q2_K => dequantize_as::<BlockQ2_K>(src, dst),
        GgmlType::Q3_K => dequantize_as::<BlockQ3_K>(src, dst),
        GgmlType::IQ4_NL => dequantize_as::<BlockIQ4_NL>(src, dst),
        GgmlType::IQ4_XS => dequantize_as::<BlockIQ4_XS>(src, dst),
    }
}

/// Rows of activations, one byte slice per row.
pub(crate) type Rows<'a, const R: usize> = [&'a [u8]; R];

/// [`WeightBlock::dot_rows`] of `B` on rows given as bytes.
#[inline(always)]
fn dot_as<B: WeightBlock, const R: usize>(w: &[u8], xs: Rows<'_, R>) -> [f32; R] {
    B::dot_rows(as_blocks::<B>(w), xs.map(as_blocks::<B::Activation>))
}

/// Dot products of weight row `w` (type `ty`, `n` elements) with the `R` rows
/// in `xs` (each in `ty.vec_dot_type()` format). Lengths are pre-validated:
/// each slice holds exactly the row.
pub(crate) fn dot_rows<const R: usize>(ty: GgmlType, w: &[u8], xs: Rows<'_, R>, n: usize) -> [f32; R] {
    debug_assert!(ty.row_bytes(n) == Some(w.len()));
    match ty {
        GgmlType::F32 => dot_as::<F32Block, R>(w, xs),
        GgmlType::F16 => dot_as::<F16Block, R>(w, xs),
        GgmlType::BF16 => dot_as::<Bf16Block, R>(w, xs),
        GgmlType::Q4_0 => dot_as::<BlockQ4_0, R>(w, xs),
        GgmlType::Q4_1 => dot_as::<BlockQ4_1, R>(w, xs),
        GgmlType::Q5_0 => dot_as::<BlockQ5_0, R>(w, xs),
        GgmlType::Q5_1 => dot_as::<BlockQ5_1, R>(w, xs),
        GgmlType::Q8_0 => dot_as::<BlockQ8_0, R>(w, xs),
        GgmlType::Q4_K => dot_as::<BlockQ4_K, R>(w, xs),
        GgmlType::Q5_K => dot_as::<BlockQ5_K, R>(w, xs),
        GgmlType::Q6_K => dot_as::<BlockQ6_K, R>(w, xs),
        GgmlType::Q2_K => dot_as::<BlockQ2_K, R>(w, xs),
        GgmlType::Q3_K => dot_as::<BlockQ3_K, R>(w, xs),
        GgmlType::IQ4_NL => dot_as::<BlockIQ4_NL, R>(w, xs),
        GgmlType::IQ4_XS => dot_as::<BlockIQ4_XS, R>(w, xs),
        GgmlType::Q8_1 | GgmlType::Q8_K => {
            debug_assert!(false, "dot for unsupported type {ty}");
            [0.0; R]
        }
    }
}

/// `(B::ELEMS, B::BYTES)`.
const fn geometry<B: GgmlBlock>() -> (usize, usize) {
    (B::ELEMS, B::BYTES)
}

impl GgmlType {
    /// (elements, bytes) per block, from the type's block struct.
    const fn geometry(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => geometry::<F32Block>(),
            GgmlType::F16 => geometry::<F16Block>(),
            GgmlType::BF16 => geometry::<Bf16Block>(),
            GgmlType::Q4_0 => geometry::<BlockQ4_0>(),
            GgmlType::Q4_1 => geometry::<BlockQ4_1>(),
            GgmlType::Q5_0 => geometry::<BlockQ5_0>(),
            GgmlType::Q5_1 => geometry::<BlockQ5_1>(),
            GgmlType::Q8_0 => geometry::<BlockQ8_0>(),
            GgmlType::Q8_1 => geometry::<BlockQ8_1>(),
            GgmlType::Q2_K => geometry::<BlockQ2_K>(),
            GgmlType::Q3_K => geometry::<BlockQ3_K>(),
            GgmlType::Q4_K => geometry::<BlockQ4_K>(),
            GgmlType::Q5_K => geometry::<BlockQ5_K>(),
            GgmlType::Q6_K => geometry::<BlockQ6_K>(),
            GgmlType::Q8_K => geometry::<BlockQ8_K>(),
            GgmlType::IQ4_NL => geometry::<BlockIQ4_NL>(),
            GgmlType::IQ4_XS => geometry::<BlockIQ4_XS>(),
        }
    }

    /// Elements per block.
    pub const fn block_size(self) -> usize {
        self.geometry().0
    }

    /// Bytes per block, exactly as ggml lays blocks out.
    pub const fn type_size(self) -> usize {
        self.geometry().1
    }

    /// The format activations must be converted to before a dot product
    /// against weights of this type (ggml's `vec_dot_type`), from its
    /// [`WeightBlock::Activation`]; activation-only and unsupported types
    /// name the K-quant or 32-wide activation of their family.
    ///
    /// Q4_0/Q5_0/Q8_0 pair with Q8_0, Q4_1/Q5_1 with Q8_1, the K-quants with
    /// Q8_K, F16 with F16 and F32 with F32. BF16 weights pair with F32
    /// activations here (ggml uses BF16); the activation keeps full precision.
    pub fn vec_dot_type(self) -> GgmlType {
        fn act<B: WeightBlock>() -> GgmlType {
            <B::Activation as GgmlBlock>::TYPE
        }
        match self {
            GgmlType::F32 => act::<F32Block>(),
            GgmlType::F16 => act::<F16Block>(),
            GgmlType::BF16 => act::<Bf16Block>(),
            GgmlType::Q4_0 => act::<BlockQ4_0>(),
            GgmlType::Q4_1 => act::<BlockQ4_1>(),
            GgmlType::Q5_0 => act::<BlockQ5_0>(),
            GgmlType::Q5_1 => act::<BlockQ5_1>(),
            GgmlType::Q8_0 => act::<BlockQ8_0>(),
            GgmlType::Q4_K => act::<BlockQ4_K>(),
            GgmlType::Q5_K => act::<BlockQ5_K>(),
            GgmlType::Q6_K => act::<BlockQ6_K>(),
            GgmlType::Q2_K => act::<BlockQ2_K>(),
            GgmlType::Q3_K => act::<BlockQ3_K>(),
            GgmlType::IQ4_NL => act::<BlockIQ4_NL>(),
            GgmlType::IQ4_XS => act::<BlockIQ4_XS>(),
            GgmlType::Q8_1 => GgmlType::Q8_1,
            GgmlType::Q8_K => GgmlType::Q8_K,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes ggml's `ggml_type_traits` give (`blck_size`, `type_size`).
    #[test]
    fn geometry_matches_ggml() {
        let ggml = [
            (GgmlType::F32, 1, 4),
            (GgmlType::F16, 1, 2),
            (GgmlType::BF16, 1, 2),
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q8_1, 32, 36),
            (GgmlType::Q2_K, 256, 84),
            (GgmlType::Q3_K, 256, 110),
            (GgmlType::Q4_K, 256, 144),
            (GgmlType::Q5_K, 256, 176),
            (GgmlType::Q6_K, 256, 210),
            (GgmlType::Q8_K, 256, 292),
            (GgmlType::IQ4_NL, 32, 18),
            (GgmlType::IQ4_XS, 256, 136),
        ];
        assert_eq!(ggml.len(), GgmlType::ALL.len());
        for (ty, elems, bytes) in ggml {
            assert_eq!((ty.block_size(), ty.type_size()), (elems, bytes), "{ty}");
        }
    }

    #[test]
    fn bytes_cast_to_whole_blocks() {
        let bytes: Vec<u8> = (0..=69).collect();
        let b: &[BlockQ8_0] = as_blocks(&bytes);
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].d.0, [34, 35]);
        assert_eq!(b[1].qs[0], 36);
        assert!(as_blocks::<BlockQ8_K>(&bytes).is_empty());
    }
}
