//! A prefix-cache hit gives bit-identical logits to a cold run, on the real model.

mod common;

use colloquy_engine::arch::LogitsFor;
use colloquy_engine::kv::BLOCK_TOKENS;
use colloquy_engine::linear::Precision;
use colloquy_engine::prefix::PrefixCache;
use common::*;

#[test]
fn hit_equals_cold_run_bit_for_bit() {
    let model = load("smollm2", Precision::Fast, 2);
    let case =
        logits_cases(SMOLLM2, "logits.json").into_iter().find(|c| c.name == "chat_long_summary").unwrap();
    let a: Vec<u32> = case.prompt_ids[..300].to_vec();
    // B shares A's first 200 tokens, then differs.
    let mut b: Vec<u32> = a[..200].to_vec();
    b.extend(case.prompt_ids[400..460].iter().copied());

    let mut cache = PrefixCache::new(64 << 20);
    let mut kv_a = model.new_kv();
    model.forward(&mut kv_a, &a, LogitsFor::None).unwrap();
    cache.insert(&kv_a, &a);
    assert_eq!(cache.stats().blocks, 300 / BLOCK_TOKENS);

    let mut cold = model.new_kv();
    let cold_logits = model.forward(&mut cold, &b, LogitsFor::All).unwrap();

    let mut hit = model.new_kv();
    let reused = cache.extend(&mut hit, &b, b.len() - 1);
    assert_eq!(reused, 200 / BLOCK_TOKENS * BLOCK_TOKENS, "the shared full blocks are adopted");
    assert_eq!(cache.stats().hits, (200 / BLOCK_TOKENS) as u64);
    let hit_logits = model.forward(&mut hit, &b[reused..], LogitsFor::All).unwrap();

    let n = model.n_vocab();
    let cold_tail = &cold_logits[reused * n..];
    assert_eq!(cold_tail.len(), hit_logits.len());
    let same = cold_tail.iter().zip(&hit_logits).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same, "logits after a prefix-cache hit differ from the cold run");

    // A different first block misses.
    let mut other = b.clone();
    other[0] += 1;
    let mut kv = model.new_kv();
    assert_eq!(cache.extend(&mut kv, &other, other.len() - 1), 0);
}

#[test]
fn budget_evicts_least_recently_used_blocks() {
    let model = load("smollm2", Precision::Fast, 2);
    let per_block = BLOCK_TOKENS * model.new_kv().layout().bytes_per_token();
    let mut cache = PrefixCache::new(3 * per_block);
    let tokens: Vec<u32> = (0..160).map(|i| 100 + i).collect();
    let mut kv = model.new_kv();
    model.forward(&mut kv, &tokens, LogitsFor::None).unwrap();
    cache.insert(&kv, &tokens);
    let s = cache.stats();
    assert_eq!(s.blocks, 3);
    assert!(s.bytes <= s.budget);
    assert_eq!(s.evictions, 2);
}
