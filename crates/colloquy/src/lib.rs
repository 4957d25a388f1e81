//! # colloquy
//!
//! Run chat language models locally, and treat a conversation as a durable
//! object. A [`LlamaChatSession`] holds the model's state after it has read a
//! conversation (its KV cache). You can save it to bytes and load it back
//! without re-reading the text, list the messages behind it, and fork it into
//! independent continuations. All of this is exact: a resumed or forked
//! session continues with the same tokens as one that never stopped.
//!
//! Everything users need is in the [`language`] prelude:
//!
//! ```no_run
//! use colloquy::language::*;
//! ```
//!
//! ## Save a conversation and pick it up later
//!
//! [`ChatSession::to_bytes`] writes the whole session (KV cache included) into
//! one checksummed blob; [`ChatSession::from_bytes`] reads it back with no
//! model at hand. The next turn reads only the new message.
//!
//! ```no_run
//! use colloquy::language::*;
//!
//! #[tokio::main]
//! async fn main() {
//!     let llm = Llama::new_chat().await.unwrap();
//!     let mut chat = llm.chat();
//!     chat("My name is Ada. Say hi.").to_std_out().await.unwrap();
//!
//!     let bytes = chat.session().unwrap().to_bytes().unwrap();
//!     std::fs::write("ada.session", &bytes).unwrap();
//!
//!     // Later, maybe in another process:
//!     let bytes = std::fs::read("ada.session").unwrap();
//!     let session = LlamaChatSession::from_bytes(&bytes).unwrap();
//!     let mut chat = llm.chat().with_session(session);
//!     chat("What is my name?").to_std_out().await.unwrap();
//! }
//! ```
//!
//! ## Read the history
//!
//! [`ChatSession::history`] lists the messages the model has read. An answer
//! enters it when the next turn begins (its end-of-turn token is fed then);
//! [`LlamaChatSession::transcript`] includes the latest answer too.
//!
//! ```no_run
//! use colloquy::language::*;
//!
//! # #[tokio::main] async fn main() {
//! let llm = Llama::new_chat().await.unwrap();
//! let mut chat = llm.chat();
//! chat("Hello, world!").await.unwrap();
//! let session = chat.session().unwrap();
//! let history = session.history();
//! assert_eq!(history.len(), 1);
//! assert_eq!(history[0].role(), MessageType::UserMessage);
//! assert_eq!(history[0].content(), "Hello, world!");
//! assert_eq!(session.transcript().len(), 2);
//! # }
//! ```
//!
//! ## Fork a conversation
//!
//! [`ChatSession::try_clone`] gives an independent session: what one branch
//! writes never shows in the other. The KV cache is shared copy-on-write, so a
//! fork is cheap until the branches diverge.
//!
//! ```no_run
//! use colloquy::language::*;
//!
//! # #[tokio::main] async fn main() {
//! let llm = Llama::new_chat().await.unwrap();
//! let mut chat = llm.chat();
//! chat("Suggest a name for a cat.").await.unwrap();
//! let fork = chat.session().unwrap().try_clone().unwrap();
//!
//! let mut other = llm.chat().with_session(fork);
//! let a = chat("Make it shorter.").await.unwrap();
//! let b = other("Make it longer.").await.unwrap();
//! # }
//! ```

#![warn(missing_docs)]

mod chat;
pub mod constraint;
mod context;
pub mod error;
pub mod files;
mod llama;
mod message;
mod params;
pub mod running;
pub mod session;
pub mod store;
pub mod template;
pub mod tools;
mod traits;
mod turn;

pub use chat::{Chat, ChatResponseBuilder};
pub use colloquy_engine::linear::Precision;
pub use constraint::Constraint;
pub use context::ContextPolicy;
pub use error::{Error, Result};
pub use llama::{Llama, LlamaBuilder, LlamaSource, DEFAULT_CONTEXT_MEMORY};
pub use message::{split_reasoning, ChatMessage, MessageType};
pub use params::GenerationParameters;
pub use running::{FinishReason, RunningTurn};
/// The `schemars` this crate derives schemas with, for `#[derive(JsonSchema)]`
/// on the types you ask [`ChatResponseBuilder::typed`] for.
pub use schemars;
pub use session::LlamaChatSession;
pub use session::TurnStats;
pub use store::SessionStore;
pub use traits::{ChatModel, ChatSession};

/// Everything a chat application needs, in one `use`.
///
/// ```
/// use colloquy::language::*;
/// let params = GenerationParameters::default();
/// ```
pub mod language {
    pub use crate::split_reasoning;
    pub use crate::{
        Chat, ChatMessage, ChatModel, ChatResponseBuilder, ChatSession, Constraint, ContextPolicy, Error,
        FinishReason, GenerationParameters, Llama, LlamaBuilder, LlamaChatSession, LlamaSource, MessageType,
        Precision, RunningTurn, SessionStore, TurnStats,
    };
    pub use futures_util::StreamExt;
}

/// The seed examples (Kalosm's `ChatSession` page with `kalosm` replaced by
/// `colloquy`), kept here so that every build checks they compile.
#[doc = include_str!("../../../docs/seed-examples.md")]
#[doc(hidden)]
pub mod seed_examples {}

/// The inference engine underneath (GGUF, tokenizer, kernels, KV cache, sampler).
pub use colloquy_engine as engine;
