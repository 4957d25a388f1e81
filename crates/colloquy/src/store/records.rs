//! The session store's two on-disk records: KV block files and session
//! manifests (documented in `docs/session-store.md`).
//!
//! Both decoders take any bytes and return a record or a [`RecordError`]; they
//! never panic, and they check every size before allocating.

use colloquy_engine::kv::{KvBlock, KvLayout, BLOCK_TOKENS};
use colloquy_engine::sampler::RngState;

use crate::message::{ChatMessage, MessageType};
use crate::session::format::{self, Reader};
use crate::session::{Fingerprint, SessionState};

/// The first bytes of every block file.
pub const BLOCK_MAGIC: &[u8; 8] = b"CLQYKVBK";
/// The first bytes of every session manifest.
pub const MANIFEST_MAGIC: &[u8; 8] = b"CLQYMNFT";
/// The version of block files that this build writes and reads.
pub const RECORD_VERSION: u32 = 1;
/// The version of manifests that this build writes (it also reads version 1,
/// which has no window lane, and version 2, which has no session version and
/// no dropped messages).
pub const MANIFEST_VERSION: u32 = 3;
/// The largest whole block (all [`BLOCK_TOKENS`] positions, K and V, every
/// layer) a block file may describe: 64 MiB, about twice what the largest
/// open models need.
pub const MAX_BLOCK_BYTES: usize = 64 << 20;

/// Block flag: the payload is zstd-compressed.
const FLAG_ZSTD: u8 = 1;
/// magic, version, flags, layout (17), positions, raw length, payload length.
const BLOCK_HEADER: usize = 8 + 4 + 1 + 17 + 4 + 8 + 8;
/// magic, version, total length.
const MANIFEST_PREAMBLE: usize = 8 + 4 + 8;
/// Where a version 3 manifest keeps the session's version (a u64).
const MANIFEST_SESSION_VERSION_AT: usize = MANIFEST_PREAMBLE;
const CHECKSUM: usize = 8;

/// Why a block file or manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes do not start with the record's magic.
    #[error("bad magic: not a colloquy {0}")]
    BadMagic(&'static str),
    /// A newer (or unknown) record version.
    #[error("record version {found} is not supported (this colloquy reads version {supported})")]
    UnsupportedVersion {
        /// Version in the bytes.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The bytes end before the length the header declares.
    #[error("truncated: {found} bytes, {expected} expected")]
    Truncated {
        /// Declared (or least) length.
        expected: u64,
        /// Bytes given.
        found: u64,
    },
    /// The checksum does not match: some byte changed.
    #[error("checksum mismatch")]
    Checksum,
    /// The content is inconsistent although the checksum matched.
    #[error("{0}")]
    Corrupt(String),
}

fn corrupt(msg: impl Into<String>) -> RecordError {
    RecordError::Corrupt(msg.into())
}

/// Maps the session format's field errors (which are all `SessionCorrupt`).
fn field(e: crate::Error) -> RecordError {
    match e {
        crate::Error::SessionCorrupt(m) => RecordError::Corrupt(m),
        other => RecordError::Corrupt(other.to_string()),
    }
}

/// The name of a block: xxh3-128 of its layout, its number of positions and
/// its uncompressed rows. Shown (and stored as a file name) as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

impl BlockHash {
    /// Parses 32 lowercase hex digits (a block file's name).
    pub fn parse(s: &str) -> Option<BlockHash> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(BlockHash)
    }
}

impl std::fmt::Display for BlockHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A decoded block file.
#[derive(Debug, Clone)]
pub struct BlockRecord {
    /// The KV layout the rows have.
    pub layout: KvLayout,
    /// Used positions (1 to [`BLOCK_TOKENS`]); later positions are zero.
    pub positions: usize,
    /// Whether the file's payload was zstd-compressed.
    pub compressed: bool,
    /// The hash of the content (what the file should be named).
    pub hash: BlockHash,
    /// The rows.
    pub block: KvBlock,
}

/// Bytes of one position's K and V, checked: at least one byte, and a whole
/// block within [`MAX_BLOCK_BYTES`].
fn checked_per_token(layout: &KvLayout) -> Result<usize, RecordError> {
    let per_token = format::bytes_per_token(layout).ok_or_else(|| corrupt("KV layout overflows"))?;
    if per_token == 0 {
        return Err(corrupt("empty KV layout"));
    }
    match per_token.checked_mul(BLOCK_TOKENS) {
        Some(b) if b <= MAX_BLOCK_BYTES => Ok(per_token),
        _ => Err(corrupt(format!(
            "a KV block of {per_token} bytes per position exceeds {MAX_BLOCK_BYTES} bytes"
        ))),
    }
}

