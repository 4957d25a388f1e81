//! Constrained generation on the real SmolLM2: answers under 24 JSON Schemas
//! parse and validate (checked by the `jsonschema` crate, not by us), typed
//! answers deserialize, regex and Lark answers match, a constrained session
//! saves, loads and resumes exactly, constrained turns batch exactly, and bad
//! constraints are typed errors, quickly.

mod common;

use std::time::{Duration, Instant};

use colloquy::language::*;
use common::{block_on, greedy, llm, user};
use serde_json::{json, Value};

/// Runs one constrained turn on a fresh session; returns its text and why it ended.
fn constrained(llm: &Llama, prompt: &str, c: Constraint, max: u32) -> (String, Option<FinishReason>) {
    let session = llm.new_chat_session().unwrap();
    let p = greedy(max).with_constraints(c);
    let mut turn = llm.begin_turn(&session, &[user(prompt)], &p).unwrap();
    while !turn.is_finished() {
        llm.step(&mut [&mut turn], 512).unwrap();
    }
    assert!(turn.error().is_none(), "{prompt}: {:?}", turn.error());
    let text = turn.answer().to_string();
    let why = turn.finish_reason();
    turn.commit().unwrap();
    (text, why)
}

fn schemas() -> Vec<(&'static str, Value)> {
    let name = json!({ "type": "string", "maxLength": 24 });
    vec![
        (
            "Describe a person.",
            json!({
            "type": "object",
            "properties": { "name": name, "age": { "type": "integer", "minimum": 0, "maximum": 120 } },
            "required": ["name", "age"], "additionalProperties": false }),
        ),
        ("Give a number between 1 and 10.", json!({ "type": "integer", "minimum": 1, "maximum": 10 })),
        ("Is the sky blue?", json!({ "type": "boolean" })),
        ("Name a colour.", json!({ "enum": ["red", "green", "blue"] })),
        (
            "List three fruits.",
            json!({
            "type": "array", "items": { "type": "string", "maxLength": 16 }, "minItems": 3, "maxItems": 3 }),
        ),
        ("Give a temperature in Celsius.", json!({ "type": "integer", "minimum": -50, "maximum": 60 })),
        (
            "Describe a book.",
            json!({
            "type": "object",
            "properties": {
                "title": name,
                "author": { "type": "object", "properties": { "first": name, "last": name },
                            "required": ["first", "last"], "additionalProperties": false },
                "year": { "type": "integer", "minimum": 1400, "maximum": 2030 } },
            "required": ["title", "author", "year"], "additionalProperties": false }),
        ),
        ("Give a US zip code.", json!({ "type": "string", "pattern": "^[0-9]{5}$" })),
        ("Give a date.", json!({ "type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$" })),
        (
            "Describe a city; the population is optional.",
            json!({
            "type": "object",
            "properties": { "city": name, "population": { "type": "integer", "minimum": 0 } },
            "required": ["city"], "additionalProperties": false }),
        ),
        (
            "Rate a film.",
            json!({
            "type": "object",
            "properties": { "film": name, "stars": { "type": "integer", "minimum": 1, "maximum": 5 },
                            "verdict": { "enum": ["good", "bad", "meh"] } },
            "required": ["film", "stars", "verdict"], "additionalProperties": false }),
        ),
        (
            "Give two points.",
            json!({
            "type": "array",
            "items": { "type": "object",
                       "properties": { "x": { "type": "integer", "minimum": -9, "maximum": 9 },
                                       "y": { "type": "integer", "minimum": -9, "maximum": 9 } },
                       "required": ["x", "y"], "additionalProperties": false },
            "minItems": 2, "maxItems": 2 }),
        ),
        ("Give a short greeting.", json!({ "type": "string", "minLength": 2, "maxLength": 20 })),
        ("Say nothing at all.", json!({ "type": "null" })),
        (
            "Give an id or a name.",
            json!({
            "anyOf": [ { "type": "integer", "minimum": 0, "maximum": 999 }, { "type": "string", "maxLength": 12 } ] }),
        ),
        (
            "Describe an order.",
            json!({
            "type": "object",
            "properties": {
                "id": { "type": "string", "pattern": "^ORD-[0-9]{4}$" },
                "items": { "type": "array", "maxItems": 2,
                           "items": { "type": "object",
                                      "properties": { "sku": { "type": "string", "pattern": "^[A-Z]{3}$" },
                                                      "qty": { "type": "integer", "minimum": 1, "maximum": 9 } },
                                      "required": ["sku", "qty"], "additionalProperties": false } } },
            "required": ["id", "items"], "additionalProperties": false }),
        ),
        (
            "Which weekdays are you free?",
            json!({
            "type": "array", "maxItems": 3,
            "items": { "enum": ["mon", "tue", "wed", "thu", "fri"] } }),
        ),
        (
            "Give a price.",
            json!({
            "type": "object",
            "properties": { "amount": { "type": "number", "exclusiveMinimum": 0, "maximum": 1000 },
                            "currency": { "const": "EUR" } },
            "required": ["amount", "currency"], "additionalProperties": false }),
        ),
        (
            "Describe a tree of two levels.",
            json!({
            "$defs": { "leaf": { "type": "object", "properties": { "label": name },
                                 "required": ["label"], "additionalProperties": false } },
            "type": "object",
            "properties": { "label": name, "children": { "type": "array", "maxItems": 2,
                                                          "items": { "$ref": "#/$defs/leaf" } } },
            "required": ["label", "children"], "additionalProperties": false }),
        ),
        (
            "Give an email address.",
            json!({ "type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$" }),
        ),
        (
            "Give a weather report.",
            json!({
            "type": "object",
            "properties": { "sky": { "enum": ["sunny", "cloudy", "rainy"] },
                            "wind_kmh": { "type": "integer", "minimum": 0, "maximum": 150 },
                            "warning": { "type": ["string", "null"], "maxLength": 20 } },
            "required": ["sky", "wind_kmh", "warning"], "additionalProperties": false }),
        ),
        (
            "Give a matrix of numbers.",
            json!({
            "type": "array", "minItems": 2, "maxItems": 2,
            "items": { "type": "array", "minItems": 2, "maxItems": 2,
                       "items": { "type": "integer", "minimum": 0, "maximum": 9 } } }),
        ),
        (
            "Describe a user account.",
            json!({
            "type": "object",
            "properties": { "username": { "type": "string", "pattern": "^[a-z][a-z0-9_]{2,11}$" },
                            "roles": { "type": "array", "items": { "enum": ["admin", "editor", "viewer"] },
                                       "minItems": 1, "maxItems": 2 },
                            "active": { "type": "boolean" } },
            "required": ["username", "roles", "active"], "additionalProperties": false }),
        ),
        (
            "Any JSON object.",
            json!({ "type": "object", "maxProperties": 2,
            "additionalProperties": { "type": "integer", "minimum": 0, "maximum": 99 } }),
        ),
    ]
}

