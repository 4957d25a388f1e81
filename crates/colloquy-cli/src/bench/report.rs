//! What `colloquy bench` prints: a Markdown table, or one JSON object per
//! figure. Decode figures carry their memory bound (bandwidth ÷ the bytes a
//! step reads) and the fraction of it that each engine reached.

use std::io::Write;

use anyhow::Result;

use super::bandwidth::Bandwidth;
use super::{EngineResults, Figure, Test};

/// The memory bound of one decode test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound {
    /// Bytes one step reads, at the test's mean context.
    pub bytes_per_token: u64,
    /// Bandwidth ÷ bytes: the most tokens/s this machine allows.
    pub tps: f64,
}

/// What a report shows besides the engines' figures.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The model's name as given.
    pub model: String,
    /// Threads both engines ran with.
    pub threads: usize,
    /// The bandwidth probe's results (empty when it did not run).
    pub bandwidth: Vec<Bandwidth>,
    /// `(test name, bound)` for the decode tests.
    pub bounds: Vec<(String, Bound)>,
    /// `(test name, colloquy's thread-pool sections per step)` for the decode tests.
    pub sections: Vec<(String, f64)>,
}

impl Context {
    fn bound(&self, name: &str) -> Option<Bound> {
        self.bounds.iter().find(|(n, _)| n == name).map(|(_, b)| *b)
    }
}

/// colloquy / peer, when both are finite and the peer's is positive.
fn ratio(ours: f64, theirs: f64) -> Option<f64> {
    (ours.is_finite() && theirs.is_finite() && theirs > 0.0).then(|| ours / theirs)
}

/// Writes one JSON object per line per figure, then the bandwidth and RSS lines.
pub fn write_json(
    out: &mut impl Write,
    cx: &Context,
    tests: &[Test],
    ours: &EngineResults,
    peer: Option<&EngineResults>,
) -> Result<()> {
    for test in tests {
        let name = test.name();
        let Some(f) = ours.get(&name) else { continue };
        let mut obj = serde_json::json!({
            "test": name,
            "model": cx.model,
            "threads": cx.threads,
            "colloquy_tps": f.tps,
            "colloquy_spread": f.spread,
        });
        if let Some((_, n)) = cx.sections.iter().find(|(n, _)| *n == name) {
            obj["sections_per_token"] = (*n).into();
        }
        let bound = cx.bound(&name);
        if let Some(b) = bound {
            obj["bytes_per_token"] = b.bytes_per_token.into();
            obj["bound_tps"] = b.tps.into();
            obj["colloquy_of_bound"] = ratio(f.tps, b.tps).into();
        }
        if let Some(p) = peer.and_then(|p| p.get(&name)) {
            obj["peer"] = "llama.cpp".into();
            obj["peer_tps"] = p.tps.into();
            obj["peer_spread"] = p.spread.into();
            obj["ratio"] = ratio(f.tps, p.tps).into();
            if let Some(b) = bound {
                obj["peer_of_bound"] = ratio(p.tps, b.tps).into();
            }
        }
        writeln!(out, "{obj}")?;
    }
    for bw in &cx.bandwidth {
        let obj = serde_json::json!({
            "test": "bandwidth",
            "threads": bw.threads,
            "gbps": bw.gbps,
            "gbps_min": bw.range.0,
            "gbps_max": bw.range.1,
        });
        writeln!(out, "{obj}")?;
    }
    for (name, ours_mb, peer_mb) in [
        ("rss_load_mb", ours.rss_load_mb, peer.and_then(|p| p.rss_load_mb)),
        ("rss_peak_mb", ours.rss_peak_mb, peer.and_then(|p| p.rss_peak_mb)),
    ] {
        let mut obj = serde_json::json!({"test": name, "model": cx.model, "threads": cx.threads, "colloquy_mb": ours_mb});
        if peer.is_some() {
            obj["peer_mb"] = peer_mb.into();
        }
        writeln!(out, "{obj}")?;
    }
    Ok(())
}

