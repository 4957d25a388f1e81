//! Preparing a chat turn's prompt: render the conversation, fit it in the
//! context, and find where stop sequences end the answer.

use colloquy_engine::model::UBATCH;

use crate::context::{ContextPolicy, ModelContext};
use crate::error::{Error, Result};
use crate::message::{ChatMessage, MessageType};
use crate::tools::Tool;

/// A progress bar for reading a prompt: hidden for short prompts, when turned
/// off, or when stderr is not a terminal.
pub(crate) fn prompt_bar(enabled: bool, tokens: usize) -> indicatif::ProgressBar {
    if !enabled || tokens < 2 * UBATCH {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(tokens as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("reading {bar:30} {pos}/{len} tokens ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Renders and tokenizes a conversation, ending where the answer starts.
pub(crate) fn render(inner: &ModelContext, conversation: &[ChatMessage], tools: &[Tool]) -> Result<Vec<u32>> {
    let text = inner.template.render_with_tools(conversation, tools, true)?;
    Ok(crate::template::prompt_ids(inner.model.tokenizer(), &text))
}

/// Renders `conversation`, applying the context policy: under
/// [`ContextPolicy::Error`] a prompt that does not fit is an error; under
/// [`ContextPolicy::DropOldest`] a prompt that leaves the answer less than a
/// quarter of the context (or `max_answer` tokens, if fewer) loses its oldest
/// messages, moved to `dropped`, until it takes at most half the context.
pub(crate) fn fit_context(
    inner: &ModelContext,
    conversation: &mut Vec<ChatMessage>,
    dropped: &mut Vec<ChatMessage>,
    max_answer: usize,
    tools: &[Tool],
) -> Result<Vec<u32>> {
    let n_ctx = inner.model.n_ctx();
    let mut tokens = render(inner, conversation, tools)?;
    let reserve = max_answer.clamp(1, (n_ctx / 4).max(1));
    if inner.policy == ContextPolicy::DropOldest && tokens.len() + reserve > n_ctx {
        // Dropping a lot at once amortizes the re-read of what is kept.
        while tokens.len() > n_ctx / 2 {
            let Some(gone) = drop_oldest(conversation) else { break };
            dropped.extend(gone);
            tokens = render(inner, conversation, tools)?;
        }
    }
    if tokens.len() >= n_ctx {
        return Err(Error::ContextOverflow { needed: tokens.len() + 1, n_ctx });
    }
    Ok(tokens)
}

/// Removes the oldest message that is not the system prompt (with the answer
/// that follows it, so the kept part never starts with an answer) and returns
/// what it removed. `None` when only the system prompt and the newest message
/// are left.
fn drop_oldest(conversation: &mut Vec<ChatMessage>) -> Option<Vec<ChatMessage>> {
    let first = usize::from(conversation.first().is_some_and(|m| m.role() == MessageType::SystemPrompt));
    if conversation.len() <= first + 1 {
        return None;
    }
    let mut gone = vec![conversation.remove(first)];
    if conversation.len() > first + 1 && conversation[first].role() == MessageType::ModelAnswer {
        gone.push(conversation.remove(first));
    }
    Some(gone)
}

/// How much of `text` is safe to show, and whether a stop string was found
/// (the earliest one wins). Text that could be the start of a stop string is
/// held back.
pub(crate) fn stop_split(text: &str, stops: &[String]) -> (usize, bool) {
    let found = stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min();
    if let Some(i) = found {
        return (i, true);
    }
    let mut safe = text.len();
    for stop in stops {
        for k in (1..stop.len()).rev() {
            if text.len() >= k && stop.is_char_boundary(k) && text.ends_with(&stop[..k]) {
                safe = safe.min(text.len() - k);
                break;
            }
        }
    }
    while !text.is_char_boundary(safe) {
        safe -= 1;
    }
    (safe, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_split_holds_back_partial_stop() {
        let s = |x: &str| vec![x.to_string()];
        assert_eq!(stop_split("hello wor", &s("world")), (6, false));
        assert_eq!(stop_split("hello world!", &s("world")), (6, true));
        assert_eq!(stop_split("hello", &[]), (5, false));
        assert_eq!(stop_split("abc", &s("x")), (3, false));
        let two = vec!["b!".to_string(), "lo".to_string()];
        assert_eq!(stop_split("hello b!", &two), (3, true));
        assert_eq!(stop_split("hel", &two), (2, false));
        assert_eq!(stop_split("hey b", &two), (4, false));
    }

    #[test]
    fn drop_oldest_keeps_system_prompt() {
        let m = |r, c: &str| ChatMessage::new(r, c);
        let mut c = vec![
            m(MessageType::SystemPrompt, "s"),
            m(MessageType::UserMessage, "u1"),
            m(MessageType::ModelAnswer, "a1"),
            m(MessageType::UserMessage, "u2"),
        ];
        let gone = drop_oldest(&mut c).unwrap();
        assert_eq!(gone.iter().map(|m| m.content()).collect::<Vec<_>>(), ["u1", "a1"]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].content(), "s");
        assert_eq!(c[1].content(), "u2");
        assert!(drop_oldest(&mut c).is_none());
    }
}
