//! A constraint in use: llguidance's matcher on a thread of its own, so the
//! mask for the next token is computed while the forward pass that produces
//! that token's logits runs.
//!
//! The turn feeds each sampled token to the matcher itself (which says at
//! once whether the grammar has ended), then wakes the worker to compute the
//! next mask; the turn waits for that mask only when the logits are ready,
//! so the worker's wake-up and the mask are both off the critical path.

use std::sync::{mpsc, Arc, Mutex};

use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, TokenParser};

use crate::error::{Error, Result};

/// The guide thread's stack: grammar compilation recurses over the grammar's
/// nesting. Only the pages touched are ever committed.
const GUIDE_STACK: usize = 256 << 20;

/// The longest a constraint may take to compile and give its first mask.
const COMPILE_DEADLINE: std::time::Duration = std::time::Duration::from_millis(750);

/// The running constraint of one turn.
pub(crate) struct Guide {
    /// The matcher: the turn consumes each token with it (cheap, and it
    /// says at once whether the answer is complete); the worker then
    /// computes the next mask with it, while the forward pass runs.
    matcher: Arc<Mutex<Matcher>>,
    /// Wakes the worker for the next mask.
    wake: mpsc::Sender<()>,
    masks: mpsc::Receiver<std::result::Result<SimpleVob, String>>,
    /// The mask for the next logits, once received.
    ready: Option<SimpleVob>,
    /// Tokens the trie knows (a model may have more logits, never allowed).
    n_trie: usize,
}

impl Guide {
    /// Compiles the grammar and computes the first mask on the guide's own
    /// thread (an unsatisfiable constraint fails now, before any model work),
    /// then leaves the worker waiting there. The thread has a deep stack: a
    /// deeply nested grammar must get an error, not overflow the caller's stack.
    pub(crate) fn start<F>(compile: F) -> Result<Guide>
    where
        F: FnOnce() -> Result<TokenParser> + Send + 'static,
    {
        let (wake, woken) = mpsc::channel::<()>();
        let (mask_tx, masks) = mpsc::channel();
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
                    Ok((Arc::new(Mutex::new(matcher)), mask))
                });
                match first {
                    Ok((matcher, mask)) => {
                        if started_tx.send(Ok((Arc::clone(&matcher), mask))).is_ok() {
                            worker(&matcher, woken, mask_tx);
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
        let (matcher, first) = match started.recv_timeout(COMPILE_DEADLINE) {
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
        Ok(Guide { matcher, wake, masks, ready: Some(first), n_trie })
    }

    /// Sets every logit the constraint forbids to −∞, waiting for the mask
    /// if the worker is still computing it.
    pub(crate) fn apply(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = match self.ready.take() {
            Some(m) => m,
            None => match self.masks.recv() {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(Error::ConstraintUnsatisfiable(e)),
                Err(_) => return Err(worker_gone()),
            },
        };
        if mask.is_zero() {
            return Err(Error::ConstraintUnsatisfiable("no token can continue the answer".into()));
        }
        // A word of 32 allowed tokens (the common case in free text) is skipped whole.
        let (known, beyond) = logits.split_at_mut(self.n_trie.min(logits.len()));
        for (chunk, &word) in known.chunks_mut(32).zip(mask.as_slice()) {
            if word == u32::MAX {
                continue;
            }
            for (bit, l) in chunk.iter_mut().enumerate() {
                if word >> bit & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        beyond.fill(f32::NEG_INFINITY);
        Ok(())
    }

    /// Feeds the sampled token to the grammar, here. Returns `true` when the
    /// grammar admits nothing more (the answer is complete); otherwise the
    /// worker goes on to the next mask.
    pub(crate) fn commit(&mut self, token: u32) -> Result<bool> {
        let stopped = {
            let mut m = self.matcher.lock().map_err(|_| worker_gone())?;
            m.consume_token(token).map_err(|e| Error::ConstraintUnsatisfiable(first_line(&e)))?;
            m.is_stopped()
        };
        if !stopped {
            self.wake.send(()).map_err(|_| worker_gone())?;
        }
        Ok(stopped)
    }
}

/// llguidance's message without the parser-state dump that follows it.
fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().trim().to_string()
}

fn worker_gone() -> Error {
    Error::ConstraintUnsatisfiable("the constraint's mask thread stopped".into())
}

fn worker(
    matcher: &Mutex<Matcher>,
    woken: mpsc::Receiver<()>,
    masks: mpsc::Sender<std::result::Result<SimpleVob, String>>,
) {
    // Ends when the turn drops its guide (the channel closes).
    while woken.recv().is_ok() {
        let Ok(mut m) = matcher.lock() else { return };
        let mask = m.compute_mask().map_err(|e| first_line(&e));
        drop(m);
        if masks.send(mask).is_err() {
            return;
        }
    }
}
