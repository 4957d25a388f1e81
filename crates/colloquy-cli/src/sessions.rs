//! `colloquy sessions`: list, show, fork, delete and collect the sessions of a
//! session store (the folder that `colloquy chat --store DIR` saves into).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use colloquy::store::SessionStore;

#[derive(Args)]
pub struct SessionsArgs {
    /// The session store: a folder, or redis://HOST:PORT/DB (redis+cluster://… for a cluster).
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    #[command(subcommand)]
    cmd: SessionsCmd,
}

#[derive(Subcommand)]
enum SessionsCmd {
    /// List the saved sessions: id, tokens, messages, blocks, size, when saved.
    List,
    /// Describe one session and print its transcript.
    Show {
        /// The session id.
        id: String,
    },
    /// Save a copy of session FROM as TO (only the manifest is copied: the two share their KV blocks).
    Fork {
        /// The session to copy.
        from: String,
        /// The new session's id (must not exist).
        to: String,
    },
    /// Delete a session (its KV blocks stay until `gc`).
    Delete {
        /// The session id.
        id: String,
    },
    /// Remove the KV blocks that no session references (on Redis: those no write marked within the gc grace).
    Gc,
}

/// A session id given as a path argument (`--session`).
pub fn id_arg(p: &Path) -> Result<&str> {
    match p.to_str() {
        Some(id) => Ok(id),
        None => bail!("session id {} is not UTF-8", p.display()),
    }
}

pub fn run(args: SessionsArgs) -> Result<()> {
    let Some(dir) = args.store else {
        bail!("give the store with --store DIR (or --store redis://HOST:PORT/DB)")
    };
    let remote = dir.to_str().is_some_and(|s| s.starts_with("redis://") || s.starts_with("redis+cluster://"));
    if !remote && !dir.is_dir() {
        bail!("no session store at {} (colloquy chat --store DIR --session ID creates one)", dir.display());
    }
    let store =
        SessionStore::open(&dir).with_context(|| format!("opening session store {}", dir.display()))?;
    match args.cmd {
        SessionsCmd::List => {
            let list = store.list()?;
            let width = list.iter().map(|i| i.id.len()).max().unwrap_or(0).max(2);
            println!(
                "{:width$}  {:>7}  {:>8}  {:>6}  {:>9}  SAVED (UTC)",
                "ID", "TOKENS", "MESSAGES", "BLOCKS", "SIZE"
            );
            for i in &list {
                println!(
                    "{:width$}  {:>7}  {:>8}  {:>6}  {:>9}  {}",
                    i.id,
                    i.tokens,
                    i.messages,
                    i.blocks,
                    size(i.bytes),
                    utc(i.modified)
                );
            }
            let u = store.usage()?;
            println!(
                "{} sessions; on disk {} in {} KV blocks (shared between sessions) and {} of manifests",
                u.sessions,
                size(u.block_bytes),
                u.blocks,
                size(u.manifest_bytes)
            );
        }
        SessionsCmd::Show { id } => {
            let info = store.info(&id)?;
            let manifest = store.manifest(&id)?;
            println!("session: {}", info.id);
            println!("model fingerprint: {}", info.fingerprint);
            println!("tokens: {}, messages: {}, KV blocks: {}", info.tokens, info.messages, info.blocks);
            println!("size: {} (manifest {})", size(info.bytes), size(info.manifest_bytes));
            println!("saved: {} UTC (version {})", utc(info.modified), info.version);
            println!();
            for m in &manifest.dropped {
                println!("[{}, dropped] {}", m.role().as_role(), m.content());
            }
            if !manifest.dropped.is_empty() {
                println!(
                    "--- {} messages dropped from the context; the model reads from here ---",
                    manifest.dropped.len()
                );
            }
            for m in manifest.transcript() {
                println!("[{}] {}", m.role().as_role(), m.content());
            }
        }
        SessionsCmd::Fork { from, to } => {
            store.fork(&from, &to)?;
            println!("forked {from} as {to}");
        }
        SessionsCmd::Delete { id } => {
            store.delete(&id)?;
            println!("deleted {id}");
        }
        SessionsCmd::Gc => {
            let g = store.gc()?;
            println!(
                "removed {} unreferenced KV blocks ({}) and {} stale temporary files; kept {} blocks",
                g.blocks_removed,
                size(g.bytes_removed),
                g.temp_files_removed,
                g.blocks_kept
            );
        }
    }
    Ok(())
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1 << 10 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1 << 30 => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        b => format!("{:.2} GiB", b as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        let at = |s| utc(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(at(1_700_000_000), "2023-11-14 22:13:20");
    }
}
