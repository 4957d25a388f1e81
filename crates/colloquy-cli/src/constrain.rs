//! `--json-schema FILE`, `--regex RE` and `--grammar FILE`: the constraint
//! options of `colloquy generate` and `colloquy chat`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use colloquy::Constraint;

/// At most one of the three.
#[derive(Args, Debug, Default)]
#[group(multiple = false)]
pub struct ConstraintArgs {
    /// Answer with JSON valid under the JSON Schema in this file.
    #[arg(long, value_name = "FILE")]
    json_schema: Option<PathBuf>,
    /// Answer with text that matches this regular expression as a whole.
    #[arg(long, value_name = "RE")]
    regex: Option<String>,
    /// Answer with a sentence of the Lark grammar in this file (llguidance's
    /// dialect; `start` is the top rule).
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
}

impl ConstraintArgs {
    /// The constraint asked for, if any; a file that cannot be read or a
    /// schema that is not JSON is an error naming the option.
    pub fn constraint(&self) -> Result<Option<Constraint>> {
        if let Some(path) = &self.json_schema {
            let text = crate::read_text_file(path).context("reading --json-schema")?;
            let schema: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("--json-schema {} is not JSON", path.display()))?;
            return Ok(Some(Constraint::json_schema(schema)));
        }
        if let Some(re) = &self.regex {
            return Ok(Some(Constraint::regex(re.clone())));
        }
        if let Some(path) = &self.grammar {
            let text = crate::read_text_file(path).context("reading --grammar")?;
            return Ok(Some(Constraint::lark(text)));
        }
        Ok(None)
    }
}