/// The uncompressed rows of a block's first `used` positions, appended to `raw`.
pub(crate) fn block_rows(layout: &KvLayout, block: &KvBlock, used: usize, raw: &mut Vec<u8>) {
    format::encode_block_rows(raw, layout, block, used);
}

/// The content hash of `used` positions whose rows are `raw`.
pub(crate) fn block_hash(layout: &KvLayout, used: usize, raw: &[u8]) -> BlockHash {
    let mut head = Vec::with_capacity(21);
    format::encode_layout(&mut head, layout);
    head.extend_from_slice(&(used as u32).to_le_bytes());
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&head);
    h.update(raw);
    BlockHash(h.digest128())
}

/// A block file for `used` positions whose uncompressed rows are `raw`,
/// zstd-compressed at `level` when given and when that makes it smaller.
pub(crate) fn encode_block(layout: &KvLayout, used: usize, raw: &[u8], level: Option<i32>) -> Vec<u8> {
    let compressed = level.and_then(|l| zstd::bulk::compress(raw, l).ok()).filter(|c| c.len() < raw.len());
    let payload = compressed.as_deref().unwrap_or(raw);
    let mut w = Vec::with_capacity(BLOCK_HEADER + payload.len() + CHECKSUM);
    w.extend_from_slice(BLOCK_MAGIC);
    w.extend_from_slice(&RECORD_VERSION.to_le_bytes());
    w.push(if compressed.is_some() { FLAG_ZSTD } else { 0 });
    format::encode_layout(&mut w, layout);
    w.extend_from_slice(&(used as u32).to_le_bytes());
    w.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    w.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    w.extend_from_slice(payload);
    let sum = xxhash_rust::xxh3::xxh3_64(&w);
    w.extend_from_slice(&sum.to_le_bytes());
    w
}

