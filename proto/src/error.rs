//! Errors of the frame codec.

use crate::message::CloseCode;

/// Why bytes from a peer are not a frame. Every variant is the peer's fault: the connection is
/// closed with [`DecodeError::close_code`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces a body larger than the receiver's maximum. Detected as soon
    /// as the prefix is complete, before the body is waited for or anything is allocated.
    #[error("frame body of {len} bytes exceeds the maximum of {max}")]
    Oversized {
        /// Body length the prefix announced.
        len: u64,
        /// The receiver's maximum body length.
        max: usize,
    },
    /// The type byte is not a frame type of this protocol version.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A string field is not valid UTF-8.
    #[error("a string field is not valid UTF-8")]
    BadUtf8,
    /// The frame breaks the layout: truncated or trailing fields, a varint that overflows its
    /// field or is not canonical, a value or string length outside its bounds, an unknown tag.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

impl DecodeError {
    /// The close code a receiver sends before closing the connection.
    pub fn close_code(&self) -> CloseCode {
        match self {
            DecodeError::Oversized { .. } => CloseCode::FrameTooLarge,
            DecodeError::UnknownType(_) => CloseCode::UnknownFrame,
            DecodeError::BadUtf8 | DecodeError::Malformed(_) => CloseCode::ProtocolError,
        }
    }
}

/// Why a value cannot be encoded: it breaks a bound of the protocol, so the peer would refuse it.
/// Nothing is written to the output buffer when this is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string field's length is outside its bounds.
    #[error("{field} is {len} bytes long; the protocol allows {min}..={max}")]
    StrLength {
        /// Name of the field, as in `docs/protocol.md`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// Shortest allowed length.
        min: usize,
        /// Longest allowed length.
        max: usize,
    },
    /// A numeric field is above its bound.
    #[error("{field} is {value}; the protocol allows at most {max}")]
    OutOfRange {
        /// Name of the field, as in `docs/protocol.md`.
        field: &'static str,
        /// The value given.
        value: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A value the decoder would refuse or read back as another value (`Delivered(0)`, an
    /// `Other` refuse reason holding a named reason's number).
    #[error("not encodable: {0}")]
    Invalid(&'static str),
    /// The body is longer than a length prefix can express (u32).
    #[error("frame body of {0} bytes cannot be framed")]
    BodyTooLong(usize),
}
