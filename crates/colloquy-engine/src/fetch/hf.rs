//! Hugging Face as a model source: `hf:ORG/NAME/FILE` (or
//! `hf:ORG/NAME@REVISION/FILE`), downloaded through the `hf-hub` crate into
//! the cache the Python `huggingface_hub` uses
//! (`HUB/models--ORG--NAME/{blobs,snapshots,refs}`), so a file that Python
//! tools already downloaded is used in place, with no request.
//!
//! The environment is the Python client's: `HF_ENDPOINT` (default
//! `https://huggingface.co`), `HF_TOKEN` (else the token file under
//! `HF_HOME`), `HF_HUB_CACHE` (else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`). An interrupted download resumes from its
//! `.part` file; a finished one is checked against the hash the hub reports
//! (the `X-Linked-Etag` of an LFS file is its sha256) before it is used.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A file in a Hugging Face model repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfFile {
    /// `ORG/NAME`.
    pub repo: String,
    /// A branch, tag or commit (default `main`).
    pub revision: String,
    /// The file's path in the repository.
    pub file: String,
}

impl HfFile {
    /// Reads `ORG/NAME/FILE` or `ORG/NAME@REVISION/FILE` (the part after `hf:`).
    ///
    /// ```
    /// use colloquy_engine::fetch::HfFile;
    ///
    /// let f = HfFile::parse("bartowski/Qwen2.5-1.5B-GGUF/Qwen2.5-1.5B-Q4_K_M.gguf")?;
    /// assert_eq!((f.repo.as_str(), f.revision.as_str()), ("bartowski/Qwen2.5-1.5B-GGUF", "main"));
    /// let f = HfFile::parse("org/name@v1.0/sub/dir/model.gguf")?;
    /// assert_eq!((f.revision.as_str(), f.file.as_str()), ("v1.0", "sub/dir/model.gguf"));
    /// assert!(HfFile::parse("org/model.gguf").is_err());
    /// # Ok::<(), colloquy_engine::error::Error>(())
    /// ```
    pub fn parse(spec: &str) -> Result<HfFile> {
        let bad = || {
            Error::InvalidArgument(format!(
                "{spec:?} is not a Hugging Face file: write hf:ORG/NAME/FILE or hf:ORG/NAME@REVISION/FILE"
            ))
        };
        let mut parts = spec.splitn(3, '/');
        let (org, name, file) =
            (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
        let (name, revision) = name.split_once('@').unwrap_or((name, "main"));
        let ok = |s: &str| !s.is_empty() && !s.contains("..") && !s.starts_with('.');
        if !ok(org) || !ok(name) || !ok(revision) || !ok(file) || file.split('/').any(|p| !ok(p)) {
            return Err(bad());
        }
        Ok(HfFile { repo: format!("{org}/{name}"), revision: revision.to_string(), file: file.to_string() })
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone())
    }
}

fn env(key: &str) -> Option<OsString> {
    std::env::var_os(key).filter(|v| !v.is_empty())
}

/// The hub cache folder, as the Python client finds it: `HF_HUB_CACHE`, else
/// `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache() -> PathBuf {
    if let Some(dir) = env("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = env("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = env("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

/// The cached copy of `f`, if the hub cache holds one (no request is made).
pub fn cached_hf(f: &HfFile) -> Option<PathBuf> {
    Cache::new(hub_cache()).repo(f.repo()).get(&f.file)
}

/// Ensures `f` is in the hub cache and returns its path: the cached copy when
/// there is one (unless `force`), else a download (resumed if a `.part` is
/// left from an interrupted one), checked against the hub's hash.
///
/// # Errors
/// [`Error::HubDownload`] when the hub cannot be reached or answers with an
/// error, [`Error::ChecksumMismatch`] when the file is not what the hub
/// said (it is removed), [`Error::Io`] for the cache.
pub fn pull_hf(f: &HfFile, force: bool, bar: &ProgressBar) -> Result<PathBuf> {
    if !force {
        if let Some(path) = cached_hf(f) {
            return Ok(path);
        }
    }
    let endpoint = env("HF_ENDPOINT").and_then(|e| e.into_string().ok());
    let endpoint = endpoint.unwrap_or_else(|| "https://huggingface.co".into());
    let cache = Cache::new(hub_cache());
    let token = env("HF_TOKEN").and_then(|t| t.into_string().ok()).or_else(|| cache.token());
    let hub_err = |e: hf_hub::api::sync::ApiError| Error::HubDownload {
        url: format!("{}/{}/resolve/{}/{}", endpoint.trim_end_matches('/'), f.repo, f.revision, f.file),
        message: e.to_string(),
    };
    let api = ApiBuilder::from_cache(cache)
        .with_endpoint(endpoint.trim_end_matches('/').to_string())
        .with_token(token)
        .with_progress(false)
        .build()
        .map_err(hub_err)?;
    let repo = api.repo(f.repo());
    let meta = api.metadata(&repo.url(&f.file)).map_err(hub_err)?;
    // hf-hub resumes from the `.part` an interrupted download left (and
    // moves the bar to where it resumes).
    let path = repo.download_with_progress(&f.file, Bar(bar.clone())).map_err(hub_err)?;
    verify(&path, meta.etag(), meta.size(), bar)?;
    Ok(path)
}

/// Checks a downloaded file against the hub's etag: an LFS file's is its
/// sha256 (64 hex digits); a small file's is a git hash, so only its size is
/// checked. A file that fails is removed, with its snapshot link.
fn verify(path: &Path, etag: &str, size: usize, bar: &ProgressBar) -> Result<()> {
    let blob = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let len = std::fs::metadata(&blob).map_err(|e| Error::io(&blob, e))?.len();
    let lfs = etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit());
    let found = if lfs {
        bar.set_message("verifying sha256");
        let mut h = Sha256::new();
        let mut file = std::fs::File::open(&blob).map_err(|e| Error::io(&blob, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io(&blob, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()
    } else {
        format!("{len} bytes")
    };
    let expected = if lfs { etag.to_ascii_lowercase() } else { format!("{size} bytes") };
    if found == expected && len == size as u64 {
        return Ok(());
    }
    let _ = std::fs::remove_file(&blob);
    let _ = std::fs::remove_file(path);
    Err(Error::ChecksumMismatch { file: path.display().to_string(), expected, found })
}

/// Our progress bar, driven by hf-hub's download loop.
struct Bar(ProgressBar);

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        self.0.set_message(filename.to_string());
        self.0.set_position(0);
    }

    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }

    fn finish(&mut self) {}
}
