//! The server side of one connection, as a sans-IO state machine.
//!
//! [`ServerSession`] decides what a connection may do and when it dies; the server's driver owns
//! the socket, decodes frames, and moves bytes. The session never reads a clock: every call that
//! depends on time takes `now` ([`Millis`] on the driver's monotonic clock) and, for token expiry,
//! `now_unix` (wall-clock seconds).
//!
//! The server keeps one session per connection, millions of them, so the type is kept small
//! (see the size test): the configuration is shared and passed into calls, strings from the
//! login leave in the [`Event::LoggedIn`] event instead of staying here, pending control
//! outputs are a few bits, and anything bigger waits in a heap box that exists only while an
//! output is pending. An idle session owns no heap memory.

use std::collections::VecDeque;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::heartbeat::NetworkId;
use crate::message::{
    login_flags, speaks, BackendPush, Close, CloseCode, Frame, GoAway, Kick, Login, LoginOk,
    Message, Pong, Push, PushAck, PushResult, PushStatus, Refresh, Send, SendResult, TokenNotice,
    Upstream, UpstreamAnswer, UpstreamDeliver, UpstreamResult, DEFAULT_MAX_FRAME, PROTOCOL_V1,
    PROTOCOL_V2,
};
use crate::token::{Authenticate, Grant, KeyId, Principal};
use crate::Millis;

/// Server-wide rules for sessions. Shared by all connections and passed into each call that
/// needs it, so a session does not carry a copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// How long a new connection has to send its `Login` before it is closed with
    /// [`CloseCode::LoginTimeout`]. Bounds what a connection that never logs in can cost.
    pub login_timeout_ms: u32,
    /// Smallest lease honoured; smaller ones are raised to it, so a client cannot make the
    /// server run its idle check too often.
    pub min_lease_ms: u32,
    /// Largest lease honoured; larger ones are lowered to it, so a dead connection is found
    /// within a bounded time. Also the longest delay a probe may ask for.
    pub max_lease_ms: u32,
    /// Idle deadline = lease × this / 100 + grace. At least 100: the server must not give up
    /// before the client's own promise runs out.
    pub lease_multiplier_pct: u16,
    /// Added to every idle deadline to absorb network delay and late client timers.
    pub grace_ms: u32,
    /// The largest frame body the server decodes and sends, told to the peer in `LoginOk`.
    /// Not a `[session]` key: the server copies its `server.max_frame` here, so the limit it
    /// enforces and the one it announces cannot differ.
    #[serde(skip)]
    pub max_frame: u32,
    /// How long before its token ends a version-2 connection is sent a `TokenNotice`, so it
    /// can `Refresh` in place (0: no notice; the connection just closes with
    /// [`CloseCode::TokenExpired`] when its token ends). Whole seconds, at most
    /// [`TOKEN_NOTICE_MAX_S`].
    pub token_notice_s: u32,
}

/// Largest [`SessionConfig::token_notice_s`]: one day.
pub const TOKEN_NOTICE_MAX_S: u32 = 24 * 3600;

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            login_timeout_ms: 10_000,
            min_lease_ms: 1_000,
            max_lease_ms: 30 * 60 * 1_000,
            lease_multiplier_pct: 150,
            grace_ms: 10_000,
            max_frame: DEFAULT_MAX_FRAME as u32,
            token_notice_s: 300,
        }
    }
}

/// A [`SessionConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// `min_lease_ms` is above `max_lease_ms`.
    #[error("min_lease_ms ({min}) is above max_lease_ms ({max})")]
    LeaseBounds {
        /// The configured minimum.
        min: u32,
        /// The configured maximum.
        max: u32,
    },
    /// `lease_multiplier_pct` outside 100..=1000.
    #[error("lease_multiplier_pct must be within 100..=1000, not {0}")]
    Multiplier(u16),
    /// `token_notice_s` above [`TOKEN_NOTICE_MAX_S`].
    #[error("token_notice_s must be at most {TOKEN_NOTICE_MAX_S}, not {0}")]
    TokenNotice(u32),
}

