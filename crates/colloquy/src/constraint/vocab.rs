//! llguidance's view of our tokenizer: every token's bytes (read from the
//! GGUF vocabulary through [`Tokenizer`]), its end-of-generation tokens,
//! and a tokenize function. No Hugging Face tokenizer file is involved.

use std::sync::Arc;

use colloquy_engine::tokenizer::Tokenizer;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

/// The token environment of one model (built once per model; cheap to clone).
pub(crate) struct VocabEnv {
    trie: TokTrie,
}

impl VocabEnv {
    /// Builds the token trie. Control tokens (`<|im_end|>`, `<end_of_turn>`)
    /// are spelled as llguidance's special-token marker followed by their text,
    /// so a grammar can never produce them as ordinary text.
    pub(crate) fn env(tokenizer: &Tokenizer) -> TokEnv {
        let n = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                if tokenizer.is_control(id) || tokenizer.is_eog(id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tokenizer.token_text(id).unwrap_or("<?>").as_bytes());
                    w
                } else {
                    tokenizer.token_to_piece(id).unwrap_or_default()
                }
            })
            .collect();
        // The end of a chat answer is the end-of-turn token where there is one.
        let eos = tokenizer.eot().unwrap_or_else(|| tokenizer.eos());
        let mut eogs = vec![eos];
        eogs.extend(tokenizer.eog_ids().into_iter().filter(|&t| t != eos && (t as usize) < n));
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_bos = tokenizer.bos();
        info.tok_end_of_turn = tokenizer.eot();
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eogs);
        Arc::new(VocabEnv { trie })
    }
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// llguidance tokenizes only to force tokens, which we do not ask it to
    /// (every token is sampled under the mask), so a greedy spelling is enough.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}
