//! Batch invariance on the real model: the logits at a position are the same
//! bits whatever the chunking of the prompt and the thread count.

mod common;

use colloquy_engine::arch::LogitsFor;
use colloquy_engine::linear::Precision;
use colloquy_engine::model::Model;
use common::*;

/// A 300-token prompt: the long summarization case, cut.
fn prompt() -> Vec<u32> {
    let case =
        logits_cases(SMOLLM2, "logits.json").into_iter().find(|c| c.name == "chat_long_summary").unwrap();
    assert!(case.prompt_ids.len() >= 300);
    case.prompt_ids[..300].to_vec()
}

fn run(model: &Model, tokens: &[u32], chunk: usize) -> Vec<u32> {
    let mut kv = model.new_kv();
    let mut out = Vec::new();
    model.forward_chunked(&mut kv, tokens, LogitsFor::All, chunk, &mut out, &mut |_, _| {}).unwrap();
    assert_eq!(out.len(), tokens.len() * model.n_vocab());
    out.iter().map(|x| x.to_bits()).collect()
}

fn check(precision: Precision, chunks: &[usize]) {
    let tokens = prompt();
    let model = load("smollm2", precision, 2);
    let whole = run(&model, &tokens, tokens.len());
    for &c in chunks {
        let other = run(&model, &tokens, c);
        let first = whole.iter().zip(&other).position(|(a, b)| a != b);
        assert!(first.is_none(), "{precision:?}: chunks of {c} differ from one batch at logit {first:?}");
    }
    let single = load("smollm2", precision, 1);
    assert!(run(&single, &tokens, tokens.len()) == whole, "{precision:?}: 1 thread differs from 2 threads");
    assert!(run(&single, &tokens, 7) == whole, "{precision:?}: 1 thread, chunks of 7 differ");
}

#[test]
fn fast_path_is_batch_invariant() {
    check(Precision::Fast, &[1, 7, 64]);
}

#[test]
fn precise_path_is_batch_invariant() {
    check(Precision::Precise, &[1, 7, 64]);
}
