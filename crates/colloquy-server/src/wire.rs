//! OpenAI's request shapes, and their checks: a known field with a value
//! colloquy cannot honour is a 400 naming it; unknown fields are ignored.

use colloquy::running::TokenLogprob;
use colloquy::{ChatMessage, GenerationParameters, MessageType};
use serde::Deserialize;
use serde_json::{json, Value};

use colloquy::tools::ToolCall;

use crate::error::ApiError;
use crate::structured::{self, Structure};

/// A message's content: a string, or a list of `{"type": "text", "text"}` parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts; only text parts are supported.
    Parts(Vec<Value>),
}

/// One message of a chat request.
#[derive(Debug, Deserialize)]
pub struct WireMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text (null is allowed for an assistant message, as OpenAI does).
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant message's calls, as a reply gave them.
    #[serde(default)]
    pub tool_calls: Option<Vec<Value>>,
}

/// A stop sequence or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields that chat and plain completions share.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    /// Softmax temperature, 0 to 2 (0 is greedy).
    pub temperature: Option<f64>,
    /// Nucleus sampling, in (0, 1].
    pub top_p: Option<f64>,
    /// The most new tokens.
    pub max_tokens: Option<i64>,
    /// The most new tokens (the newer name).
    pub max_completion_tokens: Option<i64>,
    /// Stop sequences.
    pub stop: Option<Stop>,
    /// A seed for a reproducible draw.
    pub seed: Option<i64>,
    /// -2 to 2.
    pub presence_penalty: Option<f64>,
    /// -2 to 2.
    pub frequency_penalty: Option<f64>,
    /// Choices (only 1).
    pub n: Option<i64>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The model id (see `/v1/models`).
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<WireMessage>,
    /// The sampling fields.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Return log-probabilities of the output tokens.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per position, 0 to 20 (needs `logprobs`).
    pub top_logprobs: Option<i64>,
    /// Continue the stored session with this id (or send `X-Session-Id`).
    pub session_id: Option<String>,
    /// Keep the conversation in a new stored session (its id comes back as
    /// `session_id`).
    #[serde(default)]
    pub store: Option<bool>,
    /// `false`: a turn sent while another runs on the session gets 409
    /// instead of waiting.
    pub session_wait: Option<bool>,
    /// Functions the model may call.
    pub tools: Option<Vec<Value>>,
    /// `none`, `auto`, `required`, or a named function.
    pub tool_choice: Option<Value>,
    /// `text`, `json_object`, or `json_schema` with its schema.
    pub response_format: Option<Value>,
    /// An extension, as mistral.rs's server takes it: `{"type": "regex" |
    /// "lark" | "json_schema", "value": ...}` constrains the answer.
    pub grammar: Option<Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The model id.
    #[serde(default)]
    pub model: Option<String>,
    /// The prompt: a string, or a list of one string.
    pub prompt: Value,
    /// The sampling fields.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Alternatives per position, 0 to 5 (the legacy integer form).
    pub logprobs: Option<i64>,
    /// Add the prompt before the completion.
    #[serde(default)]
    pub echo: bool,
}

fn range(param: &str, v: Option<f64>, lo: f64, hi: f64, open_lo: bool) -> Result<Option<f32>, ApiError> {
    let Some(x) = v else { return Ok(None) };
    let below = if open_lo { x <= lo } else { x < lo };
    if !x.is_finite() || below || x > hi {
        let lo_s = if open_lo { "(" } else { "[" };
        return Err(ApiError::invalid(
            param,
            format!("{param} must be a number in {lo_s}{lo}, {hi}], not {x}"),
        ));
    }
    Ok(Some(x as f32))
}

