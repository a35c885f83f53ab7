//! WebSocket (RFC 6455) for the load connections, client side and pure: the upgrade request,
//! the check of the server's `101`, masked frames out and the server's frames unwrapped in
//! place. No socket and no clock: the worker (`worker/ws.rs`) calls these.
//!
//! A WebSocket run keeps one [`WsConn`] per slot beside the slots (as a TLS run keeps its
//! sessions), and a run without WebSocket has none. What each protocol expects on the upgrade:
//!
//! | protocol | server | subprotocol offered | messages |
//! |---|---|---|---|
//! | tether | `[websocket] listen` (path `/tether` by default) | `tether` | binary |
//! | MQTT | mosquitto's `listener` with `protocol websockets` | `mqtt` (required by it) | binary |
//! | NATS | nats-server's `websocket { }` block (any path) | none | binary (text taken too) |
//!
//! The server's data frames, binary or text, concatenated, are the protocol's byte stream: a
//! message may hold several of its frames and one of its frames may span messages, so the
//! unwrapping never waits for a whole message.

use base64::Engine;
use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::wire::Protocol;

/// The GUID every `Sec-WebSocket-Accept` is derived with (RFC 6455 §1.3).
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest `101` head accepted.
pub const MAX_HEAD: usize = 8 * 1024;

/// Opcodes (RFC 6455 §5.2).
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The WebSocket part of a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WsJob {
    /// The path of the upgrade request.
    pub path: String,
}

/// The subprotocol a connection of `protocol` offers, if any.
pub fn subprotocol(protocol: Protocol) -> Option<&'static str> {
    match protocol {
        Protocol::Tether => Some("tether"),
        Protocol::Mqtt => Some("mqtt"),
        Protocol::Nats => None,
    }
}

