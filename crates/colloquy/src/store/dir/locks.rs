//! The directory store's lock files: write markers and the gc lock, and how
//! a stale one (left by a killed process) is told apart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{DirBackend, LOCK_WAIT};
use crate::error::{Error, Result};
use crate::files::io_err;
use crate::store::GC_GRACE;

/// A lock file of this process that is removed when dropped.
pub(super) struct LockFile(PathBuf);

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether a lock file was left by a process that is gone: its process is not
/// running (where that can be checked), or it is older than [`GC_GRACE`]. A
/// writer's lock names its process (`write-<pid>-<n>`); gc's holds it (a gc
/// killed before writing it leaves an empty file, stale after a few seconds).
pub(super) fn is_stale(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else { return false };
    let age = meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
    if age > GC_GRACE {
        return true;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let pid = match name.strip_prefix("write-") {
        Some(rest) => rest.split('-').next().and_then(|p| p.parse::<u32>().ok()),
        None => std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<u32>().ok()),
    };
    match pid {
        Some(pid) if Path::new("/proc/self").exists() => !Path::new(&format!("/proc/{pid}")).exists(),
        Some(_) => false,
        None => age > Duration::from_secs(10),
    }
}

impl DirBackend {
    pub(super) fn lock_file(&self, name: &str, create_new: bool) -> std::io::Result<LockFile> {
        let path = self.locks_dir().join(name);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true);
        if create_new {
            opts.create_new(true);
        } else {
            opts.create(true).truncate(true);
        }
        let mut f = opts.open(&path)?;
        let guard = LockFile(path);
        f.write_all(std::process::id().to_string().as_bytes())?;
        Ok(guard)
    }

    /// Announces a write (a save or a fork) and waits while a gc runs.
    ///
    /// The protocol: a writer creates its own file in `locks/`, then checks
    /// that `locks/gc` does not exist; gc creates `locks/gc`, then checks that
    /// no writer's file exists. Each creates its file before looking for the
    /// other's, so at least one of them sees the other, and backs off.
    pub(super) fn begin_write_marker(&self) -> Result<LockFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let locks = self.locks_dir();
        let start = std::time::Instant::now();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let mine = self
                .lock_file(&format!("write-{}-{n}", std::process::id()), false)
                .map_err(io_err(&locks))?;
            let gc = locks.join("gc");
            if !gc.exists() {
                return Ok(mine);
            }
            drop(mine);
            if is_stale(&gc) {
                let _ = std::fs::remove_file(&gc);
                continue;
            }
            if start.elapsed() > LOCK_WAIT {
                return Err(Error::StoreBusy(format!("a gc of {} has not finished", self.dir.display())));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Takes `locks/gc`, then waits until no write is in progress (see
    /// [`begin_write_marker`](Self::begin_write_marker)). Holding `locks/gc` keeps new writes
    /// from starting, so the wait ends.
    pub(super) fn begin_gc(&self, wait: Duration) -> Result<LockFile> {
        let locks = self.locks_dir();
        let start = std::time::Instant::now();
        let busy = |what: &str| Error::StoreBusy(format!("{what} in {}", self.dir.display()));
        let gc = loop {
            match self.lock_file("gc", true) {
                Ok(gc) => break gc,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let path = locks.join("gc");
                    if is_stale(&path) {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    if start.elapsed() > wait {
                        return Err(busy("another gc is running"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io_err(&locks)(e)),
            }
        };
        loop {
            let mut writing = false;
            for entry in std::fs::read_dir(&locks).map_err(io_err(&locks))? {
                let entry = entry.map_err(io_err(&locks))?;
                if entry.file_name().to_str().is_some_and(|n| n.starts_with("write-")) {
                    if is_stale(&entry.path()) {
                        let _ = std::fs::remove_file(entry.path());
                    } else {
                        writing = true;
                    }
                }
            }
            if !writing {
                return Ok(gc);
            }
            if start.elapsed() > wait {
                return Err(busy("saves are in progress"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