/// Checks the magic, the version (one of `versions`, returned) and the least length.
fn preamble(
    bytes: &[u8],
    magic: &[u8; 8],
    what: &'static str,
    least: usize,
    versions: std::ops::RangeInclusive<u32>,
) -> Result<u32, RecordError> {
    let n = bytes.len().min(8);
    if bytes[..n] != magic[..n] {
        return Err(RecordError::BadMagic(what));
    }
    if bytes.len() < 12 {
        return Err(RecordError::Truncated { expected: least as u64, found: bytes.len() as u64 });
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if !versions.contains(&version) {
        return Err(RecordError::UnsupportedVersion { found: version, supported: *versions.end() });
    }
    if bytes.len() < least {
        return Err(RecordError::Truncated { expected: least as u64, found: bytes.len() as u64 });
    }
    Ok(version)
}

fn verify_checksum(bytes: &[u8]) -> Result<&[u8], RecordError> {
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    let mut s = [0u8; 8];
    s.copy_from_slice(sum);
    if xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(s) {
        return Err(RecordError::Checksum);
    }
    Ok(body)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes a block file: checks the magic, version, length and checksum, then
/// every field, decompresses the payload (never past the declared size), and
/// computes the content hash (compare it with the file's name).
///
/// ```
/// use colloquy::store::{decode_block, RecordError};
/// assert!(matches!(decode_block(b"CLQYKVBK"), Err(RecordError::Truncated { .. })));
/// assert!(matches!(decode_block(b"something else"), Err(RecordError::BadMagic(_))));
/// ```
pub fn decode_block(bytes: &[u8]) -> Result<BlockRecord, RecordError> {
    preamble(bytes, BLOCK_MAGIC, "KV block file", BLOCK_HEADER + CHECKSUM, RECORD_VERSION..=RECORD_VERSION)?;
    let payload_len = u64_at(bytes, BLOCK_HEADER - 8);
    let total = payload_len
        .checked_add((BLOCK_HEADER + CHECKSUM) as u64)
        .ok_or_else(|| corrupt("payload length overflows"))?;
    if (bytes.len() as u64) < total {
        return Err(RecordError::Truncated { expected: total, found: bytes.len() as u64 });
    }
    if bytes.len() as u64 != total {
        // Longer than declared: something changed.
        return Err(RecordError::Checksum);
    }
    let body = verify_checksum(bytes)?;
    let mut r = Reader { b: body, pos: 12 };
    let flags = r.u8().map_err(field)?;
    if flags & !FLAG_ZSTD != 0 {
        return Err(corrupt(format!("unknown block flags {flags:#x}")));
    }
    let layout = format::decode_layout(&mut r).map_err(field)?;
    let positions = r.u32().map_err(field)? as usize;
    let raw_len = r.u64().map_err(field)?;
    r.u64().map_err(field)?; // payload length, checked above
    if positions == 0 || positions > BLOCK_TOKENS {
        return Err(corrupt(format!("a block holds 1 to {BLOCK_TOKENS} positions, not {positions}")));
    }
    let per_token = checked_per_token(&layout)?;
    let need = per_token * positions;
    if raw_len != need as u64 {
        return Err(corrupt(format!(
            "{positions} positions need {need} bytes of rows, the header says {raw_len}"
        )));
    }
    let payload = &body[BLOCK_HEADER..];
    let decompressed;
    let raw = if flags & FLAG_ZSTD != 0 {
        decompressed = decompress(payload, need)?;
        &decompressed[..]
    } else {
        if payload.len() != need {
            return Err(corrupt(format!(
                "an uncompressed payload of {} bytes, {need} expected",
                payload.len()
            )));
        }
        payload
    };
    let hash = block_hash(&layout, positions, raw);
    let block =
        format::decode_block_rows(&mut Reader { b: raw, pos: 0 }, &layout, positions).map_err(field)?;
    Ok(BlockRecord { layout, positions, compressed: flags & FLAG_ZSTD != 0, hash, block })
}

/// zstd-decompresses exactly `size` bytes, reading no more than `size + 1`.
fn decompress(payload: &[u8], size: usize) -> Result<Vec<u8>, RecordError> {
    use std::io::Read;
    let mut out = Vec::with_capacity(size);
    let decoder =
        zstd::stream::read::Decoder::with_buffer(payload).map_err(|e| corrupt(format!("zstd: {e}")))?;
    decoder.take(size as u64 + 1).read_to_end(&mut out).map_err(|e| corrupt(format!("zstd: {e}")))?;
    if out.len() != size {
        return Err(corrupt(format!("the payload decompresses to {} bytes, {size} expected", out.len())));
    }
    Ok(out)
}

/// A decoded session manifest: everything a session holds except its K/V,
/// which is the ordered list of its blocks.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The session's version: it changes with every save, and a save
    /// succeeds only over the version its session was loaded from. Manifests
    /// written before versions existed (format 1 and 2) read as version 0.
    pub version: u64,
    /// The model the session belongs to.
    pub fingerprint: Fingerprint,
    /// The session's KV layout (each block has one of its lanes' layouts).
    pub layout: KvLayout,
    /// The tokens the model has read.
    pub tokens: Vec<u32>,
    /// The messages the model has read.
    pub history: Vec<ChatMessage>,
    /// The latest answer, not yet fed back.
    pub pending: Option<String>,
    /// Messages dropped from the context to make room, oldest first.
    pub dropped: Vec<ChatMessage>,
    /// The session's random stream.
    pub rng: RngState,
    /// The K/V of `tokens` in the global lane, one block per [`BLOCK_TOKENS`]
    /// positions, in order.
    pub blocks: Vec<BlockHash>,
    /// The window lane's held blocks: (block index, hash), in order (empty
    /// without a window).
    pub window_blocks: Vec<(usize, BlockHash)>,
    /// Where the window is kept for going back to (see `KvCache::set_rewind_point`).
    pub rewind_point: Option<usize>,
}

impl Manifest {
    /// The messages, the latest (pending) answer included, as
    /// [`LlamaChatSession::transcript`](crate::LlamaChatSession::transcript) lists them.
    pub fn transcript(&self) -> Vec<ChatMessage> {
        let mut all = self.history.clone();
        if let Some(a) = &self.pending {
            all.push(ChatMessage::new(MessageType::ModelAnswer, a.clone()));
        }
        all
    }

    /// Every block the session references: the global lane, then the window lane.
    pub fn all_blocks(&self) -> impl Iterator<Item = BlockHash> + '_ {
        self.blocks.iter().copied().chain(self.window_blocks.iter().map(|&(_, h)| h))
    }
}

