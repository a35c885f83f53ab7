//! Frames ↔ bytes: `type: u8`, `len: varint`, `body[len]` (layouts in `docs/protocol.md`).
//!
//! [`decode`] takes whole frames off the front of a receive buffer. Incomplete input is not an
//! error: it returns `Ok(None)` and consumes nothing, so the caller reads more and calls again.
//! The length prefix is checked against the caller's maximum as soon as it is complete, before
//! the body is waited for and before anything is allocated. Decoding allocates only the
//! `String` fields of `Login`, `Send` and `BackendPush`; payloads are `Bytes` slices of the
//! receive buffer, and frames without a payload (heartbeats, acks) are parsed in place.
//!
//! A payload slice shares the receive buffer's storage (the first one turns a plain buffer into
//! shared storage: one small allocation). While any payload is alive, `BytesMut::reserve` on
//! that buffer cannot reuse the storage and allocates anew, and the payload keeps the whole old
//! storage alive. A caller that holds payloads for long (a slow consumer's queue) and wants to
//! keep memory tight can copy them out with `Bytes::copy_from_slice`.
//!
//! [`encode`] appends a frame to the caller's buffer. It refuses (and writes nothing for) a value
//! that breaks a bound of the protocol, so it never produces a frame the peer's decoder refuses;
//! the only thing it cannot know is the peer's maximum frame size, which [`encoded_len`] lets
//! the caller check.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::message::*;
use crate::varint::{self, VarintError, MAX_LEN_U32, MAX_LEN_U64};

/// The type byte and length prefix of the frame at the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The frame type code (a [`kind`] constant).
    pub kind: u8,
    /// Bytes taken by the type and the length prefix: where the body starts.
    pub header_len: usize,
    /// Length of the body, already checked against the maximum.
    pub body_len: usize,
}

impl Header {
    /// Length of the whole frame: the number of bytes the buffer must hold to decode it.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.body_len
    }
}

/// Whether `kind` is a frame type of protocol version 1.
pub fn is_known_kind(kind: u8) -> bool {
    kind_in(kind, PROTOCOL_V1) == KindClass::Known
}

/// What a type byte is in a protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KindClass {
    /// A frame type of this version.
    Known,
    /// Version 2+: an extension type this crate does not know; skipped.
    Skip,
    /// Not a frame type: `UnknownFrame`.
    Unknown,
}

fn kind_in(k: u8, version: u8) -> KindClass {
    let v1 = matches!(
        k,
        kind::LOGIN..=kind::NET_REPORT | kind::BACKEND_PUSH | kind::PUSH_RESULT
    );
    if v1 || (version >= PROTOCOL_V2 && (kind::UPSTREAM..=kind::REFRESHED).contains(&k)) {
        KindClass::Known
    } else if version >= PROTOCOL_V2 && kind::EXTENSIONS.contains(&k) {
        KindClass::Skip
    } else {
        KindClass::Unknown
    }
}

/// The first protocol version that has frame type `kind` (`None`: no version has it).
pub fn kind_since(k: u8) -> Option<u8> {
    if kind_in(k, PROTOCOL_V1) == KindClass::Known {
        Some(PROTOCOL_V1)
    } else if kind_in(k, PROTOCOL_V2) == KindClass::Known {
        Some(PROTOCOL_V2)
    } else {
        None
    }
}

/// Reads the header of the frame at the front of `buf` without consuming anything, with the
/// rules of protocol version 1 (see [`peek_header_version`]).
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<Header>, DecodeError> {
    peek_header_version(buf, max, PROTOCOL_V1)
}

/// Reads the header of the frame at the front of `buf` without consuming anything.
///
/// `Ok(None)` until the type byte and the whole length prefix are there. Refuses a type
/// `version` does not have as soon as the first byte is there (in version 2 an extension type
/// is not refused: it is skipped by [`decode_version`]), and a body longer than `max` as soon
/// as the prefix is.
pub fn peek_header_version(
    buf: &[u8],
    max: usize,
    version: u8,
) -> Result<Option<Header>, DecodeError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    if kind_in(kind, version) == KindClass::Unknown {
        return Err(DecodeError::UnknownType(kind));
    }
    let (len, used) = match varint::read(&buf[1..], MAX_LEN_U32) {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(None),
        Err(e) => return Err(varint_error(e)),
    };
    if len > max as u64 {
        return Err(DecodeError::Oversized { len, max });
    }
    Ok(Some(Header {
        kind,
        header_len: 1 + used,
        body_len: len as usize,
    }))
}

