//! Models split over several files, as llama.cpp's `gguf-split` writes them:
//! `NAME-00001-of-00003.gguf`, `NAME-00002-of-00003.gguf`, ... The first
//! shard holds the metadata (with `split.count`), every shard holds
//! `split.no` and some of the tensors.
//!
//! The shards are mapped side by side into one reserved address range, so
//! the model reads as one byte slice: tensor offsets are offsets into it,
//! and nothing downstream knows there were several files.

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use super::{corrupt, parse_at, Backing, Gguf, Parsed, Value};
use crate::error::{Error, Result};

/// The shard paths of a split whose first shard is `first`, which must be
/// named `PREFIX-00001-of-NNNNN.gguf` with NNNNN = `count`.
///
/// ```
/// use std::path::Path;
/// use colloquy_engine::gguf::shard_paths;
///
/// let p = shard_paths(Path::new("/m/Qwen-00001-of-00003.gguf"), 3)?;
/// assert_eq!(p[2], Path::new("/m/Qwen-00003-of-00003.gguf"));
/// assert!(shard_paths(Path::new("/m/Qwen-00002-of-00003.gguf"), 3).is_err());
/// # Ok::<(), colloquy_engine::error::Error>(())
/// ```
pub fn shard_paths(first: &Path, count: usize) -> Result<Vec<PathBuf>> {
    let name = first.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let suffix = format!("-00001-of-{count:05}.gguf");
    let prefix = name.strip_suffix(&suffix).ok_or_else(|| {
        Error::GgufCorrupt(format!(
            "{name} is shard 1 of a {count}-file split, so its name must end with {suffix} \
             (open the first shard, named as llama.cpp's gguf-split names it)"
        ))
    })?;
    let dir = first.parent().unwrap_or_else(|| Path::new(""));
    Ok((1..=count).map(|i| dir.join(format!("{prefix}-{i:05}-of-{count:05}.gguf"))).collect())
}

impl Gguf {
    /// `split.count` of a split model's first shard (1 when not split).
    pub(super) fn split_count(&self) -> Result<usize> {
        match self.metadata.get("split.count") {
            None => Ok(1),
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if (1..=9999).contains(&n) => Ok(n),
                _ => Err(corrupt("split.count is not a count of 1 to 9999")),
            },
        }
    }

    /// The model of `count` shards starting at `first`, with the first shard's `metadata`.
    pub(super) fn open_split(first: &Path, count: usize, metadata: HashMap<String, Value>) -> Result<Gguf> {
        let paths = shard_paths(first, count)?;
        #[cfg(unix)]
        let (backing, spans) = {
            let (s, spans) = Spliced::map(&paths)?;
            (Backing::Spliced(s), spans)
        };
        #[cfg(not(unix))]
        let (backing, spans) = {
            let mut all = Vec::new();
            let mut spans = Vec::new();
            for p in &paths {
                let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
                spans.push((all.len(), bytes.len()));
                all.extend(bytes);
                all.resize(all.len().next_multiple_of(4096), 0);
            }
            (Backing::Owned(all), spans)
        };
        let mut tensors = Vec::new();
        let mut version = 3;
        for (i, ((off, len), path)) in spans.into_iter().zip(&paths).enumerate() {
            let shard = parse_at(&backing.bytes()[off..off + len], off as u64, false)?;
            let no = shard.metadata.get("split.no").and_then(Value::as_u64);
            if no != Some(i as u64) {
                return Err(corrupt(format!("{} has split.no {no:?}, expected {i}", path.display())));
            }
            version = version.min(shard.version);
            tensors.extend(shard.tensors);
        }
        if let Some(n) = metadata.get("split.tensors.count").and_then(Value::as_u64) {
            if n != tensors.len() as u64 {
                return Err(corrupt(format!(
                    "split.tensors.count is {n}, the shards hold {}",
                    tensors.len()
                )));
            }
        }
        Self::assemble(backing, Parsed { version, metadata, tensors }, false)
    }
}

/// The shards mapped one after the other (each at a page boundary) into one
/// read-only range.
#[derive(Debug)]
pub(super) struct Spliced {
    base: *mut u8,
    len: usize,
}

// SAFETY: the range is read-only for its whole life and unmapped only on drop.
unsafe impl Send for Spliced {}
// SAFETY: as above: shared references only ever read it.
unsafe impl Sync for Spliced {}

impl Spliced {
    /// Maps `paths` side by side; returns the mapping and each shard's
    /// `(offset, length)` in it.
    #[cfg(unix)]
    pub(super) fn map(paths: &[PathBuf]) -> Result<(Spliced, Vec<(usize, usize)>)> {
        use std::os::fd::AsRawFd;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
        let files = paths
            .iter()
            .map(|p| std::fs::File::open(p).map_err(|e| Error::io(p, e)))
            .collect::<Result<Vec<_>>>()?;
        let mut spans = Vec::with_capacity(files.len());
        let mut total = 0usize;
        for (f, p) in files.iter().zip(paths) {
            let len = usize::try_from(f.metadata().map_err(|e| Error::io(p, e))?.len())
                .map_err(|_| Error::GgufCorrupt(format!("{} is too large to map", p.display())))?;
            spans.push((total, len));
            total = total
                .checked_add(len.next_multiple_of(page))
                .ok_or_else(|| Error::GgufCorrupt("the shards are too large to map".into()))?;
        }
        // SAFETY: a fresh anonymous reservation, no memory of ours is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total.max(page),
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::io(&paths[0], std::io::Error::last_os_error()));
        }
        let spliced = Spliced { base: base.cast(), len: total.max(page) };
        for ((f, p), &(off, len)) in files.iter().zip(paths).zip(&spans) {
            if len == 0 {
                continue;
            }
            // SAFETY: `off..off + len` lies inside the reservation (page-aligned
            // starts); MAP_FIXED replaces only our own reserved pages. Like every
            // mmap loader, we rely on the files not being truncated meanwhile.
            let at = unsafe {
                libc::mmap(
                    spliced.base.add(off).cast(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    f.as_raw_fd(),
                    0,
                )
            };
            if at == libc::MAP_FAILED {
                return Err(Error::io(p, std::io::Error::last_os_error()));
            }
        }
        Ok((spliced, spans))
    }

    /// The whole range (gaps between shards read as zeros).
    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: the range stays mapped for the life of `self`: each shard maps
        // the whole pages of its span (past its file's end they read as zero),
        // and the spans tile the range. Only an empty shard leaves its reserved
        // page inaccessible, and parsing rejects an empty file before reading.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }

    /// Drops the pages of `offset..offset + len` (they read back from the files).
    #[cfg(unix)]
    pub(super) fn release(&self, offset: usize, len: usize) {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
        let start = offset / page * page;
        let end = offset.saturating_add(len).min(self.len);
        if end > start {
            // SAFETY: a page-aligned range inside our read-only, file-backed,
            // private mapping: after MADV_DONTNEED it reads back unchanged.
            unsafe { libc::madvise(self.base.add(start).cast(), end - start, libc::MADV_DONTNEED) };
        }
    }
}

#[cfg(unix)]
impl Drop for Spliced {
    fn drop(&mut self) {
        // SAFETY: the reservation and the shard maps inside it are ours.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
