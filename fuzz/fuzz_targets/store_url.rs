//! Store URLs (`redis://…`, `redis+cluster://…`): any text is accepted or
//! refused with a typed error, and an accepted one is shown with its
//! password hidden (`user:***@`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for url in [text.to_string(), format!("redis://{text}"), format!("redis+cluster://{text}")] {
        match colloquy::store::RedisBackend::check_url(&url) {
            Ok(shown) => {
                let (_, rest) = shown.split_once("://").expect("a scheme");
                let (hosts, _) = rest.split_once('?').unwrap_or((rest, ""));
                if let Some((userinfo, _)) = hosts.rsplit_once('@') {
                    assert!(userinfo.ends_with(":***"), "a password shows: {shown}");
                }
            }
            Err(e) => assert!(matches!(e, colloquy::Error::StoreUrl { .. }), "{e}"),
        }
    }
});