/// Takes the next whole frame off the front of `buf`, with the rules of protocol version 1:
/// what a version-1 peer sends and expects. See [`decode_version`].
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, DecodeError> {
    decode_version(buf, max, PROTOCOL_V1)
}

/// Takes the next whole frame off the front of `buf`, with the rules of protocol `version`.
///
/// - `Ok(Some(frame))`: the frame's bytes were consumed.
/// - `Ok(None)`: `buf` holds only part of a frame; nothing was consumed.
/// - `Err(_)`: the peer sent something that is not a frame (see [`DecodeError::close_code`]);
///   nothing was consumed, and the connection should be closed.
///
/// `max` is the largest body accepted ([`DEFAULT_MAX_FRAME`] unless configured otherwise).
///
/// Version 1 refuses every frame type it does not have and every byte after a body's last
/// field. Version 2 adds its frame types and two rules for growing without a new version:
/// bytes after the last field of a body that does not end in a payload are fields of a later
/// revision, ignored; and a frame whose type is in [`kind::EXTENSIONS`] is consumed whole and
/// returned as [`Frame::Ignored`]. A `Login` follows the rules of the version it carries, so
/// a server can read any client's `Login` before it knows that client's version.
pub fn decode_version(
    buf: &mut BytesMut,
    max: usize,
    version: u8,
) -> Result<Option<Frame>, DecodeError> {
    let Some(header) = peek_header_version(buf, max, version)? else {
        return Ok(None);
    };
    let end = header.frame_len();
    if buf.len() < end {
        return Ok(None);
    }
    if kind_in(header.kind, version) == KindClass::Skip {
        buf.advance(end);
        return Ok(Some(Frame::Ignored { kind: header.kind }));
    }
    let (mut frame, payload_at) = parse_body(header.kind, &buf[header.header_len..end], version)?;
    match payload_at {
        // A non-empty payload: hand out a slice of the receive buffer instead of a copy.
        Some(at) if at < header.body_len => {
            let bytes = buf.split_to(end).freeze();
            set_payload(&mut frame, bytes.slice(header.header_len + at..));
        }
        _ => buf.advance(end),
    }
    Ok(Some(frame))
}

/// Appends `frame` to `out`.
///
/// Refuses a value outside the protocol's bounds (see [`crate::message::limits`]) and then
/// leaves `out` untouched. Check [`encoded_len`] against the peer's maximum frame size first
/// when a payload's size is not already bounded.
pub fn encode(frame: &Frame, out: &mut BytesMut) -> Result<(), EncodeError> {
    validate(frame)?;
    let body_len = body_len(frame);
    if body_len > u32::MAX as usize {
        return Err(EncodeError::BodyTooLong(body_len));
    }
    out.reserve(1 + varint::len(body_len as u64) + body_len);
    let start = out.len();
    out.put_u8(frame.kind());
    varint::put(body_len as u64, out);
    write_body(frame, out);
    debug_assert_eq!(out.len() - start, encoded_len(frame));
    Ok(())
}

/// Number of bytes [`encode`] appends for `frame` (for a frame it accepts).
pub fn encoded_len(frame: &Frame) -> usize {
    let body = body_len(frame);
    1 + varint::len(body as u64) + body
}

fn varint_error(e: VarintError) -> DecodeError {
    match e {
        VarintError::Overflow => DecodeError::Malformed("varint overflows its field"),
        VarintError::NotCanonical => DecodeError::Malformed("varint is not canonical"),
    }
}

