//! `colloquy bench --contend N`: N busy-loop processes beside the engines, as
//! a laptop's browser or a server's other services share the cores.

use anyhow::{Context, Result};
use std::process::{Child, Command, Stdio};

/// Busy-loop processes, killed when this is dropped.
pub struct Hogs(Vec<Child>);

impl Hogs {
    /// Starts `n` processes that spin until they are killed.
    pub fn start(n: usize) -> Result<Hogs> {
        let mut hogs = Hogs(Vec::with_capacity(n));
        for _ in 0..n {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a busy-loop process for --contend (needs `sh`)")?;
            hogs.0.push(child);
        }
        Ok(hogs)
    }

    /// How many are running.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hogs_run_until_dropped() {
        let hogs = Hogs::start(2).unwrap();
        assert_eq!(hogs.len(), 2);
        let pids: Vec<u32> = hogs.0.iter().map(Child::id).collect();
        for pid in &pids {
            assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        }
        drop(hogs);
        for pid in &pids {
            // Reaped by `wait`, so the pid is gone.
            assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        }
    }
}