impl SessionConfig {
    /// Checks the configuration; the server refuses to start on an error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.login_timeout_ms == 0 {
            return Err(ConfigError::Zero("login_timeout_ms"));
        }
        if self.min_lease_ms == 0 {
            return Err(ConfigError::Zero("min_lease_ms"));
        }
        if self.min_lease_ms > self.max_lease_ms {
            return Err(ConfigError::LeaseBounds {
                min: self.min_lease_ms,
                max: self.max_lease_ms,
            });
        }
        if !(100..=1000).contains(&self.lease_multiplier_pct) {
            return Err(ConfigError::Multiplier(self.lease_multiplier_pct));
        }
        if self.max_frame == 0 {
            return Err(ConfigError::Zero("max_frame"));
        }
        if self.token_notice_s > TOKEN_NOTICE_MAX_S {
            return Err(ConfigError::TokenNotice(self.token_notice_s));
        }
        Ok(())
    }

    /// The idle window for a client lease: clamp(lease, min, max) × multiplier / 100 + grace,
    /// saturated to what a [`Pong`] can carry.
    pub fn idle_window_ms(&self, lease_ms: u32) -> u32 {
        let lease = u64::from(lease_ms.clamp(self.min_lease_ms, self.max_lease_ms));
        let window = lease * u64::from(self.lease_multiplier_pct) / 100 + u64::from(self.grace_ms);
        u32::try_from(window).unwrap_or(u32::MAX)
    }
}

/// What the driver supplies when it accepts a logged-in connection (see
/// [`ServerSession::accept`]); goes out in [`LoginOk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accept {
    /// The driver's id for this connection, for logs on both ends.
    pub session_id: u64,
    /// The server's epoch (changes at every restart).
    pub server_epoch: u64,
    /// A learned heartbeat interval for the client's network, 0 when there is none.
    pub prior_ms: u32,
}

/// What the session tells the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The `Login` was authenticated. The driver answers with [`ServerSession::accept`] (after
    /// registering the connection, moving it to its home shard, looking up a prior...) or
    /// [`ServerSession::close`].
    LoggedIn {
        /// Who the token says this is.
        principal: Principal,
        /// The login's user id (for a backend: its service name).
        user: String,
        /// The login's device id.
        device: String,
        /// The login's opaque network key; empty when none.
        network_key: String,
        /// A heartbeat probe connection: not to be registered for pushes, and it must not
        /// replace the (user, device)'s main connection.
        probe: bool,
        /// A backend connection (version 2) that asked to receive upstream messages
        /// ([`login_flags::UPSTREAM`]).
        upstream: bool,
    },
    /// A client sent a message for the app's backend (version 2).
    Upstream(Upstream),
    /// A backend answered an upstream message (version 2).
    UpstreamAnswer(UpstreamAnswer),
    /// The peer sent a new token for its connection (version 2). The driver checks it against
    /// the connection's identity and answers with [`ServerSession::refreshed`] or
    /// [`ServerSession::close`].
    Refresh(Refresh),
    /// A client sent a message for another user.
    Send(Send),
    /// A backend asked for a push to a user.
    BackendPush(BackendPush),
    /// A client acknowledged a push.
    PushAck(PushAck),
    /// A client reported the heartbeat interval it learned for its login's network.
    NetReport {
        /// The network of the login (reports from logins without a key are dropped).
        network: NetworkId,
        /// The interval the client learned.
        learned_ms: u32,
    },
    /// The session ended; once [`ServerSession::poll_transmit`] is drained the driver closes
    /// the socket and drops the session. Always the last event.
    Closed {
        /// Why.
        code: CloseCode,
        /// True when the peer closed (sent `Close`), false when the server did.
        by_peer: bool,
    },
}

/// A driver call that does not fit the session's state. These are races (a push for a
/// connection that just closed) or driver bugs; the connection itself is unaffected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session is not (or no longer) open for this.
    #[error("the session is not open")]
    NotOpen,
    /// The session has no pending login to accept.
    #[error("no login is waiting to be accepted")]
    NotAwaitingAccept,
    /// The frame is not for this kind of connection (a push to a backend or probe connection,
    /// a push result to a client...).
    #[error("the frame does not fit this kind of connection")]
    WrongPeer,
}

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for `Login`; `deadline` is the login deadline.
    AwaitLogin,
    /// Authenticated; waiting for the driver's `accept`; `deadline` is still the login deadline.
    AwaitAccept,
    /// Logged in; `deadline` is the idle deadline.
    Open,
    /// A probe connection with a `Probe` armed; `deadline` is when `ProbeFire` goes out.
    ProbeArmed,
    /// Ended; only pending outputs remain.
    Closed,
}

/// Bits of [`ServerSession::flags`].
mod flag {
    /// The login carried the PROBE flag.
    pub const PROBE: u8 = 0x01;
    /// The principal is a backend service.
    pub const BACKEND: u8 = 0x02;
    /// A `Pong` is to be sent.
    pub const PONG: u8 = 0x04;
    /// A `ProbeFire` is to be sent.
    pub const FIRE: u8 = 0x08;
    /// A `Close` frame with `close_code` is to be sent.
    pub const CLOSE_FRAME: u8 = 0x10;
    /// The `Closed` event is to be reported.
    pub const CLOSED_EVENT: u8 = 0x20;
    /// The peer closed the session.
    pub const BY_PEER: u8 = 0x40;
    /// The login asked for protocol version 2: its frames and rules apply.
    pub const V2: u8 = 0x80;
}

