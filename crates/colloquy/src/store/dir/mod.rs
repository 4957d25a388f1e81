//! The directory backend: one file per block (`blocks/<hash>`) and per
//! session manifest (`sessions/<id>`), written through synced temporary files
//! and renames; a lock file serializes manifest swaps across processes, and
//! write markers keep [`gc`](StoreBackend::gc) away from blocks a save is
//! about to name. The layout is in `docs/session-store.md`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::backend::{BlockWriter, Expect, StoreBackend, StoredManifest, Swap};
use super::{decode_manifest, validate_id, BlockHash, GcStats, StoreUsage, GC_GRACE};
use crate::error::{Error, Result};
use crate::files::{io_err, sync_dir, FileLock, TempFile};

mod collect;
use collect::RefCache;
mod locks;
use locks::LockFile;

/// How long a save waits for a running gc, and a gc for running saves,
/// before giving up with [`Error::StoreBusy`].
const LOCK_WAIT: Duration = Duration::from_secs(60);

const TMP_PREFIX: &str = ".tmp-";

/// Writes `bytes` to `dir/name` through a synced temporary file in `tmp_dir`
/// (the store's `tmp/`, on the same file system) and a rename. The caller
/// syncs `dir` afterwards.
fn write_file(tmp_dir: &Path, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    TempFile::write(tmp_dir, name, bytes, None)?.commit(&dir.join(name))
}

/// A session store in a folder: `blocks/<hash>` and `sessions/<id>`, written
/// through synced temporary files and renames (the layout is in
/// `docs/session-store.md`).
///
/// ```
/// use colloquy::store::{DirBackend, StoreBackend};
/// let dir = tempfile::tempdir().unwrap();
/// let backend = DirBackend::open(dir.path()).unwrap();
/// assert!(backend.location().ends_with(&*dir.path().file_name().unwrap().to_string_lossy()));
/// ```
pub struct DirBackend {
    dir: PathBuf,
    /// `dir` made absolute: names this store in messages and versions.
    canonical: PathBuf,
    refs: Mutex<RefCache>,
}

impl std::fmt::Debug for DirBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirBackend").field("dir", &self.dir).finish()
    }
}

impl DirBackend {
    /// Opens the store in `dir`, creating the folder and its layout if needed.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// colloquy::store::DirBackend::open(dir.path().join("sessions")).unwrap();
    /// assert!(dir.path().join("sessions/blocks").is_dir());
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<DirBackend> {
        let dir = dir.as_ref().to_path_buf();
        for sub in ["blocks", "sessions", "locks", "tmp"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let canonical = std::fs::canonicalize(&dir).map_err(io_err(&dir))?;
        Ok(DirBackend { dir, canonical, refs: Mutex::new(RefCache::default()) })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blocks_dir(&self) -> PathBuf {
        self.dir.join("blocks")
    }

    fn sessions_dir(&self) -> PathBuf {
        self.dir.join("sessions")
    }

    fn locks_dir(&self) -> PathBuf {
        self.dir.join("locks")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Held while a manifest is checked and swapped (any process, any id).
    fn manifest_lock(&self) -> Result<FileLock> {
        FileLock::acquire(&self.locks_dir().join("manifests"))
    }

    fn read_manifest_bytes(&self, id: &str) -> Result<Option<Vec<u8>>> {
        validate_id(id)?;
        let path = self.sessions_dir().join(id);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The version in the manifest of `id` (`None`: no manifest). A damaged
    /// manifest is an error when `strict`, and counts as none otherwise.
    fn version_of(&self, id: &str, bytes: Option<&[u8]>, strict: bool) -> Result<Option<u64>> {
        let Some(bytes) = bytes else { return Ok(None) };
        match decode_manifest(bytes) {
            Ok(m) => Ok(Some(m.version)),
            Err(_) if !strict => Ok(None),
            Err(e) => Err(Error::StoreManifestCorrupt { session: id.to_string(), reason: e.to_string() }),
        }
    }

    fn list_dir(&self, dir: &Path, mut f: impl FnMut(&str, &std::fs::DirEntry)) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if let Some(name) = entry.file_name().to_str() {
                f(name, &entry);
            }
        }
        Ok(())
    }
}

impl StoreBackend for DirBackend {
    fn location(&self) -> String {
        self.canonical.display().to_string()
    }

    fn read_manifest(&self, id: &str) -> Result<Option<StoredManifest>> {
        let Some(bytes) = self.read_manifest_bytes(id)? else { return Ok(None) };
        let path = self.sessions_dir().join(id);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Some(StoredManifest { bytes, modified }))
    }

    fn manifest_version(&self, id: &str) -> Result<Option<u64>> {
        let bytes = self.read_manifest_bytes(id)?;
        self.version_of(id, bytes.as_deref(), true)
    }

    fn ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        self.list_dir(&self.sessions_dir(), |name, entry| {
            if validate_id(name).is_ok() && entry.file_type().is_ok_and(|t| t.is_file()) {
                ids.push(name.to_string());
            }
        })?;
        ids.sort();
        Ok(ids)
    }

