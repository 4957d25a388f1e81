//! The error type of the `colloquy` crate.

/// Everything that can go wrong in colloquy's public API.
///
/// Session-format errors each name their cause, so callers can tell a file from
/// another model from a damaged one.
///
/// ```
/// use colloquy::language::*;
/// match LlamaChatSession::from_bytes(b"not a session") {
///     Err(Error::SessionBadMagic) => {}
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The inference engine failed (loading a model, a bad token, context overflow, ...).
    #[error(transparent)]
    Engine(#[from] colloquy_engine::Error),
    /// The bytes do not start with the session magic.
    #[error("not a colloquy session (bad magic); pass bytes made by ChatSession::to_bytes")]
    SessionBadMagic,
    /// The session was written by a newer (or unknown) format version.
    #[error("session format version {found} is not supported (this colloquy reads version {supported}); upgrade colloquy")]
    SessionUnsupportedVersion {
        /// Version in the bytes.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The bytes end before the length the header declares.
    #[error("session is truncated: {found} bytes, the header declares {expected}; the file was cut short")]
    SessionTruncated {
        /// Declared length.
        expected: u64,
        /// Bytes given.
        found: u64,
    },
    /// The checksum does not match: some byte changed.
    #[error("session checksum mismatch: the bytes are corrupt")]
    SessionChecksum,
    /// The content is inconsistent although the checksum matched.
    #[error("corrupt session: {0}")]
    SessionCorrupt(String),
    /// The session was made by a different model (weights or tokenizer differ).
    #[error("session belongs to another model (fingerprint {found}, this model is {expected}); load it with the model that made it")]
    SessionModelMismatch {
        /// This model's fingerprint.
        expected: String,
        /// The session's fingerprint.
        found: String,
    },
    /// The session's KV cache has another shape or storage type than this model
    /// makes (for example a Q8_0 session on a model loaded with an f16 cache).
    #[error("session KV layout {found} differs from this model's {expected}; load the model with the same KV cache type")]
    SessionKvMismatch {
        /// This model's layout.
        expected: String,
        /// The session's layout.
        found: String,
    },
    /// The chat template (the GGUF's, or one given to
    /// `LlamaBuilder::with_chat_template`) is not valid Jinja.
    #[error("the chat template does not compile; pass a working one with LlamaBuilder::with_chat_template")]
    TemplateSyntax(#[source] minijinja::Error),
    /// Rendering the chat template failed (for example it raised an exception
    /// about the order of the messages).
    #[error("rendering the chat template failed")]
    TemplateRender(#[source] minijinja::Error),
    /// The model's worker thread is gone.
    #[error("the model's worker thread stopped; create the model again")]
    WorkerStopped,
    /// The session is being used by a turn that has not finished.
    #[error("the session is busy with another turn")]
    SessionBusy,
    /// A session id that a [`SessionStore`](crate::store::SessionStore) cannot use as a file name.
    #[error("invalid session id {id:?}: {reason}")]
    StoreInvalidId {
        /// The id given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No session is saved under this id.
    #[error("no session {session:?} in the store")]
    StoreSessionNotFound {
        /// The id asked for.
        session: String,
    },
    /// A session is already saved under this id (forks never overwrite).
    #[error("a session {session:?} already exists in the store")]
    StoreSessionExists {
        /// The id.
        session: String,
    },
    /// A session's manifest is damaged (checksum, length or a field).
    #[error("session {session:?}: its manifest is corrupt ({reason}); delete the session")]
    StoreManifestCorrupt {
        /// The session's id.
        session: String,
        /// What is wrong.
        reason: String,
    },
    /// A KV block file of a session is damaged (checksum, content or a field).
    #[error("session {session:?}: KV block {block} is corrupt ({reason})")]
    StoreBlockCorrupt {
        /// The session's id.
        session: String,
        /// The block's hash (its file name under `blocks/`).
        block: String,
        /// What is wrong.
        reason: String,
    },
    /// A KV block file that a session references is not in the store.
    #[error("session {session:?}: KV block {block} is missing from the store")]
    StoreBlockMissing {
        /// The session's id.
        session: String,
        /// The block's hash (its file name under `blocks/`).
        block: String,
    },
    /// A save found another version than the one this session was loaded
    /// from (or, for a new session, found one at all): another writer saved in
    /// between, and saving now would throw its turn away. Nothing was written.
    /// Load the session again and redo the turn on the version found.
    #[error(
        "session {id} was not saved: it changed since this session read it (expected {}, found {}); another writer saved in between. Load it again and retry the turn",
        version_text(.expected),
        version_text(.found)
    )]
    SessionConflict {
        /// The session: its id in a store, or its file's path.
        id: String,
        /// The version this session was loaded from (`None`: it expected no saved session).
        expected: Option<u64>,
        /// The version stored now (`None`: none is stored, e.g. it was deleted).
        found: Option<u64>,
    },
    /// A session file is read-only (it has no write permission bits): it is
    /// never replaced.
    #[error("session file {} is read-only; save to another path, or make it writable (chmod u+w)", .path.display())]
    SessionFileReadOnly {
        /// The file (after following symlinks).
        path: std::path::PathBuf,
    },
    /// The conversation does not fit in the context, and the context policy is
    /// [`ContextPolicy::Error`](crate::ContextPolicy::Error).
    #[error(
        "the conversation needs {needed} tokens, the context holds {n_ctx}: raise the context length (--ctx-size on the command line, LlamaBuilder::with_context_length in Rust), let the oldest messages be dropped (--context-policy drop-oldest, ContextPolicy::DropOldest), or start a new session"
    )]
    ContextOverflow {
        /// Tokens the prompt needs (the answer's first token included).
        needed: usize,
        /// The context length.
        n_ctx: usize,
    },
    /// A completion was asked for with a prompt of no tokens.
    #[error("the prompt is empty: give at least one token of text")]
    EmptyPrompt,
    /// A [`RunningTurn`](crate::running::RunningTurn) was committed before it
    /// finished: keep calling [`Llama::step`](crate::Llama::step) until
    /// `is_finished()`.
    #[error("the turn has not finished; step it until is_finished() before committing")]
    TurnNotFinished,
    /// A fork was asked for at a message the session does not have.
    #[error("cannot fork at message {at}: the session has {len} messages (0..={len})")]
    ForkOutOfRange {
        /// The requested number of messages to keep.
        at: usize,
        /// Messages in the session's transcript.
        len: usize,
    },
    /// A constraint (regex, JSON Schema or grammar) does not compile, or is
    /// too large to compile within llguidance's limits.
    #[error("the constraint does not compile: {0}; fix the regex, JSON Schema or grammar")]
    ConstraintInvalid(String),
    /// A constraint admits no answer (at its start, or after what the model
    /// wrote so far).
    #[error("the constraint cannot be satisfied: {0}; loosen the regex, JSON Schema or grammar")]
    ConstraintUnsatisfiable(String),
    /// A typed answer did not parse into its type (typically it was cut off
    /// by the token limit).
    #[error("the answer is not a valid {type_name}: {reason}; raise the token limit (GenerationParameters::with_max_length) if it was cut off")]
    TypedAnswer {
        /// The Rust type asked for.
        type_name: &'static str,
        /// Why it did not parse.
        reason: String,
    },
    /// A save waited too long for a gc of the same store, or a gc for saves.
    #[error("the session store is busy: {0}")]
    StoreBusy(String),
    /// The session store (Redis) did not answer, or answered out of step.
    /// Nothing was acknowledged; retry when it is back.
    #[error("the session store {store} is unavailable ({reason}); check that it runs and is reachable, then retry")]
    StoreUnavailable {
        /// The store, without its password.
        store: String,
        /// What went wrong.
        reason: String,
    },
    /// A store URL that cannot be used.
    #[error("invalid session store URL {url:?}: {reason}")]
    StoreUrl {
        /// The URL given, without its password.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn version_text(v: &Option<u64>) -> String {
    match v {
        Some(v) => format!("version {v}"),
        None => "no saved session".to_string(),
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
