//! Structured output on the wire: `response_format` and `tools`/`tool_choice`
//! become a [`Constraint`], and an answer with calls becomes OpenAI's
//! `tool_calls`, whole or streamed as `delta.tool_calls`.

use colloquy::tools::{self, Tool, ToolCall, ToolChoice, CALL_OPEN};
use colloquy::Constraint;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::sessions::new_id;

/// What a chat request asks of its answer's shape.
#[derive(Debug, Default)]
pub struct Structure {
    /// The constraint the answer is generated under.
    pub constraint: Option<Constraint>,
    /// The tools described to the model (empty: none).
    pub tools: Vec<Tool>,
    /// Whether the answer is read for calls.
    pub calls_expected: bool,
    /// The field a bad constraint is blamed on.
    pub param: &'static str,
}

/// Reads `response_format`, or a 400 naming it.
pub fn response_format(f: &Value) -> Result<Option<Constraint>, ApiError> {
    let bad = |m: &str| ApiError::invalid("response_format", m);
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::json_object())),
        Some("json_schema") => {
            let schema = f.get("json_schema").and_then(|j| j.get("schema")).ok_or_else(|| {
                bad("response_format json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}")
            })?;
            if !schema.is_object() && !schema.is_boolean() {
                return Err(bad("response_format.json_schema.schema must be a JSON Schema object"));
            }
            Ok(Some(Constraint::json_schema(schema.clone())))
        }
        _ => Err(bad("response_format type must be \"text\", \"json_object\" or \"json_schema\"")),
    }
}

/// Reads `tools` (OpenAI's function shape).
fn read_tools(list: &[Value]) -> Result<Vec<Tool>, ApiError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let param = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(
                &param,
                "each tool must be {\"type\": \"function\", \"function\": {...}}",
            ));
        }
        let f = t.get("function").unwrap_or(&Value::Null);
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(ApiError::invalid(
                &format!("{param}.function.name"),
                "a function name is 1 to 64 letters, digits, '_' or '-'",
            ));
        }
        let parameters = f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}));
        if !parameters.is_object() {
            return Err(ApiError::invalid(
                &format!("{param}.function.parameters"),
                "parameters must be a JSON Schema object",
            ));
        }
        let description = f.get("description").and_then(Value::as_str).unwrap_or_default();
        out.push(Tool::new(name, description, parameters));
    }
    Ok(out)
}

/// Reads `tool_choice`: `"none"`, `"auto"` (the default with tools),
/// `"required"`, or `{"type": "function", "function": {"name"}}`.
fn read_choice(v: Option<&Value>) -> Result<ToolChoice, ApiError> {
    let bad = || {
        ApiError::invalid(
            "tool_choice",
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
        )
    };
    match v {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        },
        Some(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Named(n.to_string()))
            .ok_or_else(bad),
    }
}

/// The request's structure: tools take precedence over `response_format`
/// (the two together are refused).
pub fn structure(
    tools: Option<&[Value]>,
    tool_choice: Option<&Value>,
    format: Option<&Value>,
) -> Result<Structure, ApiError> {
    let format = match format {
        Some(f) => response_format(f)?,
        None => None,
    };
    let tools = read_tools(tools.unwrap_or_default())?;
    if tools.is_empty() {
        if tool_choice.is_some_and(|c| !c.is_null() && c != "none" && c != "auto") {
            return Err(ApiError::invalid("tool_choice", "tool_choice needs a non-empty tools list"));
        }
        return Ok(Structure { constraint: format, param: "response_format", ..Structure::default() });
    }
    if format.is_some() {
        return Err(ApiError::invalid(
            "response_format",
            "send either tools or a JSON response_format, not both",
        ));
    }
    let choice = read_choice(tool_choice)?;
    let constraint = tools::constraint(&tools, &choice).map_err(|m| ApiError::invalid("tool_choice", m))?;
    Ok(Structure { constraint, calls_expected: choice != ToolChoice::None, tools, param: "tools" })
}

/// The calls of an answer that is calls: one that starts (after blanks)
/// with `<tool_call>`. Anything else is text, whatever it contains, so a
/// streamed and a whole reply agree.
pub fn answer_calls(text: &str) -> Vec<ToolCall> {
    if text.trim_start().starts_with(CALL_OPEN) {
        tools::parse_tool_calls(text)
    } else {
        Vec::new()
    }
}

/// OpenAI's `tool_calls` list for `calls`, with fresh ids.
pub fn tool_calls_json(calls: &[ToolCall]) -> Result<Value, ApiError> {
    let mut out = Vec::with_capacity(calls.len());
    for c in calls {
        out.push(json!({ "id": format!("call_{}", new_id()?), "type": "function",
                         "function": { "name": c.name, "arguments": c.arguments.to_string() } }));
    }
    Ok(Value::Array(out))
}

