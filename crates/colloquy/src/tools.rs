//! Tool calls: functions the model may call, described to it in a system
//! prompt, its calls constrained to their JSON Schemas and parsed back into
//! [`ToolCall`]s.
//!
//! The format is Hermes's (Qwen 2.5 and SmolLM2 are trained on it, and
//! llama.cpp falls back to it): a call is
//! `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, and a tool's
//! result comes back as a [`MessageType::ToolResult`](crate::MessageType::ToolResult) message. The
//! constrained answer is the session's history, so it saves, loads and forks
//! like any other.
//!
//! ```
//! use colloquy::tools::{Tool, ToolChoice, parse_tool_calls, constraint};
//! let weather = Tool::new("get_weather", "The weather in a city", serde_json::json!({
//!     "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"]
//! }));
//! // `required`: the answer must be a call to one of the tools.
//! let c = constraint(std::slice::from_ref(&weather), &ToolChoice::Required).unwrap();
//! let calls = parse_tool_calls("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>");
//! assert_eq!(calls[0].name, "get_weather");
//! assert_eq!(calls[0].arguments["city"], "Oslo");
//! ```

use serde_json::{json, Value};

use crate::constraint::Constraint;

/// Where a call starts and ends in the model's answer.
pub const CALL_OPEN: &str = "<tool_call>";
/// See [`CALL_OPEN`].
pub const CALL_CLOSE: &str = "</tool_call>";

/// A function the model may call.
///
/// ```
/// let t = colloquy::tools::Tool::new("now", "The current time", serde_json::json!({"type": "object"}));
/// assert_eq!(t.name, "now");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// A JSON Schema for its arguments (an object).
    pub parameters: Value,
}

impl Tool {
    /// A tool from its name, description and arguments' JSON Schema.
    ///
    /// ```
    /// let t = colloquy::tools::Tool::new("add", "Adds two numbers", serde_json::json!({
    ///     "type": "object", "properties": { "a": { "type": "number" }, "b": { "type": "number" } }
    /// }));
    /// ```
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Tool {
        Tool { name: name.into(), description: description.into(), parameters }
    }

    /// The tool in OpenAI's `{"type": "function", "function": {…}}` shape.
    ///
    /// ```
    /// let t = colloquy::tools::Tool::new("now", "The time", serde_json::json!({"type": "object"}));
    /// assert_eq!(t.to_openai()["function"]["name"], "now");
    /// ```
    pub fn to_openai(&self) -> Value {
        json!({ "type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters } })
    }
}

/// Whether, and which, tool the model must call.
///
/// ```
/// let c = colloquy::tools::ToolChoice::Named("get_weather".into());
/// assert_ne!(c, colloquy::tools::ToolChoice::Auto);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model answers in text or calls a tool; a call it starts is
    /// constrained from its first token.
    Auto,
    /// The model must call one of the tools.
    Required,
    /// The model must call this tool.
    Named(String),
    /// The model answers in text (the tools are still described to it).
    None,
}

/// A call the model made.
///
/// ```
/// let call = colloquy::tools::ToolCall { name: "now".into(), arguments: serde_json::json!({}) };
/// assert_eq!(call.to_text(), "<tool_call>\n{\"name\":\"now\",\"arguments\":{}}\n</tool_call>");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The function called.
    pub name: String,
    /// Its arguments (valid for the tool's schema when the call was constrained).
    pub arguments: Value,
}

impl ToolCall {
    /// The call as the model writes it (for an assistant message that a
    /// client sends back with `tool_calls`).
    ///
    /// ```
    /// let call = colloquy::tools::ToolCall { name: "f".into(), arguments: serde_json::json!({"x": 1}) };
    /// assert!(call.to_text().starts_with("<tool_call>"));
    /// ```
    pub fn to_text(&self) -> String {
        let body = json!({ "name": self.name, "arguments": self.arguments });
        format!("{CALL_OPEN}\n{body}\n{CALL_CLOSE}")
    }
}

