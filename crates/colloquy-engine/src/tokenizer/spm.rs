//! SentencePiece-style BPE (`tokenizer.ggml.model = llama`), as llama.cpp runs it.
//!
//! Spaces have already been replaced by `▁` (U+2581). The text is split into
//! characters; any adjacent pair whose concatenation is a vocabulary token is a
//! merge candidate, and the candidate whose token has the highest score merges
//! first (the leftmost among equal scores), until no candidate is left. A final
//! piece that is not a token (a character missing from the vocabulary) becomes
//! one byte token `<0xXX>` per UTF-8 byte.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Vocab;

#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(Debug)]
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        // Highest score first, then leftmost. Scores that do not compare (NaN) count as equal.
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Tokenizes one fragment (already space-escaped), appending ids.
pub(crate) fn encode(vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
    if text.is_empty() {
        return;
    }
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        symbols.push(Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: None });
        if i > 0 {
            symbols[i - 1].next = Some(i);
        }
    }

    let mut heap = BinaryHeap::new();
    for i in 1..symbols.len() {
        push_candidate(vocab, text, &symbols, &mut heap, i - 1, i);
    }

    while let Some(cand) = heap.pop() {
        let (l, r) = (cand.left, cand.right);
        let (ls, rs) = (symbols[l], symbols[r]);
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
            push_candidate(vocab, text, &symbols, &mut heap, p, l);
        }
        if let Some(n) = symbols[l].next {
            push_candidate(vocab, text, &symbols, &mut heap, l, n);
        }
    }

    let mut i = Some(0);
    while let Some(idx) = i {
        let s = symbols[idx];
        i = s.next;
        let piece = &text[s.start..s.start + s.len];
        match vocab.id_of(piece) {
            Some(id) => out.push(id),
            None => {
                for b in piece.bytes() {
                    if let Some(id) = vocab.byte_token(b).or(vocab.unk) {
                        out.push(id);
                    }
                }
            }
        }
    }
}

fn push_candidate(
    vocab: &Vocab,
    text: &str,
    symbols: &[Symbol],
    heap: &mut BinaryHeap<Candidate>,
    l: usize,
    r: usize,
) {
    let (ls, rs) = (&symbols[l], &symbols[r]);
    let len = ls.len + rs.len;
    // Adjacent symbols are adjacent in the text, so the pair is one slice.
    let Some(pair) = text.get(ls.start..ls.start + len) else {
        return;
    };
    if let Some(id) = vocab.id_of(pair) {
        heap.push(Candidate { score: vocab.score(id), left: l, right: r, len });
    }
}
