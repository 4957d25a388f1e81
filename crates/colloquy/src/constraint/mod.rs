//! Structured output: constraints that limit what the model may write to a
//! regular expression, a JSON Schema, any JSON, or a Lark grammar.
//!
//! [llguidance](https://github.com/guidance-ai/llguidance) compiles the
//! constraint against the model's vocabulary (read from the GGUF through our
//! tokenizer) and gives, at each step, the set of tokens that keep the answer
//! inside it. The sampler then only sees those tokens. The mask for the next
//! token is computed on a thread of its own while the forward pass runs.
//!
//! ```no_run
//! use colloquy::language::*;
//! # #[tokio::main] async fn main() {
//! let llm = Llama::new_chat().await.unwrap();
//! let mut chat = llm.chat();
//! let answer = chat("Pick a primary colour.")
//!     .with_constraints(Constraint::regex("(red|green|blue)"))
//!     .await
//!     .unwrap();
//! assert!(["red", "green", "blue"].contains(&answer.as_str()));
//! # }
//! ```

mod guide;
mod vocab;

use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::ParserFactory;

use crate::error::{Error, Result};

pub(crate) use guide::Guide;

/// What an answer must look like.
///
/// ```
/// use colloquy::constraint::Constraint;
/// let digits = Constraint::regex(r"[0-9]{1,4}");
/// let person = Constraint::json_schema(serde_json::json!({
///     "type": "object",
///     "properties": { "name": { "type": "string" }, "age": { "type": "integer", "minimum": 0 } },
///     "required": ["name", "age"]
/// }));
/// assert_ne!(digits, person);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Regex(String),
    JsonSchema(serde_json::Value),
    Lark(String),
}

impl Constraint {
    /// The answer matches the regular expression as a whole (Rust `regex`
    /// syntax, anchored at both ends).
    ///
    /// ```
    /// let yes_no = colloquy::constraint::Constraint::regex("(yes|no)");
    /// ```
    pub fn regex(re: impl Into<String>) -> Constraint {
        Constraint { kind: Kind::Regex(re.into()) }
    }

    /// The answer is JSON that validates against `schema` (JSON Schema, as
    /// llguidance supports it: objects, arrays, enums, bounds, patterns,
    /// `anyOf`, `$ref`). It is written compactly (`, ` and `: ` separators,
    /// no other whitespace), so a small model cannot loop on blank lines; an
    /// `x-guidance` key in the schema sets llguidance's layout options instead.
    ///
    /// ```
    /// let list = colloquy::constraint::Constraint::json_schema(
    ///     serde_json::json!({ "type": "array", "items": { "type": "string" }, "maxItems": 3 }),
    /// );
    /// ```
    pub fn json_schema(schema: serde_json::Value) -> Constraint {
        Constraint { kind: Kind::JsonSchema(schema) }
    }

    /// The answer is any JSON value.
    ///
    /// ```
    /// let any = colloquy::constraint::Constraint::json();
    /// ```
    pub fn json() -> Constraint {
        Constraint::json_schema(serde_json::json!({}))
    }

    /// The answer is a JSON object (OpenAI's `{"type": "json_object"}`).
    ///
    /// ```
    /// let object = colloquy::constraint::Constraint::json_object();
    /// ```
    pub fn json_object() -> Constraint {
        Constraint::json_schema(serde_json::json!({ "type": "object" }))
    }

    /// The answer is JSON for a value of `T`: its schema comes from
    /// `schemars`, as [`ChatResponseBuilder::typed`](crate::ChatResponseBuilder::typed) uses it.
    ///
    /// ```
    /// #[derive(schemars::JsonSchema)]
    /// struct Point { x: i32, y: i32 }
    /// let point = colloquy::constraint::Constraint::for_type::<Point>();
    /// ```
    pub fn for_type<T: schemars::JsonSchema>() -> Constraint {
        let schema = schemars::schema_for!(T);
        Constraint::json_schema(schema.to_value())
    }

    /// The answer is a sentence of a Lark grammar, in llguidance's dialect
    /// (`start` is the top rule; `%json { … }` embeds a JSON Schema; a
    /// terminal can be a `/regex/`).
    ///
    /// ```
    /// let sum = colloquy::constraint::Constraint::lark(r#"start: NUM ("+" NUM)*
    /// NUM: /[0-9]+/"#);
    /// ```
    pub fn lark(grammar: impl Into<String>) -> Constraint {
        Constraint { kind: Kind::Lark(grammar.into()) }
    }

    /// The size of the constraint's source text, in bytes.
    fn source_len(&self) -> usize {
        match &self.kind {
            Kind::Regex(s) | Kind::Lark(s) => s.len(),
            Kind::JsonSchema(schema) => schema.to_string().len(),
        }
    }

    fn grammar(&self) -> TopLevelGrammar {
        match &self.kind {
            Kind::Regex(re) => TopLevelGrammar::from_regex(re),
            Kind::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema)),
            Kind::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }
}

/// `schema` with llguidance's JSON layout set to compact (`, ` and `: `,
/// no other whitespace), unless it chooses its own (`x-guidance`): with
/// free whitespace a small model can write blank lines forever.
pub(crate) fn compact(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " })
        });
    }
    schema
}

/// The largest constraint source accepted (a regex, a Lark grammar, or a
/// schema's JSON text); larger ones are refused before compiling.
const MAX_SOURCE_BYTES: usize = 256 << 10;

/// One model's grammar compiler: its token trie and llguidance's limits.
pub(crate) struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// Builds the token trie of `tokenizer`'s vocabulary.
    pub(crate) fn new(tokenizer: &colloquy_engine::tokenizer::Tokenizer) -> Result<Arc<Grammars>> {
        let env = vocab::VocabEnv::env(tokenizer);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::ConstraintInvalid(format!("building the token trie: {e}")))?;
        factory.quiet();
        // llguidance's defaults bound each step's work; the grammar's size and
        // the lexer's start-up work are bounded tighter, so that a grammar too
        // big to compile quickly is refused (well) within a second.
        *factory.limits_mut() = ParserLimits {
            max_grammar_size: 50_000,
            initial_lexer_fuel: 2_000_000,
            ..ParserLimits::default()
        };
        Ok(Arc::new(Grammars { factory }))
    }

    /// Compiles `constraint` and starts its guide, whose first mask is ready
    /// (so a constraint that cannot be met at all fails here, not mid-answer).
    pub(crate) fn start(self: &Arc<Self>, constraint: &Constraint) -> Result<Guide> {
        let size = constraint.source_len();
        if size > MAX_SOURCE_BYTES {
            return Err(Error::ConstraintInvalid(format!(
                "the constraint is {size} bytes; at most {MAX_SOURCE_BYTES} are accepted"
            )));
        }
        let grammars = Arc::clone(self);
        let grammar = constraint.grammar();
        Guide::start(move || {
            grammars.factory.create_parser(grammar).map_err(|e| Error::ConstraintInvalid(e.to_string()))
        })
    }
}
