//! `Llama`: a GGUF chat model running on colloquy's engine, on its own thread.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use colloquy_engine::fetch::{self, PullOptions};
use colloquy_engine::kv::KvDtype;
use colloquy_engine::linear::Precision;
use colloquy_engine::model::{Model, ModelOptions, UBATCH};
use colloquy_engine::prefix::{PrefixCache, PrefixCacheStats};
use colloquy_engine::sampler::RngState;
use futures_channel::oneshot;

use crate::chat::Chat;
use crate::context::{ContextPolicy, Job, ModelContext};
use crate::error::{Error, Result};
use crate::message::ChatMessage;
use crate::params::GenerationParameters;
use crate::running::{self, RunningTurn, StepStats};
use crate::session::{Fingerprint, LlamaChatSession, SessionState};
use crate::template::ChatTemplate;
use crate::traits::ChatModel;
use crate::turn;

/// Where a model comes from.
///
/// ```
/// use colloquy::language::*;
/// let default = LlamaSource::default(); // SmolLM2-135M-Instruct
/// let local = LlamaSource::gguf("models/my-model.gguf");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlamaSource {
    /// A model colloquy knows by name (`smollm2`, `gemma3`), fetched into the cache on first use.
    Named(String),
    /// A local GGUF file.
    Gguf(PathBuf),
    /// A file of a Hugging Face model repository, downloaded into the hub's
    /// own cache on first use (see [`LlamaSource::huggingface`]).
    HuggingFace {
        /// `ORG/NAME`, optionally `@REVISION`.
        repo: String,
        /// The file's path in the repository.
        file: String,
    },
}

impl Default for LlamaSource {
    fn default() -> Self {
        LlamaSource::Named(fetch::DEFAULT_MODEL.to_string())
    }
}

impl LlamaSource {
    /// A local GGUF file.
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let src = LlamaSource::gguf("model.gguf");
    /// ```
    pub fn gguf(path: impl Into<PathBuf>) -> Self {
        LlamaSource::Gguf(path.into())
    }

    /// SmolLM2-135M-Instruct (Q4_1), the default chat model.
    ///
    /// ```
    /// # use colloquy::language::*;
    /// assert_eq!(LlamaSource::smollm2(), LlamaSource::default());
    /// ```
    pub fn smollm2() -> Self {
        LlamaSource::Named("smollm2".into())
    }

    /// Gemma 3 270M (Q4_K_M), a base model.
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let src = LlamaSource::gemma3();
    /// ```
    pub fn gemma3() -> Self {
        LlamaSource::Named("gemma3".into())
    }

    /// A GGUF file of a Hugging Face repository (`repo` is `ORG/NAME`, or
    /// `ORG/NAME@REVISION`), downloaded on first use into the cache the Python
    /// `huggingface_hub` uses, so a file it already fetched is used in place.
    /// `HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME` and `HF_HUB_CACHE` apply.
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let src = LlamaSource::huggingface("bartowski/Qwen2.5-1.5B-Instruct-GGUF", "Qwen2.5-1.5B-Instruct-Q4_K_M.gguf");
    /// ```
    pub fn huggingface(repo: impl Into<String>, file: impl Into<String>) -> Self {
        LlamaSource::HuggingFace { repo: repo.into(), file: file.into() }
    }

    /// A known model name, `hf:ORG/NAME/FILE`, or a path to a `.gguf` file.
    ///
    /// ```
    /// # use colloquy::language::*;
    /// assert_eq!(LlamaSource::named("smollm2"), LlamaSource::smollm2());
    /// ```
    pub fn named(name: impl Into<String>) -> Self {
        LlamaSource::Named(name.into())
    }

    fn resolve(&self, progress: bool) -> Result<PathBuf> {
        let opts = PullOptions { progress, ..PullOptions::default() };
        Ok(match self {
            LlamaSource::Named(n) => fetch::resolve_model(n, &opts)?,
            LlamaSource::Gguf(p) => p.clone(),
            LlamaSource::HuggingFace { repo, file } => fetch::pull(&format!("hf:{repo}/{file}"), &opts)?,
        })
    }
}

