//! Session bytes, format v3 (documented in `docs/session-format.md`).
//!
//! Layout, all integers little-endian:
//!
//! ```text
//! magic "CLQYSESS" | version u32 | total_len u64 | fingerprint [16]
//! layout: n_layers u32, n_kv_heads u32, head_dim u32, dtype u8, block_tokens u32
//! window (v2): size u32 (0: none), layers u128 (bit l: layer l is windowed)
//! tokens: count u32, ids u32 × count
//! history: count u32, (role u8, len u32, utf8) × count
//! pending answer: flag u8, (len u32, utf8)?
//! rng: seed u64, word_pos u128
//! dropped (v3): count u32, (role u8, len u32, utf8) × count: messages dropped
//!     from the context (ContextPolicy::DropOldest), oldest first
//! kv, global lane: for each block, for each global layer: K rows, then V rows,
//!     of the block's used positions
//! kv, window lane (v2, only with a window): rewind point u32 (u32::MAX: none),
//!     held count u32, block indices u32 × count (increasing), then the held
//!     blocks' rows as above, for the windowed layers
//! checksum: xxh3-64 of every byte before it, u64
//! ```
//!
//! Version 1 (written before windowed layers were kept apart) has no window
//! fields and stores every layer in the global lane; version 2 has no dropped
//! messages. Both are still read.

use std::sync::Arc;

use colloquy_engine::kv::{KvBlock, KvCache, KvDtype, KvLayout, KvWindow, BLOCK_TOKENS};
use colloquy_engine::sampler::RngState;

use super::{Fingerprint, SessionState};
use crate::error::{Error, Result};
use crate::message::{ChatMessage, MessageType};

/// The first bytes of every session.
pub const MAGIC: &[u8; 8] = b"CLQYSESS";
/// The format version this build writes (it also reads versions 1 and 2).
pub const VERSION: u32 = 3;
/// The oldest version this build reads.
pub const OLDEST_VERSION: u32 = 1;
/// magic + version + total length.
const PREAMBLE: usize = 8 + 4 + 8;
const CHECKSUM: usize = 8;

pub(crate) fn encode(s: &SessionState) -> Vec<u8> {
    let mut w = Vec::with_capacity(64 + s.kv.used_bytes() + s.tokens.len() * 4);
    w.extend_from_slice(MAGIC);
    put_u32(&mut w, VERSION);
    put_u64(&mut w, 0); // total length, patched below
    encode_meta(&mut w, s);
    encode_kv(&mut w, &s.kv);
    let total = (w.len() + CHECKSUM) as u64;
    w[12..20].copy_from_slice(&total.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&w);
    put_u64(&mut w, sum);
    w
}

/// Everything a session holds except its K/V data: the fields between the
/// preamble and the KV data. The session store's manifests share this encoding.
pub(crate) fn encode_meta(w: &mut Vec<u8>, s: &SessionState) {
    w.extend_from_slice(&s.fingerprint.0);
    encode_layout(w, s.kv.layout());
    encode_window(w, s.kv.layout().window);
    put_u32(w, s.tokens.len() as u32);
    for &t in &s.tokens {
        put_u32(w, t);
    }
    put_messages(w, &s.history);
    match &s.pending {
        None => w.push(0),
        Some(a) => {
            w.push(1);
            put_str(w, a);
        }
    }
    put_u64(w, s.rng.seed);
    w.extend_from_slice(&s.rng.word_pos.to_le_bytes());
    put_messages(w, &s.dropped);
}

fn put_messages(w: &mut Vec<u8>, messages: &[ChatMessage]) {
    put_u32(w, messages.len() as u32);
    for m in messages {
        w.push(m.role().to_byte());
        put_str(w, m.content());
    }
}

fn read_messages(r: &mut Reader<'_>) -> Result<Vec<ChatMessage>> {
    let n = r.count(5)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let role = MessageType::from_byte(r.u8()?).ok_or_else(|| corrupt("unknown message role"))?;
        out.push(ChatMessage::new(role, r.string()?));
    }
    Ok(out)
}