/// Reads the fields of one body. Every read checks what is left: running out is `Malformed`
/// (the length prefix said the body was complete).
struct Reader<'a> {
    /// The frame body.
    buf: &'a [u8],
    /// Offset of the next unread byte.
    pos: usize,
    /// The protocol version whose rules apply.
    version: u8,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeError::Malformed("body ends inside a field"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self, max_len: usize) -> Result<u64, DecodeError> {
        match varint::read(&self.buf[self.pos..], max_len) {
            Ok(Some((v, used))) => {
                self.pos += used;
                Ok(v)
            }
            Ok(None) => Err(DecodeError::Malformed("body ends inside a field")),
            Err(e) => Err(varint_error(e)),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.varint(MAX_LEN_U32)? as u32)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.varint(MAX_LEN_U64)
    }

    /// A varint(u16) field; `what` names the rule for the error.
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        u16::try_from(self.u32()?).map_err(|_| DecodeError::Malformed(what))
    }

    /// A heartbeat value of at most [`limits::HEARTBEAT_MS_MAX`].
    fn heartbeat(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let v = self.u32()?;
        if v > limits::HEARTBEAT_MS_MAX {
            return Err(DecodeError::Malformed(what));
        }
        Ok(v)
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed(what)),
        }
    }

    /// A `str` of `min..=max` bytes; `what` names the rule for the error.
    fn str(&mut self, min: usize, max: usize, what: &'static str) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        if len < min || len > max {
            return Err(DecodeError::Malformed(what));
        }
        let bytes = self
            .buf
            .get(self.pos..self.pos + len)
            .ok_or(DecodeError::Malformed("body ends inside a field"))?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8)?;
        self.pos += len;
        Ok(s.to_owned())
    }

    fn upstream_status(&mut self) -> Result<UpstreamStatus, DecodeError> {
        Ok(match self.u8()? {
            0 => UpstreamStatus::Accepted,
            1 => UpstreamStatus::Refused(RefuseReason::from_u8(self.u8()?)),
            _ => return Err(DecodeError::Malformed("unknown upstream status tag")),
        })
    }

    fn status(&mut self) -> Result<PushStatus, DecodeError> {
        Ok(match self.u8()? {
            0 => match self.u32()? {
                0 => return Err(DecodeError::Malformed("Delivered to 0 devices")),
                n => PushStatus::Delivered(n),
            },
            1 => PushStatus::Offline,
            // An unknown reason is kept (`Other`): a newer server may add reasons.
            2 => PushStatus::Refused(RefuseReason::from_u8(self.u8()?)),
            3 => PushStatus::Acked,
            4 if self.version >= PROTOCOL_V2 => PushStatus::Accepted,
            _ => return Err(DecodeError::Malformed("unknown status tag")),
        })
    }

    /// Offset of the `rest` field (the payload): everything left.
    fn rest(&mut self) -> usize {
        let at = self.pos;
        self.pos = self.buf.len();
        at
    }

    /// Refuses bytes after the last field (version 1); from version 2 on they are fields of a
    /// later revision and ignored.
    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() || self.version >= PROTOCOL_V2 {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "trailing bytes after the last field",
            ))
        }
    }
}

