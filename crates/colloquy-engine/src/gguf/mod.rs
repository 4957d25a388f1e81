//! GGUF reader: header, typed metadata, tensor table, memory-mapped data.
//!
//! Every read is bounds-checked, so a truncated or corrupt file gives a typed
//! [`Error`] rather than a panic. Array lengths are checked against the bytes
//! left in the file before anything is allocated, so a hostile header cannot
//! make the reader allocate more than the file's size.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::kernels::GgmlType;

mod split;
pub use split::shard_paths;
use split::Spliced;

const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `u8`
    U8(u8),
    /// `i8`
    I8(i8),
    /// `u16`
    U16(u16),
    /// `i16`
    I16(i16),
    /// `u32`
    U32(u32),
    /// `i32`
    I32(i32),
    /// `f32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// UTF-8 string (invalid UTF-8 is replaced, never rejected).
    String(String),
    /// `u64`
    U64(u64),
    /// `i64`
    I64(i64),
    /// `f64`
    F64(f64),
    /// A homogeneous array.
    Array(Vec<Value>),
}

impl Value {
    /// The GGUF name of this value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
            Value::Array(_) => "array",
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => self.as_u64().map(|v| v as f32),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the row length (contiguous).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Data size in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Total number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
    /// The shards of a split model, side by side.
    Spliced(Spliced),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
            Backing::Spliced(s) => s.bytes(),
        }
    }
}

/// What one file's header says.
struct Parsed {
    version: u32,
    metadata: HashMap<String, Value>,
    tensors: Vec<TensorInfo>,
}