/// The KV layout: `n_layers`, `n_kv_heads`, `head_dim` (u32 each), dtype u8, block size u32.
pub(crate) fn encode_layout(w: &mut Vec<u8>, l: &KvLayout) {
    put_u32(w, l.n_layers as u32);
    put_u32(w, l.n_kv_heads as u32);
    put_u32(w, l.head_dim as u32);
    w.push(l.dtype.to_byte());
    put_u32(w, BLOCK_TOKENS as u32);
}

/// The window fields: size u32 (0 when there is none), then the layer mask u128.
fn encode_window(w: &mut Vec<u8>, window: Option<KvWindow>) {
    let (size, layers) = window.map_or((0, 0), |w| (w.size as u32, w.layers));
    put_u32(w, size);
    w.extend_from_slice(&layers.to_le_bytes());
}

/// Positions of block `b` that a cache of `len` positions fills.
pub(crate) fn used_in_block(len: usize, b: usize) -> usize {
    (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS)
}

fn encode_kv(w: &mut Vec<u8>, kv: &KvCache) {
    let global = kv.layout().lane(false);
    for (b, block) in kv.blocks().iter().enumerate() {
        encode_block_rows(w, &global, block, used_in_block(kv.len(), b));
    }
    if kv.layout().window.is_none() {
        return;
    }
    put_u32(w, kv.rewind_point().map_or(u32::MAX, |r| r as u32));
    let held: Vec<(usize, &Arc<KvBlock>)> =
        kv.window_blocks().iter().enumerate().filter_map(|(b, x)| Some((b, x.as_ref()?))).collect();
    put_u32(w, held.len() as u32);
    for (b, _) in &held {
        put_u32(w, *b as u32);
    }
    let local = kv.layout().lane(true);
    for (b, block) in held {
        encode_block_rows(w, &local, block, used_in_block(kv.len(), b));
    }
}

