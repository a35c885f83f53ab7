//! The payload of every push and send: a marker, the sender's monotonic timestamp, so the
//! receiving worker process computes the end-to-end latency (see `clock.rs`), and the shard
//! the sender's connection is on, so the receiver can tell a same-shard delivery from one that
//! crossed the mesh. An upstream message's payload carries the sender's sequence number after
//! that header ([`stamp_seq`]), since MQTT and NATS messages have no client id of their own.

/// Marks a payload as written by the loadgen (version 2 of this layout).
const MAGIC: &[u8; 4] = b"TLG2";
/// Bytes of the header: marker + u64 little-endian nanoseconds + the sender's shard.
pub const HEADER: usize = 13;
/// Shard value meaning "not known" (the sender has not seen its LoginOk's session id).
pub const UNKNOWN_SHARD: u8 = u8::MAX;

/// The shard a connection is on, from its LoginOk session id (the server puts the shard index
/// in the top 16 bits); [`UNKNOWN_SHARD`] when it does not fit.
pub fn shard_of_session(session_id: u64) -> u8 {
    u8::try_from(session_id >> 48).unwrap_or(UNKNOWN_SHARD)
}

/// A payload of `size` bytes (at least [`HEADER`]) stamped with `sent_ns` and the sender's
/// shard.
pub fn stamp(sent_ns: u64, shard: u8, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(HEADER));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&sent_ns.to_le_bytes());
    out.push(shard);
    out.resize(size.max(HEADER), 0);
    out
}

/// Bytes of an upstream payload's header: [`HEADER`] then the sender's sequence number (u64
/// little-endian).
pub const SEQ_HEADER: usize = HEADER + 8;

/// A payload of `size` bytes (at least [`SEQ_HEADER`]) stamped like [`stamp`], followed by
/// `seq`, the sending connection's sequence number.
pub fn stamp_seq(sent_ns: u64, shard: u8, seq: u64, size: usize) -> Vec<u8> {
    let mut out = stamp(sent_ns, shard, HEADER);
    out.extend_from_slice(&seq.to_le_bytes());
    out.resize(size.max(SEQ_HEADER), 0);
    out
}

/// The sequence number of a payload made by [`stamp_seq`], `None` when it is not one.
pub fn parse_seq(payload: &[u8]) -> Option<u64> {
    parse(payload)?;
    let seq = payload.get(HEADER..SEQ_HEADER)?;
    Some(u64::from_le_bytes(seq.try_into().ok()?))
}

/// The send time and the sender's shard in a payload, `None` when it is not one of ours.
pub fn parse(payload: &[u8]) -> Option<(u64, u8)> {
    if payload.len() < HEADER || &payload[..4] != MAGIC {
        return None;
    }
    let sent = u64::from_le_bytes(payload[4..12].try_into().ok()?);
    Some((sent, payload[12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let p = stamp(123_456_789, 3, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(parse(&p), Some((123_456_789, 3)));
        assert_eq!(stamp(1, 0, 0).len(), HEADER);
        assert_eq!(parse(b"hello world, not ours"), None);
        assert_eq!(parse(b"TLG2"), None);
        assert_eq!(shard_of_session((1 << 48) | 77), 1);
        assert_eq!(shard_of_session(u64::MAX), UNKNOWN_SHARD);
    }

    #[test]
    fn sequence_after_the_stamp() {
        let p = stamp_seq(77, 1, 1 << 40, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(parse(&p), Some((77, 1)));
        assert_eq!(parse_seq(&p), Some(1 << 40));
        assert_eq!(stamp_seq(1, 0, 5, 0).len(), SEQ_HEADER);
        assert_eq!(parse_seq(&stamp(1, 0, HEADER)), None);
        assert_eq!(parse_seq(b"not ours at all, not at all"), None);
    }
}
