//! `colloquy pull hf:ORG/NAME/FILE` against a mock Hugging Face hub that this
//! test runs on loopback. It serves the hub's layout as the real one does:
//! `/{repo}/resolve/{revision}/{file}` answers a redirect carrying
//! `X-Repo-Commit` and `X-Linked-Etag` (the file's sha256), and the redirect
//! target serves the bytes with range requests. The real download code
//! (hf-hub, then our hash check) is what runs.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// The mock hub: one file, a request log, and a switch that stalls the body
/// halfway (so that the client can be killed mid-download).
struct Hub {
    addr: String,
    requests: Arc<Mutex<Vec<String>>>,
    stall: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

impl Hub {
    /// Serves `data` as `org/tiny-GGUF` `main` `model.gguf`; `etag` is what
    /// the hub claims (the data's sha256 unless a test lies).
    fn start(data: Vec<u8>, etag: Option<String>) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (data, requests) = (Arc::new(data), Arc::new(Mutex::new(Vec::new())));
        let (stall, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let etag = etag.unwrap_or_else(|| sha256(&data));
        let hub =
            Hub { addr: addr.clone(), requests: requests.clone(), stall: stall.clone(), sent: sent.clone() };
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (data, requests, stall, sent, etag, addr) =
                    (data.clone(), requests.clone(), stall.clone(), sent.clone(), etag.clone(), addr.clone());
                std::thread::spawn(move || serve(conn, &data, &requests, &stall, &sent, &etag, &addr));
            }
        });
        hub
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    mut conn: TcpStream,
    data: &[u8],
    requests: &Mutex<Vec<String>>,
    stall: &AtomicBool,
    sent: &AtomicUsize,
    etag: &str,
    addr: &str,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let Some(first) = head.first().cloned() else { return };
    let header = |name: &str| {
        head.iter().find_map(|h| {
            h.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
        })
    };
    let range = header("range");
    requests.lock().unwrap().push(format!("{first} range={range:?} auth={:?}", header("authorization")));
    let path = first.split_whitespace().nth(1).unwrap_or_default().to_string();
    if path == "/org/tiny-GGUF/resolve/main/model.gguf" {
        // The hub: where the bytes are, and what they are.
        let _ = write!(
            conn,
            "HTTP/1.1 302 Found\r\nLocation: http://{addr}/cdn/{etag}\r\nX-Repo-Commit: {COMMIT}\r\n\
             X-Linked-Etag: \"{etag}\"\r\nX-Linked-Size: {}\r\nETag: \"{etag}\"\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            data.len()
        );
        return;
    }
    if !path.starts_with("/cdn/") {
        let _ = write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    // The CDN: ranges as `bytes=A-` or `bytes=A-B`.
    let (start, end) = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| (a.parse().unwrap_or(0), b.parse::<usize>().map_or(data.len(), |b| b + 1)))
        .unwrap_or((0, data.len()));
    let (start, end) = (start.min(data.len()), end.min(data.len()));
    let body = &data[start..end];
    let _ = write!(
        conn,
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        end.max(1) - 1,
        data.len(),
        body.len()
    );
    for chunk in body.chunks(4096) {
        if stall.load(Ordering::SeqCst) && body.len() > 1 && sent.load(Ordering::SeqCst) >= data.len() / 2 {
            // Hold the rest back until the client is gone.
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        if conn.write_all(chunk).is_err() {
            return;
        }
        if body.len() > 1 {
            sent.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    }
}

fn fixture() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../colloquy-engine/tests/fixtures/tiny/qwen2.gguf");
    std::fs::read(p).unwrap()
}

fn pull(hub_addr: &str, hf_home: &Path, spec: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_colloquy"));
    c.args(["pull", spec])
        .env("HF_ENDPOINT", format!("http://{hub_addr}"))
        .env("HF_HOME", hf_home)
        .env("HF_TOKEN", "hf_test_token")
        .env_remove("HF_HUB_CACHE")
        .stdin(Stdio::null());
    c
}

