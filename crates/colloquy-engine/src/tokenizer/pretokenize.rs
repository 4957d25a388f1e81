//! Pre-tokenizers: split text into words before byte-level BPE runs on each.
//!
//! A pre-tokenizer is a list of [`Split`] steps. The text starts as one
//! segment; each step splits every segment further and never joins them, so a
//! later step cannot make a word that crosses an earlier boundary. This is how
//! llama.cpp applies the list of regular expressions it keeps per
//! `tokenizer.ggml.pre` value; each step below is a hand-written matcher for one
//! of those expressions, with llama.cpp's definitions of `\p{L}`, `\p{N}`, `\s`.

use std::ops::Range;

use super::unicode::{ascii_lower, flags_of, Flags};

/// One splitting step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Split {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// Llama 3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    Llama3,
    /// Qwen 2: as [`Split::Llama3`] but with `\p{N}` (one digit per word) instead of `\p{N}{1,3}`.
    Qwen2,
    /// `\p{N}`: every number code point becomes a word of its own.
    EachNumber,
    /// `\p{N}+`: runs of number code points.
    NumberRuns,
    /// `[\p{P}\$\+<=>\^~\|]+`: runs of punctuation and those ASCII symbols.
    PunctuationRuns,
    /// `[0-9][0-9][0-9]`: groups of three ASCII digits, left to right.
    AsciiDigitTriples,
}

/// The pre-tokenizer for one `tokenizer.ggml.pre` family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreTokenizer {
    /// llama.cpp's fallback for `default` or a missing value.
    Default,
    /// GPT-2 regex only (`gpt-2`, `phi-2`, `mpt`, `olmo`, ...).
    Gpt2,
    /// Digits split one by one, then the GPT-2 regex (`smollm`, `starcoder`, `refact`, ...).
    Smollm,
    /// Llama 3 (`llama-bpe`, `llama3`, `dbrx`, `smaug-bpe`, ...).
    Llama3,
    /// Qwen 2 (`qwen2`, `stablelm2`, `deepseek-r1-qwen`, ...).
    Qwen2,
}

impl PreTokenizer {
    /// The splitting steps, in the order they apply.
    pub(crate) fn steps(self) -> &'static [Split] {
        match self {
            PreTokenizer::Default => {
                &[Split::PunctuationRuns, Split::Gpt2, Split::NumberRuns, Split::AsciiDigitTriples]
            }
            PreTokenizer::Gpt2 => &[Split::Gpt2],
            PreTokenizer::Smollm => &[Split::EachNumber, Split::Gpt2],
            PreTokenizer::Llama3 => &[Split::Llama3],
            PreTokenizer::Qwen2 => &[Split::Qwen2],
        }
    }

    /// Splits `cpts` into words; returns the word ranges (in code points), in order,
    /// covering the whole input with no empty word.
    pub(crate) fn split(self, cpts: &[char]) -> Vec<Range<usize>> {
        if cpts.is_empty() {
            return Vec::new();
        }
        let mut segments: Vec<Range<usize>> = std::iter::once(0..cpts.len()).collect();
        for &step in self.steps() {
            let mut out = Vec::with_capacity(segments.len() * 2);
            for seg in &segments {
                split_segment(step, cpts, seg.clone(), &mut out);
            }
            segments = out;
        }
        segments
    }
}

/// Reads code points and flags inside one segment; positions outside read as nothing.
struct Seg<'a> {
    cpts: &'a [char],
    start: usize,
    end: usize,
}

impl Seg<'_> {
    #[inline]
    fn cpt(&self, pos: usize) -> Option<char> {
        if pos >= self.start && pos < self.end {
            Some(self.cpts[pos])
        } else {
            None
        }
    }
    #[inline]
    fn flags(&self, pos: usize) -> Flags {
        match self.cpt(pos) {
            Some(c) => flags_of(c),
            None => Flags::NONE,
        }
    }
}

/// Collects words: each call ends the current word at `end` (if it is not empty).
struct Words<'a> {
    out: &'a mut Vec<Range<usize>>,
    prev_end: usize,
}

impl Words<'_> {
    #[inline]
    fn end_at(&mut self, end: usize) {
        if end > self.prev_end {
            self.out.push(self.prev_end..end);
        }
        self.prev_end = end;
    }
}