/// Outputs that do not fit in a few bits, and frames the peer pipelined behind its `Login`.
/// Allocated when the first one is queued and freed as soon as every queue is drained, so an
/// idle session holds no heap memory.
#[derive(Debug, Default)]
struct Outbox {
    /// Frames for the peer, in order.
    frames: VecDeque<Frame>,
    /// Events for the driver, in order.
    events: VecDeque<Event>,
    /// Frames fed while the login waited for [`ServerSession::accept`]; handled, in order,
    /// right after `LoginOk` is queued. At most [`PIPELINE_MAX`].
    pipelined: Vec<Frame>,
}

/// Most frames a session holds for a login that waits for [`ServerSession::accept`]. A driver
/// that accepts at once (or keeps later bytes in its input buffer until it has) never gets
/// near it; past it the session closes with [`CloseCode::Overloaded`].
pub const PIPELINE_MAX: usize = 64;

/// The server side of one connection.
///
/// # Driving it
///
/// Create it with [`ServerSession::new`] when the connection is accepted. Then:
///
/// 1. Feed input: [`handle_frame`](Self::handle_frame) for each decoded frame,
///    [`handle_timeout`](Self::handle_timeout) when the deadline from `poll_timeout` passes,
///    and the driver's own commands ([`accept`](Self::accept), [`push`](Self::push),
///    [`send_result`](Self::send_result), [`push_result`](Self::push_result),
///    [`kick`](Self::kick), [`go_away`](Self::go_away), [`close`](Self::close)).
/// 2. After each input, drain [`poll_event`](Self::poll_event) until `None` and act on the
///    events, then drain [`poll_transmit`](Self::poll_transmit) until `None` and write the
///    frames, then read [`poll_timeout`](Self::poll_timeout) and (re)arm the connection's timer.
///    Events may lead to commands (`LoggedIn` → `accept`), whose frames the following
///    `poll_transmit` drain picks up.
/// 3. When `poll_timeout` returns `None` and both queues are empty ([`is_finished`](Self::is_finished)),
///    close the socket and drop the session.
///
/// A timer that fires early is harmless: `handle_timeout` does nothing before the deadline and
/// `poll_timeout` gives the new one. Heartbeats only move the deadline forward, so a timing
/// wheel can keep the old entry and re-arm it when it fires early.
///
/// # Rules
///
/// - `Login` must be the first frame, within [`SessionConfig::login_timeout_ms`]; otherwise the
///   session closes with [`CloseCode::LoginRequired`] or [`CloseCode::LoginTimeout`] (both in
///   the do-not-reconnect range). (A first frame of unknown type never reaches the session: the
///   driver's decoder closes with [`CloseCode::UnknownFrame`].)
/// - The peer may pipeline frames behind its `Login`. Frames fed between the `LoggedIn` event
///   and [`accept`](Self::accept) are held (at most [`PIPELINE_MAX`]) and handled right after
///   `LoginOk` is queued, so their answers follow it.
/// - After every inbound frame of a logged-in session the idle deadline becomes
///   `now + SessionConfig::idle_window_ms(lease)`, where the lease is the last `Ping`'s
///   `lease_ms`, or the login's `heartbeat_ms` before the first ping. `LoginOk` tells the client
///   the bounds, multiplier and grace; each `Pong` carries the window it set.
/// - A probe connection (login flag PROBE) may send `Probe { delay_ms }` with a delay up to
///   `max_lease_ms` (any smaller one, even below `min_lease_ms`, is kept exactly); after that
///   much silence the session sends `ProbeFire` and closes with [`CloseCode::Normal`]. Once a
///   probe is armed a `Ping` restarts the silence, its lease is ignored and its `Pong` carries
///   the delay. A probe connection may not send `Send`, `PushAck` or `NetReport`
///   ([`CloseCode::NotAllowed`]).
/// - Anything a peer sends that breaks the protocol closes the session with a code; nothing
///   panics.
#[derive(Debug)]
pub struct ServerSession {
    /// The next instant something happens unless a frame arrives first: the login deadline,
    /// the idle deadline or the probe's fire time, depending on `state`.
    deadline: Millis,
    /// Frames and events too big for `flags`; `None` while nothing of the kind is pending.
    outbox: Option<Box<Outbox>>,
    /// Digest of the login's network key (0: none), for `NetReport` events.
    network: u64,
    /// Milliseconds added to `now` after each inbound frame: the idle window (the probe delay
    /// once a probe is armed). Also what a `Pong` carries.
    window_ms: u32,
    /// The code of the close, once the session closes.
    close_code: CloseCode,
    /// Where the session is in its life.
    state: State,
    /// Pending small outputs and facts about the login, as [`flag`] bits.
    flags: u8,
    /// The next moment the token's life matters, in whole seconds of the session clock
    /// ([`NEVER`] for a token without expiry): its end, or while [`TOKEN_NOTICE_PENDING`] is
    /// set in `token_key`, when the `TokenNotice` goes out (the end lies
    /// `token_notice_s` later). Fits in what was padding.
    token_at_s: u32,
    /// The [`KeyId`] of the secret that verified the token (low 14 bits), and
    /// [`TOKEN_NOTICE_PENDING`].
    token_key: u16,
}

