//! Chat sessions: the KV cache of a conversation plus what produced it.

use std::sync::{Arc, Mutex, MutexGuard};

use colloquy_engine::kv::{KvCache, BLOCK_TOKENS};
use colloquy_engine::model::Model;
use colloquy_engine::sampler::RngState;

use crate::error::{Error, Result};
use crate::message::ChatMessage;
use crate::traits::ChatSession;
use crate::turn::TurnStats;

pub mod format;

/// Identifies a model by its weights and tokenizer: 128 bits of xxh3 over every
/// tensor's name, shape, type and data, and every token's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    /// Hashes a loaded model (about 10 ms per 100 MB of weights).
    pub fn of(model: &Model) -> Fingerprint {
        let g = model.gguf();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for t in g.tensors() {
            h.update(t.name.as_bytes());
            for d in &t.dims {
                h.update(&d.to_le_bytes());
            }
            h.update(&t.ty.id().to_le_bytes());
            // The weights live in packed copies (fast path) or are read back on
            // demand (precise path): each piece's pages are dropped once hashed,
            // so resident memory keeps to one copy.
            const PIECE: usize = 8 << 20;
            for (i, piece) in g.tensor_data(t).chunks(PIECE).enumerate() {
                h.update(piece);
                g.release_range(t.offset as usize + i * PIECE, piece.len());
            }
        }
        let tok = model.tokenizer();
        for id in 0..tok.vocab_size() as u32 {
            h.update(tok.token_text(id).unwrap_or_default().as_bytes());
            h.update(&[0xff]);
        }
        Fingerprint(h.digest128().to_le_bytes())
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Everything a session holds.
#[derive(Debug, Clone)]
pub(crate) struct SessionState {
    /// The model this state belongs to.
    pub fingerprint: Fingerprint,
    /// K/V of `tokens`.
    pub kv: KvCache,
    /// The tokens whose K/V is in `kv`, in order.
    pub tokens: Vec<u32>,
    /// Messages fed to the model.
    pub history: Vec<ChatMessage>,
    /// The latest answer: generated, but fed only when the next turn begins.
    pub pending: Option<String>,
    /// The session's random stream.
    pub rng: RngState,
    /// What the latest turn cost (not saved).
    pub last_turn: Option<TurnStats>,
}

/// A conversation with a [`Llama`](crate::Llama) model: its KV cache, tokens and
/// messages. Save it with [`ChatSession::to_bytes`], restore it with
/// [`ChatSession::from_bytes`], fork it with [`ChatSession::try_clone`].
///
/// ```no_run
/// use colloquy::language::*;
///
/// # #[tokio::main] async fn main() {
/// let llm = Llama::new_chat().await.unwrap();
/// let mut chat = llm.chat();
/// chat("Name a color.").await.unwrap();
/// let session: LlamaChatSession = chat.session().unwrap();
/// std::fs::write("chat.session", session.to_bytes().unwrap()).unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct LlamaChatSession {
    pub(crate) state: Arc<Mutex<SessionState>>,
}

