//! The session store on the real default model: exact resume, incremental
//! saves, 100 forks sharing their blocks, and damaged or missing blocks.

mod common;

use std::path::Path;
use std::time::Instant;

use colloquy::language::*;
use common::*;

fn block_dir_bytes(dir: &Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir.join("blocks")).unwrap() {
        let e = e.unwrap();
        if !e.file_name().to_str().unwrap().starts_with('.') {
            n += 1;
            bytes += e.metadata().unwrap().len();
        }
    }
    (n, bytes)
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[test]
fn save_load_continue_is_exact() {
    let t0 = Instant::now();
    let llm = llm();
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    let mut s = llm.new_chat_session().unwrap();
    ask(&llm, &mut s, "Name three colors.", 24);
    ask(&llm, &mut s, "Which one is the color of the sky?", 24);
    store.save("colors", &s).unwrap();

    // Through the same store (blocks shared in memory) and a fresh one (another process).
    let mut same = store.load("colors").unwrap();
    let mut fresh = SessionStore::open(dir.path()).unwrap().load("colors").unwrap();
    assert_eq!(same.shares_blocks_with(&s), s.token_count().div_ceil(32));
    assert_eq!(fresh.shares_blocks_with(&s), 0);
    for l in [&same, &fresh] {
        assert_eq!(l.tokens(), s.tokens());
        assert_eq!(l.transcript(), s.transcript());
        assert_eq!(l.to_bytes().unwrap(), s.to_bytes().unwrap());
    }
    let expected = ask(&llm, &mut s, "Why is it that color?", 32);
    assert_eq!(ask(&llm, &mut same, "Why is it that color?", 32), expected);
    assert_eq!(ask(&llm, &mut fresh, "Why is it that color?", 32), expected);
    assert_eq!(same.tokens(), s.tokens());
    assert_eq!(fresh.tokens(), s.tokens());
    eprintln!("exact resume: {} tokens, {:.1}s", s.token_count(), t0.elapsed().as_secs_f64());
}

#[test]
fn saving_after_one_more_turn_writes_only_the_new_blocks() {
    let llm = llm();
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    let mut s = llm.new_chat_session().unwrap();
    ask(&llm, &mut s, "Write two sentences about the sea.", 64);
    ask(&llm, &mut s, "And two about mountains.", 64);
    let first = store.save("nature", &s).unwrap();
    let n0 = s.token_count();
    assert_eq!(first.blocks_written + first.blocks_reused, n0.div_ceil(32));

    let before = s.tokens();
    ask(&llm, &mut s, "Now one about rivers.", 32);
    let n1 = s.token_count();
    let t = Instant::now();
    let second = store.save("nature", &s).unwrap();
    let save_time = t.elapsed();
    let new_tokens = n1 - common_prefix(&before, &s.tokens());
    eprintln!(
        "incremental save: {n0} -> {n1} tokens ({new_tokens} new), {second:?} in {:.1} ms (the first save wrote {} bytes)",
        save_time.as_secs_f64() * 1e3,
        first.bytes_written
    );
    assert!(second.blocks_written <= new_tokens / 32 + 2, "{second:?} for {new_tokens} new tokens");
    assert_eq!(second.blocks_written + second.blocks_reused, n1.div_ceil(32));
    assert!(second.blocks_reused >= n0 / 32 - 1);
    let per_block = 32 * llm.model().new_kv().layout().bytes_per_token() as u64;
    assert!(second.bytes_written <= (new_tokens as u64 / 32 + 2) * (per_block + 100) + 64 * 1024);

    let mut loaded = SessionStore::open(dir.path()).unwrap().load("nature").unwrap();
    assert_eq!(loaded.tokens(), s.tokens());
    let expected = ask(&llm, &mut s, "And lakes?", 24);
    assert_eq!(ask(&llm, &mut loaded, "And lakes?", 24), expected);
    assert_eq!(loaded.tokens(), s.tokens());
}

