//! A loaded model: GGUF file, architecture, tokenizer and runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::arch::{find_architecture, Architecture, LogitsFor, Sequence};
use crate::error::Result;
use crate::gguf::Gguf;
use crate::kv::{KvCache, KvDtype};
use crate::linear::Precision;
use crate::runtime::Runtime;
use crate::sampler::Sampler;
use crate::tokenizer::Tokenizer;

/// Tokens processed per forward call when a prompt is long. Results do not
/// depend on it (batch invariance); it only bounds the activation memory.
pub const UBATCH: usize = 512;

/// How to load a model.
///
/// ```
/// use colloquy_engine::model::ModelOptions;
/// let opts = ModelOptions { threads: 2, ..ModelOptions::default() };
/// assert_eq!(opts.threads, 2);
/// ```
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Threads for the forward pass (default: all available cores).
    pub threads: usize,
    /// Fast (quantized activations) or precise (f32) computation.
    pub precision: Precision,
    /// Context length; `None` uses the model's training context, capped so
    /// that a full context's KV cache fits in `context_memory`.
    pub n_ctx: Option<usize>,
    /// The KV memory one full context may take, when `n_ctx` is `None`
    /// (default: unlimited). The context is never cut below 512 tokens.
    pub context_memory: usize,
    /// KV cache storage; `None` follows the precision (f16 fast, f32 precise).
    /// [`KvDtype::Q8_0`] halves the bytes per token, at a small loss of accuracy.
    pub kv_dtype: Option<KvDtype>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            precision: Precision::Fast,
            n_ctx: None,
            context_memory: usize::MAX,
            kv_dtype: None,
        }
    }
}

/// The trained context, capped so that a full context's K/V fits in `memory`
/// bytes (windowed layers hold at most their window), and never below 512.
fn default_n_ctx(trained: usize, layout: &crate::kv::KvLayout, memory: usize) -> usize {
    let global = layout.lane(false).bytes_per_token().max(1);
    let windowed = layout.window.map_or(0, |w| layout.lane(true).bytes_per_token().saturating_mul(w.size));
    let fits = memory.saturating_sub(windowed) / global;
    trained.min(fits).max(512.min(trained))
}

/// A model ready to run.
///
/// ```no_run
/// use colloquy_engine::model::{Model, ModelOptions};
/// use colloquy_engine::arch::LogitsFor;
///
/// let model = Model::load("SmolLM2-135M-Instruct.Q4_1.gguf", ModelOptions::default())?;
/// let tokens = model.tokenizer().encode("The capital of France is", true);
/// let mut kv = model.new_kv();
/// let logits = model.forward(&mut kv, &tokens, LogitsFor::Last)?;
/// assert_eq!(logits.len(), model.n_vocab());
/// # Ok::<(), colloquy_engine::Error>(())
/// ```
#[derive(Debug)]
pub struct Model {
    path: PathBuf,
    gguf: Arc<Gguf>,
    arch: Box<dyn Architecture>,
    tokenizer: Tokenizer,
    rt: Mutex<Runtime>,
    n_ctx: usize,
    precision: Precision,
}