/// Writes a Markdown table of the figures, their bounds and the peak RSS,
/// then a line per bandwidth probe.
pub fn write_table(
    out: &mut impl Write,
    cx: &Context,
    tests: &[Test],
    ours: &EngineResults,
    peer: Option<&EngineResults>,
) -> Result<()> {
    let dash = || "-".to_string();
    let fig = |f: Option<Figure>| f.map_or_else(dash, |f| format!("{:.2} ± {:.2}", f.tps, f.spread));
    let pct = |f: Option<Figure>, b: Option<Bound>| match (f, b) {
        (Some(f), Some(b)) => ratio(f.tps, b.tps).map_or_else(dash, |r| format!("{:.0}%", 100.0 * r)),
        _ => dash(),
    };
    let mb = |m: Option<f64>| m.map_or_else(dash, |m| format!("{m:.1}"));
    let mut header = vec!["test", "colloquy t/s", "of bound"];
    if peer.is_some() {
        header.extend(["llama.cpp t/s", "of bound", "colloquy/llama.cpp"]);
    }
    header.push("bound t/s");
    let mut rows: Vec<Vec<String>> = Vec::new();
    for test in tests {
        let name = test.name();
        let o = ours.get(&name);
        let b = cx.bound(&name);
        let mut row = vec![name.clone(), fig(o), pct(o, b)];
        if let Some(peer) = peer {
            let p = peer.get(&name);
            let r = match (o, p) {
                (Some(o), Some(p)) => ratio(o.tps, p.tps).map_or_else(dash, |r| format!("{r:.2}")),
                _ => dash(),
            };
            row.extend([fig(p), pct(p, b), r]);
        }
        row.push(b.map_or_else(dash, |b| format!("{:.1}", b.tps)));
        rows.push(row);
    }
    for (label, o, p) in [
        ("peak RSS after load (MiB)", ours.rss_load_mb, peer.and_then(|p| p.rss_load_mb)),
        ("peak RSS after runs (MiB)", ours.rss_peak_mb, peer.and_then(|p| p.rss_peak_mb)),
    ] {
        let mut row = vec![label.to_string(), mb(o), String::new()];
        if peer.is_some() {
            row.extend([mb(p), String::new(), String::new()]);
        }
        row.push(String::new());
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        format!("| {} |", parts.join(" | "))
    };
    writeln!(out, "{}", line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>()))?;
    let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "|-{}-|", sep.join("-|-"))?;
    for r in &rows {
        writeln!(out, "{}", line(r))?;
    }
    for (name, n) in &cx.sections {
        writeln!(out, "{name}: {n:.0} thread-pool sections (synchronizations) per token")?;
    }
    for bw in &cx.bandwidth {
        writeln!(
            out,
            "read bandwidth, {} thread{}: {:.1} GB/s (passes {:.1}–{:.1})",
            bw.threads,
            if bw.threads == 1 { "" } else { "s" },
            bw.gbps,
            bw.range.0,
            bw.range.1
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tests_for;

    fn context(tests: &[Test]) -> Context {
        Context {
            model: "m".into(),
            threads: 2,
            bandwidth: vec![Bandwidth { threads: 2, gbps: 20.0, range: (19.0, 21.0) }],
            bounds: tests
                .iter()
                .filter(|t| matches!(t, Test::Gen { .. }))
                .map(|t| (t.name(), Bound { bytes_per_token: 2_000_000_000, tps: 10.0 }))
                .collect(),
            sections: vec![("tg4".into(), 151.0)],
        }
    }

    #[test]
    fn json_lines_have_the_issue_keys() {
        let tests = tests_for(8, 4, 0);
        let ours = EngineResults {
            figures: vec![
                ("pp8".into(), Figure { tps: 10.0, spread: 1.0 }),
                ("tg4".into(), Figure { tps: 5.0, spread: 0.5 }),
            ],
            rss_load_mb: Some(1.0),
            rss_peak_mb: Some(2.0),
        };
        let peer = EngineResults {
            figures: vec![
                ("pp8".into(), Figure { tps: 20.0, spread: 2.0 }),
                ("tg4".into(), Figure { tps: 2.5, spread: 0.1 }),
            ],
            ..ours.clone()
        };
        let mut buf = Vec::new();
        write_json(&mut buf, &context(&tests), &tests, &ours, Some(&peer)).unwrap();
        let lines: Vec<serde_json::Value> =
            String::from_utf8(buf).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0]["test"], "pp8");
        assert_eq!(lines[0]["threads"], 2);
        assert_eq!(lines[0]["colloquy_tps"], 10.0);
        assert_eq!(lines[0]["peer_tps"], 20.0);
        assert_eq!(lines[0]["ratio"], 0.5);
        assert!(lines[0].get("bound_tps").is_none(), "a prompt test has no memory bound");
        assert_eq!(lines[1]["bound_tps"], 10.0);
        assert_eq!(lines[1]["colloquy_of_bound"], 0.5);
        assert_eq!(lines[1]["peer_of_bound"], 0.25);
        assert_eq!(lines[1]["bytes_per_token"], 2_000_000_000u64);
        assert_eq!(lines[1]["sections_per_token"], 151.0);
        assert_eq!(lines[2]["test"], "bandwidth");
        assert_eq!(lines[2]["gbps"], 20.0);
        assert_eq!(lines[3]["test"], "rss_load_mb");
        assert_eq!(lines[4]["peer_mb"], 2.0);
    }

    #[test]
    fn table_has_a_row_per_test_and_the_bounds() {
        let tests = tests_for(8, 4, 2);
        let ours = EngineResults {
            figures: tests.iter().map(|t| (t.name(), Figure { tps: 8.0, spread: 0.0 })).collect(),
            ..Default::default()
        };
        let mut buf = Vec::new();
        write_table(&mut buf, &context(&tests), &tests, &ours, Some(&ours)).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(s.contains("| pp8 "), "{s}");
        assert!(s.contains("| tg4@d2 "), "{s}");
        assert!(s.contains("8.00"), "{s}");
        assert!(s.contains("| 80% "), "{s}");
        assert!(s.contains("| 10.0 "), "{s}");
        assert!(s.contains("2 threads: 20.0 GB/s"), "{s}");
        assert!(s.contains("tg4: 151 thread-pool sections"), "{s}");
        assert_eq!(s.lines().count(), 2 + 3 + 2 + 2);
        let header = s.lines().next().unwrap();
        assert_eq!(header.matches("of bound").count(), 2, "{header}");
    }
}