/// Parses a body of a known type. Payload fields are left empty and their offset in the body
/// returned, so the caller can slice them out of the buffer after consuming the frame.
fn parse_body(kind: u8, body: &[u8], version: u8) -> Result<(Frame, Option<usize>), DecodeError> {
    let mut r = Reader {
        buf: body,
        pos: 0,
        version,
    };
    let mut payload_at = None;
    let frame = match kind {
        kind::LOGIN => Frame::Login(Login {
            version: {
                // A Login follows the rules of the version it carries.
                let v = r.u8()?;
                r.version = v;
                v
            },
            flags: r.u8()?,
            user: r.str(1, limits::USER_MAX, "user must be 1..=128 bytes")?,
            device: r.str(0, limits::DEVICE_MAX, "device must be at most 64 bytes")?,
            token: r.str(0, limits::TOKEN_MAX, "token must be at most 512 bytes")?,
            heartbeat_ms: r.u32()?,
            network_key: r.str(
                0,
                limits::NETWORK_KEY_MAX,
                "network_key must be at most 64 bytes",
            )?,
        }),
        kind::LOGIN_OK => Frame::LoginOk(LoginOk {
            session_id: r.u64()?,
            server_epoch: r.u64()?,
            min_lease_ms: r.u32()?,
            max_lease_ms: r.u32()?,
            lease_multiplier_pct: r.u16("lease_multiplier_pct must fit u16")?,
            grace_ms: r.u32()?,
            prior_ms: r.u32()?,
            max_frame: r.u32()?,
        }),
        kind::PING => Frame::Ping(Ping {
            lease_ms: r.heartbeat("lease_ms must be at most 2^28-1")?,
        }),
        kind::PONG => Frame::Pong(Pong {
            deadline_ms: r.heartbeat("deadline_ms must be at most 2^28-1")?,
        }),
        kind::PUSH => {
            let id = r.u64()?;
            payload_at = Some(r.rest());
            Frame::Push(Push {
                id,
                payload: Bytes::new(),
            })
        }
        kind::PUSH_ACK => Frame::PushAck(PushAck { id: r.u64()? }),
        kind::SEND => {
            let to = r.str(1, limits::USER_MAX, "to must be 1..=128 bytes")?;
            let client_id = r.u64()?;
            payload_at = Some(r.rest());
            Frame::Send(Send {
                to,
                client_id,
                payload: Bytes::new(),
            })
        }
        kind::SEND_RESULT => Frame::SendResult(SendResult {
            client_id: r.u64()?,
            status: r.status()?,
        }),
        kind::KICK => Frame::Kick(Kick {
            reason: CloseCode::from_u16(r.u16("reason must fit u16")?),
            may_reconnect: r.bool("may_reconnect must be 0 or 1")?,
            jitter_ms: r.u32()?,
        }),
        kind::GO_AWAY => Frame::GoAway(GoAway {
            reason: CloseCode::from_u16(r.u16("reason must fit u16")?),
            may_reconnect: r.bool("may_reconnect must be 0 or 1")?,
            window_ms: r.u32()?,
        }),
        kind::CLOSE => Frame::Close(Close {
            code: CloseCode::from_u16(r.u16("code must fit u16")?),
            text: r.str(0, limits::CLOSE_TEXT_MAX, "text must be at most 256 bytes")?,
        }),
        kind::PROBE => Frame::Probe(Probe { delay_ms: r.u32()? }),
        kind::PROBE_FIRE => Frame::ProbeFire,
        kind::NET_REPORT => Frame::NetReport(NetReport {
            learned_ms: r.u32()?,
        }),
        kind::BACKEND_PUSH => {
            let id = r.u64()?;
            let flags = r.u8()?;
            let user = r.str(1, limits::USER_MAX, "user must be 1..=128 bytes")?;
            payload_at = Some(r.rest());
            Frame::BackendPush(BackendPush {
                id,
                flags,
                user,
                payload: Bytes::new(),
            })
        }
        kind::PUSH_RESULT => Frame::PushResult(PushResult {
            id: r.u64()?,
            status: match r.status()? {
                PushStatus::Accepted => {
                    return Err(DecodeError::Malformed("Accepted answers only a Send"))
                }
                status => status,
            },
        }),
        kind::UPSTREAM => {
            let client_id = r.u64()?;
            let flags = r.u8()?;
            payload_at = Some(r.rest());
            Frame::Upstream(Upstream {
                client_id,
                flags,
                payload: Bytes::new(),
            })
        }
        kind::UPSTREAM_RESULT => {
            let client_id = r.u64()?;
            let status = r.upstream_status()?;
            payload_at = Some(r.rest());
            Frame::UpstreamResult(UpstreamResult {
                client_id,
                status,
                reply: Bytes::new(),
            })
        }
        kind::UPSTREAM_DELIVER => {
            let id = r.u64()?;
            let user = r.str(1, limits::USER_MAX, "user must be 1..=128 bytes")?;
            let device = r.str(0, limits::DEVICE_MAX, "device must be at most 64 bytes")?;
            let session_id = r.u64()?;
            let client_id = r.u64()?;
            payload_at = Some(r.rest());
            Frame::UpstreamDeliver(UpstreamDeliver {
                id,
                user,
                device,
                session_id,
                client_id,
                payload: Bytes::new(),
            })
        }
        kind::UPSTREAM_ANSWER => {
            let id = r.u64()?;
            let accepted = r.bool("accepted must be 0 or 1")?;
            payload_at = Some(r.rest());
            Frame::UpstreamAnswer(UpstreamAnswer {
                id,
                accepted,
                reply: Bytes::new(),
            })
        }
        kind::MESSAGE => {
            let id = r.u64()?;
            let from_user = r.str(1, limits::USER_MAX, "from_user must be 1..=128 bytes")?;
            let from_device = r.str(
                0,
                limits::DEVICE_MAX,
                "from_device must be at most 64 bytes",
            )?;
            payload_at = Some(r.rest());
            Frame::Message(Message {
                id,
                from_user,
                from_device,
                payload: Bytes::new(),
            })
        }
        kind::TOKEN_NOTICE => Frame::TokenNotice(TokenNotice {
            expires_in_ms: r.u32()?,
        }),
        kind::REFRESH => Frame::Refresh(Refresh {
            token: r.str(1, limits::TOKEN_MAX, "token must be 1..=512 bytes")?,
        }),
        kind::REFRESHED => Frame::Refreshed,
        other => return Err(DecodeError::UnknownType(other)),
    };
    r.finish()?;
    Ok((frame, payload_at))
}

