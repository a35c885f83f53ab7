//! The payload of every push and send: a marker and the sender's monotonic timestamp, so the
//! receiving worker process computes the end-to-end latency (see `clock.rs`).

/// Marks a payload as written by the loadgen (version 1 of this layout).
const MAGIC: &[u8; 4] = b"TLG1";
/// Bytes of the header: marker + u64 little-endian nanoseconds.
pub const HEADER: usize = 12;

/// A payload of `size` bytes (at least [`HEADER`]) stamped with `sent_ns`.
pub fn stamp(sent_ns: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(HEADER));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&sent_ns.to_le_bytes());
    out.resize(size.max(HEADER), 0);
    out
}

/// The send time in a payload, `None` when it is not one of ours.
pub fn sent_ns(payload: &[u8]) -> Option<u64> {
    if payload.len() < HEADER || &payload[..4] != MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(payload[4..12].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let p = stamp(123_456_789, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(sent_ns(&p), Some(123_456_789));
        assert_eq!(stamp(1, 0).len(), HEADER);
        assert_eq!(sent_ns(b"hello world, not ours"), None);
        assert_eq!(sent_ns(b"TLG1"), None);
    }
}
