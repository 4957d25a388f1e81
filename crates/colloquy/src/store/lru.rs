//! A local cache of decoded blocks in front of a remote backend, bounded by
//! bytes and evicting the least recently used, so that a replica resuming its
//! own recent sessions does not fetch their blocks again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use colloquy_engine::kv::KvBlock;

use super::BlockHash;

/// Blocks by content hash, at most `capacity` bytes of them. A hit is exact:
/// the hash names the layout, the used positions and the rows.
#[derive(Default)]
pub(super) struct BlockLru {
    capacity: usize,
    used: usize,
    tick: u64,
    entries: HashMap<BlockHash, (Arc<KvBlock>, usize, u64)>,
    /// Last use -> hash: the oldest first.
    order: BTreeMap<u64, BlockHash>,
}

impl BlockLru {
    pub(super) fn new(capacity: usize) -> BlockLru {
        BlockLru { capacity, ..BlockLru::default() }
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(super) fn get(&mut self, hash: BlockHash) -> Option<Arc<KvBlock>> {
        self.tick += 1;
        let tick = self.tick;
        let (block, _, last) = self.entries.get_mut(&hash)?;
        self.order.remove(last);
        *last = tick;
        self.order.insert(tick, hash);
        Some(Arc::clone(block))
    }

    /// Keeps `block` (of `bytes` bytes), evicting the oldest to make room. A
    /// block larger than the whole cache is not kept.
    pub(super) fn insert(&mut self, hash: BlockHash, block: &Arc<KvBlock>, bytes: usize) {
        if bytes > self.capacity || self.get(hash).is_some() {
            return;
        }
        while self.used + bytes > self.capacity {
            let Some((_, old)) = self.order.pop_first() else { break };
            if let Some((_, b, _)) = self.entries.remove(&old) {
                self.used -= b;
            }
        }
        self.tick += 1;
        self.entries.insert(hash, (Arc::clone(block), bytes, self.tick));
        self.order.insert(self.tick, hash);
        self.used += bytes;
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colloquy_engine::kv::{KvDtype, KvLayout};

    #[test]
    fn evicts_the_least_recently_used_within_its_bytes() {
        let layout = KvLayout::new(1, 1, 4, KvDtype::F16);
        let block = Arc::new(KvBlock::zeroed(&layout));
        let mut lru = BlockLru::new(250);
        for h in 0..3 {
            lru.insert(BlockHash(h), &block, 100);
        }
        // 0 went to make room for 2.
        assert!(lru.get(BlockHash(0)).is_none());
        assert!(lru.get(BlockHash(1)).is_some());
        lru.insert(BlockHash(3), &block, 100);
        // 1 was used last, so 2 went.
        assert!(lru.get(BlockHash(2)).is_none());
        assert!(lru.get(BlockHash(1)).is_some() && lru.get(BlockHash(3)).is_some());
        assert_eq!(lru.used(), 200);
        lru.insert(BlockHash(4), &block, 1000);
        assert!(lru.get(BlockHash(4)).is_none(), "larger than the cache");
    }
}