fn set_payload(frame: &mut Frame, payload: Bytes) {
    match frame {
        Frame::Push(p) => p.payload = payload,
        Frame::Send(s) => s.payload = payload,
        Frame::BackendPush(b) => b.payload = payload,
        Frame::Upstream(u) => u.payload = payload,
        Frame::UpstreamResult(u) => u.reply = payload,
        Frame::UpstreamDeliver(u) => u.payload = payload,
        Frame::UpstreamAnswer(u) => u.reply = payload,
        Frame::Message(m) => m.payload = payload,
        _ => debug_assert!(false, "set_payload on a frame without payload"),
    }
}

fn check_str(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), EncodeError> {
    if s.len() < min || s.len() > max {
        return Err(EncodeError::StrLength {
            field,
            len: s.len(),
            min,
            max,
        });
    }
    Ok(())
}

fn check_heartbeat(field: &'static str, v: u32) -> Result<(), EncodeError> {
    if v > limits::HEARTBEAT_MS_MAX {
        return Err(EncodeError::OutOfRange {
            field,
            value: v.into(),
            max: limits::HEARTBEAT_MS_MAX.into(),
        });
    }
    Ok(())
}

/// The encode-side twin of the bounds `parse_body` enforces.
fn validate(frame: &Frame) -> Result<(), EncodeError> {
    match frame {
        Frame::Login(l) => {
            check_str("user", &l.user, 1, limits::USER_MAX)?;
            check_str("device", &l.device, 0, limits::DEVICE_MAX)?;
            check_str("token", &l.token, 0, limits::TOKEN_MAX)?;
            check_str("network_key", &l.network_key, 0, limits::NETWORK_KEY_MAX)
        }
        Frame::Ping(p) => check_heartbeat("lease_ms", p.lease_ms),
        Frame::Pong(p) => check_heartbeat("deadline_ms", p.deadline_ms),
        Frame::Send(s) => check_str("to", &s.to, 1, limits::USER_MAX),
        Frame::Close(c) => check_str("text", &c.text, 0, limits::CLOSE_TEXT_MAX),
        Frame::BackendPush(b) => check_str("user", &b.user, 1, limits::USER_MAX),
        Frame::SendResult(SendResult { status, .. }) => check_status(status),
        Frame::PushResult(PushResult { status, .. }) => match status {
            PushStatus::Accepted => Err(EncodeError::Invalid("Accepted answers only a Send")),
            _ => check_status(status),
        },
        Frame::UpstreamResult(UpstreamResult {
            status: UpstreamStatus::Refused(reason),
            ..
        }) => check_reason(*reason),
        Frame::UpstreamDeliver(d) => {
            check_str("user", &d.user, 1, limits::USER_MAX)?;
            check_str("device", &d.device, 0, limits::DEVICE_MAX)
        }
        Frame::Message(m) => {
            check_str("from_user", &m.from_user, 1, limits::USER_MAX)?;
            check_str("from_device", &m.from_device, 0, limits::DEVICE_MAX)
        }
        Frame::Refresh(r) => check_str("token", &r.token, 1, limits::TOKEN_MAX),
        Frame::Ignored { .. } => Err(EncodeError::Invalid("an ignored frame has no body")),
        Frame::UpstreamResult(_) | Frame::Upstream(_) | Frame::UpstreamAnswer(_) => Ok(()),
        Frame::LoginOk(_)
        | Frame::Push(_)
        | Frame::PushAck(_)
        | Frame::Kick(_)
        | Frame::GoAway(_)
        | Frame::Probe(_)
        | Frame::ProbeFire
        | Frame::NetReport(_)
        | Frame::TokenNotice(_)
        | Frame::Refreshed => Ok(()),
    }
}