#[test]
fn every_schema_gives_json_that_validates() {
    let llm = llm();
    let all = schemas();
    assert!(all.len() >= 20);
    for (prompt, schema) in all {
        let validator = jsonschema::validator_for(&schema).unwrap();
        let (text, why) = constrained(&llm, prompt, Constraint::json_schema(schema.clone()), 256);
        assert_eq!(why, Some(FinishReason::Stop), "{prompt}: the answer was cut off: {text}");
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{prompt}: {e}: {text:?}"));
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{prompt}: {text} does not validate against {schema}: {errors:?}");
    }
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema, PartialEq)]
struct Pet {
    /// At most 20 characters, so the answer ends.
    #[schemars(length(max = 20))]
    name: String,
    #[schemars(range(min = 0, max = 30))]
    age: u8,
    species: Species,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Species {
    Cat,
    Dog,
    Fish,
}

#[test]
fn typed_answers_deserialize() {
    let llm = llm();
    let chat = llm.chat().with_sampler(greedy(128));
    let pet: Pet = block_on(chat("Describe a pet.").typed()).unwrap();
    assert!(pet.name.chars().count() <= 20 && pet.age <= 30, "{pet:?}");
    let species: Species = block_on(chat("Which animal purrs?").typed()).unwrap();
    // The enum is a value of its own; it parsed, which is the point.
    let _ = species;
    // The chat's session holds both constrained answers as ordinary turns.
    let history = chat.session().unwrap().transcript();
    assert_eq!(history.len(), 4, "{history:?}");
    let pet_json: Value = serde_json::from_str(history[1].content()).unwrap();
    assert_eq!(pet_json["age"], json!(pet.age));
}

#[test]
fn regex_and_lark_answers_match() {
    let llm = llm();
    let cases = [
        ("What year did the war end?", r"(19|20)[0-9]{2}"),
        ("Answer yes or no: is water wet?", r"(yes|no)"),
        ("Give a phone number.", r"\+[0-9]{2} [0-9]{3}-[0-9]{4}"),
        ("Name an animal.", r"[A-Z][a-z]{2,9}"),
    ];
    for (prompt, re) in cases {
        let (text, why) = constrained(&llm, prompt, Constraint::regex(re), 64);
        assert_eq!(why, Some(FinishReason::Stop), "{prompt}: {text:?}");
        // Checked by the `regex` crate, not by the engine that constrained it.
        let whole = regex::Regex::new(&format!("^(?:{re})$")).unwrap();
        assert!(whole.is_match(&text), "{prompt}: {text:?} does not match {re}");
    }
    let sum = Constraint::lark("start: NUM \" + \" NUM \" = \" NUM\nNUM: /[0-9]{1,3}/");
    let (text, _) = constrained(&llm, "Write an addition.", sum, 32);
    let parts: Vec<&str> = text.split([' ', '+', '=']).filter(|p| !p.is_empty()).collect();
    assert_eq!(parts.len(), 3, "{text:?}");
    assert!(parts.iter().all(|p| p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit())), "{text:?}");
}

