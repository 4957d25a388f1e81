//! `--regex`, `--json-schema` and `--grammar` on `colloquy generate` and
//! `colloquy chat`, on the real SmolLM2: the output matches, and a bad
//! constraint is an error that says what to fix.

use std::process::Command;

fn colloquy(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_colloquy")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_and_chat_follow_their_constraint() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = colloquy(&[
        "generate",
        "--prompt",
        "The war ended in the year ",
        "--regex",
        "(19|20)[0-9]{2}",
        "--temperature",
        "0",
        "--threads",
        "2",
    ]);
    assert!(ok, "{err}");
    let year = out.trim();
    assert!(year.len() == 4 && (year.starts_with("19") || year.starts_with("20")), "{out:?}");

    let schema = dir.path().join("city.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
            "big": {"type": "boolean"}}, "required": ["city", "big"], "additionalProperties": false}"#,
    )
    .unwrap();
    let session = dir.path().join("chat.session");
    let (ok, out, err) = colloquy(&[
        "chat",
        "--json-schema",
        schema.to_str().unwrap(),
        "--temperature",
        "0",
        "--threads",
        "2",
        "--session",
        session.to_str().unwrap(),
        "Name a city in France.",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(v["city"].as_str().is_some_and(|c| c.chars().count() <= 20) && v["big"].is_boolean(), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    // The constrained answer is an ordinary turn of the saved session.
    let (ok, _, err) = colloquy(&[
        "chat",
        "--threads",
        "2",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "--session",
        session.to_str().unwrap(),
        "Why?",
    ]);
    assert!(ok, "{err}");

    let grammar = dir.path().join("sum.lark");
    std::fs::write(&grammar, "start: NUM \" + \" NUM\nNUM: /[1-9][0-9]?/\n").unwrap();
    let (ok, out, err) = colloquy(&[
        "generate",
        "--prompt",
        "An addition: ",
        "--grammar",
        grammar.to_str().unwrap(),
        "--threads",
        "2",
        "--temperature",
        "0",
    ]);
    assert!(ok, "{err}");
    let parts: Vec<&str> = out.trim().split(" + ").collect();
    assert!(
        parts.len() == 2 && parts.iter().all(|p| p.parse::<u32>().is_ok_and(|n| (1..100).contains(&n))),
        "{out:?}"
    );
}

#[test]
fn a_bad_constraint_is_an_error_that_says_what_to_fix() {
    let (ok, _, err) = colloquy(&["chat", "--threads", "2", "--regex", "[a&&b]", "Hi"]);
    assert!(!ok);
    assert!(err.contains("cannot be satisfied") && err.contains("loosen the regex"), "{err}");
    let (ok, _, err) = colloquy(&["generate", "--prompt", "x", "--regex", "(unclosed", "--threads", "2"]);
    assert!(!ok);
    assert!(err.contains("does not compile"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let (ok, _, err) = colloquy(&["chat", "--json-schema", bad.to_str().unwrap(), "Hi"]);
    assert!(!ok);
    assert!(err.contains("--json-schema") && err.contains("is not JSON"), "{err}");
    let (ok, _, err) = colloquy(&["chat", "--regex", "x", "--grammar", "g.lark", "Hi"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}
