//! WebSocket framing (RFC 6455 §5), server side, pure: a streaming decoder of the frames a
//! client sends, and the encoder of the frames the server sends.
//!
//! The decoder never holds a message: binary payload bytes are unmasked and handed on as they
//! arrive (a tether frame may span messages, and a message may hold several), so a connection
//! keeps only the state of the frame it is in (about 40 bytes) and, while a control frame is
//! being read, its payload (at most 125 bytes).

/// Opcodes.
mod op {
    /// A continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// A text message: not tether's.
    pub const TEXT: u8 = 0x1;
    /// A binary message: tether's bytes.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Close codes this side sends (RFC 6455 §7.4.1).
pub mod code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (the server drains).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error: unmasked, reserved bits, bad opcode, fragmented control frame, ...
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data type this endpoint does not take (a text message).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Payload not valid for its type (a close reason that is not UTF-8).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message larger than allowed.
    pub const TOO_BIG: u16 = 1009;
}

/// Why a client's frames end the connection; each has its close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame no client may send: unmasked, reserved bits set, unknown opcode, a control
    /// frame fragmented or over 125 bytes, a continuation out of place, a bad close payload.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message.
    #[error("text message")]
    Text,
    /// A close reason that is not UTF-8.
    #[error("close reason is not UTF-8")]
    BadUtf8,
    /// A message over the limit.
    #[error("message too big")]
    TooBig,
}

impl FrameError {
    /// The close code that says why.
    pub fn code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => code::PROTOCOL_ERROR,
            FrameError::Text => code::UNSUPPORTED_DATA,
            FrameError::BadUtf8 => code::INVALID_PAYLOAD,
            FrameError::TooBig => code::TOO_BIG,
        }
    }
}

/// What the client's frames asked for besides bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing.
    None,
    /// The client sent Close with this code (1005: none given); the reply is in the output.
    Closed(u16),
}

/// Where the decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// Reading a frame header (`head_len` bytes of it so far).
    Header,
    /// Reading a frame's payload.
    Payload,
}

/// The state of the client's frame stream. See the [module documentation](self).
#[derive(Debug)]
pub struct Decoder {
    /// Header or payload.
    at: At,
    /// The header read so far.
    head: [u8; 14],
    /// Bytes of `head` filled.
    head_len: u8,
    /// The current frame's opcode.
    opcode: u8,
    /// Whether the current frame ends its message.
    fin: bool,
    /// The current frame's masking key.
    mask: [u8; 4],
    /// Payload bytes of the current frame read so far (the masking key's position).
    done: u64,
    /// Payload bytes of the current frame.
    len: u64,
    /// A fragmented binary message is open: its continuation frames are expected.
    in_message: bool,
    /// Bytes of the current message so far.
    message_len: u64,
    /// A control frame's payload being read (empty, and no allocation, otherwise).
    control: Vec<u8>,
}

impl Decoder {
    /// A stream at its first frame.
    pub fn new() -> Decoder {
        Decoder {
            at: At::Header,
            head: [0; 14],
            head_len: 0,
            opcode: 0,
            fin: false,
            mask: [0; 4],
            done: 0,
            len: 0,
            in_message: false,
            message_len: 0,
            control: Vec::new(),
        }
    }

