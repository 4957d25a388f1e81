//! The session store without a model: synthetic sessions (made from v1 bytes
//! with a tiny KV layout) saved, loaded, forked, collected and damaged, and the
//! record decoders fed arbitrary bytes.

use std::path::{Path, PathBuf};

use colloquy::language::*;
use colloquy::store::{
    decode_block, decode_manifest, RecordError, BLOCK_MAGIC, MANIFEST_MAGIC, MANIFEST_VERSION, RECORD_VERSION,
};
use proptest::prelude::*;

const LAYERS: usize = 2;
const HEADS: usize = 1;
const HEAD_DIM: usize = 8;
/// f16 K and V of every layer.
const PER_TOKEN: usize = LAYERS * 2 * HEADS * HEAD_DIM * 2;

/// One position's bytes for one layer and K (0) or V (1): a function of the
/// position's "content" `c`, so that two sessions with the same `c` for a
/// position hold the same rows there.
fn row(c: u64, layer: usize, kv: usize) -> Vec<u8> {
    let mut x =
        c.wrapping_mul(0x9e3779b97f4a7c15) ^ ((layer * 2 + kv) as u64).wrapping_mul(0xbf58476d1ce4e5b9) | 1;
    (0..HEADS * HEAD_DIM * 2)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A v1 session whose position `p` holds rows made from `content(p)`.
fn session_bytes(n: usize, content: impl Fn(usize) -> u64, zero: bool) -> Vec<u8> {
    let mut w = b"CLQYSESS".to_vec();
    w.extend_from_slice(&1u32.to_le_bytes());
    w.extend_from_slice(&0u64.to_le_bytes());
    w.extend_from_slice(&[7u8; 16]);
    for v in [LAYERS as u32, HEADS as u32, HEAD_DIM as u32] {
        w.extend_from_slice(&v.to_le_bytes());
    }
    w.push(0);
    w.extend_from_slice(&32u32.to_le_bytes());
    w.extend_from_slice(&(n as u32).to_le_bytes());
    for p in 0..n {
        w.extend_from_slice(&(content(p) as u32).to_le_bytes());
    }
    w.extend_from_slice(&2u32.to_le_bytes());
    for (role, text) in [(1u8, "Hello"), (2u8, "Hi there")] {
        w.push(role);
        w.extend_from_slice(&(text.len() as u32).to_le_bytes());
        w.extend_from_slice(text.as_bytes());
    }
    w.push(1);
    w.extend_from_slice(&4u32.to_le_bytes());
    w.extend_from_slice(b"Bye!");
    w.extend_from_slice(&42u64.to_le_bytes());
    w.extend_from_slice(&1234u128.to_le_bytes());
    for b in 0..n.div_ceil(32) {
        let positions = b * 32..(b * 32 + 32).min(n);
        for layer in 0..LAYERS {
            for kv in 0..2 {
                for p in positions.clone() {
                    if zero {
                        w.extend_from_slice(&[0u8; HEADS * HEAD_DIM * 2]);
                    } else {
                        w.extend_from_slice(&row(content(p), layer, kv));
                    }
                }
            }
        }
    }
    let total = (w.len() + 8) as u64;
    w[12..20].copy_from_slice(&total.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&w);
    w.extend_from_slice(&sum.to_le_bytes());
    w
}

fn session(n: usize, content: impl Fn(usize) -> u64) -> LlamaChatSession {
    LlamaChatSession::from_bytes(&session_bytes(n, content, false)).unwrap()
}

fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'))
        .collect();
    v.sort();
    v
}