    fn get_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Vec<u8>>>> {
        let dir = self.blocks_dir();
        hashes
            .iter()
            .map(|h| {
                let path = dir.join(h.to_string());
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err(&path)(e)),
                }
            })
            .collect()
    }

    fn block_sizes(&self, hashes: &[BlockHash]) -> Result<Vec<Option<u64>>> {
        let dir = self.blocks_dir();
        Ok(hashes.iter().map(|h| std::fs::metadata(dir.join(h.to_string())).ok().map(|m| m.len())).collect())
    }

    fn begin_write(&self) -> Result<Box<dyn BlockWriter + '_>> {
        let marker = self.begin_write_marker()?;
        crate::files::remove_stale_temp_files(&self.tmp_dir())?;
        Ok(Box::new(DirWrite { store: self, _marker: marker }))
    }

    fn delete_manifest(&self, id: &str) -> Result<Option<Vec<u8>>> {
        validate_id(id)?;
        let sessions = self.sessions_dir();
        let path = sessions.join(id);
        let _swap = self.manifest_lock()?;
        let old = self.read_manifest_bytes(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        }
        sync_dir(&sessions)?;
        Ok(old)
    }

    fn collect(&self, candidates: &[BlockHash]) -> Result<usize> {
        self.collect_blocks(candidates)
    }

    fn gc(&self) -> Result<GcStats> {
        self.full_gc()
    }

    fn usage(&self) -> Result<StoreUsage> {
        let mut u = StoreUsage::default();
        for (dir, count, bytes) in [
            (self.sessions_dir(), &mut u.sessions, &mut u.manifest_bytes),
            (self.blocks_dir(), &mut u.blocks, &mut u.block_bytes),
        ] {
            self.list_dir(&dir, |name, entry| {
                if !name.starts_with('.') {
                    if let Ok(m) = entry.metadata() {
                        *count += 1;
                        *bytes += m.len();
                    }
                }
            })?;
        }
        Ok(u)
    }

    fn health(&self) -> Result<()> {
        let dir = self.sessions_dir();
        std::fs::metadata(&dir).map(|_| ()).map_err(io_err(&dir))
    }
}

/// A save in a directory: its marker keeps gc waiting until it is dropped.
struct DirWrite<'a> {
    store: &'a DirBackend,
    _marker: LockFile,
}

impl BlockWriter for DirWrite<'_> {
    fn missing(&mut self, hashes: &[BlockHash]) -> Result<Vec<bool>> {
        let dir = self.store.blocks_dir();
        Ok(hashes
            .iter()
            .map(|h| !std::fs::symlink_metadata(dir.join(h.to_string())).is_ok_and(|m| m.is_file()))
            .collect())
    }

    fn put(&mut self, blocks: &[(BlockHash, Vec<u8>)]) -> Result<Vec<bool>> {
        let (tmp, dir) = (self.store.tmp_dir(), self.store.blocks_dir());
        let mut new = Vec::with_capacity(blocks.len());
        for (hash, bytes) in blocks {
            let name = hash.to_string();
            let present = std::fs::symlink_metadata(dir.join(&name)).is_ok_and(|m| m.is_file());
            if !present {
                write_file(&tmp, &dir, &name, bytes)?;
            }
            new.push(!present);
        }
        Ok(new)
    }

    fn commit(self: Box<Self>, id: &str, expect: Expect, _version: u64, manifest: &[u8]) -> Result<Swap> {
        let store = self.store;
        // The blocks' renames must be durable before a manifest names them,
        // including blocks another process wrote and did not get to sync.
        sync_dir(&store.blocks_dir())?;
        let sessions = store.sessions_dir();
        let _swap = store.manifest_lock()?;
        let current = store.read_manifest_bytes(id)?;
        let found = store.version_of(id, current.as_deref(), expect != Expect::Any)?;
        let ok = match expect {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Version(v) => found == Some(v),
        };
        if !ok {
            return Ok(Swap::Conflict { found });
        }
        write_file(&store.tmp_dir(), &sessions, id, manifest)?;
        sync_dir(&sessions)?;
        Ok(Swap::Done { previous: current })
    }
}

/// Removes `dir`'s temporary files in the old naming (`.tmp-…`, written by
/// colloquy before the store had its `tmp/` folder) older than [`GC_GRACE`].
fn remove_old_temp_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if !entry.file_name().to_str().is_some_and(|s| s.starts_with(TMP_PREFIX)) {
            continue;
        }
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > GC_GRACE);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}