/// A status the decoder would give back unchanged: no `Delivered(0)`, and no `Other` refuse
/// reason that carries a named reason's value.
fn check_status(status: &PushStatus) -> Result<(), EncodeError> {
    match status {
        PushStatus::Delivered(0) => Err(EncodeError::Invalid("Delivered to 0 devices")),
        PushStatus::Refused(reason) => check_reason(*reason),
        _ => Ok(()),
    }
}

/// No `Other` refuse reason that carries a named reason's value.
fn check_reason(reason: RefuseReason) -> Result<(), EncodeError> {
    match reason {
        RefuseReason::Other(v) if !matches!(RefuseReason::from_u8(v), RefuseReason::Other(_)) => {
            Err(EncodeError::Invalid(
                "RefuseReason::Other with a named reason's value",
            ))
        }
        _ => Ok(()),
    }
}

fn v32(v: u32) -> usize {
    varint::len(v.into())
}

fn str_len(s: &str) -> usize {
    varint::len(s.len() as u64) + s.len()
}

fn status_len(s: &PushStatus) -> usize {
    1 + match s {
        PushStatus::Delivered(n) => v32(*n),
        PushStatus::Offline | PushStatus::Acked | PushStatus::Accepted => 0,
        PushStatus::Refused(_) => 1,
    }
}

fn body_len(frame: &Frame) -> usize {
    match frame {
        Frame::Login(l) => {
            2 + str_len(&l.user)
                + str_len(&l.device)
                + str_len(&l.token)
                + v32(l.heartbeat_ms)
                + str_len(&l.network_key)
        }
        Frame::LoginOk(o) => {
            varint::len(o.session_id)
                + varint::len(o.server_epoch)
                + v32(o.min_lease_ms)
                + v32(o.max_lease_ms)
                + v32(o.lease_multiplier_pct.into())
                + v32(o.grace_ms)
                + v32(o.prior_ms)
                + v32(o.max_frame)
        }
        Frame::Ping(p) => v32(p.lease_ms),
        Frame::Pong(p) => v32(p.deadline_ms),
        Frame::Push(p) => varint::len(p.id) + p.payload.len(),
        Frame::PushAck(a) => varint::len(a.id),
        Frame::Send(s) => str_len(&s.to) + varint::len(s.client_id) + s.payload.len(),
        Frame::SendResult(r) => varint::len(r.client_id) + status_len(&r.status),
        Frame::Kick(k) => v32(k.reason.to_u16().into()) + 1 + v32(k.jitter_ms),
        Frame::GoAway(g) => v32(g.reason.to_u16().into()) + 1 + v32(g.window_ms),
        Frame::Close(c) => v32(c.code.to_u16().into()) + str_len(&c.text),
        Frame::Probe(p) => v32(p.delay_ms),
        Frame::ProbeFire => 0,
        Frame::NetReport(n) => v32(n.learned_ms),
        Frame::BackendPush(b) => varint::len(b.id) + 1 + str_len(&b.user) + b.payload.len(),
        Frame::PushResult(r) => varint::len(r.id) + status_len(&r.status),
        Frame::Upstream(u) => varint::len(u.client_id) + 1 + u.payload.len(),
        Frame::UpstreamResult(r) => {
            varint::len(r.client_id) + upstream_status_len(&r.status) + r.reply.len()
        }
        Frame::UpstreamDeliver(d) => {
            varint::len(d.id)
                + str_len(&d.user)
                + str_len(&d.device)
                + varint::len(d.session_id)
                + varint::len(d.client_id)
                + d.payload.len()
        }
        Frame::UpstreamAnswer(a) => varint::len(a.id) + 1 + a.reply.len(),
        Frame::Message(m) => {
            varint::len(m.id) + str_len(&m.from_user) + str_len(&m.from_device) + m.payload.len()
        }
        Frame::TokenNotice(n) => v32(n.expires_in_ms),
        Frame::Refresh(r) => str_len(&r.token),
        Frame::Refreshed => 0,
        Frame::Ignored { .. } => 0,
    }
}

