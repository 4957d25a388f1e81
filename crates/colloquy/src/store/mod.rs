//! A directory of sessions that share their KV blocks on disk.
//!
//! [`SessionStore`] keeps each 32-position KV block in its own
//! content-addressed file (`blocks/<xxh3-128 hex>`) and each session as a small
//! manifest (`sessions/<id>`): the tokens, messages and random stream, plus the
//! ordered list of its blocks. Saving a session again after a turn writes only
//! the blocks that changed (usually the last, partly filled one, and new ones)
//! and the manifest. Forks of one conversation share their common blocks, on
//! disk and, once loaded through the same store, in memory.
//!
//! Every file is written to a temporary file, synced and renamed into place;
//! blocks (and their folder) are synced before the manifest that names them.
//! A crash at any point leaves every previously saved session loadable. The
//! layout and the rules are in `docs/session-store.md`.
//!
//! ```no_run
//! use colloquy::language::*;
//!
//! # #[tokio::main] async fn main() {
//! let llm = Llama::new_chat().await.unwrap();
//! let store = SessionStore::open("sessions").unwrap();
//! let mut chat = llm.chat();
//! chat("Name a color.").await.unwrap();
//! let stats = store.save("colors", &chat.session().unwrap()).unwrap();
//! println!("{} blocks written, {} reused", stats.blocks_written, stats.blocks_reused);
//!
//! // Later, maybe in another process:
//! let session = store.load("colors").unwrap();
//! let mut chat = llm.chat().with_session(session);
//! chat("Another one?").await.unwrap();
//! # }
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::files::{FileLock, TempFile};

use colloquy_engine::kv::{KvBlock, KvCache, KvLayout};

use crate::error::{Error, Result};
use crate::session::format::used_in_block;
use crate::session::{Fingerprint, LlamaChatSession, SessionState};

mod block_cache;
use block_cache::BlockCache;
mod collect;
use collect::RefCache;
mod files;
use files::{sync_dir, write_file};
mod records;
mod save;

pub use records::{
    decode_block, decode_manifest, BlockHash, BlockRecord, Manifest, RecordError, BLOCK_MAGIC,
    MANIFEST_MAGIC, MANIFEST_VERSION, MAX_BLOCK_BYTES, RECORD_VERSION,
};

/// Temporary files (and lock files of processes that cannot be checked) younger
/// than this are left alone by [`SessionStore::gc`].
pub const GC_GRACE: Duration = Duration::from_secs(5 * 60);

/// How long a save waits for a running [`SessionStore::gc`], and a gc for
/// running saves, before giving up with [`Error::StoreBusy`].
const LOCK_WAIT: Duration = Duration::from_secs(60);

const TMP_PREFIX: &str = ".tmp-";

/// What one [`SessionStore::save`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SaveStats {
    /// The version the session now has in the store.
    pub version: u64,
    /// Block files that only the replaced version used, removed.
    pub blocks_removed: usize,
    /// Block files written (new or changed blocks).
    pub blocks_written: usize,
    /// Blocks already in the store, not written again.
    pub blocks_reused: usize,
    /// Bytes written: the new block files and the manifest.
    pub bytes_written: u64,
}

/// A stored session, as [`SessionStore::list`] and [`SessionStore::info`] describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session's id.
    pub id: String,
    /// Its version (see [`SessionStore::save`]).
    pub version: u64,
    /// The model it belongs to.
    pub fingerprint: Fingerprint,
    /// Tokens the model has read.
    pub tokens: usize,
    /// Messages, the latest (pending) answer included.
    pub messages: usize,
    /// KV blocks it references.
    pub blocks: usize,
    /// Its manifest's size.
    pub manifest_bytes: u64,
    /// Its manifest plus every distinct block it references (blocks shared with
    /// other sessions are counted here too).
    pub bytes: u64,
    /// When it was last saved.
    pub modified: SystemTime,
}

/// What one [`SessionStore::gc`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcStats {
    /// Block files that no manifest referenced, removed.
    pub blocks_removed: usize,
    /// Their bytes.
    pub bytes_removed: u64,
    /// Block files kept (referenced by at least one manifest).
    pub blocks_kept: usize,
    /// Temporary files of interrupted writes, removed (only those older than [`GC_GRACE`]).
    pub temp_files_removed: usize,
}

