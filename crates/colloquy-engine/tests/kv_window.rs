//! The window lane of the KV cache: windowed layers hold only what a next
//! query can see (memory bounded by the window), the global layers hold every
//! position, and going back is allowed exactly where the window is still held.

use std::sync::Arc;

use colloquy_engine::kv::{KvBlock, KvCache, KvData, KvDtype, KvLayout, KvRows, KvWindow, BLOCK_TOKENS};

const WINDOW: usize = 64;
const ROW: usize = 4;

/// Six layers, the first five windowed (Gemma 3's pattern), f32 so values read back exactly.
fn layout() -> KvLayout {
    KvLayout::new(6, 1, ROW, KvDtype::F32).with_window(Some(KvWindow { size: WINDOW, layers: 0b011111 }))
}

/// The K row written for `layer` at `pos` (V is its negation).
fn value(layer: usize, pos: usize) -> [f32; ROW] {
    [layer as f32, pos as f32, (layer * 1000 + pos) as f32, 1.0]
}

/// Runs positions `kv.len()..end` in chunks of `chunk`, as a model's forward pass does.
fn fill(kv: &mut KvCache, end: usize, chunk: usize, mut after: impl FnMut(&KvCache)) {
    while kv.len() < end {
        let (start, n) = (kv.len(), chunk.min(end - kv.len()));
        kv.reserve(start, n).unwrap();
        for pos in start..start + n {
            for l in 0..6 {
                let k = value(l, pos);
                kv.write(l, pos, &k, &k.map(|x| -x));
            }
        }
        kv.set_len(start + n);
        after(kv);
    }
}

fn read(kv: &KvCache, layer: usize, pos: usize) -> Option<Vec<f32>> {
    let at = (pos % BLOCK_TOKENS) * ROW;
    match kv.k_rows(layer, pos / BLOCK_TOKENS) {
        KvRows::F32(r) if r.len() >= at + ROW => Some(r[at..at + ROW].to_vec()),
        _ => None,
    }
}

/// Positions from the first held window block to the end (blocks are held contiguously here).
fn held_window_positions(kv: &KvCache) -> usize {
    let first = kv.window_blocks().iter().position(|b| b.is_some()).unwrap_or(kv.window_blocks().len());
    let held = kv.window_blocks()[first..].iter().filter(|b| b.is_some()).count();
    assert_eq!(held, kv.window_blocks().len() - first, "held blocks are contiguous");
    kv.len() - (first * BLOCK_TOKENS).min(kv.len())
}

#[test]
fn window_memory_stays_bounded_and_holds_what_the_next_query_sees() {
    let per_global = layout().lane(false).bytes_per_token();
    let per_window = layout().lane(true).bytes_per_token();
    for chunk in [1, 7, 100] {
        let mut kv = KvCache::new(layout(), 4096);
        fill(&mut kv, 2000, chunk, |kv| {
            // The window, the chunk being written, one block of slack, and rounding down to a block.
            let bound = WINDOW + chunk + 2 * BLOCK_TOKENS;
            assert!(held_window_positions(kv) <= bound, "chunk {chunk}: {} held", held_window_positions(kv));
            assert!(kv.used_bytes() <= kv.len() * per_global + bound * per_window);
        });
        assert!(kv.can_resume_at(2000));
        for pos in 0..2000 {
            // Global layer 5 keeps every position; windowed layers keep what position 2000 sees.
            assert_eq!(read(&kv, 5, pos), Some(value(5, pos).to_vec()), "global layer at {pos}");
            if pos + WINDOW > 2000 {
                for l in 0..5 {
                    assert_eq!(read(&kv, l, pos), Some(value(l, pos).to_vec()), "layer {l} at {pos}");
                }
            }
        }
        assert_eq!(read(&kv, 0, 10), None, "position 10 of a windowed layer was dropped");
        assert!(kv.used_bytes() < 2000 * layout().bytes_per_token() / 3);
    }
}

