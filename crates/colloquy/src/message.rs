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
