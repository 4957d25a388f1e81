//! The GGUF reader on the real model, and on damaged copies of its header:
//! every failure is a typed error, never a panic.

mod common;

use colloquy_engine::gguf::Gguf;
use colloquy_engine::model::{Model, ModelOptions};
use colloquy_engine::Error;
use common::*;

fn header(len: usize) -> Vec<u8> {
    let bytes = std::fs::read(model_path("smollm2")).unwrap();
    bytes[..len.min(bytes.len())].to_vec()
}

#[test]
fn reads_the_real_model() {
    let g = Gguf::open(model_path("smollm2")).unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    let t = g.tensor("token_embd.weight").unwrap();
    assert_eq!(t.dims, vec![576, 49152]);
    assert_eq!(g.tensors().len(), 272);
    assert!(g.tensors().iter().all(|t| t.offset % 32 == 0));
}

#[test]
fn truncated_files_give_typed_errors() {
    let full = std::fs::read(model_path("smollm2")).unwrap();
    let g = Gguf::from_bytes(full.clone()).unwrap();
    let data_start = g.tensors().iter().map(|t| t.offset).min().unwrap() as usize;
    // Cuts through the header, the tensor table and the tensor data.
    let mut cuts: Vec<usize> = (0..64).collect();
    cuts.extend((64..data_start).step_by(997));
    cuts.extend([data_start - 1, data_start + 10, full.len() / 2, full.len() - 1]);
    for cut in cuts {
        match Gguf::from_bytes(full[..cut].to_vec()) {
            Err(Error::GgufTruncated { .. }) | Err(Error::TensorOutOfBounds { .. }) => {}
            other => panic!("cut at {cut}: expected a truncation error, got {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn bad_magic_version_and_tensor_type_are_named() {
    let mut b = header(4096);
    b[0] = b'X';
    assert!(matches!(Gguf::from_bytes(b), Err(Error::GgufBadMagic { .. })));
    let mut b = header(4096);
    b[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(Gguf::from_bytes(b), Err(Error::GgufUnsupportedVersion(9))));

    // Rewrite the first tensor's type id to an unknown one.
    let mut full = std::fs::read(model_path("smollm2")).unwrap();
    let g = Gguf::from_bytes(full.clone()).unwrap();
    let first = &g.tensors()[0];
    let name = first.name.as_bytes();
    let at = full.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // name | n_dims u32 | dims u64 × n | type u32
    let type_at = at + 4 + 8 * first.dims.len();
    full[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    match Gguf::from_bytes(full) {
        Err(Error::UnknownTensorType { tensor, type_id: 99 }) => assert_eq!(tensor, first.name),
        other => panic!("expected UnknownTensorType, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn unknown_architecture_is_named() {
    let full = std::fs::read(model_path("smollm2")).unwrap();
    let pat = b"general.architecture";
    let at = full.windows(pat.len()).position(|w| w == pat).unwrap() + pat.len();
    // key | type u32 (8 = string) | len u64 | "llama"
    let mut changed = full.clone();
    changed[at + 12..at + 17].copy_from_slice(b"lxama");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    std::fs::write(&path, &changed).unwrap();
    match Model::load(&path, ModelOptions::default()) {
        Err(Error::UnknownArchitecture(a)) => assert_eq!(a, "lxama"),
        other => panic!("expected UnknownArchitecture, got {:?}", other.map(|_| ())),
    }
}
