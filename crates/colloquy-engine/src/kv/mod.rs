//! The paged KV cache.
//!
//! Keys and values live in fixed-size blocks of [`BLOCK_TOKENS`] positions.
//! Blocks are reference-counted: cloning a cache copies only the block table,
//! and the first write into a shared block copies that one block
//! (copy-on-write). Decoding and prefill write exactly the same values, so a
//! cache restored from bytes or shared with a fork holds the same bits as one
//! that was computed in place.
//!
//! Layers that attend through a sliding window (see [`KvWindow`]) live in a
//! lane of their own. Their blocks are dropped once no future query can see
//! them, so their memory stays bounded by the window, however long the
//! sequence grows. What is kept is what continuing needs (the window before
//! the next position, and before the [rewind point](KvCache::set_rewind_point)
//! if one is set) plus one block, so that another sequence can adopt this
//! one's blocks through the prefix cache up to its last full block.

use std::sync::Arc;

use crate::error::{Error, Result};

mod data;
mod layout;
pub use data::{KvBlock, KvData, KvDtype, KvRows, RECYCLE_BYTES};
pub use layout::{KvLayout, KvWindow};

/// Positions per block.
pub const BLOCK_TOKENS: usize = 32;

/// A sequence's KV cache: tables of shared blocks plus the number of filled positions.
///
/// ```
/// use colloquy_engine::kv::{KvCache, KvDtype, KvLayout};
///
/// let layout = KvLayout::new(2, 1, 4, KvDtype::F16);
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
    /// The global lane: every position of the layers without a window.
    blocks: Vec<Arc<KvBlock>>,
    /// The window lane, indexed like `blocks` (empty without a window);
    /// `None` where the block has been dropped.
    window: Vec<Option<Arc<KvBlock>>>,
    /// Window blocks before this index have been dropped.
    first_window: usize,
    rewind_point: Option<usize>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache that may grow to `capacity` positions.
    pub fn new(layout: KvLayout, capacity: usize) -> KvCache {
        KvCache {
            layout,
            blocks: Vec::new(),
            window: Vec::new(),
            first_window: 0,
            rewind_point: None,
            len: 0,
            capacity,
        }
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

    /// The global lane's blocks (every position).
    pub fn blocks(&self) -> &[Arc<KvBlock>] {
        &self.blocks
    }

    /// The window lane's blocks, indexed like [`blocks`](Self::blocks); `None`
    /// where a block has been dropped. Empty when the layout has no window.
    pub fn window_blocks(&self) -> &[Option<Arc<KvBlock>>] {
        &self.window
    }

    /// The first position a window-layer query at `pos` sees.
    fn window_start(&self, pos: usize) -> usize {
        self.layout.window.map_or(0, |w| (pos + 1).saturating_sub(w.size))
    }

    /// Keeps the window needed to continue from `pos` (besides the one needed
    /// at the end) until the point is moved or cleared. A chat sets it where
    /// the model's answer begins, so the next turn can rewind into the answer
    /// (when its text tokenizes differently) without recomputing everything.
    pub fn set_rewind_point(&mut self, pos: Option<usize>) {
        self.rewind_point = pos.map(|p| p.min(self.len));
    }

    /// The point set by [`set_rewind_point`](Self::set_rewind_point).
    pub fn rewind_point(&self) -> Option<usize> {
        self.rewind_point
    }

    /// Drops the window blocks that no query from `pos` on (nor from the
    /// rewind point) can see. One block more is kept, so that another sequence
    /// can adopt this one's blocks (through the prefix cache) up to its last
    /// full block before that point.
    fn drop_outside_window(&mut self, pos: usize) {
        let from = self.window_start(self.rewind_point.map_or(pos, |r| r.min(pos)));
        let from = from.saturating_sub(BLOCK_TOKENS);
        let keep = (from / BLOCK_TOKENS).min(self.window.len());
        for slot in self.window.get_mut(self.first_window..keep).into_iter().flatten() {
            *slot = None;
        }
        self.first_window = self.first_window.max(keep);
    }

    /// Makes positions `start..start + n` writable: allocates missing blocks and
    /// copies shared ones (copy-on-write), and drops window blocks that no
    /// query from `start` on can see. Fails if the capacity would be exceeded.
    pub fn reserve(&mut self, start: usize, n: usize) -> Result<()> {
        let end = start + n;
        if end > self.capacity {
            return Err(Error::ContextOverflow { needed: end, n_ctx: self.capacity });
        }
        let global = self.layout.lane(false);
        while self.blocks.len() * BLOCK_TOKENS < end {
            self.blocks.push(Arc::new(KvBlock::zeroed(&global)));
        }
        if self.layout.window.is_some() {
            self.window.resize(self.blocks.len(), None);
            self.drop_outside_window(start);
        }
        if n > 0 {
            let local = self.layout.lane(true);
            for b in start / BLOCK_TOKENS..=(end - 1) / BLOCK_TOKENS {
                Arc::make_mut(&mut self.blocks[b]);
                if let Some(slot) = self.window.get_mut(b) {
                    let block = slot.get_or_insert_with(|| Arc::new(KvBlock::zeroed(&local)));
                    Arc::make_mut(block);
                }
            }
        }
        Ok(())
    }

    /// Writes one position's K and V rows for one layer. The block must have been
    /// made writable with [`reserve`](Self::reserve) (otherwise this copies it).
    pub fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (windowed, i) = self.layout.lane_index(layer);
        let at = i * self.layout.layer_stride() + (pos % BLOCK_TOKENS) * self.layout.row();
        let b = pos / BLOCK_TOKENS;
        let slot = if windowed { self.window[b].as_mut() } else { Some(&mut self.blocks[b]) };
        if let Some(block) = slot {
            let block = Arc::make_mut(block);
            block.k.write(at, k);
            block.v.write(at, v);
        }
    }

    /// Marks the first `len` positions as filled (truncating drops later ones).
    /// To go back to an earlier position, use [`truncate`](Self::truncate),
    /// which checks that the window there is still held.
    pub fn set_len(&mut self, len: usize) {
        self.len = len;
        self.blocks.truncate(len.div_ceil(BLOCK_TOKENS));
        self.window.truncate(self.blocks.len());
        self.first_window = self.first_window.min(self.window.len());
        self.rewind_point = self.rewind_point.map(|r| r.min(len));
    }

    /// Whether the sequence can continue from position `len`: it is filled, and
    /// the window before it is still held.
    pub fn can_resume_at(&self, len: usize) -> bool {
        if len > self.len {
            return false;
        }
        if self.layout.window.is_none() || len == 0 {
            return true;
        }
        let blocks = self.window_start(len) / BLOCK_TOKENS..len.div_ceil(BLOCK_TOKENS);
        self.window.get(blocks).is_some_and(|w| w.iter().all(Option::is_some))
    }

    /// Goes back to the first `len` positions. If the window before `len` has
    /// been dropped, the sequence cannot continue from there and the cache is
    /// emptied instead. Returns the length kept.
    ///
    /// ```
    /// use colloquy_engine::kv::{KvCache, KvDtype, KvLayout, KvWindow};
    ///
    /// let layout = KvLayout::new(2, 1, 4, KvDtype::F16)
    ///     .with_window(Some(KvWindow { size: 40, layers: 0b01 }));
    /// let mut kv = KvCache::new(layout, 1024);
    /// for pos in 0..200 {
    ///     kv.reserve(pos, 1).unwrap();
    ///     kv.set_len(pos + 1);
    /// }
    /// assert!(kv.window_blocks().iter().filter(|b| b.is_some()).count() <= 4);
    /// assert_eq!(kv.truncate(190), 190); // its window is held
    /// assert_eq!(kv.truncate(100), 0); // its window is gone: start over
    /// ```
    pub fn truncate(&mut self, len: usize) -> usize {
        let len = len.min(self.len);
        self.set_len(if self.can_resume_at(len) { len } else { 0 });
        self.len
    }

    fn lane_rows(&self, layer: usize, b: usize, k: bool) -> KvRows<'_> {
        let (windowed, i) = self.layout.lane_index(layer);
        let s = self.layout.layer_stride();
        let block = if windowed { self.window.get(b).and_then(Option::as_ref) } else { self.blocks.get(b) };
        match block {
            Some(block) => (if k { &block.k } else { &block.v }).rows(i * s..(i + 1) * s),
            // Attention never reads outside the window; an empty run keeps this total.
            None => KvRows::empty(self.layout.dtype),
        }
    }

    /// K rows `[token][row]` of block `b` for `layer` (all [`BLOCK_TOKENS`] slots).
    pub fn k_rows(&self, layer: usize, b: usize) -> KvRows<'_> {
        self.lane_rows(layer, b, true)
    }

    /// V rows `[token][row]` of block `b` for `layer` (all [`BLOCK_TOKENS`] slots).
    pub fn v_rows(&self, layer: usize, b: usize) -> KvRows<'_> {
        self.lane_rows(layer, b, false)
    }

    /// Keeps the first `b` blocks, appends `block` (and its window-lane part) as
    /// block `b` (shared, not copied) and marks its [`BLOCK_TOKENS`] positions
    /// filled. Used to adopt a full block computed by another sequence with the
    /// same tokens. Check [`can_resume_at`](Self::can_resume_at) before continuing.
    pub fn attach_block(
        &mut self,
        b: usize,
        block: Arc<KvBlock>,
        window: Option<Arc<KvBlock>>,
    ) -> Result<()> {
        let len = (b + 1) * BLOCK_TOKENS;
        if b > self.blocks.len() || len > self.capacity {
            return Err(Error::InvalidArgument(format!("cannot attach KV block {b}")));
        }
        self.blocks.truncate(b);
        self.blocks.push(block);
        if self.layout.window.is_some() {
            self.window.resize(b, None);
            self.window.push(window);
            self.first_window = self.first_window.min(b);
        }
        self.len = len;
        Ok(())
    }

    /// Rebuilds a cache from its lanes (used when restoring a session):
    /// `blocks` for every position, and `window` indexed like it (empty when
    /// the layout has no window). Fails unless the sequence can continue at `len`.
    pub fn from_lanes(
        layout: KvLayout,
        capacity: usize,
        blocks: Vec<Arc<KvBlock>>,
        window: Vec<Option<Arc<KvBlock>>>,
        len: usize,
        rewind_point: Option<usize>,
    ) -> Result<KvCache> {
        let bad = |what: String| Err(Error::InvalidArgument(what));
        if len > capacity || blocks.len() != len.div_ceil(BLOCK_TOKENS) {
            return bad(format!("{} KV blocks cannot hold {len} positions", blocks.len()));
        }
        let expected = if layout.window.is_some() { blocks.len() } else { 0 };
        if window.len() != expected {
            return bad(format!("{} window blocks for {} positions", window.len(), len));
        }
        let first_window = window.iter().position(Option::is_some).unwrap_or(window.len());
        let kv = KvCache {
            layout,
            blocks,
            window,
            first_window,
            rewind_point: rewind_point.filter(|&r| r <= len),
            len,
            capacity,
        };
        if !kv.can_resume_at(len) || kv.rewind_point.is_some_and(|r| !kv.can_resume_at(r)) {
            return bad(format!("the window before position {len} is missing"));
        }
        Ok(kv)
    }

    /// This cache with the window lane of `target`: splits each block of a
    /// cache without a window (as sessions saved before windows were kept
    /// apart hold them) into the two lanes, keeping only the window that
    /// continuing needs. `target` must otherwise equal this layout.
    pub fn into_layout(self, target: KvLayout) -> Result<KvCache> {
        if self.layout == target {
            return Ok(self);
        }
        if self.layout.window.is_some() || self.layout.with_window(target.window) != target {
            return Err(Error::InvalidArgument(format!(
                "KV layout {:?} cannot become {target:?}",
                self.layout
            )));
        }
        let (global, local) = (target.lane(false), target.lane(true));
        let keep_from = (target.window.map_or(0, |w| (self.len + 1).saturating_sub(w.size))) / BLOCK_TOKENS;
        let stride = self.layout.layer_stride();
        let mut bytes = Vec::new();
        let mut blocks = Vec::with_capacity(self.blocks.len());
        let mut window = Vec::with_capacity(self.blocks.len());
        for (b, old) in self.blocks.iter().enumerate() {
            let mut g = KvBlock::zeroed(&global);
            let mut w = (b >= keep_from).then(|| KvBlock::zeroed(&local));
            for l in 0..target.n_layers {
                let (windowed, i) = target.lane_index(l);
                let Some(dst) = (if windowed { w.as_mut() } else { Some(&mut g) }) else { continue };
                for (from, to) in [(&old.k, &mut dst.k), (&old.v, &mut dst.v)] {
                    bytes.clear();
                    from.encode_range(l * stride..(l + 1) * stride, &mut bytes);
                    to.decode_range(i * stride..(i + 1) * stride, &bytes);
                }
            }
            blocks.push(Arc::new(g));
            window.push(w.map(Arc::new));
        }
        KvCache::from_lanes(target, self.capacity, blocks, window, self.len, None)
    }

    /// Changes the most positions this cache may hold (never below its length).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(self.len);
    }

    /// Bytes of K/V memory that the filled positions use: every position of
    /// the global lane, and the positions of the window lane still held.
    pub fn used_bytes(&self) -> usize {
        let held = |b: usize| (self.len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        let window: usize =
            (self.first_window..self.window.len()).filter(|&b| self.window[b].is_some()).map(held).sum();
        self.len * self.layout.lane(false).bytes_per_token()
            + window * self.layout.lane(true).bytes_per_token()
    }
}