/// One block's used rows: for each layer, the K rows then the V rows of the
/// first `used` positions.
pub(crate) fn encode_block_rows(w: &mut Vec<u8>, l: &KvLayout, block: &KvBlock, used: usize) {
    let row = l.row();
    for layer in 0..l.n_layers {
        let range = layer * BLOCK_TOKENS * row..(layer * BLOCK_TOKENS + used) * row;
        block.k.encode_range(range.clone(), w);
        block.v.encode_range(range, w);
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<SessionState> {
    if bytes.len() < PREAMBLE {
        if bytes.len() >= 8 && &bytes[..8] != MAGIC {
            return Err(Error::SessionBadMagic);
        }
        return Err(Error::SessionTruncated { expected: PREAMBLE as u64, found: bytes.len() as u64 });
    }
    if &bytes[..8] != MAGIC {
        return Err(Error::SessionBadMagic);
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(Error::SessionUnsupportedVersion { found: version, supported: VERSION });
    }
    let mut total = [0u8; 8];
    total.copy_from_slice(&bytes[12..20]);
    let total = u64::from_le_bytes(total);
    if (bytes.len() as u64) < total {
        return Err(Error::SessionTruncated { expected: total, found: bytes.len() as u64 });
    }
    if bytes.len() as u64 != total || total < (PREAMBLE + CHECKSUM) as u64 {
        // A longer input, or a length field that cannot be right: something changed.
        return Err(Error::SessionChecksum);
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    let mut s = [0u8; 8];
    s.copy_from_slice(sum);
    if xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(s) {
        return Err(Error::SessionChecksum);
    }
    let mut r = Reader { b: body, pos: PREAMBLE };
    let m = decode_meta(&mut r, version)?;
    let kv = decode_kv(&mut r, m.layout, m.tokens.len())?;
    if r.pos != body.len() {
        return Err(corrupt("trailing bytes after the KV data"));
    }
    Ok(SessionState {
        fingerprint: m.fingerprint,
        kv,
        tokens: m.tokens,
        history: m.history,
        pending: m.pending,
        rng: m.rng,
        dropped: m.dropped,
        last_turn: None,
        versions: Default::default(),
    })
}

/// What [`decode_meta`] reads.
pub(crate) struct Meta {
    pub fingerprint: Fingerprint,
    pub layout: KvLayout,
    pub tokens: Vec<u32>,
    pub history: Vec<ChatMessage>,
    pub pending: Option<String>,
    pub rng: RngState,
    pub dropped: Vec<ChatMessage>,
}

/// Reads what [`encode_meta`] writes, as session format `version` laid it out
/// (window fields from version 2 on, dropped messages from version 3 on).
pub(crate) fn decode_meta(r: &mut Reader<'_>, version: u32) -> Result<Meta> {
    let mut fp = [0u8; 16];
    fp.copy_from_slice(r.take(16)?);
    let mut layout = decode_layout(r)?;
    if version >= 2 {
        layout = decode_window(r, layout)?;
    }
    let n_tokens = r.count(4)?;
    let tokens = (0..n_tokens).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
    let history = read_messages(r)?;
    let pending = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        f => return Err(corrupt(format!("bad pending-answer flag {f}"))),
    };
    let seed = r.u64()?;
    let mut wp = [0u8; 16];
    wp.copy_from_slice(r.take(16)?);
    let rng = RngState { seed, word_pos: u128::from_le_bytes(wp) };
    let dropped = if version >= 3 { read_messages(r)? } else { Vec::new() };
    Ok(Meta { fingerprint: Fingerprint(fp), layout, tokens, history, pending, rng, dropped })
}

/// Reads what [`encode_layout`] writes.
pub(crate) fn decode_layout(r: &mut Reader<'_>) -> Result<KvLayout> {
    let n_layers = r.u32()? as usize;
    let n_kv_heads = r.u32()? as usize;
    let head_dim = r.u32()? as usize;
    let dtype = r.u8()?;
    let dtype = KvDtype::from_byte(dtype).ok_or_else(|| corrupt(format!("unknown KV type {dtype}")))?;
    if r.u32()? as usize != BLOCK_TOKENS {
        return Err(corrupt("KV block size differs from this build's"));
    }
    let layout = KvLayout::new(n_layers, n_kv_heads, head_dim, dtype);
    if !layout.is_valid() {
        return Err(corrupt("KV heads do not fit the storage type's blocks"));
    }
    Ok(layout)
}

/// Reads what [`encode_window`] writes, into `layout`.
fn decode_window(r: &mut Reader<'_>, layout: KvLayout) -> Result<KvLayout> {
    let size = r.u32()? as usize;
    let mut mask = [0u8; 16];
    mask.copy_from_slice(r.take(16)?);
    let layers = u128::from_le_bytes(mask);
    let window = (size > 0).then_some(KvWindow { size, layers });
    let with = layout.with_window(window);
    if with.window != window {
        return Err(corrupt("the window names layers the model does not have"));
    }
    Ok(with)
}

/// Bytes of K and V per position, or `None` if the layout overflows.
pub(crate) fn bytes_per_token(layout: &KvLayout) -> Option<usize> {
    // n_kv_heads and head_dim come from u32 fields: their product fits in a usize.
    // Every storage type takes at most 4 bytes per element; check each product
    // (with no layers the total is 0, but the row alone may still overflow).
    let row_bytes = layout.row().checked_mul(4)?;
    layout.n_layers.checked_mul(2)?.checked_mul(row_bytes)?;
    Some(layout.bytes_per_token())
}

fn decode_kv(r: &mut Reader<'_>, layout: KvLayout, n: usize) -> Result<KvCache> {
    let (global, local) = (layout.lane(false), layout.lane(true));
    let n_blocks = n.div_ceil(BLOCK_TOKENS);
    let per_token = bytes_per_token(&global).ok_or_else(|| corrupt("KV layout overflows"))?;
    let per_local = bytes_per_token(&local).ok_or_else(|| corrupt("KV layout overflows"))?;
    if n > 0 && per_token == 0 && per_local == 0 {
        return Err(corrupt("empty KV layout"));
    }
    // Check the whole size before allocating anything.
    let global_bytes = per_token.checked_mul(n).ok_or_else(|| corrupt("KV size overflows"))?;
    if global_bytes > r.left() {
        return Err(corrupt(format!("KV data is {} bytes, {n} positions need {global_bytes}", r.left())));
    }
    let mut window_at = r.clone();
    window_at.take(global_bytes)?;
    let (rewind_point, held) = if layout.window.is_some() {
        decode_window_index(&mut window_at, n_blocks)?
    } else {
        (None, Vec::new())
    };
    let local_positions: usize = held.iter().map(|&b| used_in_block(n, b)).sum();
    let local_bytes = per_local.checked_mul(local_positions).ok_or_else(|| corrupt("KV size overflows"))?;
    if local_bytes != window_at.left() {
        let expected = (r.left() - window_at.left()).saturating_add(local_bytes);
        return Err(corrupt(format!("KV data is {} bytes, {n} positions need {expected}", r.left())));
    }
    let mut blocks = Vec::with_capacity(n_blocks);
    for b in 0..n_blocks {
        blocks.push(Arc::new(decode_block_rows(r, &global, used_in_block(n, b))?));
    }
    let mut window = Vec::new();
    if layout.window.is_some() {
        *r = window_at;
        window.resize(n_blocks, None);
        for &b in &held {
            window[b] = Some(Arc::new(decode_block_rows(r, &local, used_in_block(n, b))?));
        }
    }
    KvCache::from_lanes(layout, n, blocks, window, n, rewind_point)
        .map_err(|e| corrupt(format!("KV blocks: {e}")))
}

/// Reads the rewind point and the indices of the held window blocks
/// (increasing, each below `n_blocks`).
pub(crate) fn decode_window_index(
    r: &mut Reader<'_>,
    n_blocks: usize,
) -> Result<(Option<usize>, Vec<usize>)> {
    let rewind = r.u32()?;
    let count = r.count(4)?;
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let b = r.u32()? as usize;
        if b >= n_blocks || held.last().is_some_and(|&last| b <= last) {
            return Err(corrupt(format!("window block index {b} is out of order or range")));
        }
        held.push(b);
    }
    Ok(((rewind != u32::MAX).then_some(rewind as usize), held))
}

/// Reads what [`encode_block_rows`] writes. The caller must have checked that
/// the layout does not overflow and that `used` positions of it fit in what is
/// left (a whole block of the layout is allocated).
pub(crate) fn decode_block_rows(r: &mut Reader<'_>, layout: &KvLayout, used: usize) -> Result<KvBlock> {
    let row = layout.row();
    // Every used row is written below and the rest zeroed: no need to clear it first.
    let mut block = KvBlock::for_overwrite(layout);
    for layer in 0..layout.n_layers {
        let range = layer * BLOCK_TOKENS * row..(layer * BLOCK_TOKENS + used) * row;
        let unused = range.end..(layer + 1) * BLOCK_TOKENS * row;
        let bytes = r.take(layout.dtype.bytes(range.len()))?;
        block.k.decode_range(range.clone(), bytes);
        let bytes = r.take(layout.dtype.bytes(range.len()))?;
        block.v.decode_range(range, bytes);
        block.k.zero_range(unused.clone());
        block.v.zero_range(unused);
    }
    Ok(block)
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::SessionCorrupt(msg.into())
}

fn put_u32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    put_u32(w, s.len() as u32);
    w.extend_from_slice(s.as_bytes());
}

/// A bounds-checked cursor over the checksummed body.
#[derive(Clone)]
pub(crate) struct Reader<'a> {
    pub b: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(corrupt(format!("a field of {n} bytes runs past the end")));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of items of at least `min` bytes each, checked against what is left.
    pub fn count(&mut self, min: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.left() {
            return Err(corrupt(format!("{n} items cannot fit in {} bytes", self.left())));
        }
        Ok(n)
    }

    pub fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("a message is not valid UTF-8"))
    }
}
