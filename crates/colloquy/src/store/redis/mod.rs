//! The Redis backend: sessions shared by every server that points at one
//! Redis or Redis Cluster.
//!
//! Keys (with the default prefix `colloquy`):
//! - `colloquy:b:{<hash>}`: a block record, written with `SET NX` (a racing
//!   put can only lose to an identical copy). Its hash (xxh3-128 of the
//!   layout, the used positions and the rows; the model's fingerprint and the
//!   tokens decide the rows) is the hash tag, so blocks spread over the
//!   cluster's slots.
//! - `colloquy:t:{<hash>}`: the block's keep mark, set with an expiry by every
//!   write that uses the block; garbage collection never removes a marked block.
//! - `{colloquy}:m:<id>`: a session's manifest, a hash of `v` (version), `m`
//!   (the record) and `t` (written at, ms); `{colloquy}:ids`: the set of ids.
//!   They share one hash tag, so a Lua script swaps a manifest and updates
//!   the ids atomically on a cluster too.
//!
//! The garbage collection protocol is in `docs/session-store.md`.

use std::time::{Duration, Instant, SystemTime};

use redis::{cmd, Script, Value};

use super::backend::{BlockWriter, Expect, StoreBackend, StoredManifest, Swap};
use super::{BlockHash, GcStats, StoreUsage};
use crate::error::{Error, Result};

mod conn;
use conn::{Conn, Pool};
mod gc;

/// How long a block stays marked after a write used it: garbage collection
/// leaves it alone that long. A save must swap its manifest within half of it.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(10 * 60);

const COMMIT: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == 'absent' and cur then return {0, cur} end
if ARGV[1] == 'version' and cur ~= ARGV[2] then
  if cur then return {0, cur} else return {0} end
end
local old = redis.call('HGET', KEYS[1], 'm')
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'm', ARGV[4], 't', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[6])
if old then return {1, old} else return {1} end
"#;

const DELETE: &str = r#"
local old = redis.call('HGET', KEYS[1], 'm')
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return old
"#;

/// A session store in Redis or a Redis Cluster (see the [module documentation](self)).
///
/// ```no_run
/// use colloquy::store::{RedisBackend, SessionStore};
/// let backend = RedisBackend::open("redis+cluster://10.0.0.1:7000,10.0.0.2:7000").unwrap();
/// let store = SessionStore::with_backend(Box::new(backend));
/// ```
pub struct RedisBackend {
    pool: Pool,
    grace: Duration,
    commit: Script,
    delete: Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").field("url", &self.pool.target.shown).finish()
    }
}

/// An integer reply.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// A string reply's bytes (`None`: nil or another kind).
fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

fn parse_version(v: Option<Vec<u8>>) -> Option<u64> {
    v.and_then(|b| String::from_utf8(b).ok()).and_then(|s| s.parse().ok())
}

fn unexpected(what: &str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "unexpected reply", what.to_string()))
}

impl RedisBackend {
    /// Connects to `redis://[user:pass@]host:port[/db]` or
    /// `redis+cluster://[user:pass@]host:port[,host:port…]`; `?prefix=NAME`
    /// puts the keys under another name than `colloquy`. Checks that the
    /// server answers ([`Error::StoreUnavailable`] otherwise).
    pub fn open(url: &str) -> Result<RedisBackend> {
        let pool = Pool::new(conn::parse_url(url)?)?;
        let backend = RedisBackend {
            pool,
            grace: DEFAULT_GC_GRACE,
            commit: Script::new(COMMIT),
            delete: Script::new(DELETE),
        };
        backend.health()?;
        Ok(backend)
    }

    /// Checks a store URL without connecting (the syntax [`open`](Self::open)
    /// takes) and returns it as the store shows it: password hidden, prefix
    /// named.
    ///
    /// ```
    /// use colloquy::store::RedisBackend;
    /// let shown = RedisBackend::check_url("redis://app:secret@10.0.0.5:6379/2").unwrap();
    /// assert_eq!(shown, "redis://app:***@10.0.0.5:6379/2?prefix=colloquy");
    /// assert!(RedisBackend::check_url("redis://a:1,b:2").is_err()); // several hosts need redis+cluster://
    /// ```
    pub fn check_url(url: &str) -> Result<String> {
        Ok(conn::parse_url(url)?.shown)
    }

