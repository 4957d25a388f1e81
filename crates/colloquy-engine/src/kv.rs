//! The paged KV cache.
//!
//! Keys and values live in fixed-size blocks of [`BLOCK_TOKENS`] positions,
//! each holding every layer. Blocks are reference-counted: cloning a cache
//! copies only the block table, and the first write into a shared block copies
//! that one block (copy-on-write). Decoding and prefill write exactly the same
//! values, so a cache restored from bytes or shared with a fork holds the same
//! bits as one that was computed in place.

use std::sync::Arc;

use half::f16;

use crate::error::{Error, Result};

/// Positions per block.
pub const BLOCK_TOKENS: usize = 32;

/// How K and V are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// Half precision, as llama.cpp stores them by default.
    F16,
    /// Full precision (the precise path).
    F32,
    /// 8-bit blocks of 32 values with an f16 scale (ggml's Q8_0): about half
    /// the bytes of f16. Lossy: results differ slightly from the f16 cache.
    Q8_0,
}

impl KvDtype {
    /// Bytes that `n` stored elements take (`n` is a multiple of 32 for Q8_0).
    /// Saturates instead of overflowing, so sizes read from untrusted bytes
    /// can be compared safely.
    pub fn bytes(self, n: usize) -> usize {
        match self {
            KvDtype::F16 => n.saturating_mul(2),
            KvDtype::F32 => n.saturating_mul(4),
            KvDtype::Q8_0 => (n / 32).saturating_mul(34),
        }
    }

    /// A stable byte for file formats.
    pub fn to_byte(self) -> u8 {
        match self {
            KvDtype::F16 => 0,
            KvDtype::F32 => 1,
            KvDtype::Q8_0 => 2,
        }
    }

    /// The inverse of [`to_byte`](Self::to_byte).
    pub fn from_byte(b: u8) -> Option<KvDtype> {
        match b {
            0 => Some(KvDtype::F16),
            1 => Some(KvDtype::F32),
            2 => Some(KvDtype::Q8_0),
            _ => None,
        }
    }
}

/// The shape of a model's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvLayout {
    /// Layers that store K/V.
    pub n_layers: usize,
    /// K/V heads per layer.
    pub n_kv_heads: usize,
    /// Dimension of one K (and V) head.
    pub head_dim: usize,
    /// Storage type.
    pub dtype: KvDtype,
}

impl KvLayout {
    /// Elements in one position's K (or V) row of one layer.
    pub fn row(&self) -> usize {
        self.n_kv_heads.saturating_mul(self.head_dim)
    }

    /// Elements of K (or V) for one layer of one block.
    fn layer_stride(&self) -> usize {
        BLOCK_TOKENS * self.row()
    }

    /// Bytes of K and V per position, all layers.
    pub fn bytes_per_token(&self) -> usize {
        self.n_layers.saturating_mul(2).saturating_mul(self.dtype.bytes(self.row()))
    }

    /// Whether a K/V row can use this layout's storage type (Q8_0 needs whole
    /// 32-value blocks per head).
    pub fn is_valid(&self) -> bool {
        self.dtype != KvDtype::Q8_0 || self.head_dim.is_multiple_of(32)
    }
}

/// Storage for one block's keys or values: `[layer][token][kv_head * head_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub enum KvData {
    /// Half precision.
    F16(Vec<f16>),
    /// Full precision.
    F32(Vec<f32>),
    /// Q8_0 blocks.
    Q8_0(Vec<u8>),
}