impl Sampling {
    /// The generation parameters these fields ask for, capped at `ceiling`
    /// new tokens, and the stream flags; or a 400 naming the bad field.
    pub fn params(
        &self,
        ceiling: u32,
        top_logprobs: Option<usize>,
    ) -> Result<GenerationParameters, ApiError> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::invalid(
                "n",
                format!("n must be 1 (colloquy returns one choice), not {n}"),
            ));
        }
        // Penalties are OpenAI's (presence, frequency); no repetition penalty,
        // as llama-server's default.
        let mut p = GenerationParameters::new().with_repetition_penalty(1.0).with_max_length(ceiling);
        if let Some(t) = range("temperature", self.temperature, 0.0, 2.0, false)? {
            p = p.with_temperature(t);
        }
        if let Some(t) = range("top_p", self.top_p, 0.0, 1.0, true)? {
            p = p.with_top_p(t);
        }
        if let Some(x) = range("presence_penalty", self.presence_penalty, -2.0, 2.0, false)? {
            p = p.with_presence_penalty(x);
        }
        if let Some(x) = range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, false)? {
            p = p.with_frequency_penalty(x);
        }
        for (name, v) in
            [("max_tokens", self.max_tokens), ("max_completion_tokens", self.max_completion_tokens)]
        {
            if let Some(v) = v {
                if v < 1 {
                    return Err(ApiError::invalid(name, format!("{name} must be at least 1, not {v}")));
                }
                p = p.with_max_length(v.min(i64::from(ceiling)) as u32);
            }
        }
        if let Some(stop) = &self.stop {
            let list = match stop {
                Stop::One(s) => vec![s.clone()],
                Stop::Many(v) => v.clone(),
            };
            if list.len() > 16 {
                return Err(ApiError::invalid("stop", "stop takes at most 16 sequences"));
            }
            p = p.with_stop_sequences(list);
        }
        if let Some(seed) = self.seed {
            p = p.with_seed(seed as u64);
        }
        if let Some(n) = top_logprobs {
            p = p.with_logprobs(n);
        }
        Ok(p)
    }

    /// Whether the usage chunk was asked for.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

impl ChatRequest {
    /// The messages, checked: known roles, text content.
    pub fn chat_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        let mut out = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            let param = format!("messages[{i}]");
            let Some(role) = MessageType::from_role(&m.role) else {
                return Err(ApiError::invalid(
                    &format!("{param}.role"),
                    format!(
                        "role {:?} is not supported; use system, developer, user, assistant or tool",
                        m.role
                    ),
                ));
            };
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (
                            part.get("type").and_then(Value::as_str),
                            part.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            _ => return Err(ApiError::invalid(
                                &format!("{param}.content"),
                                "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                            )),
                        }
                    }
                    text
                }
            };
            let text = match (&m.tool_calls, role) {
                (Some(calls), MessageType::ModelAnswer) if !calls.is_empty() => {
                    let mut all = text;
                    for (k, c) in calls.iter().enumerate() {
                        let call = wire_call(c).ok_or_else(|| {
                            ApiError::invalid(
                                &format!("{param}.tool_calls[{k}]"),
                                "a tool call is {\"function\": {\"name\": ..., \"arguments\": \"<JSON text>\"}}",
                            )
                        })?;
                        if !all.is_empty() {
                            all.push('\n');
                        }
                        all.push_str(&call.to_text());
                    }
                    all
                }
                _ => text,
            };
            out.push(ChatMessage::new(role, text));
        }
        Ok(out)
    }

    /// The answer's shape: its constraint and tools.
    pub fn structure(&self) -> Result<Structure, ApiError> {
        if let Some(g) = &self.grammar {
            if self.tools.as_ref().is_some_and(|t| !t.is_empty()) || self.response_format.is_some() {
                return Err(ApiError::invalid(
                    "grammar",
                    "send grammar alone, without tools or response_format",
                ));
            }
            return Ok(Structure {
                constraint: Some(structured::grammar(g)?),
                param: "grammar",
                ..Structure::default()
            });
        }
        structured::structure(self.tools.as_deref(), self.tool_choice.as_ref(), self.response_format.as_ref())
    }

    /// The generation parameters (see [`Sampling::params`]).
    pub fn params(&self, ceiling: u32) -> Result<GenerationParameters, ApiError> {
        let top = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(n)) if !(0..=20).contains(&n) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("top_logprobs must be 0 to 20, not {n}"),
                ))
            }
            (false, Some(_)) => {
                return Err(ApiError::invalid("top_logprobs", "top_logprobs needs \"logprobs\": true"))
            }
            (true, n) => Some(n.unwrap_or(0) as usize),
            (false, None) => None,
        };
        self.sampling.params(ceiling, top)
    }
}