impl Model {
    /// Memory-maps and loads a GGUF model.
    pub fn load(path: impl AsRef<Path>, opts: ModelOptions) -> Result<Model> {
        let path = path.as_ref().to_path_buf();
        let mut gguf = Gguf::open(&path)?;
        let load_arch = find_architecture(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        gguf.forget_vocabulary();
        let gguf = Arc::new(gguf);
        let arch = load_arch(Arc::clone(&gguf))?;
        if opts.precision == Precision::Fast {
            // The fast path reads repacked copies of the large matrices; the
            // file's pages are only needed again for embedding rows.
            gguf.release_pages();
        }
        let mut rt = Runtime::new(opts.threads, opts.precision);
        rt.kv_override = opts.kv_dtype;
        let layout = arch.kv_layout(&rt);
        if !layout.is_valid() {
            return Err(crate::Error::InvalidArgument(format!(
                "a {:?} KV cache needs head dimensions that are multiples of 32",
                rt.kv_dtype()
            )));
        }
        let n_ctx = match opts.n_ctx {
            Some(n) => n,
            None => default_n_ctx(arch.n_ctx_train(), &layout, opts.context_memory),
        }
        .max(1);
        Ok(Model { path, gguf, arch, tokenizer, rt: Mutex::new(rt), n_ctx, precision: opts.precision })
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed GGUF.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The architecture.
    pub fn arch(&self) -> &dyn Architecture {
        &*self.arch
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.arch.n_vocab()
    }

    /// Context length.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Fast or precise.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Threads used by the forward pass.
    pub fn threads(&self) -> usize {
        self.runtime().pool.n_threads()
    }

    /// Parallel sections (synchronizations of the thread pool) that this
    /// model's forward passes have run so far: see
    /// [`ThreadPool::sections`](crate::pool::ThreadPool::sections).
    pub fn pool_sections(&self) -> u64 {
        self.runtime().pool.sections()
    }

    /// Bytes that one decode step reads from memory at `context` tokens of
    /// context: every weight matrix once, as the GGUF stores it (the token
    /// embedding only when it is also the output head, since a step reads
    /// just one of its rows otherwise), plus the K and V rows that attention
    /// reads. The memory bound of decoding is bandwidth ÷ this.
    ///
    /// ```no_run
    /// use colloquy_engine::model::{Model, ModelOptions};
    ///
    /// let model = Model::load("SmolLM2-135M-Instruct.Q4_1.gguf", ModelOptions::default())?;
    /// let bytes = model.decode_bytes(0);
    /// println!("bound at 20 GB/s: {:.0} tokens/s", 20e9 / bytes as f64);
    /// # Ok::<(), colloquy_engine::Error>(())
    /// ```
    pub fn decode_bytes(&self, context: usize) -> u64 {
        let tensors = self.gguf.tensors();
        let tied = !tensors.iter().any(|t| t.name == "output.weight");
        let weights: u64 =
            tensors.iter().filter(|t| tied || t.name != "token_embd.weight").map(|t| t.size).sum();
        let layout = self.arch.kv_layout(&self.runtime());
        weights.saturating_add(layout.bytes_read_at(context) as u64)
    }

    fn runtime(&self) -> std::sync::MutexGuard<'_, Runtime> {
        self.rt.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty KV cache for this model.
    pub fn new_kv(&self) -> KvCache {
        let layout = self.arch.kv_layout(&self.runtime());
        KvCache::new(layout, self.n_ctx)
    }

    /// Runs `tokens` after what `kv` holds and returns the requested logits
    /// (`[rows][n_vocab]`). Long inputs are processed in chunks of [`UBATCH`].
    pub fn forward(&self, kv: &mut KvCache, tokens: &[u32], want: LogitsFor) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.forward_chunked(kv, tokens, want, UBATCH, &mut out, &mut |_, _| {})?;
        Ok(out)
    }

    /// Like [`forward`](Self::forward), with an explicit chunk size and a progress
    /// callback `(tokens done, total)`. The logits do not depend on `chunk`.
    pub fn forward_chunked(
        &self,
        kv: &mut KvCache,
        tokens: &[u32],
        want: LogitsFor,
        chunk: usize,
        out: &mut Vec<f32>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        let needed = kv.len() + tokens.len();
        if needed > kv.capacity() {
            return Err(crate::Error::ContextOverflow { needed, n_ctx: kv.capacity() });
        }
        out.clear();
        let mut rt = self.runtime();
        let mut part = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(chunk.max(1)).collect();
        let n = chunks.len();
        let mut done = 0;
        for (i, c) in chunks.into_iter().enumerate() {
            let w = match want {
                LogitsFor::All => LogitsFor::All,
                LogitsFor::Last if i + 1 == n => LogitsFor::Last,
                _ => LogitsFor::None,
            };
            let mut batch = [Sequence { tokens: c, kv: &mut *kv, logits: w }];
            if n == 1 {
                self.arch.forward(&mut rt, &mut batch, out)?;
            } else {
                self.arch.forward(&mut rt, &mut batch, &mut part)?;
                out.extend_from_slice(&part);
            }
            done += c.len();
            progress(done, tokens.len());
        }
        Ok(())
    }

    /// Runs one token and writes its logits into `logits`, reusing its buffer:
    /// the decode step, with no allocation once buffers are warm.
    pub fn forward_into_last(&self, kv: &mut KvCache, token: u32, logits: &mut Vec<f32>) -> Result<()> {
        let mut rt = self.runtime();
        self.arch.forward(&mut rt, &mut [Sequence { tokens: &[token], kv, logits: LogitsFor::Last }], logits)
    }

    /// Runs a batch of sequences in one forward pass (see [`Sequence`]): each
    /// sequence's tokens after what its own cache holds. Writes the requested
    /// logits of every sequence, in batch order, into `logits`. Each
    /// sequence's logits are bit-identical to running it alone.
    ///
    /// ```no_run
    /// use colloquy_engine::arch::{LogitsFor, Sequence};
    /// # let model = colloquy_engine::model::Model::load("model.gguf", Default::default())?;
    /// let (mut a, mut b) = (model.new_kv(), model.new_kv());
    /// let mut logits = Vec::new();
    /// let mut batch = [
    ///     Sequence { tokens: &[1, 2, 3], kv: &mut a, logits: LogitsFor::Last },
    ///     Sequence { tokens: &[4, 5], kv: &mut b, logits: LogitsFor::Last },
    /// ];
    /// model.forward_batch(&mut batch, &mut logits)?;
    /// assert_eq!(logits.len(), 2 * model.n_vocab());
    /// # Ok::<(), colloquy_engine::Error>(())
    /// ```
    pub fn forward_batch(&self, batch: &mut [Sequence<'_>], logits: &mut Vec<f32>) -> Result<()> {
        for seq in batch.iter() {
            let needed = seq.kv.len() + seq.tokens.len();
            if needed > seq.kv.capacity() {
                return Err(crate::Error::ContextOverflow { needed, n_ctx: seq.kv.capacity() });
            }
            if seq.tokens.is_empty() {
                return Err(crate::Error::InvalidArgument("a sequence in a batch has no tokens".into()));
            }
        }
        let mut rt = self.runtime();
        self.arch.forward(&mut rt, batch, logits)
    }

    /// Generates up to `max_tokens` after `kv`'s contents, starting from `logits`
    /// (the logits of the last processed position). Calls `on_token` for every new
    /// token; it returns `false` to stop early. Stops after an end-of-generation
    /// token, which is included in the result.
    pub fn generate(
        &self,
        kv: &mut KvCache,
        mut logits: Vec<f32>,
        history: &mut Vec<u32>,
        sampler: &mut Sampler,
        max_tokens: usize,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let mut new = Vec::new();
        let mut rt = self.runtime();
        for _ in 0..max_tokens {
            let tok = sampler.sample(&mut logits, history);
            new.push(tok);
            history.push(tok);
            let go_on = on_token(tok);
            if self.tokenizer.is_eog(tok) || !go_on || new.len() == max_tokens {
                break;
            }
            let mut batch = [Sequence { tokens: &[tok], kv: &mut *kv, logits: LogitsFor::Last }];
            self.arch.forward(&mut rt, &mut batch, &mut logits)?;
        }
        Ok(new)
    }
}
