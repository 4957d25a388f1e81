//! A turn run one forward pass at a time: what a scheduler needs to put the
//! turns of many sessions through one batched forward pass per step.
//!
//! A library turn ([`ChatModel::add_messages_with_callback`](crate::ChatModel))
//! is the same machine stepped alone, so a turn gives the same tokens alone
//! and in any batch: the kernels give each row the same bits whatever else is
//! in the batch, and a prompt's logits do not depend on how it is chunked.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colloquy_engine::arch::{LogitsFor, Sequence};
use colloquy_engine::sampler::{RngState, Sampler};
use colloquy_engine::tokenizer::Utf8Stream;

use crate::constraint::Guide;
use crate::context::ModelContext;
use crate::error::{Error, Result};
use crate::message::ChatMessage;
use crate::params::GenerationParameters;
use crate::session::{SessionState, TurnStats};
use crate::turn;

/// Why a turn stopped generating.
///
/// ```
/// use colloquy::running::FinishReason;
/// assert_eq!(FinishReason::Length.as_str(), "length");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its answer, or a stop sequence appeared.
    Stop,
    /// The answer reached its token limit (or the context is full).
    Length,
}

impl FinishReason {
    /// OpenAI's name for it: `"stop"` or `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One alternative at a generated position.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    /// The token id.
    pub id: u32,
    /// The token's bytes (a piece of UTF-8, possibly partial).
    pub bytes: Vec<u8>,
    /// Its natural-log probability under the model (before sampling filters).
    pub logprob: f32,
}

/// The log-probability of one generated token, and the most likely
/// alternatives at its position (when asked for with
/// [`GenerationParameters::with_logprobs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The generated token.
    pub token: TopLogprob,
    /// The `n` most likely tokens at its position, most likely first.
    pub top: Vec<TopLogprob>,
}

/// A turn in progress. Start one with [`Llama::begin_turn`](crate::Llama::begin_turn)
/// (or [`begin_completion`](crate::Llama::begin_completion)), advance any set
/// of them with [`Llama::step`](crate::Llama::step), read the new text with
/// [`take_text`](Self::take_text), and [`commit`](Self::commit) it into its
/// session once [`is_finished`](Self::is_finished). Dropping it cancels the
/// turn and leaves the session unchanged.
///
/// ```no_run
/// use colloquy::language::*;
/// # #[tokio::main] async fn main() {
/// let llm = Llama::new_chat().await.unwrap();
/// let (a, b) = (llm.new_chat_session().unwrap(), llm.new_chat_session().unwrap());
/// let hi = [ChatMessage::new(MessageType::UserMessage, "Hi!")];
/// let params = GenerationParameters::new().with_temperature(0.0).with_max_length(16);
/// let mut turns = [llm.begin_turn(&a, &hi, &params).unwrap(), llm.begin_turn(&b, &hi, &params).unwrap()];
/// while turns.iter().any(|t| !t.is_finished()) {
///     let mut refs: Vec<&mut RunningTurn> = turns.iter_mut().collect();
///     llm.step(&mut refs, 512).unwrap(); // both turns, one forward pass
/// }
/// let [ta, tb] = turns;
/// ta.commit().unwrap();
/// tb.commit().unwrap();
/// assert_eq!(a.transcript(), b.transcript());
/// # }
/// ```
pub struct RunningTurn {
    inner: Arc<ModelContext>,
    target: Option<Arc<Mutex<SessionState>>>,
    st: SessionState,
    conversation: Option<Vec<ChatMessage>>,
    prompt: Vec<u32>,
    fed: usize,
    cached: usize,
    /// Held tokens dropped because the render no longer starts with them.
    rewound: usize,
    dropped_messages: usize,
    input: Vec<u32>,
    next: Option<u32>,
    sampler: Sampler,
    history: Vec<u32>,
    generated: usize,
    max: usize,
    stops: Vec<String>,
    top_logprobs: Option<usize>,
    logprobs: Vec<TokenLogprob>,
    utf8: Utf8Stream,
    answer: String,
    emitted: usize,
    out: String,
    finish: Option<FinishReason>,
    t0: Instant,
    ttft: Option<Duration>,
    bar: indicatif::ProgressBar,
    guide: Option<Guide>,
    failure: Option<Error>,
}

impl std::fmt::Debug for RunningTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningTurn")
            .field("prompt_tokens", &self.prompt.len())
            .field("fed", &self.fed)
            .field("generated", &self.generated)
            .field("finish", &self.finish)
            .finish()
    }
}

