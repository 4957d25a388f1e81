//! Chat sessions: the KV cache of a conversation plus what produced it.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use colloquy_engine::kv::BLOCK_TOKENS;

use crate::error::{Error, Result};
use crate::files::{self, FileLock, TempFile};
use crate::message::ChatMessage;
use crate::traits::ChatSession;

pub mod format;
mod state;

pub use state::{Fingerprint, TurnStats};
pub(crate) use state::{SessionState, Versions};

/// The place key of a session file (its path after symlinks, folder canonical).
fn file_place(target: &Path) -> String {
    format!("file:{}", files::canonical_file(target).display())
}

/// A session file's version: its last 8 bytes, which are the checksum of
/// everything before them (`None`: no file).
fn file_version(path: &Path) -> Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(files::io_err(path)(e)),
    };
    let len = f.metadata().map_err(files::io_err(path))?.len();
    let mut tail = [0u8; 8];
    let n = len.min(8) as usize;
    f.seek(SeekFrom::Start(len - n as u64)).map_err(files::io_err(path))?;
    f.read_exact(&mut tail[..n]).map_err(files::io_err(path))?;
    Ok(Some(u64::from_le_bytes(tail)))
}

fn bytes_version(bytes: &[u8]) -> u64 {
    let mut tail = [0u8; 8];
    let n = bytes.len().min(8);
    tail[..n].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_le_bytes(tail)
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

    /// Writes the session to `path` atomically, if the file still holds what
    /// this session was loaded from (or, for a session that was not loaded from
    /// `path`, if there is no file yet). Otherwise nothing is written and the
    /// error is [`Error::SessionConflict`]: another writer saved in between.
    ///
    /// A temporary file in the same folder is written and synced, then renamed
    /// over the target under a lock on the folder, so a crash or a full disk
    /// leaves the previous file as it was. A symlink is written through (its
    /// target is replaced), the file keeps its permission bits, and a read-only
    /// file is refused ([`Error::SessionFileReadOnly`]). Temporary files that
    /// killed writers left in the folder are removed.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let session = llm.new_chat_session().unwrap();
    /// session.save("chat.session").unwrap();
    /// let again = LlamaChatSession::load("chat.session").unwrap();
    /// again.save("chat.session").unwrap(); // the version it was loaded from
    /// // A session that did not come from the file cannot replace it.
    /// let other = llm.new_chat_session().unwrap();
    /// assert!(matches!(other.save("chat.session"), Err(Error::SessionConflict { .. })));
    /// # }
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let target = files::resolve_target(path.as_ref())?;
        let place = file_place(&target);
        let (bytes, expected) = {
            let st = self.lock();
            (format::encode(&st), st.versions.get(&place))
        };
        write_session_file(&target, &bytes, Some(expected))?;
        self.lock().versions.set(place, bytes_version(&bytes));
        Ok(())
    }

    /// Reads a session written by [`save`](Self::save) or [`ChatSession::to_bytes`],
    /// and remembers the file's version for the next [`save`](Self::save) to it.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// let session = LlamaChatSession::load("chat.session").unwrap();
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| colloquy_engine::Error::io(path, e))?;
        let session = Self::from_bytes(&bytes)?;
        let place = file_place(&files::resolve_target(path)?);
        session.lock().versions.set(place, bytes_version(&bytes));
        Ok(session)
    }

    /// The messages dropped from the context to make room
    /// ([`ContextPolicy::DropOldest`](crate::ContextPolicy::DropOldest)),
    /// oldest first. The model no longer reads them; they are kept here so that
    /// no part of the conversation is lost. [`ChatSession::history`] starts
    /// where these end.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let session = llm.new_chat_session().unwrap();
    /// assert!(session.dropped_messages().is_empty());
    /// # }
    /// ```
    pub fn dropped_messages(&self) -> Vec<ChatMessage> {
        self.lock().dropped.clone()
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

    /// The fingerprint of the model the session belongs to (compare it with
    /// [`Llama::fingerprint`](crate::Llama::fingerprint)).
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// assert_eq!(llm.new_chat_session().unwrap().fingerprint(), llm.fingerprint());
    /// # }
    /// ```
    pub fn fingerprint(&self) -> Fingerprint {
        self.lock().fingerprint
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

/// Writes `bytes` to `path` atomically, whatever the file holds now: through
/// a synced temporary file and a rename, then a sync of the folder, so a crash
/// leaves either the old or the new file. Like [`LlamaChatSession::save`], it
/// writes through symlinks, keeps the file's mode and refuses read-only files,
/// but it does not compare versions.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("blob");
/// colloquy::session::write_atomic(&path, b"one").unwrap();
/// colloquy::session::write_atomic(&path, b"two").unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"two");
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_session_file(&files::resolve_target(path)?, bytes, None)
}

/// Replaces `target` (symlinks already followed) with `bytes`. With
/// `expected`, only while the file's version is that one (`Some(None)`: while
/// there is no file).
fn write_session_file(target: &Path, bytes: &[u8], expected: Option<Option<u64>>) -> Result<()> {
    let dir = files::parent_dir(target);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    files::remove_stale_temp_files(&dir)?;
    let mode = match std::fs::metadata(target) {
        Ok(m) if m.permissions().readonly() => {
            return Err(Error::SessionFileReadOnly { path: target.to_path_buf() });
        }
        Ok(m) => file_mode(&m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(files::io_err(target)(e)),
    };
    let tmp = TempFile::write(&dir, &name, bytes, mode)?;
    // The check and the rename happen under one lock, so two writers that
    // read the same version cannot both replace it.
    let _lock = FileLock::acquire_dir(&dir)?;
    if let Some(expected) = expected {
        let found = file_version(target)?;
        if found != expected {
            return Err(Error::SessionConflict { id: target.display().to_string(), expected, found });
        }
    }
    tmp.commit(target)?;
    files::sync_dir(&dir)
}

#[cfg(unix)]
fn file_mode(m: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    Some(m.permissions().mode() & 0o7777)
}

#[cfg(not(unix))]
fn file_mode(_: &std::fs::Metadata) -> Option<u32> {
    None
}
