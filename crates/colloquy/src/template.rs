//! Chat templates: the GGUF's Jinja template rendered with minijinja.
//!
//! The environment follows Hugging Face's: `trim_blocks`, `lstrip_blocks`,
//! Python-style string and dict methods (minijinja-contrib's pycompat),
//! `raise_exception` and `strftime_now`.

use std::path::Path;

use colloquy_engine::gguf::Gguf;
use colloquy_engine::tokenizer::Tokenizer;
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use crate::error::{Error, Result};
use crate::message::{ChatMessage, MessageType};
use crate::tools::Tool;

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
    /// Whether the template renders a `tools` list itself (Qwen's, Llama
    /// 3.1's); if not, tools are described in a Hermes-style system prompt.
    takes_tools: bool,
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
        let takes_tools = source.contains("tools");
        Ok(ChatTemplate { env, tool_role, takes_tools, bos: bos.to_string(), eos: eos.to_string() })
    }

    /// Whether the generation prompt opens the model's thinking: it ends in
    /// `<think>` (later DeepSeek-R1 templates, Qwen3's), so the answer starts
    /// inside it and carries only the closing `</think>`.
    ///
    /// ```
    /// use colloquy::template::{ChatTemplate, CHATML};
    ///
    /// let opens = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}A: <think>\n{% endif %}";
    /// assert!(ChatTemplate::new(opens, "", "").unwrap().opens_thinking());
    /// assert!(!ChatTemplate::new(CHATML, "", "").unwrap().opens_thinking());
    /// ```
    pub fn opens_thinking(&self) -> bool {
        let probe = [ChatMessage::new(MessageType::UserMessage, "?")];
        self.render(&probe, true).is_ok_and(|t| t.trim_end().ends_with("<think>"))
    }

    /// Renders a conversation. With `add_generation_prompt`, the text ends where the
    /// model's answer starts.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// Renders a conversation that offers `tools`: the template gets them as
    /// `tools` (OpenAI's `{"type": "function", "function": …}` objects, as
    /// llama.cpp passes them) when it renders them itself; otherwise they are
    /// described in the system prompt ([`tools::system_prompt`](crate::tools::system_prompt)),
    /// before the conversation's own system prompt, if any.
    ///
    /// ```
    /// use colloquy::template::{ChatTemplate, CHATML};
    /// use colloquy::tools::Tool;
    /// use colloquy::language::*;
    ///
    /// let t = ChatTemplate::new(CHATML, "", "").unwrap();
    /// let now = Tool::new("now", "The time", serde_json::json!({"type": "object"}));
    /// let text = t.render_with_tools(&[ChatMessage::new(MessageType::UserMessage, "Hi")], &[now], true).unwrap();
    /// assert!(text.starts_with("<|im_start|>system\n") && text.contains("<tools>"));
    /// ```
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[Tool],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let described;
        let messages = if !tools.is_empty() && !self.takes_tools {
            described = with_tools_prompt(messages, tools);
            &described[..]
        } else {
            messages
        };
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
        let tools: Vec<serde_json::Value> = tools.iter().map(Tool::to_openai).collect();
        let tools = (!tools.is_empty() && self.takes_tools).then(|| minijinja::Value::from_serialize(&tools));
        let tmpl = self.env.get_template("chat").map_err(Error::TemplateSyntax)?;
        tmpl.render(context! {
            messages => msgs,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(Error::TemplateRender)
    }
}

/// The template source a model file calls for: its `tokenizer.chat_template`,
/// or the documented fallback, [`GEMMA`] for `gemma*` architectures and
/// [`CHATML`] otherwise.
///
/// ```
/// use colloquy::engine::gguf::Gguf;
/// use colloquy::template::{source_for, CHATML};
///
/// let mut bytes = b"GGUF".to_vec();
/// bytes.extend(3u32.to_le_bytes());
/// bytes.extend([0u8; 16]); // no tensors, no metadata
/// assert_eq!(source_for(&Gguf::from_bytes(bytes)?), CHATML);
/// # Ok::<(), colloquy::engine::Error>(())
/// ```
pub fn source_for(gguf: &Gguf) -> String {
    if let Ok(t) = gguf.get_str("tokenizer.chat_template") {
        return t.to_string();
    }
    let arch = gguf.get_str("general.architecture").unwrap_or_default();
    if arch.starts_with("gemma") { GEMMA } else { CHATML }.to_string()
}

impl ChatTemplate {
    /// Compiles `source` with the texts of `tokenizer`'s BOS and EOS tokens.
    pub fn for_tokenizer(source: &str, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default().to_string();
        ChatTemplate::new(source, &text(tokenizer.bos()), &text(Some(tokenizer.eos())))
    }

    /// The template of a model file, read as llama.cpp's `vocab_only` does: the
    /// metadata alone, so a header-only slice of a large model is enough. Also
    /// returns the tokenizer, to turn the rendered text into ids.
    ///
    /// # Errors
    /// [`Error::Engine`] when the file cannot be read or its tokenizer is not
    /// supported; [`Error::TemplateSyntax`] when its template does not compile.
    pub fn from_model_file(path: impl AsRef<Path>) -> Result<(ChatTemplate, Tokenizer)> {
        let gguf = Gguf::open_vocab_only(path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        Ok((ChatTemplate::for_tokenizer(&source_for(&gguf), &tokenizer)?, tokenizer))
    }
}

/// The ids of a rendered conversation, as a turn feeds them: special-token text
/// parsed, and the BOS put in front when the model asks for one and the
/// template did not already write it.
///
/// ```no_run
/// use colloquy::language::*;
/// use colloquy::template::{prompt_ids, ChatTemplate};
///
/// let (template, tokenizer) = ChatTemplate::from_model_file("model.gguf")?;
/// let text = template.render(&[ChatMessage::new(MessageType::UserMessage, "Hi")], true)?;
/// println!("{:?}", prompt_ids(&tokenizer, &text));
/// # Ok::<(), colloquy::Error>(())
/// ```
pub fn prompt_ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    let body = tokenizer.encode(text, true);
    let mut ids = Vec::with_capacity(body.len() + 1);
    if let Some(bos) = tokenizer.bos().filter(|_| tokenizer.add_bos()) {
        if body.first() != Some(&bos) {
            ids.push(bos);
        }
    }
    ids.extend(body);
    ids
}

/// `messages` with `tools` described in the system prompt: prepended to the
/// first system message, or as a new first message.
fn with_tools_prompt(messages: &[ChatMessage], tools: &[Tool]) -> Vec<ChatMessage> {
    let prompt = crate::tools::system_prompt(tools);
    let mut out = messages.to_vec();
    match out.first_mut() {
        Some(m) if m.role() == MessageType::SystemPrompt => {
            *m = ChatMessage::new(MessageType::SystemPrompt, format!("{prompt}\n\n{}", m.content()));
        }
        _ => out.insert(0, ChatMessage::new(MessageType::SystemPrompt, prompt)),
    }
    out
}