impl LlamaChatSession {
    pub(crate) fn from_state(state: SessionState) -> Self {
        LlamaChatSession { state: Arc::new(Mutex::new(state)) }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        // A turn that panicked leaves the previous consistent state behind (state
        // is only replaced once a turn completes), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole transcript, including the latest answer that has not yet been
    /// fed back to the model. Use this for chat UIs; [`ChatSession::history`]
    /// lists only what the model has read.
    ///
    /// ```no_run
    /// use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut chat = llm.chat();
    /// chat("Hello!").await.unwrap();
    /// let session = chat.session().unwrap();
    /// assert_eq!(session.history().len(), 1);
    /// assert_eq!(session.transcript().len(), 2); // the answer too
    /// # }
    /// ```
    pub fn transcript(&self) -> Vec<ChatMessage> {
        let s = self.lock();
        let mut all = s.history.clone();
        if let Some(a) = &s.pending {
            all.push(ChatMessage::new(crate::message::MessageType::ModelAnswer, a.clone()));
        }
        all
    }

    /// What the latest turn in this session cost: prompt tokens processed, tokens
    /// reused, time to first token. `None` before the first turn, and after loading.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut chat = llm.chat();
    /// chat("Hi").await.unwrap();
    /// let stats = chat.session().unwrap().last_turn().unwrap();
    /// println!("{} prompt tokens, first token after {:?}", stats.prompt_tokens, stats.time_to_first_token);
    /// # }
    /// ```
    pub fn last_turn(&self) -> Option<TurnStats> {
        self.lock().last_turn
    }

    /// The tokens the model has read in this session, in order.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let session = llm.new_chat_session().unwrap();
    /// assert!(session.tokens().is_empty());
    /// # }
    /// ```
    pub fn tokens(&self) -> Vec<u32> {
        self.lock().tokens.clone()
    }

    /// Writes the session to `path` atomically: a temporary file in the same
    /// folder is written and synced, then renamed over `path`. On any error
    /// (a full disk, say) the previous file at `path` is left as it was.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let session = llm.new_chat_session().unwrap();
    /// session.save("chat.session").unwrap();
    /// let again = LlamaChatSession::load("chat.session").unwrap();
    /// # }
    /// ```
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path.as_ref(), &bytes)
    }

    /// Reads a session written by [`save`](Self::save) or [`ChatSession::to_bytes`].
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// let session = LlamaChatSession::load("chat.session").unwrap();
    /// ```
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| colloquy_engine::Error::io(path, e))?;
        Self::from_bytes(&bytes)
    }

    /// How many tokens the model has read in this session.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let session = llm.new_chat_session().unwrap();
    /// assert_eq!(session.token_count(), 0);
    /// # }
    /// ```
    pub fn token_count(&self) -> usize {
        self.lock().tokens.len()
    }

    /// Bytes of K/V memory the session holds. With a sliding-window model
    /// (Gemma 3) the windowed layers hold only the positions a next token can
    /// still see, so this grows with the conversation only for the other layers.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut chat = llm.chat();
    /// chat("Hello!").await.unwrap();
    /// let session = chat.session().unwrap();
    /// println!("{} tokens in {} KV bytes", session.token_count(), session.kv_bytes());
    /// # }
    /// ```
    pub fn kv_bytes(&self) -> usize {
        self.lock().kv.used_bytes()
    }

    /// The positions whose windowed-layer K/V the session still holds (empty
    /// for models without sliding-window layers; see [`kv_bytes`](Self::kv_bytes)).
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let session = llm.new_chat_session().unwrap();
    /// assert!(session.window_positions().is_empty());
    /// # }
    /// ```
    pub fn window_positions(&self) -> std::ops::Range<usize> {
        let st = self.lock();
        let held = st.kv.window_blocks().iter().position(Option::is_some);
        match held {
            Some(b) => (b * BLOCK_TOKENS).min(st.kv.len())..st.kv.len(),
            None => 0..0,
        }
    }

    /// How many KV blocks (of 32 positions) this session shares in memory with
    /// `other`: the same block, not a copy, at the same place in both. Forks
    /// share their common blocks until they write into them, and so do
    /// sessions loaded through one [`SessionStore`](crate::SessionStore).
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut chat = llm.chat();
    /// chat("Tell me a long story.").await.unwrap();
    /// let a = chat.session().unwrap();
    /// let b = a.try_clone().unwrap();
    /// assert_eq!(a.shares_blocks_with(&b), a.token_count().div_ceil(32));
    /// # }
    /// ```
    pub fn shares_blocks_with(&self, other: &LlamaChatSession) -> usize {
        if Arc::ptr_eq(&self.state, &other.state) {
            return self.lock().kv.blocks().len();
        }
        let mine = self.lock().kv.clone();
        let theirs = other.lock().kv.clone();
        mine.blocks().iter().zip(theirs.blocks()).filter(|(a, b)| Arc::ptr_eq(a, b)).count()
    }
}

impl ChatSession for LlamaChatSession {
    type Error = Error;

    fn to_bytes(&self) -> Result<Vec<u8>> {
        Ok(format::encode(&self.lock()))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self::from_state(format::decode(bytes)?))
    }

    fn history(&self) -> Vec<ChatMessage> {
        self.lock().history.clone()
    }

    fn try_clone(&self) -> Result<Self> {
        // The KV blocks are shared copy-on-write: the first write to a shared
        // block copies it, so the two sessions never see each other's writes.
        Ok(Self::from_state(self.lock().clone()))
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename, then
/// syncs the folder, so a crash leaves either the old or the new file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e| Error::Engine(colloquy_engine::Error::io(path, e));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
