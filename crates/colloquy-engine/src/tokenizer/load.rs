//! Building a [`Tokenizer`] from a GGUF's `tokenizer.ggml.*` metadata, with
//! llama.cpp's defaults where a key is absent.

use std::collections::HashSet;

use super::*;
use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

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
    /// Loads the tokenizer of a model file without its weights, as llama.cpp's
    /// `vocab_only` does ([`Gguf::open_vocab_only`]): the tensor data may be
    /// truncated or absent.
    ///
    /// ```no_run
    /// # use colloquy_engine::tokenizer::Tokenizer;
    /// let tok = Tokenizer::from_file("DeepSeek-R1-Distill-Qwen-7B.header.gguf")?;
    /// println!("{:?}", tok.encode("<think>", true));
    /// # Ok::<(), colloquy_engine::error::Error>(())
    /// ```
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Tokenizer> {
        Tokenizer::from_gguf(&Gguf::open_vocab_only(path)?)
    }

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
        let mut attrs = Vec::with_capacity(n);
        // Empty texts get a placeholder, as llama.cpp gives them.
        let texts = raw_texts.iter().enumerate().map(|(i, t)| match t.is_empty() {
            true => std::borrow::Cow::Owned(format!("[EMPTY_{i}]")),
            false => std::borrow::Cow::Borrowed(*t),
        });
        let texts =
            Texts::new(texts).ok_or_else(|| Error::GgufCorrupt("token texts total 4 GiB or more".into()))?;
        for i in 0..n {
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
        let ids = TextIndex::build(&texts);
        let mut byte_tokens = [None; 256];
        if is_spm {
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                let hex = format!("<0x{b:02X}>");
                *slot = ids.get(&texts, hex.as_str()).or_else(|| {
                    let one = [b as u8];
                    std::str::from_utf8(&one).ok().and_then(|s| ids.get(&texts, s))
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
            let text = &texts[id];
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
            if EOG_TEXTS.contains(&&texts[id]) {
                eog.insert(id as u32);
                attrs[id] |= ATTR_CONTROL;
            }
        }
        for id in 0..n {
            if matches!(&texts[id], "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>") {
                attrs[id] = ATTR_USER_DEFINED;
            }
        }
        eog.insert(eos);
        eog.extend(eot);
        eog.extend(eom);
        let has = |eog: &HashSet<u32>, t: &str| eog.iter().any(|&i| &texts[i as usize] == t);
        // Harmony-style vocabularies: `<|end|>` ends a message, not the generation.
        if (has(&eog, "<|return|>") && has(&eog, "<|call|>")
            || has(&eog, "<|calls|>") && has(&eog, "<|flush|>"))
            && has(&eog, "<|end|>")
        {
            if let Some(&end) = eog.iter().find(|&&i| &texts[i as usize] == "<|end|>") {
                eog.remove(&end);
                attrs[end as usize] = ATTR_USER_DEFINED;
            }
        }
        if has(&eog, "<|tool_response>") {
            if let Some(&s) = eog.iter().find(|&&i| &texts[i as usize] == "</s>") {
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
}
