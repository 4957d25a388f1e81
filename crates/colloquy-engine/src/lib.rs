//! colloquy's inference engine.

pub mod arch;
pub mod attention;
pub mod batch;
pub mod bench_input;
pub mod error;
pub mod fetch;
pub mod gguf;
pub mod gguf_writer;
pub mod kernels;
pub mod kv;
pub mod linear;
pub mod model;
pub mod pool;
pub mod prefix;
pub mod runtime;
pub mod sampler;
pub mod synthetic;
pub mod tokenizer;

pub use error::{Error, Result};
