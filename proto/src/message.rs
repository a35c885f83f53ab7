//! The messages of the wire protocol, as typed values.
//!
//! Layouts (the exact bytes) are in `docs/protocol.md`; `codec.rs` turns these values into
//! frames and back. Payloads are `bytes::Bytes` slices of the receive buffer: decoding a push
//! copies nothing.

use bytes::Bytes;

/// The newest protocol version this crate speaks, sent in [`Login::version`] by a client that
/// wants upstream messages and the growth rules of version 2 (`docs/protocol.md`,
/// "Versioning"). A server speaks every version from [`PROTOCOL_V1`] to this one.
pub const PROTOCOL_VERSION: u8 = PROTOCOL_V2;

/// Version 1: the first released protocol. Its frames and golden vectors never change.
pub const PROTOCOL_V1: u8 = 1;

/// Version 2: version 1 plus upstream messages (a client's message to the app's backend),
/// client messages that name their sender, the `Accepted` send status, and rules for growing
/// without a new version (ignored trailing fields, skipped extension frames).
pub const PROTOCOL_V2: u8 = 2;

/// Whether this crate speaks protocol `version`.
pub fn speaks(version: u8) -> bool {
    (PROTOCOL_V1..=PROTOCOL_VERSION).contains(&version)
}

/// Default maximum body size of one frame, in bytes (the `len` prefix is checked against the
/// receiver's maximum before anything is allocated).
pub const DEFAULT_MAX_FRAME: usize = 65_536;

/// Bounds of the fields whose size the protocol fixes. Decoding refuses a frame that breaks one
/// (as `Malformed`), and encoding refuses to produce such a frame, so both ends agree.
pub mod limits {
    /// Longest user id (and backend service name) in bytes; user ids are never empty.
    pub const USER_MAX: usize = 128;
    /// Longest device id in bytes; may be empty.
    pub const DEVICE_MAX: usize = 64;
    /// Longest auth token text in bytes.
    pub const TOKEN_MAX: usize = 512;
    /// Longest network key in bytes; empty means "no key".
    pub const NETWORK_KEY_MAX: usize = 64;
    /// Longest [`super::Close::text`] in bytes.
    pub const CLOSE_TEXT_MAX: usize = 256;
    /// Largest lease or deadline a [`super::Ping`] / [`super::Pong`] may carry (about 74.6 hours):
    /// its varint then fits in 4 bytes, so either frame is at most 6 bytes on the wire.
    pub const HEARTBEAT_MS_MAX: u32 = (1 << 28) - 1;
}

/// Frame type codes: the first byte of every frame.
pub mod kind {
    pub const LOGIN: u8 = 0x01;
    pub const LOGIN_OK: u8 = 0x02;
    pub const PING: u8 = 0x03;
    pub const PONG: u8 = 0x04;
    pub const PUSH: u8 = 0x05;
    pub const PUSH_ACK: u8 = 0x06;
    pub const SEND: u8 = 0x07;
    pub const SEND_RESULT: u8 = 0x08;
    pub const KICK: u8 = 0x09;
    pub const GO_AWAY: u8 = 0x0A;
    pub const CLOSE: u8 = 0x0B;
    pub const PROBE: u8 = 0x0C;
    pub const PROBE_FIRE: u8 = 0x0D;
    pub const NET_REPORT: u8 = 0x0E;
    pub const BACKEND_PUSH: u8 = 0x10;
    pub const PUSH_RESULT: u8 = 0x11;
    /// Version 2 and later.
    pub const UPSTREAM: u8 = 0x12;
    /// Version 2 and later.
    pub const UPSTREAM_RESULT: u8 = 0x13;
    /// Version 2 and later.
    pub const UPSTREAM_DELIVER: u8 = 0x14;
    /// Version 2 and later.
    pub const UPSTREAM_ANSWER: u8 = 0x15;
    /// Version 2 and later.
    pub const MESSAGE: u8 = 0x16;
    /// Version 2 and later.
    pub const TOKEN_NOTICE: u8 = 0x17;
    /// Version 2 and later.
    pub const REFRESH: u8 = 0x18;
    /// Version 2 and later.
    pub const REFRESHED: u8 = 0x19;
    /// Version 2 and later: extension frames. A receiver that does not know one of these types
    /// skips the frame (its length is still checked against the maximum); a sender may only use
    /// them for what a peer can safely ignore.
    pub const EXTENSIONS: std::ops::RangeInclusive<u8> = 0x40..=0x7F;
}