/// Sizes of a whole store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreUsage {
    /// Session manifests.
    pub sessions: usize,
    /// Their bytes.
    pub manifest_bytes: u64,
    /// Block files.
    pub blocks: usize,
    /// Their bytes.
    pub block_bytes: u64,
}

/// A directory of sessions whose KV blocks are shared, content-addressed files.
/// See the [module documentation](self).
///
/// One store may be used from many threads and processes at once: writes are
/// atomic, and [`gc`](Self::gc) waits for saves in progress (and they for it).
pub struct SessionStore {
    dir: PathBuf,
    /// `dir` made absolute: names this store in a session's versions.
    canonical: PathBuf,
    compression: Option<i32>,
    cache: Mutex<BlockCache>,
    refs: Mutex<RefCache>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("dir", &self.dir)
            .field("compression", &self.compression)
            .finish()
    }
}

use crate::files::io_err;

/// A version above `found`, and above any a deleted session of the same id
/// can have had: the clock in microseconds when that is larger.
/// How many times a load starts again when a concurrent save replaced the
/// manifest it was reading (each retry reads a newer version).
const LOAD_RETRIES: usize = 8;

fn next_version(found: Option<u64>) -> u64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    found.map_or(1, |v| v.saturating_add(1)).max(now)
}

/// Checks that `id` can name a session file: 1 to 128 ASCII letters, digits,
/// `-`, `_` and `.`, not starting with `.` (so no `..`, no path separators,
/// and no clash with temporary files).
///
/// ```
/// use colloquy::store::validate_id;
/// assert!(validate_id("chat-2024.v1").is_ok());
/// assert!(validate_id("../etc/passwd").is_err());
/// assert!(validate_id("a/b").is_err());
/// ```
pub fn validate_id(id: &str) -> Result<()> {
    let bad = |reason: &str| Err(Error::StoreInvalidId { id: id.to_string(), reason: reason.to_string() });
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > 128 {
        return bad("it is longer than 128 bytes");
    }
    if id.starts_with('.') {
        return bad("it starts with '.'");
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return bad(&format!("{c:?} is not allowed (use ASCII letters, digits, '-', '_' and '.')"));
    }
    Ok(())
}

impl SessionStore {
    /// Opens the store in `dir`, creating the folder and its layout if needed.
    ///
    /// ```no_run
    /// let store = colloquy::store::SessionStore::open("my-sessions").unwrap();
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<SessionStore> {
        let dir = dir.as_ref().to_path_buf();
        for sub in ["blocks", "sessions", "locks", "tmp"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let canonical = std::fs::canonicalize(&dir).map_err(io_err(&dir))?;
        Ok(SessionStore {
            dir,
            canonical,
            compression: None,
            cache: Mutex::new(BlockCache::default()),
            refs: Mutex::new(RefCache::default()),
        })
    }

    /// Compresses the block files this store writes with zstd at `level`
    /// (1 to 22; 1 to 3 are fast). Blocks that would not get smaller are
    /// stored as they are. Reading never needs this: every block file says
    /// whether it is compressed. Blocks already in the store are not rewritten.
    ///
    /// ```no_run
    /// let store = colloquy::store::SessionStore::open("my-sessions").unwrap().with_compression(3);
    /// ```
    pub fn with_compression(mut self, level: i32) -> SessionStore {
        self.compression = Some(level);
        self
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

    /// How a session's versions name session `id` of this store.
    fn place(&self, id: &str) -> String {
        format!("store:{}\0{id}", self.canonical.display())
    }

    /// Held while a manifest is checked and swapped (any process, any id).
    fn manifest_lock(&self) -> Result<FileLock> {
        FileLock::acquire(&self.locks_dir().join("manifests"))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, BlockCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the manifest of `id`.
    fn read_manifest_bytes(&self, id: &str) -> Result<Vec<u8>> {
        validate_id(id)?;
        let path = self.sessions_dir().join(id);
        std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::StoreSessionNotFound { session: id.to_string() }
            } else {
                io_err(&path)(e)
            }
        })
    }