impl RunningTurn {
    /// Prepares a chat turn on a copy of `st`: renders the conversation with
    /// `messages` appended, applies the context policy, and reuses the
    /// longest prefix the session (or the prefix cache) already holds.
    pub(crate) fn chat(
        inner: &Arc<ModelContext>,
        mut st: SessionState,
        messages: &[ChatMessage],
        params: &GenerationParameters,
    ) -> Result<RunningTurn> {
        let t0 = Instant::now();
        check_state(inner, &mut st)?;
        let mut conversation = st.history.clone();
        if let Some(answer) = st.pending.take() {
            conversation.push(ChatMessage::new(crate::message::MessageType::ModelAnswer, answer));
        }
        conversation.extend_from_slice(messages);
        let before = st.dropped.len();
        let prompt = turn::fit_context(
            inner,
            &mut conversation,
            &mut st.dropped,
            params.max_length as usize,
            &params.tools,
        )?;
        let dropped = st.dropped.len() - before;
        let mut t = RunningTurn::prepare(inner, st, prompt, params, t0)?;
        t.conversation = Some(conversation);
        t.dropped_messages = dropped;
        Ok(t)
    }

    /// Prepares a plain completion of `prompt` (tokens) on a fresh state.
    pub(crate) fn completion(
        inner: &Arc<ModelContext>,
        st: SessionState,
        prompt: Vec<u32>,
        params: &GenerationParameters,
    ) -> Result<RunningTurn> {
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let n_ctx = inner.model.n_ctx();
        if prompt.len() >= n_ctx {
            return Err(Error::ContextOverflow { needed: prompt.len() + 1, n_ctx });
        }
        RunningTurn::prepare(inner, st, prompt, params, Instant::now())
    }

    fn prepare(
        inner: &Arc<ModelContext>,
        mut st: SessionState,
        prompt: Vec<u32>,
        params: &GenerationParameters,
        t0: Instant,
    ) -> Result<RunningTurn> {
        // A constraint compiles (and its first mask is computed) before any
        // work, so a bad one fails the turn at once.
        let guide = match &params.constraint {
            Some(c) => Some(inner.grammars()?.start(c)?),
            None => None,
        };
        // Reuse the longest common prefix; recompute the rest. At least the
        // last prompt token is run, for its logits.
        let common = st.tokens.iter().zip(&prompt).take_while(|(a, b)| a == b).count();
        let keep = common.min(prompt.len() - 1);
        // Tokens the session had read that this render does not start with: a
        // template that rewrites history (R1's drops past thinking) lands here.
        let rewound = st.tokens.len().saturating_sub(keep);
        st.kv.truncate(keep);
        // Blocks that another session of this model already computed are adopted.
        let common = inner.prefix().extend(&mut st.kv, &prompt, prompt.len() - 1);
        st.tokens.clear();
        st.tokens.extend_from_slice(&prompt[..common]);
        // The session's random stream, or a fresh one at the given seed.
        let rng = match params.seed {
            Some(seed) => RngState { seed, word_pos: 0 },
            None => st.rng,
        };
        let mut sampler = Sampler::new(params.sampler_params(rng.seed));
        sampler.set_rng_state(rng);
        let room = inner.model.n_ctx().saturating_sub(prompt.len());
        let bar = turn::prompt_bar(inner.progress, prompt.len() - common);
        Ok(RunningTurn {
            inner: Arc::clone(inner),
            target: None,
            history: prompt.clone(),
            conversation: None,
            fed: common,
            cached: common,
            rewound,
            dropped_messages: 0,
            input: Vec::new(),
            next: None,
            sampler,
            generated: 0,
            max: (params.max_length as usize).min(room),
            stops: params.stop_on.clone(),
            top_logprobs: params.top_logprobs,
            logprobs: Vec::new(),
            utf8: Utf8Stream::new(),
            answer: String::new(),
            emitted: 0,
            out: String::new(),
            finish: None,
            t0,
            ttft: None,
            bar,
            guide,
            failure: None,
            prompt,
            st,
        })
    }

    pub(crate) fn with_target(mut self, target: Arc<Mutex<SessionState>>) -> RunningTurn {
        self.target = Some(target);
        self
    }

    /// Whether the turn has stopped generating (then [`commit`](Self::commit) it).
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Why it stopped, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// The error that ended the turn, if one did (a constraint that could not
    /// be met): [`commit`](Self::commit) returns it, and leaves the session
    /// unchanged.
    pub fn error(&self) -> Option<&Error> {
        self.failure.as_ref()
    }

    /// The answer's text produced since the last call. Text that could be the
    /// start of a stop sequence is held back until it is known not to be.
    pub fn take_text(&mut self) -> String {
        std::mem::take(&mut self.out)
    }

