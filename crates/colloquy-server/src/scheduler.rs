//! The scheduler: one thread owns the model and runs every admitted turn
//! through one batched forward pass per step (continuous batching). A turn
//! joins at the next step and leaves when it finishes; prompts are read in
//! chunks between decode steps, so a long prompt does not stall the others.
//! Each turn gets exactly the tokens it would get alone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use colloquy::running::{RunningTurn, TokenLogprob};
use colloquy::Llama;
use tokio::sync::mpsc as tokio_mpsc;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// What a turn reports to its request, in order.
#[derive(Debug)]
pub enum Event {
    /// New answer text (and its tokens' log-probabilities, if asked for).
    Text(String, Vec<TokenLogprob>),
    /// The turn finished; commit it.
    Done(Box<RunningTurn>),
    /// The pass failed.
    Failed(ApiError),
}

struct Job {
    turn: RunningTurn,
    events: tokio_mpsc::UnboundedSender<Event>,
    first_token: bool,
}

/// How the scheduler batches.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Turns decoded together (llama-server's `-np`).
    pub parallel: usize,
    /// Turns admitted (running and waiting) before new ones get 429.
    pub max_queue: usize,
    /// Prompt tokens read per step, shared by the turns still reading.
    pub prompt_budget: usize,
}

/// The handle requests submit turns through.
#[derive(Clone)]
pub struct Scheduler {
    jobs: mpsc::Sender<Job>,
    admitted: Arc<AtomicUsize>,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
}

impl Scheduler {
    /// Starts the scheduler thread for `llm`.
    pub fn start(llm: Llama, config: SchedulerConfig, metrics: Arc<Metrics>) -> std::io::Result<Scheduler> {
        let (jobs, rx) = mpsc::channel();
        let admitted = Arc::new(AtomicUsize::new(0));
        let (a, m) = (Arc::clone(&admitted), Arc::clone(&metrics));
        std::thread::Builder::new()
            .name("colloquy-scheduler".into())
            .spawn(move || run(llm, rx, config, a, m))?;
        Ok(Scheduler { jobs, admitted, config, metrics })
    }

    /// Queues `turn`, or refuses it with 429 when the queue is full. Dropping
    /// the returned receiver cancels the turn and frees its KV.
    pub fn submit(&self, turn: RunningTurn) -> Result<tokio_mpsc::UnboundedReceiver<Event>, ApiError> {
        let n = self.admitted.fetch_add(1, Ordering::SeqCst);
        if n >= self.config.max_queue {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::QueueFull(n));
        }
        let (tx, rx) = tokio_mpsc::unbounded_channel();
        self.jobs
            .send(Job { turn, events: tx, first_token: false })
            .map_err(|_| ApiError::Internal("the scheduler has stopped".into()))?;
        Ok(rx)
    }

    /// Turns running or waiting.
    pub fn depth(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }
}

fn run(
    llm: Llama,
    rx: mpsc::Receiver<Job>,
    config: SchedulerConfig,
    admitted: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut active: Vec<Job> = Vec::new();
    let leave = |n: usize| {
        admitted.fetch_sub(n, Ordering::SeqCst);
    };
    loop {
        if active.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return,
            }
        }
        waiting.extend(rx.try_iter());
        // A client that has gone cancels its turn, waiting or running.
        let before = active.len() + waiting.len();
        active.retain(|j| !j.events.is_closed());
        waiting.retain(|j| !j.events.is_closed());
        let gone = before - active.len() - waiting.len();
        if gone > 0 {
            metrics.cancelled.fetch_add(gone as u64, Ordering::Relaxed);
            leave(gone);
        }
        while active.len() < config.parallel.max(1) {
            let Some(job) = waiting.pop_front() else { break };
            active.push(job);
        }
        metrics.queue_depth.store(waiting.len(), Ordering::Relaxed);
        if active.is_empty() {
            continue;
        }
        let t = Instant::now();
        let mut turns: Vec<&mut RunningTurn> = active.iter_mut().map(|j| &mut j.turn).collect();
        match llm.step(&mut turns, config.prompt_budget) {
            Ok(stats) => metrics.record_step(stats.sequences, stats.rows, t.elapsed()),
            Err(e) => {
                let e = ApiError::from(e);
                for job in active.drain(..) {
                    let _ = job.events.send(Event::Failed(ApiError::Internal(e.to_string())));
                    leave(1);
                }
                continue;
            }
        }
        let mut i = 0;
        while i < active.len() {
            let job = &mut active[i];
            let text = job.turn.take_text();
            let lps = job.turn.take_logprobs();
            if !job.first_token && job.turn.generated_tokens() > 0 {
                job.first_token = true;
                if let Some(ttft) = job.turn.time_to_first_token() {
                    metrics.record_ttft(ttft);
                }
            }
            if !text.is_empty() || !lps.is_empty() {
                let _ = job.events.send(Event::Text(text, lps));
            }
            if job.turn.is_finished() {
                let job = active.swap_remove(i);
                metrics.record_finished(job.turn.generated_tokens());
                let _ = job.events.send(Event::Done(Box::new(job.turn)));
                leave(1);
            } else {
                i += 1;
            }
        }
    }
}
