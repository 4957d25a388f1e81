//! Fixture tooling: copies a GGUF's metadata (no tensors) into a new file,
//! like llama.cpp's own `ggml-vocab-*.gguf` files. llama.cpp checks every
//! tensor's bounds even when it loads only the vocabulary, so a header-only
//! slice of a model must become such a file before llama.cpp can read it.
//!
//! ```text
//! cargo run -p colloquy-engine --example vocab_only -- IN.gguf OUT.gguf
//! ```

use colloquy_engine::gguf::Gguf;
use colloquy_engine::gguf_writer::GgufWriter;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: vocab_only IN.gguf OUT.gguf".into());
    };
    let header = Gguf::open_vocab_only(input)?;
    GgufWriter::new().copy_metadata(&header, "").write(output)?;
    eprintln!("wrote {output}");
    Ok(())
}
