//! Tokenizer: text to token ids and back, matching llama.cpp token for token.
//!
//! Two vocabulary kinds are supported, chosen by `tokenizer.ggml.model`:
//!
//! - `gpt2`: byte-level BPE with ranked merges, after a pre-tokenizer chosen by
//!   `tokenizer.ggml.pre` (`smollm`, `llama-bpe`, `qwen2`, `gpt-2`, `default`
//!   and their llama.cpp aliases).
//! - `llama`: SentencePiece-style BPE driven by token scores, with `▁` for
//!   spaces and `<0xXX>` byte fallback (Gemma, Llama 2, Mistral, ...).
//!
//! Special tokens (control and user-defined tokens) are split out of the text
//! first, exactly as llama.cpp's `tokenizer_st_partition` does; see
//! [`Tokenizer::encode`].
//!
//! ```no_run
//! use colloquy_engine::gguf::Gguf;
//! use colloquy_engine::tokenizer::Tokenizer;
//!
//! let gguf = Gguf::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let tok = Tokenizer::from_gguf(&gguf)?;
//! let ids = tok.encode("<|im_start|>user\nHello!<|im_end|>\n", true);
//! assert_eq!(tok.decode(&ids)?, b"<|im_start|>user\nHello!<|im_end|>\n");
//! # Ok::<(), colloquy_engine::error::Error>(())
//! ```

mod bpe;
mod index;
mod load;
mod pretokenize;
mod spm;
mod stream;
mod unicode;
mod unicode_data;

use std::collections::HashSet;
use std::ops::Range;

use crate::error::{Error, Result};

use bpe::Bpe;
use index::{TextIndex, Texts};
use pretokenize::PreTokenizer;

pub use stream::{StreamDecoder, Utf8Stream};

// Token attributes (llama.cpp's `llama_token_attr` bits).
const ATTR_UNKNOWN: u16 = 1 << 0;
const ATTR_UNUSED: u16 = 1 << 1;
const ATTR_NORMAL: u16 = 1 << 2;
const ATTR_CONTROL: u16 = 1 << 3;
const ATTR_USER_DEFINED: u16 = 1 << 4;
const ATTR_BYTE: u16 = 1 << 5;

/// The SentencePiece space marker, U+2581.
const SPACE_MARKER: &str = "\u{2581}";

/// The vocabulary: token texts, attributes, scores and the reverse map.
#[derive(Debug)]
pub(crate) struct Vocab {
    texts: Texts,
    attrs: Vec<u16>,
    scores: Vec<f32>,
    ids: TextIndex,
    /// The unknown token, used when a byte has no byte token.
    unk: Option<u32>,
    /// Byte fallback tokens (`<0xXX>`, or the byte itself as a token).
    byte_tokens: [Option<u32>; 256],
}

impl Vocab {
    #[inline]
    pub(crate) fn id_of(&self, text: &str) -> Option<u32> {
        self.ids.get(&self.texts, text)
    }

    #[inline]
    pub(crate) fn score(&self, id: u32) -> f32 {
        self.scores.get(id as usize).copied().unwrap_or(0.0)
    }

    #[inline]
    pub(crate) fn byte_token(&self, b: u8) -> Option<u32> {
        self.byte_tokens[usize::from(b)]
    }

    fn len(&self) -> usize {
        self.texts.len()
    }
}

#[derive(Debug)]
enum Model {
    /// Byte-level BPE.
    Bpe(Box<Bpe>),
    /// SentencePiece-style BPE with scores.
    Spm,
}

/// A byte trie over the special tokens' texts, to find which of them occur in a text.
#[derive(Debug, Default)]
struct SpecialTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// Children as (byte, node index).
    children: Vec<(u8, u32)>,
    /// The position in the special-token list of the token whose text ends here.
    value: Option<u32>,
}

impl SpecialTrie {
    fn new() -> SpecialTrie {
        SpecialTrie { nodes: vec![TrieNode::default()] }
    }