/// A borrowed run of K or V rows.
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    /// Half precision.
    F16(&'a [f16]),
    /// Full precision.
    F32(&'a [f32]),
    /// Q8_0 blocks (34 bytes per 32 values).
    Q8_0(&'a [u8]),
}

impl KvData {
    fn zeros(dtype: KvDtype, n: usize) -> KvData {
        match dtype {
            KvDtype::F16 => KvData::F16(vec![f16::ZERO; n]),
            KvDtype::F32 => KvData::F32(vec![0.0; n]),
            KvDtype::Q8_0 => KvData::Q8_0(vec![0; KvDtype::Q8_0.bytes(n)]),
        }
    }

    /// Appends the stored bytes of elements `range` (little-endian).
    pub fn encode_range(&self, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
        #[cfg(target_endian = "little")]
        {
            // In memory the values already are their little-endian bytes: copy them whole.
            out.extend_from_slice(self.range_bytes(range));
        }
        #[cfg(not(target_endian = "little"))]
        match self {
            KvData::F16(d) => d[range].iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            KvData::F32(d) => d[range].iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            KvData::Q8_0(d) => out.extend_from_slice(&d[range.start / 32 * 34..range.end / 32 * 34]),
        }
    }

    /// Overwrites elements `range` from bytes made by [`encode_range`](Self::encode_range).
    /// `bytes` must hold exactly the range's size.
    pub fn decode_range(&mut self, range: std::ops::Range<usize>, bytes: &[u8]) {
        #[cfg(target_endian = "little")]
        {
            let dst = self.range_bytes_mut(range);
            let n = dst.len().min(bytes.len());
            dst[..n].copy_from_slice(&bytes[..n]);
        }
        #[cfg(not(target_endian = "little"))]
        match self {
            KvData::F16(d) => {
                for (o, c) in d[range].iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]);
                }
            }
            KvData::F32(d) => {
                for (o, c) in d[range].iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            KvData::Q8_0(d) => d[range.start / 32 * 34..range.end / 32 * 34].copy_from_slice(bytes),
        }
    }

    /// The stored bytes of elements `range` (native byte order).
    #[cfg(target_endian = "little")]
    fn range_bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        match self {
            // SAFETY: f16 and f32 are plain old data; viewing them as bytes is
            // always valid, and the length covers exactly the borrowed elements.
            KvData::F16(d) => {
                let s = &d[range];
                unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() * 2) }
            }
            KvData::F32(d) => {
                let s = &d[range];
                unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() * 4) }
            }
            KvData::Q8_0(d) => &d[range.start / 32 * 34..range.end / 32 * 34],
        }
    }

    /// Mutable bytes of elements `range`.
    #[cfg(target_endian = "little")]
    fn range_bytes_mut(&mut self, range: std::ops::Range<usize>) -> &mut [u8] {
        match self {
            // SAFETY: every bit pattern is a valid f16 or f32, so any bytes may be
            // written; the length covers exactly the borrowed elements.
            KvData::F16(d) => {
                let s = &mut d[range];
                unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), s.len() * 2) }
            }
            KvData::F32(d) => {
                let s = &mut d[range];
                unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), s.len() * 4) }
            }
            KvData::Q8_0(d) => &mut d[range.start / 32 * 34..range.end / 32 * 34],
        }
    }

    fn write(&mut self, at: usize, row: &[f32]) {
        match self {
            KvData::F16(d) => {
                for (o, &x) in d[at..at + row.len()].iter_mut().zip(row) {
                    *o = f16::from_f32(x);
                }
            }
            KvData::F32(d) => d[at..at + row.len()].copy_from_slice(row),
            KvData::Q8_0(d) => {
                let dst = &mut d[at / 32 * 34..(at + row.len()) / 32 * 34];
                // Shapes are checked when the layout is made (`KvLayout::is_valid`).
                let _ = crate::kernels::quantize_row_q8_0(row, dst);
            }
        }
    }

    fn rows(&self, range: std::ops::Range<usize>) -> KvRows<'_> {
        match self {
            KvData::F16(d) => KvRows::F16(&d[range]),
            KvData::F32(d) => KvRows::F32(&d[range]),
            KvData::Q8_0(d) => KvRows::Q8_0(&d[range.start / 32 * 34..range.end / 32 * 34]),
        }
    }
}

/// One block: K and V of [`BLOCK_TOKENS`] positions for every layer.
#[derive(Debug, Clone, PartialEq)]
pub struct KvBlock {
    /// Keys.
    pub k: KvData,
    /// Values.
    pub v: KvData,
}

impl KvBlock {
    /// A block of zeros shaped for `layout`.
    pub fn zeroed(layout: &KvLayout) -> KvBlock {
        let n = layout.n_layers * layout.layer_stride();
        KvBlock { k: KvData::zeros(layout.dtype, n), v: KvData::zeros(layout.dtype, n) }
    }
}

