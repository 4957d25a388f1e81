//! Atomic file writes that never surprise: temporary files with a name that
//! says whose they are, stale ones removed, symlinks written through, read-only
//! targets refused and modes kept. Session files and the session store share it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

/// Every temporary file colloquy writes ends with this: `.<name>.<pid>-<n>.colloquy-tmp`.
pub const TEMP_SUFFIX: &str = ".colloquy-tmp";

/// Where no process table can be read, temporary files older than this are stale.
pub const TEMP_GRACE: Duration = Duration::from_secs(5 * 60);

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Engine(colloquy_engine::Error::io(path, e))
}

/// A fresh temporary file name for `name`, naming this process.
pub(crate) fn temp_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{}-{n}{TEMP_SUFFIX}", std::process::id())
}

/// The process that wrote temporary file `name`, if it is one of ours.
fn temp_owner(name: &str) -> Option<u32> {
    let stem = name.strip_prefix('.')?.strip_suffix(TEMP_SUFFIX)?;
    let (_, tail) = stem.rsplit_once('.')?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Whether process `pid` still runs: `None` where that cannot be told.
/// A zombie (killed, not yet reaped) counts as gone.
pub(crate) fn process_alive(pid: u32) -> Option<bool> {
    if !Path::new("/proc/self").exists() {
        return None;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Some(false) };
    // "pid (comm) S ...": the state follows the last parenthesis.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    Some(!matches!(state, Some('Z' | 'X')))
}

/// Removes the temporary files in `dir` whose writer process is gone (or,
/// where that cannot be told, that are older than [`TEMP_GRACE`]). Returns how
/// many it removed. Files of running writers are never touched.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join(".chat.session.999999999-0.colloquy-tmp"), b"partial").unwrap();
/// assert_eq!(colloquy::files::remove_stale_temp_files(dir.path()).unwrap(), 1);
/// ```
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else { continue };
        let stale = match process_alive(pid) {
            Some(alive) => !alive,
            None => entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > TEMP_GRACE),
        };
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The file a write to `path` must replace: `path` itself, or the file its
/// symlinks lead to (which need not exist yet).
///
/// ```
/// # #[cfg(unix)] {
/// let dir = tempfile::tempdir().unwrap();
/// let link = dir.path().join("chat.session");
/// std::os::unix::fs::symlink("real.session", &link).unwrap();
/// assert_eq!(colloquy::files::resolve_target(&link).unwrap(), dir.path().join("real.session"));
/// # }
/// ```
pub fn resolve_target(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&p).map_err(io_err(&p))?;
                p = match p.parent() {
                    Some(dir) => dir.join(link),
                    None => link,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(io_err(path)(std::io::Error::other("too many levels of symbolic links")))
}

/// The folder a file lives in (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` with its folder made absolute and free of symlinks, so that two
/// spellings of one file compare equal. The file itself need not exist.
pub(crate) fn canonical_file(path: &Path) -> PathBuf {
    let dir = parent_dir(path);
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

/// Syncs a folder, so that the renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        // Some platforms and file systems cannot sync a folder.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported) => {
            Ok(())
        }
        Err(e) if cfg!(windows) && e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// A written and synced temporary file, renamed over its target by
/// [`commit`](Self::commit) or removed when dropped.
pub(crate) struct TempFile {
    tmp: PathBuf,
    committed: bool,
}

impl TempFile {
    /// Writes `bytes` to a new temporary file in `tmp_dir` (which must be on
    /// the target's file system) and syncs it. With `mode`, the file gets it.
    pub fn write(tmp_dir: &Path, name: &str, bytes: &[u8], mode: Option<u32>) -> Result<TempFile> {
        let tmp = tmp_dir.join(temp_name(name));
        let guard = TempFile { tmp, committed: false };
        let result = (|| {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&guard.tmp)?;
            #[cfg(unix)]
            if let Some(mode) = mode {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            #[cfg(not(unix))]
            let _ = mode;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        // On an error the guard is dropped, which removes the partial file.
        result.map_err(|e| io_err(&guard.tmp)(e))?;
        Ok(guard)
    }

    /// Renames the temporary file over `target`. The caller syncs the folder.
    pub fn commit(mut self, target: &Path) -> Result<()> {
        std::fs::rename(&self.tmp, target).map_err(io_err(target))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// An exclusive advisory lock (`flock`) on a file, released when dropped and
/// by the kernel when the process dies, so a `kill -9` never leaves it held.
pub(crate) struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    /// Opens (creating if needed) `path` and waits for its lock.
    pub fn acquire(path: &Path) -> Result<FileLock> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        f.lock().map_err(io_err(path))?;
        Ok(FileLock { _file: f })
    }

    /// Locks a folder itself (opened for reading), serializing writers in it
    /// without leaving a lock file behind.
    pub fn acquire_dir(dir: &Path) -> Result<FileLock> {
        let f = std::fs::File::open(dir).map_err(io_err(dir))?;
        f.lock().map_err(io_err(dir))?;
        Ok(FileLock { _file: f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_name_their_process() {
        let n = temp_name("chat.session");
        assert!(n.starts_with(".chat.session.") && n.ends_with(TEMP_SUFFIX), "{n}");
        assert_eq!(temp_owner(&n), Some(std::process::id()));
        assert_eq!(temp_owner(".a.b.12-3.colloquy-tmp"), Some(12));
        assert_eq!(temp_owner("chat.session"), None);
        assert_eq!(temp_owner(".x.notapid-1.colloquy-tmp"), None);
    }

    #[test]
    fn live_writers_keep_their_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join(temp_name("s"));
        std::fs::write(&mine, b"in flight").unwrap();
        let dead = dir.path().join(".s.4294967295-0.colloquy-tmp");
        std::fs::write(&dead, b"left by a killed writer").unwrap();
        std::fs::write(dir.path().join("s"), b"not a temp file").unwrap();
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 1);
        assert!(mine.exists() && !dead.exists() && dir.path().join("s").exists());
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_resolve_to_their_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("real", &link).unwrap();
        assert_eq!(resolve_target(&link).unwrap(), target); // dangling is fine
        assert_eq!(resolve_target(&target).unwrap(), target);
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(resolve_target(&a).is_err());
    }
}