/// `token_at_s` of a token that never expires.
const NEVER: u32 = u32::MAX;
/// Bit of `token_key`: `token_at_s` is the time of the notice, not of the end.
const TOKEN_NOTICE_PENDING: u16 = 0x8000;
/// Bits of `token_key` holding the key id.
const TOKEN_KEY_BITS: u16 = KeyId::MAX;

impl ServerSession {
    /// A session for a connection accepted at `now`; the login deadline starts here.
    pub fn new(cfg: &SessionConfig, now: Millis) -> Self {
        ServerSession {
            deadline: now.saturating_add(u64::from(cfg.login_timeout_ms)),
            outbox: None,
            network: 0,
            window_ms: 0,
            close_code: CloseCode::Normal,
            state: State::AwaitLogin,
            flags: 0,
            token_at_s: NEVER,
            token_key: 0,
        }
    }

    /// Handles one frame from the peer, received at `now`. `now_unix` is wall-clock seconds,
    /// used only to check token expiry at login. `auth` checks the login's token.
    pub fn handle_frame<A: Authenticate + ?Sized>(
        &mut self,
        cfg: &SessionConfig,
        now: Millis,
        now_unix: u64,
        frame: Frame,
        auth: &A,
    ) {
        match self.state {
            State::Closed => {}
            State::AwaitLogin => match frame {
                Frame::Login(login) => self.on_login(login, cfg, now, now_unix, auth),
                _ => self.close_by_server(CloseCode::LoginRequired),
            },
            // The peer may pipeline frames behind its Login: they are handled after LoginOk.
            State::AwaitAccept => self.hold_pipelined(frame),
            State::Open | State::ProbeArmed => self.on_frame_open(cfg, now, frame),
        }
    }

    /// Handles the passing of time. Call it when `now` reaches [`poll_timeout`](Self::poll_timeout);
    /// calling it earlier does nothing.
    pub fn handle_timeout(&mut self, cfg: &SessionConfig, now: Millis) {
        if self.is_open() && now >= self.token_at_ms() {
            if self.token_key & TOKEN_NOTICE_PENDING == 0 {
                return self.close_by_server(CloseCode::TokenExpired);
            }
            self.token_key &= !TOKEN_NOTICE_PENDING;
            self.token_at_s = self.token_at_s.saturating_add(cfg.token_notice_s);
            self.queue_notice(now);
        }
        if now < self.deadline {
            return;
        }
        match self.state {
            State::AwaitLogin | State::AwaitAccept => self.close_by_server(CloseCode::LoginTimeout),
            State::Open => self.close_by_server(CloseCode::IdleTimeout),
            State::ProbeArmed => {
                self.flags |= flag::FIRE;
                self.close_by_server(CloseCode::Normal);
            }
            State::Closed => {}
        }
    }

    /// Accepts the login reported by [`Event::LoggedIn`]: queues `LoginOk` and starts the idle
    /// deadline at `now`.
    pub fn accept(
        &mut self,
        cfg: &SessionConfig,
        now: Millis,
        accept: Accept,
    ) -> Result<(), SessionError> {
        if self.state != State::AwaitAccept {
            return Err(SessionError::NotAwaitingAccept);
        }
        self.state = State::Open;
        self.deadline = now.saturating_add(u64::from(self.window_ms));
        self.queue_frame(Frame::LoginOk(LoginOk {
            session_id: accept.session_id,
            server_epoch: accept.server_epoch,
            min_lease_ms: cfg.min_lease_ms,
            max_lease_ms: cfg.max_lease_ms,
            lease_multiplier_pct: cfg.lease_multiplier_pct,
            grace_ms: cfg.grace_ms,
            prior_ms: accept.prior_ms,
            max_frame: cfg.max_frame,
        }));
        // A token with less than the notice period left is told at once, after LoginOk.
        self.set_token_end(cfg, now, self.token_at_s, true);
        // Frames the peer pipelined behind its Login, in the order they came.
        let pipelined = self
            .outbox
            .as_mut()
            .map(|o| std::mem::take(&mut o.pipelined))
            .unwrap_or_default();
        for frame in pipelined {
            if self.state == State::Closed {
                break;
            }
            self.on_frame_open(cfg, now, frame);
        }
        Ok(())
    }