/// A sequence's KV cache: a table of shared blocks plus the number of filled positions.
///
/// ```
/// use colloquy_engine::kv::{KvCache, KvDtype, KvLayout};
///
/// let layout = KvLayout { n_layers: 2, n_kv_heads: 1, head_dim: 4, dtype: KvDtype::F16 };
/// let mut kv = KvCache::new(layout, 64);
/// kv.reserve(0, 1).unwrap();
/// kv.write(0, 0, &[1.0; 4], &[2.0; 4]);
/// kv.write(1, 0, &[1.0; 4], &[2.0; 4]);
/// kv.set_len(1);
/// let fork = kv.clone(); // shares the block until one of them writes
/// assert_eq!(fork.len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct KvCache {
    layout: KvLayout,
    blocks: Vec<Arc<KvBlock>>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache that may grow to `capacity` positions.
    pub fn new(layout: KvLayout, capacity: usize) -> KvCache {
        KvCache { layout, blocks: Vec::new(), len: 0, capacity }
    }

    /// The cache's shape.
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// Filled positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this cache may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The block table.
    pub fn blocks(&self) -> &[Arc<KvBlock>] {
        &self.blocks
    }

    /// Makes positions `start..start + n` writable: allocates missing blocks and
    /// copies shared ones (copy-on-write). Fails if the capacity would be exceeded.
    pub fn reserve(&mut self, start: usize, n: usize) -> Result<()> {
        let end = start + n;
        if end > self.capacity {
            return Err(Error::ContextOverflow { needed: end, n_ctx: self.capacity });
        }
        while self.blocks.len() * BLOCK_TOKENS < end {
            self.blocks.push(Arc::new(KvBlock::zeroed(&self.layout)));
        }
        if n > 0 {
            for b in start / BLOCK_TOKENS..=(end - 1) / BLOCK_TOKENS {
                Arc::make_mut(&mut self.blocks[b]);
            }
        }
        Ok(())
    }

    /// Writes one position's K and V rows for one layer. The block must have been
    /// made writable with [`reserve`](Self::reserve) (otherwise this copies it).
    pub fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let at = layer * self.layout.layer_stride() + (pos % BLOCK_TOKENS) * self.layout.row();
        let block = Arc::make_mut(&mut self.blocks[pos / BLOCK_TOKENS]);
        block.k.write(at, k);
        block.v.write(at, v);
    }

    /// Marks the first `len` positions as filled (truncating drops later ones).
    pub fn set_len(&mut self, len: usize) {
        self.len = len;
        self.blocks.truncate(len.div_ceil(BLOCK_TOKENS));
    }

    /// K rows `[token][row]` of block `b` for `layer` (all [`BLOCK_TOKENS`] slots).
    pub fn k_rows(&self, layer: usize, b: usize) -> KvRows<'_> {
        let s = self.layout.layer_stride();
        self.blocks[b].k.rows(layer * s..(layer + 1) * s)
    }

    /// V rows `[token][row]` of block `b` for `layer` (all [`BLOCK_TOKENS`] slots).
    pub fn v_rows(&self, layer: usize, b: usize) -> KvRows<'_> {
        let s = self.layout.layer_stride();
        self.blocks[b].v.rows(layer * s..(layer + 1) * s)
    }

    /// Keeps the first `b` blocks, appends `block` as block `b` (shared, not
    /// copied) and marks its [`BLOCK_TOKENS`] positions filled. Used to adopt a
    /// full block computed by another sequence with the same tokens.
    pub fn attach_block(&mut self, b: usize, block: Arc<KvBlock>) -> Result<()> {
        let len = (b + 1) * BLOCK_TOKENS;
        if b > self.blocks.len() || len > self.capacity {
            return Err(Error::InvalidArgument(format!("cannot attach KV block {b}")));
        }
        self.blocks.truncate(b);
        self.blocks.push(block);
        self.len = len;
        Ok(())
    }

    /// Replaces the block table (used when restoring a session).
    pub fn from_blocks(
        layout: KvLayout,
        capacity: usize,
        blocks: Vec<Arc<KvBlock>>,
        len: usize,
    ) -> Result<KvCache> {
        if len > capacity || blocks.len() != len.div_ceil(BLOCK_TOKENS) {
            return Err(Error::InvalidArgument(format!(
                "{} KV blocks cannot hold {len} positions",
                blocks.len()
            )));
        }
        Ok(KvCache { layout, blocks, len, capacity })
    }

    /// Changes the most positions this cache may hold (never below its length).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(self.len);
    }

    /// Bytes of K/V memory that the filled positions use.
    pub fn used_bytes(&self) -> usize {
        self.len * self.layout.bytes_per_token()
    }
}
