//! `colloquy template`: a conversation rendered with a model's chat template,
//! from the model file's metadata alone (vocab-only, so a header-only slice
//! of a large model is enough).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use colloquy::template::{prompt_ids, ChatTemplate};
use colloquy::{ChatMessage, MessageType};
use colloquy_engine::fetch;
use serde_json::Value;

#[derive(Args)]
pub struct TemplateArgs {
    /// A .gguf path or a known model name (e.g. r1-header).
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// A JSON file (`-`: standard input) holding the messages: an array of
    /// `{"role": …, "content": …}`, or a chat request with a `messages` array.
    #[arg(long)]
    messages: PathBuf,
    /// End after the last message instead of where the assistant's answer starts.
    #[arg(long)]
    no_generation_prompt: bool,
    /// Print the token ids (a JSON array) a turn would feed, instead of the text.
    #[arg(long)]
    ids: bool,
}

pub fn run(args: TemplateArgs) -> Result<()> {
    let raw = crate::read_text_file(&args.messages)?;
    let messages =
        parse_messages(&raw).with_context(|| format!("reading messages from {}", args.messages.display()))?;
    let path = fetch::resolve_model(&args.model, &fetch::PullOptions::default())?;
    let (template, tokenizer) = ChatTemplate::from_model_file(&path)
        .with_context(|| format!("reading the template of {}", path.display()))?;
    let text = template.render(&messages, !args.no_generation_prompt)?;
    if args.ids {
        println!("{}", serde_json::to_string(&prompt_ids(&tokenizer, &text))?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// The messages of `raw`: a JSON array of messages, or an object with one under `messages`.
fn parse_messages(raw: &str) -> Result<Vec<ChatMessage>> {
    let value: Value = serde_json::from_str(raw).context("not JSON")?;
    let list = match &value {
        Value::Array(list) => list,
        Value::Object(o) => match o.get("messages") {
            Some(Value::Array(list)) => list,
            _ => bail!("expected an array of messages, or an object with a \"messages\" array"),
        },
        _ => bail!("expected an array of messages, or an object with a \"messages\" array"),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m["role"].as_str().with_context(|| format!("messages[{i}] has no \"role\" string"))?;
            let role = MessageType::from_role(role).with_context(|| {
                format!("messages[{i}].role {role:?} is not one of system, developer, user, assistant, tool")
            })?;
            let content = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                _ => bail!("messages[{i}].content must be a string"),
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_as_an_array_or_a_request() {
        let list =
            parse_messages(r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]"#)
                .unwrap();
        assert_eq!(list[0], ChatMessage::new(MessageType::SystemPrompt, "Be brief."));
        assert_eq!(list[1], ChatMessage::new(MessageType::UserMessage, "Hi"));
        let req =
            parse_messages(r#"{"model":"x","messages":[{"role":"assistant","content":null}]}"#).unwrap();
        assert_eq!(req, [ChatMessage::new(MessageType::ModelAnswer, "")]);
    }

    #[test]
    fn bad_messages_say_which_and_why() {
        let err = |raw: &str| format!("{:#}", parse_messages(raw).unwrap_err());
        assert!(err("{").contains("not JSON"));
        assert!(err(r#"{"model":"x"}"#).contains("\"messages\" array"));
        assert!(err(r#"[{"content":"Hi"}]"#).contains("messages[0] has no \"role\""));
        assert!(err(r#"[{"role":"user","content":"a"},{"role":"narrator","content":"b"}]"#)
            .contains("messages[1].role \"narrator\""));
        assert!(err(r#"[{"role":"user","content":[1]}]"#).contains("messages[0].content must be a string"));
    }
}