/// A session with a constrained turn saves and loads as any other; the next
/// turn on the loaded copy gives the tokens of an uninterrupted run.
#[test]
fn constrained_session_saves_loads_and_resumes_exactly() {
    let llm = llm();
    let schema = json!({ "type": "object", "properties": { "answer": { "type": "integer" } },
                         "required": ["answer"], "additionalProperties": false });
    let p = greedy(48).with_constraints(Constraint::json_schema(schema));
    let mut session = llm.new_chat_session().unwrap();
    block_on(llm.add_messages_with_callback(
        &mut session,
        &[user("What is 6 times 7?")],
        p.clone(),
        Box::new(|_| {}),
    ))
    .unwrap();
    let answer = session.transcript()[1].content().to_string();
    assert!(serde_json::from_str::<Value>(&answer).unwrap()["answer"].is_i64(), "{answer}");

    let bytes = session.to_bytes().unwrap();
    let mut loaded = LlamaChatSession::from_bytes(&bytes).unwrap();
    assert_eq!(loaded.tokens(), session.tokens());
    let next = [user("Now explain it in words.")];
    let a = common::ask_messages(&llm, &mut session, &next, 24);
    let b = common::ask_messages(&llm, &mut loaded, &next, 24);
    assert_eq!(a, b);
    assert_eq!(session.tokens(), loaded.tokens());
    // And a constrained turn after loading matches too.
    let again = [user("And 7 times 8?")];
    let run = |s: &mut LlamaChatSession| {
        block_on(llm.add_messages_with_callback(s, &again, p.clone(), Box::new(|_| {}))).unwrap();
        s.tokens()
    };
    assert_eq!(run(&mut session), run(&mut loaded));
}

/// Constrained and free turns stepped together give each the tokens it gets alone.
#[test]
fn constrained_turns_batch_exactly() {
    let llm = llm();
    let specs: Vec<(&str, Option<Constraint>)> = vec![
        ("Describe a person.", Some(Constraint::json_schema(schemas()[0].1.clone()))),
        ("Tell me about the sea.", None),
        ("Give a phone number.", Some(Constraint::regex(r"\+[0-9]{2} [0-9]{3}-[0-9]{4}"))),
        ("Any JSON.", Some(Constraint::json())),
    ];
    let run = |which: &[usize]| -> Vec<Vec<u32>> {
        let sessions: Vec<_> = which.iter().map(|_| llm.new_chat_session().unwrap()).collect();
        let mut turns: Vec<RunningTurn> = which
            .iter()
            .zip(&sessions)
            .map(|(&k, s)| {
                let mut p = greedy(40);
                if let Some(c) = &specs[k].1 {
                    p = p.with_constraints(c.clone());
                }
                llm.begin_turn(s, &[user(specs[k].0)], &p).unwrap()
            })
            .collect();
        while turns.iter().any(|t| !t.is_finished()) {
            let mut refs: Vec<&mut RunningTurn> = turns.iter_mut().collect();
            llm.step(&mut refs, 64).unwrap();
        }
        for t in turns {
            t.commit().unwrap();
        }
        sessions.iter().map(|s| s.tokens()).collect()
    };
    let alone: Vec<Vec<u32>> = (0..specs.len()).map(|k| run(&[k]).remove(0)).collect();
    let together = run(&[0, 1, 2, 3]);
    assert_eq!(alone, together);
}

