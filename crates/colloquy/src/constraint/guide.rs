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

/// The guide thread's stack: grammar compilation recurses over the grammar's
/// nesting. Only the pages touched are ever committed.
const GUIDE_STACK: usize = 256 << 20;

/// The longest a constraint may take to compile and give its first mask.
const COMPILE_DEADLINE: std::time::Duration = std::time::Duration::from_millis(750);

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
    /// Compiles the grammar and computes the first mask on the guide's own
    /// thread (an unsatisfiable constraint fails now, before any model work),
    /// then leaves the matcher there. The thread has a deep stack: a deeply
    /// nested grammar must get an error, not overflow the caller's stack.
    pub(crate) fn start<F>(compile: F) -> Result<Guide>
    where
        F: FnOnce() -> Result<TokenParser> + Send + 'static,
    {
        let (tokens, rx) = mpsc::channel::<u32>();
        let (tx, replies) = mpsc::channel();
        let (started_tx, started) = mpsc::channel();
        std::thread::Builder::new()
            .name("colloquy-guide".into())
            .stack_size(GUIDE_STACK)
            .spawn(move || {
                let first = compile().and_then(|parser| {
                    let mut matcher = Matcher::new(Ok(parser));
                    let mask = matcher.compute_mask().map_err(|e| {
                        Error::ConstraintUnsatisfiable(format!("no answer can match it ({})", first_line(&e)))
                    })?;
                    Ok((matcher, mask))
                });
                match first {
                    Ok((matcher, mask)) => {
                        if started_tx.send(Ok(mask)).is_ok() {
                            worker(matcher, rx, tx);
                        }
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| Error::ConstraintUnsatisfiable(format!("starting the mask thread: {e}")))?;
        // Compiling is bounded by llguidance's limits, but some grammars under
        // them still take long (many optional object properties); those are
        // refused at the deadline, and the thread finishes on its own.
        let first = match started.recv_timeout(COMPILE_DEADLINE) {
            Ok(first) => first?,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(Error::ConstraintInvalid(format!(
                    "the constraint did not compile within {COMPILE_DEADLINE:?}; simplify it"
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(worker_gone()),
        };
        if first.is_zero() {
            return Err(Error::ConstraintUnsatisfiable("no token can start the answer".into()));
        }
        let n_trie = first.len();
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

/// llguidance's message without the parser-state dump that follows it.
fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().trim().to_string()
}

fn worker_gone() -> Error {
    Error::ConstraintUnsatisfiable("the constraint's mask thread stopped".into())
}

fn worker(mut matcher: Matcher, tokens: mpsc::Receiver<u32>, replies: mpsc::Sender<Reply>) {
    // Ends when the turn drops its guide (the channel closes).
    while let Ok(token) = tokens.recv() {
        let consumed =
            matcher.consume_token(token).map(|()| matcher.is_stopped()).map_err(|e| first_line(&e));
        let go_on = consumed == Ok(false);
        if replies.send(Reply::Consumed(consumed)).is_err() || !go_on {
            return;
        }
        let mask = matcher.compute_mask().map_err(|e| first_line(&e));
        if replies.send(Reply::Mask(mask)).is_err() {
            return;
        }
    }
}
