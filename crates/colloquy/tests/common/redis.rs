//! Real `redis-server` processes for tests, on free loopback ports: a
//! standalone instance with AOF (`appendfsync always`) and a three-master
//! cluster built with `redis-cli --cluster create`. Each is stopped when
//! dropped.
//!
//! `scripts/test.sh` starts one shared pair for the whole suite and names
//! them in `COLLOQUY_TEST_REDIS` and `COLLOQUY_TEST_REDIS_CLUSTER`; tests that
//! only need a store use those (each under its own key prefix), and tests
//! that stop or restart Redis start their own. Without `redis-server` the
//! tests that need it fail, unless `COLLOQUY_ALLOW_NO_REDIS=1` says that it
//! truly cannot be installed here (then they skip, loudly).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The `redis-server` binary, or `None` (with a loud message) when it is
/// missing and that is allowed.
pub fn redis_server() -> Option<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("redis-server");
        if p.is_file() {
            return Some(p);
        }
    }
    if std::env::var("COLLOQUY_ALLOW_NO_REDIS").as_deref() == Ok("1") {
        eprintln!("\n*** SKIPPED: redis-server is not installed (COLLOQUY_ALLOW_NO_REDIS=1) ***\n");
        return None;
    }
    panic!("redis-server is not installed: apt-get install redis-server (scripts/test.sh does), or set COLLOQUY_ALLOW_NO_REDIS=1 to skip");
}

/// A loopback port that was free a moment ago (below 55536, so that a
/// cluster's bus port, 10000 higher, exists too).
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55536 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// A key prefix no other test uses (so tests can share one Redis).
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}-{}-{name}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// One `redis-server` process and its folder.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
}

impl Redis {
    /// A standalone server with AOF on (every write fsynced before its reply).
    pub fn start() -> Redis {
        Redis::spawn(false)
    }

    fn spawn(cluster: bool) -> Redis {
        let mut r = Redis { child: None, port: free_port(), dir: tempfile::tempdir().unwrap(), cluster };
        r.launch();
        r
    }

    fn launch(&mut self) {
        let bin = redis_server().expect("redis-server");
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(self.dir.path());
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server starts");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if self.cli(&["PING"]).is_some_and(|o| o.trim() == "PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// Runs `redis-cli` against this server; its output if it succeeded.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        (out.status.success() && !String::from_utf8_lossy(&out.stdout).starts_with("Could not connect"))
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `redis://127.0.0.1:PORT/0?prefix=…`.
    pub fn url(&self, prefix: &str) -> String {
        format!("redis://127.0.0.1:{}/0?prefix={prefix}", self.port)
    }

    /// Stops the server cleanly (SIGTERM: it flushes its AOF and exits).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Kills the server (SIGKILL: only what it fsynced survives).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and folder (it reloads its AOF).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Starts it again after [`stop`](Self::stop) or [`kill9`](Self::kill9).
    pub fn resume(&mut self) {
        assert!(self.child.is_none());
        self.launch();
    }

    /// Bytes of memory Redis uses for data (`used_memory`).
    pub fn used_memory(&self) -> u64 {
        let info = self.cli(&["INFO", "memory"]).unwrap();
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A three-master Redis Cluster (no replicas).
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let nodes: Vec<Redis> = (0..3).map(|_| Redis::spawn(true)).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster create failed");
        let c = Cluster { nodes };
        let t0 = Instant::now();
        while !c
            .nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok")))
        {
            assert!(t0.elapsed() < Duration::from_secs(30), "the cluster did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3?prefix=…`.
    pub fn url(&self, prefix: &str) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}?prefix={prefix}", hosts.join(","))
    }
}

/// A store URL for a test that needs a Redis but not its own: the suite's
/// shared instance (`COLLOQUY_TEST_REDIS`) under a fresh prefix, or a new
/// instance kept alive by the returned guard.
pub fn shared_standalone(name: &str) -> Option<(String, Option<Redis>)> {
    let prefix = unique_prefix(name);
    if let Ok(base) = std::env::var("COLLOQUY_TEST_REDIS") {
        return Some((format!("{base}?prefix={prefix}"), None));
    }
    redis_server()?;
    let r = Redis::start();
    Some((r.url(&prefix), Some(r)))
}

/// Like [`shared_standalone`], for the cluster (`COLLOQUY_TEST_REDIS_CLUSTER`).
pub fn shared_cluster(name: &str) -> Option<(String, Option<Cluster>)> {
    let prefix = unique_prefix(name);
    if let Ok(base) = std::env::var("COLLOQUY_TEST_REDIS_CLUSTER") {
        return Some((format!("{base}?prefix={prefix}"), None));
    }
    redis_server()?;
    let c = Cluster::start();
    Some((c.url(&prefix), Some(c)))
}
