//! Activation rows prepared once for the packed kernels: the per-block
//! values every weight row's dot needs. Below the scalar and SIMD kernels,
//! above the block types, so that they and the dispatch share it without
//! importing each other.

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
        let bs = if min { 36 } else { 34 };
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