/// The `Sec-WebSocket-Key` of a 16-byte nonce.
pub fn key(nonce: &[u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
pub fn accept(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Appends the upgrade request for `path` on `host`, with the key of `nonce`.
pub fn request(
    path: &str,
    host: &str,
    nonce: &[u8; 16],
    subprotocol: Option<&str>,
    out: &mut BytesMut,
) {
    out.put_slice(b"GET ");
    out.put_slice(path.as_bytes());
    out.put_slice(b" HTTP/1.1\r\nHost: ");
    out.put_slice(host.as_bytes());
    out.put_slice(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
    out.put_slice(key(nonce).as_bytes());
    out.put_slice(b"\r\nSec-WebSocket-Version: 13\r\n");
    if let Some(p) = subprotocol {
        out.put_slice(b"Sec-WebSocket-Protocol: ");
        out.put_slice(p.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Why an upgrade failed; each is counted under its own key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("ws upgrade: not an HTTP/1.1 answer")]
    NotHttp,
    #[error("ws upgrade: refused with HTTP {0}")]
    Refused(u16),
    #[error("ws upgrade: 101 without Upgrade: websocket")]
    NotWebSocket,
    #[error("ws upgrade: no Sec-WebSocket-Accept")]
    NoAccept,
    #[error("ws upgrade: wrong Sec-WebSocket-Accept")]
    WrongAccept,
    #[error("ws upgrade: the server chose another subprotocol")]
    Subprotocol,
    #[error("ws upgrade: answer head longer than {MAX_HEAD} bytes")]
    TooLong,
    #[error("ws upgrade: closed before the answer")]
    Closed,
    #[error("ws upgrade: timeout")]
    Timeout,
}

/// Where the answer's head ends in `buf` (just past its blank line), if it is all there.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Checks the server's answer `head` (through its blank line) to the request made with
/// `nonce` offering `subprotocol`.
pub fn check_answer(
    head: &[u8],
    nonce: &[u8; 16],
    subprotocol: Option<&str>,
) -> Result<(), UpgradeError> {
    let text = std::str::from_utf8(head).map_err(|_| UpgradeError::NotHttp)?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    if parts.next() != Some("HTTP/1.1") {
        return Err(UpgradeError::NotHttp);
    }
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or(UpgradeError::NotHttp)?;
    if code != 101 {
        return Err(UpgradeError::Refused(code));
    }
    let (mut upgrade, mut accepted, mut chosen) = (false, None, None);
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(UpgradeError::NotHttp)?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade |= value.eq_ignore_ascii_case("websocket"),
            "sec-websocket-accept" => accepted = Some(value),
            "sec-websocket-protocol" => chosen = Some(value),
            _ => {}
        }
    }
    if !upgrade {
        return Err(UpgradeError::NotWebSocket);
    }
    match accepted {
        None => return Err(UpgradeError::NoAccept),
        Some(a) if a != accept(&key(nonce)) => return Err(UpgradeError::WrongAccept),
        Some(_) => {}
    }
    // A server may choose none of the subprotocols offered, never one that was not.
    if chosen.is_some_and(|c| Some(c) != subprotocol) {
        return Err(UpgradeError::Subprotocol);
    }
    Ok(())
}

/// Appends one final client frame of `opcode` carrying `payload`, masked with `mask`.
pub fn frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut BytesMut) {
    let n = payload.len();
    out.reserve(14 + n);
    out.put_u8(0x80 | opcode);
    if n < 126 {
        out.put_u8(0x80 | n as u8);
    } else if n <= 0xffff {
        out.put_u8(0x80 | 126);
        out.put_u16(n as u16);
    } else {
        out.put_u8(0x80 | 127);
        out.put_u64(n as u64);
    }
    out.put_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// What a server's control frame asks of the connection, handled after the data before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// A Ping: answer with a Pong carrying this payload.
    Ping(Vec<u8>),
    /// A Close with its code (1005: none given).
    Close(u16),
}

/// Why the server's frames cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    #[error("ws: a masked frame from the server")]
    Masked,
    #[error("ws: reserved bits set")]
    Reserved,
    #[error("ws: unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("ws: fragmented or long control frame")]
    Control,
}

/// The server's frames, read as they arrive: the header of the frame being read (at most 10
/// bytes, as a server's frames are not masked), how much of its payload is left, and the
/// payload of a control frame (at most 125 bytes).
#[derive(Debug, Default)]
pub struct Unwrap {
    /// Header bytes of the next frame received so far.
    head: [u8; 10],
    /// How many of `head` are filled; 0 while a payload is being read.
    head_len: u8,
    /// Whether a payload is being read (else a header).
    in_payload: bool,
    /// The opcode of the frame whose payload is being read.
    opcode: u8,
    /// Payload bytes of that frame still to come.
    remaining: u64,
    /// A control frame's payload so far.
    control: Vec<u8>,
}

impl Unwrap {
    /// Unwraps the frame bytes `buf[start..]` in place: the data they carry moves down to
    /// `start` and `buf` is cut after it; headers and control frames are taken out, control
    /// frames appended to `controls`. Bytes before `start` are left alone.
    pub fn feed(
        &mut self,
        buf: &mut BytesMut,
        start: usize,
        controls: &mut Vec<Control>,
    ) -> Result<(), UnwrapError> {
        let end = buf.len();
        let (mut r, mut w) = (start, start);
        while r < end {
            if !self.in_payload {
                let need = self.head_need();
                let take = (need - self.head_len as usize).min(end - r);
                let at = self.head_len as usize;
                self.head[at..at + take].copy_from_slice(&buf[r..r + take]);
                self.head_len += take as u8;
                r += take;
                if (self.head_len as usize) < self.head_need() {
                    continue;
                }
                self.start_payload(controls)?;
                continue;
            }
            let take = self.remaining.min((end - r) as u64) as usize;
            if self.opcode >= op::CLOSE {
                self.control.extend_from_slice(&buf[r..r + take]);
            } else {
                buf.copy_within(r..r + take, w);
                w += take;
            }
            r += take;
            self.remaining -= take as u64;
            if self.remaining == 0 {
                self.end_frame(controls);
            }
        }
        buf.truncate(w);
        Ok(())
    }

    /// The length of the header being read, as far as its bytes so far tell.
    fn head_need(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        match self.head[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        }
    }

    /// A whole header is in: checks it and starts its payload.
    fn start_payload(&mut self, controls: &mut Vec<Control>) -> Result<(), UnwrapError> {
        let (b0, b1) = (self.head[0], self.head[1]);
        if b1 & 0x80 != 0 {
            return Err(UnwrapError::Masked);
        }
        if b0 & 0x70 != 0 {
            return Err(UnwrapError::Reserved);
        }
        let opcode = b0 & 0x0f;
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        };
        match opcode {
            op::CONTINUATION | op::TEXT | op::BINARY => {}
            op::CLOSE | op::PING | op::PONG => {
                if b0 & 0x80 == 0 || len > 125 {
                    return Err(UnwrapError::Control);
                }
                self.control.clear();
            }
            other => return Err(UnwrapError::Opcode(other)),
        }
        self.opcode = opcode;
        self.remaining = len;
        self.head_len = 0;
        self.in_payload = true;
        if len == 0 {
            self.end_frame(controls);
        }
        Ok(())
    }

    /// A frame's payload is all in.
    fn end_frame(&mut self, controls: &mut Vec<Control>) {
        self.in_payload = false;
        match self.opcode {
            op::PING => controls.push(Control::Ping(std::mem::take(&mut self.control))),
            op::CLOSE => {
                let code = match self.control.as_slice() {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => 1005,
                };
                controls.push(Control::Close(code));
            }
            _ => {}
        }
    }
}