    fn insert(&mut self, text: &[u8], value: u32) {
        let mut node = 0usize;
        for &b in text {
            let next = self.nodes[node].children.iter().find(|&&(c, _)| c == b).map(|&(_, n)| n as usize);
            node = match next {
                Some(n) => n,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[node].children.push((b, n as u32));
                    n
                }
            };
        }
        self.nodes[node].value = Some(value);
    }

    /// Every value whose text occurs somewhere in `text`.
    fn occurring(&self, text: &[u8]) -> Vec<u32> {
        let mut found = Vec::new();
        for start in 0..text.len() {
            let mut node = 0usize;
            for &b in &text[start..] {
                match self.nodes[node].children.iter().find(|&&(c, _)| c == b) {
                    Some(&(_, n)) => node = n as usize,
                    None => break,
                }
                if let Some(v) = self.nodes[node].value {
                    found.push(v);
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}

/// A piece of the input after special tokens are split out.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fragment {
    /// Plain text, as a byte range of the input.
    Text(Range<usize>),
    /// A special token.
    Token(u32),
}

/// A tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata.
///
/// Encoding never adds BOS or EOS; callers add [`Tokenizer::bos`] themselves
/// when [`Tokenizer::add_bos`] says so.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    model_name: String,
    pre_name: String,
    add_space_prefix: bool,
    add_bos: bool,
    add_eos: bool,
    bos: Option<u32>,
    eos: u32,
    eot: Option<u32>,
    eom: Option<u32>,
    eog: HashSet<u32>,
    /// Control, user-defined and unknown tokens, longest text first: the order they are split out.
    special: Vec<u32>,
    special_trie: SpecialTrie,
    char_to_byte: Vec<Option<u8>>,
}

impl Tokenizer {
    /// Splits special tokens out of `text`, in llama.cpp's order: longest
    /// special token first, each one cutting every remaining text fragment at
    /// its leftmost non-overlapping occurrences. With `parse_special` false,
    /// control and unknown tokens stay plain text but user-defined tokens are
    /// still split out.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(0..text.len())];
        // Only tokens that occur in the whole text can occur in a fragment of it.
        for pos in self.special_trie.occurring(text.as_bytes()) {
            let id = self.special[pos as usize];
            let attr = self.vocab.attrs[id as usize];
            if !parse_special && attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let needle = &self.vocab.texts[id as usize];
            let mut next = Vec::with_capacity(frags.len() + 2);
            for frag in frags {
                let Fragment::Text(range) = frag else {
                    next.push(frag);
                    continue;
                };
                let mut start = range.start;
                while let Some(off) = text[start..range.end].find(needle) {
                    let m = start + off;
                    if m > start {
                        next.push(Fragment::Text(start..m));
                    }
                    next.push(Fragment::Token(id));
                    start = m + needle.len();
                }
                if start < range.end {
                    next.push(Fragment::Text(start..range.end));
                }
            }
            frags = next;
        }
        frags
    }

    /// Tokenizes `text` exactly as llama.cpp's `llama_tokenize(vocab, text,
    /// add_special = false, parse_special)` does. Never adds BOS or EOS.
    ///
    /// With `parse_special` true, the texts of control tokens (such as
    /// `<|im_start|>` or `<start_of_turn>`) become their ids. With it false they
    /// are tokenized as plain text; user-defined tokens (such as Gemma's `<h1>`
    /// or runs of spaces) are split out either way, as in llama.cpp.
    ///
    /// ```no_run
    /// # use colloquy_engine::{gguf::Gguf, tokenizer::Tokenizer};
    /// # let tok = Tokenizer::from_gguf(&Gguf::open("model.gguf")?)?;
    /// let ids = tok.encode("Hello, world!", false);
    /// assert_eq!(tok.decode(&ids)?, b"Hello, world!");
    /// # Ok::<(), colloquy_engine::error::Error>(())
    /// ```
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let frags = self.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        match &self.model {
            Model::Bpe(bpe) => {
                for frag in frags {
                    match frag {
                        Fragment::Text(r) => bpe.encode(&self.vocab, &text[r], &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Model::Spm => {
                // A leading space is added (when the model asks for it) at the start
                // and after each special token.
                let mut prev_special = true;
                let mut buf = String::new();
                for frag in frags {
                    match frag {
                        Fragment::Text(r) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push(' ');
                            }
                            buf.push_str(&text[r]);
                            let escaped = buf.replace(' ', SPACE_MARKER);
                            spm::encode(&self.vocab, &escaped, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
        out
    }

    /// The bytes a token stands for, as `llama_token_to_piece(id, lstrip = 0,
    /// special = true)` gives them: byte-level BPE tokens are mapped back to raw
    /// bytes (possibly an incomplete UTF-8 sequence), SentencePiece `▁` becomes a
    /// space, byte tokens `<0xXX>` become that byte, and control, user-defined
    /// and unknown tokens give their text. Unused tokens give nothing.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] if `id` is not in the vocabulary.
    ///
    /// ```no_run
    /// # use colloquy_engine::{gguf::Gguf, tokenizer::Tokenizer};
    /// # let tok = Tokenizer::from_gguf(&Gguf::open("model.gguf")?)?;
    /// let piece = tok.token_to_piece(tok.eos())?;
    /// println!("{}", String::from_utf8_lossy(&piece));
    /// # Ok::<(), colloquy_engine::error::Error>(())
    /// ```
    pub fn token_to_piece(&self, id: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.append_piece(id, &mut out)?;
        Ok(out)
    }

    fn append_piece(&self, id: u32, out: &mut Vec<u8>) -> Result<()> {
        let idx = id as usize;
        if idx >= self.vocab.len() {
            return Err(Error::TokenOutOfRange { id, vocab: self.vocab.len() });
        }
        let attr = self.vocab.attrs[idx];
        let text = &self.vocab.texts[idx];
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
            out.extend_from_slice(text.as_bytes());
        } else if attr & ATTR_NORMAL != 0 {
            match self.model {
                Model::Spm => out.extend_from_slice(text.replace(SPACE_MARKER, " ").as_bytes()),
                Model::Bpe(_) => Bpe::decode_token_text(text, &self.char_to_byte, out),
            }
        } else if attr & ATTR_BYTE != 0 {
            // `<0xXX>`: the two hex digits at offset 3; anything unparsable reads as 0.
            let byte = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0);
            out.push(byte);
        }
        Ok(())
    }

    /// Joins the pieces of `ids` (see [`Tokenizer::token_to_piece`]). The result
    /// is raw bytes: a sequence cut in the middle of a character is not valid UTF-8.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] if an id is not in the vocabulary.
    ///
    /// ```no_run
    /// # use colloquy_engine::{gguf::Gguf, tokenizer::Tokenizer};
    /// # let tok = Tokenizer::from_gguf(&Gguf::open("model.gguf")?)?;
    /// let text = tok.decode(&tok.encode("naïve café", false))?;
    /// assert_eq!(text, "naïve café".as_bytes());
    /// # Ok::<(), colloquy_engine::error::Error>(())
    /// ```
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for &id in ids {
            self.append_piece(id, &mut out)?;
        }
        Ok(out)
    }

    /// A streaming decoder over this tokenizer: feed it ids as they are
    /// generated and it returns only complete UTF-8 text.
    ///
    /// ```no_run
    /// # use colloquy_engine::{gguf::Gguf, tokenizer::Tokenizer};
    /// # let tok = Tokenizer::from_gguf(&Gguf::open("model.gguf")?)?;
    /// let mut stream = tok.stream_decoder();
    /// for id in tok.encode("🍕!", false) {
    ///     print!("{}", stream.push(id)?);
    /// }
    /// print!("{}", stream.finish());
    /// # Ok::<(), colloquy_engine::error::Error>(())
    /// ```
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// The BOS id, if the vocabulary has one.
    ///
    /// ```no_run
    /// # use colloquy_engine::{gguf::Gguf, tokenizer::Tokenizer};
    /// # let tok = Tokenizer::from_gguf(&Gguf::open("model.gguf")?)?;
    /// let mut prompt = Vec::new();
    /// if tok.add_bos() {
    ///     prompt.extend(tok.bos());
    /// }
    /// prompt.extend(tok.encode("Hello", true));
    /// # Ok::<(), colloquy_engine::error::Error>(())
    /// ```
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The EOS id.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The end-of-turn id (`tokenizer.ggml.eot_token_id`, or a token such as
    /// `<|im_end|>`, `<|eot_id|>` or `<end_of_turn>` found by its text).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// The end-of-message id (`tokenizer.ggml.eom_token_id` or `<|eom_id|>`), if any.
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }

    /// Whether a prompt should start with BOS (`tokenizer.ggml.add_bos_token`,
    /// defaulting as llama.cpp does: true for SentencePiece and Llama 3 vocabularies).
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Whether a prompt should end with EOS (`tokenizer.ggml.add_eos_token`, default false).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether `id` ends generation. This is llama.cpp's end-of-generation set:
    /// EOS, EOT, EOM, the FIM pad/repo/file-separator tokens, and every token
    /// whose text is a known end marker (`<|im_end|>`, `<|endoftext|>`,
    /// `<|eot_id|>`, `<end_of_turn>`, `<eos>`, `</s>`, `<|end|>`, ...). For
    /// SmolLM2 that includes `<|endoftext|>` (0), `<|im_end|>` (2) and
    /// `<reponame>` (4); for Gemma 3, `<eos>` (1), `<end_of_turn>` (106) and `</s>` (212).
    ///
    /// ```no_run
    /// # use colloquy_engine::{gguf::Gguf, tokenizer::Tokenizer};
    /// # let tok = Tokenizer::from_gguf(&Gguf::open("model.gguf")?)?;
    /// assert!(tok.is_eog(tok.eos()));
    /// # Ok::<(), colloquy_engine::error::Error>(())
    /// ```
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.eog.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The id of the token whose text is exactly `text` (as stored in the
    /// vocabulary, so `Ġ`/`▁` stand for spaces in normal tokens).
    ///
    /// ```no_run
    /// # use colloquy_engine::{gguf::Gguf, tokenizer::Tokenizer};
    /// # let tok = Tokenizer::from_gguf(&Gguf::open("model.gguf")?)?;
    /// let im_end = tok.token_to_id("<|im_end|>");
    /// # Ok::<(), colloquy_engine::error::Error>(())
    /// ```
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.vocab.id_of(text)
    }

    /// The stored text of a token (not decoded: see [`Tokenizer::token_to_piece`]).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize)
    }

    /// Whether `id` is a control token (BOS, EOS, `<|im_start|>`, ...), which
    /// chat front-ends usually hide from the user.
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.attrs.get(id as usize).is_some_and(|a| a & ATTR_CONTROL != 0)
    }

    /// `tokenizer.ggml.model` (`gpt2` or `llama`).
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// `tokenizer.ggml.pre` (empty when absent).
    pub fn pre_tokenizer_name(&self) -> &str {
        &self.pre_name
    }
}
