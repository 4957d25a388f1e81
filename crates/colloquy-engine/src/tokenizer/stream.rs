//! Streaming decode: turn token pieces into text as they arrive.
//!
//! A byte-level BPE or byte-fallback token can end in the middle of a UTF-8
//! character (an emoji is often two or four tokens). [`Utf8Stream`] holds such
//! an incomplete tail back until the rest arrives, and replaces bytes that can
//! never become valid UTF-8 with U+FFFD.

use super::Tokenizer;
use crate::error::Result;

/// Accumulates bytes and yields only complete UTF-8 text.
///
/// ```
/// use colloquy_engine::tokenizer::Utf8Stream;
///
/// let mut s = Utf8Stream::new();
/// let pizza = "🍕".as_bytes();
/// assert_eq!(s.push(&pizza[..2]), "");
/// assert_eq!(s.push(&pizza[2..]), "🍕");
/// assert_eq!(s.push(b"ok\xff"), "ok\u{FFFD}");
/// assert_eq!(s.push(b"\xe2\x82"), "");
/// assert_eq!(s.finish(), "\u{FFFD}");
/// ```
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// An empty stream.
    pub fn new() -> Utf8Stream {
        Utf8Stream::default()
    }

    /// Adds bytes; returns the text that is now complete. An incomplete
    /// character at the end is kept for the next call; invalid bytes become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // SAFETY-free: `valid_up_to` bytes are valid UTF-8 by definition.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            rest = &after[bad..];
                        }
                        None => {
                            // An incomplete sequence at the end: wait for more bytes.
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let total = self.pending.len();
        self.pending.drain(..total - keep);
        out
    }

    /// Whether bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: returns what is held back, with an incomplete character as U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Decodes generated token ids to text incrementally (see [`Tokenizer::stream_decoder`]).
///
/// ```no_run
/// # use colloquy_engine::{gguf::Gguf, tokenizer::Tokenizer};
/// # let tok = Tokenizer::from_gguf(&Gguf::open("model.gguf")?)?;
/// let mut dec = tok.stream_decoder();
/// let mut text = String::new();
/// for id in tok.encode("Grüße 🍕", false) {
///     text += &dec.push(id)?;
/// }
/// text += &dec.finish();
/// assert_eq!(text, "Grüße 🍕");
/// # Ok::<(), colloquy_engine::error::Error>(())
/// ```
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    utf8: Utf8Stream,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder over `tokenizer`.
    pub fn new(tokenizer: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder { tokenizer, utf8: Utf8Stream::new() }
    }

    /// Adds one token; returns the text that is now complete.
    ///
    /// # Errors
    /// [`crate::error::Error::TokenOutOfRange`] if `id` is not in the vocabulary.
    pub fn push(&mut self, id: u32) -> Result<String> {
        let piece = self.tokenizer.token_to_piece(id)?;
        Ok(self.utf8.push(&piece))
    }

    /// Ends the stream, flushing any held-back bytes (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        self.utf8.finish()
    }
}
