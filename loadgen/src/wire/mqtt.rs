//! MQTT 3.1.1 (OASIS standard, 2014) as far as the loadgen speaks it: a client that connects,
//! subscribes to one topic, heartbeats with PINGREQ and publishes at QoS 0.
//!
//! Encoders append the client's packets (CONNECT, SUBSCRIBE, PUBLISH, PINGREQ) to a buffer;
//! [`decode`] takes the server's packets (CONNACK, SUBACK, PUBLISH, PINGRESP) off the front of
//! a receive buffer. As for tether's codec, incomplete input is not an error: `Ok(None)` and
//! nothing consumed. The remaining length is checked against the caller's maximum as soon as it
//! is complete, before the body is waited for.
//!
//! Section numbers below are those of the specification.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Packet type codes (the high nibble of the first byte, §2.2.1).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
}

/// Largest remaining length the 4-byte encoding can carry (§2.2.3).
pub const MAX_REMAINING: usize = 268_435_455;

/// A packet the server sends to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNACK (§3.2): `return_code` 0 is "connection accepted".
    ConnAck {
        session_present: bool,
        return_code: u8,
    },
    /// SUBACK (§3.9): one return code per topic filter (0x80 is failure).
    SubAck {
        packet_id: u16,
        return_codes: Vec<u8>,
    },
    /// PUBLISH (§3.3); `packet_id` only when `qos` > 0.
    Publish {
        qos: u8,
        retain: bool,
        dup: bool,
        topic: String,
        packet_id: Option<u16>,
        payload: Bytes,
    },
    /// PINGRESP (§3.13).
    PingResp,
    /// A well-formed packet of another type (its type code); the loadgen never expects one.
    Other(u8),
}

/// Why bytes from the server are not MQTT.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("remaining length longer than 4 bytes")]
    LengthOverflow,
    #[error("packet of {len} bytes exceeds the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("packet type {kind} with reserved flags {flags:#x}")]
    BadFlags { kind: u8, flags: u8 },
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Why a packet cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0} longer than 65,535 bytes")]
    StringTooLong(&'static str),
    #[error("packet longer than the 268,435,455 bytes MQTT can frame")]
    TooLong,
    #[error("QoS {0} does not exist")]
    BadQos(u8),
}

/// Appends the remaining-length varint of `len` (§2.2.3): 7 bits per byte, least significant
/// group first, continuation bit on every byte but the last.
pub fn put_remaining_length(mut len: usize, out: &mut BytesMut) -> Result<(), EncodeError> {
    if len > MAX_REMAINING {
        return Err(EncodeError::TooLong);
    }
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            return Ok(());
        }
    }
}

/// Reads a remaining length from the start of `buf`: `Ok(None)` until it is complete,
/// `Ok(Some((value, bytes used)))` after.
pub fn read_remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().enumerate() {
        if i == 4 {
            return Err(DecodeError::LengthOverflow);
        }
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(DecodeError::LengthOverflow);
    }
    Ok(None)
}

fn put_str(field: &'static str, s: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError::StringTooLong(field))?;
    out.put_u16(len);
    out.put_slice(s);
    Ok(())
}