#[test]
fn save_load_is_byte_exact_and_incremental() {
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    let a = session(100, |p| p as u64);
    let s1 = store.save("a", &a).unwrap();
    assert_eq!((s1.blocks_written, s1.blocks_reused), (4, 0));
    assert_eq!(store.load("a").unwrap().to_bytes().unwrap(), a.to_bytes().unwrap());

    // Same again: nothing but the manifest.
    let s2 = store.save("a", &a).unwrap();
    assert_eq!((s2.blocks_written, s2.blocks_reused), (0, 4));

    // 30 more positions: the partly filled 4th block changes, a 5th is new.
    // `b` was never loaded from "a": a plain save is a conflict, replace is not.
    let b = session(130, |p| p as u64);
    match store.save("a", &b) {
        Err(Error::SessionConflict { id, expected: None, found: Some(v) }) => {
            assert_eq!((id.as_str(), v), ("a", s2.version));
        }
        other => panic!("{other:?}"),
    }
    let s3 = store.replace("a", &b).unwrap();
    assert!(s3.version > s2.version && s2.version > s1.version);
    // `a` read the version `b` replaced: it can no longer save over it.
    assert!(matches!(store.save("a", &a), Err(Error::SessionConflict { .. })));
    assert_eq!((s3.blocks_written, s3.blocks_reused), (2, 3));
    assert!(s3.bytes_written < (2 * 32 * PER_TOKEN + 4096) as u64, "{s3:?}");
    let loaded = store.load("a").unwrap();
    assert_eq!(loaded.to_bytes().unwrap(), b.to_bytes().unwrap());
    assert_eq!(loaded.transcript(), b.transcript());
    assert_eq!(loaded.tokens(), b.tokens());

    // A fresh store over the same folder (another process) reads the same.
    let again = SessionStore::open(dir.path()).unwrap();
    assert_eq!(again.load("a").unwrap().to_bytes().unwrap(), b.to_bytes().unwrap());
    let s4 = again.save("a", &b).unwrap();
    assert_eq!((s4.blocks_written, s4.blocks_reused), (0, 5));
}

#[test]
fn empty_session_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    let e = session(0, |p| p as u64);
    let s = store.save("empty", &e).unwrap();
    assert_eq!((s.blocks_written, s.blocks_reused), (0, 0));
    assert_eq!(store.load("empty").unwrap().to_bytes().unwrap(), e.to_bytes().unwrap());
}

#[test]
fn forks_share_blocks_on_disk_and_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    // 20 branches: 200 common positions (6 full blocks + 8), then 40 of their own.
    for i in 0..20u64 {
        let s = session(240, |p| if p < 200 { p as u64 } else { 1_000_000 * (i + 1) + p as u64 });
        store.save(&format!("branch-{i}"), &s).unwrap();
    }
    // 6 shared full blocks + 2 own blocks per branch.
    assert_eq!(block_files(dir.path()).len(), 6 + 20 * 2);
    let usage = store.usage().unwrap();
    assert_eq!(usage.sessions, 20);
    assert_eq!(usage.blocks, 46);

    // Loaded through one store, the common blocks are one copy in memory.
    let loaded: Vec<LlamaChatSession> =
        (0..20).map(|i| store.load(&format!("branch-{i}")).unwrap()).collect();
    for l in &loaded[1..] {
        assert_eq!(l.shares_blocks_with(&loaded[0]), 6);
    }
    // A store-level fork copies only the manifest.
    store.fork("branch-3", "copy").unwrap();
    assert_eq!(block_files(dir.path()).len(), 46);
    assert_eq!(store.load("copy").unwrap().to_bytes().unwrap(), loaded[3].to_bytes().unwrap());
    assert!(matches!(store.fork("branch-3", "copy"), Err(Error::StoreSessionExists { .. })));
    assert!(matches!(store.fork("nope", "x"), Err(Error::StoreSessionNotFound { .. })));

    let list = store.list().unwrap();
    assert_eq!(list.len(), 21);
    let info = list.iter().find(|i| i.id == "copy").unwrap();
    assert_eq!((info.tokens, info.messages, info.blocks), (240, 3, 8));
    assert!(info.bytes > (240 * PER_TOKEN) as u64);
    assert_eq!(store.info("copy").unwrap(), *info);
}

