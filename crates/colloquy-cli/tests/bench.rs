//! `colloquy bench`: JSON lines on a tiny run, the peer protocol through a stand-in peer
//! script, and the message when the llama.cpp peer binary is missing.

use std::process::Command;

fn bench(extra: &[&str], peer: Option<&std::path::Path>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_colloquy"));
    cmd.args(["bench", "-p", "16", "-n", "4", "--depth", "8", "--reps", "2", "-t", "1"]).args(extra);
    match peer {
        Some(p) => cmd.env("COLLOQUY_PEER_LLAMACPP", p),
        None => cmd.env_remove("COLLOQUY_PEER_LLAMACPP"),
    };
    cmd.output().expect("colloquy runs")
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "colloquy bench failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn json_has_one_line_per_figure() {
    let lines = json_lines(&bench(&["--json", "--bandwidth-passes", "1"], None));
    let tests: Vec<&str> = lines.iter().map(|l| l["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp16", "tg4", "tg4@d8", "bandwidth", "rss_load_mb", "rss_peak_mb"]);
    for l in &lines[..3] {
        assert_eq!(l["threads"], 1);
        assert!(l["colloquy_tps"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["colloquy_spread"].as_f64().unwrap() >= 0.0, "{l}");
        assert!(l.get("peer_tps").is_none());
    }
    // Prompt tests have no memory bound; decode tests do, from the probe's line.
    assert!(lines[0].get("bound_tps").is_none(), "{}", lines[0]);
    let gbps = lines[3]["gbps"].as_f64().unwrap();
    assert!(gbps > 0.0 && lines[3]["threads"] == 1, "{}", lines[3]);
    for l in &lines[1..3] {
        let bytes = l["bytes_per_token"].as_f64().unwrap();
        // SmolLM2's tensors: about 98 MB a step.
        assert!((90e6..110e6).contains(&bytes), "{l}");
        let bound = l["bound_tps"].as_f64().unwrap();
        assert!((bound - gbps * 1e9 / bytes).abs() < 1e-6 * bound, "{l}");
        let frac = l["colloquy_of_bound"].as_f64().unwrap();
        assert!((frac - l["colloquy_tps"].as_f64().unwrap() / bound).abs() < 1e-9, "{l}");
        // One thread runs every section inline: no synchronizations.
        assert_eq!(l["sections_per_token"], 0.0, "{l}");
    }
    // The deeper test reads more K/V.
    assert!(lines[2]["bytes_per_token"].as_u64() > lines[1]["bytes_per_token"].as_u64());
    assert!(lines[5]["colloquy_mb"].as_f64().unwrap() >= lines[4]["colloquy_mb"].as_f64().unwrap());
}

#[test]
#[cfg(unix)]
fn peer_figures_and_ratio_come_from_the_peer_binary() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fake-peer");
    // It checks that it got the same settings, then prints canned figures.
    std::fs::write(
        &script,
        r#"#!/bin/sh
case "$*" in
  *"-p 16 -n 4 --depth 8 -t 1 --reps 2 --json"*) ;;
  *) echo "unexpected arguments: $*" >&2; exit 3 ;;
esac
echo '{"test":"system_info","llama_cpp":"AVX2 = 1 | AVX512 = 1"}'
echo '{"test":"pp16","threads":1,"tps":1.0,"spread":0.1}'
echo '{"test":"tg4","threads":1,"tps":2.0,"spread":0.2}'
echo '{"test":"tg4@d8","threads":1,"tps":4.0,"spread":0.4}'
echo '{"test":"rss_load_mb","threads":1,"mb":10.0}'
echo '{"test":"rss_peak_mb","threads":1,"mb":20.0}'
"#,
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let lines =
        json_lines(&bench(&["--json", "--peer", "llama.cpp", "--bandwidth-passes", "0"], Some(&script)));
    assert_eq!(lines[0]["test"], "pp16");
    assert_eq!(lines[0]["peer_tps"], 1.0);
    assert_eq!(lines[0]["peer_spread"], 0.1);
    let ratio = lines[0]["ratio"].as_f64().unwrap();
    assert!((ratio - lines[0]["colloquy_tps"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(lines[2]["test"], "tg4@d8");
    assert_eq!(lines[2]["peer_tps"], 4.0);
    assert_eq!(lines[3]["peer_mb"], 10.0);
    assert_eq!(lines[4]["peer_mb"], 20.0);

    // The table shows both engines and the ratio column.
    let out = bench(&["--peer", "llama.cpp", "--bandwidth-passes", "1"], Some(&script));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("llama.cpp t/s") && table.contains("colloquy/llama.cpp"), "{table}");
    assert!(table.contains("| tg4@d8 "), "{table}");
    assert!(table.contains("4.00 ± 0.40"), "{table}");
    assert!(table.contains("of bound") && table.contains("read bandwidth, 1 thread:"), "{table}");
}

#[test]
fn a_missing_peer_says_how_to_build_it() {
    let out =
        bench(&["--peer", "llama.cpp"], Some(std::path::Path::new("/nonexistent/colloquy-peer-llamacpp")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cargo build --release -p colloquy-peer-llamacpp"), "{err}");
}