    /// `url` as it may be printed: any `user:password@` becomes `***@`
    /// (other text is returned as it is).
    ///
    /// ```
    /// use colloquy::store::RedisBackend;
    /// assert_eq!(RedisBackend::redact_url("redis://u:secret@h:1/0"), "redis://***@h:1/0");
    /// assert_eq!(RedisBackend::redact_url("/var/sessions"), "/var/sessions");
    /// ```
    pub fn redact_url(url: &str) -> String {
        conn::redacted(url)
    }

    /// How long a block stays marked after a write used it (default
    /// [`DEFAULT_GC_GRACE`]). Every server on one store should use the same.
    ///
    /// ```no_run
    /// let backend = colloquy::store::RedisBackend::open("redis://127.0.0.1:6379/0")
    ///     .unwrap()
    ///     .with_gc_grace(std::time::Duration::from_secs(60));
    /// ```
    pub fn with_gc_grace(mut self, grace: Duration) -> RedisBackend {
        self.grace = grace.max(Duration::from_millis(10));
        self
    }

    /// Redis's `INFO` for `section` (`memory`, `stats`, `persistence`…), as
    /// it prints it: for operators and benchmarks. On a cluster, one node's.
    ///
    /// ```no_run
    /// let redis = colloquy::store::RedisBackend::open("redis://127.0.0.1:6379/0").unwrap();
    /// let aof = redis.info("persistence").unwrap().contains("aof_enabled:1");
    /// ```
    pub fn info(&self, section: &str) -> Result<String> {
        self.with(true, |c| c.query(cmd("INFO").arg(section)))
    }

    fn prefix(&self) -> &str {
        &self.pool.target.prefix
    }

    fn block_key(&self, h: BlockHash) -> String {
        format!("{}:b:{{{h}}}", self.prefix())
    }

    fn mark_key(&self, h: BlockHash) -> String {
        format!("{}:t:{{{h}}}", self.prefix())
    }

    fn manifest_key(&self, id: &str) -> String {
        format!("{{{}}}:m:{id}", self.prefix())
    }

    fn ids_key(&self) -> String {
        format!("{{{}}}:ids", self.prefix())
    }

    fn with<T>(&self, retry: bool, f: impl FnMut(&mut Conn) -> redis::RedisResult<T>) -> Result<T> {
        self.pool.with(retry, f)
    }

    /// Marks blocks as used by a write (and so kept from gc); returns whether each exists.
    fn mark(&self, hashes: &[BlockHash]) -> Result<Vec<bool>> {
        let ms = self.grace.as_millis() as u64;
        let mut cmds = Vec::with_capacity(2 * hashes.len());
        for &h in hashes {
            cmds.push(cmd("SET").arg(self.mark_key(h)).arg(1).arg("PX").arg(ms).to_owned());
            cmds.push(cmd("EXISTS").arg(self.block_key(h)).to_owned());
        }
        let replies = self.with(true, |c| c.pipeline(cmds.clone()))?;
        Ok(replies.chunks(2).map(|r| r.get(1).and_then(int) == Some(1)).collect())
    }
}

impl StoreBackend for RedisBackend {
    fn location(&self) -> String {
        self.pool.target.shown.clone()
    }

    fn read_manifest(&self, id: &str) -> Result<Option<StoredManifest>> {
        let key = self.manifest_key(id);
        let (m, t): (Option<Vec<u8>>, Option<u64>) =
            self.with(true, |c| c.query(cmd("HMGET").arg(&key).arg("m").arg("t")))?;
        Ok(m.map(|bytes| StoredManifest {
            bytes,
            modified: SystemTime::UNIX_EPOCH + Duration::from_millis(t.unwrap_or(0)),
        }))
    }

    fn manifest_version(&self, id: &str) -> Result<Option<u64>> {
        let key = self.manifest_key(id);
        let v: Option<Vec<u8>> = self.with(true, |c| c.query(cmd("HGET").arg(&key).arg("v")))?;
        Ok(parse_version(v))
    }

