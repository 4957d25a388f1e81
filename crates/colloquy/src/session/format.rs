//! Session bytes, format v1 (documented in `docs/session-format.md`).
//!
//! Layout, all integers little-endian:
//!
//! ```text
//! magic "CLQYSESS" | version u32 | total_len u64 | fingerprint [16]
//! layout: n_layers u32, n_kv_heads u32, head_dim u32, dtype u8, block_tokens u32
//! tokens: count u32, ids u32 × count
//! history: count u32, (role u8, len u32, utf8) × count
//! pending answer: flag u8, (len u32, utf8)?
//! rng: seed u64, word_pos u128
//! kv: for each block, for each layer: K rows, then V rows, of the block's used positions
//! checksum: xxh3-64 of every byte before it, u64
//! ```

use std::sync::Arc;

use colloquy_engine::kv::{KvBlock, KvCache, KvData, KvDtype, KvLayout, BLOCK_TOKENS};
use colloquy_engine::sampler::RngState;
use half::f16;

use super::{Fingerprint, SessionState};
use crate::error::{Error, Result};
use crate::message::{ChatMessage, MessageType};

/// The first bytes of every session.
pub const MAGIC: &[u8; 8] = b"CLQYSESS";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// magic + version + total length.
const PREAMBLE: usize = 8 + 4 + 8;
const CHECKSUM: usize = 8;

pub(crate) fn encode(s: &SessionState) -> Vec<u8> {
    let mut w = Vec::with_capacity(64 + s.kv.used_bytes() + s.tokens.len() * 4);
    w.extend_from_slice(MAGIC);
    put_u32(&mut w, VERSION);
    put_u64(&mut w, 0); // total length, patched below
    w.extend_from_slice(&s.fingerprint.0);
    let l = s.kv.layout();
    put_u32(&mut w, l.n_layers as u32);
    put_u32(&mut w, l.n_kv_heads as u32);
    put_u32(&mut w, l.head_dim as u32);
    w.push(match l.dtype {
        KvDtype::F16 => 0,
        KvDtype::F32 => 1,
    });
    put_u32(&mut w, BLOCK_TOKENS as u32);
    put_u32(&mut w, s.tokens.len() as u32);
    for &t in &s.tokens {
        put_u32(&mut w, t);
    }
    put_u32(&mut w, s.history.len() as u32);
    for m in &s.history {
        w.push(m.role().to_byte());
        put_str(&mut w, m.content());
    }
    match &s.pending {
        None => w.push(0),
        Some(a) => {
            w.push(1);
            put_str(&mut w, a);
        }
    }
    put_u64(&mut w, s.rng.seed);
    w.extend_from_slice(&s.rng.word_pos.to_le_bytes());
    encode_kv(&mut w, &s.kv);
    let total = (w.len() + CHECKSUM) as u64;
    w[12..20].copy_from_slice(&total.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&w);
    put_u64(&mut w, sum);
    w
}

fn encode_kv(w: &mut Vec<u8>, kv: &KvCache) {
    let l = kv.layout();
    let row = l.row();
    for (b, block) in kv.blocks().iter().enumerate() {
        let used = (kv.len() - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        for layer in 0..l.n_layers {
            let range = layer * BLOCK_TOKENS * row..(layer * BLOCK_TOKENS + used) * row;
            for data in [&block.k, &block.v] {
                match data {
                    KvData::F16(d) => d[range.clone()].iter().for_each(|x| w.extend_from_slice(&x.to_le_bytes())),
                    KvData::F32(d) => d[range.clone()].iter().for_each(|x| w.extend_from_slice(&x.to_le_bytes())),
                }
            }
        }
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
    if version != VERSION {
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
    let mut fp = [0u8; 16];
    fp.copy_from_slice(r.take(16)?);
    let n_layers = r.u32()? as usize;
    let n_kv_heads = r.u32()? as usize;
    let head_dim = r.u32()? as usize;
    let dtype = match r.u8()? {
        0 => KvDtype::F16,
        1 => KvDtype::F32,
        d => return Err(corrupt(format!("unknown KV type {d}"))),
    };
    if r.u32()? as usize != BLOCK_TOKENS {
        return Err(corrupt("KV block size differs from this build's"));
    }
    let layout = KvLayout { n_layers, n_kv_heads, head_dim, dtype };
    let n_tokens = r.count(4)?;
    let tokens = (0..n_tokens).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
    let n_msgs = r.count(5)?;
    let mut history = Vec::with_capacity(n_msgs);
    for _ in 0..n_msgs {
        let role = MessageType::from_byte(r.u8()?).ok_or_else(|| corrupt("unknown message role"))?;
        history.push(ChatMessage::new(role, r.string()?));
    }
    let pending = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        f => return Err(corrupt(format!("bad pending-answer flag {f}"))),
    };
    let seed = r.u64()?;
    let mut wp = [0u8; 16];
    wp.copy_from_slice(r.take(16)?);
    let rng = RngState { seed, word_pos: u128::from_le_bytes(wp) };
    let kv = decode_kv(&mut r, layout, n_tokens)?;
    if r.pos != body.len() {
        return Err(corrupt("trailing bytes after the KV data"));
    }
    Ok(SessionState { fingerprint: Fingerprint(fp), kv, tokens, history, pending, rng, last_turn: None })
}

fn decode_kv(r: &mut Reader<'_>, layout: KvLayout, n: usize) -> Result<KvCache> {
    let row = layout.row();
    let per_token = layout
        .n_layers
        .checked_mul(2)
        .and_then(|x| x.checked_mul(row))
        .and_then(|x| x.checked_mul(layout.dtype.size()))
        .ok_or_else(|| corrupt("KV layout overflows"))?;
    // Check the size before allocating anything.
    let need = per_token.checked_mul(n).ok_or_else(|| corrupt("KV size overflows"))?;
    if need != r.left() {
        return Err(corrupt(format!("KV data is {} bytes, {n} positions need {need}", r.left())));
    }
    if n > 0 && per_token == 0 {
        return Err(corrupt("empty KV layout"));
    }
    let mut blocks = Vec::with_capacity(n.div_ceil(BLOCK_TOKENS));
    for b in 0..n.div_ceil(BLOCK_TOKENS) {
        let used = (n - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        let size = layout.n_layers * BLOCK_TOKENS * row;
        let mut block = KvBlock::zeroed(&layout);
        for layer in 0..layout.n_layers {
            let range = layer * BLOCK_TOKENS * row..(layer * BLOCK_TOKENS + used) * row;
            for data in [&mut block.k, &mut block.v] {
                let bytes = r.take(range.len() * layout.dtype.size())?;
                match data {
                    KvData::F16(d) => {
                        for (o, c) in d[range.clone()].iter_mut().zip(bytes.chunks_exact(2)) {
                            *o = f16::from_le_bytes([c[0], c[1]]);
                        }
                    }
                    KvData::F32(d) => {
                        for (o, c) in d[range.clone()].iter_mut().zip(bytes.chunks_exact(4)) {
                            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                        }
                    }
                }
            }
        }
        debug_assert!(size > 0);
        blocks.push(Arc::new(block));
    }
    Ok(KvCache::from_blocks(layout, n, blocks, n)?)
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
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(corrupt(format!("a field of {n} bytes runs past the end")));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of items of at least `min` bytes each, checked against what is left.
    fn count(&mut self, min: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.left() {
            return Err(corrupt(format!("{n} items cannot fit in {} bytes", self.left())));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("a message is not valid UTF-8"))
    }
}
