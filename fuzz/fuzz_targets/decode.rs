//! Arbitrary bytes through the frame decoder, in a loop as the server's read path calls it.
//!
//! Checks, beyond "does not panic": an incomplete or refused input consumes nothing, and a
//! decoded frame re-encodes to exactly the bytes it was decoded from (encodings are canonical)
//! and decodes back to the same frame.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_proto::{decode, encode};

/// A small maximum body size, so the fuzzer reaches the size check as well as full bodies.
const MAX: usize = 512;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode(&mut buf, MAX) {
            Ok(Some(frame)) => {
                let used = before - buf.len();
                let consumed = &data[data.len() - before..][..used];
                let mut out = BytesMut::new();
                encode(&frame, &mut out).expect("a decoded frame is within bounds");
                assert_eq!(
                    &out[..],
                    consumed,
                    "re-encoding {frame:?} changed its bytes"
                );
                assert_eq!(decode(&mut out, MAX), Ok(Some(frame)));
                assert!(out.is_empty());
            }
            Ok(None) | Err(_) => {
                assert_eq!(buf.len(), before, "a failed decode consumed input");
                break;
            }
        }
    }
});