    /// The manifest of `id`: its tokens, messages and block list, without
    /// reading any block.
    ///
    /// ```no_run
    /// let store = colloquy::store::SessionStore::open("my-sessions").unwrap();
    /// for m in store.manifest("greeting").unwrap().transcript() {
    ///     println!("[{}] {}", m.role().as_role(), m.content());
    /// }
    /// ```
    pub fn manifest(&self, id: &str) -> Result<Manifest> {
        let bytes = self.read_manifest_bytes(id)?;
        decode_manifest(&bytes)
            .map_err(|e| Error::StoreManifestCorrupt { session: id.to_string(), reason: e.to_string() })
    }

    /// Whether a session is saved under `id`.
    pub fn contains(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        Ok(self.sessions_dir().join(id).is_file())
    }

    /// Loads the session saved as `id`. Every block is read and checked
    /// (checksum, and content against its name); blocks already in memory
    /// through this store are shared, not duplicated.
    ///
    /// Errors: [`Error::StoreSessionNotFound`], [`Error::StoreManifestCorrupt`],
    /// [`Error::StoreBlockMissing`] and [`Error::StoreBlockCorrupt`], each
    /// naming the session (and the block).
    ///
    /// ```no_run
    /// let store = colloquy::store::SessionStore::open("my-sessions").unwrap();
    /// let session = store.load("greeting").unwrap();
    /// ```
    pub fn load(&self, id: &str) -> Result<LlamaChatSession> {
        // A save by another writer may replace the manifest between our
        // reading it and its blocks, and collect blocks only the old version
        // used: then the block is missing but the manifest has moved on, and
        // the load starts again on the new version.
        let mut attempts = 0;
        loop {
            let m = self.manifest(id)?;
            let version = m.version;
            match self.load_manifest(id, m) {
                Err(Error::StoreBlockMissing { .. }) if attempts < LOAD_RETRIES => {
                    attempts += 1;
                    if self.stored_version(id, true)? == Some(version) {
                        // Same version: the block is really missing.
                        return self.load_manifest(id, self.manifest(id)?);
                    }
                }
                r => return r,
            }
        }
    }

    fn load_manifest(&self, id: &str, m: Manifest) -> Result<LlamaChatSession> {
        let mut versions = crate::session::Versions::default();
        versions.set(self.place(id), m.version);
        let n = m.tokens.len();
        let (global, local) = (m.layout.lane(false), m.layout.lane(true));
        let mut blocks = Vec::with_capacity(m.blocks.len());
        for (b, &hash) in m.blocks.iter().enumerate() {
            blocks.push(self.load_block(id, hash, &global, used_in_block(n, b))?);
        }
        let mut window = Vec::new();
        if m.layout.window.is_some() {
            window.resize(m.blocks.len(), None);
            for &(b, hash) in &m.window_blocks {
                window[b] = Some(self.load_block(id, hash, &local, used_in_block(n, b))?);
            }
        }
        let kv = KvCache::from_lanes(m.layout, n, blocks, window, n, m.rewind_point)
            .map_err(|e| Error::StoreManifestCorrupt { session: id.to_string(), reason: e.to_string() })?;
        Ok(LlamaChatSession::from_state(SessionState {
            fingerprint: m.fingerprint,
            kv,
            tokens: m.tokens,
            history: m.history,
            pending: m.pending,
            rng: m.rng,
            dropped: m.dropped,
            last_turn: None,
            versions,
        }))
    }

    /// Reads block `hash` of session `id` and checks it: checksum, content
    /// against its name, its layout and its number of positions.
    fn load_block(&self, id: &str, hash: BlockHash, layout: &KvLayout, used: usize) -> Result<Arc<KvBlock>> {
        let path = self.blocks_dir().join(hash.to_string());
        let bad = |reason: String| Error::StoreBlockCorrupt {
            session: id.to_string(),
            block: hash.to_string(),
            reason,
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::StoreBlockMissing { session: id.to_string(), block: hash.to_string() })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let rec = decode_block(&bytes).map_err(|e| bad(e.to_string()))?;
        if rec.hash != hash {
            return Err(bad(format!("its content hashes to {}", rec.hash)));
        }
        if rec.layout != *layout {
            return Err(bad(format!("its layout {:?} differs from the session's {layout:?}", rec.layout)));
        }
        if rec.positions != used {
            return Err(bad(format!("it holds {} positions, the session needs {used} there", rec.positions)));
        }
        Ok(self.cache().share(hash, used, rec.block))
    }

