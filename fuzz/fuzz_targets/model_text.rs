//! The small text parsers around models: `hf:` specs and shard names give a
//! value or a typed error, and a streamed reasoning answer cut anywhere joins
//! to what the whole reply's split gives (with `<think>` opened by the answer
//! or by the prompt).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match colloquy_engine::fetch::HfFile::parse(text) {
        Ok(f) => assert!(!f.repo.is_empty() && !f.file.is_empty() && !f.file.contains("..")),
        Err(e) => assert!(matches!(e, colloquy_engine::error::Error::InvalidArgument(_)), "{e}"),
    }
    for count in [1, 3] {
        let _ = colloquy_engine::gguf::shard_paths(std::path::Path::new(text), count);
    }
    // The whole split, and the stream cut at a point the input picks, for an
    // answer that may open `<think>` and one whose prompt opened it.
    use colloquy_server::reasoning::{split, split_opened, ReasoningStream};
    for opened in [false, true] {
        let (r, c) = if opened { split_opened(text) } else { split(text) };
        let whole = (r.unwrap_or_default().to_string(), c.to_string());
        let cut = data.first().map_or(0, |&b| b as usize % (text.len() + 1));
        let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        let mut s = if opened { ReasoningStream::opened() } else { ReasoningStream::new() };
        let (mut r1, mut c1) = s.push(&text[..cut]);
        let (r2, c2) = s.push(&text[cut..]);
        let (r3, c3) = s.finish();
        r1 += &(r2 + &r3);
        c1 += &(c2 + &c3);
        assert_eq!((r1, c1), whole, "{text:?} (opened: {opened}) cut at {cut}");
    }
    let _ = colloquy::split_reasoning(text);
});
