//! What a session holds: its model's fingerprint, its KV cache and tokens,
//! its messages, its random stream, what its latest turn cost, and the saved
//! versions it read. The bottom layer of the library: it imports no other
//! part of it but messages.

use std::time::Duration;

use colloquy_engine::kv::KvCache;
use colloquy_engine::model::Model;
use colloquy_engine::sampler::RngState;

use crate::message::ChatMessage;

/// Identifies a model by its weights and tokenizer: 128 bits of xxh3 over every
/// tensor's name, shape, type and data, and every token's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    /// Hashes a loaded model (about 10 ms per 100 MB of weights).
    pub fn of(model: &Model) -> Fingerprint {
        let g = model.gguf();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for t in g.tensors() {
            h.update(t.name.as_bytes());
            for d in &t.dims {
                h.update(&d.to_le_bytes());
            }
            h.update(&t.ty.id().to_le_bytes());
            // The weights live in packed copies (fast path) or are read back on
            // demand (precise path): each piece's pages are dropped once hashed,
            // so resident memory keeps to one copy.
            const PIECE: usize = 8 << 20;
            for (i, piece) in g.tensor_data(t).chunks(PIECE).enumerate() {
                h.update(piece);
                g.release_range(t.offset as usize + i * PIECE, piece.len());
            }
        }
        let tok = model.tokenizer();
        for id in 0..tok.vocab_size() as u32 {
            h.update(tok.token_text(id).unwrap_or_default().as_bytes());
            h.update(&[0xff]);
        }
        Fingerprint(h.digest128().to_le_bytes())
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Everything a session holds.
#[derive(Debug, Clone)]
pub(crate) struct SessionState {
    /// The model this state belongs to.
    pub fingerprint: Fingerprint,
    /// K/V of `tokens`.
    pub kv: KvCache,
    /// The tokens whose K/V is in `kv`, in order.
    pub tokens: Vec<u32>,
    /// Messages fed to the model.
    pub history: Vec<ChatMessage>,
    /// The latest answer: generated, but fed only when the next turn begins.
    pub pending: Option<String>,
    /// The session's random stream.
    pub rng: RngState,
    /// Messages dropped from the context to make room, oldest first.
    pub dropped: Vec<ChatMessage>,
    /// What the latest turn cost (not saved).
    pub last_turn: Option<TurnStats>,
    /// The saved versions this state was loaded from or saved as (not saved).
    pub versions: Versions,
}

/// The versions of the places a session was loaded from or saved to: a
/// session in a store (its folder and id) or a session file. A save to a
/// place succeeds only while the place still holds the version recorded here
/// (or, for a place not recorded, holds nothing): compare-and-set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Versions(Vec<(String, u64)>);

impl Versions {
    /// The version recorded for `place`.
    pub fn get(&self, place: &str) -> Option<u64> {
        self.0.iter().find(|(p, _)| p == place).map(|&(_, v)| v)
    }

    /// Records `version` for `place`.
    pub fn set(&mut self, place: String, version: u64) {
        match self.0.iter_mut().find(|(p, _)| *p == place) {
            Some(entry) => entry.1 = version,
            None => self.0.push((place, version)),
        }
    }
}

/// What a turn cost. Read it with
/// [`LlamaChatSession::last_turn`](crate::LlamaChatSession::last_turn).
///
/// ```no_run
/// # use colloquy::language::*;
/// # #[tokio::main] async fn main() {
/// let llm = Llama::new_chat().await.unwrap();
/// let mut chat = llm.chat();
/// chat("Hi").await.unwrap();
/// let stats: TurnStats = chat.session().unwrap().last_turn().unwrap();
/// assert!(stats.prompt_tokens > 0);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TurnStats {
    /// Prompt tokens the model processed this turn (the new suffix only).
    pub prompt_tokens: usize,
    /// Prompt tokens whose K/V was reused: from the session itself, or from
    /// blocks another session of the same model computed (the prefix cache).
    pub reused_tokens: usize,
    /// Tokens the session had read that this turn's render of the conversation
    /// no longer starts with, so the KV cache was rewound to the longest common
    /// prefix and the conversation re-read from there. 0 for templates that only
    /// append; R1's drops the thinking of past answers, so the whole previous
    /// answer is rewound on its next turn.
    pub rewound_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Messages dropped from the context before this turn to make room
    /// ([`ContextPolicy::DropOldest`](crate::ContextPolicy::DropOldest)); 0 on most turns.
    pub dropped_messages: usize,
    /// From the start of the turn to the first generated token.
    pub time_to_first_token: Duration,
    /// The whole turn.
    pub total_time: Duration,
}