/// Builds a [`Llama`].
///
/// ```no_run
/// use colloquy::language::*;
/// # #[tokio::main] async fn main() {
/// let llm = Llama::builder()
///     .with_source(LlamaSource::gguf("SmolLM2-135M-Instruct.Q4_1.gguf"))
///     .with_threads(2)
///     .with_context_length(4096)
///     .build()
///     .await
///     .unwrap();
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct LlamaBuilder {
    source: LlamaSource,
    threads: Option<usize>,
    n_ctx: Option<usize>,
    precision: Precision,
    policy: ContextPolicy,
    template: Option<String>,
    progress: Option<bool>,
    prefix_cache_bytes: Option<usize>,
    kv_dtype: Option<KvDtype>,
    context_memory: Option<usize>,
}

/// The prefix cache's default budget.
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 512 << 20;

/// The default cap on one session's KV memory at a full context (1 GiB):
/// SmolLM2 (23 KB per token) and Gemma 3 get their whole trained context, a
/// Llama 3 8B (128 KB per token) 8,192 tokens.
pub const DEFAULT_CONTEXT_MEMORY: usize = 1 << 30;

impl LlamaBuilder {
    /// The model to load (default: SmolLM2-135M-Instruct).
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::builder().with_source(LlamaSource::gemma3()).build().await.unwrap();
    /// # }
    /// ```
    pub fn with_source(mut self, source: LlamaSource) -> Self {
        self.source = source;
        self
    }

    /// Threads for inference (default: all cores).
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::builder().with_threads(2).build().await.unwrap();
    /// # }
    /// ```
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Context length in tokens. The default is the length the model was
    /// trained with, capped so that one session's KV cache fits in the
    /// context memory budget ([`with_context_memory`](Self::with_context_memory)).
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::builder().with_context_length(8192).build().await.unwrap();
    /// assert_eq!(llm.model().n_ctx(), 8192);
    /// # }
    /// ```
    pub fn with_context_length(mut self, n_ctx: usize) -> Self {
        self.n_ctx = Some(n_ctx);
        self
    }

    /// The most KV-cache memory one session may take at a full context, which
    /// caps the default context length (default [`DEFAULT_CONTEXT_MEMORY`]).
    /// An explicit [`with_context_length`](Self::with_context_length) wins.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::builder().with_context_memory(64 << 20).build().await.unwrap();
    /// println!("context: {} tokens", llm.model().n_ctx());
    /// # }
    /// ```
    pub fn with_context_memory(mut self, bytes: usize) -> Self {
        self.context_memory = Some(bytes);
        self
    }

    /// Fast (8-bit activations, f16 KV, the default) or precise (f32) computation.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::builder().with_precision(Precision::Precise).build().await.unwrap();
    /// # }
    /// ```
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// How the KV cache stores keys and values: f16 (the default on the fast path),
    /// f32, or [`KvDtype::Q8_0`], which halves memory and saved bytes per token.
    /// Q8_0 is lossy: answers can differ slightly from an f16 cache, though a
    /// Q8_0 session still saves, loads and forks exactly.
    ///
    /// ```no_run
    /// use colloquy::language::*;
    /// use colloquy::engine::kv::KvDtype;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::builder().with_kv_cache_type(KvDtype::Q8_0).build().await.unwrap();
    /// # }
    /// ```
    pub fn with_kv_cache_type(mut self, dtype: KvDtype) -> Self {
        self.kv_dtype = Some(dtype);
        self
    }

