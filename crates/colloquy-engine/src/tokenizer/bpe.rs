//! Byte-level BPE (GPT-2 style, `tokenizer.ggml.model = gpt2`).
//!
//! Each pre-tokenized word is first rewritten with the byte-to-unicode mapping
//! (every byte becomes one printable character), then split into characters,
//! and adjacent pairs are merged by rank: the pair whose merge rule came first
//! in `tokenizer.ggml.merges` goes first, and among equal ranks the leftmost.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::pretokenize::PreTokenizer;
use super::Vocab;

/// The merge rules and pre-tokenizer of a byte-level BPE vocabulary.
#[derive(Debug)]
pub(crate) struct Bpe {
    /// `"left right"` (as stored in the GGUF) to rank.
    ranks: HashMap<String, u32>,
    pub(crate) pre: PreTokenizer,
    /// A word that is itself a token is emitted whole, without merging (Llama 3).
    pub(crate) ignore_merges: bool,
    byte_to_char: [char; 256],
}

/// A symbol in the merge list: a byte range of the word, and its neighbours.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of symbol `left` with its right neighbour `right`.
#[derive(Debug, PartialEq, Eq)]
struct Candidate {
    rank: u32,
    left: usize,
    right: usize,
    /// Byte length of the merged text, to detect stale candidates.
    len: usize,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: lowest rank first, then leftmost.
        other.rank.cmp(&self.rank).then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Bpe {
    /// Builds the rank table from the GGUF merge strings (`"left right"`).
    pub(crate) fn new(merges: &[&str], pre: PreTokenizer, ignore_merges: bool) -> Bpe {
        let mut ranks = HashMap::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            // Split at the first space after the first byte; a rule without one never matches.
            let Some(sp) = m.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let key = format!("{} {}", &m[..sp], &m[sp + 1..]);
            ranks.entry(key).or_insert(i as u32);
        }
        Bpe { ranks, pre, ignore_merges, byte_to_char: super::unicode::byte_to_char_table() }
    }

    /// Tokenizes one fragment of plain text (no special tokens in it), appending ids.
    pub(crate) fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let cpts: Vec<char> = text.chars().collect();
        let mut word = String::new();
        let mut key = String::new();
        let mut utf8 = [0u8; 4];
        for range in self.pre.split(&cpts) {
            word.clear();
            for &c in &cpts[range] {
                for &b in c.encode_utf8(&mut utf8).as_bytes() {
                    word.push(self.byte_to_char[usize::from(b)]);
                }
            }
            self.encode_word(vocab, &word, &mut key, out);
        }
    }

    fn rank(&self, key: &mut String, left: &str, right: &str) -> Option<u32> {
        key.clear();
        key.push_str(left);
        key.push(' ');
        key.push_str(right);
        self.ranks.get(key.as_str()).copied()
    }

    fn encode_word(&self, vocab: &Vocab, word: &str, key: &mut String, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges {
            if let Some(id) = vocab.id_of(word) {
                out.push(id);
                return;
            }
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
        for (i, (start, c)) in word.char_indices().enumerate() {
            symbols.push(Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: None });
            if i > 0 {
                symbols[i - 1].next = Some(i);
            }
        }

        let mut heap = BinaryHeap::new();
        for i in 1..symbols.len() {
            self.push_candidate(&mut heap, key, word, &symbols, i - 1, i);
        }

        while let Some(cand) = heap.pop() {
            let (l, r) = (cand.left, cand.right);
            let (ls, rs) = (symbols[l], symbols[r]);
            // Stale: one side was merged away, or grew since the candidate was made.
            if ls.len == 0 || rs.len == 0 || ls.len + rs.len != cand.len || ls.next != Some(r) {
                continue;
            }
            symbols[l].len += rs.len;
            symbols[r].len = 0;
            symbols[l].next = rs.next;
            if let Some(n) = rs.next {
                symbols[n].prev = Some(l);
            }
            if let Some(p) = symbols[l].prev {
                self.push_candidate(&mut heap, key, word, &symbols, p, l);
            }
            if let Some(n) = symbols[l].next {
                self.push_candidate(&mut heap, key, word, &symbols, l, n);
            }
        }

        let mut i = Some(0);
        while let Some(idx) = i {
            let s = symbols[idx];
            i = s.next;
            if s.len == 0 {
                continue;
            }
            let piece = &word[s.start..s.start + s.len];
            match vocab.id_of(piece) {
                Some(id) => out.push(id),
                None => {
                    // Not a token: fall back to one token per byte of the mapped text,
                    // where such a token exists (as llama.cpp does); others are dropped.
                    for b in piece.bytes() {
                        let one = [b];
                        if let Some(id) = std::str::from_utf8(&one).ok().and_then(|s| vocab.id_of(s)) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }

    /// Queues the merge of symbols `l` and `r` if a merge rule covers the pair.
    fn push_candidate(
        &self,
        heap: &mut BinaryHeap<Candidate>,
        key: &mut String,
        word: &str,
        symbols: &[Symbol],
        l: usize,
        r: usize,
    ) {
        let (ls, rs) = (&symbols[l], &symbols[r]);
        let left = &word[ls.start..ls.start + ls.len];
        let right = &word[rs.start..rs.start + rs.len];
        if let Some(rank) = self.rank(key, left, right) {
            heap.push(Candidate { rank, left: l, right: r, len: ls.len + rs.len });
        }
    }

    /// Decodes a normal token's text back to bytes by inverting the byte mapping.
    /// A character outside the mapping is written as `[UNK_BYTE_0x..<text>]`, as llama.cpp does.
    pub(crate) fn decode_token_text(text: &str, char_to_byte: &[Option<u8>], out: &mut Vec<u8>) {
        for c in text.chars() {
            match char_to_byte.get(c as usize).copied().flatten() {
                Some(b) => out.push(b),
                None => {
                    out.extend_from_slice(b"[UNK_BYTE_0x");
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).as_bytes() {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                    out.extend_from_slice(text.as_bytes());
                    out.push(b']');
                }
            }
        }
    }
}