fn split_segment(step: Split, cpts: &[char], seg: Range<usize>, out: &mut Vec<Range<usize>>) {
    match step {
        Split::Gpt2 => split_gpt2(cpts, seg, out),
        Split::Llama3 => split_llama3(cpts, seg, out, false),
        Split::Qwen2 => split_llama3(cpts, seg, out, true),
        Split::EachNumber => split_runs(cpts, seg, out, |c| flags_of(c).is_number(), false),
        Split::NumberRuns => split_runs(cpts, seg, out, |c| flags_of(c).is_number(), true),
        Split::PunctuationRuns => split_runs(cpts, seg, out, is_punct_or_listed_symbol, true),
        Split::AsciiDigitTriples => split_ascii_triples(cpts, seg, out),
    }
}

/// `[\p{P}\$\+<=>\^~\|]`.
fn is_punct_or_listed_symbol(c: char) -> bool {
    if c.is_ascii() {
        // ASCII `\p{P}` is exactly this set; `$+<=>^~|` are listed explicitly.
        matches!(c, '!'..='#' | '%'..='*' | ','..='/' | ':' | ';' | '?' | '@' | '['..=']' | '_' | '{' | '}')
            || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
    } else {
        let f = flags_of(c);
        !f.is_whitespace() && f.is_punctuation()
    }
}

/// Splits a segment into matches of `pred` and the text between them. With
/// `runs`, a match is a maximal run of matching code points; otherwise each
/// matching code point is its own word.
fn split_runs(
    cpts: &[char],
    seg: Range<usize>,
    out: &mut Vec<Range<usize>>,
    pred: impl Fn(char) -> bool,
    runs: bool,
) {
    let mut words = Words { out, prev_end: seg.start };
    let mut pos = seg.start;
    while pos < seg.end {
        if pred(cpts[pos]) {
            words.end_at(pos);
            pos += 1;
            if runs {
                while pos < seg.end && pred(cpts[pos]) {
                    pos += 1;
                }
            }
            words.end_at(pos);
        } else {
            pos += 1;
        }
    }
    words.end_at(seg.end);
}

/// `[0-9][0-9][0-9]`, leftmost non-overlapping matches.
fn split_ascii_triples(cpts: &[char], seg: Range<usize>, out: &mut Vec<Range<usize>>) {
    let mut words = Words { out, prev_end: seg.start };
    let mut pos = seg.start;
    while pos < seg.end {
        if pos + 3 <= seg.end && cpts[pos..pos + 3].iter().all(|c| c.is_ascii_digit()) {
            words.end_at(pos);
            pos += 3;
            words.end_at(pos);
        } else {
            pos += 1;
        }
    }
    words.end_at(seg.end);
}

