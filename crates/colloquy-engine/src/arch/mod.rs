//! Model architectures and their registry.
//!
//! An architecture turns tokens into logits, reading and appending K/V in a
//! [`KvCache`](crate::kv::KvCache). Adding a family means one file here and one line in the
//! registry (`REGISTRY`, used by [`load_architecture`]).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kv::KvLayout;
use crate::runtime::Runtime;

pub mod gemma3;
pub(crate) mod layers;
pub mod llama;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;

pub use crate::batch::{BatchPlan, LogitsFor, Sequence};

/// A model family's forward pass.
pub trait Architecture: Send + Sync + std::fmt::Debug {
    /// The GGUF `general.architecture` name.
    fn name(&self) -> &'static str;
    /// Vocabulary size (rows of logits).
    fn n_vocab(&self) -> usize;
    /// The context length the model was trained with.
    fn n_ctx_train(&self) -> usize;
    /// The KV cache shape, for the runtime's precision.
    fn kv_layout(&self, rt: &Runtime) -> KvLayout;
    /// Runs a batch: each sequence's tokens at positions `kv.len()..` of its
    /// own cache, which gets their K/V. Writes the requested logits of every
    /// sequence, in batch order (`[rows][n_vocab]`), into `logits`. A row's
    /// logits have the same bits whatever else is in the batch.
    fn forward(&self, rt: &mut Runtime, batch: &mut [Sequence<'_>], logits: &mut Vec<f32>) -> Result<()>;
}

/// Loads one architecture from a GGUF file.
type Loader = fn(Arc<Gguf>) -> Result<Box<dyn Architecture>>;

/// The registry: `general.architecture` names and their loaders.
const REGISTRY: &[(&str, Loader)] = &[
    ("llama", |g| Ok(Box::new(llama::Llama::load(g)?))),
    ("gemma3", |g| Ok(Box::new(gemma3::Gemma3::load(g)?))),
    ("qwen2", |g| Ok(Box::new(qwen2::load(g)?))),
    ("qwen3", |g| Ok(Box::new(qwen3::load(g)?))),
    ("phi3", |g| Ok(Box::new(phi3::load(g)?))),
];

/// The loader of the architecture named by the GGUF's `general.architecture`,
/// or [`Error::UnknownArchitecture`].
pub fn find_architecture(gguf: &Gguf) -> Result<Loader> {
    let name = gguf.get_str("general.architecture")?;
    let found = REGISTRY.iter().find(|(n, _)| *n == name);
    found.map(|(_, load)| *load).ok_or_else(|| Error::UnknownArchitecture(name.to_string()))
}

/// Builds the architecture named by the GGUF's `general.architecture`.
pub fn load_architecture(gguf: Arc<Gguf>) -> Result<Box<dyn Architecture>> {
    find_architecture(&gguf)?(gguf)
}
