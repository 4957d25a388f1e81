//! A cache of full KV blocks keyed by the tokens that produced them.
//!
//! A block's key is a hash of its tokens chained with the key of the block
//! before it, so a key names a whole prefix (as vLLM's prefix caching does).
//! A sequence that starts with tokens another sequence already computed
//! adopts those blocks instead of recomputing them. Because the kernels are
//! batch-invariant, an adopted block holds exactly the bits a recomputation
//! would produce, so a hit never changes the logits.
//!
//! With a sliding-window model, a block's window-lane part is kept when the
//! sequence still held it. A lookup stops at the longest prefix after which
//! the window is complete, since only there can a sequence continue.

use std::collections::HashMap;
use std::sync::Arc;

use crate::kv::{KvBlock, KvCache, BLOCK_TOKENS};

/// Counters of a [`PrefixCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefixCacheStats {
    /// Blocks held.
    pub blocks: usize,
    /// Bytes of K/V those blocks hold.
    pub bytes: usize,
    /// The memory budget.
    pub budget: usize,
    /// Blocks adopted by lookups.
    pub hits: u64,
    /// Blocks looked up and not found.
    pub misses: u64,
    /// Blocks dropped to stay within the budget.
    pub evictions: u64,
}

struct Entry {
    block: Arc<KvBlock>,
    /// The block's window-lane part, when it was still held.
    window: Option<Arc<KvBlock>>,
    bytes: usize,
    tokens: Vec<u32>,
    parent: u128,
    last_used: u64,
}

/// Full KV blocks of one model, keyed by prefix, bounded by a byte budget with
/// least-recently-used eviction.
///
/// ```
/// use colloquy_engine::kv::{KvCache, KvDtype, KvLayout, BLOCK_TOKENS};
/// use colloquy_engine::prefix::PrefixCache;
///
/// let layout = KvLayout::new(1, 1, 4, KvDtype::F16);
/// let tokens: Vec<u32> = (0..40).collect();
/// let mut a = KvCache::new(layout, 128);
/// a.reserve(0, 40).unwrap();
/// a.set_len(40);
/// let mut cache = PrefixCache::new(1 << 20);
/// cache.insert(&a, &tokens);
///
/// // Another sequence with the same first 32 tokens adopts the block.
/// let mut b = KvCache::new(layout, 128);
/// assert_eq!(cache.extend(&mut b, &tokens, 39), BLOCK_TOKENS);
/// ```
pub struct PrefixCache {
    map: HashMap<u128, Entry>,
    budget: usize,
    bytes: usize,
    clock: u64,
    stats: PrefixCacheStats,
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCache").field("stats", &self.stats()).finish()
    }
}

/// The key of each full block of `tokens`.
fn chain(tokens: &[u32]) -> impl Iterator<Item = (u128, u128, &[u32])> {
    let mut prev = 0u128;
    tokens.chunks_exact(BLOCK_TOKENS).map(move |block| {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&prev.to_le_bytes());
        for t in block {
            h.update(&t.to_le_bytes());
        }
        let parent = prev;
        prev = h.digest128();
        (prev, parent, block)
    })
}

impl PrefixCache {
    /// An empty cache that holds at most `budget` bytes of blocks (0 disables it).
    pub fn new(budget: usize) -> PrefixCache {
        PrefixCache {
            map: HashMap::new(),
            budget,
            bytes: 0,
            clock: 0,
            stats: PrefixCacheStats { budget, ..Default::default() },
        }
    }

    /// Size and counters.
    pub fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats { blocks: self.map.len(), bytes: self.bytes, ..self.stats }
    }

    /// Registers the full blocks of `kv`, whose positions hold `tokens`.
    pub fn insert(&mut self, kv: &KvCache, tokens: &[u32]) {
        if self.budget == 0 {
            return;
        }
        let full = kv.len().min(tokens.len()) / BLOCK_TOKENS;
        let global_bytes = BLOCK_TOKENS * kv.layout().lane(false).bytes_per_token();
        let window_bytes = BLOCK_TOKENS * kv.layout().lane(true).bytes_per_token();
        for (b, (key, parent, toks)) in chain(&tokens[..full * BLOCK_TOKENS]).enumerate() {
            self.clock += 1;
            let window = kv.window_blocks().get(b).cloned().flatten();
            match self.map.get_mut(&key) {
                Some(e) => {
                    e.last_used = self.clock;
                    if e.window.is_none() && window.is_some() {
                        e.window = window;
                        e.bytes += window_bytes;
                        self.bytes += window_bytes;
                    }
                }
                None => {
                    let block = Arc::clone(&kv.blocks()[b]);
                    let bytes = global_bytes + if window.is_some() { window_bytes } else { 0 };
                    let tokens = toks.to_vec();
                    let entry = Entry { block, window, bytes, tokens, parent, last_used: self.clock };
                    self.map.insert(key, entry);
                    self.bytes += bytes;
                }
            }
        }
        self.evict();
    }

    /// Adopts cached blocks into `kv` for `tokens`, starting at the block that
    /// holds position `kv.len()`, and never past position `limit` (the caller
    /// keeps at least one token to compute, for its logits). Returns the new
    /// length of `kv`.
    pub fn extend(&mut self, kv: &mut KvCache, tokens: &[u32], limit: usize) -> usize {
        if self.budget == 0 {
            return kv.len();
        }
        let first = kv.len() / BLOCK_TOKENS;
        // The longest length reached from which the sequence can continue.
        let mut resumable = kv.len();
        for (b, (key, parent, toks)) in chain(tokens).enumerate().skip(first) {
            if (b + 1) * BLOCK_TOKENS > limit {
                break;
            }
            self.clock += 1;
            let found = match self.map.get_mut(&key) {
                // Compare the tokens too: a key collision must never feed wrong state.
                Some(e) if e.tokens == toks && e.parent == parent => {
                    e.last_used = self.clock;
                    Some((Arc::clone(&e.block), e.window.clone()))
                }
                _ => None,
            };
            match found.filter(|(blk, win)| kv.attach_block(b, Arc::clone(blk), win.clone()).is_ok()) {
                Some(_) => {
                    self.stats.hits += 1;
                    if kv.can_resume_at(kv.len()) {
                        resumable = kv.len();
                    }
                }
                None => {
                    self.stats.misses += 1;
                    break;
                }
            }
        }
        kv.truncate(resumable)
    }

    fn evict(&mut self) {
        while self.bytes > self.budget && !self.map.is_empty() {
            let oldest = self.map.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| *k);
            if let Some(e) = oldest.and_then(|k| self.map.remove(&k)) {
                self.bytes -= e.bytes;
                self.stats.evictions += 1;
            }
        }
    }
}
