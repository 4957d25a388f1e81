//! Connections to Redis or a Redis Cluster: the URL, a small pool, timeouts
//! that make an outage fail fast, and the mapping of Redis errors to ours.

use std::sync::Mutex;
use std::time::Duration;

use redis::{Cmd, ConnectionLike, FromRedisValue, RedisResult, Value};

use crate::error::{Error, Result};

/// How long connecting may take before the store counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one reply may take (a batch of blocks is a few MiB).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections kept open between uses.
const POOL: usize = 8;

/// A parsed store URL: `redis://[user:pass@]host:port[/db][?prefix=P]` or
/// `redis+cluster://[user:pass@]host:port[,host:port…][?prefix=P]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// Connection URLs for the redis crate (one per seed node).
    pub nodes: Vec<String>,
    pub cluster: bool,
    /// Key prefix (default `colloquy`).
    pub prefix: String,
    /// The URL without its password, for messages.
    pub shown: String,
    /// `user:pass@`, or empty: for direct connections to cluster nodes.
    pub auth: String,
}

/// `url` with any `user:password@` replaced by `***@`, for messages.
pub(crate) fn redacted(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?.1))) {
        Some((scheme, host)) => format!("{scheme}://***@{host}"),
        None => url.to_string(),
    }
}

pub(super) fn parse_url(url: &str) -> Result<Target> {
    let bad = |reason: &str| Error::StoreUrl { url: redacted(url), reason: reason.to_string() };
    let (cluster, rest) = if let Some(r) = url.strip_prefix("redis+cluster://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("redis://") {
        (false, r)
    } else {
        return Err(bad("it must start with redis:// or redis+cluster://"));
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut prefix = "colloquy".to_string();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("prefix", p))
                if !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                prefix = p.to_string()
            }
            _ => {
                return Err(bad(&format!(
                    "unknown or invalid option {pair:?} (the one option is prefix=NAME)"
                )))
            }
        }
    }
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let (hosts, db) = hosts.split_once('/').unwrap_or((hosts, ""));
    if !db.is_empty() && (cluster || db.parse::<u32>().is_err()) {
        return Err(bad("the path is a database number (and a cluster has only database 0)"));
    }
    let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Err(bad("it names no host"));
    }
    if !cluster && hosts.len() > 1 {
        return Err(bad("several hosts need redis+cluster://"));
    }
    let db_path = if db.is_empty() { String::new() } else { format!("/{db}") };
    let nodes = hosts.iter().map(|h| format!("redis://{auth}{h}{db_path}")).collect();
    let user = auth.split(':').next().unwrap_or_default().trim_end_matches('@');
    let shown_auth = if auth.is_empty() { String::new() } else { format!("{user}:***@") };
    let scheme = if cluster { "redis+cluster" } else { "redis" };
    let shown = format!("{scheme}://{shown_auth}{}{db_path}?prefix={prefix}", hosts.join(","));
    Ok(Target { nodes, cluster, prefix, shown, auth })
}

pub(super) enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

pub(super) enum Conn {
    Single(redis::Connection),
    // Boxed: a cluster connection is four times the size of a plain one.
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    pub(super) fn as_like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(c) => c,
            Conn::Cluster(c) => &mut **c,
        }
    }

    pub(super) fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        cmd.query(self.as_like())
    }

    /// Sends `cmds` in one round trip (split by node on a cluster; not a
    /// transaction) and returns each reply.
    pub(super) fn pipeline(&mut self, cmds: Vec<Cmd>) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Conn::Single(c) => {
                let mut p = redis::pipe();
                for cmd in cmds {
                    p.add_command(cmd);
                }
                p.query(c)
            }
            Conn::Cluster(c) => {
                let mut p = redis::cluster::cluster_pipe();
                for cmd in cmds {
                    p.add_command(cmd);
                }
                p.query(c)
            }
        }
    }
}

/// The clients, a pool of open connections, and what to call the store.
pub(super) struct Pool {
    client: Client,
    idle: Mutex<Vec<Conn>>,
    pub(super) target: Target,
}

