//! Garbage collection in a directory store: which blocks the manifests
//! reference, the collection a save runs for the blocks it stopped using,
//! and the full gc.

use std::collections::HashMap;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::{remove_old_temp_files, DirBackend, LOCK_WAIT};
use crate::error::{Error, Result};
use crate::files::{io_err, sync_dir};
use crate::store::backend::StoreBackend;
use crate::store::{decode_manifest, BlockHash, GcStats, MANIFEST_MAGIC};

/// How long a save's own collection waits for other writers before leaving
/// its garbage to a later save or a full gc: the save itself has
/// succeeded by then, and must not stall behind a busy store.
const COLLECT_WAIT: Duration = Duration::from_secs(2);

/// The block lists of manifests already read, by session id, so that a
/// collection reads again only the manifests that changed. A version 3
/// manifest is known by its version, its length and its inode (versions only
/// grow); older manifests have no version and are read every time.
#[derive(Default)]
pub(super) struct RefCache {
    by_id: HashMap<String, (ManifestKey, Vec<BlockHash>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct ManifestKey {
    version: u64,
    len: u64,
    inode: u64,
}

/// The key of manifest file `path` from its first bytes, if it has a version.
fn manifest_key(path: &Path) -> Option<ManifestKey> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let meta = f.metadata().ok()?;
    let mut head = [0u8; 28];
    f.read_exact(&mut head).ok()?;
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if &head[..8] != MANIFEST_MAGIC || version < 3 {
        return None;
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&head[20..28]);
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(ManifestKey { version: u64::from_le_bytes(v), len: meta.len(), inode })
}

impl DirBackend {
    /// Every block some manifest references. Fails on a manifest that cannot
    /// be read ([`Error::StoreManifestCorrupt`]): the blocks it names are unknown.
    fn referenced_blocks(&self) -> Result<HashSet<BlockHash>> {
        let ids = self.ids()?;
        let mut refs = self.refs.lock().unwrap_or_else(|e| e.into_inner());
        refs.by_id.retain(|id, _| ids.binary_search(id).is_ok());
        let mut all = HashSet::new();
        for id in ids {
            let key = manifest_key(&self.sessions_dir().join(&id));
            if let (Some(key), Some((known, blocks))) = (key, refs.by_id.get(&id)) {
                if *known == key {
                    all.extend(blocks.iter().copied());
                    continue;
                }
            }
            let Some(bytes) = self.read_manifest_bytes(&id)? else {
                // Deleted since the folder was read.
                continue;
            };
            match decode_manifest(&bytes) {
                Ok(m) => {
                    let blocks: Vec<BlockHash> = m.all_blocks().collect();
                    all.extend(blocks.iter().copied());
                    match key {
                        Some(key) if key.version == m.version => {
                            refs.by_id.insert(id, (key, blocks));
                        }
                        _ => {
                            refs.by_id.remove(&id);
                        }
                    }
                }
                Err(e) => return Err(Error::StoreManifestCorrupt { session: id, reason: e.to_string() }),
            }
        }
        Ok(all)
    }

    /// Removes those of `candidates` that no manifest references, under the
    /// gc lock (so no save can be about to reuse one). Returns how many it
    /// removed; leaves them all when the store is too busy to wait for.
    pub(super) fn collect_blocks(&self, candidates: &[BlockHash]) -> Result<usize> {
        if candidates.is_empty() {
            return Ok(0);
        }
        let _gc = match self.begin_gc(COLLECT_WAIT) {
            Ok(gc) => gc,
            Err(Error::StoreBusy(_)) => return Ok(0),
            Err(e) => return Err(e),
        };
        let referenced = match self.referenced_blocks() {
            Ok(r) => r,
            // A damaged manifest elsewhere: keep everything, as gc would.
            Err(Error::StoreManifestCorrupt { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        let blocks_dir = self.blocks_dir();
        let mut removed = 0;
        for hash in candidates.iter().collect::<HashSet<_>>() {
            if !referenced.contains(hash) && std::fs::remove_file(blocks_dir.join(hash.to_string())).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&blocks_dir)?;
        }
        Ok(removed)
    }

    /// Removes the block files that no manifest references, and the temporary
    /// files of interrupted writes (those whose writer process is gone, and
    /// those in the old `.tmp-` naming older than [`GC_GRACE`](crate::store::GC_GRACE)). Waits for
    /// saves in progress (in any process) to finish, and saves wait for it.
    ///
    /// Refuses ([`Error::StoreManifestCorrupt`]) if a manifest cannot be read,
    /// since the blocks it names are unknown: delete that session first.
    pub(super) fn full_gc(&self) -> Result<GcStats> {
        let _gc = self.begin_gc(LOCK_WAIT)?;
        let referenced = self.referenced_blocks()?;
        let mut stats = GcStats::default();
        let blocks_dir = self.blocks_dir();
        for entry in std::fs::read_dir(&blocks_dir).map_err(io_err(&blocks_dir))? {
            let entry = entry.map_err(io_err(&blocks_dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if let Some(hash) = BlockHash::parse(&name) {
                if referenced.contains(&hash) {
                    stats.blocks_kept += 1;
                } else if std::fs::remove_file(entry.path()).is_ok() {
                    stats.blocks_removed += 1;
                    stats.bytes_removed += meta.len();
                }
            }
        }
        stats.temp_files_removed += crate::files::remove_stale_temp_files(&self.tmp_dir())?;
        for dir in [&blocks_dir, &self.sessions_dir()] {
            stats.temp_files_removed += remove_old_temp_files(dir)?;
        }
        sync_dir(&blocks_dir)?;
        sync_dir(&self.sessions_dir())?;
        Ok(stats)
    }
}