#[test]
fn delete_and_gc_keep_exactly_the_referenced_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    let a = session(100, |p| p as u64);
    let b = session(100, |p| if p < 64 { p as u64 } else { 5000 + p as u64 });
    store.save("a", &a).unwrap();
    store.save("b", &b).unwrap();
    assert_eq!(block_files(dir.path()).len(), 2 + 2 + 2);

    // A young temporary file (a save in progress elsewhere) survives gc; an old one does not.
    let young = dir.path().join("blocks/.tmp-1-1-young");
    let old = dir.path().join("sessions/.tmp-1-2-old");
    std::fs::write(&young, b"x").unwrap();
    std::fs::write(&old, b"x").unwrap();
    let f = std::fs::File::options().write(true).open(&old).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600)).unwrap();
    drop(f);

    let g = store.gc().unwrap();
    assert_eq!((g.blocks_removed, g.blocks_kept, g.temp_files_removed), (0, 6, 1));
    assert!(young.exists() && !old.exists());

    // Deleting "a" removes the blocks only it used; gc finds nothing more.
    store.delete("a").unwrap();
    assert!(matches!(store.delete("a"), Err(Error::StoreSessionNotFound { .. })));
    assert!(matches!(store.load("a"), Err(Error::StoreSessionNotFound { .. })));
    assert_eq!(block_files(dir.path()).len(), 4);
    let g = store.gc().unwrap();
    assert_eq!((g.blocks_removed, g.blocks_kept), (0, 4));
    assert_eq!(store.load("b").unwrap().to_bytes().unwrap(), b.to_bytes().unwrap());

    // A deleted session stays deleted: the session that was saved as "a"
    // cannot bring it back with a plain save.
    assert!(matches!(
        store.save("a", &a),
        Err(Error::SessionConflict { expected: Some(_), found: None, .. })
    ));
    // Replacing it on purpose after its blocks were collected rewrites them,
    // even though this store instance has hashed them before.
    let s = store.replace("a", &a).unwrap();
    assert_eq!((s.blocks_written, s.blocks_reused), (2, 2));
    assert_eq!(store.load("a").unwrap().to_bytes().unwrap(), a.to_bytes().unwrap());

    // Deleting the last sessions leaves no blocks, and nothing for gc.
    store.delete("a").unwrap();
    store.delete("b").unwrap();
    assert!(block_files(dir.path()).is_empty());
    let g = store.gc().unwrap();
    assert_eq!((g.blocks_removed, g.blocks_kept), (0, 0));
}

#[test]
fn damaged_and_missing_files_give_typed_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    let a = session(70, |p| p as u64);
    store.save("a", &a).unwrap();
    let manifest = store.manifest("a").unwrap();
    let blocks = block_files(dir.path());
    assert_eq!(blocks.len(), 3);

    // Every byte of one block file, flipped in turn.
    let path = dir.path().join("blocks").join(manifest.blocks[1].to_string());
    let good = std::fs::read(&path).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x04;
        std::fs::write(&path, &bad).unwrap();
        match store.load("a") {
            Err(Error::StoreBlockCorrupt { session, block, .. }) => {
                assert_eq!(session, "a");
                assert_eq!(block, manifest.blocks[1].to_string());
            }
            other => panic!("byte {i}: {other:?}"),
        }
    }
    // Cut short.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert!(matches!(store.load("a"), Err(Error::StoreBlockCorrupt { .. })));
    // Another block's (valid) file under this name.
    std::fs::copy(dir.path().join("blocks").join(manifest.blocks[0].to_string()), &path).unwrap();
    match store.load("a") {
        Err(Error::StoreBlockCorrupt { reason, .. }) => assert!(reason.contains("hashes to"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Gone.
    std::fs::remove_file(&path).unwrap();
    match store.load("a") {
        Err(Error::StoreBlockMissing { session, block }) => {
            assert_eq!((session.as_str(), block), ("a", manifest.blocks[1].to_string()));
        }
        other => panic!("{other:?}"),
    }
    // A save puts it back.
    store.save("a", &a).unwrap();
    assert_eq!(store.load("a").unwrap().to_bytes().unwrap(), a.to_bytes().unwrap());

    // Every byte of the manifest, flipped in turn.
    let mpath = dir.path().join("sessions/a");
    let good = std::fs::read(&mpath).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x40;
        std::fs::write(&mpath, &bad).unwrap();
        match store.load("a") {
            Err(Error::StoreManifestCorrupt { session, .. }) => assert_eq!(session, "a"),
            other => panic!("manifest byte {i}: {other:?}"),
        }
    }
    // gc refuses to guess what a corrupt manifest references.
    assert!(matches!(store.gc(), Err(Error::StoreManifestCorrupt { .. })));
    assert_eq!(block_files(dir.path()).len(), 3);
    std::fs::write(&mpath, &good[..10]).unwrap();
    assert!(matches!(store.load("a"), Err(Error::StoreManifestCorrupt { .. })));
    std::fs::write(&mpath, &good).unwrap();
    assert!(store.load("a").is_ok());
}

#[test]
fn ids_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    let a = session(3, |p| p as u64);
    for bad in ["", "..", "../x", "a/b", "a\\b", ".hidden", "a b", "é", "x\0y", &"x".repeat(129)] {
        assert!(matches!(store.save(bad, &a), Err(Error::StoreInvalidId { .. })), "{bad:?}");
        assert!(matches!(store.load(bad), Err(Error::StoreInvalidId { .. })), "{bad:?}");
        assert!(matches!(store.delete(bad), Err(Error::StoreInvalidId { .. })), "{bad:?}");
    }
    for good in ["a", "A-1_b.c", "2024-01-01.chat", &"x".repeat(128)] {
        store.save(good, &a).unwrap();
        assert!(store.load(good).is_ok());
    }
    assert!(matches!(store.load("nope"), Err(Error::StoreSessionNotFound { .. })));
}