/// Bits of [`Login::flags`].
pub mod login_flags {
    /// This is a short-lived heartbeat probe connection: the server does not register it for
    /// pushes and does not let it replace the (user, device)'s main connection.
    pub const PROBE: u8 = 0x01;
    /// Version 2, backend logins only: this backend connection receives upstream messages
    /// ([`super::UpstreamDeliver`]) and answers each with an [`super::UpstreamAnswer`].
    pub const UPSTREAM: u8 = 0x02;
}

/// Bits of [`BackendPush::flags`].
pub mod push_flags {
    /// The backend wants a second [`super::PushResult`] with [`super::PushStatus::Acked`] when
    /// the first device acknowledges the push.
    pub const WANT_ACK: u8 = 0x01;
}

/// First frame of every connection, client → server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// [`PROTOCOL_VERSION`] of the client.
    pub version: u8,
    /// [`login_flags`] bits.
    pub flags: u8,
    /// Who this is (UTF-8, 1..=128 bytes). For a backend token: the service name.
    pub user: String,
    /// Which of the user's devices (UTF-8, 0..=64 bytes).
    pub device: String,
    /// Auth token in its text form (see `token.rs`), at most 512 bytes.
    pub token: String,
    /// The heartbeat interval the client intends to use, in milliseconds.
    pub heartbeat_ms: u32,
    /// Opaque key of the client's network (e.g. a hash of SSID or carrier); empty when none.
    pub network_key: String,
}

/// Server → client answer to a successful [`Login`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginOk {
    /// Identifies this connection in logs and metrics.
    pub session_id: u64,
    /// Changes at every server restart: a client seeing a new epoch knows state was lost.
    pub server_epoch: u64,
    /// Smallest lease the server accepts; smaller ones are raised to it.
    pub min_lease_ms: u32,
    /// Largest lease the server accepts; larger ones are lowered to it.
    pub max_lease_ms: u32,
    /// Idle deadline = lease × `lease_multiplier_pct` / 100 + `grace_ms`, after every frame.
    pub lease_multiplier_pct: u16,
    /// Added to every idle deadline to absorb network delay and timer lateness.
    pub grace_ms: u32,
    /// A learned heartbeat interval for the client's network key, 0 when the server has none.
    pub prior_ms: u32,
    /// The largest frame body the server accepts (and sends), in bytes: a peer must not send a
    /// longer one (`FrameTooLarge`), and a push or send payload must fit in it.
    pub max_frame: u32,
}

/// Client → server heartbeat. At most 6 bytes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    /// "My next frame comes within this many milliseconds": the lease the idle deadline follows.
    /// At most [`limits::HEARTBEAT_MS_MAX`].
    pub lease_ms: u32,
}

/// Server → client answer to a [`Ping`]. At most 6 bytes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pong {
    /// The idle deadline the server set, in milliseconds after it read the ping.
    /// At most [`limits::HEARTBEAT_MS_MAX`].
    pub deadline_ms: u32,
}

/// Server → client delivery of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// Server-assigned id, echoed in [`PushAck`].
    pub id: u64,
    /// Opaque application bytes.
    pub payload: Bytes,
}

/// Client → server acknowledgement of a [`Push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushAck {
    /// The [`Push::id`] being acknowledged.
    pub id: u64,
}

/// Client → server message for another user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Send {
    /// Target user id (1..=128 bytes).
    pub to: String,
    /// Client-chosen id, echoed in [`SendResult`].
    pub client_id: u64,
    /// Opaque application bytes for the target.
    pub payload: Bytes,
}