    /// What to do when a conversation outgrows the context.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::builder().with_context_policy(ContextPolicy::Error).build().await.unwrap();
    /// # }
    /// ```
    pub fn with_context_policy(mut self, policy: ContextPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// A Jinja chat template to use instead of the model's own.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let chatml = colloquy::template::CHATML;
    /// let llm = Llama::builder().with_chat_template(chatml).build().await.unwrap();
    /// # }
    /// ```
    pub fn with_chat_template(mut self, template: impl Into<String>) -> Self {
        self.template = Some(template.into());
        self
    }

    /// Memory budget of the prefix cache, which lets a session adopt the KV
    /// blocks of any other session of this model that began with the same
    /// tokens (default 512 MiB; 0 turns it off).
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::builder().with_prefix_cache_bytes(64 << 20).build().await.unwrap();
    /// # }
    /// ```
    pub fn with_prefix_cache_bytes(mut self, bytes: usize) -> Self {
        self.prefix_cache_bytes = Some(bytes);
        self
    }

    /// Show progress bars while fetching a model and while reading long prompts
    /// (default: on, drawn only when stderr is a terminal).
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::builder().with_progress(false).build().await.unwrap();
    /// # }
    /// ```
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Fetches (if needed) and loads the model on a background thread.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::builder().build().await.unwrap();
    /// # }
    /// ```
    pub async fn build(self) -> Result<Llama> {
        let (tx, rx) = oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(self.build_blocking());
        });
        rx.await.map_err(|_| Error::WorkerStopped)?
    }

    /// Loads the model on the calling thread.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// let llm = Llama::builder().with_progress(false).build_blocking().unwrap();
    /// ```
    pub fn build_blocking(self) -> Result<Llama> {
        let path = self.source.resolve(self.progress.unwrap_or(true))?;
        let mut opts = ModelOptions { precision: self.precision, ..ModelOptions::default() };
        if let Some(t) = self.threads {
            opts.threads = t;
        }
        opts.n_ctx = self.n_ctx;
        opts.context_memory = self.context_memory.unwrap_or(DEFAULT_CONTEXT_MEMORY);
        opts.kv_dtype = self.kv_dtype;
        let model = Model::load(&path, opts)?;
        let template = match &self.template {
            Some(t) => t.clone(),
            None => crate::template::source_for(model.gguf()),
        };
        let template = ChatTemplate::for_tokenizer(&template, model.tokenizer())?;
        let fingerprint = Fingerprint::of(&model);
        if model.precision() == Precision::Fast {
            // Hashing read every weight page; the fast path needs its packed copies only.
            model.gguf().release_pages();
        }
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("colloquy-model".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .map_err(|e| Error::Engine(colloquy_engine::Error::io("worker thread", e)))?;
        let prefix =
            Mutex::new(PrefixCache::new(self.prefix_cache_bytes.unwrap_or(DEFAULT_PREFIX_CACHE_BYTES)));
        let progress = self.progress.unwrap_or(true);
        let opens_thinking = template.opens_thinking();
        let inner = ModelContext {
            model,
            template,
            opens_thinking,
            fingerprint,
            policy: self.policy,
            progress,
            prefix,
            jobs: Mutex::new(jobs),
            grammars: std::sync::OnceLock::new(),
        };
        Ok(Llama { inner: Arc::new(inner) })
    }
}

/// A chat model loaded from a GGUF file. Cloning is cheap and shares the model.
///
/// Inference runs on a dedicated thread, so awaiting never blocks the async runtime.
///
/// ```no_run
/// use colloquy::language::*;
/// # #[tokio::main] async fn main() {
/// let llm = Llama::new_chat().await.unwrap();
/// let mut chat = llm.chat().with_system_prompt("Answer briefly.");
/// let answer = chat("What is 2 + 2?").await.unwrap();
/// println!("{answer}");
/// # }
/// ```
#[derive(Clone)]
pub struct Llama {
    pub(crate) inner: Arc<ModelContext>,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama").field("model", &self.inner.model.path()).finish()
    }
}

impl Llama {
    /// Loads the default chat model, SmolLM2-135M-Instruct, fetching it into the
    /// cache (`$COLLOQUY_HOME`, default `~/.cache/colloquy`) on first use.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// # }
    /// ```
    pub async fn new_chat() -> Result<Llama> {
        LlamaBuilder::default().build().await
    }

    /// A builder for any source and settings.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::builder().with_threads(4).build().await.unwrap();
    /// # }
    /// ```
    pub fn builder() -> LlamaBuilder {
        LlamaBuilder::default()
    }

    /// A chat with a new session.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut chat = llm.chat();
    /// chat("Hi!").to_std_out().await.unwrap();
    /// # }
    /// ```
    pub fn chat(&self) -> Chat<Llama> {
        Chat::new(self.clone())
    }

    /// The engine model.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// println!("{} threads, context {}", llm.model().threads(), llm.model().n_ctx());
    /// # }
    /// ```
    pub fn model(&self) -> &Model {
        &self.inner.model
    }

