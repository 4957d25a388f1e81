//! A batch: the new tokens of several sequences, each after what its own KV
//! cache holds, run through one forward pass.
//!
//! The matmuls see every row of every sequence at once (the weights are read
//! once per step for all of them); attention runs per sequence, over its own
//! blocks. Every kernel gives a row the same bits whatever else is in the
//! batch, so a sequence's logits do not depend on its neighbours.

use crate::error::{Error, Result};
use crate::kv::KvCache;

/// Which positions of a forward pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last position (decoding and ordinary prefill).
    Last,
    /// Every position (teacher-forced evaluation).
    All,
    /// None (prefill whose continuation comes later).
    None,
}

impl LogitsFor {
    /// The rows of an `m`-token forward pass that get logits.
    pub fn rows(self, m: usize) -> std::ops::Range<usize> {
        match self {
            LogitsFor::None => 0..0,
            LogitsFor::Last => m.saturating_sub(1)..m,
            LogitsFor::All => 0..m,
        }
    }
}

/// One sequence's part of a batch: `tokens` at positions `kv.len()..`.
///
/// ```
/// use colloquy_engine::batch::{LogitsFor, Sequence};
/// use colloquy_engine::kv::{KvCache, KvDtype, KvLayout};
/// let mut kv = KvCache::new(KvLayout::new(2, 1, 32, KvDtype::F32), 64);
/// let seq = Sequence { tokens: &[1, 2, 3], kv: &mut kv, logits: LogitsFor::Last };
/// assert_eq!(seq.tokens.len(), 3);
/// ```
#[derive(Debug)]
pub struct Sequence<'a> {
    /// The new tokens (at least one).
    pub tokens: &'a [u32],
    /// The sequence's cache: read for its past, and given the new positions.
    pub kv: &'a mut KvCache,
    /// Which of its new positions need logits.
    pub logits: LogitsFor,
}

/// Where each row of a batch comes from, computed once per forward pass into
/// reusable buffers (steady decoding does not allocate).
#[derive(Debug, Default)]
pub struct BatchPlan {
    /// The position of each row in its sequence.
    pub positions: Vec<usize>,
    /// The token of each row.
    pub tokens: Vec<u32>,
    /// For each sequence: its first row, and its first new position.
    pub seqs: Vec<(usize, usize)>,
    /// The rows that get logits, in order.
    pub wanted: Vec<usize>,
}

impl BatchPlan {
    /// Lays out `batch`, checking each token against `n_vocab` and reserving
    /// each sequence's new positions in its cache.
    pub fn build(&mut self, batch: &mut [Sequence<'_>], n_vocab: usize) -> Result<()> {
        self.positions.clear();
        self.tokens.clear();
        self.seqs.clear();
        self.wanted.clear();
        for seq in batch.iter() {
            if let Some(&bad) = seq.tokens.iter().find(|&&t| t as usize >= n_vocab) {
                return Err(Error::TokenOutOfRange { id: bad, vocab: n_vocab });
            }
        }
        for seq in batch.iter_mut() {
            let (row, start) = (self.tokens.len(), seq.kv.len());
            seq.kv.reserve(start, seq.tokens.len())?;
            self.seqs.push((row, start));
            self.tokens.extend_from_slice(seq.tokens);
            self.positions.extend(start..start + seq.tokens.len());
            self.wanted.extend(seq.logits.rows(seq.tokens.len()).map(|r| row + r));
        }
        Ok(())
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// The rows of sequence `i`.
    pub fn rows_of(&self, i: usize) -> std::ops::Range<usize> {
        let start = self.seqs[i].0;
        let end = self.seqs.get(i + 1).map_or(self.tokens.len(), |&(r, _)| r);
        start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvDtype, KvLayout};

    #[test]
    fn plan_lays_out_rows_positions_and_wanted_logits() {
        let layout = KvLayout::new(1, 1, 32, KvDtype::F32);
        let mut a = KvCache::new(layout, 100);
        let mut b = KvCache::new(layout, 100);
        let k = vec![0.0; 32];
        a.reserve(0, 5).unwrap();
        for p in 0..5 {
            a.write(0, p, &k, &k);
        }
        a.set_len(5);
        let mut batch = [
            Sequence { tokens: &[7, 8], kv: &mut a, logits: LogitsFor::Last },
            Sequence { tokens: &[1, 2, 3], kv: &mut b, logits: LogitsFor::All },
        ];
        let mut plan = BatchPlan::default();
        plan.build(&mut batch, 10).unwrap();
        assert_eq!(plan.tokens, [7, 8, 1, 2, 3]);
        assert_eq!(plan.positions, [5, 6, 0, 1, 2]);
        assert_eq!(plan.seqs, [(0, 5), (2, 0)]);
        assert_eq!(plan.wanted, [1, 2, 3, 4]);
        assert_eq!((plan.rows_of(0), plan.rows_of(1)), (0..2, 2..5));
        let mut bad = [Sequence { tokens: &[10], kv: &mut b, logits: LogitsFor::Last }];
        assert!(matches!(plan.build(&mut bad, 10), Err(Error::TokenOutOfRange { id: 10, vocab: 10 })));
    }
}
