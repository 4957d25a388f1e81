//! Writing GGUF files (version 3), laid out as llama.cpp's `gguf-py` writes
//! them: the header, the metadata, the tensor table, then each tensor's data
//! at a multiple of the alignment. Used to make test and synthetic models,
//! such as a small model that carries a real model's vocabulary and chat
//! template ([`GgufWriter::copy_metadata`]).

use std::path::Path;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};
use crate::kernels::GgmlType;

/// The alignment of tensor data when `general.alignment` is not set.
const DEFAULT_ALIGNMENT: usize = 32;

/// A GGUF file being assembled in memory.
///
/// ```
/// use colloquy_engine::gguf::{Gguf, Value};
/// use colloquy_engine::gguf_writer::GgufWriter;
/// use colloquy_engine::kernels::GgmlType;
///
/// let mut w = GgufWriter::new();
/// w.set("general.architecture", Value::String("llama".into()));
/// w.add_tensor("v", &[4], GgmlType::F32, [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect())?;
/// let g = Gguf::from_bytes(w.to_bytes())?;
/// assert_eq!(g.get_str("general.architecture")?, "llama");
/// assert_eq!(g.tensor_data(g.tensor("v").unwrap()).len(), 16);
/// # Ok::<(), colloquy_engine::error::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<Tensor>,
}

#[derive(Debug)]
struct Tensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Sets a metadata key (replacing an earlier value of the same key).
    pub fn set(&mut self, key: &str, value: Value) -> &mut GgufWriter {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    /// Copies every metadata key of `from` that starts with `prefix` (for
    /// example `tokenizer.`: the vocabulary and the chat template).
    pub fn copy_metadata(&mut self, from: &Gguf, prefix: &str) -> &mut GgufWriter {
        let mut keys: Vec<&String> = from.metadata().keys().filter(|k| k.starts_with(prefix)).collect();
        keys.sort();
        for k in keys {
            if let Some(v) = from.get(k) {
                self.set(k, v.clone());
            }
        }
        self
    }

    /// Adds a tensor of type `ty` with ggml's dimensions `dims` (the
    /// innermost, contiguous one first) and its raw data.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the name is taken, or `data` is not
    /// exactly the bytes those dimensions take.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut GgufWriter> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::InvalidArgument(format!("tensor {name} is added twice")));
        }
        let (&first, rest) = dims
            .split_first()
            .ok_or_else(|| Error::InvalidArgument(format!("tensor {name} has no dimensions")))?;
        let rows: u64 = rest.iter().product();
        let want = usize::try_from(first)
            .ok()
            .and_then(|n| ty.row_bytes(n))
            .and_then(|row| row.checked_mul(usize::try_from(rows).ok()?));
        if want != Some(data.len()) {
            return Err(Error::InvalidArgument(format!(
                "tensor {name} of {ty} {dims:?} needs {want:?} bytes, got {}",
                data.len()
            )));
        }
        self.tensors.push(Tensor { name: name.to_string(), dims: dims.to_vec(), ty, data });
        Ok(self)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (mut out, align) = self.head();
        for t in &self.tensors {
            out.extend(&t.data);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        out
    }

    /// Everything before the tensor data (padded to the alignment), and the alignment.
    fn head(&self) -> (Vec<u8>, usize) {
        let align = self
            .metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .and_then(|a| usize::try_from(a).ok())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT);
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset += t.data.len().next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        (out, align)
    }

    /// Writes the file atomically (a temporary file beside it, synced, then
    /// a rename), streaming the tensors so that a large model is not copied.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        use std::io::Write;
        let path = path.as_ref();
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let (head, align) = self.head();
        let pad = vec![0u8; align];
        let mut written = head.len();
        let mut put = |w: &mut std::io::BufWriter<std::fs::File>| -> std::io::Result<()> {
            w.write_all(&head)?;
            for t in &self.tensors {
                w.write_all(&t.data)?;
                written += t.data.len();
                let n = written.next_multiple_of(align) - written;
                w.write_all(&pad[..n])?;
                written += n;
            }
            w.flush()?;
            w.get_ref().sync_all()
        };
        put(&mut w).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// GGUF's numbering of value types.
fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Array(items) => {
            // An empty array's element type is not recorded in `Value`; u8 reads back the same.
            out.extend(items.first().map_or(0, type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_tensors_read_back() {
        let mut w = GgufWriter::new();
        w.set("a.str", Value::String("hé".into()))
            .set("a.u32", Value::U32(7))
            .set("a.f32", Value::F32(0.5))
            .set("a.bool", Value::Bool(true))
            .set("a.list", Value::Array(vec![Value::String("x".into()), Value::String("yz".into())]))
            .set("a.ints", Value::Array(vec![Value::I32(-1), Value::I32(2)]))
            .set("a.empty", Value::Array(Vec::new()))
            .set("a.u32", Value::U32(8));
        let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        w.add_tensor("m", &[3, 2], GgmlType::F32, f32s.clone()).unwrap();
        w.add_tensor("q", &[32], GgmlType::Q8_0, vec![1u8; 34]).unwrap();
        let g = Gguf::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(g.get_str("a.str").unwrap(), "hé");
        assert_eq!(g.get_u64("a.u32").unwrap(), 8);
        assert_eq!(g.get_f32("a.f32").unwrap(), 0.5);
        assert!(g.get_bool("a.bool").unwrap());
        assert_eq!(g.get_str_array("a.list").unwrap(), ["x", "yz"]);
        assert_eq!(g.get_i64_array("a.ints").unwrap(), [-1, 2]);
        assert_eq!(g.tensor_data(g.tensor("m").unwrap()), &f32s[..]);
        let q = g.tensor("q").unwrap();
        assert_eq!(q.offset % 32, 0);
        assert_eq!(g.tensor_data(q), &[1u8; 34][..]);
        // Written to a file, the same bytes.
        let dir = std::env::temp_dir().join(format!("gguf-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        w.write(dir.join("m.gguf")).unwrap();
        assert_eq!(std::fs::read(dir.join("m.gguf")).unwrap(), w.to_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_tensors_are_refused() {
        let mut w = GgufWriter::new();
        assert!(w.add_tensor("x", &[3], GgmlType::F32, vec![0; 11]).is_err());
        assert!(w.add_tensor("x", &[31], GgmlType::Q8_0, vec![0; 34]).is_err());
        assert!(w.add_tensor("x", &[], GgmlType::F32, vec![]).is_err());
        w.add_tensor("x", &[1], GgmlType::F32, vec![0; 4]).unwrap();
        assert!(w.add_tensor("x", &[1], GgmlType::F32, vec![0; 4]).is_err());
    }
}