/// How a push or send ended, as told to its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushStatus {
    /// Written to the sockets of this many devices, at least one: a push that reached no
    /// device is `Offline` or `Refused`, so `Delivered(0)` is malformed on the wire.
    Delivered(u32),
    /// The user has no connection.
    Offline,
    /// Not delivered, for this reason.
    Refused(RefuseReason),
    /// A device acknowledged the push (only with [`push_flags::WANT_ACK`]).
    Acked,
    /// Version 2, `SendResult` only: the send was taken for delivery; whether any device of
    /// the target is online is not told (so a send is no presence oracle).
    Accepted,
}

/// Why a push or send was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// The target's outbound queue is full.
    SlowConsumer,
    /// The payload exceeds the server's maximum frame size.
    TooLarge,
    /// The sender exceeded its rate or in-flight limit.
    RateLimited,
    /// The shard that holds the target is overloaded (mesh queue full).
    Overloaded,
    /// The sender may not do this (e.g. a client sending a backend push).
    NotAllowed,
    /// The server is draining: pushes that arrive meanwhile are refused with this.
    ShuttingDown,
    /// The target user id is malformed.
    BadTarget,
    /// The user is not on this node and the cluster (NATS) cannot be reached to find or reach
    /// the node that holds it.
    ClusterUnavailable,
    /// The node holding the user did not answer within the forward timeout: the push may or
    /// may not have been delivered there.
    TimedOut,
    /// An upstream message found no backend to take it (none connected, or the webhook or
    /// NATS subject unreachable): it was not processed.
    NoBackend,
    /// The backend refused the upstream message; its reply says why.
    Rejected,
    /// A reason this version does not name (a newer server's), kept as its wire value so it
    /// survives a decode and re-encode. Never one of the named values.
    Other(u8),
}

impl RefuseReason {
    /// The reason for a wire value; a value this version does not name is [`RefuseReason::Other`].
    pub fn from_u8(v: u8) -> RefuseReason {
        match v {
            1 => RefuseReason::SlowConsumer,
            2 => RefuseReason::TooLarge,
            3 => RefuseReason::RateLimited,
            4 => RefuseReason::Overloaded,
            5 => RefuseReason::NotAllowed,
            6 => RefuseReason::ShuttingDown,
            7 => RefuseReason::BadTarget,
            8 => RefuseReason::ClusterUnavailable,
            9 => RefuseReason::TimedOut,
            10 => RefuseReason::NoBackend,
            11 => RefuseReason::Rejected,
            other => RefuseReason::Other(other),
        }
    }

    /// The reason's name in snake case, as the HTTP API, logs and tools write it
    /// (`too_large`, `no_backend`); `other` for a reason this version does not name.
    pub fn name(self) -> &'static str {
        match self {
            RefuseReason::SlowConsumer => "slow_consumer",
            RefuseReason::TooLarge => "too_large",
            RefuseReason::RateLimited => "rate_limited",
            RefuseReason::Overloaded => "overloaded",
            RefuseReason::NotAllowed => "not_allowed",
            RefuseReason::ShuttingDown => "shutting_down",
            RefuseReason::BadTarget => "bad_target",
            RefuseReason::ClusterUnavailable => "cluster_unavailable",
            RefuseReason::TimedOut => "timed_out",
            RefuseReason::NoBackend => "no_backend",
            RefuseReason::Rejected => "rejected",
            RefuseReason::Other(_) => "other",
        }
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            RefuseReason::SlowConsumer => 1,
            RefuseReason::TooLarge => 2,
            RefuseReason::RateLimited => 3,
            RefuseReason::Overloaded => 4,
            RefuseReason::NotAllowed => 5,
            RefuseReason::ShuttingDown => 6,
            RefuseReason::BadTarget => 7,
            RefuseReason::ClusterUnavailable => 8,
            RefuseReason::TimedOut => 9,
            RefuseReason::NoBackend => 10,
            RefuseReason::Rejected => 11,
            RefuseReason::Other(v) => v,
        }
    }
}

/// Server → client outcome of a [`Send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendResult {
    /// The [`Send::client_id`] this answers.
    pub client_id: u64,
    /// What became of the send.
    pub status: PushStatus,
}

