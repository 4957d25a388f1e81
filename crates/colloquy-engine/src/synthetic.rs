//! Synthetic models: a real model's vocabulary, special tokens and chat
//! template (copied from its GGUF header, which may be a header-only slice)
//! on random weights of a chosen shape. Their answers are noise; they exist
//! to test tokenizers, templates and sessions at a real vocabulary, and to
//! measure the engine at a real size when the real weights are out of reach.
//! Everything they write names them "synthetic".

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};
use crate::gguf_writer::GgufWriter;
use crate::kernels::{self, GgmlType};

/// The shape of a `qwen2` model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qwen2Shape {
    /// Hidden size.
    pub n_embd: usize,
    /// Decoder blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Feed-forward width.
    pub n_ff: usize,
    /// Trained context length.
    pub n_ctx: usize,
}

impl Qwen2Shape {
    /// A few hundred thousand parameters besides the embeddings: for tests.
    pub const TINY: Qwen2Shape =
        Qwen2Shape { n_embd: 64, n_layer: 2, n_head: 4, n_head_kv: 2, n_ff: 128, n_ctx: 2048 };

    /// Qwen2.5-1.5B's shape (as DeepSeek-R1-Distill-Qwen-1.5B has it).
    pub const QWEN2_5_1_5B: Qwen2Shape =
        Qwen2Shape { n_embd: 1536, n_layer: 28, n_head: 12, n_head_kv: 2, n_ff: 8960, n_ctx: 131_072 };
}

/// A deterministic xorshift stream of roughly normal values.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f32 {
        // Sum of four uniforms: mean 0, variance 1/3, scaled to about 1.
        let mut s = 0.0f32;
        for _ in 0..4 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            s += (self.0 >> 40) as f32 / (1u64 << 24) as f32;
        }
        (s - 2.0) * 1.73
    }

    fn values(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| offset + scale * self.next()).collect()
    }
}

/// A synthetic `qwen2` model with `header`'s `tokenizer.*` metadata (its
/// vocabulary, merges, special tokens and chat template), the given shape,
/// and random weights drawn from `seed`: matrices in `weights` (F32, F16 or
/// Q8_0), norms and biases in F32, embeddings tied to the output head.
///
/// # Errors
/// [`Error::InvalidArgument`] when the header has no vocabulary, the shape's
/// widths are not whole blocks of `weights`, or `weights` cannot be written.
pub fn qwen2_like(header: &Gguf, shape: &Qwen2Shape, weights: GgmlType, seed: u64) -> Result<GgufWriter> {
    if !matches!(weights, GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0) {
        return Err(Error::InvalidArgument(format!("synthetic weights are F32, F16 or Q8_0, not {weights}")));
    }
    let n_vocab = match header.get("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) if !tokens.is_empty() => tokens.len(),
        _ => return Err(Error::InvalidArgument("the header has no tokenizer.ggml.tokens".into())),
    };
    let s = shape;
    let head_dim = s.n_embd / s.n_head.max(1);
    let (q_dim, kv_dim) = (s.n_head * head_dim, s.n_head_kv * head_dim);
    let source = header.get_str("general.name").unwrap_or("a GGUF header");
    let mut w = GgufWriter::new();
    let u32v = |v: usize| Value::U32(v as u32);
    w.set("general.architecture", Value::String("qwen2".into()))
        .set(
            "general.name",
            Value::String(format!(
                "synthetic qwen2 {}x{} (random weights, vocabulary of {source})",
                s.n_layer, s.n_embd
            )),
        )
        .set("qwen2.context_length", u32v(s.n_ctx))
        .set("qwen2.embedding_length", u32v(s.n_embd))
        .set("qwen2.block_count", u32v(s.n_layer))
        .set("qwen2.feed_forward_length", u32v(s.n_ff))
        .set("qwen2.attention.head_count", u32v(s.n_head))
        .set("qwen2.attention.head_count_kv", u32v(s.n_head_kv))
        .set("qwen2.rope.dimension_count", u32v(head_dim))
        .set("qwen2.rope.freq_base", Value::F32(10_000.0))
        .set("qwen2.attention.layer_norm_rms_epsilon", Value::F32(1e-6))
        .copy_metadata(header, "tokenizer.");

    let mut out = Tensors { w, noise: Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1), weights };
    // Embeddings of about unit size per row, so the tied head gives varied logits.
    out.matrix("token_embd.weight", s.n_embd, n_vocab, (s.n_embd as f32).sqrt() * 0.5)?;
    for i in 0..s.n_layer {
        let t = |n: &str| format!("blk.{i}.{n}");
        out.vector(&t("attn_norm.weight"), s.n_embd, 0.1, 1.0)?;
        out.matrix(&t("attn_q.weight"), s.n_embd, q_dim, 1.0)?;
        out.matrix(&t("attn_k.weight"), s.n_embd, kv_dim, 1.0)?;
        out.matrix(&t("attn_v.weight"), s.n_embd, kv_dim, 1.0)?;
        out.vector(&t("attn_q.bias"), q_dim, 0.5, 0.0)?;
        out.vector(&t("attn_k.bias"), kv_dim, 0.5, 0.0)?;
        out.vector(&t("attn_v.bias"), kv_dim, 0.5, 0.0)?;
        out.matrix(&t("attn_output.weight"), q_dim, s.n_embd, 1.0)?;
        out.vector(&t("ffn_norm.weight"), s.n_embd, 0.1, 1.0)?;
        out.matrix(&t("ffn_gate.weight"), s.n_embd, s.n_ff, 1.0)?;
        out.matrix(&t("ffn_up.weight"), s.n_embd, s.n_ff, 1.0)?;
        out.matrix(&t("ffn_down.weight"), s.n_ff, s.n_embd, 1.0)?;
    }
    out.vector("output_norm.weight", s.n_embd, 0.1, 1.0)?;
    Ok(out.w)
}

