//! tether's wire protocol and connection state machines, sans-IO.
//!
//! Nothing in this crate opens a socket or reads a clock: every input that depends on time
//! takes `now` as an argument, so the same code runs in the server, in client apps and in a
//! deterministic simulator.

pub mod codec;
pub mod error;
pub mod heartbeat;
pub mod message;
pub mod session;
pub mod token;
pub mod varint;

pub use codec::{decode, decode_version, encode, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use message::*;

/// A point in time: milliseconds on a monotonic clock whose origin the caller chooses.
/// Every time-dependent call in this crate takes one; nothing here reads a clock.
pub type Millis = u64;
