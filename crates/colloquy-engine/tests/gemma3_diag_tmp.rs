mod common;
use colloquy_engine::arch::LogitsFor;
use colloquy_engine::linear::Precision;
use common::*;
use std::time::Instant;

#[test]
fn diag() {
    let case = logits_cases(GEMMA3, "logits.json").into_iter().max_by_key(|c| c.prompt_ids.len()).unwrap();
    let toks = &case.prompt_ids[..600];
    for precision in [Precision::Fast, Precision::Precise] {
        let model = load("gemma3", precision, 2);
        let mut kv = model.new_kv();
        let t = Instant::now();
        model.forward(&mut kv, &toks[..20], LogitsFor::None).unwrap();
        eprintln!("{precision:?} prefill 20: {:?}", t.elapsed());
        let t = Instant::now();
        for &x in &toks[20..30] { model.forward(&mut kv, &[x], LogitsFor::None).unwrap(); }
        eprintln!("{precision:?} decode none @20: {:?}/tok", t.elapsed() / 10);
        let t = Instant::now();
        for &x in &toks[30..40] { model.forward(&mut kv, &[x], LogitsFor::Last).unwrap(); }
        eprintln!("{precision:?} decode last @30: {:?}/tok", t.elapsed() / 10);
        let t = Instant::now();
        model.forward(&mut kv, &toks[40..550], LogitsFor::None).unwrap();
        eprintln!("{precision:?} prefill 510: {:?}", t.elapsed());
        let t = Instant::now();
        for &x in &toks[550..560] { model.forward(&mut kv, &[x], LogitsFor::None).unwrap(); }
        eprintln!("{precision:?} decode none @550: {:?}/tok", t.elapsed() / 10);
    }
}