/// The English contraction at `pos` (`'s`, `'t`, `'m`, `'d`, `'re`, `'ve`, `'ll`),
/// if any: its length in code points. `fold` makes the letters case-insensitive.
fn contraction(s: &Seg<'_>, pos: usize, fold: bool) -> Option<usize> {
    if s.cpt(pos) != Some('\'') || pos + 1 >= s.end {
        return None;
    }
    let lower = |c: char| if fold { ascii_lower(c) } else { c };
    let next = lower(s.cpts[pos + 1]);
    if matches!(next, 's' | 't' | 'm' | 'd') {
        return Some(2);
    }
    if pos + 2 < s.end {
        let next2 = lower(s.cpts[pos + 2]);
        if matches!((next, next2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
            return Some(3);
        }
    }
    None
}

/// Counts whitespace code points from `pos`.
fn whitespace_run(s: &Seg<'_>, pos: usize) -> usize {
    let mut n = 0;
    while s.flags(pos + n).is_whitespace() {
        n += 1;
    }
    n
}

fn split_gpt2(cpts: &[char], seg: Range<usize>, out: &mut Vec<Range<usize>>) {
    let s = Seg { cpts, start: seg.start, end: seg.end };
    let mut words = Words { out, prev_end: seg.start };
    let mut pos = seg.start;
    while pos < seg.end {
        let c = cpts[pos];
        if let Some(n) = contraction(&s, pos, false) {
            pos += n;
            words.end_at(pos);
            continue;
        }
        // An optional leading space belongs to the following letters, digits or other symbols.
        let lead = usize::from(c == ' ');
        let f = s.flags(pos + lead);
        if f.is_letter() {
            pos += lead;
            while s.flags(pos).is_letter() {
                pos += 1;
            }
            words.end_at(pos);
            continue;
        }
        if f.is_number() {
            pos += lead;
            while s.flags(pos).is_number() {
                pos += 1;
            }
            words.end_at(pos);
            continue;
        }
        if f.is_other() {
            pos += lead;
            while s.flags(pos).is_other() {
                pos += 1;
            }
            words.end_at(pos);
            continue;
        }
        let n_ws = whitespace_run(&s, pos);
        if n_ws > 1 && s.cpt(pos + n_ws).is_some() {
            // `\s+(?!\S)`: leave the last whitespace for the word that follows.
            pos += n_ws - 1;
        } else if n_ws > 0 {
            pos += n_ws;
        } else {
            pos += 1;
        }
        words.end_at(pos);
    }
    words.end_at(seg.end);
}

fn split_llama3(cpts: &[char], seg: Range<usize>, out: &mut Vec<Range<usize>>, single_digits: bool) {
    let s = Seg { cpts, start: seg.start, end: seg.end };
    let mut words = Words { out, prev_end: seg.start };
    let mut pos = seg.start;
    while pos < seg.end {
        let c = cpts[pos];
        let f = flags_of(c);
        if let Some(n) = contraction(&s, pos, true) {
            pos += n;
            words.end_at(pos);
            continue;
        }
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if !(c == '\r' || c == '\n' || f.is_number()) && (f.is_letter() || s.flags(pos + 1).is_letter()) {
            pos += 1;
            while s.flags(pos).is_letter() {
                pos += 1;
            }
            words.end_at(pos);
            continue;
        }
        // `\p{N}{1,3}` or `\p{N}`
        if f.is_number() {
            if single_digits {
                pos += 1;
                words.end_at(pos);
            } else {
                let mut run_start = pos;
                while s.flags(pos).is_number() {
                    pos += 1;
                    if pos - run_start >= 3 {
                        words.end_at(pos);
                        run_start = pos;
                    }
                }
                words.end_at(pos);
            }
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let lead = usize::from(c == ' ');
        let f2 = s.flags(pos + lead);
        if f2.0 & (super::unicode::WHITESPACE | super::unicode::LETTER | super::unicode::NUMBER) == 0 {
            pos += lead;
            while s.flags(pos).is_other() {
                pos += 1;
            }
            while matches!(s.cpt(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            words.end_at(pos);
            continue;
        }
        let mut n_ws = 0;
        let mut last_newline_end = None;
        while s.flags(pos + n_ws).is_whitespace() {
            if matches!(cpts[pos + n_ws], '\r' | '\n') {
                last_newline_end = Some(pos + n_ws + 1);
            }
            n_ws += 1;
        }
        if let Some(end) = last_newline_end {
            // `\s*[\r\n]+`
            pos = end;
        } else if n_ws > 1 && s.cpt(pos + n_ws).is_some() {
            // `\s+(?!\S)`
            pos += n_ws - 1;
        } else if n_ws > 0 {
            pos += n_ws;
        } else {
            pos += 1;
        }
        words.end_at(pos);
    }
    words.end_at(seg.end);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, text: &str) -> Vec<String> {
        let cpts: Vec<char> = text.chars().collect();
        pre.split(&cpts).into_iter().map(|r| cpts[r].iter().collect()).collect()
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words(PreTokenizer::Gpt2, "Hello world's  end!!  "),
            ["Hello", " world", "'s", " ", " end", "!!", "  "]
        );
        assert_eq!(words(PreTokenizer::Gpt2, " 123abc"), [" 123", "abc"]);
    }

    #[test]
    fn smollm_splits_digits() {
        assert_eq!(words(PreTokenizer::Smollm, "Pi 3.14"), ["Pi", " ", "3", ".", "1", "4"]);
    }

    #[test]
    fn llama3_words() {
        assert_eq!(
            words(PreTokenizer::Llama3, "I'M 12345 ok\n\n  x"),
            ["I", "'M", " ", "123", "45", " ok", "\n\n", " ", " x"]
        );
    }

    #[test]
    fn qwen2_single_digits() {
        assert_eq!(words(PreTokenizer::Qwen2, "a 123"), ["a", " ", "1", "2", "3"]);
    }

    #[test]
    fn default_steps() {
        assert_eq!(words(PreTokenizer::Default, "x=12345;"), ["x", "=", "123", "45", ";"]);
    }
}
