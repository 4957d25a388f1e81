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

/// Reads the `grammar` extension (mistral.rs's form): `{"type": "regex",
/// "value": RE}`, `{"type": "lark", "value": GRAMMAR}` or `{"type":
/// "json_schema", "value": SCHEMA}`, or a 400 naming it.
pub fn grammar(g: &Value) -> Result<Constraint, ApiError> {
    let bad = |m: &str| ApiError::invalid("grammar", m);
    let value = g.get("value").ok_or_else(|| bad("grammar needs a \"value\""))?;
    let text = || value.as_str().ok_or_else(|| bad("grammar.value must be a string for regex and lark"));
    match g.get("type").and_then(Value::as_str) {
        Some("regex") => Ok(Constraint::regex(text()?)),
        Some("lark") => Ok(Constraint::lark(text()?)),
        Some("json_schema") if value.is_object() => Ok(Constraint::json_schema(value.clone())),
        Some("json_schema") => Err(bad("grammar.value must be a JSON Schema object for json_schema")),
        _ => Err(bad("grammar type must be \"regex\", \"lark\" or \"json_schema\"")),
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

/// A streamed answer that may be a call. Text that can still become a call
/// is held back; once a call's name is known, its id and name go out, then
/// its arguments as they are written (OpenAI's `delta.tool_calls` form).
#[derive(Debug, Default)]
pub struct CallStream {
    expected: bool,
    held: String,
    /// The answer is known to be text: pieces pass straight through.
    text: bool,
    /// The call's head did not have the expected layout: hold it all and
    /// send the calls at the end.
    whole: bool,
    /// The call being streamed: where its arguments start in `held`, and
    /// how far they have gone out.
    args: Option<(usize, usize)>,
}

/// What follows a call's arguments: the call object's `}` and the closing tag.
const TAIL: &str = "}\n</tool_call>";

/// Where a call's arguments start in `body` (the text after `<tool_call>`)
/// and the function's name: `Ok(None)` while the head is still incomplete,
/// `Err(())` when it is not `{"name": "…", "arguments": `.
fn call_head(body: &str) -> Result<Option<(String, usize)>, ()> {
    let mut at = 0;
    let expect = |lit: &str, at: &mut usize| -> Result<bool, ()> {
        let rest = body[*at..].trim_start();
        *at = body.len() - rest.len();
        if rest.len() < lit.len() {
            return if lit.starts_with(rest) { Ok(false) } else { Err(()) };
        }
        if !rest.starts_with(lit) {
            return Err(());
        }
        *at += lit.len();
        Ok(true)
    };
    for lit in ["{", "\"name\"", ":"] {
        if !expect(lit, &mut at)? {
            return Ok(None);
        }
    }
    let rest = body[at..].trim_start();
    at = body.len() - rest.len();
    let mut names = serde_json::Deserializer::from_str(rest).into_iter::<String>();
    let name = match names.next() {
        Some(Ok(name)) => name,
        Some(Err(e)) if e.is_eof() => return Ok(None),
        _ => return Err(()),
    };
    at += names.byte_offset();
    for lit in [",", "\"arguments\"", ":"] {
        if !expect(lit, &mut at)? {
            return Ok(None);
        }
    }
    let rest = body[at..].trim_start();
    if rest.is_empty() {
        return Ok(None);
    }
    Ok(Some((name, body.len() - rest.len())))
}

fn call_delta(call: Value) -> Value {
    json!({ "tool_calls": [call] })
}

impl CallStream {
    /// A stream that looks for calls when `expected`.
    pub fn new(expected: bool) -> CallStream {
        CallStream { expected, text: !expected, ..CallStream::default() }
    }

    /// The deltas to send now for a new piece of the answer.
    pub fn push(&mut self, piece: &str) -> Result<Vec<Value>, ApiError> {
        if self.text {
            return Ok(if piece.is_empty() { vec![] } else { vec![json!({ "content": piece })] });
        }
        self.held.push_str(piece);
        if self.whole {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        if self.args.is_none() {
            let t = self.held.trim_start();
            if t.is_empty() || CALL_OPEN.starts_with(t) {
                return Ok(out);
            }
            if !t.starts_with(CALL_OPEN) {
                self.text = true;
                return Ok(vec![json!({ "content": std::mem::take(&mut self.held) })]);
            }
            let body_at = self.held.len() - t.len() + CALL_OPEN.len();
            match call_head(&self.held[body_at..]) {
                Ok(None) => return Ok(out),
                Err(()) => {
                    self.whole = true;
                    return Ok(out);
                }
                Ok(Some((name, args_at))) => {
                    let start = body_at + args_at;
                    self.args = Some((start, start));
                    out.push(call_delta(json!({ "index": 0, "id": format!("call_{}", new_id()?),
                        "type": "function", "function": { "name": name, "arguments": "" } })));
                }
            }
        }
        if let Some((start, sent)) = self.args.as_mut() {
            // Hold back what may be the start of the tail after the arguments.
            let args = &self.held[*start..];
            let keep = (1..=TAIL.len().min(args.len()))
                .rev()
                .find(|&k| args.is_char_boundary(args.len() - k) && TAIL.starts_with(&args[args.len() - k..]))
                .unwrap_or(0);
            let upto = self.held.len() - keep;
            if upto > *sent {
                let fragment = &self.held[*sent..upto];
                out.push(call_delta(json!({ "index": 0, "function": { "arguments": fragment } })));
                *sent = upto;
            }
        }
        Ok(out)
    }

    /// At the end: the last deltas, and whether the answer was a complete call
    /// (so the finish reason is `tool_calls`).
    pub fn finish(&mut self) -> Result<(Vec<Value>, bool), ApiError> {
        let held = std::mem::take(&mut self.held);
        let calls = if self.expected { answer_calls(&held) } else { Vec::new() };
        if let Some((_, sent)) = self.args {
            let body = held.trim_end();
            let end = body.strip_suffix(TAIL).map_or(held.len(), str::len);
            let mut out = Vec::new();
            if end > sent {
                out.push(call_delta(json!({ "index": 0, "function": { "arguments": &held[sent..end] } })));
            }
            return Ok((out, !calls.is_empty()));
        }
        if calls.is_empty() {
            let out = if held.is_empty() { vec![] } else { vec![json!({ "content": held })] };
            return Ok((out, false));
        }
        let listed = tool_calls_json(&calls)?;
        let mut out = Vec::new();
        for (index, call) in listed.as_array().into_iter().flatten().enumerate() {
            let f = &call["function"];
            out.push(call_delta(json!({ "index": index, "id": call["id"], "type": "function",
                                        "function": { "name": f["name"], "arguments": "" } })));
            out.push(call_delta(json!({ "index": index, "function": { "arguments": f["arguments"] } })));
        }
        Ok((out, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammars_read_and_refuse() {
        assert_eq!(grammar(&json!({"type": "regex", "value": "a+"})).unwrap(), Constraint::regex("a+"));
        assert_eq!(
            grammar(&json!({"type": "lark", "value": "start: \"x\""})).unwrap(),
            Constraint::lark("start: \"x\"")
        );
        let schema = json!({"type": "integer"});
        assert_eq!(
            grammar(&json!({"type": "json_schema", "value": schema})).unwrap(),
            Constraint::json_schema(schema)
        );
        for bad in [
            json!({"type": "regex"}),
            json!({"type": "gbnf", "value": "x"}),
            json!({"type": "regex", "value": 1}),
            json!({"type": "json_schema", "value": "x"}),
        ] {
            assert_eq!(grammar(&bad).unwrap_err().body()["error"]["param"], "grammar", "{bad}");
        }
    }

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

    /// Runs `pieces` through a stream: the content sent, the call's deltas, whether it was a call.
    fn stream(pieces: &[&str]) -> (String, Vec<Value>, bool) {
        let mut s = CallStream::new(true);
        let mut deltas = Vec::new();
        for p in pieces {
            deltas.extend(s.push(p).unwrap());
        }
        let (last, is_call) = s.finish().unwrap();
        deltas.extend(last);
        let content: String = deltas.iter().filter_map(|d| d["content"].as_str()).collect();
        let calls: Vec<Value> =
            deltas.iter().filter_map(|d| d.get("tool_calls").map(|c| c[0].clone())).collect();
        (content, calls, is_call)
    }

    #[test]
    fn a_streamed_call_sends_its_name_then_argument_fragments() {
        let pieces = [
            "<tool",
            "_call>\n{\"name\": \"f\", ",
            "\"arguments\": {\"x\": ",
            "{\"y\": 1}",
            "}}",
            "\n</tool",
            "_call>",
        ];
        let (content, calls, is_call) = stream(&pieces);
        assert!(content.is_empty() && is_call);
        assert_eq!(calls[0]["function"]["name"], "f");
        assert_eq!(calls[0]["function"]["arguments"], "");
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert!(calls.len() >= 3, "{calls:?}");
        assert!(calls[1..].iter().all(|c| c["function"].get("name").is_none() && c.get("id").is_none()));
        let args: String = calls.iter().map(|c| c["function"]["arguments"].as_str().unwrap()).collect();
        assert_eq!(args, "{\"x\": {\"y\": 1}}");
        // A head in another layout is sent whole at the end, the same call.
        let (_, calls, is_call) = stream(&["<tool_call>{\"arguments\": {}, \"name\": \"g\"}</tool_call>"]);
        assert!(is_call);
        assert_eq!(
            (calls[0]["function"]["name"].as_str(), calls[1]["function"]["arguments"].as_str()),
            (Some("g"), Some("{}"))
        );
        // Text passes through once it cannot be a call.
        let (content, calls, is_call) = stream(&["<", "b>Hi", " there"]);
        assert_eq!((content.as_str(), calls.len(), is_call), ("<b>Hi there", 0, false));
        // A call cut off mid-arguments is not a complete call.
        let (_, calls, is_call) = stream(&["<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1"]);
        assert!(!is_call);
        assert_eq!(calls.len(), 2);
    }

    #[test]
    fn call_heads_parse_incrementally() {
        assert_eq!(call_head("\n{\"name\": \"f"), Ok(None));
        assert_eq!(call_head("\n{\"name\": \"f\", \"argu"), Ok(None));
        assert_eq!(call_head("\n{\"name\": \"f\", \"arguments\": {"), Ok(Some(("f".into(), 28))));
        assert_eq!(call_head("{\"nome\""), Err(()));
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
