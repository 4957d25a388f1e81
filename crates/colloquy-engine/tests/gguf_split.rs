//! Split models (`NAME-00001-of-00003.gguf`, as llama.cpp's `gguf-split`
//! writes them) load as one model: the shards, written here from a tiny
//! fixture model, give the same logits, bit for bit, as the single file, on
//! the fast and the precise path. A missing or misnumbered shard is a typed
//! error that names it.

use std::path::{Path, PathBuf};

use colloquy_engine::arch::LogitsFor;
use colloquy_engine::error::Error;
use colloquy_engine::gguf::{Gguf, Value};
use colloquy_engine::gguf_writer::GgufWriter;
use colloquy_engine::linear::Precision;
use colloquy_engine::model::{Model, ModelOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(name)
}

/// Writes `src` as `count` shards in `dir` (the tensors dealt out in order,
/// the metadata in the first, as gguf-split does); returns the first's path.
fn split(src: &Path, dir: &Path, count: usize, misnumber: bool) -> PathBuf {
    let g = Gguf::open(src).unwrap();
    let n = g.tensors().len();
    let mut shards: Vec<GgufWriter> = (0..count).map(|_| GgufWriter::new()).collect();
    shards[0].copy_metadata(&g, "");
    for (i, w) in shards.iter_mut().enumerate() {
        let no = if misnumber && i == 1 { 2 } else { i as u16 };
        w.set("split.no", Value::U16(no)).set("split.count", Value::U16(count as u16));
        w.set("split.tensors.count", Value::I32(n as i32));
    }
    for (i, t) in g.tensors().iter().enumerate() {
        let shard = i * count / n;
        shards[shard].add_tensor(&t.name, &t.dims, t.ty, g.tensor_data(t).to_vec()).unwrap();
    }
    let stem = src.file_stem().unwrap().to_str().unwrap();
    for (i, w) in shards.iter().enumerate() {
        w.write(dir.join(format!("{stem}-{:05}-of-{count:05}.gguf", i + 1))).unwrap();
    }
    dir.join(format!("{stem}-00001-of-{count:05}.gguf"))
}

fn logits(path: &Path, precision: Precision) -> Vec<f32> {
    let opts = ModelOptions { threads: 2, precision, n_ctx: Some(64), ..ModelOptions::default() };
    let model = Model::load(path, opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut kv = model.new_kv();
    model.forward(&mut kv, &[1, 17, 300, 42, 7, 999, 3], LogitsFor::All).unwrap()
}

#[test]
fn a_split_model_gives_the_single_files_logits() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["qwen2-q8_0.gguf", "llama3.gguf"] {
        let whole = fixture(name);
        let first = split(&whole, dir.path(), 3, false);
        let g = Gguf::open(&first).unwrap();
        assert_eq!(g.tensors().len(), Gguf::open(&whole).unwrap().tensors().len());
        for precision in [Precision::Fast, Precision::Precise] {
            let (a, b) = (logits(&whole, precision), logits(&first, precision));
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} {precision:?}");
        }
    }
}

#[test]
fn a_missing_or_misnumbered_shard_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let first = split(&fixture("qwen2.gguf"), dir.path(), 3, false);
    let third = dir.path().join("qwen2-00003-of-00003.gguf");
    std::fs::remove_file(&third).unwrap();
    match Gguf::open(&first) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("qwen2-00003-of-00003.gguf"), "{e}"),
        other => panic!("missing shard: {other:?}"),
    }
    // The metadata alone still reads (vocab-only needs the first shard only).
    assert!(Gguf::open_vocab_only(&first).is_ok());

    let dir = tempfile::tempdir().unwrap();
    let first = split(&fixture("qwen2.gguf"), dir.path(), 3, true);
    match Gguf::open(&first) {
        Err(e @ Error::GgufCorrupt(_)) => assert!(e.to_string().contains("split.no"), "{e}"),
        other => panic!("misnumbered shard: {other:?}"),
    }
    // A later shard, or a renamed first one, is no way in: the error says to open the first.
    std::fs::copy(&first, dir.path().join("renamed.gguf")).unwrap();
    for path in [dir.path().join("qwen2-00002-of-00003.gguf"), dir.path().join("renamed.gguf")] {
        match Gguf::open(&path) {
            Err(e @ Error::GgufCorrupt(_)) => assert!(e.to_string().contains("open the first shard"), "{e}"),
            other => panic!("{}: {other:?}", path.display()),
        }
    }
}
