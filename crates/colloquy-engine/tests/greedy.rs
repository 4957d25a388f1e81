//! Greedy generation equals llama.cpp's greedy ids up to the first near-tie.

mod common;

use colloquy_engine::linear::Precision;
use common::*;

#[test]
fn smollm2_greedy_matches_reference_until_first_near_tie() {
    let model = load("smollm2", Precision::Fast, 2);
    let mut checked = 0;
    for case in logits_cases(SMOLLM2, "logits.json") {
        let n = greedy_until_near_tie(&model, &case);
        eprintln!("{}: {n} tokens equal", case.name);
        checked += n;
    }
    assert!(checked >= 10, "too few tokens compared: {checked}");
}
