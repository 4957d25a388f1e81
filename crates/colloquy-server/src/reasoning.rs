//! A reasoning model's thinking, sent apart from its answer as
//! `reasoning_content` (as DeepSeek's API and llama-server's `deepseek`
//! reasoning format do).
//!
//! An answer that opens with `<think>` reasons up to `</think>`; so does one
//! whose template's generation prompt already opened `<think>` (later
//! DeepSeek-R1 templates, Qwen3's), from its first token ([`split_opened`],
//! [`ReasoningStream::opened`]). Both parts
//! are trimmed, whole ([`split`]) and streamed ([`ReasoningStream`]) alike,
//! so the streamed pieces join to the whole reply's fields. The session
//! keeps the text the model wrote, tags included.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// The reasoning and the answer of a whole reply: `(None, text)` unless the
/// text opens with `<think>`.
///
/// ```
/// use colloquy_server::reasoning::split;
/// assert_eq!(split("<think> hm </think>\n\nYes."), (Some("hm"), "Yes."));
/// assert_eq!(split("Yes."), (None, "Yes."));
/// ```
pub fn split(text: &str) -> (Option<&str>, &str) {
    if text.trim_start().starts_with(OPEN) {
        colloquy::split_reasoning(text)
    } else {
        (None, text)
    }
}

