//! A batch of sequences gives every sequence the bits it gets alone: 1 to 8
//! sequences of different lengths, in prefill (with All, Last and no logits)
//! and in decode, on both real models and both precisions, against each
//! sequence run by itself.

mod common;

use colloquy_engine::arch::{LogitsFor, Sequence};
use colloquy_engine::kv::KvCache;
use colloquy_engine::linear::Precision;
use colloquy_engine::model::Model;
use common::*;

/// Deterministic tokens of sequence `s`, of length `n`.
fn tokens(model: &Model, s: usize, n: usize) -> Vec<u32> {
    let v = model.n_vocab() as u64;
    (0..n as u64).map(|i| ((i * 7919 + s as u64 * 104_729 + 17) % (v - 10) + 5) as u32).collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Runs `n_seqs` sequences together (prefill of different lengths, then
/// `steps` decode steps) and compares every logit with the lone runs.
fn check(model: &Model, n_seqs: usize, steps: usize) {
    let n = model.n_vocab();
    let lens: Vec<usize> = (0..n_seqs).map(|s| 1 + (s * 37 + 11) % 70).collect();
    let wants = [LogitsFor::All, LogitsFor::Last, LogitsFor::None];
    let prompts: Vec<Vec<u32>> = lens.iter().enumerate().map(|(s, &l)| tokens(model, s, l)).collect();

    // Alone: each sequence's prefill logits, then its decode logits.
    let mut alone = Vec::new();
    for (s, p) in prompts.iter().enumerate() {
        let mut kv = model.new_kv();
        let prefill = model.forward(&mut kv, p, wants[s % 3]).unwrap();
        let mut decode = Vec::new();
        for step in 0..steps {
            decode.push(model.forward(&mut kv, &[(s * 31 + step * 7 + 3) as u32], LogitsFor::Last).unwrap());
        }
        alone.push((prefill, decode));
    }

    // Together.
    let mut kvs: Vec<KvCache> = (0..n_seqs).map(|_| model.new_kv()).collect();
    let mut logits = Vec::new();
    let mut batch: Vec<Sequence<'_>> = kvs
        .iter_mut()
        .zip(&prompts)
        .enumerate()
        .map(|(s, (kv, p))| Sequence { tokens: p, kv, logits: wants[s % 3] })
        .collect();
    model.forward_batch(&mut batch, &mut logits).unwrap();
    let mut at = 0;
    for (s, (prefill, _)) in alone.iter().enumerate() {
        let got = &logits[at..at + prefill.len()];
        assert_eq!(bits(got), bits(prefill), "{n_seqs} sequences: prefill of sequence {s} differs");
        at += prefill.len();
    }
    assert_eq!(at, logits.len());
    for step in 0..steps {
        let toks: Vec<[u32; 1]> = (0..n_seqs).map(|s| [(s * 31 + step * 7 + 3) as u32]).collect();
        let mut batch: Vec<Sequence<'_>> = kvs
            .iter_mut()
            .zip(&toks)
            .map(|(kv, t)| Sequence { tokens: t, kv, logits: LogitsFor::Last })
            .collect();
        model.forward_batch(&mut batch, &mut logits).unwrap();
        for (s, (_, decode)) in alone.iter().enumerate() {
            let got = &logits[s * n..(s + 1) * n];
            assert_eq!(
                bits(got),
                bits(&decode[step]),
                "{n_seqs} sequences: decode step {step} of {s} differs"
            );
        }
    }
    for (kv, &l) in kvs.iter().zip(&lens) {
        assert_eq!(kv.len(), l + steps);
    }
}

#[test]
fn smollm2_batched_sequences_are_bit_identical_to_lone_runs() {
    for precision in [Precision::Fast, Precision::Precise] {
        let model = load(SMOLLM2, precision, 2);
        for n_seqs in [1, 2, 3, 5, 8] {
            check(&model, n_seqs, 3);
        }
    }
}

#[test]
fn gemma3_batched_sequences_are_bit_identical_to_lone_runs() {
    let model = load(GEMMA3, Precision::Fast, 2);
    for n_seqs in [1, 4, 8] {
        check(&model, n_seqs, 2);
    }
}

#[test]
fn a_bad_sequence_fails_the_batch_and_changes_no_cache() {
    let model = load(SMOLLM2, Precision::Fast, 1);
    let (mut a, mut b) = (model.new_kv(), model.new_kv());
    let bad = [model.n_vocab() as u32];
    let mut batch = [
        Sequence { tokens: &[1, 2], kv: &mut a, logits: LogitsFor::Last },
        Sequence { tokens: &bad, kv: &mut b, logits: LogitsFor::Last },
    ];
    let mut logits = Vec::new();
    assert!(model.forward_batch(&mut batch, &mut logits).is_err());
    assert_eq!((a.len(), b.len()), (0, 0));
    let mut empty = [Sequence { tokens: &[], kv: &mut a, logits: LogitsFor::Last }];
    assert!(model.forward_batch(&mut empty, &mut logits).is_err());
}