    fn session_ids(&self) -> Result<Vec<String>> {
        let dir = self.sessions_dir();
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if let Some(name) = entry.file_name().to_str() {
                if validate_id(name).is_ok() && entry.file_type().is_ok_and(|t| t.is_file()) {
                    ids.push(name.to_string());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Describes the session saved as `id` (reads its manifest, and the sizes
    /// of its blocks).
    pub fn info(&self, id: &str) -> Result<SessionInfo> {
        let path = self.sessions_dir().join(id);
        let m = self.manifest(id)?;
        let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
        let blocks_dir = self.blocks_dir();
        let distinct: HashSet<BlockHash> = m.all_blocks().collect();
        let block_bytes: u64 = distinct
            .iter()
            .filter_map(|h| std::fs::metadata(blocks_dir.join(h.to_string())).ok())
            .map(|m| m.len())
            .sum();
        Ok(SessionInfo {
            id: id.to_string(),
            version: m.version,
            fingerprint: m.fingerprint,
            tokens: m.tokens.len(),
            messages: m.history.len() + usize::from(m.pending.is_some()),
            blocks: m.all_blocks().count(),
            manifest_bytes: meta.len(),
            bytes: meta.len() + block_bytes,
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }

    /// Every saved session, sorted by id. Fails on a corrupt manifest, naming
    /// it ([`Error::StoreManifestCorrupt`]); delete it to list the rest.
    pub fn list(&self) -> Result<Vec<SessionInfo>> {
        let mut out = Vec::new();
        for id in self.session_ids()? {
            match self.info(&id) {
                Ok(i) => out.push(i),
                // Deleted since the folder was read.
                Err(Error::StoreSessionNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The number and bytes of manifests and block files.
    pub fn usage(&self) -> Result<StoreUsage> {
        let mut u = StoreUsage::default();
        for (dir, count, bytes) in [
            (self.sessions_dir(), &mut u.sessions, &mut u.manifest_bytes),
            (self.blocks_dir(), &mut u.blocks, &mut u.block_bytes),
        ] {
            for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let name = entry.file_name();
                if name.to_str().is_some_and(|n| !n.starts_with('.')) {
                    if let Ok(m) = entry.metadata() {
                        *count += 1;
                        *bytes += m.len();
                    }
                }
            }
        }
        Ok(u)
    }

    /// Saves a copy of session `from` as `to`, which must not exist. Only the
    /// manifest is copied: the two share every block until they diverge.
    pub fn fork(&self, from: &str, to: &str) -> Result<()> {
        validate_id(to)?;
        let _writing = self.begin_write()?;
        let bytes = self.read_manifest_bytes(from)?;
        let _swap = self.manifest_lock()?;
        if self.contains(to)? {
            return Err(Error::StoreSessionExists { session: to.to_string() });
        }
        let bytes = records::with_version(&bytes, next_version(None))
            .map_err(|e| Error::StoreManifestCorrupt { session: from.to_string(), reason: e.to_string() })?;
        let sessions = self.sessions_dir();
        write_file(&self.tmp_dir(), &sessions, to, &bytes)?;
        sync_dir(&sessions)
    }

    /// Deletes session `id`, and the blocks no other session uses. A session
    /// loaded before the delete cannot bring it back: its
    /// [`save`](Self::save) gets [`Error::SessionConflict`].
    pub fn delete(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let sessions = self.sessions_dir();
        let path = sessions.join(id);
        let blocks: Vec<BlockHash> = {
            let _swap = self.manifest_lock()?;
            let blocks = self.manifest(id).map(|m| m.all_blocks().collect()).unwrap_or_default();
            std::fs::remove_file(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::StoreSessionNotFound { session: id.to_string() }
                } else {
                    io_err(&path)(e)
                }
            })?;
            sync_dir(&sessions)?;
            blocks
        };
        self.collect(&blocks)?;
        Ok(())
    }
}
