//! A constraint in use: llguidance's matcher on a thread of its own, so the
//! mask for the next token is computed while the forward pass that produces
//! that token's logits runs.
//!
//! The worker takes each sampled token, reports at once whether the grammar
//! has ended, then computes the next mask; the turn waits for that mask only
//! when the logits are ready.

use std::sync::mpsc;

use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, TokenParser};

use crate::error::{Error, Result};

enum Reply {
    /// The token was taken; `true` when the grammar admits nothing more.
    Consumed(std::result::Result<bool, String>),
    /// The allowed tokens at the next position.
    Mask(std::result::Result<SimpleVob, String>),
}

/// The running constraint of one turn.
pub(crate) struct Guide {
    tokens: mpsc::Sender<u32>,
    replies: mpsc::Receiver<Reply>,
    /// The mask for the next logits, once received.
    ready: Option<SimpleVob>,
    /// Tokens the trie knows (a model may have more logits, never allowed).
    n_trie: usize,
}

impl Guide {
    /// Computes the first mask here (an unsatisfiable constraint fails now),
    /// then hands the matcher to its worker.
    pub(crate) fn start(parser: TokenParser) -> Result<Guide> {
        let mut matcher = Matcher::new(Ok(parser));
        let first = matcher.compute_mask().map_err(|e| Error::ConstraintInvalid(e.to_string()))?;
        if first.is_zero() {
            return Err(Error::ConstraintUnsatisfiable("no token can start the answer".into()));
        }
        let n_trie = first.len();
        let (tokens, rx) = mpsc::channel::<u32>();
        let (tx, replies) = mpsc::channel();
        std::thread::Builder::new()
            .name("colloquy-guide".into())
            .spawn(move || worker(matcher, rx, tx))
            .map_err(|e| Error::ConstraintUnsatisfiable(format!("starting the mask thread: {e}")))?;
        Ok(Guide { tokens, replies, ready: Some(first), n_trie })
    }

    /// Sets every logit the constraint forbids to −∞, waiting for the mask
    /// if the worker is still computing it.
    pub(crate) fn apply(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = match self.ready.take() {
            Some(m) => m,
            None => match self.replies.recv() {
                Ok(Reply::Mask(Ok(m))) => m,
                Ok(Reply::Mask(Err(e))) => return Err(Error::ConstraintUnsatisfiable(e)),
                Ok(Reply::Consumed(_)) | Err(_) => return Err(worker_gone()),
            },
        };
        if mask.is_zero() {
            return Err(Error::ConstraintUnsatisfiable("no token can continue the answer".into()));
        }
        for (i, l) in logits.iter_mut().enumerate() {
            if i >= self.n_trie || !mask.is_allowed(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Feeds the sampled token to the grammar. Returns `true` when the
    /// grammar admits nothing more (the answer is complete); otherwise the
    /// worker goes on to the next mask.
    pub(crate) fn commit(&mut self, token: u32) -> Result<bool> {
        self.tokens.send(token).map_err(|_| worker_gone())?;
        match self.replies.recv() {
            Ok(Reply::Consumed(Ok(stopped))) => Ok(stopped),
            Ok(Reply::Consumed(Err(e))) => Err(Error::ConstraintUnsatisfiable(e)),
            Ok(Reply::Mask(_)) | Err(_) => Err(worker_gone()),
        }
    }
}

fn worker_gone() -> Error {
    Error::ConstraintUnsatisfiable("the constraint's mask thread stopped".into())
}

fn worker(mut matcher: Matcher, tokens: mpsc::Receiver<u32>, replies: mpsc::Sender<Reply>) {
    // Ends when the turn drops its guide (the channel closes).
    while let Ok(token) = tokens.recv() {
        let consumed = matcher.consume_token(token).map(|()| matcher.is_stopped()).map_err(|e| e.to_string());
        let go_on = consumed == Ok(false);
        if replies.send(Reply::Consumed(consumed)).is_err() || !go_on {
            return;
        }
        let mask = matcher.compute_mask().map_err(|e| e.to_string());
        if replies.send(Reply::Mask(mask)).is_err() {
            return;
        }
    }
}