    /// Queues a push for a client's main connection.
    pub fn push(&mut self, id: u64, payload: Bytes) -> Result<(), SessionError> {
        self.check_open_client()?;
        self.queue_frame(Frame::Push(Push { id, payload }));
        Ok(())
    }

    /// Queues the outcome of a client's `Send`. [`PushStatus::Accepted`] exists from version 2
    /// on ([`SessionError::WrongPeer`] on a version-1 session).
    pub fn send_result(&mut self, result: SendResult) -> Result<(), SessionError> {
        self.check_open_client()?;
        if result.status == PushStatus::Accepted && self.version() < PROTOCOL_V2 {
            return Err(SessionError::WrongPeer);
        }
        self.queue_frame(Frame::SendResult(result));
        Ok(())
    }

    /// Queues the one result of a client's `Upstream` (version 2).
    pub fn upstream_result(&mut self, result: UpstreamResult) -> Result<(), SessionError> {
        self.check_open_client()?;
        self.check_v2()?;
        self.queue_frame(Frame::UpstreamResult(result));
        Ok(())
    }

    /// Queues another client's message for this client's main connection (version 2).
    pub fn message(&mut self, message: Message) -> Result<(), SessionError> {
        self.check_open_client()?;
        self.check_v2()?;
        self.queue_frame(Frame::Message(message));
        Ok(())
    }

    /// Queues a client's upstream message for a backend connection (version 2; the driver
    /// only sends these to backends that logged in with [`login_flags::UPSTREAM`]).
    pub fn upstream_deliver(&mut self, deliver: UpstreamDeliver) -> Result<(), SessionError> {
        self.check_open()?;
        self.check_v2()?;
        if self.flags & flag::BACKEND == 0 {
            return Err(SessionError::WrongPeer);
        }
        self.queue_frame(Frame::UpstreamDeliver(deliver));
        Ok(())
    }

    /// Queues the outcome of a backend's `BackendPush`.
    pub fn push_result(&mut self, result: PushResult) -> Result<(), SessionError> {
        self.check_open()?;
        if self.flags & flag::BACKEND == 0 {
            return Err(SessionError::WrongPeer);
        }
        self.queue_frame(Frame::PushResult(result));
        Ok(())
    }

    /// Tells the peer the server is draining: it should reconnect after a random delay within
    /// `window_ms`. The session stays open until the driver closes it.
    pub fn go_away(
        &mut self,
        reason: CloseCode,
        may_reconnect: bool,
        window_ms: u32,
    ) -> Result<(), SessionError> {
        self.check_open()?;
        self.queue_frame(Frame::GoAway(GoAway {
            reason,
            may_reconnect,
            window_ms,
        }));
        Ok(())
    }

