//! Token sampling: penalties, greedy, temperature, top-k, top-p, min-p, and a
//! seeded random generator whose state can be saved and restored.
//!
//! The chain follows llama.cpp's default order: penalties, then top-k, top-p,
//! min-p, temperature, and finally a draw from the resulting distribution.
//! Temperature 0 (or below) is greedy: the highest logit, ties to the lowest id.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampling settings.
///
/// ```
/// use colloquy_engine::sampler::SamplerParams;
/// let greedy = SamplerParams { temperature: 0.0, ..SamplerParams::default() };
/// assert!(greedy.is_greedy());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerParams {
    /// Softmax temperature; `<= 0` means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (`0` = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (`1.0` = off).
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top one (`0.0` = off).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens (`1.0` = off).
    pub repetition_penalty: f32,
    /// Subtract `count × frequency_penalty` from recent tokens' logits.
    pub frequency_penalty: f32,
    /// Subtract `presence_penalty` from every recent token's logit.
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplerParams {
    /// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05,
    /// no penalties, seed 0.
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerParams {
    /// Whether sampling reduces to argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// A sampler: settings plus random state.
///
/// ```
/// use colloquy_engine::sampler::{Sampler, SamplerParams};
/// let mut s = Sampler::new(SamplerParams { temperature: 0.0, ..Default::default() });
/// assert_eq!(s.sample(&mut [0.1, 2.0, 2.0, -1.0], &[]), 1);
/// ```
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplerParams,
    rng: ChaCha8Rng,
    cands: Vec<(u32, f32)>,
}

/// The saved state of a sampler's random generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngState {
    /// The seed.
    pub seed: u64,
    /// How many 32-bit words have been drawn.
    pub word_pos: u128,
}

impl Sampler {
    /// A sampler seeded with `params.seed`.
    pub fn new(params: SamplerParams) -> Sampler {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Sampler { params, rng, cands: Vec::new() }
    }

    /// The settings.
    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// The random generator's position, for saving.
    pub fn rng_state(&self) -> RngState {
        RngState { seed: self.params.seed, word_pos: self.rng.get_word_pos() }
    }

    /// Restores a saved random generator position.
    pub fn set_rng_state(&mut self, state: RngState) {
        self.params.seed = state.seed;
        self.rng = ChaCha8Rng::seed_from_u64(state.seed);
        self.rng.set_word_pos(state.word_pos);
    }

    /// Picks the next token from `logits`, given the tokens so far (for penalties).
    /// `logits` is modified by the penalties.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_penalties(logits, history);
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let p = &self.params;
        self.cands.clear();
        self.cands.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        // Highest logit first; ties to the lowest id so the order is total.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = if p.top_k > 0 { p.top_k.min(self.cands.len()) } else { self.cands.len() };
        if k < self.cands.len() {
            self.cands.select_nth_unstable_by(k - 1, by_logit);
            self.cands.truncate(k);
        }
        self.cands.sort_by(by_logit);

        // Probabilities at temperature 1 for the top-p and min-p filters.
        let probs = softmax(&self.cands, 1.0);
        let mut keep = self.cands.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, q) in probs.iter().enumerate() {
                cum += q;
                if cum >= p.top_p {
                    keep = keep.min(i + 1);
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        self.cands.truncate(keep.max(1));

        let probs = softmax(&self.cands, p.temperature);
        let r = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut cum = 0.0f64;
        for (c, q) in self.cands.iter().zip(&probs) {
            cum += *q as f64;
            if r < cum {
                return c.0;
            }
        }
        self.cands[self.cands.len() - 1].0
    }

    fn apply_penalties(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.penalty_last_n == 0
            || (p.repetition_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0)
        {
            return;
        }
        let recent = &history[history.len().saturating_sub(p.penalty_last_n)..];
        let mut counts: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for &t in recent {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &n) in &counts {
            let Some(l) = logits.get_mut(t as usize) else { continue };
            if *l > 0.0 {
                *l /= p.repetition_penalty;
            } else {
                *l *= p.repetition_penalty;
            }
            *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }
}

/// Index of the largest value; ties go to the lowest index. NaN is never chosen
/// over a number.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

fn softmax(cands: &[(u32, f32)], temperature: f32) -> Vec<f32> {
    let max = cands.first().map_or(0.0, |c| c.1);
    let mut e: Vec<f32> = cands.iter().map(|c| ((c.1 - max) / temperature).exp()).collect();
    let sum: f32 = e.iter().sum();
    for x in &mut e {
        *x /= sum;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect()
    }

    #[test]
    fn greedy_picks_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplerParams { temperature: 0.0, ..Default::default() });
        assert_eq!(s.sample(&mut [1.0, 3.0, 3.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(SamplerParams {
                seed,
                top_k: 0,
                min_p: 0.0,
                temperature: 2.0,
                ..Default::default()
            });
            (0..50).map(|_| s.sample(&mut logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn rng_state_round_trips() {
        let mut a = Sampler::new(SamplerParams { seed: 3, top_k: 0, min_p: 0.0, ..Default::default() });
        for _ in 0..5 {
            a.sample(&mut logits(), &[]);
        }
        let mut b = Sampler::new(a.params().clone());
        b.set_rng_state(a.rng_state());
        for _ in 0..20 {
            assert_eq!(a.sample(&mut logits(), &[]), b.sample(&mut logits(), &[]));
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplerParams { top_k: 1, ..Default::default() });
        let l = logits();
        let best = argmax(&l);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut l.clone(), &[]), best);
        }
    }

    #[test]
    fn repetition_penalty_demotes_recent_tokens() {
        let mut s =
            Sampler::new(SamplerParams { temperature: 0.0, repetition_penalty: 10.0, ..Default::default() });
        assert_eq!(s.sample(&mut [1.0, 5.0, 4.0], &[1]), 2);
    }

    #[test]
    fn min_p_filters_unlikely_tokens() {
        let mut s = Sampler::new(SamplerParams {
            min_p: 0.5,
            top_k: 0,
            top_p: 1.0,
            temperature: 1.0,
            ..Default::default()
        });
        for _ in 0..50 {
            let t = s.sample(&mut [10.0, 9.9, 0.0, -5.0], &[]);
            assert!(t < 2);
        }
    }
}