#[test]
fn compressed_blocks_round_trip_and_mix_with_plain_ones() {
    let dir = tempfile::tempdir().unwrap();
    let plain = SessionStore::open(dir.path()).unwrap();
    let zipped = SessionStore::open(dir.path()).unwrap().with_compression(3);
    let z = LlamaChatSession::from_bytes(&session_bytes(80, |p| p as u64, true)).unwrap();
    let s = zipped.save("zeros", &z).unwrap();
    // The two full blocks of zeros are one block.
    assert_eq!((s.blocks_written, s.blocks_reused), (2, 1));
    assert!(s.bytes_written < (80 * PER_TOKEN / 4) as u64, "zeros compress: {s:?}");
    let files = block_files(dir.path());
    assert!(files.iter().all(|f| decode_block(&std::fs::read(f).unwrap()).unwrap().compressed));
    assert_eq!(plain.load("zeros").unwrap().to_bytes().unwrap(), z.to_bytes().unwrap());

    // Random rows do not compress: stored plain, read by either store.
    let r = session(40, |p| p as u64);
    zipped.save("random", &r).unwrap();
    assert_eq!(zipped.load("random").unwrap().to_bytes().unwrap(), r.to_bytes().unwrap());
    // Blocks already stored plain are reused, not rewritten compressed.
    let s = plain.save("random2", &r).unwrap();
    assert_eq!(s.blocks_written, 0);
}