    /// Ends the session with a `Kick` (instead of a `Close`) frame: the peer learns whether and
    /// how soon to reconnect.
    pub fn kick(
        &mut self,
        reason: CloseCode,
        may_reconnect: bool,
        jitter_ms: u32,
    ) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::NotOpen);
        }
        self.close_by_server(reason);
        self.flags &= !flag::CLOSE_FRAME;
        self.queue_frame(Frame::Kick(Kick {
            reason,
            may_reconnect,
            jitter_ms,
        }));
        Ok(())
    }

    /// Ends the session with a `Close { code }` frame. Frames queued before still go out first.
    pub fn close(&mut self, code: CloseCode) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::NotOpen);
        }
        self.close_by_server(code);
        Ok(())
    }

    /// The next frame to write to the peer.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        if let Some(frame) = self.outbox.as_mut().and_then(|o| o.frames.pop_front()) {
            self.free_outbox_if_empty();
            return Some(frame);
        }
        if self.take_flag(flag::PONG) {
            return Some(Frame::Pong(Pong {
                deadline_ms: self.window_ms,
            }));
        }
        if self.take_flag(flag::FIRE) {
            return Some(Frame::ProbeFire);
        }
        if self.take_flag(flag::CLOSE_FRAME) {
            return Some(Frame::Close(Close {
                code: self.close_code,
                text: String::new(),
            }));
        }
        None
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(event) = self.outbox.as_mut().and_then(|o| o.events.pop_front()) {
            self.free_outbox_if_empty();
            return Some(event);
        }
        if self.take_flag(flag::CLOSED_EVENT) {
            return Some(Event::Closed {
                code: self.close_code,
                by_peer: self.flags & flag::BY_PEER != 0,
            });
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Millis> {
        match self.state {
            State::Closed => None,
            State::Open | State::ProbeArmed => Some(self.deadline.min(self.token_at_ms())),
            State::AwaitLogin | State::AwaitAccept => Some(self.deadline),
        }
    }

    /// Takes the new token of an [`Event::Refresh`] that the driver verified for this
    /// connection's identity (`grant`, checked at `now_unix`): the connection now ends with the
    /// new token, which a new notice will announce, and `Refreshed` tells the peer. A token
    /// with less than the notice period left gets no notice of its own (the peer just
    /// refreshed), so a peer that only has short tokens cannot be made to loop.
    pub fn refreshed(
        &mut self,
        cfg: &SessionConfig,
        now: Millis,
        now_unix: u64,
        grant: Grant,
    ) -> Result<(), SessionError> {
        self.check_open()?;
        self.token_key = grant.key.0 & TOKEN_KEY_BITS;
        let end = session_seconds(now, now_unix, grant.expiry_unix);
        self.set_token_end(cfg, now, end, false);
        self.queue_frame(Frame::Refreshed);
        Ok(())
    }

    /// The secret that verified the connection's token was withdrawn: the connection ends at
    /// most `grace_s` from `now` (earlier if its token does), unless the peer refreshes it with
    /// a token of a secret still in use. A version-2 peer is told when that is within the
    /// notice period. Does nothing to a closed session or one whose token ends sooner anyway.
    pub fn revoke(&mut self, cfg: &SessionConfig, now: Millis, grace_s: u32) {
        let by = u32::try_from(now / 1000)
            .unwrap_or(NEVER)
            .saturating_add(grace_s);
        match self.state {
            State::Closed | State::AwaitLogin => {}
            // `accept` places the notice after LoginOk.
            State::AwaitAccept => self.token_at_s = self.token_at_s.min(by),
            State::Open | State::ProbeArmed => {
                if by < self.token_end_s(cfg) {
                    self.set_token_end(cfg, now, by, true);
                }
            }
        }
    }

    /// The secret that verified the connection's token ([`KeyId::NONE`] before login).
    pub fn token_key(&self) -> KeyId {
        KeyId(self.token_key & TOKEN_KEY_BITS)
    }

    /// When the connection's token ends, in milliseconds of the session clock (`None`: never,
    /// or not logged in).
    pub fn token_end(&self, cfg: &SessionConfig) -> Option<Millis> {
        match self.token_end_s(cfg) {
            NEVER => None,
            s => Some(u64::from(s) * 1000),
        }
    }

    /// Whether the session has ended and every output was drained: the socket can be closed.
    pub fn is_finished(&self) -> bool {
        self.state == State::Closed
            && self.outbox.is_none()
            && self.flags & (flag::PONG | flag::FIRE | flag::CLOSE_FRAME | flag::CLOSED_EVENT) == 0
    }

    /// Whether the login was accepted and the session has not ended.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open | State::ProbeArmed)
    }

    /// The protocol version the login asked for: the version of every later frame, both
    /// ways. Version 1 until a `Login` was read.
    pub fn version(&self) -> u8 {
        if self.flags & flag::V2 != 0 {
            PROTOCOL_V2
        } else {
            PROTOCOL_V1
        }
    }

    /// Whether this is a heartbeat probe connection.
    pub fn is_probe(&self) -> bool {
        self.flags & flag::PROBE != 0
    }

    /// The close code, once the session has ended.
    pub fn close_code(&self) -> Option<CloseCode> {
        (self.state == State::Closed).then_some(self.close_code)
    }

    fn on_login<A: Authenticate + ?Sized>(
        &mut self,
        login: Login,
        cfg: &SessionConfig,
        now: Millis,
        now_unix: u64,
        auth: &A,
    ) {
        if !speaks(login.version) {
            return self.close_by_server(CloseCode::UnsupportedVersion);
        }
        if login.version >= PROTOCOL_V2 {
            self.flags |= flag::V2;
        }
        let grant = match auth.authenticate(&login, now_unix) {
            Ok(g) => g,
            Err(code) => return self.close_by_server(code),
        };
        let principal = grant.principal;
        // Until `accept` places the notice, the token's end.
        self.token_at_s = session_seconds(now, now_unix, grant.expiry_unix);
        self.token_key = grant.key.0 & TOKEN_KEY_BITS;
        let backend = matches!(principal, Principal::Backend);
        let probe = login.flags & login_flags::PROBE != 0;
        if backend && probe {
            // A probe measures a client's network; a backend has no business opening one.
            return self.close_by_server(CloseCode::NotAllowed);
        }
        if backend {
            self.flags |= flag::BACKEND;
        }
        if probe {
            self.flags |= flag::PROBE;
        }
        // The flag means something only to a version-2 backend; elsewhere it is a reserved bit.
        let upstream =
            backend && login.version >= PROTOCOL_V2 && login.flags & login_flags::UPSTREAM != 0;
        self.network = NetworkId::of(&login.network_key).map_or(0, |n| n.0);
        self.window_ms = cfg.idle_window_ms(login.heartbeat_ms);
        self.state = State::AwaitAccept;
        self.queue_event(Event::LoggedIn {
            principal,
            user: login.user,
            device: login.device,
            network_key: login.network_key,
            probe,
            upstream,
        });
    }

    fn on_frame_open(&mut self, cfg: &SessionConfig, now: Millis, frame: Frame) {
        let backend = self.flags & flag::BACKEND != 0;
        let probe = self.flags & flag::PROBE != 0;
        let v2 = self.flags & flag::V2 != 0;
        if !v2 && crate::codec::kind_since(frame.kind()) != Some(PROTOCOL_V1) {
            // A driver that decoded with the wrong version's rules: a version-1 peer cannot
            // send these.
            return self.close_by_server(CloseCode::UnknownFrame);
        }
        match frame {
            Frame::Ping(ping) => {
                if self.state == State::Open {
                    self.window_ms = cfg.idle_window_ms(ping.lease_ms);
                }
                self.flags |= flag::PONG;
            }
            Frame::Close(close) => return self.close_by_peer(close.code),
            Frame::Send(send) if !backend && !probe => self.queue_event(Event::Send(send)),
            Frame::PushAck(ack) if !backend && !probe => self.queue_event(Event::PushAck(ack)),
            // A probe's login may carry a network key, but what the client learned belongs to
            // its main connection: a report here is refused like any frame out of place.
            Frame::NetReport(report) if !backend && !probe => {
                // Without a network key there is nothing to attach the report to.
                if self.network != 0 {
                    self.queue_event(Event::NetReport {
                        network: NetworkId(self.network),
                        learned_ms: report.learned_ms,
                    });
                }
            }
            Frame::BackendPush(push) if backend => self.queue_event(Event::BackendPush(push)),
            Frame::Upstream(up) if !backend && !probe => self.queue_event(Event::Upstream(up)),
            Frame::UpstreamAnswer(answer) if backend => {
                self.queue_event(Event::UpstreamAnswer(answer))
            }
            Frame::Refresh(refresh) if !probe => self.queue_event(Event::Refresh(refresh)),
            // An extension frame this version does not know: skipped, but it still proves
            // the path works.
            Frame::Ignored { .. } => {}
            Frame::Probe(p) if probe => {
                if p.delay_ms > cfg.max_lease_ms {
                    return self.close_by_server(CloseCode::ProtocolError);
                }
                self.state = State::ProbeArmed;
                self.window_ms = p.delay_ms;
            }
            // Client frames from the wrong kind of peer.
            Frame::Send(_)
            | Frame::PushAck(_)
            | Frame::NetReport(_)
            | Frame::BackendPush(_)
            | Frame::Upstream(_)
            | Frame::UpstreamAnswer(_)
            | Frame::Refresh(_)
            | Frame::Probe(_) => return self.close_by_server(CloseCode::NotAllowed),
            // A second login, or frames only the server sends.
            Frame::Login(_)
            | Frame::LoginOk(_)
            | Frame::Pong(_)
            | Frame::Push(_)
            | Frame::SendResult(_)
            | Frame::Kick(_)
            | Frame::GoAway(_)
            | Frame::ProbeFire
            | Frame::PushResult(_)
            | Frame::UpstreamResult(_)
            | Frame::UpstreamDeliver(_)
            | Frame::Message(_)
            | Frame::TokenNotice(_)
            | Frame::Refreshed => return self.close_by_server(CloseCode::ProtocolError),
        }
        // Every inbound frame proves the path works: the deadline moves (for an armed probe:
        // the silence starts again).
        self.deadline = now.saturating_add(u64::from(self.window_ms));
    }

    /// The token's end in session seconds, wherever the notice stands.
    fn token_end_s(&self, cfg: &SessionConfig) -> u32 {
        if self.token_key & TOKEN_NOTICE_PENDING != 0 {
            self.token_at_s.saturating_add(cfg.token_notice_s)
        } else {
            self.token_at_s
        }
    }

    /// `token_at_s` in milliseconds.
    fn token_at_ms(&self) -> Millis {
        match self.token_at_s {
            NEVER => Millis::MAX,
            s => u64::from(s) * 1000,
        }
    }

    /// Makes `end_s` (session seconds) the token's end. A version-2 peer is told
    /// `token_notice_s` before it; when less is left, at once if `notify_now`.
    fn set_token_end(&mut self, cfg: &SessionConfig, now: Millis, end_s: u32, notify_now: bool) {
        self.token_key &= !TOKEN_NOTICE_PENDING;
        self.token_at_s = end_s;
        // A probe's silence is what it measures: it gets no notice, only the end.
        let notices = self.flags & (flag::V2 | flag::PROBE) == flag::V2
            && cfg.token_notice_s > 0
            && end_s != NEVER;
        if !notices {
            return;
        }
        let notice_at = end_s.saturating_sub(cfg.token_notice_s);
        if u64::from(notice_at) * 1000 > now {
            self.token_at_s = notice_at;
            self.token_key |= TOKEN_NOTICE_PENDING;
        } else if notify_now {
            self.queue_notice(now);
        }
    }

    /// Queues a `TokenNotice` for the token's end (`token_at_s`, no notice pending).
    fn queue_notice(&mut self, now: Millis) {
        let left = self.token_at_ms().saturating_sub(now);
        self.queue_frame(Frame::TokenNotice(TokenNotice {
            expires_in_ms: u32::try_from(left).unwrap_or(u32::MAX),
        }));
    }

    fn check_open(&self) -> Result<(), SessionError> {
        if self.is_open() {
            Ok(())
        } else {
            Err(SessionError::NotOpen)
        }
    }

    fn check_v2(&self) -> Result<(), SessionError> {
        if self.flags & flag::V2 == 0 {
            return Err(SessionError::WrongPeer);
        }
        Ok(())
    }

    fn check_open_client(&self) -> Result<(), SessionError> {
        self.check_open()?;
        if self.flags & (flag::BACKEND | flag::PROBE) != 0 {
            return Err(SessionError::WrongPeer);
        }
        Ok(())
    }

    fn close_by_server(&mut self, code: CloseCode) {
        self.close_code = code;
        self.state = State::Closed;
        self.flags |= flag::CLOSE_FRAME | flag::CLOSED_EVENT;
        self.flags &= !flag::PONG;
        // Nothing more is read from a closed session.
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.pipelined.clear();
        }
        self.free_outbox_if_empty();
    }

    fn close_by_peer(&mut self, code: CloseCode) {
        self.close_code = code;
        self.state = State::Closed;
        self.flags |= flag::CLOSED_EVENT | flag::BY_PEER;
        self.flags &= !(flag::PONG | flag::FIRE);
        // The peer is gone: whatever was queued for it would not be read.
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.frames.clear();
            outbox.pipelined.clear();
        }
        self.free_outbox_if_empty();
    }

    fn queue_frame(&mut self, frame: Frame) {
        self.outbox
            .get_or_insert_with(Box::default)
            .frames
            .push_back(frame);
    }

    fn queue_event(&mut self, event: Event) {
        self.outbox
            .get_or_insert_with(Box::default)
            .events
            .push_back(event);
    }

    fn hold_pipelined(&mut self, frame: Frame) {
        let outbox = self.outbox.get_or_insert_with(Box::default);
        if outbox.pipelined.len() >= PIPELINE_MAX {
            outbox.pipelined.clear();
            return self.close_by_server(CloseCode::Overloaded);
        }
        outbox.pipelined.push(frame);
    }

    fn free_outbox_if_empty(&mut self) {
        if self
            .outbox
            .as_ref()
            .is_some_and(|o| o.frames.is_empty() && o.events.is_empty() && o.pipelined.is_empty())
        {
            self.outbox = None;
        }
    }

    fn take_flag(&mut self, bit: u8) -> bool {
        let set = self.flags & bit != 0;
        self.flags &= !bit;
        set
    }
}