/// A parsed GGUF file: metadata, tensor table and the (memory-mapped) bytes.
pub struct Gguf {
    bytes: Backing,
    /// GGUF format version (2 or 3).
    pub version: u32,
    metadata: HashMap<String, Value>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    vocab_only: bool,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Opens and memory-maps a GGUF file, then parses its header. The first
    /// shard of a split model (`NAME-00001-of-00003.gguf`, as llama.cpp's
    /// `gguf-split` writes it) opens the whole model: its shards are read
    /// from beside it and appear as one file.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only. Like every mmap-based loader, we rely on
        // the model file not being truncated by another process while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let first = Self::parse(Backing::Mmap(map), false)?;
        match first.split_count()? {
            n if n > 1 => Self::open_split(path, n, first.metadata),
            _ => Ok(first),
        }
    }

    /// Opens a GGUF for its metadata only, as llama.cpp's `vocab_only` does:
    /// enough for the tokenizer and the chat template. The tensor table is not
    /// read, so the tensor data may be truncated or absent (a header-only
    /// slice of a large model); [`Gguf::tensors`] is then empty.
    ///
    /// ```
    /// use colloquy_engine::gguf::Gguf;
    ///
    /// // A header that announces one tensor whose data is missing.
    /// let mut bytes = b"GGUF".to_vec();
    /// bytes.extend(3u32.to_le_bytes());
    /// bytes.extend(1u64.to_le_bytes()); // tensors
    /// bytes.extend(0u64.to_le_bytes()); // metadata entries
    /// let path = std::env::temp_dir().join(format!("vocab-only-{}.gguf", std::process::id()));
    /// std::fs::write(&path, &bytes)?;
    /// assert!(Gguf::open(&path).is_err());
    /// let header = Gguf::open_vocab_only(&path)?;
    /// assert!(header.is_vocab_only() && header.tensors().is_empty());
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_vocab_only(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: as in `open`.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(Backing::Mmap(map), true)
    }

    /// Parses a GGUF held in memory (used by tests and the fuzzer).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf> {
        Self::parse(Backing::Owned(bytes), false)
    }

    /// Whether this was opened with [`Gguf::open_vocab_only`] (no tensors).
    pub fn is_vocab_only(&self) -> bool {
        self.vocab_only
    }

    fn parse(bytes: Backing, vocab_only: bool) -> Result<Gguf> {
        let parsed = parse_at(bytes.bytes(), 0, vocab_only)?;
        Self::assemble(bytes, parsed, vocab_only)
    }

    fn assemble(bytes: Backing, p: Parsed, vocab_only: bool) -> Result<Gguf> {
        let mut by_name = HashMap::with_capacity(p.tensors.len());
        for (i, t) in p.tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(corrupt(format!("tensor {} appears twice", t.name)));
            }
        }
        Ok(Gguf { bytes, version: p.version, metadata: p.metadata, tensors: p.tensors, by_name, vocab_only })
    }

    /// All bytes of the file (of a split model: its shards side by side, each
    /// at a page boundary, which the tensor offsets account for).
    pub fn bytes(&self) -> &[u8] {
        self.bytes.bytes()
    }

    /// Tells the kernel that the mapped pages are not needed now (after the
    /// weights were repacked into memory), so they stop counting toward the
    /// process's resident memory. Later reads fault them back in from the page
    /// cache, so this never changes what the file reads as.
    pub fn release_pages(&self) {
        match &self.bytes {
            Backing::Mmap(m) => {
                // SAFETY: the map is a read-only, file-backed, private mapping: after
                // MADV_DONTNEED its pages read back from the file, unchanged.
                let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
            }
            #[cfg(unix)]
            Backing::Spliced(s) => s.release(0, s.bytes().len()),
            _ => {}
        }
    }

    /// Like [`release_pages`](Self::release_pages), for the bytes of one tensor
    /// (called right after it was repacked, so the peak resident memory does not
    /// hold both copies).
    pub fn release_tensor(&self, info: &TensorInfo) {
        self.release_range(info.offset as usize, info.size as usize);
    }

    /// Like [`release_pages`](Self::release_pages), for `len` bytes of the
    /// file from `offset` (pages partly in the range are released too; they
    /// read back unchanged).
    pub fn release_range(&self, offset: usize, len: usize) {
        match &self.bytes {
            Backing::Mmap(m) if offset.checked_add(len).is_some_and(|end| end <= m.len()) => {
                // SAFETY: as in `release_pages`; memmap2 aligns the range to pages.
                let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
            }
            #[cfg(unix)]
            Backing::Spliced(s) => s.release(offset, len),
            _ => {}
        }
    }

    /// Drops the tokenizer's arrays (`tokenizer.ggml.tokens`, `.scores`,
    /// `.token_type`, `.merges`) from the metadata, once a
    /// [`Tokenizer`](crate::tokenizer::Tokenizer) holds them: for a
    /// 262k-token vocabulary they take tens of MB.
    pub fn forget_vocabulary(&mut self) {
        self.metadata.retain(|k, v| !(k.starts_with("tokenizer.ggml.") && matches!(v, Value::Array(_))));
        self.metadata.shrink_to_fit();
    }

    /// All metadata entries.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// One metadata value, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            v => Err(type_err(key, "string", v)),
        }
    }

    /// A required unsigned integer value (any integer width).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| type_err(key, "unsigned integer", v))
    }

    /// A required float value (integers are accepted and converted).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f32().ok_or_else(|| type_err(key, "float", v))
    }

    /// A required unsigned integer that fits in a `usize` (llama.cpp's `get_key`).
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        usize::try_from(self.get_u64(key)?).map_err(|_| Error::GgufCorrupt(format!("{key} is too large")))
    }

    /// An optional unsigned integer: `None` when the key is absent, an error
    /// when it is there with the wrong type (llama.cpp's `get_key(…, false)`).
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|_| self.get_usize(key)).transpose()
    }

    /// An optional float (see [`opt_usize`](Self::opt_usize)).
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key).map(|_| self.get_f32(key)).transpose()
    }

    /// An optional string (see [`opt_usize`](Self::opt_usize)).
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|_| self.get_str(key)).transpose()
    }

    /// A required bool value.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(type_err(key, "bool", v)),
        }
    }

    /// A required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(type_err(key, "string array", v)),
            })
            .collect()
    }

    /// A required array of numbers, converted to f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.get_array(key)?
            .iter()
            .map(|v| v.as_f32().ok_or_else(|| type_err(key, "number array", v)))
            .collect()
    }

    /// A required array of integers, converted to i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        self.get_array(key)?
            .iter()
            .map(|v| match *v {
                Value::I32(x) => Ok(x.into()),
                Value::I64(x) => Ok(x),
                Value::I8(x) => Ok(x.into()),
                Value::I16(x) => Ok(x.into()),
                ref v => v
                    .as_u64()
                    .and_then(|x| i64::try_from(x).ok())
                    .ok_or_else(|| type_err(key, "integer array", v)),
            })
            .collect()
    }

    fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.require(key)? {
            Value::Array(a) => Ok(a),
            v => Err(type_err(key, "array", v)),
        }
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| Error::MissingMetadata(key.to_string()))
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor's entry by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's raw bytes. Bounds were checked when the file was parsed.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = info.offset as usize;
        &self.bytes()[start..start + info.size as usize]
    }
}