    /// Reads `data`: binary payload goes to `plain`, replies (Pong, the Close echo) to `out`.
    /// Messages are at most `max_message` bytes. After [`Event::Closed`] or an error, nothing
    /// more is to be read.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
        max_message: u64,
    ) -> Result<Event, FrameError> {
        while !data.is_empty() {
            match self.at {
                At::Header => {
                    let need = self.header_len();
                    let take = (need - usize::from(self.head_len)).min(data.len());
                    let at = usize::from(self.head_len);
                    self.head[at..at + take].copy_from_slice(&data[..take]);
                    self.head_len += take as u8;
                    data = &data[take..];
                    // The length field's size is known after two bytes: ask again.
                    if usize::from(self.head_len) == self.header_len() {
                        self.start_frame(max_message)?;
                        if self.len == 0 {
                            if let Event::Closed(c) = self.end_frame(out)? {
                                return Ok(Event::Closed(c));
                            }
                        }
                    }
                }
                At::Payload => {
                    let take = (self.len - self.done).min(data.len() as u64) as usize;
                    let (chunk, rest) = data.split_at(take);
                    data = rest;
                    let target = if self.opcode >= op::CLOSE {
                        &mut self.control
                    } else {
                        &mut *plain
                    };
                    let start = target.len();
                    target.extend_from_slice(chunk);
                    for (i, b) in target[start..].iter_mut().enumerate() {
                        *b ^= self.mask[((self.done + i as u64) % 4) as usize];
                    }
                    self.done += take as u64;
                    if self.done == self.len {
                        if let Event::Closed(c) = self.end_frame(out)? {
                            return Ok(Event::Closed(c));
                        }
                    }
                }
            }
        }
        Ok(Event::None)
    }

    /// Bytes of the header being read: 2, then 2 + the length field + the masking key.
    fn header_len(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if self.head[1] & 0x80 != 0 { 4 } else { 0 }
    }

    /// Checks a whole header and starts its payload.
    fn start_frame(&mut self, max_message: u64) -> Result<(), FrameError> {
        let (b0, b1) = (self.head[0], self.head[1]);
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("unmasked client frame"));
        }
        self.fin = b0 & 0x80 != 0;
        self.opcode = b0 & 0x0f;
        let (len, at) = match b1 & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                4,
            ),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        self.mask.copy_from_slice(&self.head[at..at + 4]);
        match self.opcode {
            op::CLOSE | op::PING | op::PONG => {
                if !self.fin || len > 125 {
                    return Err(FrameError::Protocol("fragmented or long control frame"));
                }
            }
            op::TEXT => return Err(FrameError::Text),
            op::BINARY if self.in_message => {
                return Err(FrameError::Protocol(
                    "a new message inside a fragmented one",
                ))
            }
            op::CONTINUATION if !self.in_message => {
                return Err(FrameError::Protocol("a continuation outside a message"))
            }
            op::BINARY | op::CONTINUATION => {
                self.message_len = self.message_len.saturating_add(len);
                if self.message_len > max_message {
                    return Err(FrameError::TooBig);
                }
            }
            _ => return Err(FrameError::Protocol("unknown opcode")),
        }
        self.len = len;
        self.done = 0;
        self.head_len = 0;
        self.at = At::Payload;
        Ok(())
    }

    /// The current frame is complete.
    fn end_frame(&mut self, out: &mut Vec<u8>) -> Result<Event, FrameError> {
        self.at = At::Header;
        self.head_len = 0;
        let event = match self.opcode {
            op::BINARY | op::CONTINUATION => {
                self.in_message = !self.fin;
                if self.fin {
                    self.message_len = 0;
                }
                Event::None
            }
            op::PING => {
                encode(op::PONG, &self.control, out);
                Event::None
            }
            op::PONG => Event::None,
            _ => {
                let code = close_payload(&self.control)?;
                // The reply echoes the code (none when none was given).
                let reply = if code == 1005 {
                    Vec::new()
                } else {
                    code.to_be_bytes().to_vec()
                };
                encode(op::CLOSE, &reply, out);
                Event::Closed(code)
            }
        };
        self.control = Vec::new();
        Ok(event)
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

/// The code of a Close payload (1005 when it has none); refuses a payload no client may send.
fn close_payload(p: &[u8]) -> Result<u16, FrameError> {
    match p {
        [] => Ok(1005),
        [_] => Err(FrameError::Protocol("one-byte close payload")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("close code not allowed on the wire"));
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::BadUtf8)?;
            Ok(code)
        }
    }
}

/// Appends one unmasked frame (server to client) with `opcode` and `payload`.
fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends `payload` as one binary message.
pub fn binary(payload: &[u8], out: &mut Vec<u8>) {
    encode(op::BINARY, payload, out);
}

/// Appends a Close frame with `code` and a short `reason` (at most 123 bytes are sent).
pub fn close(code: u16, reason: &str, out: &mut Vec<u8>) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(op::CLOSE, &payload, out);
}