    /// Builds the token trie that constrained turns use (once per model; a
    /// second or so for a 262k vocabulary), so that the first constrained
    /// turn does not pay for it. Without this call, that turn builds it.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// llm.prepare_constraints().unwrap();
    /// # }
    /// ```
    pub fn prepare_constraints(&self) -> Result<()> {
        self.inner.grammars().map(|_| ())
    }

    /// The fingerprint that sessions of this model carry.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// println!("model {}", llm.fingerprint());
    /// # }
    /// ```
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.fingerprint
    }

    /// Size and hit counters of the prefix cache shared by this model's sessions.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// println!("{} cached blocks", llm.prefix_cache_stats().blocks);
    /// # }
    /// ```
    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.inner.prefix().stats()
    }

    /// Whether this model's chat template opens `<think>` in the generation
    /// prompt ([`ChatTemplate::opens_thinking`]), so that its answers start
    /// inside their reasoning.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// assert!(!llm.opens_thinking());
    /// # }
    /// ```
    pub fn opens_thinking(&self) -> bool {
        self.inner.opens_thinking
    }

    /// The tokens the model reads for `messages`, rendered with the chat
    /// template up to where the answer starts (what a session holding exactly
    /// these messages has read). Useful for counting what fits in the context.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let hi = [ChatMessage::new(MessageType::UserMessage, "Hi!")];
    /// println!("{} tokens", llm.render_tokens(&hi).unwrap().len());
    /// # }
    /// ```
    pub fn render_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        turn::render(&self.inner, messages, &[])
    }

    /// Starts a turn on `session` that appends `messages` (see [`RunningTurn`]),
    /// for a scheduler that steps many turns in one batch with
    /// [`step`](Self::step). This renders the conversation and adopts the KV
    /// the session or the prefix cache already holds, on the calling thread;
    /// the session is unchanged until the turn is committed.
    ///
    /// Errors: [`Error::ContextOverflow`], [`Error::SessionModelMismatch`],
    /// template errors.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let session = llm.new_chat_session().unwrap();
    /// let hi = [ChatMessage::new(MessageType::UserMessage, "Hi!")];
    /// let mut turn = llm.begin_turn(&session, &hi, &GenerationParameters::new()).unwrap();
    /// while !turn.is_finished() {
    ///     llm.step(&mut [&mut turn], 512).unwrap();
    ///     print!("{}", turn.take_text());
    /// }
    /// turn.commit().unwrap();
    /// # }
    /// ```
    pub fn begin_turn(
        &self,
        session: &LlamaChatSession,
        messages: &[ChatMessage],
        params: &GenerationParameters,
    ) -> Result<RunningTurn> {
        let st = session.lock().clone();
        Ok(RunningTurn::chat(&self.inner, st, messages, params)?.with_target(Arc::clone(&session.state)))
    }

    /// Starts a plain completion of `prompt` (no chat template; a BOS token is
    /// added where the model wants one). Commit it to let the prefix cache
    /// keep its blocks.
    ///
    /// Errors: [`Error::EmptyPrompt`], [`Error::ContextOverflow`].
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let params = GenerationParameters::new().with_max_length(8);
    /// let mut turn = llm.begin_completion("The capital of France is", &params).unwrap();
    /// while !turn.is_finished() {
    ///     llm.step(&mut [&mut turn], 512).unwrap();
    /// }
    /// println!("{}", turn.answer());
    /// # }
    /// ```
    pub fn begin_completion(&self, prompt: &str, params: &GenerationParameters) -> Result<RunningTurn> {
        let tok = self.inner.model.tokenizer();
        let mut ids = Vec::new();
        if let Some(bos) = tok.bos().filter(|_| tok.add_bos()) {
            ids.push(bos);
        }
        ids.extend(tok.encode(prompt, false));
        if ids.len() <= usize::from(tok.bos().is_some() && tok.add_bos()) {
            return Err(Error::EmptyPrompt);
        }
        let st = self.new_chat_session()?.lock().clone();
        RunningTurn::completion(&self.inner, st, ids, params)
    }

    /// Advances every unfinished turn by one forward pass, all in one batch:
    /// a decoding turn feeds its newest token, and turns still reading their
    /// prompts share `prompt_budget` tokens, so a long prompt does not stall
    /// the others. Each turn gets exactly the tokens it would get alone.
    /// Blocks the calling thread for the pass.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut turn = llm.begin_completion("Once upon a time", &GenerationParameters::new()).unwrap();
    /// let ran = llm.step(&mut [&mut turn], 512).unwrap();
    /// assert_eq!(ran.sequences, 1);
    /// # }
    /// ```
    pub fn step(&self, turns: &mut [&mut RunningTurn], prompt_budget: usize) -> Result<StepStats> {
        running::step(&self.inner, turns, prompt_budget)
    }

    /// A new session holding the first `at` messages of `session`'s
    /// transcript, and the KV of the tokens they share with it. Its next turn
    /// gives exactly what a fresh conversation of those messages would.
    ///
    /// Errors: [`Error::ForkOutOfRange`].
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut chat = llm.chat();
    /// chat("Hi!").await.unwrap();
    /// let session = chat.session().unwrap();
    /// let before_answer = llm.fork_at(&session, 1).unwrap();
    /// assert_eq!(before_answer.transcript().len(), 1);
    /// # }
    /// ```
    pub fn fork_at(&self, session: &LlamaChatSession, at: usize) -> Result<LlamaChatSession> {
        let transcript = session.transcript();
        if at > transcript.len() {
            return Err(Error::ForkOutOfRange { at, len: transcript.len() });
        }
        let mut st = session.lock().clone();
        let kept = &transcript[..at];
        // The tokens the kept messages render to, up to where they diverge
        // from what the session read: their KV is the same, position by position.
        let rendered = if kept.is_empty() { Vec::new() } else { turn::render(&self.inner, kept, &[])? };
        let common = st.tokens.iter().zip(&rendered).take_while(|(a, b)| a == b).count();
        st.kv.truncate(common);
        st.tokens.truncate(st.kv.len());
        st.history = kept.to_vec();
        st.pending = None;
        st.last_turn = None;
        st.versions = Default::default();
        Ok(LlamaChatSession::from_state(st))
    }

    /// Runs `f` on the model thread and awaits its result.
    pub(crate) async fn on_worker<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Arc<ModelContext>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let inner = Arc::clone(&self.inner);
        let job: Job = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&inner)));
            let _ = tx.send(r.unwrap_or(Err(Error::WorkerStopped)));
        });
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| Error::WorkerStopped)?;
        rx.await.map_err(|_| Error::WorkerStopped)?
    }
}

