//! The token texts, stored back to back, and the text → id index over them.

use std::collections::HashMap;

/// Every token's text in one string, with each text's end offset: about a
/// tenth of the memory of one `String` per token for a 262k-token vocabulary.
#[derive(Debug, Default)]
pub(crate) struct Texts {
    bytes: String,
    ends: Vec<u32>,
}

impl Texts {
    /// Stores `texts` in order (`None` if they total 4 GiB or more).
    pub(crate) fn new(texts: impl IntoIterator<Item = impl AsRef<str>>) -> Option<Texts> {
        let mut t = Texts::default();
        for text in texts {
            t.bytes.push_str(text.as_ref());
            t.ends.push(u32::try_from(t.bytes.len()).ok()?);
        }
        t.bytes.shrink_to_fit();
        Some(t)
    }

    /// The text of token `id`.
    #[inline]
    pub(crate) fn get(&self, id: usize) -> Option<&str> {
        let end = *self.ends.get(id)? as usize;
        let start = if id == 0 { 0 } else { self.ends[id - 1] as usize };
        self.bytes.get(start..end)
    }

    /// The number of tokens.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }
}

impl std::ops::Index<usize> for Texts {
    type Output = str;

    fn index(&self, id: usize) -> &str {
        self.get(id).unwrap_or("")
    }
}

/// Keys are xxh3-64 hashes of the texts, checked against the text itself on
/// lookup. A text whose hash another text already took goes to a small map
/// of its own, so lookups are exact. For a 262k-token vocabulary this saves
/// more than a copy of every string.
#[derive(Debug, Default)]
pub(crate) struct TextIndex {
    by_hash: HashMap<u64, u32>,
    collided: HashMap<String, u32>,
}

fn hash(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

impl TextIndex {
    /// Indexes `texts` (id = position); a text that appears twice keeps its first id.
    pub(crate) fn build(texts: &Texts) -> TextIndex {
        let mut index = TextIndex { by_hash: HashMap::with_capacity(texts.len()), ..Default::default() };
        for id in 0..texts.len() {
            let text = &texts[id];
            match index.by_hash.entry(hash(text)) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(id as u32);
                }
                std::collections::hash_map::Entry::Occupied(e) => {
                    if &texts[*e.get() as usize] != text {
                        index.collided.entry(text.to_string()).or_insert(id as u32);
                    }
                }
            }
        }
        index
    }

    /// The id of `text` in `texts` (the list it was built from).
    #[inline]
    pub(crate) fn get(&self, texts: &Texts, text: &str) -> Option<u32> {
        match self.by_hash.get(&hash(text)) {
            Some(&id) if texts.get(id as usize) == Some(text) => Some(id),
            _ => self.collided.get(text).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_id_wins_and_misses_are_none() {
        let texts = Texts::new(["a", "b", "a", "ab", ""]).unwrap();
        assert_eq!((&texts[3], texts.get(4), texts.get(5)), ("ab", Some(""), None));
        let index = TextIndex::build(&texts);
        assert_eq!(index.get(&texts, "a"), Some(0));
        assert_eq!(index.get(&texts, "ab"), Some(3));
        assert_eq!(index.get(&texts, ""), Some(4));
        assert_eq!(index.get(&texts, "c"), None);
    }

    #[test]
    fn colliding_hashes_still_find_their_text() {
        // Force a collision: put "b" under the hash of "a".
        let texts = Texts::new(["a", "b"]).unwrap();
        let mut index = TextIndex::default();
        index.by_hash.insert(hash("a"), 0);
        index.collided.insert("b".into(), 1);
        index.by_hash.insert(hash("b"), 0); // "b"'s slot points at "a": a collision
        assert_eq!(index.get(&texts, "a"), Some(0));
        assert_eq!(index.get(&texts, "b"), Some(1));
        assert_eq!(index.get(&texts, "z"), None);
    }
}