fn time_error(llm: &Llama, c: Constraint) -> (Error, Duration) {
    let session = llm.new_chat_session().unwrap();
    let what = format!("{c:?}");
    let t0 = Instant::now();
    match llm.begin_turn(&session, &[user("Hi")], &greedy(8).with_constraints(c)) {
        Err(e) => (e, t0.elapsed()),
        Ok(_) => panic!("accepted: {what:.200}"),
    }
}

#[test]
fn bad_constraints_are_typed_errors_within_a_second() {
    let llm = llm();
    // Build the token trie first; its one-off cost is not the constraint's.
    constrained(&llm, "Hi", Constraint::regex("hi"), 4);

    let (e, t) = time_error(&llm, Constraint::json_schema(json!({ "type": "nonsense" })));
    assert!(matches!(e, Error::ConstraintInvalid(_)), "{e:?}");
    assert!(t < Duration::from_secs(1), "{t:?}");
    let (e, t) =
        time_error(&llm, Constraint::json_schema(json!({ "type": "integer", "minimum": 5, "maximum": 1 })));
    assert!(matches!(e, Error::ConstraintInvalid(_) | Error::ConstraintUnsatisfiable(_)), "{e:?}");
    assert!(t < Duration::from_secs(1), "{t:?}");

    // A class that contains nothing: no answer can match.
    let (e, t) = time_error(&llm, Constraint::regex("[a&&b]"));
    assert!(matches!(e, Error::ConstraintInvalid(_) | Error::ConstraintUnsatisfiable(_)), "{e:?}");
    assert!(t < Duration::from_secs(1), "{t:?}");
    let (e, _) = time_error(&llm, Constraint::regex("(unclosed"));
    assert!(matches!(e, Error::ConstraintInvalid(_)), "{e:?}");
    let (e, _) = time_error(&llm, Constraint::lark("start: missing_rule"));
    assert!(matches!(e, Error::ConstraintInvalid(_)), "{e:?}");

    // Grammars too big to compile within the bounds: a JSON Schema of 8,000
    // properties (200 kB, over the 50,000-symbol bound), and chains of rules
    // deeper than a 2 MiB stack takes, over the 256 KiB source bound. Each is
    // refused, not compiled for long.
    let chain = |n: usize| {
        let rules: String = (0..n).map(|k| format!("r{k}: \"w{k}\" | r{}\n", k + 1)).collect();
        format!("start: r0\n{rules}r{n}: \"end\"\n")
    };
    let properties: serde_json::Map<String, Value> =
        (0..8_000).map(|k| (format!("p{k}"), json!({ "type": "integer" }))).collect();
    let big = [
        Constraint::lark(chain(30_000)),
        Constraint::json_schema(json!({ "type": "object", "properties": properties })),
        Constraint::lark(chain(60_000)),
    ];
    for (k, c) in big.into_iter().enumerate() {
        let (e, t) = time_error(&llm, c);
        assert!(matches!(e, Error::ConstraintInvalid(_)), "big grammar {k}: {e:?}");
        assert!(t < Duration::from_secs(1), "big grammar {k}: {t:?} ({e})");
    }
    // The model is fine afterwards.
    let (text, _) = constrained(&llm, "Yes or no?", Constraint::regex("(yes|no)"), 8);
    assert!(text == "yes" || text == "no");
}

