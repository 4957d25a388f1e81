//! K/V storage: the element types and the rows of one block.

use std::collections::BTreeMap;
use std::sync::Mutex;

use half::f16;

use super::KvLayout;

/// How K and V are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// Half precision, as llama.cpp stores them by default.
    F16,
    /// Full precision (the precise path).
    F32,
    /// 8-bit blocks of 32 values with an f16 scale (ggml's Q8_0): about half
    /// the bytes of f16. Lossy: results differ slightly from the f16 cache.
    Q8_0,
}

impl KvDtype {
    /// Bytes that `n` stored elements take (`n` is a multiple of 32 for Q8_0).
    /// Saturates instead of overflowing, so sizes read from untrusted bytes
    /// can be compared safely.
    pub fn bytes(self, n: usize) -> usize {
        match self {
            KvDtype::F16 => n.saturating_mul(2),
            KvDtype::F32 => n.saturating_mul(4),
            KvDtype::Q8_0 => (n / 32).saturating_mul(34),
        }
    }

    /// A stable byte for file formats.
    pub fn to_byte(self) -> u8 {
        match self {
            KvDtype::F16 => 0,
            KvDtype::F32 => 1,
            KvDtype::Q8_0 => 2,
        }
    }

    /// The inverse of [`to_byte`](Self::to_byte).
    pub fn from_byte(b: u8) -> Option<KvDtype> {
        match b {
            0 => Some(KvDtype::F16),
            1 => Some(KvDtype::F32),
            2 => Some(KvDtype::Q8_0),
            _ => None,
        }
    }
}

/// Storage for one block's keys or values: `[layer][token][kv_head * head_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub enum KvData {
    /// Half precision.
    F16(Vec<f16>),
    /// Full precision.
    F32(Vec<f32>),
    /// Q8_0 blocks.
    Q8_0(Vec<u8>),
}

/// A borrowed run of K or V rows.
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    /// Half precision.
    F16(&'a [f16]),
    /// Full precision.
    F32(&'a [f32]),
    /// Q8_0 blocks (34 bytes per 32 values).
    Q8_0(&'a [u8]),
}

impl KvRows<'_> {
    /// No rows, of `dtype`.
    pub fn empty(dtype: KvDtype) -> KvRows<'static> {
        match dtype {
            KvDtype::F16 => KvRows::F16(&[]),
            KvDtype::F32 => KvRows::F32(&[]),
            KvDtype::Q8_0 => KvRows::Q8_0(&[]),
        }
    }
}

impl KvData {
    /// The storage type.
    pub fn dtype(&self) -> KvDtype {
        match self {
            KvData::F16(_) => KvDtype::F16,
            KvData::F32(_) => KvDtype::F32,
            KvData::Q8_0(_) => KvDtype::Q8_0,
        }
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            KvData::F16(d) => d.len(),
            KvData::F32(d) => d.len(),
            KvData::Q8_0(d) => d.len() / 34 * 32,
        }
    }

    /// Whether no element is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn byte_len(&self) -> usize {
        self.dtype().bytes(self.len())
    }

    /// Sets elements `range` to zero (`range` on 32-element boundaries for Q8_0).
    pub fn zero_range(&mut self, range: std::ops::Range<usize>) {
        match self {
            KvData::F16(d) => d[range].fill(f16::ZERO),
            KvData::F32(d) => d[range].fill(0.0),
            KvData::Q8_0(d) => d[range.start / 32 * 34..range.end / 32 * 34].fill(0),
        }
    }

    fn zero(&mut self) {
        let n = self.len();
        self.zero_range(0..n);
    }

    pub(crate) fn zeros(dtype: KvDtype, n: usize) -> KvData {
        match dtype {
            KvDtype::F16 => KvData::F16(vec![f16::ZERO; n]),
            KvDtype::F32 => KvData::F32(vec![0.0; n]),
            KvDtype::Q8_0 => KvData::Q8_0(vec![0; KvDtype::Q8_0.bytes(n)]),
        }
    }

    /// Appends the stored bytes of elements `range` (little-endian).
    pub fn encode_range(&self, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
        #[cfg(target_endian = "little")]
        {
            // In memory the values already are their little-endian bytes: copy them whole.
            out.extend_from_slice(self.range_bytes(range));
        }
        #[cfg(not(target_endian = "little"))]
        match self {
            KvData::F16(d) => d[range].iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            KvData::F32(d) => d[range].iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            KvData::Q8_0(d) => out.extend_from_slice(&d[range.start / 32 * 34..range.end / 32 * 34]),
        }
    }

    /// Overwrites elements `range` from bytes made by [`encode_range`](Self::encode_range).
    /// `bytes` must hold exactly the range's size.
    pub fn decode_range(&mut self, range: std::ops::Range<usize>, bytes: &[u8]) {
        #[cfg(target_endian = "little")]
        {
            let dst = self.range_bytes_mut(range);
            let n = dst.len().min(bytes.len());
            dst[..n].copy_from_slice(&bytes[..n]);
        }
        #[cfg(not(target_endian = "little"))]
        match self {
            KvData::F16(d) => {
                for (o, c) in d[range].iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]);
                }
            }
            KvData::F32(d) => {
                for (o, c) in d[range].iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            KvData::Q8_0(d) => d[range.start / 32 * 34..range.end / 32 * 34].copy_from_slice(bytes),
        }
    }

    /// The stored bytes of elements `range` (native byte order).
    #[cfg(target_endian = "little")]
    fn range_bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        match self {
            // SAFETY: f16 and f32 are plain old data; viewing them as bytes is
            // always valid, and the length covers exactly the borrowed elements.
            KvData::F16(d) => {
                let s = &d[range];
                unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() * 2) }
            }
            KvData::F32(d) => {
                let s = &d[range];
                unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() * 4) }
            }
            KvData::Q8_0(d) => &d[range.start / 32 * 34..range.end / 32 * 34],
        }
    }

    /// Mutable bytes of elements `range`.
    #[cfg(target_endian = "little")]
    fn range_bytes_mut(&mut self, range: std::ops::Range<usize>) -> &mut [u8] {
        match self {
            // SAFETY: every bit pattern is a valid f16 or f32, so any bytes may be
            // written; the length covers exactly the borrowed elements.
            KvData::F16(d) => {
                let s = &mut d[range];
                unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), s.len() * 2) }
            }
            KvData::F32(d) => {
                let s = &mut d[range];
                unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), s.len() * 4) }
            }
            KvData::Q8_0(d) => &mut d[range.start / 32 * 34..range.end / 32 * 34],
        }
    }

    pub(crate) fn write(&mut self, at: usize, row: &[f32]) {
        match self {
            KvData::F16(d) => {
                for (o, &x) in d[at..at + row.len()].iter_mut().zip(row) {
                    *o = f16::from_f32(x);
                }
            }
            KvData::F32(d) => d[at..at + row.len()].copy_from_slice(row),
            KvData::Q8_0(d) => {
                let dst = &mut d[at / 32 * 34..(at + row.len()) / 32 * 34];
                // Shapes are checked when the layout is made (`KvLayout::is_valid`).
                let _ = crate::kernels::quantize_row_q8_0(row, dst);
            }
        }
    }

    pub(crate) fn rows(&self, range: std::ops::Range<usize>) -> KvRows<'_> {
        match self {
            KvData::F16(d) => KvRows::F16(&d[range]),
            KvData::F32(d) => KvRows::F32(&d[range]),
            KvData::Q8_0(d) => KvRows::Q8_0(&d[range.start / 32 * 34..range.end / 32 * 34]),
        }
    }
}

