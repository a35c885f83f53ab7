//! Unsigned LEB128 varints, the integer encoding of the wire protocol.
//!
//! Seven value bits per byte, least significant group first, high bit set on every byte but the
//! last. A u32 field takes at most 5 bytes, a u64 field at most 10. Encodings are canonical: a
//! value that overflows its field, or that carries a needless trailing zero group (`80 00` for
//! 0), is refused, so every value has exactly one encoding and decode → encode gives back the
//! same bytes.

use bytes::BufMut;

/// Longest varint of a u32 field.
pub const MAX_LEN_U32: usize = 5;
/// Longest varint of a u64 field.
pub const MAX_LEN_U64: usize = 10;

/// Why a complete varint was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarintError {
    /// The value does not fit the field (too many bytes or bits).
    Overflow,
    /// The encoding is longer than needed (ends in a zero group).
    NotCanonical,
}

/// Reads a varint of at most `max_len` bytes (5 or 10) from the start of `buf`.
///
/// Returns `Ok(None)` if `buf` ends before the varint does (and the bytes so far are still a
/// valid prefix), `Ok(Some((value, bytes_used)))` otherwise.
#[inline]
pub fn read(buf: &[u8], max_len: usize) -> Result<Option<(u64, usize)>, VarintError> {
    debug_assert!(max_len == MAX_LEN_U32 || max_len == MAX_LEN_U64);
    // Bits the last allowed byte may carry: 32 - 28 = 4 for u32, 64 - 63 = 1 for u64.
    let last_bits = if max_len == MAX_LEN_U32 { 4 } else { 1 };
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        let group = u64::from(byte & 0x7f);
        if i + 1 == max_len && (byte & 0x80 != 0 || group >> last_bits != 0) {
            return Err(VarintError::Overflow);
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(VarintError::NotCanonical);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Ok(None)
}

/// Number of bytes [`put`] writes for `value`.
#[inline]
pub fn len(value: u64) -> usize {
    // Bits needed (at least 1), rounded up to groups of 7.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends the canonical encoding of `value` to `out`.
#[inline]
pub fn put(mut value: u64, out: &mut impl BufMut) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put(v, &mut out);
        out
    }

    #[test]
    fn known_encodings() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc((1 << 28) - 1), [0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(enc(u32::MAX.into()), [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc(u64::MAX).len(), 10);
    }

    #[test]
    fn len_matches_put_at_every_boundary() {
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1] {
                assert_eq!(len(v), enc(v).len(), "value {v}");
                assert_eq!(read(&enc(v), MAX_LEN_U64), Ok(Some((v, len(v)))));
            }
        }
        assert_eq!(len(u64::MAX), 10);
    }

    #[test]
    fn incomplete_is_not_an_error() {
        assert_eq!(read(&[], 5), Ok(None));
        assert_eq!(read(&[0x80], 5), Ok(None));
        assert_eq!(read(&[0xff, 0xff, 0xff, 0xff], 5), Ok(None));
    }

    #[test]
    fn overflow_and_overlong_are_refused() {
        assert_eq!(
            read(&[0xff, 0xff, 0xff, 0xff, 0x10], 5),
            Err(VarintError::Overflow)
        );
        assert_eq!(
            read(&[0xff, 0xff, 0xff, 0xff, 0x8f], 5),
            Err(VarintError::Overflow)
        );
        assert_eq!(
            read(&[0xff, 0xff, 0xff, 0xff, 0x0f], 5),
            Ok(Some((u32::MAX.into(), 5)))
        );
        let mut max64 = vec![0xff; 9];
        max64.push(0x01);
        assert_eq!(read(&max64, 10), Ok(Some((u64::MAX, 10))));
        max64[9] = 0x02;
        assert_eq!(read(&max64, 10), Err(VarintError::Overflow));
        assert_eq!(read(&[0x80, 0x00], 5), Err(VarintError::NotCanonical));
        assert_eq!(
            read(&[0x81, 0x80, 0x00], 10),
            Err(VarintError::NotCanonical)
        );
    }
}