/// Parses one file's header from `data`, which starts at `base` in the
/// model's bytes (tensor offsets are made relative to the model's bytes).
fn parse_at(data: &[u8], base: u64, vocab_only: bool) -> Result<Parsed> {
    let mut r = Reader { data, pos: 0 };
    let magic: [u8; 4] = r.take(4)?.try_into().map_err(|_| corrupt("magic"))?;
    if magic != MAGIC {
        return Err(Error::GgufBadMagic { found: magic });
    }
    let version = r.u32()?;
    if version != 2 && version != 3 {
        return Err(Error::GgufUnsupportedVersion(version));
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    // Each metadata entry takes at least 12 bytes, each tensor entry at least 24.
    r.check_count(n_kv, 12)?;
    if !vocab_only {
        r.check_count(n_tensors, 24)?;
    }

    let mut metadata = HashMap::with_capacity(n_kv as usize);
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        metadata.insert(key, value);
    }
    if vocab_only {
        return Ok(Parsed { version, metadata, tensors: Vec::new() });
    }

    let mut raw = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > 4 {
            return Err(corrupt(format!("tensor {name} has {n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64()?);
        }
        let type_id = r.u32()?;
        let offset = r.u64()?;
        raw.push((name, dims, type_id, offset));
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => return Err(corrupt("general.alignment is not a power of two")),
        },
    };
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let len = data.len() as u64;

    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, type_id, rel) in raw {
        let ty = GgmlType::from_id(type_id)
            .ok_or_else(|| Error::UnknownTensorType { tensor: name.clone(), type_id })?;
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| corrupt(format!("tensor {name} has an overflowing shape")))?;
        let size = row_bytes_checked(ty, dims[0])
            .and_then(|row| row.checked_mul(elements / dims[0].max(1)))
            .ok_or_else(|| {
                corrupt(format!(
                    "tensor {name}: row length {} is not a multiple of {}'s block size",
                    dims[0],
                    ty.name()
                ))
            })?;
        if rel % alignment != 0 {
            return Err(corrupt(format!("tensor {name} is not aligned")));
        }
        let offset =
            data_start.checked_add(rel).ok_or_else(|| corrupt(format!("tensor {name} offset overflows")))?;
        let end = offset.saturating_add(size);
        if end > len {
            return Err(Error::TensorOutOfBounds { tensor: name, end, len });
        }
        tensors.push(TensorInfo { name, dims, ty, offset: base + offset, size });
    }
    Ok(Parsed { version, metadata, tensors })
}

fn row_bytes_checked(ty: GgmlType, n: u64) -> Option<u64> {
    let n = usize::try_from(n).ok()?;
    ty.row_bytes(n).map(|b| b as u64)
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::GgufCorrupt(msg.into())
}

fn type_err(key: &str, expected: &'static str, found: &Value) -> Error {
    Error::MetadataType { key: key.to_string(), expected, found: found.type_name() }
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::GgufTruncated {
                offset: self.pos as u64,
                needed: n as u64,
                len: self.data.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Fails early when `count` items of at least `min_size` bytes cannot fit.
    fn check_count(&self, count: u64, min_size: u64) -> Result<()> {
        let left = (self.data.len() - self.pos) as u64;
        match count.checked_mul(min_size) {
            Some(need) if need <= left => Ok(()),
            _ => Err(Error::GgufTruncated {
                offset: self.pos as u64,
                needed: count.saturating_mul(min_size),
                len: self.data.len() as u64,
            }),
        }
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| corrupt("string length overflows"))?;
        let bytes = self.take(len)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(corrupt(format!("bool value {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(corrupt("arrays nested too deeply"));
                }
                let elem_ty = self.u32()?;
                let n = self.u64()?;
                let min = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(corrupt(format!("unknown metadata type {t}"))),
                };
                self.check_count(n, min)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            t => return Err(corrupt(format!("unknown metadata type {t}"))),
        })
    }
}