fn ok(out: Output) -> PathBuf {
    assert!(out.status.success(), "pull failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn a_killed_download_resumes_and_a_second_pull_is_a_no_op() {
    let data = fixture();
    let hub = Hub::start(data.clone(), None);
    let home = tempfile::tempdir().unwrap();
    let spec = "hf:org/tiny-GGUF/model.gguf";

    // The first pull stalls halfway and is killed there.
    hub.stall.store(true, Ordering::SeqCst);
    let mut child =
        pull(&hub.addr, home.path(), spec).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while hub.sent.load(Ordering::SeqCst) < data.len() / 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the download never got halfway: {:?}",
            hub.requests()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    let blobs = home.path().join("hub/models--org--tiny-GGUF/blobs");
    let part = blobs.join(format!("{}.part", sha256(&data)));
    let had = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert!(had > 0 && had < data.len() as u64, "a partial download is left ({had} of {} bytes)", data.len());

    // The second pull resumes from there, and the file is whole and verified.
    hub.stall.store(false, Ordering::SeqCst);
    let path = ok(pull(&hub.addr, home.path(), spec).output().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(
        path.ends_with(format!("hub/models--org--tiny-GGUF/snapshots/{COMMIT}/model.gguf")),
        "{}",
        path.display()
    );
    assert_eq!(
        std::fs::read_to_string(home.path().join("hub/models--org--tiny-GGUF/refs/main")).unwrap().trim(),
        COMMIT
    );
    let log = hub.requests();
    assert!(
        log.iter().any(|r| r.contains(&format!("range=Some(\"bytes={had}-\")"))),
        "no resumed range request: {log:?}"
    );
    assert!(
        log.iter().any(|r| r.contains("/resolve/") && r.contains("Bearer hf_test_token")),
        "no token sent: {log:?}"
    );

    // A third pull makes no request at all, and the model loads from the hub's cache.
    let before = hub.requests().len();
    assert_eq!(ok(pull(&hub.addr, home.path(), spec).output().unwrap()), path);
    assert_eq!(hub.requests().len(), before, "a cached file made requests: {:?}", &hub.requests()[before..]);
}

#[test]
fn a_file_in_a_huggingface_hub_cache_is_used_in_place() {
    // Laid out as the Python huggingface_hub lays it out; the endpoint is closed.
    let data = fixture();
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--someone--cached-GGUF");
    let sha = sha256(&data);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join(format!("snapshots/{COMMIT}"))).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("blobs").join(&sha), &data).unwrap();
    std::os::unix::fs::symlink(format!("../../blobs/{sha}"), repo.join(format!("snapshots/{COMMIT}/m.gguf")))
        .unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let path = ok(pull(&closed, home.path(), "hf:someone/cached-GGUF/m.gguf").output().unwrap());
    assert_eq!(path, repo.join(format!("snapshots/{COMMIT}/m.gguf")));
    // And `--model hf:...` reads it (the tokenizer here).
    let out = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .args(["tokenize", "--model", "hf:someone/cached-GGUF/m.gguf", "--text", "Hello"])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", format!("http://{closed}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8(out.stdout).unwrap().starts_with('['));
}

#[test]
fn a_file_that_is_not_what_the_hub_said_is_refused_and_removed() {
    let data = fixture();
    let hub = Hub::start(data, Some("ab".repeat(32)));
    let home = tempfile::tempdir().unwrap();
    let out = pull(&hub.addr, home.path(), "hf:org/tiny-GGUF/model.gguf").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&"ab".repeat(32)) && err.contains("checksum mismatch"), "{err}");
    let snap = home.path().join(format!("hub/models--org--tiny-GGUF/snapshots/{COMMIT}/model.gguf"));
    assert!(!snap.exists() && std::fs::symlink_metadata(&snap).is_err(), "a bad file was left in the cache");
    // Bad specs and unknown files are clear errors, not panics.
    let out = pull(&hub.addr, home.path(), "hf:org/model.gguf").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("hf:ORG/NAME/FILE"));
    let out = pull(&hub.addr, home.path(), "hf:org/nope/x.gguf").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("HF_TOKEN"), "{err}");
}