impl ChatModel for Llama {
    type ChatSession = LlamaChatSession;
    type Error = Error;

    fn new_chat_session(&self) -> Result<LlamaChatSession> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(LlamaChatSession::from_state(SessionState {
            fingerprint: self.inner.fingerprint,
            kv: self.inner.model.new_kv(),
            tokens: Vec::new(),
            history: Vec::new(),
            pending: None,
            rng: RngState { seed, word_pos: 0 },
            dropped: Vec::new(),
            last_turn: None,
            versions: Default::default(),
        }))
    }

    fn add_messages_with_callback(
        &self,
        session: &mut LlamaChatSession,
        messages: &[ChatMessage],
        sampler: GenerationParameters,
        mut on_token: Box<dyn FnMut(String) + Send + 'static>,
    ) -> impl std::future::Future<Output = Result<()>> + Send {
        let state = Arc::clone(&session.state);
        let messages = messages.to_vec();
        let this = self.clone();
        async move {
            this.on_worker(move |inner: &Arc<ModelContext>| {
                let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
                // Work on a copy (its KV blocks are shared copy-on-write) and commit
                // it only when the turn succeeds, so a failed turn changes nothing.
                let mut turn = RunningTurn::chat(inner, guard.clone(), &messages, &sampler)?;
                while !turn.is_finished() {
                    running::step(inner, &mut [&mut turn], UBATCH)?;
                    let text = turn.take_text();
                    if !text.is_empty() {
                        on_token(text);
                    }
                }
                *guard = turn.into_state()?.0;
                Ok(())
            })
            .await
        }
    }
}
