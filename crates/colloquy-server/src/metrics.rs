//! Counters for `GET /metrics`, in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Bucket bounds of the time-to-first-token histogram, in seconds.
const TTFT_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// The server's counters. Every field only grows, except the gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by endpoint and status.
    requests: Mutex<Vec<(String, u16, u64)>>,
    /// Prompt tokens of finished turns.
    pub prompt_tokens: AtomicU64,
    /// Of those, tokens whose KV was reused (session or prefix cache).
    pub cached_tokens: AtomicU64,
    /// Tokens generated.
    pub completion_tokens: AtomicU64,
    /// Turns finished.
    pub turns: AtomicU64,
    /// Turns whose client went away.
    pub cancelled: AtomicU64,
    /// Turns refused with 429.
    pub rejected: AtomicU64,
    /// Turns waiting for a place in the batch (gauge).
    pub queue_depth: AtomicUsize,
    /// Sequences in the latest pass (gauge).
    pub batch_size: AtomicUsize,
    steps: AtomicU64,
    step_rows: AtomicU64,
    step_sequences: AtomicU64,
    step_micros: AtomicU64,
    ttft: Mutex<([u64; TTFT_BUCKETS.len()], u64, f64)>,
}

impl Metrics {
    /// Counts a request to `endpoint` answered with `status`.
    pub fn record_request(&self, endpoint: &str, status: u16) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        match r.iter_mut().find(|(e, s, _)| e == endpoint && *s == status) {
            Some(entry) => entry.2 += 1,
            None => r.push((endpoint.to_string(), status, 1)),
        }
    }

    /// Counts one forward pass.
    pub fn record_step(&self, sequences: usize, rows: usize, took: Duration) {
        self.batch_size.store(sequences, Ordering::Relaxed);
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.step_sequences.fetch_add(sequences as u64, Ordering::Relaxed);
        self.step_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a turn's time to first token.
    pub fn record_ttft(&self, ttft: Duration) {
        let s = ttft.as_secs_f64();
        let mut h = self.ttft.lock().unwrap_or_else(|e| e.into_inner());
        for (i, &b) in TTFT_BUCKETS.iter().enumerate() {
            if s <= b {
                h.0[i] += 1;
            }
        }
        h.1 += 1;
        h.2 += s;
    }

    /// Counts a finished turn's generated tokens.
    pub fn record_finished(&self, generated: usize) {
        self.turns.fetch_add(1, Ordering::Relaxed);
        self.completion_tokens.fetch_add(generated as u64, Ordering::Relaxed);
    }

    /// Counts a turn's prompt.
    pub fn record_prompt(&self, prompt: usize, cached: usize) {
        self.prompt_tokens.fetch_add(prompt as u64, Ordering::Relaxed);
        self.cached_tokens.fetch_add(cached as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, running: usize) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(out, "# HELP colloquy_requests_total HTTP requests by endpoint and status.");
        let _ = writeln!(out, "# TYPE colloquy_requests_total counter");
        for (e, s, n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "colloquy_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {n}");
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "colloquy_prompt_tokens_total",
            "Prompt tokens of admitted turns.",
            load(&self.prompt_tokens),
        );
        counter(
            &mut out,
            "colloquy_cached_tokens_total",
            "Prompt tokens whose KV was reused (prefix cache and session hits).",
            load(&self.cached_tokens),
        );
        counter(
            &mut out,
            "colloquy_completion_tokens_total",
            "Tokens generated.",
            load(&self.completion_tokens),
        );
        counter(&mut out, "colloquy_turns_total", "Turns finished.", load(&self.turns));
        counter(
            &mut out,
            "colloquy_cancelled_total",
            "Turns cancelled because the client left.",
            load(&self.cancelled),
        );
        counter(
            &mut out,
            "colloquy_rejected_total",
            "Turns refused with 429 (queue full).",
            load(&self.rejected),
        );
        counter(&mut out, "colloquy_steps_total", "Batched forward passes.", load(&self.steps));
        counter(&mut out, "colloquy_step_rows_total", "Token rows over all passes.", load(&self.step_rows));
        counter(
            &mut out,
            "colloquy_step_sequences_total",
            "Sequences over all passes (÷ steps = mean batch size).",
            load(&self.step_sequences),
        );
        let _ = writeln!(
            out,
            "# HELP colloquy_step_seconds_total Time in forward passes.\n# TYPE colloquy_step_seconds_total counter\ncolloquy_step_seconds_total {}",
            load(&self.step_micros) as f64 / 1e6
        );
        gauge(
            &mut out,
            "colloquy_queue_depth",
            "Turns waiting for a place in the batch.",
            self.queue_depth.load(Ordering::Relaxed),
        );
        gauge(&mut out, "colloquy_running", "Turns admitted (running or waiting).", running);
        gauge(
            &mut out,
            "colloquy_batch_size",
            "Sequences in the latest forward pass.",
            self.batch_size.load(Ordering::Relaxed),
        );
        let h = self.ttft.lock().unwrap_or_else(|e| e.into_inner());
        let name = "colloquy_time_to_first_token_seconds";
        let _ =
            writeln!(out, "# HELP {name} From a turn's start to its first token.\n# TYPE {name} histogram");
        for (b, n) in TTFT_BUCKETS.iter().zip(h.0) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {n}");
        }
        let _ =
            writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", h.1, h.2, h.1);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.record_request("/v1/chat/completions", 200);
        m.record_request("/v1/chat/completions", 200);
        m.record_ttft(Duration::from_millis(300));
        m.record_step(3, 3, Duration::from_millis(10));
        let text = m.render(2);
        assert!(text.contains("colloquy_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2"));
        assert!(text.contains("colloquy_time_to_first_token_seconds_bucket{le=\"0.25\"} 0"));
        assert!(text.contains("colloquy_time_to_first_token_seconds_bucket{le=\"0.5\"} 1"));
        assert!(text.contains("colloquy_batch_size 3"));
        assert!(text.contains("colloquy_running 2"));
    }
}