/// [`split`] for an answer that starts inside `<think>`, because the
/// generation prompt opened it: the reasoning runs up to `</think>`, or is
/// all of the answer if it ended first.
///
/// ```
/// use colloquy_server::reasoning::split_opened;
/// assert_eq!(split_opened(" hm </think>\n\nYes."), (Some("hm"), "Yes."));
/// assert_eq!(split_opened("still thinking"), (Some("still thinking"), ""));
/// ```
pub fn split_opened(text: &str) -> (Option<&str>, &str) {
    match text.find(CLOSE) {
        Some(i) => (Some(text[..i].trim()), text[i + CLOSE.len()..].trim_start()),
        None => (Some(text.trim()), ""),
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace or the start of `<think>` yet.
    #[default]
    Start,
    /// Inside `<think>`, nothing sent yet (leading whitespace is dropped).
    ThinkStart,
    /// Inside `<think>`.
    Thinking,
    /// After `</think>`, before the answer's first non-whitespace character.
    AnswerStart,
    /// Everything else passes through as content.
    Answer,
}

/// A streamed answer split into reasoning and content pieces as it comes.
/// Text that may still be the start of a tag, and the whitespace the whole
/// reply would trim, is held back until it is known.
#[derive(Debug, Default)]
pub struct ReasoningStream {
    state: State,
    held: String,
}

impl ReasoningStream {
    /// A stream at the start of an answer.
    pub fn new() -> ReasoningStream {
        ReasoningStream::default()
    }

    /// A stream at the start of an answer that begins inside `<think>` (see
    /// [`split_opened`]), whose pieces join to what `split_opened` gives.
    ///
    /// ```
    /// use colloquy_server::reasoning::ReasoningStream;
    /// let mut s = ReasoningStream::opened();
    /// let (r, c) = s.push("\nSo 4.</think>\n\n4");
    /// let (r2, c2) = s.finish();
    /// assert_eq!((r + &r2, c + &c2), ("So 4.".to_string(), "4".to_string()));
    /// ```
    pub fn opened() -> ReasoningStream {
        ReasoningStream { state: State::ThinkStart, held: String::new() }
    }

    /// Takes the next piece of the answer; returns the reasoning and the
    /// content that can go out now (either may be empty).
    ///
    /// ```
    /// use colloquy_server::reasoning::ReasoningStream;
    /// let mut s = ReasoningStream::new();
    /// let mut out = (String::new(), String::new());
    /// for piece in ["<thi", "nk>\nSo", " 4.</th", "ink>\n\n", "4"] {
    ///     let (r, c) = s.push(piece);
    ///     out.0 += &r;
    ///     out.1 += &c;
    /// }
    /// let (r, c) = s.finish();
    /// assert_eq!((out.0 + &r, out.1 + &c), ("So 4.".to_string(), "4".to_string()));
    /// ```
    pub fn push(&mut self, text: &str) -> (String, String) {
        self.held.push_str(text);
        let (mut reasoning, mut content) = (String::new(), String::new());
        loop {
            match self.state {
                State::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::ThinkStart;
                    } else if OPEN.starts_with(t) {
                        return (reasoning, content);
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::ThinkStart => {
                    let t = self.held.trim_start();
                    if t.is_empty() {
                        self.held.clear();
                        return (reasoning, content);
                    }
                    self.held = t.to_string();
                    self.state = State::Thinking;
                }
                State::Thinking => {
                    if let Some(i) = self.held.find(CLOSE) {
                        reasoning.push_str(self.held[..i].trim_end());
                        self.held.drain(..i + CLOSE.len());
                        self.state = State::AnswerStart;
                        continue;
                    }
                    // Hold back what may start `</think>`, and trailing whitespace.
                    let keep = partial_tag_len(&self.held);
                    let safe = self.held[..self.held.len() - keep].trim_end().len();
                    reasoning.push_str(&self.held[..safe]);
                    self.held.drain(..safe);
                    return (reasoning, content);
                }
                State::AnswerStart => {
                    let t = self.held.trim_start();
                    if t.is_empty() {
                        self.held.clear();
                        return (reasoning, content);
                    }
                    self.held = t.to_string();
                    self.state = State::Answer;
                }
                State::Answer => {
                    content.push_str(&self.held);
                    self.held.clear();
                    return (reasoning, content);
                }
            }
        }
    }

    /// The end of the answer: whatever was held back, as the whole reply's
    /// [`split`] would place it.
    pub fn finish(&mut self) -> (String, String) {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Start | State::Answer => (String::new(), held),
            State::ThinkStart | State::AnswerStart => (String::new(), String::new()),
            State::Thinking => (held.trim_end().to_string(), String::new()),
        }
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `</think>`.
fn partial_tag_len(text: &str) -> usize {
    (1..CLOSE.len()).rev().find(|&k| text.ends_with(&CLOSE[..k])).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way of cutting a text into two or three pieces gives the whole split.
    #[test]
    fn streamed_pieces_join_to_the_whole_split() {
        let texts = [
            "<think>\nLet me add.\n2 + 2 = 4.\n</think>\n\nThe answer is 4.",
            "  <think>a</think>b",
            "<think></think>\n\nOnly an answer.",
            "<think>unfinished </th",
            "<think>  spaced  out  ",
            "Plain answer, <think> later is content.",
            "<th",
            "   ",
            "<think>x</think>   ",
            "<think>a </thinking> b</think> c",
        ];
        let opened = ["\nLet me add.</think>\n\n4", "", "  x  ", "a </th", "a</think>", "</think>b"];
        let cases = texts.iter().map(|t| (*t, false)).chain(opened.iter().map(|t| (*t, true)));
        for (text, open) in cases {
            let (wr, wc) = if open { split_opened(text) } else { split(text) };
            let want = (wr.unwrap_or_default().to_string(), wc.to_string());
            let cuts: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            for &a in &cuts {
                for &b in cuts.iter().filter(|&&b| b >= a) {
                    let mut s = if open { ReasoningStream::opened() } else { ReasoningStream::new() };
                    let mut got = (String::new(), String::new());
                    for piece in [&text[..a], &text[a..b], &text[b..]] {
                        let (r, c) = s.push(piece);
                        got.0 += &r;
                        got.1 += &c;
                    }
                    let (r, c) = s.finish();
                    got.0 += &r;
                    got.1 += &c;
                    assert_eq!(got, want, "{text:?} (opened: {open}) cut at {a}, {b}");
                }
            }
        }
    }
}
