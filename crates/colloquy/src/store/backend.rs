//! The storage seam under [`SessionStore`](super::SessionStore): what a place
//! that keeps blocks and manifests must do. A directory
//! ([`DirBackend`](super::DirBackend)) and Redis
//! ([`RedisBackend`](super::RedisBackend)) implement it.
//!
//! The store above the seam encodes and checks every record, picks versions
//! and decides what to write; a backend moves bytes and keeps two promises:
//! a manifest swap is atomic and happens only over the version expected, and
//! a block the writer was told is present stays present until the manifest
//! that names it is swapped in (or the write is dropped).

use std::time::SystemTime;

use super::{BlockHash, GcStats, StoreUsage};
use crate::error::Result;

/// What a manifest swap requires of the manifest stored now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Anything (or nothing): the last writer wins.
    Any,
    /// No manifest at all (a new session, or a fork's target).
    Absent,
    /// Exactly this version.
    Version(u64),
}

impl Expect {
    /// The expectation of a session that was last saved as `version` (`None`: never).
    ///
    /// ```
    /// use colloquy::store::Expect;
    /// assert_eq!(Expect::from_version(None), Expect::Absent);
    /// assert_eq!(Expect::from_version(Some(7)), Expect::Version(7));
    /// ```
    pub fn from_version(version: Option<u64>) -> Expect {
        version.map_or(Expect::Absent, Expect::Version)
    }
}

/// How a manifest swap ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// The new manifest is in place; this was the one it replaced.
    Done {
        /// The replaced manifest's bytes (`None`: there was none).
        previous: Option<Vec<u8>>,
    },
    /// Nothing changed: the stored manifest is not the one expected.
    Conflict {
        /// The version stored now (`None`: none is stored).
        found: Option<u64>,
    },
}

/// A stored manifest and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    /// Its bytes (see [`decode_manifest`](super::decode_manifest)).
    pub bytes: Vec<u8>,
    /// When it was written.
    pub modified: SystemTime,
}

/// Where a [`SessionStore`](super::SessionStore) keeps its blocks and manifests.
///
/// Blocks are immutable and named by their content hash; manifests are small
/// records swapped whole, one per session id. Every method may be called from
/// many threads (and processes, and machines) at once.
///
/// ```
/// use colloquy::store::{DirBackend, SessionStore, StoreBackend};
/// let dir = tempfile::tempdir().unwrap();
/// let backend = DirBackend::open(dir.path()).unwrap();
/// assert!(backend.ids().unwrap().is_empty());
/// let store = SessionStore::with_backend(Box::new(backend));
/// assert!(store.list().unwrap().is_empty());
/// ```
pub trait StoreBackend: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages: a folder, or a URL without its password.
    fn location(&self) -> String;

    /// The manifest of session `id`, if one is stored.
    fn read_manifest(&self, id: &str) -> Result<Option<StoredManifest>>;

    /// The version of the manifest of `id`, if one is stored, without
    /// reading the whole record where the backend can avoid it.
    fn manifest_version(&self, id: &str) -> Result<Option<u64>>;

    /// The ids of every stored session, sorted.
    fn ids(&self) -> Result<Vec<String>>;

    /// The bytes of each block (`None`: not stored), in the order asked.
    fn get_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Vec<u8>>>>;

    /// The stored size of each block (`None`: not stored).
    fn block_sizes(&self, hashes: &[BlockHash]) -> Result<Vec<Option<u64>>>;

    /// Starts a write: blocks, then one manifest swap. The blocks it reports
    /// present or puts are kept from garbage collection until it commits or
    /// is dropped.
    fn begin_write(&self) -> Result<Box<dyn BlockWriter + '_>>;

    /// Removes the manifest of `id`, returning it (`None`: there was none).
    fn delete_manifest(&self, id: &str) -> Result<Option<Vec<u8>>>;

    /// Removes those of `candidates` (blocks a save or delete stopped using)
    /// that no manifest references and no write in progress holds; returns
    /// how many. A backend may leave them all to [`gc`](Self::gc).
    fn collect(&self, candidates: &[BlockHash]) -> Result<usize>;

    /// Removes every block that no manifest references and no write in
    /// progress holds, and the debris of interrupted writes.
    fn gc(&self) -> Result<GcStats>;

    /// The number and bytes of manifests and blocks.
    fn usage(&self) -> Result<StoreUsage>;

    /// Whether the store answers now (a quick round trip).
    fn health(&self) -> Result<()>;
}

/// One write in progress (see [`StoreBackend::begin_write`]).
pub trait BlockWriter {
    /// For each hash, whether the store lacks that block. The blocks it
    /// holds are kept for this write.
    fn missing(&mut self, hashes: &[BlockHash]) -> Result<Vec<bool>>;

    /// Stores blocks (hash, record bytes) unless present; an existing block
    /// is never overwritten (it has the same content). Returns, for each,
    /// whether this write stored it (`false`: it was there already).
    fn put(&mut self, blocks: &[(BlockHash, Vec<u8>)]) -> Result<Vec<bool>>;

    /// Makes every block put or reported present durable, then swaps the
    /// manifest of `id` to `manifest` (whose version is `version`) if the
    /// stored one is what `expect` says. Atomic: readers see the old manifest
    /// or the new one.
    fn commit(self: Box<Self>, id: &str, expect: Expect, version: u64, manifest: &[u8]) -> Result<Swap>;
}
