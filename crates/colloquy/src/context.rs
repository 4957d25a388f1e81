//! The model context: a loaded model and everything its turns read (template,
//! fingerprint, context policy, prefix cache), shared by every chat of one
//! [`Llama`](crate::Llama).

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use colloquy_engine::model::Model;
use colloquy_engine::prefix::PrefixCache;

use crate::constraint::Grammars;
use crate::error::Result;
use crate::session::Fingerprint;
use crate::template::ChatTemplate;

/// What to do when a conversation no longer fits in the context.
///
/// ```
/// use colloquy::language::*;
/// assert_eq!(ContextPolicy::default(), ContextPolicy::Error);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContextPolicy {
    /// Fail the turn with [`Error::ContextOverflow`](crate::Error::ContextOverflow), which names the options
    /// that fix it. The session is left as it was.
    #[default]
    Error,
    /// Keep the system prompt and the newest message, and drop the oldest
    /// messages until the conversation takes at most half of the context, so
    /// that the re-read this costs is paid once per half a context of new
    /// text, not on every turn. The model re-reads what is kept (exactly, as a
    /// fresh session would). Each drop is reported
    /// ([`TurnStats::dropped_messages`](crate::TurnStats::dropped_messages)),
    /// and the dropped messages stay in the session
    /// ([`LlamaChatSession::dropped_messages`](crate::LlamaChatSession::dropped_messages)).
    DropOldest,
}

pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// A loaded model and what its turns need: the template, the fingerprint,
/// the context policy, the prefix cache and the worker's job queue.
pub(crate) struct ModelContext {
    pub model: Model,
    pub template: ChatTemplate,
    /// The template opens `<think>` in the generation prompt (checked once, at build).
    pub opens_thinking: bool,
    pub fingerprint: Fingerprint,
    pub policy: ContextPolicy,
    /// Draw a progress bar while reading long prompts (on a terminal).
    pub progress: bool,
    pub prefix: Mutex<PrefixCache>,
    pub jobs: Mutex<mpsc::Sender<Job>>,
    /// The grammar compiler, built on the first constrained turn.
    pub grammars: OnceLock<Arc<Grammars>>,
}

impl ModelContext {
    pub fn prefix(&self) -> std::sync::MutexGuard<'_, PrefixCache> {
        self.prefix.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The grammar compiler (its token trie is built on first use).
    pub fn grammars(&self) -> Result<Arc<Grammars>> {
        if let Some(g) = self.grammars.get() {
            return Ok(Arc::clone(g));
        }
        let g = Grammars::new(self.model.tokenizer())?;
        Ok(Arc::clone(self.grammars.get_or_init(|| g)))
    }
}
