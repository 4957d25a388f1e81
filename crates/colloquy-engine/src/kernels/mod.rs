//! Quantized CPU kernels (in progress).