/// The file being written, with its noise and its matrices' type.
struct Tensors {
    w: GgufWriter,
    noise: Noise,
    weights: GgmlType,
}

impl Tensors {
    /// An `n_out` x `n_in` matrix of values about `scale / sqrt(n_in)`.
    fn matrix(&mut self, name: &str, n_in: usize, n_out: usize, scale: f32) -> Result<()> {
        let ty = self.weights;
        let row = ty
            .row_bytes(n_in)
            .ok_or_else(|| Error::InvalidArgument(format!("{name}: {n_in} is not whole {ty} blocks")))?;
        let x = self.noise.values(n_in * n_out, scale / (n_in as f32).sqrt(), 0.0);
        let mut data = vec![0u8; row * n_out];
        kernels::quantize_row(ty, &x, &mut data)?;
        self.w.add_tensor(name, &[n_in as u64, n_out as u64], ty, data)?;
        Ok(())
    }

    /// An F32 vector of `n` values about `offset`, spread by `scale`.
    fn vector(&mut self, name: &str, n: usize, scale: f32, offset: f32) -> Result<()> {
        let data = self.noise.values(n, scale, offset).iter().flat_map(|x| x.to_le_bytes()).collect();
        self.w.add_tensor(name, &[n as u64], GgmlType::F32, data)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Gguf {
        let mut h = GgufWriter::new();
        let tokens = (0..40).map(|i| Value::String(format!("t{i}"))).collect();
        h.set("general.name", Value::String("test header".into()))
            .set("tokenizer.ggml.model", Value::String("gpt2".into()))
            .set("tokenizer.ggml.tokens", Value::Array(tokens))
            .set("tokenizer.chat_template", Value::String("{{ messages }}".into()))
            .set("other.key", Value::U32(1));
        Gguf::from_bytes(h.to_bytes()).unwrap()
    }

    #[test]
    fn copies_the_vocabulary_and_template_and_nothing_else() {
        let shape = Qwen2Shape { n_embd: 32, n_layer: 1, n_head: 2, n_head_kv: 1, n_ff: 64, n_ctx: 64 };
        let g =
            Gguf::from_bytes(qwen2_like(&header(), &shape, GgmlType::Q8_0, 1).unwrap().to_bytes()).unwrap();
        assert_eq!(g.get_str("tokenizer.chat_template").unwrap(), "{{ messages }}");
        assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 40);
        assert!(g.get("other.key").is_none());
        assert!(g.get_str("general.name").unwrap().starts_with("synthetic"));
        assert_eq!(g.tensor("token_embd.weight").unwrap().dims, [32, 40]);
        assert_eq!(g.tensor("blk.0.ffn_down.weight").unwrap().ty, GgmlType::Q8_0);
        // The same seed writes the same file.
        let again = qwen2_like(&header(), &shape, GgmlType::Q8_0, 1).unwrap().to_bytes();
        assert_eq!(g.bytes(), &again[..]);
    }

    #[test]
    fn refuses_what_it_cannot_write() {
        let shape = Qwen2Shape { n_embd: 33, ..Qwen2Shape::TINY };
        assert!(qwen2_like(&header(), &shape, GgmlType::Q8_0, 1).is_err());
        assert!(qwen2_like(&header(), &Qwen2Shape::TINY, GgmlType::Q4_K, 1).is_err());
        let empty = Gguf::from_bytes(GgufWriter::new().to_bytes()).unwrap();
        assert!(qwen2_like(&empty, &Qwen2Shape::TINY, GgmlType::F32, 1).is_err());
    }
}