/// A manifest, at session version `version`, for the session `s` whose
/// global-lane blocks are `blocks` and whose held window blocks are `window`
/// (index, hash).
pub(crate) fn encode_manifest(
    s: &SessionState,
    version: u64,
    blocks: &[BlockHash],
    window: &[(usize, BlockHash)],
) -> Vec<u8> {
    let mut w = Vec::with_capacity(128 + s.tokens.len() * 4 + (blocks.len() + window.len()) * 20);
    w.extend_from_slice(MANIFEST_MAGIC);
    w.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
    w.extend_from_slice(&0u64.to_le_bytes()); // total length, patched below
    w.extend_from_slice(&version.to_le_bytes());
    format::encode_meta(&mut w, s);
    w.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in blocks {
        w.extend_from_slice(&b.0.to_le_bytes());
    }
    // The window lane, as the session format writes it, with hashes for rows.
    if s.kv.layout().window.is_some() {
        let rewind = s.kv.rewind_point().map_or(u32::MAX, |r| r as u32);
        w.extend_from_slice(&rewind.to_le_bytes());
        w.extend_from_slice(&(window.len() as u32).to_le_bytes());
        for (b, _) in window {
            w.extend_from_slice(&(*b as u32).to_le_bytes());
        }
        for (_, h) in window {
            w.extend_from_slice(&h.0.to_le_bytes());
        }
    }
    let total = (w.len() + CHECKSUM) as u64;
    w[12..20].copy_from_slice(&total.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&w);
    w.extend_from_slice(&sum.to_le_bytes());
    w
}

/// The manifest `bytes` at another session version. Manifests older than
/// version 3 have no version field and are returned as they are (they read as
/// version 0).
pub(crate) fn with_version(bytes: &[u8], version: u64) -> Result<Vec<u8>, RecordError> {
    decode_manifest(bytes)?;
    let mut w = bytes.to_vec();
    if u32::from_le_bytes([w[8], w[9], w[10], w[11]]) < 3 {
        return Ok(w);
    }
    w.truncate(w.len() - CHECKSUM);
    let at = MANIFEST_SESSION_VERSION_AT;
    w[at..at + 8].copy_from_slice(&version.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&w);
    w.extend_from_slice(&sum.to_le_bytes());
    Ok(w)
}

/// Decodes a session manifest: checks the magic, version, length and
/// checksum, then every field, and that there is one block per
/// [`BLOCK_TOKENS`] tokens.
///
/// ```
/// use colloquy::store::{decode_manifest, RecordError};
/// assert!(matches!(decode_manifest(b""), Err(RecordError::Truncated { .. })));
/// ```
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, RecordError> {
    let version = preamble(
        bytes,
        MANIFEST_MAGIC,
        "session manifest",
        MANIFEST_PREAMBLE + CHECKSUM,
        1..=MANIFEST_VERSION,
    )?;
    let total = u64_at(bytes, 12);
    if (bytes.len() as u64) < total {
        return Err(RecordError::Truncated { expected: total, found: bytes.len() as u64 });
    }
    if bytes.len() as u64 != total {
        return Err(RecordError::Checksum);
    }
    let body = verify_checksum(bytes)?;
    let mut r = Reader { b: body, pos: MANIFEST_PREAMBLE };
    // Manifest versions 1 to 3 hold session-format meta fields of the same version.
    let session_version = if version >= 3 { r.u64().map_err(field)? } else { 0 };
    let m = format::decode_meta(&mut r, version).map_err(field)?;
    let n_blocks = r.count(16).map_err(field)?;
    if n_blocks != m.tokens.len().div_ceil(BLOCK_TOKENS) {
        return Err(corrupt(format!("{n_blocks} KV blocks cannot hold {} positions", m.tokens.len())));
    }
    if n_blocks > 0 {
        checked_per_token(&m.layout)?;
    }
    let blocks = (0..n_blocks).map(|_| read_hash(&mut r)).collect::<Result<Vec<_>, _>>()?;
    let (rewind_point, held) = match m.layout.window {
        Some(_) => format::decode_window_index(&mut r, n_blocks).map_err(field)?,
        None => (None, Vec::new()),
    };
    if rewind_point.is_some_and(|p| p > m.tokens.len()) {
        return Err(corrupt("the rewind point is past the end"));
    }
    if held.len().saturating_mul(16) > r.left() {
        return Err(corrupt("the window block list runs past the end"));
    }
    let window_blocks =
        held.into_iter().map(|b| Ok((b, read_hash(&mut r)?))).collect::<Result<Vec<_>, _>>()?;
    if r.pos != body.len() {
        return Err(corrupt("trailing bytes after the block list"));
    }
    Ok(Manifest {
        version: session_version,
        fingerprint: m.fingerprint,
        layout: m.layout,
        tokens: m.tokens,
        history: m.history,
        pending: m.pending,
        dropped: m.dropped,
        rng: m.rng,
        blocks,
        window_blocks,
        rewind_point,
    })
}

fn read_hash(r: &mut Reader<'_>) -> Result<BlockHash, RecordError> {
    let mut h = [0u8; 16];
    h.copy_from_slice(r.take(16).map_err(field)?);
    Ok(BlockHash(u128::from_le_bytes(h)))
}