/// A streamed answer that may be a call: text that can still become one is
/// held back, and calls are sent at the end as `delta.tool_calls`.
#[derive(Debug, Default)]
pub struct CallStream {
    expected: bool,
    held: String,
    /// The answer is known to be text: pieces pass straight through.
    text: bool,
}

impl CallStream {
    /// A stream that looks for calls when `expected`.
    pub fn new(expected: bool) -> CallStream {
        CallStream { expected, text: !expected, held: String::new() }
    }

    /// The content to send now for a new piece of the answer.
    pub fn push(&mut self, piece: &str) -> String {
        if self.text {
            return piece.to_string();
        }
        self.held.push_str(piece);
        let t = self.held.trim_start();
        if t.is_empty() || CALL_OPEN.starts_with(t) || t.starts_with(CALL_OPEN) {
            return String::new();
        }
        self.text = true;
        std::mem::take(&mut self.held)
    }

    /// At the end: the content still held back (if it held no call), and
    /// the tool-call deltas (first with id, type and name, then the
    /// arguments), if it did.
    pub fn finish(&mut self) -> Result<(String, Vec<Value>), ApiError> {
        let held = std::mem::take(&mut self.held);
        let calls = if self.expected { answer_calls(&held) } else { Vec::new() };
        if calls.is_empty() {
            return Ok((held, Vec::new()));
        }
        let listed = tool_calls_json(&calls)?;
        let mut deltas = Vec::new();
        for (index, call) in listed.as_array().into_iter().flatten().enumerate() {
            let f = &call["function"];
            deltas.push(json!([{ "index": index, "id": call["id"], "type": "function",
                                 "function": { "name": f["name"], "arguments": "" } }]));
            deltas.push(json!([{ "index": index, "function": { "arguments": f["arguments"] } }]));
        }
        Ok((String::new(), deltas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_formats_read_and_refuse() {
        assert!(response_format(&json!({"type": "text"})).unwrap().is_none());
        assert_eq!(
            response_format(&json!({"type": "json_object"})).unwrap(),
            Some(Constraint::json_object())
        );
        let s = json!({"type": "integer"});
        let f = json!({"type": "json_schema", "json_schema": {"name": "n", "schema": s, "strict": true}});
        assert_eq!(response_format(&f).unwrap(), Some(Constraint::json_schema(s)));
        // The schema at the top level, without OpenAI's wrapper, is refused.
        for bad in [json!({"type": "json_schema", "schema": {}}), json!({"type": "xml"})] {
            assert_eq!(response_format(&bad).unwrap_err().body()["error"]["param"], "response_format");
        }
    }

    #[test]
    fn a_streamed_call_is_held_and_sent_as_deltas() {
        let mut s = CallStream::new(true);
        let mut sent = String::new();
        for piece in ["<tool", "_call>\n{\"name\": \"f\", ", "\"arguments\": {\"x\": 1}}\n</tool_call>"] {
            sent.push_str(&s.push(piece));
        }
        assert_eq!(sent, "");
        let (rest, deltas) = s.finish().unwrap();
        assert_eq!(rest, "");
        assert_eq!(deltas[0][0]["function"]["name"], "f");
        assert_eq!(deltas[0][0]["function"]["arguments"], "");
        assert!(deltas[1][0]["function"].get("name").is_none());
        assert_eq!(deltas[1][0]["function"]["arguments"], "{\"x\":1}");
        // Text passes through once it cannot be a call.
        let mut t = CallStream::new(true);
        assert_eq!(t.push("<"), "");
        assert_eq!(t.push("b>Hi"), "<b>Hi");
        assert_eq!(t.push(" there"), " there");
        assert_eq!(t.finish().unwrap(), (String::new(), vec![]));
    }

    #[test]
    fn tool_choice_needs_tools_and_names_a_listed_one() {
        let tools =
            [json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}})];
        assert!(structure(None, Some(&json!("required")), None).is_err());
        let e = structure(Some(&tools), Some(&json!({"type": "function", "function": {"name": "g"}})), None)
            .unwrap_err();
        assert_eq!(e.body()["error"]["param"], "tool_choice");
        let bad_name = [json!({"type": "function", "function": {"name": "no spaces"}})];
        assert_eq!(
            structure(Some(&bad_name), None, None).unwrap_err().body()["error"]["param"],
            "tools[0].function.name"
        );
        let ok = structure(Some(&tools), Some(&json!("required")), None).unwrap();
        assert!(ok.constraint.is_some() && ok.calls_expected);
    }
}
