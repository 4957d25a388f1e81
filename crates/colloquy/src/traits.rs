//! The two traits at the heart of the API: a model that chats, and the session
//! state it chats in.

use std::future::Future;

use crate::message::ChatMessage;
use crate::params::GenerationParameters;

/// The state of a chat model after it has read a conversation: its KV cache,
/// the tokens behind it, and the messages that produced them.
///
/// ```no_run
/// use colloquy::language::*;
///
/// # #[tokio::main] async fn main() {
/// let llm = Llama::new_chat().await.unwrap();
/// let mut chat = llm.chat();
/// chat("Hi!").await.unwrap();
/// let session = chat.session().unwrap();
/// let bytes = session.to_bytes().unwrap();
/// let restored = LlamaChatSession::from_bytes(&bytes).unwrap();
/// assert_eq!(restored.history(), session.history());
/// # }
/// ```
pub trait ChatSession: Sized {
    /// The error type of this session.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Serializes the whole session, KV cache included, into a self-contained blob.
    fn to_bytes(&self) -> Result<Vec<u8>, Self::Error>;

    /// Restores a session from [`to_bytes`](Self::to_bytes) output. No model is needed;
    /// whether the session belongs to a model is checked when it is first used with one.
    fn from_bytes(bytes: &[u8]) -> Result<Self, Self::Error>;

    /// The messages that have been fed to the model, in order.
    fn history(&self) -> Vec<ChatMessage>;

    /// An independent copy: writing to one never changes the other.
    fn try_clone(&self) -> Result<Self, Self::Error>;
}

/// A model that can hold conversations in [`ChatSession`]s.
///
/// Implement it for your own model to use it with [`Chat`](crate::Chat).
///
/// ```no_run
/// use colloquy::language::*;
/// # #[tokio::main] async fn main() {
/// let llm = Llama::new_chat().await.unwrap();
/// let mut session = llm.new_chat_session().unwrap();
/// let messages = [ChatMessage::new(MessageType::UserMessage, "Hello!")];
/// let params = GenerationParameters::new().with_temperature(0.0);
/// llm.add_messages_with_callback(&mut session, &messages, params, Box::new(|piece| print!("{piece}")))
///     .await
///     .unwrap();
/// # }
/// ```
pub trait ChatModel: Clone + Send + Sync + 'static {
    /// The session type.
    type ChatSession: ChatSession + Send + 'static;
    /// The error type.
    type Error: std::error::Error + Send + Sync + 'static + From<<Self::ChatSession as ChatSession>::Error>;

    /// A new, empty session.
    fn new_chat_session(&self) -> Result<Self::ChatSession, Self::Error>;

    /// Feeds `messages` to `session`, then generates the model's answer, calling
    /// `on_token` with each piece of text as it is produced.
    fn add_messages_with_callback(
        &self,
        session: &mut Self::ChatSession,
        messages: &[ChatMessage],
        sampler: GenerationParameters,
        on_token: Box<dyn FnMut(String) + Send + 'static>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
