//! ggml tensor types: ids, block geometry and which activation type each pairs with.

/// Elements per block of the K-quant ("super-block") types.
pub const QK_K: usize = 256;
/// Elements per block of the classic 32-wide quant types.
pub const QK32: usize = 32;

/// A ggml tensor element type, with ggml's numeric type id as discriminant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit IEEE float.
    F32 = 0,
    /// 16-bit IEEE half float.
    F16 = 1,
    /// 4-bit, 32 per block, one f16 scale, values `d * (q - 8)`.
    Q4_0 = 2,
    /// 4-bit, 32 per block, f16 scale and min, values `d * q + m`.
    Q4_1 = 3,
    /// 5-bit, 32 per block, one f16 scale, values `d * (q - 16)`.
    Q5_0 = 6,
    /// 5-bit, 32 per block, f16 scale and min, values `d * q + m`.
    Q5_1 = 7,
    /// 8-bit, 32 per block, one f16 scale.
    Q8_0 = 8,
    /// 8-bit, 32 per block, f16 scale and f16 `d * sum(q)` (activation type).
    Q8_1 = 9,
    /// 2-bit K-quant, 256 per super-block, 4-bit sub-block scales and mins.
    Q2_K = 10,
    /// 3-bit K-quant, 256 per super-block, 6-bit sub-block scales.
    Q3_K = 11,
    /// 4-bit K-quant, 256 per super-block, 6-bit sub-block scales and mins.
    Q4_K = 12,
    /// 5-bit K-quant, 256 per super-block, 6-bit sub-block scales and mins.
    Q5_K = 13,
    /// 6-bit K-quant, 256 per super-block, 8-bit sub-block scales.
    Q6_K = 14,
    /// 8-bit K-quant, f32 scale plus 16-wide sums (activation type).
    Q8_K = 15,
    /// 4-bit non-linear (a fixed table of 16 values), 32 per block, one f16 scale.
    IQ4_NL = 20,
    /// IQ4_NL's values in 256-wide super-blocks with 6-bit sub-block scales.
    IQ4_XS = 23,
    /// bfloat16.
    BF16 = 30,
}

impl GgmlType {
    /// Every type this enum knows, in id order.
    pub const ALL: [GgmlType; 17] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::BF16,
    ];

    /// The weight types that [`crate::kernels::vec_dot`] can compute with.
    pub const DOT_TYPES: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
    ];

    /// Maps a ggml type id to the type, `None` for ids this engine does not know.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type (`"q4_K"`, `"f16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q8_1 => "q8_1",
            GgmlType::Q2_K => "q2_K",
            GgmlType::Q3_K => "q3_K",
            GgmlType::Q4_K => "q4_K",
            GgmlType::Q5_K => "q5_K",
            GgmlType::Q6_K => "q6_K",
            GgmlType::Q8_K => "q8_K",
            GgmlType::IQ4_NL => "iq4_nl",
            GgmlType::IQ4_XS => "iq4_xs",
            GgmlType::BF16 => "bf16",
        }
    }

    /// Bytes taken by `n_elems` elements, `None` if `n_elems` is not a whole
    /// number of blocks (or the size overflows).
    pub fn row_bytes(self, n_elems: usize) -> Option<usize> {
        if !n_elems.is_multiple_of(self.block_size()) {
            return None;
        }
        (n_elems / self.block_size()).checked_mul(self.type_size())
    }

    /// Whether the kernels can dequantize this type (every type listed, the
    /// activation-only types Q8_1/Q8_K included).
    pub fn is_supported(self) -> bool {
        true
    }

    /// Whether [`crate::kernels::vec_dot`] accepts this as a weight type.
    pub fn can_dot(self) -> bool {
        GgmlType::DOT_TYPES.contains(&self)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(21), None);
        assert_eq!(GgmlType::from_id(31), None);
    }

    #[test]
    fn row_bytes() {
        assert_eq!(GgmlType::Q4_1.row_bytes(576), Some(18 * 20));
        assert_eq!(GgmlType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4_K.row_bytes(576), None);
        assert_eq!(GgmlType::F16.row_bytes(3), Some(6));
    }
}
