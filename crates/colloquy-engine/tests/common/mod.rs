//! Shared helpers for the tests that run real models.
#![allow(dead_code)]

use std::path::PathBuf;

use colloquy_engine::fetch::{self, PullOptions};
use colloquy_engine::linear::Precision;
use colloquy_engine::model::{Model, ModelOptions};
use serde::Deserialize;

pub const SMOLLM2: &str = "smollm2-135m-instruct-q4_1";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m";

/// The path of a known model, fetched into the cache if it is not there yet.
pub fn model_path(name: &str) -> PathBuf {
    let opts = PullOptions { progress: false, ..PullOptions::default() };
    fetch::resolve_model(name, &opts).unwrap_or_else(|e| {
        panic!("model {name} is not available ({e}); run `cargo run -p colloquy-cli -- pull {name}`")
    })
}

pub fn load(name: &str, precision: Precision, threads: usize) -> Model {
    let opts =
        ModelOptions { threads, precision, n_ctx: Some(4096), kv_dtype: None, ..ModelOptions::default() };
    Model::load(model_path(name), opts).expect("model loads")
}

pub fn fixture(dir: &str, file: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference").join(dir).join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[derive(Deserialize, Debug)]
pub struct Record {
    pub pos: usize,
    pub top: Vec<(u32, f32)>,
    pub logsumexp: f32,
}

impl Record {
    /// The reference top-1/top-2 margin.
    pub fn margin(&self) -> f32 {
        self.top[0].1 - self.top[1].1
    }
}

#[derive(Deserialize, Debug)]
pub struct LogitsCase {
    pub name: String,
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub positions: Vec<usize>,
    pub batched: Vec<Record>,
    pub sequential: Vec<Record>,
}

#[derive(Deserialize, Debug)]
pub struct LogitsFile {
    pub cases: Vec<LogitsCase>,
}

pub fn logits_cases(dir: &str, file: &str) -> Vec<LogitsCase> {
    let f: LogitsFile = serde_json::from_str(&fixture(dir, file)).expect("valid logits fixture");
    assert!(!f.cases.is_empty());
    f.cases
}

pub fn logsumexp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    max + s.ln() as f32
}

pub fn argmax(row: &[f32]) -> u32 {
    colloquy_engine::sampler::argmax(row)
}

/// Greedy generation from a case's prompt, compared with the reference greedy
/// ids up to the first position whose `sequential` margin is under 1.0.
/// Returns how many tokens were compared.
pub fn greedy_until_near_tie(model: &Model, case: &LogitsCase) -> usize {
    use colloquy_engine::arch::LogitsFor;
    use colloquy_engine::sampler::{Sampler, SamplerParams};
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
    n
}