/// Client → server (version 2): a message for the app's backend, answered by exactly one
/// [`UpstreamResult`] with the same `client_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Chosen by the client, echoed in the result, and handed to the backend, which uses
    /// (user, device, client_id) to recognise a message resent after a reconnect.
    pub client_id: u64,
    /// Reserved bits: send 0, ignored on receipt.
    pub flags: u8,
    /// Opaque application bytes for the backend.
    pub payload: Bytes,
}

/// How an upstream message ended, as told to its client (and as a backend answers it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamStatus {
    /// The backend took the message; the result's `reply` is the backend's.
    Accepted,
    /// Not taken, for this reason. [`RefuseReason::Rejected`]: the backend said no (its reply
    /// says why); [`RefuseReason::TimedOut`]: no answer in time, the backend may or may not
    /// have processed it; others: the message never reached a backend.
    Refused(RefuseReason),
}

/// Server → client (version 2): the one result of an [`Upstream`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamResult {
    /// The [`Upstream::client_id`] this answers.
    pub client_id: u64,
    /// What became of it.
    pub status: UpstreamStatus,
    /// The backend's reply (e.g. the message's id or sequence number, or why it said no);
    /// empty when no backend answered.
    pub reply: Bytes,
}

/// Server → backend (version 2, connections logged in with [`login_flags::UPSTREAM`]): a
/// client's upstream message, with who sent it as the server authenticated them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamDeliver {
    /// The server's id for this delivery on this backend connection: the backend's
    /// [`UpstreamAnswer`] names it.
    pub id: u64,
    /// The sender's user id (from its token).
    pub user: String,
    /// The sender's device id (from its token).
    pub device: String,
    /// The sender connection's `LoginOk.session_id`.
    pub session_id: u64,
    /// The client's [`Upstream::client_id`].
    pub client_id: u64,
    /// The client's bytes.
    pub payload: Bytes,
}

/// Backend → server (version 2): the answer to an [`UpstreamDeliver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamAnswer {
    /// The [`UpstreamDeliver::id`] this answers.
    pub id: u64,
    /// True: taken ([`UpstreamStatus::Accepted`]); false: refused
    /// ([`RefuseReason::Rejected`]).
    pub accepted: bool,
    /// Bytes handed to the client in its [`UpstreamResult::reply`].
    pub reply: Bytes,
}

/// Server → client or backend (version 2): the token the connection logged in with (or last
/// refreshed to) ends in `expires_in_ms`, because it expires or because the operator withdrew
/// the secret that signed it. The peer sends [`Refresh`] with a new token before then, or the
/// server closes the connection with [`CloseCode::TokenExpired`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenNotice {
    /// Milliseconds until the server closes the connection unless a [`Refresh`] arrives.
    pub expires_in_ms: u32,
}

/// Client or backend → server (version 2): a new token for the connection's identity (the same
/// user and device, or the same backend service), taken in place without reconnecting. Answered
/// by [`Frame::Refreshed`]; a token that does not verify or names someone else closes the
/// connection with `AuthFailed` or `TokenExpired`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refresh {
    /// The new token (1..=512 bytes).
    pub token: String,
}

/// Server → client (version 2): a message another client sent with `Send`, naming its sender
/// as the server authenticated it, so no client can pass for the backend. Acknowledged with
/// [`PushAck`] like a [`Push`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Server-assigned id, echoed in [`PushAck`].
    pub id: u64,
    /// The sender's user id.
    pub from_user: String,
    /// The sender's device id.
    pub from_device: String,
    /// The sender's bytes.
    pub payload: Bytes,
}

/// Backend → server: deliver `payload` to every connection of `user`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPush {
    /// Backend-chosen id, echoed in [`PushResult`].
    pub id: u64,
    /// [`push_flags`] bits.
    pub flags: u8,
    /// Target user id.
    pub user: String,
    /// Opaque application bytes, delivered to every connected device of `user`.
    pub payload: Bytes,
}