#[test]
fn concurrent_saves_and_gc_never_lose_a_referenced_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SessionStore::open(dir.path()).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let store = store.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut k = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Each save replaces the previous one: its old tail blocks become garbage.
                    let n = 40 + (k as usize * 7) % 90;
                    let s =
                        session(n, |p| if p < 32 { p as u64 } else { t * 1_000_000 + k * 1000 + p as u64 });
                    store.replace(&format!("w{t}"), &s).unwrap();
                    k += 1;
                }
                k
            })
        })
        .collect();
    let mut removed = 0;
    for _ in 0..30 {
        std::thread::sleep(std::time::Duration::from_millis(15));
        removed += store.gc().unwrap().blocks_removed;
        for t in 0..3 {
            if store.contains(&format!("w{t}")).unwrap() {
                store.load(&format!("w{t}")).unwrap();
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let saves: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    for t in 0..3 {
        store.load(&format!("w{t}")).unwrap();
    }
    eprintln!("{saves} saves, {removed} blocks collected");
    assert!(saves >= 30 && removed > 0, "saves {saves}, removed {removed}");
}

fn wrap(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let mut b = magic.to_vec();
    let version = if magic == BLOCK_MAGIC { RECORD_VERSION } else { MANIFEST_VERSION };
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(body);
    let sum = xxhash_rust::xxh3::xxh3_64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

fn real_records() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(dir.path()).unwrap();
    store.save("a", &session(40, |p| p as u64)).unwrap();
    let block = std::fs::read(&block_files(dir.path())[0]).unwrap();
    let manifest = std::fs::read(dir.path().join("sessions/a")).unwrap();
    (block, manifest)
}

#[test]
fn records_reject_truncation_and_trailing_bytes() {
    let (block, manifest) = real_records();
    for (rec, is_block) in [(&block, true), (&manifest, false)] {
        let decode = |b: &[u8]| {
            if is_block {
                decode_block(b).err()
            } else {
                decode_manifest(b).err()
            }
        };
        assert!(decode(rec).is_none());
        for cut in 0..rec.len() {
            assert!(
                matches!(
                    decode(&rec[..cut]),
                    Some(RecordError::Truncated { .. }) | Some(RecordError::Checksum)
                ),
                "cut at {cut}: {:?}",
                decode(&rec[..cut])
            );
        }
        let mut longer = rec.clone();
        longer.push(0);
        assert!(decode(&longer).is_some());
        let supported = if is_block { RECORD_VERSION } else { MANIFEST_VERSION };
        let mut next = rec.clone();
        next[8..12].copy_from_slice(&(supported + 1).to_le_bytes());
        assert_eq!(decode(&next), Some(RecordError::UnsupportedVersion { found: supported + 1, supported }));
    }
}

/// A block body (after magic and version) with the given header fields.
fn block_body(
    layers: u32,
    heads: u32,
    dim: u32,
    dtype: u8,
    positions: u32,
    raw: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = vec![0u8];
    for v in [layers, heads, dim] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.push(dtype);
    b.extend_from_slice(&32u32.to_le_bytes());
    b.extend_from_slice(&positions.to_le_bytes());
    b.extend_from_slice(&raw.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    b.extend_from_slice(payload);
    b
}

#[test]
fn overflowing_or_huge_layouts_are_refused_without_allocating() {
    let cases = [
        // No layers, but rows whose byte size overflows (found by the fuzzer).
        (0, u32::MAX, u32::MAX, 0, 1, 0),
        (u32::MAX, u32::MAX, u32::MAX, 1, 1, 0),
        // A whole block past MAX_BLOCK_BYTES.
        (1000, 64, 1024, 1, 1, 1000 * 2 * 64 * 1024 * 4),
        // Empty layout, no positions, too many positions, an odd q8_0 head.
        (0, 1, 1, 0, 1, 0),
        (1, 1, 8, 0, 0, 0),
        (1, 1, 8, 0, 33, 33 * 32),
        (1, 1, 8, 2, 1, 0),
    ];
    for (layers, heads, dim, dtype, positions, raw) in cases {
        let rec = wrap(BLOCK_MAGIC, &block_body(layers, heads, dim, dtype, positions, raw, &[]));
        assert!(
            matches!(decode_block(&rec), Err(RecordError::Corrupt(_))),
            "{layers} {heads} {dim}: {:?}",
            decode_block(&rec).err()
        );
    }
    // The same layout in a v1 session blob (the session format shares the check).
    let mut v1 = session_bytes(0, |p| p as u64, false);
    v1[36..48].copy_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let n = v1.len() - 8;
    let sum = xxhash_rust::xxh3::xxh3_64(&v1[..n]);
    v1[n..].copy_from_slice(&sum.to_le_bytes());
    assert!(matches!(LlamaChatSession::from_bytes(&v1), Err(Error::SessionCorrupt(_))));

    // A zstd payload that inflates past the declared size.
    let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
    let mut body = block_body(1, 1, 8, 0, 1, 32, &bomb);
    body[0] = 1;
    assert!(matches!(decode_block(&wrap(BLOCK_MAGIC, &body)), Err(RecordError::Corrupt(_))));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_block(&data);
        let _ = decode_manifest(&data);
        // Past the magic, version and checksum, into the field parsers.
        let _ = decode_block(&wrap(BLOCK_MAGIC, &data));
        let _ = decode_manifest(&wrap(MANIFEST_MAGIC, &data));
    }

    #[test]
    fn decoders_never_panic_on_damaged_records(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        fix_checksum in any::<bool>(),
    ) {
        static RECORDS: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
        let (block, manifest) = RECORDS.get_or_init(real_records);
        for (rec, magic) in [(block, BLOCK_MAGIC), (manifest, MANIFEST_MAGIC)] {
            let mut b = rec.clone();
            for (i, x) in &flips {
                let i = i.index(b.len());
                b[i] ^= x | 1;
            }
            let b = if fix_checksum {
                // Keep magic and version, recompute the checksum over the damaged body.
                let mut w = wrap(magic, &b[12..b.len() - 8]);
                w.truncate(w.len().max(12));
                w
            } else {
                b[..cut.index(b.len() + 1)].to_vec()
            };
            if &magic[..] == BLOCK_MAGIC {
                let _ = decode_block(&b);
            } else {
                let _ = decode_manifest(&b);
            }
        }
    }
}