/// One connection's WebSocket: waiting for the `101`, then open.
#[derive(Debug)]
pub enum WsConn {
    /// No connection (a free slot, or one not yet connected).
    Idle,
    /// The request went out with the key of this nonce; the answer is awaited.
    Upgrading([u8; 16]),
    /// Upgraded: the server's frames are unwrapped by this.
    Open(Box<Unwrap>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked).
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let n = payload.len();
        if n < 126 {
            out.push(n as u8);
        } else if n <= 0xffff {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `wire` in pieces cut at `cuts`, as reads would append them to one buffer that
    /// the caller empties of data after each feed; the data and the controls.
    fn unwrap_split(wire: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<Control>) {
        let mut u = Unwrap::default();
        let (mut data, mut controls) = (Vec::new(), Vec::new());
        let mut buf = BytesMut::new();
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
            // Leave some data in the buffer, as a partial protocol frame would be.
            let keep = buf.len();
            buf.extend_from_slice(&wire[from..cut]);
            u.feed(&mut buf, keep, &mut controls).unwrap();
            data.extend_from_slice(&buf[keep..]);
            buf.truncate(keep);
            if from % 2 == 0 {
                buf.extend_from_slice(b"x");
            }
            from = cut;
        }
        (data, controls)
    }

    #[test]
    fn the_rfc_example_key_is_accepted() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(key(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn the_request_names_path_key_and_subprotocol() {
        let mut out = BytesMut::new();
        request(
            "/tether",
            "127.0.0.1:7790",
            b"the sample nonce",
            Some("tether"),
            &mut out,
        );
        assert_eq!(
            &out[..],
            b"GET /tether HTTP/1.1\r\nHost: 127.0.0.1:7790\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: tether\r\n\r\n"
        );
    }

    #[test]
    fn answers_are_checked_by_cause() {
        let nonce = b"the sample nonce";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: tether\r\n\r\n";
        assert_eq!(check_answer(ok.as_bytes(), nonce, Some("tether")), Ok(()));
        assert_eq!(
            check_answer(ok.as_bytes(), nonce, Some("mqtt")),
            Err(UpgradeError::Subprotocol)
        );
        let none = ok.replace("Sec-WebSocket-Protocol: tether\r\n", "");
        assert_eq!(check_answer(none.as_bytes(), nonce, Some("tether")), Ok(()));
        let wrong = ok.replace("s3pP", "AAAA");
        assert_eq!(
            check_answer(wrong.as_bytes(), nonce, None),
            Err(UpgradeError::WrongAccept)
        );
        let refused = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            check_answer(refused, nonce, None),
            Err(UpgradeError::Refused(404))
        );
        assert_eq!(
            check_answer(b"SSH-2.0-OpenSSH\r\n\r\n", nonce, None),
            Err(UpgradeError::NotHttp)
        );
    }

    #[test]
    fn frames_are_masked_with_the_key() {
        let mut out = BytesMut::new();
        frame(op::BINARY, b"Hello", [0x37, 0xfa, 0x21, 0x3d], &mut out);
        // RFC 6455 §5.7, as a binary frame.
        assert_eq!(
            &out[..],
            &[0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        for n in [125usize, 126, 65_535, 65_536] {
            let mut out = BytesMut::new();
            let payload = vec![0xa5; n];
            frame(op::BINARY, &payload, [1, 2, 3, 4], &mut out);
            let at = match n {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(out.len(), at + 4 + n);
            let unmasked: Vec<u8> = out[at + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
                .collect();
            assert_eq!(unmasked, payload);
        }
    }

    #[test]
    fn data_survives_every_split() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        wire.extend(server_frame(true, op::BINARY, b"abc"));
        wire.extend(server_frame(true, op::PING, b"hi"));
        wire.extend(server_frame(false, op::BINARY, &big[..300]));
        wire.extend(server_frame(true, op::PONG, b""));
        wire.extend(server_frame(true, op::CONTINUATION, &big[300..]));
        wire.extend(server_frame(true, op::BINARY, b""));
        wire.extend(server_frame(true, op::CLOSE, &4001u16.to_be_bytes()));
        let mut expected = b"abc".to_vec();
        expected.extend_from_slice(&big);
        let want = vec![Control::Ping(b"hi".to_vec()), Control::Close(4001)];
        // Whole, one byte at a time, and at every single cut through the small frames.
        assert_eq!(unwrap_split(&wire, &[]), (expected.clone(), want.clone()));
        let bytewise: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(
            unwrap_split(&wire, &bytewise),
            (expected.clone(), want.clone())
        );
        for cut in 1..400 {
            assert_eq!(
                unwrap_split(&wire, &[cut, cut + 7, wire.len() - 3]),
                (expected.clone(), want.clone()),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bad_server_frames_are_refused() {
        let mut controls = Vec::new();
        for (bytes, err) in [
            (vec![0x82, 0x81, 1, 2, 3, 4, 0], UnwrapError::Masked),
            (vec![0xc2, 0x00], UnwrapError::Reserved),
            (vec![0x83, 0x00], UnwrapError::Opcode(3)),
            (vec![0x09, 0x00], UnwrapError::Control),
            (vec![0x89, 126, 0, 126], UnwrapError::Control),
        ] {
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(Unwrap::default().feed(&mut buf, 0, &mut controls), Err(err));
        }
    }
}