/// Server → backend outcome of a [`BackendPush`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushResult {
    /// The [`BackendPush::id`] this answers.
    pub id: u64,
    /// What became of the push (a second result with `Acked` may follow).
    pub status: PushStatus,
}

/// Server → client: this connection is being closed by the server for `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kick {
    /// Why: a close code, whose range says whether to reconnect.
    pub reason: CloseCode,
    /// Whether the client should reconnect at all.
    pub may_reconnect: bool,
    /// Reconnect after a random delay in `0..jitter_ms`.
    pub jitter_ms: u32,
}

/// Server → client: the server is draining; reconnect within the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoAway {
    /// Why: a close code, usually [`CloseCode::ServerShutdown`].
    pub reason: CloseCode,
    /// Whether the client should reconnect at all.
    pub may_reconnect: bool,
    /// Reconnect after a random delay in `0..window_ms`, not before.
    pub window_ms: u32,
}

/// Either direction: the sender closes the connection with `code`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    /// Why: a close code, whose range says whether to reconnect.
    pub code: CloseCode,
    /// Human-readable detail, at most 256 bytes; may be empty.
    pub text: String,
}

/// Client → server on a probe connection: send one [`Frame::ProbeFire`] after this much
/// silence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Milliseconds of silence after which the server sends [`Frame::ProbeFire`].
    pub delay_ms: u32,
}

/// Client → server: the heartbeat interval the client learned for its login's network key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetReport {
    /// The learned interval, in milliseconds.
    pub learned_ms: u32,
}

/// Close and kick reason codes. 1000..=1999: the client should reconnect (with jitter);
/// 2000..=2999: it must not reconnect without a change (new token, new version, user action).
/// Codes outside both ranges decode as [`CloseCode::Other`] and are treated as "reconnect".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: orderly close with no error (also after a probe fires).
    Normal,
    /// 1001: the server is stopping or draining.
    ServerShutdown,
    /// 1002: nothing arrived before the idle deadline.
    IdleTimeout,
    /// 1003: the peer did not read fast enough; its outbound queue overflowed.
    SlowConsumer,
    /// 1004: a write to the peer made no progress for too long.
    WriteTimeout,
    /// 1005: the server sheds load; back off longer.
    Overloaded,
    /// 1006: a server-side failure unrelated to what the peer sent.
    InternalError,
    /// 2000: the peer broke the protocol.
    ProtocolError,
    /// 2001: a length prefix above the receiver's maximum frame size.
    FrameTooLarge,
    /// 2002: an unknown frame type.
    UnknownFrame,
    /// 2003: no `Login` within the login deadline.
    LoginTimeout,
    /// 2004: the first frame was not a `Login`.
    LoginRequired,
    /// 2005: the token is malformed, forged, or names someone else.
    AuthFailed,
    /// 2006: the token has expired; get a new one before reconnecting.
    TokenExpired,
    /// 2007: the server does not speak the login's protocol version.
    UnsupportedVersion,
    /// 2008: a newer login of the same (user, device) took over.
    Replaced,
    /// 2009: an operator or backend removed this connection.
    Kicked,
    /// 2010: the frame is not allowed for this kind of peer.
    NotAllowed,
    /// Any other value, kept as received.
    Other(u16),
}

