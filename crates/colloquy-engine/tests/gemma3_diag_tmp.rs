mod common;
use colloquy_engine::arch::LogitsFor;
use colloquy_engine::linear::Precision;
use common::*;

#[test]
fn diag() {
    let q = logits_cases(GEMMA3, "logits.json");
    let f = logits_cases(GEMMA3, "logits-f32.json");
    for precision in [Precision::Fast, Precision::Precise] {
        let model = load("gemma3", precision, 2);
        let nv = model.n_vocab();
        for (cq, cf) in q.iter().zip(&f) {
            let tokens: Vec<u32> = cq.prompt_ids.iter().chain(&cq.generated_ids).copied().collect();
            let first = cq.positions[0];
            let mut kv = model.new_kv();
            model.forward(&mut kv, &tokens[..first], LogitsFor::None).unwrap();
            let logits = model.forward(&mut kv, &tokens[first..], LogitsFor::All).unwrap();
            let mut line = format!("{precision:?} {:<16}", cq.name);
            for (label, recs) in [("qb", &cq.batched), ("qs", &cq.sequential), ("f32", &cf.batched)] {
                let (mut s, mut n) = (0.0f64, 0);
                for (i, r) in recs.iter().enumerate() {
                    let row = &logits[i * nv..(i + 1) * nv];
                    for &(id, v) in &r.top { s += (row[id as usize] - v).abs() as f64; n += 1; }
                }
                line += &format!("  {label} {:.3}", s / n as f64);
            }
            eprintln!("{line}");
        }
    }
}
