//! One chat turn: render the conversation, feed only what the model has not
//! read yet, and generate the answer.

use std::time::Instant;

use colloquy_engine::arch::LogitsFor;
use colloquy_engine::model::UBATCH;
use colloquy_engine::sampler::{RngState, Sampler};
use colloquy_engine::tokenizer::Utf8Stream;

use crate::context::{ContextPolicy, ModelContext};
use crate::error::{Error, Result};
use crate::message::{ChatMessage, MessageType};
use crate::params::GenerationParameters;
use crate::session::{SessionState, TurnStats};

pub(crate) fn run(
    inner: &ModelContext,
    st: &mut SessionState,
    messages: &[ChatMessage],
    params: &GenerationParameters,
    on_token: &mut dyn FnMut(String),
) -> Result<()> {
    let t0 = Instant::now();
    let model = &inner.model;
    if st.fingerprint != inner.fingerprint {
        return Err(Error::SessionModelMismatch {
            expected: inner.fingerprint.to_string(),
            found: st.fingerprint.to_string(),
        });
    }
    let fresh = *model.new_kv().layout();
    if *st.kv.layout() != fresh {
        // A session saved before windowed layers were kept apart holds every
        // layer in one lane: split it (anything else is another cache shape).
        let found = format!("{:?}", st.kv.layout());
        st.kv = (st.kv.clone().into_layout(fresh))
            .map_err(|_| Error::SessionKvMismatch { expected: format!("{fresh:?}"), found })?;
    }
    if st.kv.len() != st.tokens.len() {
        return Err(Error::SessionCorrupt("token count and KV length differ".into()));
    }
    st.kv.set_capacity(model.n_ctx());

    // The conversation so far, the pending answer, and the new messages.
    let mut conversation = st.history.clone();
    if let Some(answer) = st.pending.take() {
        conversation.push(ChatMessage::new(MessageType::ModelAnswer, answer));
    }
    conversation.extend_from_slice(messages);
    let before = st.dropped.len();
    let prompt = fit_context(inner, &mut conversation, &mut st.dropped, params.max_length as usize)?;
    let dropped_messages = st.dropped.len() - before;

    // Reuse the longest common prefix; recompute the rest. At least the last
    // prompt token is run, for its logits.
    let mut common = st.tokens.iter().zip(&prompt).take_while(|(a, b)| a == b).count();
    common = common.min(prompt.len() - 1);
    // (With windowed layers, going back past the held window starts over.)
    st.kv.truncate(common);
    // Blocks that another session of this model already computed are adopted.
    let common = inner.prefix().extend(&mut st.kv, &prompt, prompt.len() - 1);
    st.tokens.clear();
    st.tokens.extend_from_slice(&prompt[..common]);
    let mut logits = Vec::new();
    let bar = prompt_bar(inner.progress, prompt.len() - common);
    model.forward_chunked(
        &mut st.kv,
        &prompt[common..],
        LogitsFor::Last,
        UBATCH,
        &mut logits,
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    st.tokens.extend_from_slice(&prompt[common..]);
    // Keep the window where the answer starts: the next turn may go back into
    // the answer (if its text tokenizes differently) without starting over.
    st.kv.set_rewind_point(Some(st.kv.len()));

    // Sample from the session's random stream (or a fresh one at the given seed).
    let rng = match params.seed {
        Some(seed) => RngState { seed, word_pos: 0 },
        None => st.rng,
    };
    let mut sampler = Sampler::new(params.sampler_params(rng.seed));
    sampler.set_rng_state(rng);

    let mut answer = String::new();
    let mut emitted = 0;
    let mut utf8 = Utf8Stream::new();
    let mut ttft = None;
    let tok = model.tokenizer();
    let room = model.n_ctx().saturating_sub(st.kv.len());
    let max = (params.max_length as usize).min(room);
    let mut history = st.tokens.clone();
    let mut stopped = false;
    let generated = model.generate(&mut st.kv, logits, &mut history, &mut sampler, max, &mut |id| {
        ttft.get_or_insert_with(|| t0.elapsed());
        if tok.is_eog(id) {
            return false;
        }
        answer.push_str(&utf8.push(&tok.token_to_piece(id).unwrap_or_default()));
        let (safe, stop) = stop_split(&answer, params.stop_on.as_deref());
        if safe > emitted {
            on_token(answer[emitted..safe].to_string());
            emitted = safe;
        }
        if stop {
            answer.truncate(safe);
            stopped = true;
        }
        !stop
    })?;
    if !stopped {
        answer.push_str(&utf8.finish());
        if answer.len() > emitted {
            on_token(answer[emitted..].to_string());
        }
    }
    // Every generated token but the last has been fed; the last (usually the
    // end-of-turn token) goes in with the next turn's text.
    st.tokens.extend_from_slice(&generated[..generated.len().saturating_sub(1)]);
    debug_assert_eq!(st.tokens.len(), st.kv.len());
    inner.prefix().insert(&st.kv, &st.tokens);
    st.history = conversation;
    st.pending = Some(answer);
    st.rng = sampler.rng_state();
    st.last_turn = Some(TurnStats {
        prompt_tokens: prompt.len() - common,
        reused_tokens: common,
        generated_tokens: generated.len(),
        dropped_messages,
        time_to_first_token: ttft.unwrap_or_else(|| t0.elapsed()),
        total_time: t0.elapsed(),
    });
    Ok(())
}

/// A progress bar for reading a prompt: hidden for short prompts, when turned
/// off, or when stderr is not a terminal.
fn prompt_bar(enabled: bool, tokens: usize) -> indicatif::ProgressBar {
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
pub(crate) fn render(inner: &ModelContext, conversation: &[ChatMessage]) -> Result<Vec<u32>> {
    let text = inner.template.render(conversation, true)?;
    let tok = inner.model.tokenizer();
    let mut ids = Vec::new();
    let body = tok.encode(&text, true);
    if let Some(bos) = tok.bos().filter(|_| tok.add_bos()) {
        if body.first() != Some(&bos) {
            ids.push(bos);
        }
    }
    ids.extend(body);
    Ok(ids)
}

/// Renders `conversation`, applying the context policy: under
/// [`ContextPolicy::Error`] a prompt that does not fit is an error; under
/// [`ContextPolicy::DropOldest`] a prompt that leaves the answer less than a
/// quarter of the context (or `max_answer` tokens, if fewer) loses its oldest
/// messages, moved to `dropped`, until it takes at most half the context.
fn fit_context(
    inner: &ModelContext,
    conversation: &mut Vec<ChatMessage>,
    dropped: &mut Vec<ChatMessage>,
    max_answer: usize,
) -> Result<Vec<u32>> {
    let n_ctx = inner.model.n_ctx();
    let mut tokens = render(inner, conversation)?;
    let reserve = max_answer.clamp(1, (n_ctx / 4).max(1));
    if inner.policy == ContextPolicy::DropOldest && tokens.len() + reserve > n_ctx {
        // Dropping a lot at once amortizes the re-read of what is kept.
        while tokens.len() > n_ctx / 2 {
            let Some(gone) = drop_oldest(conversation) else { break };
            dropped.extend(gone);
            tokens = render(inner, conversation)?;
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

/// How much of `text` is safe to show, and whether the stop string was found.
/// Text that could be the start of the stop string is held back.
fn stop_split(text: &str, stop: Option<&str>) -> (usize, bool) {
    let Some(stop) = stop.filter(|s| !s.is_empty()) else { return (text.len(), false) };
    if let Some(i) = text.find(stop) {
        return (i, true);
    }
    let mut safe = text.len();
    for k in (1..stop.len()).rev() {
        if text.len() >= k && stop.is_char_boundary(k) && text.ends_with(&stop[..k]) {
            safe = text.len() - k;
            break;
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
        assert_eq!(stop_split("hello wor", Some("world")), (6, false));
        assert_eq!(stop_split("hello world!", Some("world")), (6, true));
        assert_eq!(stop_split("hello", None), (5, false));
        assert_eq!(stop_split("abc", Some("x")), (3, false));
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
