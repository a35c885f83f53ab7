//! Arbitrary bytes through the frame decoder, in a loop as the server's read path calls it,
//! with the rules of protocol version 1 or 2 (the first input byte chooses).
//!
//! Checks, beyond "does not panic": an incomplete or refused input consumes nothing; in version
//! 1 a decoded frame re-encodes to exactly the bytes it was decoded from (encodings are
//! canonical) and decodes back to the same frame; in version 2, whose receivers ignore fields a
//! later revision appends and skip extension frames, a decoded frame re-encodes to bytes that
//! decode back to the same frame, and those bytes are the input's when it had no such extras.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_proto::{decode_version, encode, Frame, PROTOCOL_V1, PROTOCOL_V2};

/// A small maximum body size, so the fuzzer reaches the size check as well as full bodies.
const MAX: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let version = if first & 1 == 0 { PROTOCOL_V1 } else { PROTOCOL_V2 };
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode_version(&mut buf, MAX, version) {
            Ok(Some(Frame::Ignored { kind })) => {
                assert_eq!(version, PROTOCOL_V2, "version 1 skipped frame type {kind}");
                assert!(buf.len() < before, "a skipped frame consumed nothing");
            }
            Ok(Some(frame)) => {
                let used = before - buf.len();
                let consumed = &data[data.len() - before..][..used];
                let mut out = BytesMut::new();
                encode(&frame, &mut out).expect("a decoded frame is within bounds");
                let login_version = match &frame {
                    Frame::Login(l) => l.version,
                    _ => version,
                };
                if version == PROTOCOL_V1 && login_version == PROTOCOL_V1 {
                    assert_eq!(
                        &out[..],
                        consumed,
                        "re-encoding {frame:?} changed its bytes"
                    );
                } else {
                    assert!(out.len() <= consumed.len(), "re-encoding {frame:?} grew");
                }
                assert_eq!(
                    decode_version(&mut out, MAX.max(used), version),
                    Ok(Some(frame))
                );
                assert!(out.is_empty());
            }
            Ok(None) | Err(_) => {
                assert_eq!(buf.len(), before, "a failed decode consumed input");
                break;
            }
        }
    }
});
