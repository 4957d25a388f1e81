//! Chat templates: the GGUF's Jinja template rendered with minijinja.
//!
//! The environment follows Hugging Face's: `trim_blocks`, `lstrip_blocks`,
//! Python-style string and dict methods (minijinja-contrib's pycompat),
//! `raise_exception` and `strftime_now`.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use crate::error::{Error, Result};
use crate::message::{ChatMessage, MessageType};

/// The template used when a GGUF ships none and the architecture has no
/// turn format of its own: ChatML.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The fallback for Gemma models without a template (Gemma 3 base models ship
/// none): Gemma's own turn markers, which are special tokens in its vocabulary.
/// A system prompt is folded into the first user turn, as Gemma's instruction
/// template does.
pub const GEMMA: &str = "{{ bos_token }}{% set ns = namespace(sys='') %}{% for message in messages %}{% if message['role'] == 'system' %}{% set ns.sys = message['content'] + '\n\n' %}{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\n' + (ns.sys if loop.index0 <= 1 and message['role'] == 'user' else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// A compiled chat template.
///
/// ```
/// use colloquy::template::{ChatTemplate, CHATML};
/// use colloquy::language::*;
///
/// let t = ChatTemplate::new(CHATML, "", "").unwrap();
/// let text = t.render(&[ChatMessage::new(MessageType::UserMessage, "Hi")], true).unwrap();
/// assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
/// ```
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Whether the template handles the `tool` role itself; if not, a tool's
    /// result is given as a user message wrapped in `<tool_response>`.
    tool_role: bool,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos` and `eos` are the texts of the model's BOS and EOS tokens.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", |msg: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| chrono::Local::now().format(&fmt).to_string());
        env.add_template_owned("chat", source.to_string()).map_err(Error::TemplateSyntax)?;
        let tool_role = source.contains("'tool'") || source.contains("\"tool\"");
        Ok(ChatTemplate { env, tool_role, bos: bos.to_string(), eos: eos.to_string() })
    }

    /// Renders a conversation. With `add_generation_prompt`, the text ends where the
    /// model's answer starts.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<_> = messages
            .iter()
            .map(|m| match m.role() {
                MessageType::ToolResult if !self.tool_role => context! {
                    role => "user",
                    content => format!("<tool_response>\n{}\n</tool_response>", m.content()),
                },
                role => context! { role => role.as_role(), content => m.content() },
            })
            .collect();
        let tmpl = self.env.get_template("chat").map_err(Error::TemplateSyntax)?;
        tmpl.render(context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(Error::TemplateRender)
    }
}