/// A token expiry (`expiry_unix`, wall-clock seconds) as whole seconds of the session clock,
/// given the two clocks' readings at the same moment; [`NEVER`] when it lies beyond what the
/// session stores (136 years). Never early: `now_unix` is whole seconds (so `left` is at least
/// what is really left) and `now` is rounded up; at most two seconds late.
fn session_seconds(now: Millis, now_unix: u64, expiry_unix: u64) -> u32 {
    let left = expiry_unix.saturating_sub(now_unix);
    now.div_ceil(1000)
        .checked_add(left)
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or(NEVER)
}

/// The bytes of the refusal a server writes to a connection it will not serve because it is
/// over a limit (connections, descriptors, accept or login rate): `GoAway { Overloaded,
/// may_reconnect: true, window_ms }`. The server writes them and then closes the connection
/// (EOF), before or instead of reading a `Login`; no session exists for such a connection. A
/// client reconnects at a uniformly random moment within `window_ms`, not before.
pub fn back_off_frame(window_ms: u32) -> Bytes {
    let frame = Frame::GoAway(GoAway {
        reason: CloseCode::Overloaded,
        may_reconnect: true,
        window_ms,
    });
    let mut out = bytes::BytesMut::with_capacity(codec::encoded_len(&frame));
    codec::encode(&frame, &mut out).expect("a GoAway has no bounded field");
    out.freeze()
}
