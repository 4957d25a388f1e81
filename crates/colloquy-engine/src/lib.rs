//! colloquy's inference engine.

pub mod error;
pub mod fetch;
pub mod gguf;
pub mod kernels;
