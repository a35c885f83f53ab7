//! One connection's WebSocket, sans IO: the upgrade, then binary messages carrying the tether
//! stream in both directions.

use bytes::BytesMut;
use tether_proto::{codec, kind, Frame, PROTOCOL_V2};

use super::frame::{self, Decoder, Event, FrameError};
use super::upgrade::{self, Refusal, Rules};

/// Most bytes of an upgrade request head.
pub const MAX_HEAD: usize = 4096;

/// Why a connection's WebSocket ended. The answer for the peer (an HTTP refusal or a Close
/// frame) was appended to the output.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The upgrade was refused.
    #[error("upgrade refused: {0}")]
    Upgrade(#[from] Refusal),
    /// A frame no client may send.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// Bytes for the peer before the upgrade was answered.
    #[error("not upgraded yet")]
    NotOpen,
}

/// What a call to [`WsConn::receive`] brought besides bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing else.
    Continue,
    /// The upgrade was answered in this call.
    Upgraded,
    /// The peer sent Close (answered): the end of its stream.
    PeerClosed,
}

/// Where a connection's WebSocket is.
#[derive(Debug)]
enum Phase {
    /// Reading the request head.
    Upgrade(Vec<u8>),
    /// Upgraded: frames.
    Open(Decoder),
    /// Closed or failed.
    Done,
}

/// One connection's WebSocket. See the [module documentation](self).
#[derive(Debug)]
pub struct WsConn {
    /// The phase.
    phase: Phase,
    /// The tether close code of the last `Close` or `Kick` frame the server wrote, for the
    /// WebSocket Close that ends the connection.
    close_code: Option<u16>,
}

impl Default for WsConn {
    fn default() -> Self {
        WsConn::new()
    }
}

/// The WebSocket close code of a tether close code: 4000 + (code − 1000) for codes that allow
/// a reconnect (1000..=1499), 4500 + (code − 2000) for those that do not (2000..=2499), so a
/// page reads the reason, and whether to come back, from the close event alone.
pub fn close_code(tether: u16) -> u16 {
    match tether {
        1000..=1499 => 4000 + (tether - 1000),
        2000..=2499 => 4500 + (tether - 2000),
        _ => frame::code::NORMAL,
    }
}

impl WsConn {
    /// A connection about to send its upgrade request.
    pub fn new() -> WsConn {
        WsConn {
            phase: Phase::Upgrade(Vec::new()),
            close_code: None,
        }
    }

    /// Whether the upgrade was answered.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }

    /// Feeds what the peer sent: tether bytes to `plain`, answers (the `101`, Pongs, the Close
    /// echo, a refusal) to `wire`. Messages are at most `max_message` bytes.
    pub fn receive(
        &mut self,
        data: &[u8],
        rules: &Rules,
        max_message: u64,
        plain: &mut Vec<u8>,
        wire: &mut Vec<u8>,
    ) -> Result<Progress, WsError> {
        let result = self.step(data, rules, max_message, plain, wire);
        match &result {
            Err(WsError::Frame(e)) => {
                frame::close(e.code(), &e.to_string(), wire);
                self.phase = Phase::Done;
            }
            Err(WsError::Upgrade(r)) => {
                wire.extend_from_slice(&r.response());
                self.phase = Phase::Done;
            }
            Ok(Progress::PeerClosed) => self.phase = Phase::Done,
            _ => {}
        }
        result
    }

    fn step(
        &mut self,
        data: &[u8],
        rules: &Rules,
        max_message: u64,
        plain: &mut Vec<u8>,
        wire: &mut Vec<u8>,
    ) -> Result<Progress, WsError> {
        let rest = match &mut self.phase {
            Phase::Done => return Ok(Progress::Continue),
            Phase::Open(d) => return feed(d, data, plain, wire, max_message),
            Phase::Upgrade(head) => {
                // Only what can still belong to the head is kept; the limit is checked before
                // anything more is stored.
                let before = head.len();
                head.extend_from_slice(
                    &data[..data.len().min(MAX_HEAD + 4 - before.min(MAX_HEAD))],
                );
                let Some(end) = upgrade::head_end(head) else {
                    if head.len() > MAX_HEAD {
                        return Err(Refusal::TooLarge.into());
                    }
                    return Ok(Progress::Continue);
                };
                if end > MAX_HEAD {
                    return Err(Refusal::TooLarge.into());
                }
                wire.extend_from_slice(&upgrade::answer(&head[..end], rules)?);
                // Frames the client sent right behind its request.
                let consumed_here = end - before;
                data[consumed_here..].to_vec()
            }
        };
        let mut decoder = Decoder::new();
        let closed = feed(&mut decoder, &rest, plain, wire, max_message)?;
        self.phase = Phase::Open(decoder);
        Ok(if closed == Progress::PeerClosed {
            closed
        } else {
            Progress::Upgraded
        })
    }

