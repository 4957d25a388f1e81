//! A store of sessions that share their KV blocks: a folder, or Redis.
//!
//! [`SessionStore`] keeps each 32-position KV block as its own
//! content-addressed record (named by its xxh3-128 hash) and each session as a
//! small manifest: the tokens, messages and random stream, plus the ordered
//! list of its blocks. Where they live is a [`StoreBackend`]: a directory
//! ([`DirBackend`]: `blocks/<hash>`, `sessions/<id>`) or Redis and Redis
//! Cluster ([`RedisBackend`]), chosen by [`SessionStore::open`]. Saving a session again after a turn writes only
//! the blocks that changed (usually the last, partly filled one, and new ones)
//! and the manifest. Forks of one conversation share their common blocks, on
//! disk and, once loaded through the same store, in memory.
//!
//! Blocks are written (and made durable) before the manifest that names them,
//! and a manifest is swapped atomically, only over the version its session
//! was loaded from. A crash at any point leaves every previously saved
//! session loadable. The layouts and the rules are in `docs/session-store.md`.
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
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use colloquy_engine::kv::{KvBlock, KvCache, KvLayout, BLOCK_TOKENS};

use crate::error::{Error, Result};
use crate::session::format::used_in_block;
use crate::session::{Fingerprint, LlamaChatSession, SessionState};

pub mod backend;
pub use backend::{BlockWriter, Expect, StoreBackend, StoredManifest, Swap};
mod block_cache;
use block_cache::BlockCache;
mod dir;
pub use dir::DirBackend;
mod lru;
use lru::BlockLru;
mod records;
pub mod redis;
pub use self::redis::RedisBackend;
mod save;

pub use records::{
    decode_block, decode_manifest, BlockHash, BlockRecord, Manifest, RecordError, BLOCK_MAGIC,
    MANIFEST_MAGIC, MANIFEST_VERSION, MAX_BLOCK_BYTES, RECORD_VERSION,
};

/// Temporary files (and lock files of processes that cannot be checked) younger
/// than this are left alone by [`SessionStore::gc`] of a directory store.
pub const GC_GRACE: Duration = Duration::from_secs(5 * 60);

/// How many times a load starts again when a concurrent save replaced the
/// manifest it was reading (each retry reads a newer version).
const LOAD_RETRIES: usize = 8;

/// Blocks fetched (or written) in one round trip.
const BATCH: usize = 16;

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

/// Sessions whose KV blocks are shared, content-addressed records, in a
/// folder or in Redis. See the [module documentation](self).
///
/// One store may be used from many threads, processes and (with Redis)
/// machines at once: block writes never overwrite, manifest swaps are
/// atomic, and garbage collection never removes a block that a save in
/// progress is about to name.
pub struct SessionStore {
    backend: Box<dyn StoreBackend>,
    /// Names this store in a session's versions.
    location: String,
    compression: Option<i32>,
    cache: Mutex<BlockCache>,
    lru: Mutex<BlockLru>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("backend", &self.backend)
            .field("compression", &self.compression)
            .finish()
    }
}

/// A version above `found`, and above any a deleted session of the same id
/// can have had: the clock in microseconds when that is larger.
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

/// The local block cache a Redis-backed store keeps by default.
pub const DEFAULT_REMOTE_CACHE: usize = 256 << 20;

/// Whether `location` names a Redis store rather than a folder.
fn is_redis_url(location: &str) -> bool {
    location.starts_with("redis://") || location.starts_with("redis+cluster://")
}