impl Pool {
    pub(super) fn new(target: Target) -> Result<Pool> {
        let url_err =
            |e: redis::RedisError| Error::StoreUrl { url: target.shown.clone(), reason: e.to_string() };
        let client = if target.cluster {
            let c = redis::cluster::ClusterClient::builder(target.nodes.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .build()
                .map_err(url_err)?;
            Client::Cluster(c)
        } else {
            Client::Single(redis::Client::open(target.nodes[0].as_str()).map_err(url_err)?)
        };
        Ok(Pool { client, idle: Mutex::new(Vec::new()), target })
    }

    fn connect(&self) -> RedisResult<Conn> {
        match &self.client {
            Client::Single(c) => {
                let con = c.get_connection_with_timeout(CONNECT_TIMEOUT)?;
                con.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
                con.set_write_timeout(Some(RESPONSE_TIMEOUT))?;
                Ok(Conn::Single(con))
            }
            Client::Cluster(c) => {
                let con = c.get_connection()?;
                con.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
                con.set_write_timeout(Some(RESPONSE_TIMEOUT))?;
                Ok(Conn::Cluster(Box::new(con)))
            }
        }
    }

    /// A direct connection to one node (`host:port`) of a cluster.
    pub(super) fn connect_node(&self, addr: &str) -> Result<redis::Connection> {
        let url = format!("redis://{}{addr}", self.target.auth);
        let con = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(CONNECT_TIMEOUT))
            .and_then(|c| c.set_read_timeout(Some(RESPONSE_TIMEOUT)).map(|()| c))
            .map_err(|e| self.unavailable(e))?;
        Ok(con)
    }

    pub(super) fn unavailable(&self, e: redis::RedisError) -> Error {
        Error::StoreUnavailable { store: self.target.shown.clone(), reason: e.to_string() }
    }

    /// Runs `f` on a pooled connection. A connection that failed is dropped;
    /// when it came from the pool (and so may have gone stale while Redis
    /// restarted) and `retry` allows it, `f` runs once more on a new one.
    pub(super) fn with<T>(&self, retry: bool, mut f: impl FnMut(&mut Conn) -> RedisResult<T>) -> Result<T> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let from_pool = pooled.is_some();
        let mut con = match pooled {
            Some(c) => c,
            None => self.connect().map_err(|e| self.unavailable(e))?,
        };
        let r = match f(&mut con) {
            Err(e) if from_pool && retry && is_connection_error(&e) => {
                con = self.connect().map_err(|e| self.unavailable(e))?;
                f(&mut con)
            }
            r => r,
        };
        match r {
            Ok(v) => {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < POOL {
                    idle.push(con);
                }
                Ok(v)
            }
            Err(e) if is_connection_error(&e) => Err(self.unavailable(e)),
            Err(e) => {
                // A reply we did not expect: the connection may be out of step.
                Err(Error::StoreUnavailable {
                    store: self.target.shown.clone(),
                    reason: format!("unexpected reply: {e}"),
                })
            }
        }
    }
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_nodes_database_and_prefix_and_hide_the_password() {
        let t = parse_url("redis://127.0.0.1:6379/2?prefix=app").unwrap();
        assert_eq!(t.nodes, vec!["redis://127.0.0.1:6379/2"]);
        assert_eq!((t.cluster, t.prefix.as_str()), (false, "app"));
        let t = parse_url("redis+cluster://u:secret@a:1,b:2").unwrap();
        assert_eq!(t.nodes, vec!["redis://u:secret@a:1", "redis://u:secret@b:2"]);
        assert!(t.cluster && !t.shown.contains("secret"), "{}", t.shown);
        for bad in [
            "http://x",
            "redis://",
            "redis://a:1,b:2",
            "redis+cluster://a:1/3",
            "redis://a:1?x=y",
            "redis://a:1/x",
        ] {
            assert!(matches!(parse_url(bad), Err(Error::StoreUrl { .. })), "{bad}");
        }
    }

    proptest::proptest! {
        /// Any text parses or is refused with a typed error; never a panic.
        #[test]
        fn any_url_parses_or_is_refused(tail in ".{0,80}", cluster in proptest::bool::ANY) {
            let url = format!("{}{tail}", if cluster { "redis+cluster://" } else { "redis://" });
            match parse_url(&url) {
                Ok(t) => proptest::prop_assert!(!t.nodes.is_empty()),
                Err(e) => {
                    let typed = matches!(e, Error::StoreUrl { .. });
                    proptest::prop_assert!(typed, "{}", e)
                }
            }
        }
    }
}