/// One block: K and V of [`BLOCK_TOKENS`](super::BLOCK_TOKENS) positions for every layer (of one lane).
///
/// Dropped blocks give their memory to a small process-wide pool (at most
/// [`RECYCLE_BYTES`]) that new blocks take from first: loading a session right
/// after another was dropped, as a server resuming conversations does, then
/// writes into memory that is already mapped instead of faulting in fresh pages.
#[derive(Debug, Clone, PartialEq)]
pub struct KvBlock {
    /// Keys.
    pub k: KvData,
    /// Values.
    pub v: KvData,
}

/// The most bytes of dropped blocks kept for reuse.
pub const RECYCLE_BYTES: usize = 64 << 20;

/// Storage of dropped blocks, by (type, length): O(log n) to take or give,
/// however many small blocks there are.
struct Recycler {
    free: BTreeMap<(u8, usize), Vec<KvData>>,
    bytes: usize,
}

static RECYCLED: Mutex<Recycler> = Mutex::new(Recycler { free: BTreeMap::new(), bytes: 0 });

fn recycled() -> std::sync::MutexGuard<'static, Recycler> {
    RECYCLED.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recycler {
    fn take(&mut self, dtype: KvDtype, n: usize) -> Option<KvData> {
        let d = self.free.get_mut(&(dtype.to_byte(), n))?.pop()?;
        self.bytes -= d.byte_len();
        Some(d)
    }

    fn give(&mut self, d: KvData) {
        if !d.is_empty() && self.bytes + d.byte_len() <= RECYCLE_BYTES {
            self.bytes += d.byte_len();
            self.free.entry((d.dtype().to_byte(), d.len())).or_default().push(d);
        }
    }
}

impl KvBlock {
    /// A block of zeros shaped for `layout`.
    pub fn zeroed(layout: &KvLayout) -> KvBlock {
        let mut b = KvBlock::for_overwrite(layout);
        b.k.zero();
        b.v.zero();
        b
    }

    /// A block shaped for `layout` whose contents are unspecified (a reused
    /// block's old values, or zeros): for callers that write every position
    /// they keep.
    pub fn for_overwrite(layout: &KvLayout) -> KvBlock {
        let n = layout.n_layers * layout.layer_stride();
        let take = || recycled().take(layout.dtype, n).unwrap_or_else(|| KvData::zeros(layout.dtype, n));
        KvBlock { k: take(), v: take() }
    }
}

impl Drop for KvBlock {
    fn drop(&mut self) {
        let empty = || KvData::F32(Vec::new());
        let (k, v) = (std::mem::replace(&mut self.k, empty()), std::mem::replace(&mut self.v, empty()));
        let mut pool = recycled();
        pool.give(k);
        pool.give(v);
    }
}
