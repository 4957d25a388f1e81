//! Activation rows prepared once for the packed kernels: the per-block
//! values every weight row's dot needs. Below the scalar and SIMD kernels,
//! above the block types, so that they and the dispatch share it without
//! importing each other.

use super::blocks::{BlockIQ4_NL, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0, BlockQ8_1, GgmlBlock};

/// Rows per interleaved group of packed weights.
pub const PACK_ROWS: usize = 8;

/// The layout of one packed group-block of a 32-wide type: the blocks of
/// [`PACK_ROWS`] rows interleaved, their scales first, then their mins (if
/// the type has them) or their 32 fifth bits (Q5_0's `qh`, 4 bytes a row),
/// then their quants in 4-byte chunks, row after row.
pub(crate) trait PackedLayout: GgmlBlock {
    /// Whether the block has a min after its scale.
    const HAS_MIN: bool;
    /// Whether the block has a 4-byte word of fifth bits after its scale.
    const FIFTH_BITS: bool = false;
    /// Offset of the eight mins (0 without them).
    const MINS: usize = if Self::HAS_MIN { 2 * PACK_ROWS } else { 0 };
    /// Offset of the eight words of fifth bits (0 without them).
    const HIGH: usize = if Self::FIFTH_BITS { 2 * PACK_ROWS } else { 0 };
    /// Offset of the interleaved quants.
    const QUANTS: usize = if Self::HAS_MIN {
        4 * PACK_ROWS
    } else if Self::FIFTH_BITS {
        6 * PACK_ROWS
    } else {
        2 * PACK_ROWS
    };
    /// Bytes of one group-block.
    const GROUP: usize = Self::BYTES * PACK_ROWS;
}

impl PackedLayout for BlockQ4_0 {
    const HAS_MIN: bool = false;
}
impl PackedLayout for BlockQ4_1 {
    const HAS_MIN: bool = true;
}
impl PackedLayout for BlockQ5_0 {
    const HAS_MIN: bool = false;
    const FIFTH_BITS: bool = true;
}
impl PackedLayout for BlockIQ4_NL {
    const HAS_MIN: bool = false;
}
impl PackedLayout for BlockQ8_0 {
    const HAS_MIN: bool = false;
}

/// `(0, mins, quants, group bytes)` of `B`'s packed group-block.
pub(crate) const fn group_layout<B: PackedLayout>() -> (usize, usize, usize, usize) {
    (0, B::MINS, B::QUANTS, B::GROUP)
}

/// Per-block activation values the kernels need, precomputed once per row.
pub(crate) struct XPrep {
    /// `d` of each block, as f32.
    pub d: Vec<f32>,
    /// `s` of each Q8_1 block, as f32 (empty for Q8_0).
    pub s: Vec<f32>,
    /// Sum of the 32 quants of each Q8_0 block (empty for Q8_1).
    pub sum: Vec<i32>,
}

impl XPrep {
    /// Prepares a Q8_0 (`min = false`) or Q8_1 (`min = true`) row of `nb` blocks.
    pub(crate) fn new(x: &[u8], nb: usize, min: bool) -> XPrep {
        let mut p = XPrep { d: Vec::with_capacity(nb), s: Vec::new(), sum: Vec::new() };
        p.fill(x, nb, min);
        p
    }

    /// Refills this preparation for another row, reusing its buffers.
    pub(crate) fn fill(&mut self, x: &[u8], nb: usize, min: bool) {
        let h = |b: &[u8], o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
        let bs = if min { BlockQ8_1::BYTES } else { BlockQ8_0::BYTES };
        self.d.clear();
        self.s.clear();
        self.sum.clear();
        for blk in x.chunks_exact(bs).take(nb) {
            self.d.push(h(blk, 0));
            if min {
                self.s.push(h(blk, 2));
            } else {
                self.sum.push(blk[2..].iter().map(|&q| q as i8 as i32).sum());
            }
        }
    }
}
