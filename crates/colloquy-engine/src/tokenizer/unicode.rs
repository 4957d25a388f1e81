//! Code point classes and the GPT-2 byte-to-unicode mapping.
//!
//! The pre-tokenizers only need to know, for each code point, which of eight
//! general-category classes it is in (letter, number, punctuation, ...) and
//! whether it counts as whitespace. Both follow the definitions llama.cpp uses,
//! so that word boundaries come out the same.

use super::unicode_data::CATEGORY_RANGES;

/// Unassigned code point (general category `Cn`).
pub(crate) const UNDEFINED: u16 = 0x0001;
/// `\p{N}`.
pub(crate) const NUMBER: u16 = 0x0002;
/// `\p{L}`.
pub(crate) const LETTER: u16 = 0x0004;
/// `\p{Z}`.
#[allow(dead_code)]
pub(crate) const SEPARATOR: u16 = 0x0008;
/// `\p{M}`.
#[allow(dead_code)]
pub(crate) const MARK: u16 = 0x0010;
/// `\p{P}`.
pub(crate) const PUNCTUATION: u16 = 0x0020;
/// `\p{S}`.
#[allow(dead_code)]
pub(crate) const SYMBOL: u16 = 0x0040;
/// `\p{C}` other than `Cn`.
#[allow(dead_code)]
pub(crate) const CONTROL: u16 = 0x0080;
/// `\s` (the whitespace set below).
pub(crate) const WHITESPACE: u16 = 0x0100;

/// The classes of one code point, or of a position outside the text (all bits clear).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags(pub(crate) u16);

impl Flags {
    /// No bits: what a position past the end of a segment reads as.
    pub(crate) const NONE: Flags = Flags(0);

    #[inline]
    pub(crate) fn is_letter(self) -> bool {
        self.0 & LETTER != 0
    }
    #[inline]
    pub(crate) fn is_number(self) -> bool {
        self.0 & NUMBER != 0
    }
    #[inline]
    pub(crate) fn is_whitespace(self) -> bool {
        self.0 & WHITESPACE != 0
    }
    #[inline]
    pub(crate) fn is_punctuation(self) -> bool {
        self.0 & PUNCTUATION != 0
    }
    /// Neither whitespace, letter nor number, but a real code point: `[^\s\p{L}\p{N}]`.
    #[inline]
    pub(crate) fn is_other(self) -> bool {
        self.0 & (WHITESPACE | LETTER | NUMBER) == 0 && self.0 != 0
    }
}

/// Whitespace as the tokenizer's `\s` sees it.
fn is_whitespace_cpt(c: u32) -> bool {
    matches!(
        c,
        0x09..=0x0D
            | 0x20
            | 0x85
            | 0xA0
            | 0x1680
            | 0x2000..=0x200A
            | 0x2028
            | 0x2029
            | 0x202F
            | 0x205F
            | 0x3000
    )
}

/// The category class of a code point (one of the category bits).
fn category(c: u32) -> u16 {
    if c >= 0x110000 {
        return UNDEFINED;
    }
    // Index of the last range starting at or before `c`.
    let idx = CATEGORY_RANGES.partition_point(|&(start, _)| start <= c);
    u16::from(CATEGORY_RANGES[idx - 1].1)
}

/// The flags of one code point.
#[inline]
pub(crate) fn flags_of(c: char) -> Flags {
    let c = c as u32;
    let mut f = if c < 0x80 { ascii_category(c as u8) } else { category(c) };
    if is_whitespace_cpt(c) {
        f |= WHITESPACE;
    }
    Flags(f)
}

/// ASCII fast path for [`category`].
#[inline]
fn ascii_category(b: u8) -> u16 {
    match b {
        b'0'..=b'9' => NUMBER,
        b'A'..=b'Z' | b'a'..=b'z' => LETTER,
        _ => category(u32::from(b)),
    }
}

/// Lower-cases ASCII letters, leaving everything else alone. The only
/// non-ASCII code points whose simple lower-case mapping is ASCII are U+0130 and
/// U+212A, which map to `i` and `k`; neither matters for the English
/// contraction rules that use this.
#[inline]
pub(crate) fn ascii_lower(c: char) -> char {
    c.to_ascii_lowercase()
}

/// GPT-2's reversible byte-to-character mapping: printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0u32;
    for b in 0..=255u8 {
        let direct = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if direct {
            u32::from(b)
        } else {
            let c = 256 + next;
            next += 1;
            c
        };
        table[usize::from(b)] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

/// The inverse of [`byte_to_char_table`], indexed by code point (all mapped
/// code points are below 0x144). `None` where no byte maps to it.
pub(crate) fn char_to_byte_table() -> Vec<Option<u8>> {
    let fwd = byte_to_char_table();
    let mut inv = vec![None; 0x144];
    for (b, &c) in fwd.iter().enumerate() {
        inv[c as usize] = Some(b as u8);
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert!(flags_of('a').is_letter());
        assert!(flags_of('é').is_letter());
        assert!(flags_of('日').is_letter());
        assert!(flags_of('7').is_number());
        assert!(flags_of('²').is_number());
        assert!(flags_of('٣').is_number());
        assert!(flags_of(' ').is_whitespace());
        assert!(flags_of('\u{3000}').is_whitespace());
        assert!(flags_of('\u{a0}').is_whitespace());
        assert!(!flags_of('\u{200b}').is_whitespace());
        assert!(flags_of('!').is_punctuation());
        assert!(flags_of('🍕').is_other());
        assert!(flags_of('\u{10FFFF}').is_other());
        assert!(!Flags::NONE.is_other());
    }

    #[test]
    fn byte_map_round_trips() {
        let fwd = byte_to_char_table();
        let inv = char_to_byte_table();
        assert_eq!(fwd[b' ' as usize], 'Ġ');
        assert_eq!(fwd[b'\n' as usize], 'Ċ');
        assert_eq!(fwd[b'A' as usize], 'A');
        for b in 0..=255u8 {
            assert_eq!(inv[fwd[b as usize] as usize], Some(b));
        }
    }
}
