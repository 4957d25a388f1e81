//! Sampling settings for a turn.

use colloquy_engine::sampler::SamplerParams;

use crate::constraint::Constraint;
use crate::tools::Tool;

/// How the model picks each token of an answer.
///
/// Defaults: temperature 0.8, top-k 40, top-p 0.95 and min-p 0.05 (llama.cpp's),
/// a repetition penalty of 1.1 over the last 64 tokens (small chat models loop
/// without one; Kalosm also penalizes by default), at most 1024 new tokens, and
/// no seed: the session's
/// own random stream is used, which is saved with the session, so a loaded
/// session continues exactly. `with_seed` restarts that stream at a seed, so two
/// runs with the same seed give the same tokens. Temperature 0 is greedy.
///
/// ```
/// use colloquy::language::*;
/// let greedy = GenerationParameters::default().with_temperature(0.0).with_max_length(64);
/// assert_eq!(greedy.max_length(), 64);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParameters {
    pub(crate) temperature: f32,
    pub(crate) top_k: usize,
    pub(crate) top_p: f32,
    pub(crate) min_p: f32,
    pub(crate) repetition_penalty: f32,
    pub(crate) seed: Option<u64>,
    pub(crate) max_length: u32,
    pub(crate) stop_on: Vec<String>,
    pub(crate) presence_penalty: f32,
    pub(crate) frequency_penalty: f32,
    pub(crate) top_logprobs: Option<usize>,
    pub(crate) constraint: Option<Constraint>,
    pub(crate) tools: Vec<Tool>,
}

impl Default for GenerationParameters {
    fn default() -> Self {
        GenerationParameters {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.1,
            seed: None,
            max_length: 1024,
            stop_on: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            top_logprobs: None,
            constraint: None,
            tools: Vec::new(),
        }
    }
}

impl GenerationParameters {
    /// Same as `default()`.
    ///
    /// ```
    /// use colloquy::language::*;
    /// assert_eq!(GenerationParameters::new(), GenerationParameters::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Softmax temperature; 0 means greedy.
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_temperature(0.0);
    /// ```
    pub fn with_temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Keep only the `k` most likely tokens (0 = off).
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_top_k(20);
    /// ```
    pub fn with_top_k(mut self, k: usize) -> Self {
        self.top_k = k;
        self
    }

    /// Nucleus sampling threshold (1.0 = off).
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_top_p(0.9);
    /// ```
    pub fn with_top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }

    /// Drop tokens less likely than `p` times the most likely one (0 = off).
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_min_p(0.1);
    /// ```
    pub fn with_min_p(mut self, p: f32) -> Self {
        self.min_p = p;
        self
    }

    /// Penalize recently seen tokens (1.0 = off).
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_repetition_penalty(1.1);
    /// ```
    pub fn with_repetition_penalty(mut self, p: f32) -> Self {
        self.repetition_penalty = p;
        self
    }

    /// Restart the session's random stream at `seed` for this turn.
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_seed(42);
    /// ```
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The most new tokens per answer.
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_max_length(256);
    /// ```
    pub fn with_max_length(mut self, n: u32) -> Self {
        self.max_length = n;
        self
    }

    /// Stop the answer when this text appears (it is not included).
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_stop_on("\n\n");
    /// ```
    pub fn with_stop_on(mut self, stop: impl Into<String>) -> Self {
        self.stop_on = vec![stop.into()];
        self
    }

    /// Stop the answer when any of these texts appears (it is not included).
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_stop_sequences(["\n\n", "User:"]);
    /// ```
    pub fn with_stop_sequences<S: Into<String>>(mut self, stops: impl IntoIterator<Item = S>) -> Self {
        self.stop_on = stops.into_iter().map(Into::into).filter(|s: &String| !s.is_empty()).collect();
        self
    }

    /// Subtract `p` from the logit of every token seen in the last 64 (OpenAI's
    /// `presence_penalty`; 0 = off).
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_presence_penalty(0.5);
    /// ```
    pub fn with_presence_penalty(mut self, p: f32) -> Self {
        self.presence_penalty = p;
        self
    }

    /// Subtract `p` times its count from the logit of every token seen in the
    /// last 64 (OpenAI's `frequency_penalty`; 0 = off).
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_frequency_penalty(0.5);
    /// ```
    pub fn with_frequency_penalty(mut self, p: f32) -> Self {
        self.frequency_penalty = p;
        self
    }

    /// Record the log-probability of each generated token and of the `n` most
    /// likely alternatives at its position (read them with
    /// [`RunningTurn::take_logprobs`](crate::running::RunningTurn::take_logprobs)).
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_logprobs(3);
    /// ```
    pub fn with_logprobs(mut self, n: usize) -> Self {
        self.top_logprobs = Some(n);
        self
    }

    /// Limits the answer to what `constraint` admits (a regex, a JSON Schema
    /// or a grammar); see [`Constraint`].
    ///
    /// ```
    /// # use colloquy::language::*;
    /// let p = GenerationParameters::new().with_constraints(Constraint::regex("[0-9]+"));
    /// assert!(p.constraint().is_some());
    /// ```
    pub fn with_constraints(mut self, constraint: Constraint) -> Self {
        self.constraint = Some(constraint);
        self
    }

    /// The constraint set by [`with_constraints`](Self::with_constraints).
    pub fn constraint(&self) -> Option<&Constraint> {
        self.constraint.as_ref()
    }

    /// The tools this turn offers the model. The chat template renders them
    /// (as the GGUF's template does when it takes `tools`, or else as a
    /// Hermes-style system prompt); they are not stored in the history, so
    /// each turn offers its own. Pair them with
    /// [`tools::constraint`](crate::tools::constraint) to hold a call to its schema.
    ///
    /// ```
    /// use colloquy::language::*;
    /// use colloquy::tools::Tool;
    /// let now = Tool::new("now", "The current time", serde_json::json!({"type": "object"}));
    /// let p = GenerationParameters::new().with_tools(vec![now]);
    /// assert_eq!(p.tools().len(), 1);
    /// ```
    pub fn with_tools(mut self, tools: Vec<Tool>) -> Self {
        self.tools = tools;
        self
    }

    /// The tools this turn offers.
    ///
    /// ```
    /// # use colloquy::language::*;
    /// assert!(GenerationParameters::new().tools().is_empty());
    /// ```
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// The most new tokens per answer.
    ///
    /// ```
    /// # use colloquy::language::*;
    /// assert_eq!(GenerationParameters::new().max_length(), 1024);
    /// ```
    pub fn max_length(&self) -> u32 {
        self.max_length
    }

    /// The engine's sampler settings for a given seed.
    pub(crate) fn sampler_params(&self, seed: u64) -> SamplerParams {
        SamplerParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed,
            ..SamplerParams::default()
        }
    }
}