    /// The log-probabilities recorded since the last call (empty unless the
    /// parameters asked for them).
    pub fn take_logprobs(&mut self) -> Vec<TokenLogprob> {
        std::mem::take(&mut self.logprobs)
    }

    /// The whole prompt, in tokens (the reused part included).
    pub fn prompt_tokens(&self) -> usize {
        self.prompt.len()
    }

    /// Prompt tokens whose KV came from the session or the prefix cache.
    pub fn cached_tokens(&self) -> usize {
        self.cached
    }

    /// Prompt tokens still to be read.
    pub fn prompt_left(&self) -> usize {
        self.prompt.len() - self.fed
    }

    /// Tokens generated so far (the end-of-turn token included).
    pub fn generated_tokens(&self) -> usize {
        self.generated
    }

    /// The most tokens this turn may generate (its limit, capped by the context).
    pub fn max_tokens(&self) -> usize {
        self.max
    }

    /// From the start of the turn to its first generated token.
    pub fn time_to_first_token(&self) -> Option<Duration> {
        self.ttft
    }

    /// The whole answer so far.
    pub fn answer(&self) -> &str {
        &self.answer[..self.emitted]
    }

    /// Writes the finished turn into the session it began on (for a
    /// completion, only the prefix cache learns its blocks) and returns what
    /// it cost.
    ///
    /// Errors: [`Error::TurnNotFinished`], or the turn's own [`error`](Self::error).
    pub fn commit(self) -> Result<TurnStats> {
        let target = self.target.clone();
        let (st, stats) = self.into_state()?;
        if let Some(target) = target {
            *target.lock().unwrap_or_else(|e| e.into_inner()) = st;
        }
        Ok(stats)
    }

    /// The finished turn's session state, and its cost.
    pub(crate) fn into_state(mut self) -> Result<(SessionState, TurnStats)> {
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        if self.finish.is_none() {
            return Err(Error::TurnNotFinished);
        }
        debug_assert_eq!(self.st.tokens.len(), self.st.kv.len());
        self.inner.prefix().insert(&self.st.kv, &self.st.tokens);
        let stats = TurnStats {
            prompt_tokens: self.prompt.len() - self.cached,
            reused_tokens: self.cached,
            rewound_tokens: self.rewound,
            generated_tokens: self.generated,
            dropped_messages: self.dropped_messages,
            time_to_first_token: self.ttft.unwrap_or_else(|| self.t0.elapsed()),
            total_time: self.t0.elapsed(),
        };
        let mut st = self.st;
        if let Some(conversation) = self.conversation {
            st.history = conversation;
            st.pending = Some(self.answer);
        }
        st.rng = self.sampler.rng_state();
        st.last_turn = Some(stats);
        Ok((st, stats))
    }

    /// What this turn feeds in the next pass, within `budget` prompt tokens:
    /// `None` when it is finished (or has no budget for its prompt).
    fn plan(&mut self, budget: usize) -> Option<LogitsFor> {
        if self.finish.is_some() {
            return None;
        }
        self.input.clear();
        if let Some(tok) = self.next {
            self.input.push(tok);
            return Some(LogitsFor::Last);
        }
        let n = self.prompt_left().min(budget);
        if n == 0 {
            return None;
        }
        self.input.extend_from_slice(&self.prompt[self.fed..self.fed + n]);
        Some(if n == self.prompt_left() { LogitsFor::Last } else { LogitsFor::None })
    }

    /// Takes in a pass's result: the fed tokens, and the logits of the last
    /// one if it asked for them.
    fn absorb(&mut self, logits: Option<&mut [f32]>) {
        self.st.tokens.extend_from_slice(&self.input);
        if self.next.take().is_none() {
            self.fed += self.input.len();
            self.bar.set_position((self.fed - self.cached) as u64);
            if self.fed == self.prompt.len() {
                // Keep the window where the answer starts: the next turn may go
                // back into the answer (if its text tokenizes differently)
                // without starting over.
                self.st.kv.set_rewind_point(Some(self.fed));
            }
        }
        if let Some(logits) = logits {
            self.bar.finish_and_clear();
            self.sample(logits);
        }
    }

