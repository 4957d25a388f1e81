//! The session store's memory of blocks it has hashed, saved or loaded.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use colloquy_engine::kv::KvBlock;

use super::BlockHash;

/// Blocks this store has hashed, saved or loaded, so that saving again does not
/// hash unchanged blocks and loading shares blocks already in memory.
///
/// Soundness: an entry holds a `Weak` to the block. `KvCache` changes blocks
/// only through `Arc::make_mut`, which copies a shared block and moves a block
/// that has weak references to a new allocation. So while the weak reference
/// still points at a live allocation, that block has not changed since the
/// entry was made (and the allocation cannot be reused for another block).
#[derive(Default)]
pub(super) struct BlockCache {
    /// (block address, used positions) -> content hash.
    by_ptr: HashMap<(usize, usize), (Weak<KvBlock>, BlockHash)>,
    /// Content hash -> a block in memory with that content.
    by_hash: HashMap<BlockHash, Weak<KvBlock>>,
    prune_at: usize,
}

impl BlockCache {
    pub(super) fn hash_of(&self, block: &Arc<KvBlock>, used: usize) -> Option<BlockHash> {
        let (weak, hash) = self.by_ptr.get(&(Arc::as_ptr(block) as usize, used))?;
        // `block` keeps its allocation alive: if the weak reference points
        // there, it is still attached to it (see the type's comment).
        (Weak::as_ptr(weak) == Arc::as_ptr(block)).then_some(*hash)
    }

    pub(super) fn remember(&mut self, block: &Arc<KvBlock>, used: usize, hash: BlockHash) {
        self.by_ptr.insert((Arc::as_ptr(block) as usize, used), (Arc::downgrade(block), hash));
        self.by_hash
            .entry(hash)
            .and_modify(|w| {
                if w.strong_count() == 0 {
                    *w = Arc::downgrade(block)
                }
            })
            .or_insert_with(|| Arc::downgrade(block));
        self.prune();
    }

    /// The block in memory with this content, or `block` (remembered).
    pub(super) fn share(&mut self, hash: BlockHash, used: usize, block: KvBlock) -> Arc<KvBlock> {
        if let Some(a) = self.by_hash.get(&hash).and_then(Weak::upgrade) {
            return a;
        }
        let a = Arc::new(block);
        self.remember(&a, used, hash);
        a
    }

    fn prune(&mut self) {
        if self.by_ptr.len() + self.by_hash.len() > self.prune_at {
            self.by_ptr.retain(|_, (w, _)| w.strong_count() > 0);
            self.by_hash.retain(|_, w| w.strong_count() > 0);
            self.prune_at = 2 * (self.by_ptr.len() + self.by_hash.len()) + 1024;
        }
    }
}
