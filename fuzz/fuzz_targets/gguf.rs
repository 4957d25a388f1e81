//! Any byte string must parse to a GGUF or a typed error, never a panic, and a
//! parsed file's tensor data must be readable within bounds.
#![no_main]

use colloquy_engine::gguf::Gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = Gguf::from_bytes(data.to_vec()) {
        for t in g.tensors() {
            let _ = g.tensor_data(t).len();
        }
        let _ = g.get_str("general.architecture");
        let _ = g.get_str_array("tokenizer.ggml.tokens");
    }
});