#[test]
fn going_back_needs_the_window_there() {
    let mut kv = KvCache::new(layout(), 4096);
    fill(&mut kv, 300, 1, |_| {});
    kv.set_rewind_point(Some(300));
    fill(&mut kv, 1000, 1, |_| {});
    assert!(kv.can_resume_at(990));
    assert!(kv.can_resume_at(300), "the rewind point keeps its window");
    assert!(!kv.can_resume_at(200));

    let mut no_point = kv.clone();
    no_point.set_rewind_point(None);
    fill(&mut no_point, 1100, 1, |_| {});
    assert_eq!(no_point.truncate(1090), 1090);
    assert_eq!(no_point.truncate(300), 0, "its window is gone: start over");

    assert_eq!(kv.truncate(300), 300);
    for pos in 300 + 1 - WINDOW..300 {
        assert_eq!(read(&kv, 0, pos), Some(value(0, pos).to_vec()));
    }
    // Continuing from there writes the same rows again.
    fill(&mut kv, 400, 16, |_| {});
    assert_eq!(read(&kv, 2, 399), Some(value(2, 399).to_vec()));
}

#[test]
fn a_cache_without_window_splits_into_lanes() {
    let flat = layout().with_window(None);
    let mut kv = KvCache::new(flat, 4096);
    fill(&mut kv, 500, 50, |_| {});
    assert_eq!(kv.window_blocks().len(), 0);
    let split = kv.clone().into_layout(layout()).unwrap();
    assert_eq!(split.layout(), &layout());
    assert!(split.can_resume_at(500));
    for pos in 0..500 {
        // The global layer everywhere, the windowed ones where position 500 sees.
        for l in (0..6).filter(|&l| l == 5 || pos + WINDOW > 500) {
            assert_eq!(read(&split, l, pos), Some(value(l, pos).to_vec()), "layer {l} at {pos}");
        }
    }
    assert!(split.used_bytes() < kv.used_bytes() / 2);
    // Another head size is another cache: no conversion.
    let other = KvLayout::new(6, 2, ROW, KvDtype::F32);
    assert!(kv.into_layout(other).is_err());
}

#[test]
fn rebuilding_without_the_needed_window_is_refused() {
    let global = Arc::new(KvBlock::zeroed(&layout().lane(false)));
    let local = Arc::new(KvBlock::zeroed(&layout().lane(true)));
    let blocks = vec![global.clone(), global.clone(), global];
    // 80 positions: position 80 sees 17..=80, in blocks 0 to 2.
    let missing = vec![None, Some(local.clone()), Some(local.clone())];
    assert!(KvCache::from_lanes(layout(), 4096, blocks.clone(), missing, 80, None).is_err());
    let whole = vec![Some(local.clone()), Some(local.clone()), Some(local)];
    let kv = KvCache::from_lanes(layout(), 4096, blocks.clone(), whole, 80, None).unwrap();
    assert_eq!(kv.len(), 80);
    assert!(KvCache::from_lanes(layout(), 4096, blocks, Vec::new(), 80, None).is_err());
}

/// Dropped blocks are reused: a new block takes a dropped one's memory, and
/// `zeroed` still gives zeros.
#[test]
fn dropped_blocks_are_reused_and_zeroed_blocks_are_zero() {
    // An odd shape no other test uses, so tests running in parallel do not take these blocks.
    let layout = KvLayout::new(3, 1, 40, KvDtype::F16);
    let ptr = |d: &mut KvData| match d {
        KvData::F16(d) => d.as_mut_ptr(),
        _ => unreachable!("an f16 layout"),
    };
    let mut first = KvBlock::for_overwrite(&layout);
    if let KvData::F16(d) = &mut first.k {
        d.fill(half::f16::ONE);
    }
    let old = [ptr(&mut first.k), ptr(&mut first.v)];
    drop(first);
    let mut again = KvBlock::zeroed(&layout);
    let new = [ptr(&mut again.k), ptr(&mut again.v)];
    assert!(new.iter().all(|p| old.contains(p)), "the dropped block's memory is reused");
    assert!(
        matches!(&again.k, KvData::F16(d) if d.len() == 3 * 32 * 40 && d.iter().all(|x| x.to_bits() == 0))
    );
}

/// Lane shapes come from untrusted bytes too: they are computed from the
/// window's bit mask, not by visiting every layer.
#[test]
fn lanes_of_a_huge_layer_count_are_counted_at_once() {
    let layout = KvLayout::new(usize::MAX, 1, 32, KvDtype::F16)
        .with_window(Some(KvWindow { size: 8, layers: 0b1011 }));
    assert_eq!(layout.lane(true).n_layers, 3);
    assert_eq!(layout.lane(false).n_layers, usize::MAX - 3);
    assert_eq!(layout.lane_index(3), (true, 2));
}