impl SessionStore {
    /// Opens a store: a folder (created with its layout if needed), or Redis
    /// at `redis://host:port/db` or a Redis Cluster at
    /// `redis+cluster://host:port[,host:port…]` (see [`RedisBackend::open`]).
    ///
    /// ```no_run
    /// use colloquy::store::SessionStore;
    /// let local = SessionStore::open("my-sessions").unwrap();
    /// let shared = SessionStore::open("redis://127.0.0.1:6379/0").unwrap();
    /// ```
    pub fn open(location: impl AsRef<Path>) -> Result<SessionStore> {
        let location = location.as_ref();
        match location.to_str() {
            Some(url) if is_redis_url(url) => {
                Ok(SessionStore::with_backend(Box::new(RedisBackend::open(url)?))
                    .with_cache_bytes(DEFAULT_REMOTE_CACHE))
            }
            _ => Ok(SessionStore::with_backend(Box::new(DirBackend::open(location)?))),
        }
    }

    /// A store on any backend, without a local block cache.
    ///
    /// ```
    /// use colloquy::store::{DirBackend, SessionStore};
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SessionStore::with_backend(Box::new(DirBackend::open(dir.path()).unwrap()));
    /// assert_eq!(store.usage().unwrap().sessions, 0);
    /// ```
    pub fn with_backend(backend: Box<dyn StoreBackend>) -> SessionStore {
        SessionStore {
            location: backend.location(),
            backend,
            compression: None,
            cache: Mutex::new(BlockCache::default()),
            lru: Mutex::new(BlockLru::new(0)),
        }
    }

    /// Compresses the blocks this store writes with zstd at `level`
    /// (1 to 22; 1 to 3 are fast). Blocks that would not get smaller are
    /// stored as they are. Reading never needs this: every block record says
    /// whether it is compressed. Blocks already in the store are not rewritten.
    ///
    /// ```no_run
    /// let store = colloquy::store::SessionStore::open("my-sessions").unwrap().with_compression(3);
    /// ```
    pub fn with_compression(mut self, level: i32) -> SessionStore {
        self.compression = Some(level);
        self
    }

    /// Keeps up to `bytes` of recently loaded and saved blocks in memory
    /// (least recently used first out), so that loading them again reads
    /// nothing from the backend. 0 turns it off (the default for folders,
    /// which the page cache serves; Redis stores start with
    /// [`DEFAULT_REMOTE_CACHE`]).
    ///
    /// ```no_run
    /// let store = colloquy::store::SessionStore::open("redis://127.0.0.1:6379/0")
    ///     .unwrap()
    ///     .with_cache_bytes(1 << 30);
    /// ```
    pub fn with_cache_bytes(self, bytes: usize) -> SessionStore {
        *self.lru.lock().unwrap_or_else(|e| e.into_inner()) = BlockLru::new(bytes);
        self
    }

    /// Where the store is: its folder, or its Redis URL (without a password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The backend under this store.
    pub fn backend(&self) -> &dyn StoreBackend {
        &*self.backend
    }

    /// Checks that the store answers now (for a server's `/health`).
    pub fn health(&self) -> Result<()> {
        self.backend.health()
    }