/// The system prompt that describes `tools` to the model, in the Hermes
/// format (for chat templates that do not render tools themselves).
///
/// ```
/// let t = colloquy::tools::Tool::new("now", "The time", serde_json::json!({"type": "object"}));
/// let prompt = colloquy::tools::system_prompt(&[t]);
/// assert!(prompt.contains("<tools>") && prompt.contains("\"now\""));
/// ```
pub fn system_prompt(tools: &[Tool]) -> String {
    let listed: Vec<String> = tools.iter().map(|t| t.to_openai().to_string()).collect();
    format!(
        "You are a function calling AI model. You are provided with function signatures within \
         <tools></tools> XML tags. You may call one or more functions to assist with the user query. \
         Don't make assumptions about what values to plug into functions. Here are the available \
         tools:\n<tools>\n{}\n</tools>\nFor each function call, return a json object with function \
         name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": \
         <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>",
        listed.join("\n")
    )
}

/// The constraint for an answer under `choice`: `None` for [`ToolChoice::None`],
/// or when `tools` is empty. An unknown named tool is an error (its message
/// names the tools there are).
///
/// ```
/// use colloquy::tools::{constraint, Tool, ToolChoice};
/// let t = Tool::new("now", "The time", serde_json::json!({"type": "object"}));
/// assert!(constraint(&[t.clone()], &ToolChoice::None).unwrap().is_none());
/// assert!(constraint(&[t], &ToolChoice::Named("later".into())).is_err());
/// ```
pub fn constraint(tools: &[Tool], choice: &ToolChoice) -> Result<Option<Constraint>, String> {
    let chosen: Vec<&Tool> = match choice {
        ToolChoice::None => return Ok(None),
        ToolChoice::Named(name) => match tools.iter().find(|t| &t.name == name) {
            Some(t) => vec![t],
            None => {
                let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
                return Err(format!("no tool is named {name:?}; the tools are {names:?}"));
            }
        },
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    if chosen.is_empty() {
        return Ok(None);
    }
    let calls: Vec<Value> = chosen
        .iter()
        .map(|t| {
            json!({ "type": "object",
                    "properties": { "name": { "const": t.name }, "arguments": t.parameters },
                    "required": ["name", "arguments"], "additionalProperties": false })
        })
        .collect();
    let schema = if calls.len() == 1 { calls[0].clone() } else { json!({ "anyOf": calls }) };
    let call = format!(
        "call: {} %json {} {}",
        lark_string(&format!("{CALL_OPEN}\n")),
        crate::constraint::compact(&schema),
        lark_string(&format!("\n{CALL_CLOSE}"))
    );
    // Auto: free text that does not start with `<`, or a call; an answer
    // that starts with `<` is a call from its first token.
    let start = match choice {
        ToolChoice::Auto => "start: call | TEXT\nTEXT: /[^<][\\s\\S]*/\n",
        _ => "start: call\n",
    };
    Ok(Some(Constraint::lark(format!("{start}{call}\n"))))
}

/// A Lark string literal for `s`.
fn lark_string(s: &str) -> String {
    // JSON's escapes are a subset of Lark's.
    Value::String(s.to_string()).to_string()
}

/// The calls in an answer: every `<tool_call>…</tool_call>` whose body is
/// `{"name": string, "arguments": object}`. Text that is not a call is skipped.
///
/// ```
/// let calls = colloquy::tools::parse_tool_calls("Sure. <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>");
/// assert_eq!(calls.len(), 1);
/// assert!(colloquy::tools::parse_tool_calls("no calls here").is_empty());
/// ```
pub fn parse_tool_calls(text: &str) -> Vec<ToolCall> {
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(CALL_OPEN) {
        let after = &rest[open + CALL_OPEN.len()..];
        let Some(close) = after.find(CALL_CLOSE) else { break };
        if let Ok(v) = serde_json::from_str::<Value>(after[..close].trim()) {
            if let (Some(name), Some(arguments)) = (v.get("name").and_then(Value::as_str), v.get("arguments"))
            {
                calls.push(ToolCall { name: name.to_string(), arguments: arguments.clone() });
            }
        }
        rest = &after[close + CALL_CLOSE.len()..];
    }
    calls
}
