//! Chat messages and their roles.

/// Who wrote a message.
///
/// ```
/// use colloquy::language::*;
/// assert_eq!(MessageType::UserMessage.as_role(), "user");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// The system prompt.
    SystemPrompt,
    /// A message from the user.
    UserMessage,
    /// An answer from the model.
    ModelAnswer,
    /// The result of a tool the model called (see [`crate::tools`]).
    ToolResult,
}

impl MessageType {
    /// The role name chat templates use: `system`, `user`, `assistant` or `tool`.
    pub fn as_role(self) -> &'static str {
        match self {
            MessageType::SystemPrompt => "system",
            MessageType::UserMessage => "user",
            MessageType::ModelAnswer => "assistant",
            MessageType::ToolResult => "tool",
        }
    }

    /// The role for an OpenAI role name: `system` (or `developer`), `user`,
    /// `assistant` or `tool`; `None` for any other.
    ///
    /// ```
    /// use colloquy::language::*;
    /// assert_eq!(MessageType::from_role("developer"), Some(MessageType::SystemPrompt));
    /// assert_eq!(MessageType::from_role("narrator"), None);
    /// ```
    pub fn from_role(role: &str) -> Option<MessageType> {
        match role {
            "system" | "developer" => Some(MessageType::SystemPrompt),
            "user" => Some(MessageType::UserMessage),
            "assistant" => Some(MessageType::ModelAnswer),
            "tool" => Some(MessageType::ToolResult),
            _ => None,
        }
    }

    pub(crate) fn to_byte(self) -> u8 {
        match self {
            MessageType::SystemPrompt => 0,
            MessageType::UserMessage => 1,
            MessageType::ModelAnswer => 2,
            MessageType::ToolResult => 3,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<MessageType> {
        match b {
            0 => Some(MessageType::SystemPrompt),
            1 => Some(MessageType::UserMessage),
            2 => Some(MessageType::ModelAnswer),
            3 => Some(MessageType::ToolResult),
            _ => None,
        }
    }
}

/// One message of a conversation.
///
/// ```
/// use colloquy::language::*;
/// let m = ChatMessage::new(MessageType::UserMessage, "Hello");
/// assert_eq!(m.role(), MessageType::UserMessage);
/// assert_eq!(m.content(), "Hello");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChatMessage {
    role: MessageType,
    content: String,
}

impl ChatMessage {
    /// A message with a role and text.
    pub fn new(role: MessageType, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role, content: content.into() }
    }

    /// Who wrote it.
    pub fn role(&self) -> MessageType {
        self.role
    }

    /// Its text.
    pub fn content(&self) -> &str {
        &self.content
    }
}

impl ChatMessage {
    /// The reasoning of an answer from a model that thinks before it answers
    /// (DeepSeek-R1 and its distills, QwQ, Qwen 3): the text inside
    /// `<think>…</think>`, trimmed; `None` when the message has none. The
    /// session keeps the whole text the model wrote ([`ChatMessage::content`]),
    /// so its tokens stay exactly what the model read.
    ///
    /// ```
    /// use colloquy::language::*;
    /// let m = ChatMessage::new(MessageType::ModelAnswer, "<think>\n2 and 2 make 4.\n</think>\n\n4");
    /// assert_eq!(m.reasoning(), Some("2 and 2 make 4."));
    /// assert_eq!(m.answer(), "4");
    /// assert_eq!(ChatMessage::new(MessageType::ModelAnswer, "4").reasoning(), None);
    /// ```
    pub fn reasoning(&self) -> Option<&str> {
        split_reasoning(&self.content).0
    }

    /// The text without its reasoning ([`ChatMessage::reasoning`]): what a
    /// reader is shown as the answer.
    pub fn answer(&self) -> &str {
        split_reasoning(&self.content).1
    }
}

/// Splits a model's text into its reasoning and its answer, as llama-server's
/// `deepseek` reasoning format does: text that opens with `<think>` (after
/// any whitespace) reasons up to `</think>`; text with a `</think>` but no
/// opening tag (a template whose generation prompt opened it) reasons up to
/// there. Both parts are trimmed; a reasoning that is still open (no
/// `</think>` yet) takes all the text.
///
/// ```
/// use colloquy::language::split_reasoning;
/// assert_eq!(split_reasoning("<think>hm</think> Yes."), (Some("hm"), "Yes."));
/// assert_eq!(split_reasoning("hm\n</think>\n\nYes."), (Some("hm"), "Yes."));
/// assert_eq!(split_reasoning("<think>still going"), (Some("still going"), ""));
/// assert_eq!(split_reasoning("Plain."), (None, "Plain."));
/// ```
pub fn split_reasoning(text: &str) -> (Option<&str>, &str) {
    const OPEN: &str = "<think>";
    const CLOSE: &str = "</think>";
    let body = match text.trim_start().strip_prefix(OPEN) {
        Some(rest) => rest,
        None if text.contains(CLOSE) => text,
        None => return (None, text),
    };
    match body.find(CLOSE) {
        Some(i) => (Some(body[..i].trim()), body[i + CLOSE.len()..].trim_start()),
        None => (Some(body.trim()), ""),
    }
}
