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
mod pretokenize;
mod spm;
mod stream;
mod unicode;
mod unicode_data;

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

use bpe::Bpe;
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
    texts: Vec<String>,
    attrs: Vec<u16>,
    scores: Vec<f32>,
    ids: HashMap<String, u32>,
    /// The unknown token, used when a byte has no byte token.
    unk: Option<u32>,
    /// Byte fallback tokens (`<0xXX>`, or the byte itself as a token).
    byte_tokens: [Option<u32>; 256],
}

impl Vocab {
    #[inline]
    pub(crate) fn id_of(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
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

/// Reads an optional token id; ids outside the vocabulary are ignored, as llama.cpp does.
fn optional_id(gguf: &Gguf, key: &str, n_vocab: usize) -> Option<u32> {
    gguf.get(key).and_then(Value::as_u64).filter(|&id| (id as usize) < n_vocab).map(|id| id as u32)
}

fn optional_bool(gguf: &Gguf, key: &str) -> Result<Option<bool>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(Error::MetadataType { key: key.to_string(), expected: "bool", found: v.type_name() }),
    }
}

/// Texts that llama.cpp recognises as end-of-turn tokens when `eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts that llama.cpp treats as end of generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Maps a `tokenizer.ggml.pre` value to its pre-tokenizer, with the flags llama.cpp sets for it:
/// (pre-tokenizer, ignore merges, add BOS by default, BOS disabled).
fn pre_tokenizer_for(pre: &str) -> Option<(PreTokenizer, bool, bool, bool)> {
    let plain = |p| Some((p, false, false, false));
    match pre {
        "" | "default" => plain(PreTokenizer::Default),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" => Some((PreTokenizer::Llama3, true, true, false)),
        "dbrx" | "smaug-bpe" => plain(PreTokenizer::Llama3),
        "glm4" | "chatglm-bpe" => Some((PreTokenizer::Llama3, false, false, true)),
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "jina-v1-en" | "jina-v2-code"
        | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => {
            plain(PreTokenizer::Gpt2)
        }
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => plain(PreTokenizer::Smollm),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" => plain(PreTokenizer::Qwen2),
        _ => None,
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF's `tokenizer.ggml.*` metadata.
    ///
    /// Reads the token list, token types, scores (SentencePiece), merges (BPE),
    /// the BOS/EOS/EOT/EOM/UNK ids and the `add_bos_token`, `add_eos_token` and
    /// `add_space_prefix` flags, with llama.cpp's defaults where a key is absent.
    ///
    /// # Errors
    /// [`Error::UnsupportedTokenizer`] for a `tokenizer.ggml.model` or
    /// `tokenizer.ggml.pre` this crate does not implement (the message names it),
    /// [`Error::MissingMetadata`] / [`Error::MetadataType`] for missing or
    /// mistyped keys.
    ///
    /// ```no_run
    /// # use colloquy_engine::{gguf::Gguf, tokenizer::Tokenizer};
    /// let tok = Tokenizer::from_gguf(&Gguf::open("model.gguf")?)?;
    /// println!("{} tokens", tok.vocab_size());
    /// # Ok::<(), colloquy_engine::error::Error>(())
    /// ```
    pub fn from_gguf(gguf: &Gguf) -> Result<Tokenizer> {
        let model_name = gguf.get_str("tokenizer.ggml.model")?.to_string();
        let pre_name = match gguf.get("tokenizer.ggml.pre") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let is_spm = match model_name.as_str() {
            "llama" => true,
            "gpt2" => false,
            other => {
                return Err(Error::UnsupportedTokenizer(format!(
                "tokenizer model {other:?} (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece BPE)"
            )))
            }
        };

        // ---- vocabulary ----
        let raw_texts = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let n = raw_texts.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(Error::UnsupportedTokenizer(format!("vocabulary of {n} tokens")));
        }
        let types = match gguf.get("tokenizer.ggml.token_type") {
            Some(_) => Some(gguf.get_i64_array("tokenizer.ggml.token_type")?),
            None => None,
        };
        let scores = match gguf.get("tokenizer.ggml.scores") {
            Some(_) => gguf.get_f32_array("tokenizer.ggml.scores")?,
            None => Vec::new(),
        };
        let mut texts = Vec::with_capacity(n);
        let mut attrs = Vec::with_capacity(n);
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in raw_texts.iter().enumerate() {
            let text = if t.is_empty() { format!("[EMPTY_{i}]") } else { (*t).to_string() };
            ids.entry(text.clone()).or_insert(i as u32);
            texts.push(text);
            let attr = match types.as_ref().map(|v| v.get(i).copied().unwrap_or(0)) {
                None | Some(1) => ATTR_NORMAL,
                Some(2) => ATTR_UNKNOWN,
                Some(3) => ATTR_CONTROL,
                Some(4) => ATTR_USER_DEFINED,
                Some(5) => ATTR_UNUSED,
                Some(6) => ATTR_BYTE,
                Some(_) => 0,
            };
            attrs.push(attr);
        }
        let mut byte_tokens = [None; 256];
        if is_spm {
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                let hex = format!("<0x{b:02X}>");
                *slot = ids.get(hex.as_str()).copied().or_else(|| {
                    let one = [b as u8];
                    std::str::from_utf8(&one).ok().and_then(|s| ids.get(s).copied())
                });
            }
        }

        // ---- model and pre-tokenizer ----
        let (model, mut add_bos, mut bos, mut eos, mut unk, mut add_space_prefix) = if is_spm {
            (Model::Spm, true, Some(1u32), Some(2u32), Some(0u32), true)
        } else {
            let Some((pre, ignore_merges, add_bos, no_bos)) = pre_tokenizer_for(&pre_name) else {
                return Err(Error::UnsupportedTokenizer(format!(
                    "pre-tokenizer {pre_name:?} (supported: smollm, llama-bpe, qwen2, gpt-2, default and their aliases)"
                )));
            };
            let merges = gguf.get_str_array("tokenizer.ggml.merges")?;
            let bos = if no_bos { None } else { Some(11u32) };
            (
                Model::Bpe(Box::new(Bpe::new(&merges, pre, ignore_merges))),
                add_bos,
                bos,
                Some(11u32),
                None,
                false,
            )
        };
        let mut add_eos = false;
        let in_vocab = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        bos = in_vocab(bos);
        eos = in_vocab(eos);
        unk = in_vocab(unk);
        if let Some(b) = optional_bool(gguf, "tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = b;
        }
        bos = optional_id(gguf, "tokenizer.ggml.bos_token_id", n).or(bos);
        eos = optional_id(gguf, "tokenizer.ggml.eos_token_id", n).or(eos);
        unk = optional_id(gguf, "tokenizer.ggml.unknown_token_id", n).or(unk);
        let mut eot = optional_id(gguf, "tokenizer.ggml.eot_token_id", n);
        let mut eom = optional_id(gguf, "tokenizer.ggml.eom_token_id", n);
        let mut fim_pre = optional_id(gguf, "tokenizer.ggml.fim_pre_token_id", n)
            .or_else(|| optional_id(gguf, "tokenizer.ggml.prefix_token_id", n));
        let mut fim_suf = optional_id(gguf, "tokenizer.ggml.fim_suf_token_id", n)
            .or_else(|| optional_id(gguf, "tokenizer.ggml.suffix_token_id", n));
        let mut fim_mid = optional_id(gguf, "tokenizer.ggml.fim_mid_token_id", n)
            .or_else(|| optional_id(gguf, "tokenizer.ggml.middle_token_id", n));
        let mut fim_pad = optional_id(gguf, "tokenizer.ggml.fim_pad_token_id", n);
        let mut fim_rep = optional_id(gguf, "tokenizer.ggml.fim_rep_token_id", n);
        let mut fim_sep = optional_id(gguf, "tokenizer.ggml.fim_sep_token_id", n);
        if let Some(b) = optional_bool(gguf, "tokenizer.ggml.add_bos_token")? {
            add_bos = b;
        }
        if let Some(b) = optional_bool(gguf, "tokenizer.ggml.add_eos_token")? {
            add_eos = b;
        }
        let Some(eos) = eos else {
            return Err(Error::MissingMetadata("tokenizer.ggml.eos_token_id".to_string()));
        };

        // ---- special tokens recognised by their text (llama.cpp's auto-detection) ----
        // A token found this way is made a control token, which changes how it is split out.
        for id in 0..n {
            let text = texts[id].as_str();
            for (slot, list) in [
                (&mut eot, EOT_TEXTS),
                (&mut eom, EOM_TEXTS),
                (&mut fim_pre, FIM_PRE_TEXTS),
                (&mut fim_suf, FIM_SUF_TEXTS),
                (&mut fim_mid, FIM_MID_TEXTS),
                (&mut fim_pad, FIM_PAD_TEXTS),
                (&mut fim_rep, FIM_REP_TEXTS),
                (&mut fim_sep, FIM_SEP_TEXTS),
            ] {
                if slot.is_none() && list.contains(&text) {
                    *slot = Some(id as u32);
                    attrs[id] |= ATTR_CONTROL;
                }
            }
        }
        let mut eog: HashSet<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for id in 0..n {
            if EOG_TEXTS.contains(&texts[id].as_str()) {
                eog.insert(id as u32);
                attrs[id] |= ATTR_CONTROL;
            }
        }
        for id in 0..n {
            if matches!(texts[id].as_str(), "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>") {
                attrs[id] = ATTR_USER_DEFINED;
            }
        }
        eog.insert(eos);
        eog.extend(eot);
        eog.extend(eom);
        let has = |eog: &HashSet<u32>, t: &str| eog.iter().any(|&i| texts[i as usize] == t);
        // Harmony-style vocabularies: `<|end|>` ends a message, not the generation.
        if (has(&eog, "<|return|>") && has(&eog, "<|call|>")
            || has(&eog, "<|calls|>") && has(&eog, "<|flush|>"))
            && has(&eog, "<|end|>")
        {
            if let Some(&end) = eog.iter().find(|&&i| texts[i as usize] == "<|end|>") {
                eog.remove(&end);
                attrs[end as usize] = ATTR_USER_DEFINED;
            }
        }
        if has(&eog, "<|tool_response>") {
            if let Some(&s) = eog.iter().find(|&&i| texts[i as usize] == "</s>") {
                eog.remove(&s);
                attrs[s as usize] = ATTR_NORMAL;
            }
        }

        // ---- special-token split order ----
        let mut special: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        special.sort_by(|&a, &b| texts[b as usize].len().cmp(&texts[a as usize].len()).then(a.cmp(&b)));
        let mut special_trie = SpecialTrie::new();
        for (pos, &id) in special.iter().enumerate() {
            special_trie.insert(texts[id as usize].as_bytes(), pos as u32);
        }

        Ok(Tokenizer {
            vocab: Vocab { texts, attrs, scores, ids, unk, byte_tokens },
            model,
            model_name,
            pre_name,
            add_space_prefix,
            add_bos,
            add_eos,
            bos,
            eos,
            eot,
            eom,
            eog,
            special,
            special_trie,
            char_to_byte: unicode::char_to_byte_table(),
        })
    }

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
            let needle = self.vocab.texts[id as usize].as_str();
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
        let text = self.vocab.texts[idx].as_str();
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
        self.vocab.texts.get(id as usize).map(String::as_str)
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
