//! colloquy: chat sessions as first-class, durable objects (API in progress, see issue 3).