#[test]
fn a_hundred_forks_share_their_common_blocks() {
    let t0 = Instant::now();
    let llm = llm();
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    let mut base = llm.new_chat_session().unwrap();
    let story = "Once upon a time a small boat sailed from a quiet harbor at dawn, carrying a baker, \
                 a fisherman and a curious child who wanted to see the open sea. ";
    ask(&llm, &mut base, &format!("{} Summarize this story in one sentence.", story.repeat(7)), 32);
    let n = base.token_count();
    assert!((250..400).contains(&n), "base has {n} tokens");
    let blob = base.to_bytes().unwrap().len() as u64;
    store.save("base", &base).unwrap();
    let t_base = t0.elapsed();

    let mut forks = Vec::new();
    let mut written = 0;
    let mut t_save = std::time::Duration::ZERO;
    for i in 0..100 {
        let mut f = base.try_clone().unwrap();
        ask(&llm, &mut f, &format!("Say the number {i}."), 6);
        let t = Instant::now();
        let st = store.save(&format!("fork-{i}"), &f).unwrap();
        t_save += t.elapsed();
        assert!(st.blocks_written <= 3, "fork {i}: {st:?}");
        written += st.blocks_written;
        forks.push(f);
    }
    let t_forks = t0.elapsed() - t_base;

    // On disk: the base's blocks once, plus each fork's own tail.
    let (files, bytes) = block_dir_bytes(dir.path());
    let per_block = 32 * llm.model().new_kv().layout().bytes_per_token() as u64;
    let bound = 2 * blob + 100 * 2 * per_block;
    let unshared: u64 = forks.iter().map(|f| f.to_bytes().unwrap().len() as u64).sum();
    eprintln!(
        "100 forks of {n} tokens: {files} block files, {:.1} MB on disk (bound {:.1} MB; unshared they would be {:.1} MB); \
         {written} blocks written by the fork saves; base {:.1}s, forks {:.1}s (saving {:.1}s)",
        bytes as f64 / 1e6,
        bound as f64 / 1e6,
        unshared as f64 / 1e6,
        t_base.as_secs_f64(),
        t_forks.as_secs_f64(),
        t_save.as_secs_f64()
    );
    assert!(bytes < bound, "{bytes} bytes of blocks");
    assert!(files <= n.div_ceil(32) + 2 * 100);
    assert!(unshared > 5 * bytes);

    // In memory: every fork shares the blocks wholly inside its common prefix with the base.
    for (i, f) in forks.iter().enumerate() {
        let common = common_prefix(&base.tokens(), &f.tokens());
        assert!(common >= n - 32, "fork {i} diverges at {common} of {n}");
        assert!(f.shares_blocks_with(&base) >= common / 32, "fork {i}");
    }
    // Loaded through the same store, forks share them too, and continue exactly.
    for i in [0, 37, 99] {
        let mut l = store.load(&format!("fork-{i}")).unwrap();
        assert_eq!(l.tokens(), forks[i].tokens());
        assert!(l.shares_blocks_with(&base) >= n / 32 - 1);
        let expected = ask(&llm, &mut forks[i], "And the next number?", 6);
        assert_eq!(ask(&llm, &mut l, "And the next number?", 6), expected);
        assert_eq!(l.tokens(), forks[i].tokens());
    }
    let info = store.info("fork-5").unwrap();
    assert_eq!(info.tokens, forks[5].token_count());
    assert_eq!(store.list().unwrap().len(), 101);
}

