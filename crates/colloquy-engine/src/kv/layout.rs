//! The shape of a KV cache: which layers store K/V, how, and which of them
//! only look back through a sliding window.

use super::{KvDtype, BLOCK_TOKENS};

/// The sliding-window layers of a model (Gemma 3's "local" layers).
///
/// A query at position `p` in one of these layers sees the keys at
/// `p - size + 1 ..= p`, so once the sequence has moved on, older positions of
/// these layers are never read again and the cache drops them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvWindow {
    /// Positions a query sees, itself included.
    pub size: usize,
    /// Bit `l` is set when layer `l` attends through the window (layers 0 to 127).
    pub layers: u128,
}

/// The shape of a model's KV cache.
///
/// Layers are stored in two lanes of blocks: the global lane (every layer
/// without a window) keeps every position, and the window lane (the layers of
/// [`window`](Self::window)) keeps only the positions a query can still see.
///
/// ```
/// use colloquy_engine::kv::{KvDtype, KvLayout, KvWindow};
///
/// // Six layers, the first five local: Gemma 3's pattern.
/// let window = KvWindow { size: 512, layers: 0b011111 };
/// let layout = KvLayout::new(6, 1, 256, KvDtype::F16).with_window(Some(window));
/// assert_eq!(layout.lane(false).n_layers, 1);
/// assert_eq!(layout.lane(true).n_layers, 5);
/// assert_eq!(layout.lane_index(5), (false, 0));
/// assert_eq!(layout.lane_index(3), (true, 3));
/// ```
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
    /// Layers that see only a sliding window (`None`: every layer sees every position).
    pub window: Option<KvWindow>,
}

impl KvLayout {
    /// A layout whose layers all see every position.
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, dtype: KvDtype) -> KvLayout {
        KvLayout { n_layers, n_kv_heads, head_dim, dtype, window: None }
    }

    /// The same layout with these window layers. A window that names no layer
    /// (or only layers past the last) is dropped.
    pub fn with_window(mut self, window: Option<KvWindow>) -> KvLayout {
        let mask = if self.n_layers >= 128 { u128::MAX } else { (1u128 << self.n_layers) - 1 };
        self.window = window
            .map(|w| KvWindow { size: w.size.max(1), layers: w.layers & mask })
            .filter(|w| w.layers != 0);
        self
    }

    /// Elements in one position's K (or V) row of one layer.
    pub fn row(&self) -> usize {
        self.n_kv_heads.saturating_mul(self.head_dim)
    }

    /// Elements of K (or V) for one layer of one block.
    pub(crate) fn layer_stride(&self) -> usize {
        BLOCK_TOKENS * self.row()
    }

    /// Bytes of K and V per position, all layers (what a position costs while
    /// every layer still holds it).
    pub fn bytes_per_token(&self) -> usize {
        self.n_layers.saturating_mul(2).saturating_mul(self.dtype.bytes(self.row()))
    }

    /// Bytes of K and V that one query reads at `context` positions: every
    /// position of the global layers, at most the window of the windowed ones.
    ///
    /// ```
    /// use colloquy_engine::kv::{KvDtype, KvLayout, KvWindow};
    ///
    /// let window = KvWindow { size: 512, layers: 0b01 };
    /// let layout = KvLayout::new(2, 1, 64, KvDtype::F16).with_window(Some(window));
    /// // Layer 1 reads 1000 positions, layer 0 only its 512: K and V, 64 f16 each.
    /// assert_eq!(layout.bytes_read_at(1000), (1000 + 512) * 2 * 64 * 2);
    /// ```
    pub fn bytes_read_at(&self, context: usize) -> usize {
        let global = self.lane(false).n_layers.saturating_mul(context);
        let windowed =
            self.window.map_or(0, |w| self.lane(true).n_layers.saturating_mul(context.min(w.size)));
        global.saturating_add(windowed).saturating_mul(2).saturating_mul(self.dtype.bytes(self.row()))
    }

    /// Whether a K/V row can use this layout's storage type (Q8_0 needs whole
    /// 32-value blocks per head).
    pub fn is_valid(&self) -> bool {
        self.dtype != KvDtype::Q8_0 || self.head_dim.is_multiple_of(32)
    }

    /// Whether layer `l` attends through the window.
    pub fn is_windowed(&self, l: usize) -> bool {
        self.window.is_some_and(|w| l < 128 && w.layers >> l & 1 == 1)
    }

    /// The layout of one lane's blocks: the window lane (`true`) or the global
    /// lane. A lane's layout has no window of its own.
    pub fn lane(&self, windowed: bool) -> KvLayout {
        // `with_window` keeps only bits of layers that exist: count them (O(1)
        // even for a layer count read from untrusted bytes).
        let in_window = self.window.map_or(0, |w| w.layers.count_ones() as usize).min(self.n_layers);
        let n = if windowed { in_window } else { self.n_layers - in_window };
        KvLayout { n_layers: n, window: None, ..*self }
    }

    /// Which lane layer `l` is stored in (`true`: the window lane) and its index there.
    pub fn lane_index(&self, l: usize) -> (bool, usize) {
        // Window layers below `l`, counted from the bit mask.
        let below = match self.window {
            Some(w) if l < 128 => (w.layers & ((1u128 << l) - 1)).count_ones() as usize,
            Some(w) => w.layers.count_ones() as usize,
            None => 0,
        };
        if self.is_windowed(l) {
            (true, below)
        } else {
            (false, l - below)
        }
    }
}
