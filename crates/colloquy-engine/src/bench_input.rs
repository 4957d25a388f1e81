//! The input of the benchmarks: fixed pseudo-random token ids that
//! `colloquy bench`, `colloquy bench-batch` and the llama.cpp peer all feed,
//! so that both engines always read the same tokens.

/// Seed of the prompt and context tokens of `colloquy bench` and its peer.
pub const PROMPT_SEED: u64 = 0x636f_6c6c_6f71_7579;

/// `n` token ids in `0..n_vocab` (SplitMix64 from `seed`).
///
/// ```
/// use colloquy_engine::bench_input::{bench_tokens, PROMPT_SEED};
/// assert_eq!(bench_tokens(4, 49152, PROMPT_SEED), [42702, 5506, 16897, 41692]);
/// ```
pub fn bench_tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z % n_vocab.max(1) as u64) as u32
        })
        .collect()
}