    fn ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self.with(true, |c| c.query(cmd("SMEMBERS").arg(self.ids_key())))?;
        ids.sort();
        Ok(ids)
    }

    fn get_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Vec<u8>>>> {
        let cmds: Vec<_> = hashes.iter().map(|&h| cmd("GET").arg(self.block_key(h)).to_owned()).collect();
        let replies = self.with(true, |c| c.pipeline(cmds.clone()))?;
        Ok(replies.into_iter().map(bytes).collect())
    }

    fn block_sizes(&self, hashes: &[BlockHash]) -> Result<Vec<Option<u64>>> {
        let cmds: Vec<_> = hashes.iter().map(|&h| cmd("STRLEN").arg(self.block_key(h)).to_owned()).collect();
        let replies = self.with(true, |c| c.pipeline(cmds.clone()))?;
        Ok(replies.iter().map(|v| int(v).filter(|&n| n > 0).map(|n| n as u64)).collect())
    }

    fn begin_write(&self) -> Result<Box<dyn BlockWriter + '_>> {
        Ok(Box::new(RedisWrite { store: self, started: Instant::now(), held: Vec::new() }))
    }

    fn delete_manifest(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let (key, ids) = (self.manifest_key(id), self.ids_key());
        self.with(false, |c| {
            let v: Value = self.delete.key(&key).key(&ids).arg(id).invoke(c.as_like())?;
            Ok(bytes(v))
        })
    }

    /// Left to [`gc`](StoreBackend::gc): telling whether another manifest
    /// names a block means reading them all.
    fn collect(&self, _candidates: &[BlockHash]) -> Result<usize> {
        Ok(0)
    }

    fn gc(&self) -> Result<GcStats> {
        self.sweep()
    }

    fn usage(&self) -> Result<StoreUsage> {
        self.measure()
    }

    fn health(&self) -> Result<()> {
        let pong: String = self.with(true, |c| c.query(&cmd("PING")))?;
        match pong.as_str() {
            "PONG" => Ok(()),
            other => Err(Error::StoreUnavailable {
                store: self.location(),
                reason: format!("PING answered {other:?}"),
            }),
        }
    }
}

/// A save in Redis: the blocks it marked, and when it started marking.
struct RedisWrite<'a> {
    store: &'a RedisBackend,
    started: Instant,
    held: Vec<BlockHash>,
}

impl BlockWriter for RedisWrite<'_> {
    fn missing(&mut self, hashes: &[BlockHash]) -> Result<Vec<bool>> {
        self.held.extend_from_slice(hashes);
        Ok(self.store.mark(hashes)?.into_iter().map(|present| !present).collect())
    }

    fn put(&mut self, blocks: &[(BlockHash, Vec<u8>)]) -> Result<Vec<bool>> {
        let s = self.store;
        let ms = s.grace.as_millis() as u64;
        let mut cmds = Vec::with_capacity(2 * blocks.len());
        for (h, b) in blocks {
            self.held.push(*h);
            cmds.push(cmd("SET").arg(s.mark_key(*h)).arg(1).arg("PX").arg(ms).to_owned());
            cmds.push(cmd("SET").arg(s.block_key(*h)).arg(b.as_slice()).arg("NX").to_owned());
        }
        // SET NX is idempotent: a retry on a fresh connection is safe.
        let replies = s.with(true, |c| c.pipeline(cmds.clone()))?;
        Ok(replies.chunks(2).map(|r| matches!(r.get(1), Some(Value::Okay))).collect())
    }

    fn commit(self: Box<Self>, id: &str, expect: Expect, version: u64, manifest: &[u8]) -> Result<Swap> {
        let s = self.store;
        // The marks of the first blocks may be close to expiring: mark every
        // block again, and give up if gc took one meanwhile.
        if self.started.elapsed() > s.grace / 2 {
            let present = s.mark(&self.held)?;
            if let Some(i) = present.iter().position(|p| !p) {
                return Err(Error::StoreBusy(format!(
                    "the save took longer than half the gc grace, and block {} was collected meanwhile; save again",
                    self.held[i]
                )));
            }
        }
        let (mode, expected) = match expect {
            Expect::Any => ("any", String::new()),
            Expect::Absent => ("absent", String::new()),
            Expect::Version(v) => ("version", v.to_string()),
        };
        let now =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let (key, ids) = (s.manifest_key(id), s.ids_key());
        let mut attempt = 0;
        s.with(true, |c| {
            attempt += 1;
            let reply: Vec<Value> = s
                .commit
                .key(&key)
                .key(&ids)
                .arg(mode)
                .arg(&expected)
                .arg(version.to_string())
                .arg(manifest)
                .arg(now)
                .arg(id)
                .invoke(c.as_like())?;
            let mut it = reply.into_iter();
            let done = it.next().as_ref().and_then(int).ok_or_else(|| unexpected("commit"))?;
            let rest = it.next().and_then(bytes);
            Ok(match done {
                1 => Swap::Done { previous: rest },
                _ => {
                    let found = parse_version(rest);
                    // A retry after a lost reply finds its own swap done.
                    if attempt > 1 && found == Some(version) {
                        Swap::Done { previous: None }
                    } else {
                        Swap::Conflict { found }
                    }
                }
            })
        })
    }
}
