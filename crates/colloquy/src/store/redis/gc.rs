//! Garbage collection and usage in Redis: mark-and-sweep with a grace period
//! (the protocol is in `docs/session-store.md`).
//!
//! Blocks are found with `SCAN` on every master (a cluster's keys are spread
//! over them); manifests through the ids set.

use std::collections::HashSet;
use std::time::Instant;

use redis::{cmd, Script, Value};

use super::{bytes, int, RedisBackend};
use crate::error::{Error, Result};
use crate::store::backend::StoreBackend;
use crate::store::{decode_manifest, BlockHash, GcStats, StoreUsage};

/// Removes a block unless a write marked it; returns the bytes removed.
/// Both keys carry the block's hash tag, so they share a slot.
const SWEEP_ONE: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local n = redis.call('STRLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
"#;

/// Manifests read per round trip.
const BATCH: usize = 64;

impl RedisBackend {
    /// The addresses (`host:port`) of the masters, or `None` on a single server.
    fn masters(&self) -> Result<Option<Vec<String>>> {
        if !self.pool.target.cluster {
            return Ok(None);
        }
        let nodes: String = self.with(true, |c| c.query(cmd("CLUSTER").arg("NODES")))?;
        let mut out = Vec::new();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() > 2 && f[2].split(',').any(|x| x == "master") && !f[2].contains("fail") {
                // ip:port@cport[,hostname]
                let addr = f[1].split('@').next().unwrap_or_default();
                if !addr.is_empty() && !addr.starts_with(':') {
                    out.push(addr.to_string());
                }
            }
        }
        Ok(Some(out))
    }

    /// Every key matching `pattern`, on every master.
    fn scan(&self, pattern: &str) -> Result<Vec<Vec<u8>>> {
        let scan_on = |con: &mut dyn redis::ConnectionLike| -> redis::RedisResult<Vec<Vec<u8>>> {
            let mut keys = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<Vec<u8>>) =
                    cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query(con)?;
                keys.extend(batch);
                if next == 0 {
                    return Ok(keys);
                }
                cursor = next;
            }
        };
        match self.masters()? {
            None => self.with(true, |c| scan_on(c.as_like())),
            Some(masters) => {
                let mut keys = Vec::new();
                for addr in masters {
                    let mut con = self.pool.connect_node(&addr)?;
                    keys.extend(scan_on(&mut con).map_err(|e| self.pool.unavailable(e))?);
                }
                Ok(keys)
            }
        }
    }

    /// The hash named by a block or mark key (`prefix:b:{hash}`).
    fn key_hash(key: &[u8]) -> Option<BlockHash> {
        let key = std::str::from_utf8(key).ok()?;
        let open = key.rfind('{')?;
        BlockHash::parse(key.get(open + 1..key.len().checked_sub(1)?)?)
    }

    /// The manifests' bytes, by id (ids whose manifest is gone are skipped).
    fn manifests(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let ids = self.ids()?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let cmds: Vec<_> =
                chunk.iter().map(|id| cmd("HGET").arg(self.manifest_key(id)).arg("m").to_owned()).collect();
            let replies = self.with(true, |c| c.pipeline(cmds.clone()))?;
            for (id, v) in chunk.iter().zip(replies) {
                if let Some(b) = bytes(v) {
                    out.push((id.clone(), b));
                }
            }
        }
        Ok(out)
    }

    /// Every block some manifest names. Fails on a manifest that cannot be
    /// read: the blocks it names are unknown.
    fn referenced(&self) -> Result<HashSet<BlockHash>> {
        let mut all = HashSet::new();
        for (id, b) in self.manifests()? {
            let m = decode_manifest(&b)
                .map_err(|e| Error::StoreManifestCorrupt { session: id, reason: e.to_string() })?;
            all.extend(m.all_blocks());
        }
        Ok(all)
    }

    /// Mark and sweep. The sweep of a block and the check of its mark are
    /// one script; the manifests are read again whenever the sweep has run
    /// for half the grace period, so that a manifest swapped in after they
    /// were read always names blocks whose marks have not expired.
    pub(super) fn sweep(&self) -> Result<GcStats> {
        let one = Script::new(SWEEP_ONE);
        let mut stats = GcStats::default();
        let mut started = Instant::now();
        let mut referenced = self.referenced()?;
        let pattern = format!("{}:b:{{*}}", self.prefix());
        for key in self.scan(&pattern)? {
            let Some(hash) = Self::key_hash(&key) else { continue };
            if started.elapsed() > self.grace / 2 {
                started = Instant::now();
                referenced = self.referenced()?;
            }
            if referenced.contains(&hash) {
                stats.blocks_kept += 1;
                continue;
            }
            let (b, t) = (self.block_key(hash), self.mark_key(hash));
            let n: i64 = self.with(true, |c| one.key(&b).key(&t).invoke(c.as_like()))?;
            if n >= 0 {
                stats.blocks_removed += 1;
                stats.bytes_removed += n as u64;
            } else {
                stats.blocks_kept += 1;
            }
        }
        Ok(stats)
    }

    /// Counts manifests and blocks and their bytes.
    pub(super) fn measure(&self) -> Result<StoreUsage> {
        let mut u = StoreUsage::default();
        for (_, b) in self.manifests()? {
            u.sessions += 1;
            u.manifest_bytes += b.len() as u64;
        }
        let keys = self.scan(&format!("{}:b:{{*}}", self.prefix()))?;
        for chunk in keys.chunks(BATCH) {
            let cmds: Vec<_> = chunk.iter().map(|k| cmd("STRLEN").arg(k.as_slice()).to_owned()).collect();
            let replies: Vec<Value> = self.with(true, |c| c.pipeline(cmds.clone()))?;
            for n in replies.iter().filter_map(int).filter(|&n| n > 0) {
                u.blocks += 1;
                u.block_bytes += n as u64;
            }
        }
        Ok(u)
    }
}