impl CloseCode {
    /// The numeric value on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::ServerShutdown => 1001,
            CloseCode::IdleTimeout => 1002,
            CloseCode::SlowConsumer => 1003,
            CloseCode::WriteTimeout => 1004,
            CloseCode::Overloaded => 1005,
            CloseCode::InternalError => 1006,
            CloseCode::ProtocolError => 2000,
            CloseCode::FrameTooLarge => 2001,
            CloseCode::UnknownFrame => 2002,
            CloseCode::LoginTimeout => 2003,
            CloseCode::LoginRequired => 2004,
            CloseCode::AuthFailed => 2005,
            CloseCode::TokenExpired => 2006,
            CloseCode::UnsupportedVersion => 2007,
            CloseCode::Replaced => 2008,
            CloseCode::Kicked => 2009,
            CloseCode::NotAllowed => 2010,
            CloseCode::Other(v) => v,
        }
    }

    /// The code for a wire value; unknown values are kept as [`CloseCode::Other`].
    pub fn from_u16(v: u16) -> CloseCode {
        match v {
            1000 => CloseCode::Normal,
            1001 => CloseCode::ServerShutdown,
            1002 => CloseCode::IdleTimeout,
            1003 => CloseCode::SlowConsumer,
            1004 => CloseCode::WriteTimeout,
            1005 => CloseCode::Overloaded,
            1006 => CloseCode::InternalError,
            2000 => CloseCode::ProtocolError,
            2001 => CloseCode::FrameTooLarge,
            2002 => CloseCode::UnknownFrame,
            2003 => CloseCode::LoginTimeout,
            2004 => CloseCode::LoginRequired,
            2005 => CloseCode::AuthFailed,
            2006 => CloseCode::TokenExpired,
            2007 => CloseCode::UnsupportedVersion,
            2008 => CloseCode::Replaced,
            2009 => CloseCode::Kicked,
            2010 => CloseCode::NotAllowed,
            other => CloseCode::Other(other),
        }
    }

    /// Whether a client that receives this code should reconnect (after jitter).
    pub fn may_reconnect(self) -> bool {
        !(2000..=2999).contains(&self.to_u16())
    }
}

/// Every frame of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Login(Login),
    LoginOk(LoginOk),
    Ping(Ping),
    Pong(Pong),
    Push(Push),
    PushAck(PushAck),
    Send(Send),
    SendResult(SendResult),
    Kick(Kick),
    GoAway(GoAway),
    Close(Close),
    Probe(Probe),
    ProbeFire,
    NetReport(NetReport),
    BackendPush(BackendPush),
    PushResult(PushResult),
    Upstream(Upstream),
    UpstreamResult(UpstreamResult),
    UpstreamDeliver(UpstreamDeliver),
    UpstreamAnswer(UpstreamAnswer),
    Message(Message),
    TokenNotice(TokenNotice),
    Refresh(Refresh),
    /// Server → peer (version 2): the [`Refresh`] was taken; the connection now lives by the
    /// new token.
    Refreshed,
    /// Version 2: an extension frame (type in [`kind::EXTENSIONS`]) this crate does not know,
    /// skipped whole by the decoder. Never encoded.
    Ignored {
        /// Its type byte.
        kind: u8,
    },
}

impl Frame {
    /// The frame's type code (its first byte on the wire).
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Login(_) => kind::LOGIN,
            Frame::LoginOk(_) => kind::LOGIN_OK,
            Frame::Ping(_) => kind::PING,
            Frame::Pong(_) => kind::PONG,
            Frame::Push(_) => kind::PUSH,
            Frame::PushAck(_) => kind::PUSH_ACK,
            Frame::Send(_) => kind::SEND,
            Frame::SendResult(_) => kind::SEND_RESULT,
            Frame::Kick(_) => kind::KICK,
            Frame::GoAway(_) => kind::GO_AWAY,
            Frame::Close(_) => kind::CLOSE,
            Frame::Probe(_) => kind::PROBE,
            Frame::ProbeFire => kind::PROBE_FIRE,
            Frame::NetReport(_) => kind::NET_REPORT,
            Frame::BackendPush(_) => kind::BACKEND_PUSH,
            Frame::PushResult(_) => kind::PUSH_RESULT,
            Frame::Upstream(_) => kind::UPSTREAM,
            Frame::UpstreamResult(_) => kind::UPSTREAM_RESULT,
            Frame::UpstreamDeliver(_) => kind::UPSTREAM_DELIVER,
            Frame::UpstreamAnswer(_) => kind::UPSTREAM_ANSWER,
            Frame::Message(_) => kind::MESSAGE,
            Frame::TokenNotice(_) => kind::TOKEN_NOTICE,
            Frame::Refresh(_) => kind::REFRESH,
            Frame::Refreshed => kind::REFRESHED,
            Frame::Ignored { kind } => *kind,
        }
    }
}