/// Appends a packet: first byte, remaining length `body_len` (the caller computes it), then the
/// body `write` produces. On an error nothing is left appended.
fn put_packet(
    first: u8,
    body_len: usize,
    out: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.put_u8(first);
    if let Err(e) = put_remaining_length(body_len, out).and_then(|_| write(out)) {
        out.truncate(start);
        return Err(e);
    }
    debug_assert_eq!(out.len() - start, 1 + varint_len(body_len) + body_len);
    Ok(())
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// CONNECT (§3.1) with protocol level 4, clean session, no will, no user name or password.
/// `keep_alive_s` 0 turns the server's keep-alive check off (§3.1.2.10).
pub fn connect(client_id: &str, keep_alive_s: u16, out: &mut BytesMut) -> Result<(), EncodeError> {
    // Variable header: protocol name (6), level (1), flags (1), keep alive (2); payload: id.
    let body = 10 + 2 + client_id.len();
    put_packet(kind::CONNECT << 4, body, out, |out| {
        put_str("protocol name", b"MQTT", out)?;
        out.put_u8(4);
        out.put_u8(0x02); // clean session
        out.put_u16(keep_alive_s);
        put_str("client id", client_id.as_bytes(), out)
    })
}

/// SUBSCRIBE (§3.8) to each (topic filter, requested QoS).
pub fn subscribe(
    packet_id: u16,
    filters: &[(&str, u8)],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let body = 2 + filters.iter().map(|(t, _)| 2 + t.len() + 1).sum::<usize>();
    // The fixed header's flags are 0010 for SUBSCRIBE (§3.8.1).
    put_packet(kind::SUBSCRIBE << 4 | 0x02, body, out, |out| {
        out.put_u16(packet_id);
        for &(topic, qos) in filters {
            if qos > 2 {
                return Err(EncodeError::BadQos(qos));
            }
            put_str("topic filter", topic.as_bytes(), out)?;
            out.put_u8(qos);
        }
        Ok(())
    })
}

/// PUBLISH (§3.3), not retained, not a duplicate. A packet id is written only when `qos` > 0.
pub fn publish(
    topic: &str,
    qos: u8,
    packet_id: u16,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    if qos > 2 {
        return Err(EncodeError::BadQos(qos));
    }
    let id_len = if qos > 0 { 2 } else { 0 };
    let body = 2 + topic.len() + id_len + payload.len();
    put_packet(kind::PUBLISH << 4 | qos << 1, body, out, |out| {
        put_str("topic name", topic.as_bytes(), out)?;
        if qos > 0 {
            out.put_u16(packet_id);
        }
        out.put_slice(payload);
        Ok(())
    })
}

/// PINGREQ (§3.12): `C0 00`.
pub fn pingreq(out: &mut BytesMut) {
    out.put_slice(&[kind::PINGREQ << 4, 0]);
}

/// Takes the next whole server packet off the front of `buf` (see the module doc). `max` is the
/// largest remaining length accepted.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some((len, used)) = read_remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    if len > max {
        return Err(DecodeError::Oversized { len, max });
    }
    let header = 1 + used;
    if buf.len() < header + len {
        return Ok(None);
    }
    let (kind, flags) = (first >> 4, first & 0x0f);
    if kind != kind::PUBLISH && flags != 0 {
        return Err(DecodeError::BadFlags { kind, flags });
    }
    let packet = {
        let body = &buf[header..header + len];
        match kind {
            kind::CONNACK => {
                if body.len() != 2 || body[0] & 0xfe != 0 {
                    return Err(DecodeError::Malformed("CONNACK"));
                }
                Packet::ConnAck {
                    session_present: body[0] & 1 != 0,
                    return_code: body[1],
                }
            }
            kind::SUBACK => {
                if body.len() < 3 {
                    return Err(DecodeError::Malformed("SUBACK"));
                }
                Packet::SubAck {
                    packet_id: u16::from_be_bytes([body[0], body[1]]),
                    return_codes: body[2..].to_vec(),
                }
            }
            kind::PINGRESP => {
                if !body.is_empty() {
                    return Err(DecodeError::Malformed("PINGRESP"));
                }
                Packet::PingResp
            }
            kind::PUBLISH => return decode_publish(buf, flags, header, len).map(Some),
            other => Packet::Other(other),
        }
    };
    buf.advance(header + len);
    Ok(Some(packet))
}

/// A PUBLISH whose `len` body bytes follow `header` bytes of fixed header in `buf`; consumes it
/// and hands out its payload as a slice of the buffer.
fn decode_publish(
    buf: &mut BytesMut,
    flags: u8,
    header: usize,
    len: usize,
) -> Result<Packet, DecodeError> {
    let qos = (flags >> 1) & 0x03;
    if qos == 3 {
        return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
    }
    let body = &buf[header..header + len];
    if body.len() < 2 {
        return Err(DecodeError::Malformed("PUBLISH topic length"));
    }
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let id_len = if qos > 0 { 2 } else { 0 };
    if body.len() < 2 + topic_len + id_len {
        return Err(DecodeError::Malformed("PUBLISH shorter than its topic"));
    }
    let topic = std::str::from_utf8(&body[2..2 + topic_len])
        .map_err(|_| DecodeError::Malformed("PUBLISH topic is not UTF-8"))?
        .to_string();
    let packet_id =
        (qos > 0).then(|| u16::from_be_bytes([body[2 + topic_len], body[3 + topic_len]]));
    let payload_at = header + 2 + topic_len + id_len;
    let mut packet = buf.split_to(header + len);
    packet.advance(payload_at);
    Ok(Packet::Publish {
        qos,
        retain: flags & 1 != 0,
        dup: flags & 0x08 != 0,
        topic,
        packet_id,
        payload: packet.freeze(),
    })
}
