//! Greedy generation equals llama.cpp's greedy ids up to the first near-tie.

mod common;

use colloquy_engine::arch::LogitsFor;
use colloquy_engine::linear::Precision;
use colloquy_engine::sampler::{Sampler, SamplerParams};
use common::*;

#[test]
fn smollm2_greedy_matches_reference_until_first_near_tie() {
    let model = load("smollm2", Precision::Fast, 2);
    let mut checked = 0;
    for case in logits_cases(SMOLLM2, "logits.json") {
        // The sequential record is the greedy run; stop where its margin drops under 1.0.
        let n = case.sequential.iter().position(|r| r.margin() < 1.0).unwrap_or(case.sequential.len());
        let n = n.min(case.generated_ids.len());
        let mut kv = model.new_kv();
        let logits = model.forward(&mut kv, &case.prompt_ids, LogitsFor::Last).unwrap();
        let mut sampler = Sampler::new(SamplerParams { temperature: 0.0, ..Default::default() });
        let mut history = case.prompt_ids.clone();
        let got = model.generate(&mut kv, logits, &mut history, &mut sampler, n, &mut |_| true).unwrap();
        assert_eq!(got[..n.min(got.len())], case.generated_ids[..n], "{}: greedy tokens differ", case.name);
        assert_eq!(got.len(), n, "{}: stopped early", case.name);
        eprintln!("{}: {n} tokens equal", case.name);
        checked += n;
    }
    assert!(checked >= 10, "too few tokens compared: {checked}");
}