fn upstream_status_len(s: &UpstreamStatus) -> usize {
    match s {
        UpstreamStatus::Accepted => 1,
        UpstreamStatus::Refused(_) => 2,
    }
}

fn put_upstream_status(s: &UpstreamStatus, out: &mut BytesMut) {
    match s {
        UpstreamStatus::Accepted => out.put_u8(0),
        UpstreamStatus::Refused(reason) => {
            out.put_u8(1);
            out.put_u8(reason.to_u8());
        }
    }
}

fn put_str(s: &str, out: &mut BytesMut) {
    varint::put(s.len() as u64, out);
    out.put_slice(s.as_bytes());
}

fn put_status(s: &PushStatus, out: &mut BytesMut) {
    match s {
        PushStatus::Delivered(n) => {
            out.put_u8(0);
            varint::put((*n).into(), out);
        }
        PushStatus::Offline => out.put_u8(1),
        PushStatus::Refused(reason) => {
            out.put_u8(2);
            out.put_u8(reason.to_u8());
        }
        PushStatus::Acked => out.put_u8(3),
        PushStatus::Accepted => out.put_u8(4),
    }
}

fn write_body(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Login(l) => {
            out.put_u8(l.version);
            out.put_u8(l.flags);
            put_str(&l.user, out);
            put_str(&l.device, out);
            put_str(&l.token, out);
            varint::put(l.heartbeat_ms.into(), out);
            put_str(&l.network_key, out);
        }
        Frame::LoginOk(o) => {
            varint::put(o.session_id, out);
            varint::put(o.server_epoch, out);
            varint::put(o.min_lease_ms.into(), out);
            varint::put(o.max_lease_ms.into(), out);
            varint::put(o.lease_multiplier_pct.into(), out);
            varint::put(o.grace_ms.into(), out);
            varint::put(o.prior_ms.into(), out);
            varint::put(o.max_frame.into(), out);
        }
        Frame::Ping(p) => varint::put(p.lease_ms.into(), out),
        Frame::Pong(p) => varint::put(p.deadline_ms.into(), out),
        Frame::Push(p) => {
            varint::put(p.id, out);
            out.put_slice(&p.payload);
        }
        Frame::PushAck(a) => varint::put(a.id, out),
        Frame::Send(s) => {
            put_str(&s.to, out);
            varint::put(s.client_id, out);
            out.put_slice(&s.payload);
        }
        Frame::SendResult(r) => {
            varint::put(r.client_id, out);
            put_status(&r.status, out);
        }
        Frame::Kick(k) => {
            varint::put(k.reason.to_u16().into(), out);
            out.put_u8(k.may_reconnect.into());
            varint::put(k.jitter_ms.into(), out);
        }
        Frame::GoAway(g) => {
            varint::put(g.reason.to_u16().into(), out);
            out.put_u8(g.may_reconnect.into());
            varint::put(g.window_ms.into(), out);
        }
        Frame::Close(c) => {
            varint::put(c.code.to_u16().into(), out);
            put_str(&c.text, out);
        }
        Frame::Probe(p) => varint::put(p.delay_ms.into(), out),
        Frame::ProbeFire => {}
        Frame::NetReport(n) => varint::put(n.learned_ms.into(), out),
        Frame::BackendPush(b) => {
            varint::put(b.id, out);
            out.put_u8(b.flags);
            put_str(&b.user, out);
            out.put_slice(&b.payload);
        }
        Frame::PushResult(r) => {
            varint::put(r.id, out);
            put_status(&r.status, out);
        }
        Frame::Upstream(u) => {
            varint::put(u.client_id, out);
            out.put_u8(u.flags);
            out.put_slice(&u.payload);
        }
        Frame::UpstreamResult(r) => {
            varint::put(r.client_id, out);
            put_upstream_status(&r.status, out);
            out.put_slice(&r.reply);
        }
        Frame::UpstreamDeliver(d) => {
            varint::put(d.id, out);
            put_str(&d.user, out);
            put_str(&d.device, out);
            varint::put(d.session_id, out);
            varint::put(d.client_id, out);
            out.put_slice(&d.payload);
        }
        Frame::UpstreamAnswer(a) => {
            varint::put(a.id, out);
            out.put_u8(a.accepted.into());
            out.put_slice(&a.reply);
        }
        Frame::Message(m) => {
            varint::put(m.id, out);
            put_str(&m.from_user, out);
            put_str(&m.from_device, out);
            out.put_slice(&m.payload);
        }
        Frame::TokenNotice(n) => varint::put(n.expires_in_ms.into(), out),
        Frame::Refresh(r) => put_str(&r.token, out),
        Frame::Refreshed => {}
        Frame::Ignored { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode(&frame, &mut buf).unwrap();
        assert_eq!(buf.len(), encoded_len(&frame));
        let bytes = buf.to_vec();
        assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(), Some(frame));
        assert!(buf.is_empty());
        bytes
    }

    #[test]
    fn heartbeats_fit_six_bytes() {
        for v in [0, 1, 127, 128, 1 << 21, limits::HEARTBEAT_MS_MAX] {
            assert!(round_trip(Frame::Ping(Ping { lease_ms: v })).len() <= 6);
            assert!(round_trip(Frame::Pong(Pong { deadline_ms: v })).len() <= 6);
        }
        assert_eq!(
            round_trip(Frame::Ping(Ping { lease_ms: 300_000 })),
            [0x03, 0x03, 0xe0, 0xa7, 0x12]
        );
    }

    #[test]
    fn heartbeat_above_bound_is_refused_both_ways() {
        let mut buf = BytesMut::new();
        let too_big = Frame::Ping(Ping {
            lease_ms: limits::HEARTBEAT_MS_MAX + 1,
        });
        assert!(matches!(
            encode(&too_big, &mut buf),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(buf.is_empty());
        buf.extend_from_slice(&[0x04, 0x05, 0x80, 0x80, 0x80, 0x80, 0x01]);
        assert!(matches!(
            decode(&mut buf, DEFAULT_MAX_FRAME),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(buf.len(), 7, "an error consumes nothing");
    }

    #[test]
    fn payload_is_a_slice_of_the_receive_buffer() {
        let mut buf = BytesMut::new();
        let push = Frame::Push(Push {
            id: 7,
            payload: Bytes::from_static(b"hello"),
        });
        encode(&push, &mut buf).unwrap();
        encode(&Frame::ProbeFire, &mut buf).unwrap();
        let base = buf.as_ptr() as usize;
        let Some(Frame::Push(p)) = decode(&mut buf, 64).unwrap() else {
            panic!("not a push")
        };
        assert_eq!(&p.payload[..], b"hello");
        assert_eq!(p.payload.as_ptr() as usize, base + 3, "payload was copied");
        assert_eq!(decode(&mut buf, 64).unwrap(), Some(Frame::ProbeFire));
        assert_eq!(decode(&mut buf, 64).unwrap(), None);
    }

    #[test]
    fn incomplete_consumes_nothing_and_oversized_needs_only_the_prefix() {
        let mut buf = BytesMut::from(&[0x05, 0x03, 0x01][..]);
        assert_eq!(decode(&mut buf, 64).unwrap(), None);
        assert_eq!(buf.len(), 3);
        let mut buf = BytesMut::from(&[0x05, 0x81, 0x80, 0x04][..]);
        assert_eq!(
            decode(&mut buf, DEFAULT_MAX_FRAME),
            Err(DecodeError::Oversized {
                len: 65_537,
                max: DEFAULT_MAX_FRAME
            })
        );
        let mut buf = BytesMut::from(&[0x0f][..]);
        assert_eq!(decode(&mut buf, 64), Err(DecodeError::UnknownType(0x0f)));
        assert_eq!(
            DecodeError::UnknownType(0x0f).close_code(),
            CloseCode::UnknownFrame
        );
    }

    #[test]
    fn encode_refuses_out_of_bound_strings_and_writes_nothing() {
        let mut buf = BytesMut::from(&b"kept"[..]);
        let login = Frame::Login(Login {
            version: PROTOCOL_VERSION,
            flags: 0,
            user: String::new(),
            device: String::new(),
            token: String::new(),
            heartbeat_ms: 0,
            network_key: String::new(),
        });
        assert_eq!(
            encode(&login, &mut buf),
            Err(EncodeError::StrLength {
                field: "user",
                len: 0,
                min: 1,
                max: limits::USER_MAX
            })
        );
        assert_eq!(&buf[..], b"kept");
    }
}