/// Appends a client's frame (FIN as `fin`, `opcode`, `payload` masked with `mask`): what a
/// browser sends, for the tools and tests that play one.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push((if fin { 0x80 } else { 0 }) | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame, masked with `mask`.
    pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        super::client_frame(fin, opcode, payload, mask, &mut out);
        out
    }

    fn feed_all(bytes: &[u8], split: usize) -> (Result<Event, FrameError>, Vec<u8>, Vec<u8>) {
        let mut d = Decoder::new();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        for piece in bytes.chunks(split.max(1)) {
            match d.feed(piece, &mut plain, &mut out, 1 << 20) {
                Ok(Event::None) => {}
                other => return (other, plain, out),
            }
        }
        (Ok(Event::None), plain, out)
    }

    #[test]
    fn binary_messages_pass_through_unmasked_at_any_split() {
        let mut bytes = client_frame(true, op::BINARY, b"hello", [1, 2, 3, 4]);
        bytes.extend(client_frame(false, op::BINARY, b" frag", [9, 9, 9, 9]));
        bytes.extend(client_frame(
            true,
            op::CONTINUATION,
            b"mented",
            [7, 0, 7, 0],
        ));
        bytes.extend(client_frame(true, op::BINARY, &[0xaa; 300], [5, 6, 7, 8]));
        bytes.extend(client_frame(
            true,
            op::BINARY,
            &[0xbb; 70_000],
            [5, 6, 7, 8],
        ));
        for split in [1, 2, 3, 7, 64, 100_000] {
            let (r, plain, out) = feed_all(&bytes, split);
            assert_eq!(r, Ok(Event::None), "split {split}");
            assert!(out.is_empty());
            assert_eq!(&plain[..16], b"hello fragmented");
            assert_eq!(plain.len(), 16 + 300 + 70_000);
        }
    }

    #[test]
    fn pings_are_answered_and_a_close_is_echoed() {
        let mut bytes = client_frame(true, op::PING, b"are you there", [1, 1, 1, 1]);
        bytes.extend(client_frame(
            true,
            op::CLOSE,
            &[0x03, 0xe8, b'b', b'y', b'e'],
            [2; 4],
        ));
        let (r, _, out) = feed_all(&bytes, 5);
        assert_eq!(r, Ok(Event::Closed(1000)));
        let mut want = vec![0x8a, 13];
        want.extend_from_slice(b"are you there");
        want.extend_from_slice(&[0x88, 2, 0x03, 0xe8]);
        assert_eq!(out, want);
    }

    #[test]
    fn what_no_client_may_send_ends_with_its_code() {
        let m = [1, 2, 3, 4];
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (client_frame(true, op::TEXT, b"hi", m), 1003),
            // Unmasked.
            (vec![0x82, 0x02, b'h', b'i'], 1002),
            // Reserved bit.
            (
                {
                    let mut f = client_frame(true, op::BINARY, b"x", m);
                    f[0] |= 0x40;
                    f
                },
                1002,
            ),
            (client_frame(true, 0x3, b"x", m), 1002),
            (client_frame(false, op::PING, b"x", m), 1002),
            (client_frame(true, op::PING, &[0; 126], m), 1002),
            (client_frame(true, op::CONTINUATION, b"x", m), 1002),
            (
                [
                    client_frame(false, op::BINARY, b"x", m),
                    client_frame(true, op::BINARY, b"y", m),
                ]
                .concat(),
                1002,
            ),
            (client_frame(true, op::CLOSE, &[0x03], m), 1002),
            (client_frame(true, op::CLOSE, &[0x03, 0xed], m), 1002), // 1005 on the wire
            (
                client_frame(true, op::CLOSE, &[0x03, 0xe8, 0xff, 0xfe], m),
                1007,
            ),
        ];
        for (bytes, want) in cases {
            let (r, _, _) = feed_all(&bytes, 1);
            assert_eq!(r.map_err(|e| e.code()), Err(want), "{bytes:?}");
        }
        // Too big, refused from the header before the payload arrives.
        let mut d = Decoder::new();
        let big = client_frame(true, op::BINARY, &[0; 2000], m);
        let r = d.feed(&big[..8], &mut Vec::new(), &mut Vec::new(), 1000);
        assert_eq!(r, Err(FrameError::TooBig));
    }

    proptest! {
        /// Arbitrary bytes never panic, and a refused stream stays refused.
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), split in 1usize..64) {
            let _ = feed_all(&bytes, split);
        }

        /// Masking round-trips for any key and payload, at any split.
        #[test]
        fn masking_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2000), mask in any::<[u8; 4]>(), split in 1usize..300) {
            let bytes = client_frame(true, op::BINARY, &payload, mask);
            let (r, plain, _) = feed_all(&bytes, split);
            prop_assert_eq!(r, Ok(Event::None));
            prop_assert_eq!(plain, payload);
        }

        /// A message fragmented anywhere arrives whole.
        #[test]
        fn fragmentation_is_transparent(payload in proptest::collection::vec(any::<u8>(), 1..2000), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(payload.len())).collect();
            at.sort_unstable();
            at.dedup();
            let mut bytes = Vec::new();
            let mut start = 0;
            let mut first = true;
            for &c in at.iter().chain(std::iter::once(&payload.len())) {
                if c < start { continue; }
                let last = c == payload.len();
                let opcode = if first { op::BINARY } else { op::CONTINUATION };
                bytes.extend(client_frame(last, opcode, &payload[start..c], [3, 1, 4, 1]));
                first = false;
                start = c;
                if last { break; }
            }
            let (r, plain, _) = feed_all(&bytes, 7);
            prop_assert_eq!(r, Ok(Event::None));
            prop_assert_eq!(plain, payload);
        }
    }
}
