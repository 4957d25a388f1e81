//! The llama.cpp peer of `colloquy bench`: the separately built
//! `colloquy-peer-llamacpp` binary, run on the same GGUF file and thread
//! count, which prints its figures as JSON lines.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::{BenchArgs, EngineResults, Figure};

/// The environment variable naming the llama.cpp peer binary.
pub const PEER_ENV: &str = "COLLOQUY_PEER_LLAMACPP";

/// The file name of the llama.cpp peer binary.
const PEER_BIN: &str = "colloquy-peer-llamacpp";

/// Where the llama.cpp peer binary is: `$COLLOQUY_PEER_LLAMACPP` when set, otherwise
/// `colloquy-peer-llamacpp` next to this executable (in `target/<profile>/`). Fails with
/// the command that builds it when it is not there.
pub fn find_peer() -> Result<PathBuf> {
    let how = "build it with `cargo build --release -p colloquy-peer-llamacpp` \
               (see BENCHMARKS.md for the flags that give llama.cpp its native SIMD kernels), \
               or set COLLOQUY_PEER_LLAMACPP to its path";
    if let Some(p) = std::env::var_os(PEER_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{PEER_ENV}={} is not a file; {how}", p.display());
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let candidate = exe.with_file_name(format!("{PEER_BIN}{}", std::env::consts::EXE_SUFFIX));
    if candidate.is_file() {
        return Ok(candidate);
    }
    bail!("the llama.cpp peer binary is missing (looked for {}); {how}", candidate.display())
}

/// Runs the peer binary with the same settings and parses its JSON lines.
pub fn run_peer(
    bin: &std::path::Path,
    model: &std::path::Path,
    args: &BenchArgs,
    threads: usize,
) -> Result<EngineResults> {
    let output = Command::new(bin)
        .arg("--model")
        .arg(model)
        .args(["-p", &args.n_prompt.to_string()])
        .args(["-n", &args.n_gen.to_string()])
        .args(["--depth", &args.depth.to_string()])
        .args(["-t", &threads.to_string()])
        .args(["--reps", &args.reps.to_string()])
        .arg("--json")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", bin.display(), output.status);
    }
    let text = String::from_utf8(output.stdout).context("the peer printed non-UTF-8 output")?;
    let results = parse_peer(&text)?;
    if let Some(info) = peer_system_info(&text) {
        warn_if_not_native(&info);
    }
    Ok(results)
}

/// Parses the peer's JSON lines into results.
pub fn parse_peer(text: &str) -> Result<EngineResults> {
    let mut res = EngineResults::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("bad JSON line from the peer: {line}"))?;
        let Some(test) = v.get("test").and_then(|t| t.as_str()) else {
            bail!("peer line without a test name: {line}");
        };
        match test {
            "system_info" => {}
            "rss_load_mb" => res.rss_load_mb = v.get("mb").and_then(|x| x.as_f64()),
            "rss_peak_mb" => res.rss_peak_mb = v.get("mb").and_then(|x| x.as_f64()),
            name => {
                let (Some(tps), Some(spread)) =
                    (v.get("tps").and_then(|x| x.as_f64()), v.get("spread").and_then(|x| x.as_f64()))
                else {
                    bail!("peer line without tps or spread: {line}");
                };
                res.figures.push((name.to_string(), Figure { tps, spread }));
            }
        }
    }
    Ok(res)
}

/// llama.cpp's system-info line from the peer's output.
fn peer_system_info(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v.get("test")?.as_str()? == "system_info")
            .then(|| v.get("llama_cpp")?.as_str().map(str::to_string))?
    })
}

/// Warns when llama.cpp was built without the AVX2 kernels that this CPU has, which
/// makes the comparison unfair to it.
fn warn_if_not_native(info: &str) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && !info.contains("AVX2 = 1") {
        eprintln!(
            "warning: llama.cpp was built without AVX2 although this CPU has it; rebuild it with \
             CFLAGS=-march=native CXXFLAGS=-march=native (see BENCHMARKS.md)"
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = info;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peer_lines() {
        let text = r#"{"test":"system_info","llama_cpp":"CPU : AVX2 = 1"}
{"test":"pp512","threads":2,"tps":100.5,"spread":1.5,"samples":[100.5]}
{"test":"tg128","threads":2,"tps":50.0,"spread":0.5,"samples":[50.0]}
{"test":"rss_load_mb","threads":2,"mb":12.5}
{"test":"rss_peak_mb","threads":2,"mb":40.0}
"#;
        let r = parse_peer(text).unwrap();
        assert_eq!(r.get("pp512"), Some(Figure { tps: 100.5, spread: 1.5 }));
        assert_eq!(r.get("tg128").map(|f| f.tps), Some(50.0));
        assert_eq!(r.rss_load_mb, Some(12.5));
        assert_eq!(r.rss_peak_mb, Some(40.0));
        assert_eq!(peer_system_info(text).as_deref(), Some("CPU : AVX2 = 1"));
        assert!(parse_peer("not json").is_err());
        assert!(parse_peer(r#"{"test":"pp512"}"#).is_err());
    }
}
