//! Steady decoding allocates nothing: once a sequence is running, a decode step
//! reuses every buffer (the KV cache allocates one block per 32 positions, and
//! this test stays inside one block).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use colloquy_engine::arch::LogitsFor;
use colloquy_engine::linear::Precision;
use colloquy_engine::sampler::{Sampler, SamplerParams};
use common::*;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_steps_do_not_allocate() {
    let model = load("smollm2", Precision::Fast, 2);
    let prompt: Vec<u32> = (0..34).map(|i| 300 + i).collect();
    let mut kv = model.new_kv();
    let mut logits = model.forward(&mut kv, &prompt, LogitsFor::Last).unwrap();
    let mut sampler = Sampler::new(SamplerParams { temperature: 0.0, ..Default::default() });
    let mut history = prompt.clone();
    history.reserve(64);
    // Warm up: the first decode steps size the buffers.
    let warm = model.generate(&mut kv, logits.clone(), &mut history, &mut sampler, 4, &mut |_| true).unwrap();
    logits = model.forward(&mut kv, &warm[warm.len() - 1..], LogitsFor::Last).unwrap();

    // Positions 38..60 lie in the second KV block: no block is added.
    let mut new = Vec::with_capacity(64);
    COUNTING.store(true, Ordering::SeqCst);
    let mut tok = sampler.sample(&mut logits, &history);
    for _ in 0..20 {
        new.push(tok);
        let mut out = std::mem::take(&mut logits);
        model.forward_into_last(&mut kv, tok, &mut out).unwrap();
        logits = out;
        tok = sampler.sample(&mut logits, &history);
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert!(kv.len() < 64);
    assert_eq!(ALLOCS.load(Ordering::SeqCst), 0, "decode steps allocated");
}
