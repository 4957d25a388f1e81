//! `Chat`: a conversation you can call like a function.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_channel::mpsc;
use futures_core::Stream;
use futures_util::lock::Mutex;

use crate::constraint::Constraint;
use crate::error::Error;
use crate::message::{ChatMessage, MessageType};
use crate::params::GenerationParameters;
use crate::traits::{ChatModel, ChatSession};

/// Chat settings; never locked across an await.
struct Settings<M: ChatModel> {
    system_prompt: Option<String>,
    sampler: GenerationParameters,
    /// A session given by `with_session`, taken by the next turn.
    next_session: Option<M::ChatSession>,
}

struct Shared<M: ChatModel> {
    model: M,
    settings: std::sync::Mutex<Settings<M>>,
    /// The live session; a turn holds this lock while it runs.
    session: Mutex<Option<M::ChatSession>>,
}

impl<M: ChatModel> Shared<M> {
    fn settings(&self) -> std::sync::MutexGuard<'_, Settings<M>> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type CallFn<M> = dyn Fn(&str) -> ChatResponseBuilder<M> + Send + Sync;

/// A conversation with a model. Call it with a message to get the answer:
///
/// ```no_run
/// use colloquy::language::*;
/// # #[tokio::main] async fn main() {
/// let llm = Llama::new_chat().await.unwrap();
/// let mut chat = llm.chat();
/// chat("What is the capital of France?").to_std_out().await.unwrap();
/// let again: String = chat("And of Italy?").await.unwrap();
/// # }
/// ```
pub struct Chat<M: ChatModel> {
    shared: Arc<Shared<M>>,
    call: Box<CallFn<M>>,
}

impl<M: ChatModel> std::fmt::Debug for Chat<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat").finish_non_exhaustive()
    }
}

impl<M: ChatModel> Chat<M>
where
    M::Error: From<Error>,
{
    /// A chat with a new session on `model`.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let chat = Chat::new(llm);
    /// # }
    /// ```
    pub fn new(model: M) -> Self {
        let shared = Arc::new(Shared {
            model,
            settings: std::sync::Mutex::new(Settings {
                system_prompt: None,
                sampler: GenerationParameters::default(),
                next_session: None,
            }),
            session: Mutex::new(None),
        });
        let for_call = Arc::clone(&shared);
        let call: Box<CallFn<M>> = Box::new(move |text: &str| ChatResponseBuilder {
            shared: Arc::clone(&for_call),
            message: text.to_string(),
            sampler: None,
            constraint: None,
            running: None,
        });
        Chat { shared, call }
    }

    /// The system prompt, fed before the first message of a new session.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let chat = llm.chat().with_system_prompt("You are a pirate.");
    /// # }
    /// ```
    pub fn with_system_prompt(self, prompt: impl Into<String>) -> Self {
        self.shared.settings().system_prompt = Some(prompt.into());
        self
    }

    /// Continue from an existing session instead of a new one. Nothing is re-fed:
    /// the session already holds its history.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let bytes = std::fs::read("chat.session").unwrap();
    /// let chat = llm.chat().with_session(LlamaChatSession::from_bytes(&bytes).unwrap());
    /// # }
    /// ```
    pub fn with_session(self, session: M::ChatSession) -> Self {
        self.shared.settings().next_session = Some(session);
        self
    }

    /// The sampling settings for every turn (a turn can override them).
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let chat = llm.chat().with_sampler(GenerationParameters::new().with_temperature(0.0));
    /// # }
    /// ```
    pub fn with_sampler(self, sampler: GenerationParameters) -> Self {
        self.shared.settings().sampler = sampler;
        self
    }

    /// An independent copy of the current session (a new, empty one before the
    /// first message).
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut chat = llm.chat();
    /// chat("Hi").await.unwrap();
    /// let history = chat.session().unwrap().history();
    /// # }
    /// ```
    pub fn session(&self) -> Result<M::ChatSession, M::Error> {
        if let Some(s) = &self.shared.settings().next_session {
            return Ok(s.try_clone()?);
        }
        let session = self.shared.session.try_lock().ok_or(Error::SessionBusy)?;
        match &*session {
            Some(s) => Ok(s.try_clone()?),
            None => self.shared.model.new_chat_session(),
        }
    }
}

impl<M: ChatModel> std::ops::Deref for Chat<M> {
    type Target = CallFn<M>;

    fn deref(&self) -> &Self::Target {
        &*self.call
    }
}

type TurnFuture<E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send>>;

/// The answer to one message: `.await` it for the whole text, use it as a
/// [`Stream`] of text pieces, or print it as it arrives with
/// [`to_std_out`](Self::to_std_out).
pub struct ChatResponseBuilder<M: ChatModel> {
    shared: Arc<Shared<M>>,
    message: String,
    sampler: Option<GenerationParameters>,
    constraint: Option<Constraint>,
    running: Option<(TurnFuture<M::Error>, mpsc::UnboundedReceiver<String>, bool)>,
}