#[test]
fn compressed_blocks_are_exact_on_the_real_model() {
    let llm = llm();
    let plain_dir = tempfile::tempdir().unwrap();
    let zstd_dir = tempfile::tempdir().unwrap();
    let plain = SessionStore::open(plain_dir.path()).unwrap();
    let zipped = SessionStore::open(zstd_dir.path()).unwrap().with_compression(3);
    let mut s = llm.new_chat_session().unwrap();
    ask(&llm, &mut s, "Describe a forest in three sentences.", 64);
    let a = plain.save("forest", &s).unwrap();
    let t = Instant::now();
    let b = zipped.save("forest", &s).unwrap();
    eprintln!(
        "zstd level 3 on {} tokens: {} -> {} bytes ({:.1}%) in {:.1} ms",
        s.token_count(),
        a.bytes_written,
        b.bytes_written,
        100.0 * b.bytes_written as f64 / a.bytes_written as f64,
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(b.bytes_written <= a.bytes_written);
    let mut loaded = SessionStore::open(zstd_dir.path()).unwrap().load("forest").unwrap();
    assert_eq!(loaded.to_bytes().unwrap(), s.to_bytes().unwrap());
    let expected = ask(&llm, &mut s, "Which animals live there?", 24);
    assert_eq!(ask(&llm, &mut loaded, "Which animals live there?", 24), expected);
    assert_eq!(loaded.tokens(), s.tokens());
}

#[test]
fn damaged_or_missing_blocks_are_named_and_gc_keeps_referenced_ones() {
    let llm = llm();
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    let mut base = llm.new_chat_session().unwrap();
    ask(&llm, &mut base, "List the days of the week, one per line.", 48);
    let mut fork = base.try_clone().unwrap();
    ask(&llm, &mut fork, "Which one comes after Friday?", 12);
    store.save("base", &base).unwrap();
    store.save("fork", &fork).unwrap();
    let m = store.manifest("fork").unwrap();
    let base_blocks: std::collections::HashSet<_> =
        store.manifest("base").unwrap().blocks.into_iter().collect();
    let own: Vec<_> = m.blocks.iter().filter(|b| !base_blocks.contains(b)).copied().collect();
    assert!(!own.is_empty());

    // One flipped byte in the middle of a block's rows.
    let victim = own[0];
    let path = dir.path().join("blocks").join(victim.to_string());
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    match store.load("fork") {
        Err(Error::StoreBlockCorrupt { session, block, reason }) => {
            assert_eq!(session, "fork");
            assert_eq!(block, victim.to_string());
            let msg = Error::StoreBlockCorrupt { session, block, reason }.to_string();
            assert!(msg.contains("fork") && msg.contains(&victim.to_string()), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    // The base does not use that block.
    assert!(store.load("base").is_ok());

    std::fs::remove_file(&path).unwrap();
    match store.load("fork") {
        Err(Error::StoreBlockMissing { session, block }) => {
            assert_eq!((session.as_str(), block), ("fork", victim.to_string()));
        }
        other => panic!("{other:?}"),
    }

    // Deleting the fork removes its own blocks and keeps the base's; gc then
    // finds nothing left to remove.
    store.delete("fork").unwrap();
    let (files, _) = block_dir_bytes(dir.path());
    assert_eq!(files, base_blocks.len());
    let g = store.gc().unwrap();
    assert_eq!(g.blocks_removed, 0);
    assert_eq!(g.blocks_kept, base_blocks.len());
    let mut loaded = SessionStore::open(dir.path()).unwrap().load("base").unwrap();
    let expected = ask(&llm, &mut base, "Which one comes after Monday?", 12);
    assert_eq!(ask(&llm, &mut loaded, "Which one comes after Monday?", 12), expected);
    assert_eq!(loaded.tokens(), base.tokens());
}

/// A load that races a save (which replaces the manifest and collects the
/// blocks only the old version used) never fails: it starts again on the
/// new version. Found by `no_silent_loss.rs` as a "block is missing" error.
#[test]
fn loads_racing_saves_never_see_a_missing_block() {
    let llm = llm();
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SessionStore::open(dir.path()).unwrap());
    let mut s = llm.new_chat_session().unwrap();
    ask(&llm, &mut s, "Hello there.", 4);
    store.save("raced", &s).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut loads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                store.load("raced").expect("a load racing a save");
                loads += 1;
            }
            loads
        })
    };
    for k in 0..12 {
        // Each turn rewrites the last, partly filled block: the old one is collected.
        ask(&llm, &mut s, &format!("Turn {k}."), 2);
        store.save("raced", &s).unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let loads = reader.join().expect("the reader never failed");
    assert!(loads > 0);
    assert_eq!(store.load("raced").unwrap().tokens(), s.tokens());
}
