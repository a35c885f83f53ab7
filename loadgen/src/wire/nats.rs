//! The NATS client protocol as far as the loadgen speaks it: CONNECT, SUB on one subject (in a
//! queue group for the upstream sink), PUB, and PING/PONG in both directions.
//!
//! Encoders append the client's operations; [`decode`] takes the server's operations (INFO,
//! MSG, PING, PONG, +OK, -ERR) off the front of a receive buffer. Incomplete input is not an
//! error: `Ok(None)` and nothing consumed. A control line longer than the limit without its
//! CR LF, and a MSG payload longer than the caller's maximum, are refused as soon as they are
//! seen, before the rest is waited for. Operation names are case-insensitive, as the protocol
//! document says.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Longest control line accepted (the server's default `max_control_line` is 4 KiB; INFO of a
/// clustered server can be longer, so allow more).
pub const MAX_CONTROL_LINE: usize = 64 * 1024;

/// An operation the server sends to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerOp {
    /// `INFO {json}`: the JSON text, unparsed.
    Info(String),
    /// `MSG <subject> <sid> [reply-to] <#bytes>` and its payload.
    Msg {
        subject: String,
        sid: String,
        reply_to: Option<String>,
        payload: Bytes,
    },
    Ping,
    Pong,
    /// `+OK` (only sent to verbose clients).
    Ok,
    /// `-ERR '<message>'`: the message without its quotes.
    Err(String),
}

/// Why bytes from the server are not NATS.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("control line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("unknown operation {0:?}")]
    UnknownOp(String),
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// `CONNECT {...}` with `verbose` off (no +OK after every operation) and `echo` off.
pub fn connect(name: &str, out: &mut BytesMut) {
    let options = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": false,
        "name": name,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "echo": false,
    });
    out.put_slice(b"CONNECT ");
    out.put_slice(options.to_string().as_bytes());
    out.put_slice(b"\r\n");
}

/// `SUB <subject> <sid>`.
pub fn sub(subject: &str, sid: &str, out: &mut BytesMut) {
    out.put_slice(b"SUB ");
    out.put_slice(subject.as_bytes());
    out.put_u8(b' ');
    out.put_slice(sid.as_bytes());
    out.put_slice(b"\r\n");
}

/// `SUB <subject> <queue group> <sid>`: the server hands each message to one subscriber of
/// the group.
pub fn sub_queue(subject: &str, queue: &str, sid: &str, out: &mut BytesMut) {
    out.put_slice(b"SUB ");
    out.put_slice(subject.as_bytes());
    out.put_u8(b' ');
    out.put_slice(queue.as_bytes());
    out.put_u8(b' ');
    out.put_slice(sid.as_bytes());
    out.put_slice(b"\r\n");
}

/// `PUB <subject> <#bytes>` and the payload.
pub fn publish(subject: &str, payload: &[u8], out: &mut BytesMut) {
    out.put_slice(b"PUB ");
    out.put_slice(subject.as_bytes());
    out.put_u8(b' ');
    out.put_slice(payload.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(payload);
    out.put_slice(b"\r\n");
}

pub fn ping(out: &mut BytesMut) {
    out.put_slice(b"PING\r\n");
}

pub fn pong(out: &mut BytesMut) {
    out.put_slice(b"PONG\r\n");
}

/// Takes the next whole server operation off the front of `buf` (see the module doc). `max` is
/// the largest MSG payload accepted.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<ServerOp>, DecodeError> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(DecodeError::LineTooLong(MAX_CONTROL_LINE));
        }
        return Ok(None);
    };
    if eol > MAX_CONTROL_LINE {
        return Err(DecodeError::LineTooLong(MAX_CONTROL_LINE));
    }
    let line = std::str::from_utf8(&buf[..eol])
        .map_err(|_| DecodeError::Malformed("control line is not UTF-8"))?;
    let (op, args) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i..].trim_start_matches([' ', '\t'])),
        None => (line, ""),
    };
    let op = op.to_ascii_uppercase();
    let parsed = match op.as_str() {
        "PING" => ServerOp::Ping,
        "PONG" => ServerOp::Pong,
        "+OK" => ServerOp::Ok,
        "-ERR" => ServerOp::Err(args.trim().trim_matches('\'').to_string()),
        "INFO" => ServerOp::Info(args.trim().to_string()),
        "MSG" => return decode_msg(buf, eol, max),
        _ => return Err(DecodeError::UnknownOp(op)),
    };
    buf.advance(eol + 2);
    Ok(Some(parsed))
}

/// A MSG whose control line ends at `eol`: waits for the payload and its CR LF, then consumes
/// both and hands out the payload as a slice of the buffer.
fn decode_msg(buf: &mut BytesMut, eol: usize, max: usize) -> Result<Option<ServerOp>, DecodeError> {
    let line = std::str::from_utf8(&buf[..eol]).expect("checked by decode");
    let args: Vec<&str> = line.split_ascii_whitespace().skip(1).collect();
    let (subject, sid, reply_to, len) = match args.as_slice() {
        [s, i, n] => (*s, *i, None, *n),
        [s, i, r, n] => (*s, *i, Some(*r), *n),
        _ => return Err(DecodeError::Malformed("MSG arguments")),
    };
    let len: usize = len
        .parse()
        .map_err(|_| DecodeError::Malformed("MSG byte count"))?;
    if len > max {
        return Err(DecodeError::Oversized { len, max });
    }
    let start = eol + 2;
    if buf.len() < start + len + 2 {
        return Ok(None);
    }
    if &buf[start + len..start + len + 2] != b"\r\n" {
        return Err(DecodeError::Malformed("MSG payload not followed by CR LF"));
    }
    let (subject, sid, reply_to) = (
        subject.to_string(),
        sid.to_string(),
        reply_to.map(str::to_string),
    );
    let mut msg = buf.split_to(start + len + 2);
    msg.advance(start);
    msg.truncate(len);
    Ok(Some(ServerOp::Msg {
        subject,
        sid,
        reply_to,
        payload: msg.freeze(),
    }))
}