/// A required call is a call to a listed tool with arguments that validate;
/// a named one calls that tool; auto may answer in text; and the tool's
/// result appends to the session, whose next turn runs on it.
#[test]
fn tool_calls_are_constrained_parsed_and_answered() {
    use colloquy::tools::{constraint, parse_tool_calls, Tool, ToolChoice};
    let llm = llm();
    let params = json!({ "type": "object",
                         "properties": { "city": { "type": "string", "maxLength": 20 },
                                         "unit": { "enum": ["celsius", "fahrenheit"] } },
                         "required": ["city", "unit"], "additionalProperties": false });
    let tools = vec![
        Tool::new("get_weather", "The current weather in a city", params.clone()),
        Tool::new(
            "get_time",
            "The current time in a city",
            json!({ "type": "object",
            "properties": { "city": { "type": "string", "maxLength": 20 } }, "required": ["city"] }),
        ),
    ];
    let validator = jsonschema::validator_for(&params).unwrap();
    for choice in [ToolChoice::Required, ToolChoice::Named("get_weather".into())] {
        let c = constraint(&tools, &choice).unwrap().unwrap();
        let mut session = llm.new_chat_session().unwrap();
        let msgs = [user("What is the weather in Paris?")];
        let p = greedy(96).with_constraints(c).with_tools(tools.clone());
        block_on(llm.add_messages_with_callback(&mut session, &msgs, p, Box::new(|_| {}))).unwrap();
        // The tools are in the prompt (SmolLM2's template takes none: a Hermes
        // system prompt), not in the history.
        let transcript = session.transcript();
        assert_eq!(transcript.len(), 2);
        let prompt = llm.render_tokens(&transcript[..1]).unwrap();
        assert!(session.tokens().len() > prompt.len() + 100, "the tools were not in the prompt");
        let answer = transcript[1].content().to_string();
        let calls = parse_tool_calls(&answer);
        assert_eq!(calls.len(), 1, "{choice:?}: {answer}");
        assert!(tools.iter().any(|t| t.name == calls[0].name), "{answer}");
        if calls[0].name == "get_weather" {
            assert!(validator.is_valid(&calls[0].arguments), "{answer}");
        }
        // The result goes back in; the model answers from it.
        let result = ChatMessage::new(MessageType::ToolResult, r#"{"temperature": 21, "sky": "clear"}"#);
        let text = common::ask_messages(&llm, &mut session, &[result], 24);
        assert!(!text.is_empty());
        assert_eq!(session.history()[2].role(), MessageType::ToolResult);
    }
    // Auto: a text answer is allowed, and an answer that starts a call is one.
    let c = constraint(&tools, &ToolChoice::Auto).unwrap().unwrap();
    for q in ["What is the weather in Rome?", "Say hello."] {
        let session = llm.new_chat_session().unwrap();
        let p = greedy(96).with_constraints(c.clone()).with_tools(tools.clone());
        let mut turn = llm.begin_turn(&session, &[user(q)], &p).unwrap();
        while !turn.is_finished() {
            llm.step(&mut [&mut turn], 512).unwrap();
        }
        let (text, why) = (turn.answer().to_string(), turn.finish_reason());
        // A call ends when it is complete; a text answer may run to the limit.
        if text.starts_with('<') {
            assert_eq!(why, Some(FinishReason::Stop), "{text}");
            assert_eq!(parse_tool_calls(&text).len(), 1, "{text}");
        } else {
            assert!(!text.is_empty());
        }
    }
}

/// The 262k-token vocabulary of Gemma 3 builds its trie from our tokenizer
/// too (its control tokens included), and its answers validate.
#[test]
fn gemma3_answers_validate() {
    let gemma = Llama::builder()
        .with_source(LlamaSource::gemma3())
        .with_threads(2)
        .with_progress(false)
        .build_blocking()
        .unwrap();
    for (prompt, schema) in schemas().into_iter().take(3) {
        let validator = jsonschema::validator_for(&schema).unwrap();
        let (text, why) = constrained(&gemma, prompt, Constraint::json_schema(schema.clone()), 256);
        assert_eq!(why, Some(FinishReason::Stop), "{prompt}: {text}");
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{prompt}: {e}: {text:?}"));
        assert!(validator.is_valid(&value), "{prompt}: {text}");
    }
}

/// A template that renders `tools` itself gets them as OpenAI's objects
/// (and no system prompt is added); one that does not gets the Hermes prompt.
#[test]
fn templates_that_take_tools_get_them() {
    use colloquy::template::{ChatTemplate, CHATML};
    use colloquy::tools::Tool;
    let tools = [Tool::new("now", "The time", json!({"type": "object"}))];
    let msgs = [user("Hi")];
    let own = "{% if tools %}{% for t in tools %}[{{ t.function.name }}:{{ t.type }}]{% endfor %}{% endif %}\
               {% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}";
    let t = ChatTemplate::new(own, "", "").unwrap();
    assert_eq!(t.render_with_tools(&msgs, &tools, false).unwrap(), "[now:function]user=Hi;");
    assert_eq!(t.render(&msgs, false).unwrap(), "user=Hi;");
    let chatml = ChatTemplate::new(CHATML, "", "").unwrap();
    let with = chatml.render_with_tools(&msgs, &tools, false).unwrap();
    assert!(
        with.starts_with("<|im_start|>system\nYou are a function calling AI model.")
            && with.contains("\"now\"")
    );
    let result = ChatMessage::new(MessageType::ToolResult, "12:00");
    assert!(chatml.render(&[result], false).unwrap().contains("<tool_response>\n12:00\n</tool_response>"));
}