impl<M: ChatModel> ChatResponseBuilder<M>
where
    M::Error: From<Error>,
{
    /// Overrides the chat's sampling settings for this turn only.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut chat = llm.chat();
    /// let greedy = GenerationParameters::new().with_temperature(0.0);
    /// let answer = chat("Hi").with_sampler(greedy).await.unwrap();
    /// # }
    /// ```
    pub fn with_sampler(mut self, sampler: GenerationParameters) -> Self {
        self.sampler = Some(sampler);
        self
    }

    /// Limits this turn's answer to `constraint` (a regex, a JSON Schema, any
    /// JSON or a Lark grammar). The answer streams as usual; the turn ends when
    /// the constraint is complete.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut chat = llm.chat();
    /// let year = chat("When did Apollo 11 land?")
    ///     .with_constraints(Constraint::regex("[0-9]{4}"))
    ///     .await
    ///     .unwrap();
    /// assert_eq!(year.len(), 4);
    /// # }
    /// ```
    pub fn with_constraints(mut self, constraint: Constraint) -> Self {
        self.constraint = Some(constraint);
        self
    }

    /// The answer as a value of `T`: the model can only write JSON for `T`'s
    /// schema (from `schemars`), which is then parsed with `serde_json`.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct City { name: String, country: String }
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut chat = llm.chat();
    /// let city: City = chat("Name a city in Japan.").typed().await.unwrap();
    /// # }
    /// ```
    pub async fn typed<T>(mut self) -> Result<T, M::Error>
    where
        T: serde::de::DeserializeOwned + schemars::JsonSchema,
    {
        self.constraint = Some(Constraint::for_type::<T>());
        let text = self.collect_with(|_| {}).await?;
        serde_json::from_str(&text).map_err(|e| {
            let reason = format!("{e}; the answer was {text:?}");
            M::Error::from(Error::TypedAnswer { type_name: std::any::type_name::<T>(), reason })
        })
    }

    /// Prints the answer to stdout as it is generated, and returns it.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let mut chat = llm.chat();
    /// chat("Tell me a joke.").to_std_out().await.unwrap();
    /// # }
    /// ```
    pub async fn to_std_out(self) -> Result<String, M::Error> {
        use std::io::Write;
        self.collect_with(|piece| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        })
        .await
    }

    async fn collect_with(mut self, mut each: impl FnMut(&str)) -> Result<String, M::Error> {
        self.start();
        let mut text = String::new();
        let Some((fut, rx, _)) = self.running.take() else { unreachable!("started above") };
        let mut fut = fut;
        let mut rx = rx;
        let result = std::future::poll_fn(|cx| {
            while let Poll::Ready(Some(piece)) = Pin::new(&mut rx).poll_next(cx) {
                each(&piece);
                text.push_str(&piece);
            }
            fut.as_mut().poll(cx)
        })
        .await;
        // Pieces sent right before the turn ended.
        while let Ok(piece) = rx.try_recv() {
            each(&piece);
            text.push_str(&piece);
        }
        result.map(|()| text)
    }

    fn start(&mut self) {
        if self.running.is_some() {
            return;
        }
        let (tx, rx) = mpsc::unbounded();
        let shared = Arc::clone(&self.shared);
        let message = std::mem::take(&mut self.message);
        let sampler = self.sampler.take();
        let constraint = self.constraint.take();
        let fut: TurnFuture<M::Error> = Box::pin(async move {
            let mut slot = shared.session.lock().await;
            let (sampler, system_prompt) = {
                let mut settings = shared.settings();
                if let Some(s) = settings.next_session.take() {
                    *slot = Some(s);
                }
                (sampler.unwrap_or_else(|| settings.sampler.clone()), settings.system_prompt.clone())
            };
            let sampler = match constraint {
                Some(c) => sampler.with_constraints(c),
                None => sampler,
            };
            let session = match slot.take() {
                Some(s) => s,
                None => shared.model.new_chat_session()?,
            };
            let mut messages = Vec::new();
            if let Some(sys) = system_prompt {
                if session.history().is_empty() {
                    messages.push(ChatMessage::new(MessageType::SystemPrompt, sys));
                }
            }
            messages.push(ChatMessage::new(MessageType::UserMessage, message));
            let session = slot.insert(session);
            let on_token = Box::new(move |piece: String| {
                let _ = tx.unbounded_send(piece);
            });
            shared.model.add_messages_with_callback(session, &messages, sampler, on_token).await
        });
        self.running = Some((fut, rx, false));
    }
}

impl<M: ChatModel> IntoFuture for ChatResponseBuilder<M>
where
    M::Error: From<Error>,
{
    type Output = Result<String, M::Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.collect_with(|_| {}))
    }
}

impl<M: ChatModel> Stream for ChatResponseBuilder<M>
where
    M::Error: From<Error>,
{
    type Item = String;

    /// Yields text pieces until the answer ends. An error ends the stream early;
    /// await the builder instead of streaming it to see errors.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        let this = &mut *self;
        this.start();
        let Some((fut, rx, done)) = this.running.as_mut() else { return Poll::Ready(None) };
        loop {
            match Pin::new(&mut *rx).poll_next(cx) {
                Poll::Ready(Some(piece)) => return Poll::Ready(Some(piece)),
                Poll::Ready(None) => return Poll::Ready(None),
                // Every piece is sent before the turn completes.
                Poll::Pending if *done => return Poll::Ready(None),
                Poll::Pending => {}
            }
            match fut.as_mut().poll(cx) {
                // The sender is dropped with the future's state, so the channel
                // closes and drains on the next loop.
                Poll::Ready(_) => *done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<M: ChatModel> Unpin for ChatResponseBuilder<M> {}