/// A call a client sends back in an assistant message.
fn wire_call(c: &Value) -> Option<ToolCall> {
    let f = c.get("function")?;
    let name = f.get("name")?.as_str()?.to_string();
    let arguments = match f.get("arguments")? {
        Value::String(s) => serde_json::from_str(s).ok()?,
        v => v.clone(),
    };
    Some(ToolCall { name, arguments })
}

impl CompletionRequest {
    /// The prompt text: a string or a list of exactly one string.
    pub fn prompt_text(&self) -> Result<String, ApiError> {
        match &self.prompt {
            Value::String(s) => Ok(s.clone()),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                Ok(a[0].as_str().unwrap_or_default().to_string())
            }
            _ => Err(ApiError::invalid("prompt", "prompt must be a string (or a list of one string)")),
        }
    }

    /// The generation parameters.
    pub fn params(&self, ceiling: u32) -> Result<GenerationParameters, ApiError> {
        let top = match self.logprobs {
            Some(n) if !(0..=5).contains(&n) => {
                return Err(ApiError::invalid("logprobs", format!("logprobs must be 0 to 5, not {n}")))
            }
            n => n.map(|n| n as usize),
        };
        self.sampling.params(ceiling, top)
    }
}

/// A token's text for the wire (lossy for a partial UTF-8 piece) and its bytes.
fn token_json(bytes: &[u8]) -> (String, Vec<u8>) {
    (String::from_utf8_lossy(bytes).into_owned(), bytes.to_vec())
}

/// Chat `logprobs.content` entries.
pub fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let entry = |t: &colloquy::running::TopLogprob| {
        let (text, bytes) = token_json(&t.bytes);
        json!({"token": text, "logprob": t.logprob, "bytes": bytes})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let mut e = entry(&lp.token);
            e["top_logprobs"] = Value::Array(lp.top.iter().map(entry).collect());
            e
        })
        .collect();
    json!({"content": content})
}

/// Legacy completion `logprobs` (tokens, token_logprobs, top_logprobs, text_offset).
pub fn completion_logprobs(lps: &[TokenLogprob], mut offset: usize) -> Value {
    let (mut tokens, mut lp, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for t in lps {
        let (text, _) = token_json(&t.token.bytes);
        offsets.push(offset);
        offset += text.len();
        tokens.push(text);
        lp.push(t.token.logprob);
        let top: serde_json::Map<String, Value> =
            t.top.iter().map(|a| (token_json(&a.bytes).0, json!(a.logprob))).collect();
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": lp, "top_logprobs": tops, "text_offset": offsets})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let base = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (field, value) in [
            ("temperature", json!(-0.5)),
            ("temperature", json!(2.5)),
            ("top_p", json!(0)),
            ("top_p", json!(1.5)),
            ("n", json!(2)),
            ("max_tokens", json!(0)),
            ("presence_penalty", json!(3)),
            ("top_logprobs", json!(5)),
        ] {
            let mut b = base.clone();
            b[field] = value.clone();
            let err = req(b).params(100).unwrap_err();
            assert_eq!(err.body()["error"]["param"], field, "{field}={value}");
            assert_eq!(err.status().as_u16(), 400);
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_known_ones_read() {
        let r = req(json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "temperature": 0, "max_tokens": 5000, "stop": "x", "frobnicate": true, "stream_options": {"include_usage": true}}));
        let p = r.params(256).unwrap();
        assert_eq!(p.max_length(), 256);
        assert!(r.sampling.include_usage());
        assert_eq!(r.chat_messages().unwrap()[0].content(), "hi");
        let bad = req(json!({"messages": [{"role": "function", "content": "x"}]}));
        assert_eq!(bad.chat_messages().unwrap_err().body()["error"]["param"], "messages[0].role");
    }
}
