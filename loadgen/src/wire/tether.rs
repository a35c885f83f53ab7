//! tether's own protocol as the loadgen uses it: minting login tokens, encoding frames into a
//! socket's output and turning the server's frames into [`Inbound`] events. Everything from
//! `tether_proto` the worker touches goes through here.

use bytes::BytesMut;
use tether_proto::codec;
use tether_proto::token::{Minter, Secret};
use tether_proto::{login_flags, Frame, Login, PROTOCOL_VERSION};

use super::Inbound;

/// Takes the next whole frame off the front of `buf` with the rules of the version every
/// loadgen login announces ([`PROTOCOL_VERSION`]), which are the rules the server then writes
/// by: version 2's frames (upstream results and deliveries, `Message`), trailing fields of a
/// later revision ignored, extension frames skipped.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, tether_proto::DecodeError> {
    codec::decode_version(buf, max, PROTOCOL_VERSION)
}

/// Mints the tokens of one worker's logins.
#[derive(Debug)]
pub struct Credentials {
    /// Signs client tokens with the run's client secret.
    minter: Minter,
    /// Signs the backend token with the run's backend secret (the server verifies each kind
    /// against its own secrets).
    backend_minter: Minter,
    /// Expiry written into every token, Unix seconds (one value for the whole run).
    expiry_unix: u64,
}

impl Credentials {
    /// Client tokens signed with `secret` and backend tokens with `backend_secret` (their UTF-8
    /// bytes), valid for `ttl_s` seconds from now (below the server's maximum token lifetime).
    pub fn new(secret: &str, backend_secret: &str, ttl_s: u64) -> anyhow::Result<Credentials> {
        let secret = Secret::new(secret.as_bytes())?;
        let backend_secret = Secret::new(backend_secret.as_bytes())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        Ok(Credentials {
            minter: Minter::new(&secret),
            backend_minter: Minter::new(&backend_secret),
            expiry_unix: now + ttl_s,
        })
    }

    /// The Login frame of a client connection.
    pub fn client_login(
        &self,
        user: &str,
        device: &str,
        heartbeat_ms: u32,
    ) -> anyhow::Result<Frame> {
        let token = self.minter.client(user, device, self.expiry_unix)?;
        Ok(Frame::Login(Login {
            version: PROTOCOL_VERSION,
            flags: 0,
            user: user.to_string(),
            device: device.to_string(),
            token,
            heartbeat_ms,
            network_key: String::new(),
        }))
    }

    /// The Login frame of a backend connection (which heartbeats like a client, so it
    /// outlives a long ramp before the pushes start); `upstream` sets the `UPSTREAM` flag, so
    /// the server hands it clients' upstream messages.
    pub fn backend_login(
        &self,
        service: &str,
        heartbeat_ms: u32,
        upstream: bool,
    ) -> anyhow::Result<Frame> {
        let token = self.backend_minter.backend(service, self.expiry_unix)?;
        Ok(Frame::Login(Login {
            version: PROTOCOL_VERSION,
            flags: if upstream { login_flags::UPSTREAM } else { 0 },
            user: service.to_string(),
            device: String::new(),
            token,
            heartbeat_ms,
            network_key: String::new(),
        }))
    }
}

/// Appends `frame` to `out`; an error means the loadgen built a frame the protocol forbids
/// (e.g. an overlong user prefix).
pub fn encode(frame: &Frame, out: &mut BytesMut) -> Result<(), tether_proto::EncodeError> {
    codec::encode(frame, out)
}

/// What a frame from the server means to the worker.
pub fn inbound(frame: Frame) -> Inbound {
    match frame {
        Frame::LoginOk(ok) => Inbound::Ready {
            shard: crate::payload::shard_of_session(ok.session_id),
        },
        Frame::Pong(_) => Inbound::Pong,
        Frame::Push(p) => Inbound::Push {
            payload: p.payload,
            ack: Some(p.id),
        },
        Frame::PushResult(r) => Inbound::PushResult {
            id: r.id,
            status: r.status,
        },
        // Version 2: a send reaches its target as a Message naming the sender.
        Frame::Message(m) => Inbound::Push {
            payload: m.payload,
            ack: Some(m.id),
        },
        Frame::SendResult(r) => Inbound::SendResult {
            id: r.client_id,
            status: r.status,
        },
        Frame::UpstreamResult(r) => Inbound::UpstreamResult {
            id: r.client_id,
            status: r.status,
        },
        Frame::UpstreamDeliver(d) => Inbound::Upstream {
            answer: Some(d.id),
            user: d.user,
            device: d.device,
            client_id: Some(d.client_id),
            payload: d.payload,
        },
        // Tokens are minted for `token_ttl_s` (a day), longer than any run: a notice is let
        // be, and a run that outlives its tokens sees them closed with TokenExpired.
        Frame::Ignored { .. } | Frame::TokenNotice(_) | Frame::Refreshed => Inbound::Nothing,
        Frame::Close(c) => {
            Inbound::Closed(format!("server closed: {} {:?}", c.code.to_u16(), c.code))
        }
        Frame::Kick(k) => Inbound::Closed(format!(
            "server kicked: {} {:?}",
            k.reason.to_u16(),
            k.reason
        )),
        Frame::GoAway(g) => Inbound::GoAway {
            why: format!("server going away: {} {:?}", g.reason.to_u16(), g.reason),
            window_ms: if g.may_reconnect {
                g.window_ms
            } else {
                u32::MAX
            },
        },
        other => Inbound::Closed(format!("unexpected frame 0x{:02x}", other.kind())),
    }
}