    /// Picks the next token and decides whether the answer goes on.
    fn sample(&mut self, logits: &mut [f32]) {
        if self.generated >= self.max {
            return self.end(FinishReason::Length);
        }
        let raw = self.top_logprobs.map(|_| logits.to_vec());
        // The constraint's mask comes before every other sampling stage.
        if let Some(guide) = &mut self.guide {
            if let Err(e) = guide.apply(logits) {
                return self.fail(e);
            }
        }
        let id = self.sampler.sample(logits, &self.history);
        self.ttft.get_or_insert_with(|| self.t0.elapsed());
        self.generated += 1;
        self.history.push(id);
        let tok = self.inner.model.tokenizer();
        if tok.is_eog(id) {
            return self.end(FinishReason::Stop);
        }
        // The grammar learns the token (its next mask is then computed while
        // the next forward pass runs); a grammar that admits nothing more has
        // a complete answer.
        let complete = match self.guide.as_mut().map(|g| g.commit(id)) {
            Some(Err(e)) => return self.fail(e),
            Some(Ok(done)) => done,
            None => false,
        };
        let piece = tok.token_to_piece(id).unwrap_or_default();
        if let (Some(n), Some(raw)) = (self.top_logprobs, raw) {
            self.logprobs.push(logprob_of(&self.inner, &raw, id, n));
        }
        self.answer.push_str(&self.utf8.push(&piece));
        let (safe, stop) = turn::stop_split(&self.answer, &self.stops);
        if safe > self.emitted {
            self.out.push_str(&self.answer[self.emitted..safe]);
            self.emitted = safe;
        }
        if stop {
            self.answer.truncate(safe);
            self.finish = Some(FinishReason::Stop);
            return;
        }
        if complete {
            return self.end(FinishReason::Stop);
        }
        if self.generated == self.max {
            return self.end(FinishReason::Length);
        }
        self.next = Some(id);
    }

    /// Ends the turn with an error; its session stays as it was.
    fn fail(&mut self, e: Error) {
        self.failure = Some(e);
        self.finish = Some(FinishReason::Stop);
    }

    /// Ends the answer, flushing what was held back.
    fn end(&mut self, why: FinishReason) {
        self.answer.push_str(&self.utf8.finish());
        if self.answer.len() > self.emitted {
            self.out.push_str(&self.answer[self.emitted..]);
            self.emitted = self.answer.len();
        }
        self.finish = Some(why);
    }
}

/// Checks that a session belongs to this model and is consistent, and sizes
/// its cache to the model's context.
fn check_state(inner: &ModelContext, st: &mut SessionState) -> Result<()> {
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
    Ok(())
}

/// The log-probability of `id` under `logits`, and the `n` most likely tokens.
fn logprob_of(inner: &ModelContext, logits: &[f32], id: u32, n: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
    let tok = inner.model.tokenizer();
    let entry = |id: u32| TopLogprob {
        id,
        bytes: tok.token_to_piece(id).unwrap_or_default(),
        logprob: logits[id as usize] - lse,
    };
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(ids.len());
    let by = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    if n > 0 && n < ids.len() {
        ids.select_nth_unstable_by(n - 1, by);
    }
    ids.truncate(n);
    ids.sort_by(by);
    TokenLogprob { token: entry(id), top: ids.into_iter().map(entry).collect() }
}

/// What one pass ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepStats {
    /// Sequences in the pass.
    pub sequences: usize,
    /// Rows (tokens) in the pass.
    pub rows: usize,
}

/// Advances every unfinished turn by one forward pass: a decoding turn feeds
/// its last token, a turn still reading its prompt feeds up to its share of
/// `prompt_budget` tokens. Returns what the pass ran (nothing when every turn
/// has finished).
pub(crate) fn step(
    inner: &ModelContext,
    turns: &mut [&mut RunningTurn],
    prompt_budget: usize,
) -> Result<StepStats> {
    let reading =
        turns.iter().filter(|t| !t.is_finished() && t.next.is_none() && t.prompt_left() > 0).count();
    // Prompts share the budget, so a long one does not hold up a short one.
    let share = prompt_budget.div_ceil(reading.max(1)).max(1);
    let mut wants = Vec::with_capacity(turns.len());
    for t in turns.iter_mut() {
        wants.push(t.plan(share));
    }
    let mut batch: Vec<Sequence<'_>> = Vec::new();
    for (t, w) in turns.iter_mut().zip(&wants) {
        if let Some(logits) = *w {
            let RunningTurn { input, st, .. } = &mut **t;
            batch.push(Sequence { tokens: input, kv: &mut st.kv, logits });
        }
    }
    if batch.is_empty() {
        return Ok(StepStats::default());
    }
    let stats = StepStats { sequences: batch.len(), rows: batch.iter().map(|s| s.tokens.len()).sum() };
    let mut logits = Vec::new();
    inner.model.forward_batch(&mut batch, &mut logits)?;
    drop(batch);
    let n_vocab = inner.model.n_vocab();
    let mut rows = logits.chunks_exact_mut(n_vocab);
    for (t, w) in turns.iter_mut().zip(wants) {
        match w {
            Some(LogitsFor::Last) => t.absorb(rows.next()),
            Some(_) => t.absorb(None),
            None => {}
        }
    }
    Ok(stats)
}