    /// Wraps the core's `bytes` (whole tether frames) in one binary message appended to
    /// `wire`, noting the code of a `Close` or `Kick` among them.
    pub fn wrap(&mut self, bytes: &[u8], wire: &mut Vec<u8>) -> Result<(), WsError> {
        if !self.is_open() {
            return Err(WsError::NotOpen);
        }
        let mut rest = bytes;
        while let Ok(Some(h)) = codec::peek_header_version(rest, usize::MAX, PROTOCOL_V2) {
            if h.frame_len() > rest.len() {
                break;
            }
            if h.kind == kind::CLOSE || h.kind == kind::KICK {
                let mut one = BytesMut::from(&rest[..h.frame_len()]);
                match codec::decode_version(&mut one, usize::MAX, PROTOCOL_V2) {
                    Ok(Some(Frame::Close(c))) => self.close_code = Some(c.code.to_u16()),
                    Ok(Some(Frame::Kick(k))) => self.close_code = Some(k.reason.to_u16()),
                    _ => {}
                }
            }
            rest = &rest[h.frame_len()..];
        }
        frame::binary(bytes, wire);
        Ok(())
    }

    /// The Close frame that ends an open connection the server closes: the tether code of
    /// its last `Close` or `Kick` mapped by [`close_code`], else 1000. Nothing before the
    /// upgrade or after the end.
    pub fn close(&mut self, wire: &mut Vec<u8>) {
        if self.is_open() {
            let code = self.close_code.map_or(frame::code::NORMAL, close_code);
            frame::close(code, "", wire);
            self.phase = Phase::Done;
        }
    }
}

/// Feeds an open connection.
fn feed(
    d: &mut Decoder,
    data: &[u8],
    plain: &mut Vec<u8>,
    wire: &mut Vec<u8>,
    max_message: u64,
) -> Result<Progress, WsError> {
    match d.feed(data, plain, wire, max_message)? {
        Event::Closed(_) => Ok(Progress::PeerClosed),
        Event::None => Ok(Progress::Continue),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::tests::client_frame;

    fn rules() -> Rules {
        Rules {
            path: "/tether".into(),
            allowed_origins: vec!["*".into()],
        }
    }

    const REQUEST: &[u8] = b"GET /tether HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn an_upgrade_then_frames_at_any_split() {
        let mut bytes = REQUEST.to_vec();
        bytes.extend(client_frame(true, 0x2, b"\x03\x02\x01\x02", [1, 2, 3, 4]));
        for split in [1, 5, 100, 10_000] {
            let mut ws = WsConn::new();
            let (mut plain, mut wire) = (Vec::new(), Vec::new());
            let mut upgraded = false;
            for piece in bytes.chunks(split) {
                let p = ws
                    .receive(piece, &rules(), 1000, &mut plain, &mut wire)
                    .unwrap();
                upgraded |= p == Progress::Upgraded;
            }
            assert!(upgraded && ws.is_open(), "split {split}");
            assert!(wire.starts_with(b"HTTP/1.1 101 "));
            assert_eq!(plain, b"\x03\x02\x01\x02");
        }
    }

    #[test]
    fn an_endless_head_is_refused_with_431() {
        let mut ws = WsConn::new();
        let (mut plain, mut wire) = (Vec::new(), Vec::new());
        let junk = vec![b'a'; 1000];
        let mut result = Ok(Progress::Continue);
        for _ in 0..10 {
            result = ws.receive(&junk, &rules(), 1000, &mut plain, &mut wire);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(WsError::Upgrade(Refusal::TooLarge))));
        assert!(wire.starts_with(b"HTTP/1.1 431 "));
    }

    #[test]
    fn the_close_code_follows_the_last_close_or_kick_written() {
        let mut ws = WsConn::new();
        let (mut plain, mut wire) = (Vec::new(), Vec::new());
        ws.receive(REQUEST, &rules(), 1000, &mut plain, &mut wire)
            .unwrap();
        let mut frames = BytesMut::new();
        codec::encode(
            &Frame::Pong(tether_proto::Pong { deadline_ms: 5 }),
            &mut frames,
        )
        .unwrap();
        codec::encode(
            &Frame::Close(tether_proto::Close {
                code: tether_proto::CloseCode::AuthFailed,
                text: String::new(),
            }),
            &mut frames,
        )
        .unwrap();
        wire.clear();
        ws.wrap(&frames, &mut wire).unwrap();
        assert_eq!(wire[0], 0x82);
        wire.clear();
        ws.close(&mut wire);
        assert_eq!(
            wire,
            [0x88, 2, (4505u16 >> 8) as u8, (4505u16 & 0xff) as u8]
        );
        assert_eq!(close_code(1005), 4005);
        assert_eq!(close_code(2009), 4509);
    }

    #[test]
    fn a_text_message_is_closed_with_1003() {
        let mut ws = WsConn::new();
        let (mut plain, mut wire) = (Vec::new(), Vec::new());
        ws.receive(REQUEST, &rules(), 1000, &mut plain, &mut wire)
            .unwrap();
        wire.clear();
        let e = ws
            .receive(
                &client_frame(true, 0x1, b"hi", [0; 4]),
                &rules(),
                1000,
                &mut plain,
                &mut wire,
            )
            .unwrap_err();
        assert!(matches!(e, WsError::Frame(FrameError::Text)));
        assert_eq!(&wire[..4], &[0x88, wire[1], 0x03, 0xeb]);
    }
}