    /// How a session's versions name session `id` of this store.
    fn place(&self, id: &str) -> String {
        format!("store:{}\0{id}", self.location)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, BlockCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, BlockLru> {
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The manifest of `id` and when it was written.
    fn stored(&self, id: &str) -> Result<(Manifest, StoredManifest)> {
        validate_id(id)?;
        let stored = self
            .backend
            .read_manifest(id)?
            .ok_or_else(|| Error::StoreSessionNotFound { session: id.to_string() })?;
        let m = decode_manifest(&stored.bytes)
            .map_err(|e| Error::StoreManifestCorrupt { session: id.to_string(), reason: e.to_string() })?;
        Ok((m, stored))
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
        Ok(self.stored(id)?.0)
    }

    /// Whether a session is saved under `id`.
    pub fn contains(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        Ok(self.backend.read_manifest(id)?.is_some())
    }

    /// Whether `session` holds the version of `id` that the store holds now
    /// (so that a turn on it can be saved). `Ok(false)`: another writer saved
    /// since; load it again. [`Error::StoreSessionNotFound`]: it was deleted.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let store = SessionStore::open("my-sessions").unwrap();
    /// let mut session = store.load("greeting").unwrap();
    /// if !store.is_current("greeting", &session).unwrap() {
    ///     session = store.load("greeting").unwrap();
    /// }
    /// # }
    /// ```
    pub fn is_current(&self, id: &str, session: &LlamaChatSession) -> Result<bool> {
        validate_id(id)?;
        let held = session.lock().versions.get(&self.place(id));
        match self.backend.manifest_version(id)? {
            None => Err(Error::StoreSessionNotFound { session: id.to_string() }),
            found => Ok(found == held),
        }
    }

    /// Loads the session saved as `id`. Every block is read and checked
    /// (checksum, and content against its name); blocks already in memory
    /// through this store are shared, not duplicated.
    ///
    /// Errors: [`Error::StoreSessionNotFound`], [`Error::StoreManifestCorrupt`],
    /// [`Error::StoreBlockMissing`] and [`Error::StoreBlockCorrupt`], each
    /// naming the session (and the block); [`Error::StoreUnavailable`] when
    /// the backend does not answer.
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
                    if self.backend.manifest_version(id)? == Some(version) {
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
        let wanted: Vec<(BlockHash, &KvLayout, usize)> =
            m.blocks.iter().enumerate().map(|(b, &h)| (h, &global, used_in_block(n, b))).collect();
        let blocks = self.load_blocks(id, &wanted)?;
        let mut window = Vec::new();
        if m.layout.window.is_some() {
            window.resize(m.blocks.len(), None);
            let wanted: Vec<(BlockHash, &KvLayout, usize)> =
                m.window_blocks.iter().map(|&(b, h)| (h, &local, used_in_block(n, b))).collect();
            for (&(b, _), block) in m.window_blocks.iter().zip(self.load_blocks(id, &wanted)?) {
                window[b] = Some(block);
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

    /// Reads blocks (hash, layout, used positions) of session `id`, from the
    /// local cache or, a batch at a time, the backend; checks each: checksum,
    /// content against its name, its layout and its number of positions.
    fn load_blocks(&self, id: &str, wanted: &[(BlockHash, &KvLayout, usize)]) -> Result<Vec<Arc<KvBlock>>> {
        let mut out: Vec<Option<Arc<KvBlock>>> = vec![None; wanted.len()];
        if self.lru().capacity() > 0 {
            let mut lru = self.lru();
            for (slot, &(hash, _, _)) in out.iter_mut().zip(wanted) {
                *slot = lru.get(hash);
            }
        }
        let fetch: Vec<usize> = (0..wanted.len()).filter(|&i| out[i].is_none()).collect();
        for chunk in fetch.chunks(BATCH) {
            let hashes: Vec<BlockHash> = chunk.iter().map(|&i| wanted[i].0).collect();
            for (&i, bytes) in chunk.iter().zip(self.backend.get_blocks(&hashes)?) {
                let (hash, layout, used) = wanted[i];
                let Some(bytes) = bytes else {
                    return Err(Error::StoreBlockMissing {
                        session: id.to_string(),
                        block: hash.to_string(),
                    });
                };
                let block = self.check_block(id, hash, layout, used, &bytes)?;
                self.remember_block(hash, layout, &block);
                out[i] = Some(block);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn check_block(
        &self,
        id: &str,
        hash: BlockHash,
        layout: &KvLayout,
        used: usize,
        bytes: &[u8],
    ) -> Result<Arc<KvBlock>> {
        let bad = |reason: String| Error::StoreBlockCorrupt {
            session: id.to_string(),
            block: hash.to_string(),
            reason,
        };
        let rec = decode_block(bytes).map_err(|e| bad(e.to_string()))?;
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

    /// Puts a checked (or just written) block in the local cache.
    fn remember_block(&self, hash: BlockHash, layout: &KvLayout, block: &Arc<KvBlock>) {
        let mut lru = self.lru();
        if lru.capacity() > 0 {
            lru.insert(hash, block, layout.bytes_per_token() * BLOCK_TOKENS);
        }
    }

    /// Describes the session saved as `id` (reads its manifest, and the sizes
    /// of its blocks).
    pub fn info(&self, id: &str) -> Result<SessionInfo> {
        let (m, stored) = self.stored(id)?;
        let distinct: Vec<BlockHash> = m.all_blocks().collect::<HashSet<_>>().into_iter().collect();
        let block_bytes: u64 = self.backend.block_sizes(&distinct)?.into_iter().flatten().sum();
        let manifest_bytes = stored.bytes.len() as u64;
        Ok(SessionInfo {
            id: id.to_string(),
            version: m.version,
            fingerprint: m.fingerprint,
            tokens: m.tokens.len(),
            messages: m.history.len() + usize::from(m.pending.is_some()),
            blocks: m.all_blocks().count(),
            manifest_bytes,
            bytes: manifest_bytes + block_bytes,
            modified: stored.modified,
        })
    }

    /// Every saved session, sorted by id. Fails on a corrupt manifest, naming
    /// it ([`Error::StoreManifestCorrupt`]); delete it to list the rest.
    pub fn list(&self) -> Result<Vec<SessionInfo>> {
        let mut out = Vec::new();
        for id in self.backend.ids()? {
            match self.info(&id) {
                Ok(i) => out.push(i),
                // Deleted since the ids were read.
                Err(Error::StoreSessionNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The number and bytes of manifests and blocks.
    pub fn usage(&self) -> Result<StoreUsage> {
        self.backend.usage()
    }

    /// Saves a copy of session `from` as `to`, which must not exist. Only the
    /// manifest is copied: the two share every block until they diverge.
    pub fn fork(&self, from: &str, to: &str) -> Result<()> {
        validate_id(to)?;
        let mut writer = self.backend.begin_write()?;
        let (m, stored) = self.stored(from)?;
        let version = next_version(None);
        let bytes = records::with_version(&stored.bytes, version)
            .map_err(|e| Error::StoreManifestCorrupt { session: from.to_string(), reason: e.to_string() })?;
        // The blocks must stay until the fork's manifest names them.
        let hashes: Vec<BlockHash> = m.all_blocks().collect();
        if let Some(i) = writer.missing(&hashes)?.iter().position(|&gone| gone) {
            return Err(Error::StoreBlockMissing { session: from.to_string(), block: hashes[i].to_string() });
        }
        match writer.commit(to, Expect::Absent, version, &bytes)? {
            Swap::Done { .. } => Ok(()),
            Swap::Conflict { .. } => Err(Error::StoreSessionExists { session: to.to_string() }),
        }
    }

    /// Deletes session `id`, and the blocks no other session uses. A session
    /// loaded before the delete cannot bring it back: its
    /// [`save`](Self::save) gets [`Error::SessionConflict`].
    pub fn delete(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let old = self
            .backend
            .delete_manifest(id)?
            .ok_or_else(|| Error::StoreSessionNotFound { session: id.to_string() })?;
        let blocks: Vec<BlockHash> =
            decode_manifest(&old).map(|m| m.all_blocks().collect()).unwrap_or_default();
        self.backend.collect(&blocks)?;
        Ok(())
    }

    /// Removes the blocks that no manifest references and the debris of
    /// interrupted writes, never a block that a save in progress (in any
    /// process) will name. A folder's gc waits for saves in progress, and
    /// they for it; Redis's runs alongside them (`docs/session-store.md`).
    ///
    /// Refuses ([`Error::StoreManifestCorrupt`]) if a manifest cannot be read,
    /// since the blocks it names are unknown: delete that session first.
    ///
    /// ```no_run
    /// let store = colloquy::store::SessionStore::open("my-sessions").unwrap();
    /// let stats = store.gc().unwrap();
    /// println!("{} blocks removed, {} kept", stats.blocks_removed, stats.blocks_kept);
    /// ```
    pub fn gc(&self) -> Result<GcStats> {
        self.backend.gc()
    }
}
