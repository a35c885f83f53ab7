//! One shard's connections and everything it knows about them, without sockets.
//!
//! [`ShardState`] holds the slab of connections, the timing wheel, the user index, the
//! counters and the shard's end of the mesh. It reacts to inputs (bytes read, a socket
//! writable, the clock, a mesh message) and performs its few system calls through an
//! [`Io`], so the same code serves the real server ([`crate::ring::RingIo`]) and a state-only
//! benchmark holding millions of simulated sessions ([`crate::io::NullIo`]).
//!
//! Per connection the driving loop is the one `ServerSession` documents: feed a frame, act on
//! its events, write its frames, then look at its deadline. Pushes and their results are in
//! `delivery.rs`.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use bytes::BytesMut;
use slab::Slab;
use tether_proto::heartbeat::NetworkId;
use tether_proto::heartbeat::{reporter_id, PriorConfig, PriorTable};
use tether_proto::session::{Accept, Event, ServerSession, SessionConfig};
use tether_proto::token::{Authenticate, Principal};
use tether_proto::{codec, CloseCode, Frame, Millis};
use tracing::debug;

use crate::acks::AckTable;
use crate::conn::{flag, Conn, ConnExt, Kind, NOT_ARMED};
use crate::counters::{Counter, Counters};
use crate::io::Io;
use crate::mesh::{Handover, MeshMsg, MeshPort};
use crate::routing::shard_for;
use crate::users::UserIndex;
use crate::wheel::Wheel;

/// Most bytes read from one socket per `recv` call.
const READ_CHUNK: usize = 64 * 1024;

/// The clock as the shard sees it for one batch of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (deadlines, the wheel).
    pub ms: Millis,
    /// Wall-clock seconds since the Unix epoch (token expiry only).
    pub unix: u64,
}

/// The settings a shard needs, taken from the server configuration.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// The session rules (login deadline, leases).
    pub session: SessionConfig,
    /// Largest frame body read or written.
    pub max_frame: usize,
    /// Most connections this shard holds.
    pub max_connections: usize,
    /// Bound on a connection's unsent bytes.
    pub max_queue_bytes: usize,
    /// A connection whose unsent bytes made no progress for this long is closed.
    pub write_timeout_ms: u64,
    /// Timing-wheel granularity.
    pub tick_ms: u64,
    /// Sent in `LoginOk`; changes at every start.
    pub server_epoch: u64,
    /// Most pushes waiting for an acknowledgement at once.
    pub max_ack_waiting: usize,
    /// How long a push waits for its acknowledgement.
    pub ack_timeout_ms: u64,
    /// Parameters of the learned-interval prior table.
    pub priors: PriorConfig,
}

/// What an authenticated login said, as the session reported it.
#[derive(Debug)]
struct LoginInfo {
    /// Client or backend.
    principal: Principal,
    /// The user id (service name for a backend).
    user: String,
    /// The device id.
    device: String,
    /// The network key (may be empty).
    network_key: String,
    /// Whether this is a heartbeat probe connection.
    probe: bool,
}

/// Whether the connection a call was about still lives on this shard afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// It is still here.
    Alive,
    /// It was closed or moved to another shard.
    Gone,
}

/// One shard's state. See the [module documentation](self).
pub struct ShardState {
    /// Settings.
    pub(crate) cfg: ShardConfig,
    /// Checks login tokens (replaced on a reload, see `control.rs`).
    pub(crate) auth: Box<dyn Authenticate>,
    /// The connections, by slab key.
    pub(crate) conns: Slab<Conn>,
    /// One entry per connection, at its deadline.
    wheel: Wheel,
    /// Logged-in users → their main connections.
    pub(crate) users: UserIndex,
    /// What happened, counted.
    pub(crate) counters: Counters,
    /// Channels to the other shards.
    pub(crate) mesh: MeshPort,
    /// Pushes waiting for an acknowledgement.
    pub(crate) acks: AckTable,
    /// Learned heartbeat intervals per network, for `LoginOk.prior_ms`.
    priors: PriorTable,
    /// Results whose target channel was full, re-sent after the batch (never dropped).
    pub(crate) retry: VecDeque<(usize, MeshMsg)>,
    /// The shard's single read buffer, lent to whichever connection is being read.
    rbuf: BytesMut,
    /// The shard's single write buffer: a connection's frames are encoded here, then sent.
    wbuf: BytesMut,
    /// Keys the wheel fired, reused between ticks.
    fired: Vec<u32>,
    /// Connection keys being fanned out to, reused between pushes.
    pub(crate) scratch: Vec<u32>,
    /// Next connection generation.
    next_gen: u32,
    /// Next server push id.
    pub(crate) next_push_id: u64,
    /// Next session id (the shard index is in the top 16 bits).
    next_session: u64,
    /// Set by [`ShardState::begin_drain`]: every open session got its GoAway.
    draining: bool,
    /// The GoAway window while draining.
    drain_window_ms: u32,
}

impl std::fmt::Debug for ShardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardState")
            .field("shard", &self.mesh.me())
            .field("connections", &self.conns.len())
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl ShardState {
    /// An empty shard whose clock reads `now`.
    pub fn new(
        cfg: ShardConfig,
        auth: Box<dyn Authenticate>,
        mesh: MeshPort,
        now: Millis,
    ) -> ShardState {
        let next_session = (mesh.me() as u64) << 48;
        ShardState {
            wheel: Wheel::new(cfg.tick_ms, now),
            acks: AckTable::new(cfg.max_ack_waiting, cfg.ack_timeout_ms),
            priors: PriorTable::new(cfg.priors.clone()),
            cfg,
            auth,
            conns: Slab::new(),
            users: UserIndex::default(),
            counters: Counters::default(),
            mesh,
            retry: VecDeque::new(),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            fired: Vec::new(),
            scratch: Vec::new(),
            next_gen: 1,
            next_push_id: 1,
            next_session,
            draining: false,
            drain_window_ms: 0,
        }
    }

    /// Pre-sizes the slab and the wheel for `n` connections (benchmarks, large deployments).
    pub fn reserve(&mut self, n: usize) {
        self.conns.reserve(n);
        self.wheel.reserve(n);
    }

    /// Connections held.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Users with at least one main connection here.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether [`ShardState::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// When the wheel next needs a [`ShardState::tick`], if ever.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.wheel.next_expiry()
    }

    /// The socket of connection `(key, gen)`, if it is still here.
    pub fn fd_of(&self, key: u32, gen: u32) -> Option<RawFd> {
        self.conns
            .get(key as usize)
            .filter(|c| c.gen == gen)
            .map(|c| c.fd)
    }

    /// Makes this shard's next wait return at once (more work is pending).
    pub fn wake_self(&self) {
        self.mesh.shared().wake(self.mesh.me());
    }

    /// The next mesh message for this shard, if any.
    pub fn mesh_recv(&self) -> Option<MeshMsg> {
        self.mesh.recv()
    }

    /// Adopts a freshly accepted socket: starts its login deadline and watches it. Gives the
    /// descriptor back when the shard is full or draining (the caller closes it).
    pub fn open(&mut self, fd: RawFd, now: Now, io: &mut dyn Io) -> Result<u32, RawFd> {
        if self.conns.len() >= self.cfg.max_connections || self.draining {
            self.counters.inc(Counter::RefusedAtAccept);
            return Err(fd);
        }
        self.counters.inc(Counter::Accepted);
        let session = ServerSession::new(&self.cfg.session, now.ms);
        let key = self.insert_conn(fd, session);
        io.watch(fd, key, self.conns[key as usize].gen);
        Ok(key)
    }

    /// Puts a connection in the slab with a wheel entry at its session's deadline.
    fn insert_conn(&mut self, fd: RawFd, session: ServerSession) -> u32 {
        let gen = self.next_gen;
        // Generations are 30 bits wide in ring completions (see `ring.rs`).
        self.next_gen = (self.next_gen + 1) & crate::ring::GEN_MASK;
        self.next_gen = self.next_gen.max(1);
        let entry = self.conns.vacant_entry();
        let key = u32::try_from(entry.key()).expect("fewer than 2^32 connections per shard");
        let at = session.poll_timeout().unwrap_or(0);
        let timer = self.wheel.insert(key, at);
        let mut conn = Conn::new(fd, gen, session, timer);
        conn.armed_at = at;
        entry.insert(conn);
        key
    }

    /// The socket of `(key, gen)` is readable: read everything it has, handle every whole
    /// frame, keep a partial one.
    pub fn on_readable(&mut self, key: u32, gen: u32, now: Now, io: &mut dyn Io) {
        let mut buf = std::mem::take(&mut self.rbuf);
        buf.clear();
        let Some(conn) = self.conns.get_mut(key as usize).filter(|c| c.gen == gen) else {
            self.rbuf = buf;
            return;
        };
        let fd = conn.fd;
        if let Some(ext) = conn.ext.as_mut() {
            buf.extend_from_slice(&ext.partial);
            ext.partial = BytesMut::new();
        }
        conn.shrink();
        let mut flow = Flow::Alive;
        let mut hangup = None;
        loop {
            buf.reserve(READ_CHUNK);
            let n = match io.recv(fd, &mut buf, READ_CHUNK) {
                Ok(0) => {
                    hangup = Some(CloseCode::Normal);
                    0
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!(key, error = %e, "recv failed");
                    hangup = Some(CloseCode::InternalError);
                    0
                }
            };
            self.counters.add(Counter::BytesIn, n as u64);
            if n > 0 {
                flow = self.process(key, gen, &mut buf, now, io);
            }
            if flow == Flow::Gone || n < READ_CHUNK {
                break;
            }
        }
        if flow == Flow::Alive {
            if let Some(code) = hangup {
                // The peer hung up (or the socket failed) without a Close frame.
                self.counters.close(code, code == CloseCode::Normal);
                self.teardown(key, io);
            } else if !buf.is_empty() {
                self.keep_partial(key, &buf);
            }
        }
        buf.clear();
        self.rbuf = buf;
    }

    /// Feeds bytes as if read from connection `(key, gen)`'s socket. For simulations and
    /// benchmarks; the server reads through [`ShardState::on_readable`].
    pub fn on_bytes(
        &mut self,
        key: u32,
        gen: u32,
        bytes: &[u8],
        now: Now,
        io: &mut dyn Io,
    ) -> Flow {
        let mut buf = std::mem::take(&mut self.rbuf);
        buf.clear();
        let Some(conn) = self.conns.get_mut(key as usize).filter(|c| c.gen == gen) else {
            self.rbuf = buf;
            return Flow::Gone;
        };
        if let Some(ext) = conn.ext.as_mut() {
            buf.extend_from_slice(&ext.partial);
            ext.partial = BytesMut::new();
        }
        conn.shrink();
        buf.extend_from_slice(bytes);
        let flow = self.process(key, gen, &mut buf, now, io);
        if flow == Flow::Alive && !buf.is_empty() {
            self.keep_partial(key, &buf);
        }
        buf.clear();
        self.rbuf = buf;
        flow
    }

    /// The connection `(key, gen)` if it still exists.
    fn live(&mut self, key: u32, gen: u32) -> Option<&mut Conn> {
        self.conns.get_mut(key as usize).filter(|c| c.gen == gen)
    }

    /// Stores the bytes of an incomplete frame in the connection until the rest arrives.
    fn keep_partial(&mut self, key: u32, bytes: &[u8]) {
        let conn = &mut self.conns[key as usize];
        conn.ext.get_or_insert_with(Box::default).partial = BytesMut::from(bytes);
    }

    /// Decodes and handles every whole frame in `buf`.
    fn process(
        &mut self,
        key: u32,
        gen: u32,
        buf: &mut BytesMut,
        now: Now,
        io: &mut dyn Io,
    ) -> Flow {
        loop {
            let frame = match codec::decode(buf, self.cfg.max_frame) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Flow::Alive,
                Err(e) => {
                    let Some(conn) = self.live(key, gen) else {
                        return Flow::Gone;
                    };
                    debug!(key, error = %e, "undecodable frame");
                    let _ = conn.session.close(e.close_code());
                    if self.drive(key, gen, now, io, None) == Flow::Alive {
                        self.teardown(key, io);
                    }
                    return Flow::Gone;
                }
            };
            if matches!(frame, Frame::Ping(_)) {
                self.counters.inc(Counter::Pings);
            }
            let Some(conn) = self.conns.get_mut(key as usize).filter(|c| c.gen == gen) else {
                return Flow::Gone;
            };
            conn.session
                .handle_frame(&self.cfg.session, now.ms, now.unix, frame, &*self.auth);
            if self.drive(key, gen, now, io, Some(buf)) == Flow::Gone {
                return Flow::Gone;
            }
        }
    }

    /// Acts on the session's events, writes its frames, closes it when finished and re-arms
    /// its timer. `rest` is the undecoded input after the current frame (it travels with a
    /// connection that moves to its home shard).
    pub(crate) fn drive(
        &mut self,
        key: u32,
        gen: u32,
        now: Now,
        io: &mut dyn Io,
        mut rest: Option<&mut BytesMut>,
    ) -> Flow {
        loop {
            let Some(conn) = self.live(key, gen) else {
                return Flow::Gone;
            };
            let Some(event) = conn.session.poll_event() else {
                break;
            };
            match event {
                Event::LoggedIn {
                    principal,
                    user,
                    device,
                    probe,
                    network_key,
                } => {
                    let login = LoginInfo {
                        principal,
                        user,
                        device,
                        network_key,
                        probe,
                    };
                    let flow = self.on_logged_in(key, gen, login, now, io, rest.as_deref_mut());
                    if flow == Flow::Gone {
                        return Flow::Gone;
                    }
                }
                Event::Send(send) => {
                    let origin =
                        self.origin(key, gen, crate::mesh::OriginKind::Send, send.client_id);
                    self.route(origin, send.to, send.payload, false, now, io);
                }
                Event::BackendPush(push) => {
                    let origin = self.origin(key, gen, crate::mesh::OriginKind::Backend, push.id);
                    let want_ack = push.flags & tether_proto::push_flags::WANT_ACK != 0;
                    self.route(origin, push.user, push.payload, want_ack, now, io);
                }
                Event::PushAck(ack) => self.on_ack(ack.id, now, io),
                Event::NetReport {
                    network,
                    learned_ms,
                } => self.on_net_report(key, network, learned_ms, now),
                Event::Closed { code, by_peer } => {
                    self.counters.close(code, by_peer);
                    self.unregister(key);
                }
            }
        }
        self.flush(key, gen, now, io)
    }

    /// Writes the session's pending frames; closes the connection when its session finished;
    /// re-arms its timer.
    pub(crate) fn flush(&mut self, key: u32, gen: u32, now: Now, io: &mut dyn Io) -> Flow {
        let Some(conn) = self.conns.get_mut(key as usize).filter(|c| c.gen == gen) else {
            return Flow::Gone;
        };
        self.wbuf.clear();
        while let Some(frame) = conn.session.poll_transmit() {
            if matches!(frame, Frame::ProbeFire) {
                self.counters.inc(Counter::ProbeFired);
            }
            if let Err(e) = codec::encode(&frame, &mut self.wbuf) {
                // Only server-built frames get here, checked against the limits before.
                debug!(key, error = %e, "frame not encodable, not sent");
            }
        }
        if !self.wbuf.is_empty() && self.write(key, now, io) == Flow::Gone {
            return Flow::Gone;
        }
        let conn = &mut self.conns[key as usize];
        if conn.session.is_finished() {
            self.teardown(key, io);
            return Flow::Gone;
        }
        self.rearm(key);
        Flow::Alive
    }

    /// Sends `self.wbuf` to connection `key`, queueing what the socket does not take. Closes
    /// the connection when its queue passes the bound or the socket failed.
    fn write(&mut self, key: u32, now: Now, io: &mut dyn Io) -> Flow {
        let conn = &mut self.conns[key as usize];
        let bytes = &self.wbuf[..];
        if conn.queued() > 0 {
            conn.ext
                .as_mut()
                .expect("queued bytes live in ext")
                .out
                .extend_from_slice(bytes);
        } else {
            let sent = match io.send(conn.fd, bytes) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(e) => {
                    debug!(key, error = %e, "send failed");
                    self.counters.close(CloseCode::InternalError, false);
                    self.teardown(key, io);
                    return Flow::Gone;
                }
            };
            self.counters.add(Counter::BytesOut, sent as u64);
            if sent == bytes.len() {
                return Flow::Alive;
            }
            let ext = conn.ext.get_or_insert_with(Box::default);
            ext.out.extend_from_slice(&bytes[sent..]);
            ext.out_since = now.ms;
            if conn.flags & flag::POLLOUT == 0 {
                conn.flags |= flag::POLLOUT;
                io.want_writable(conn.fd, key, conn.gen);
            }
        }
        if conn.queued() > self.cfg.max_queue_bytes {
            debug!(key, queued = conn.queued(), "slow consumer");
            self.counters.close(CloseCode::SlowConsumer, false);
            self.teardown(key, io);
            return Flow::Gone;
        }
        Flow::Alive
    }

    /// The socket of `(key, gen)` takes bytes again: send what is queued.
    pub fn on_writable(&mut self, key: u32, gen: u32, now: Now, io: &mut dyn Io) {
        let Some(conn) = self.conns.get_mut(key as usize).filter(|c| c.gen == gen) else {
            return;
        };
        conn.flags &= !flag::POLLOUT;
        let Some(ext) = conn.ext.as_mut() else {
            return;
        };
        while !ext.out.is_empty() {
            match io.send(conn.fd, &ext.out) {
                Ok(n) => {
                    self.counters.add(Counter::BytesOut, n as u64);
                    let _ = ext.out.split_to(n);
                    ext.out_since = now.ms;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(key, error = %e, "send failed");
                    self.counters.close(CloseCode::InternalError, false);
                    self.teardown(key, io);
                    return;
                }
            }
        }
        if ext.out.is_empty() {
            ext.out = BytesMut::new();
            conn.shrink();
            if conn.session.is_finished() {
                self.teardown(key, io);
                return;
            }
        } else {
            conn.flags |= flag::POLLOUT;
            io.want_writable(conn.fd, key, conn.gen);
        }
        self.rearm(key);
    }

    /// Makes sure the wheel fires no later than the connection's deadline. A deadline that
    /// moved later (every heartbeat) leaves the wheel alone: the entry fires early and is
    /// re-armed then.
    fn rearm(&mut self, key: u32) {
        let conn = &mut self.conns[key as usize];
        if let Some(d) = conn.deadline(self.cfg.write_timeout_ms) {
            if d < conn.armed_at {
                if conn.armed_at != NOT_ARMED {
                    self.wheel.cancel(conn.timer);
                }
                conn.timer = self.wheel.insert(key, d);
                conn.armed_at = d;
            }
        }
    }

    /// Moves the clock: fires due deadlines (login, idle, probe, write) and forgets stale
    /// acknowledgement waits.
    pub fn tick(&mut self, now: Now, io: &mut dyn Io) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(now.ms, &mut fired);
        self.counters.add(Counter::WheelFired, fired.len() as u64);
        for key in fired.drain(..) {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            conn.armed_at = NOT_ARMED;
            let gen = conn.gen;
            let stuck = conn.ext.as_ref().is_some_and(|e| {
                !e.out.is_empty() && e.out_since.saturating_add(self.cfg.write_timeout_ms) <= now.ms
            });
            if stuck {
                debug!(key, "write timeout");
                self.counters.close(CloseCode::WriteTimeout, false);
                self.teardown(key, io);
                continue;
            }
            conn.session.handle_timeout(now.ms);
            self.drive(key, gen, now, io, None);
        }
        self.fired = fired;
        self.acks.expire(now.ms);
    }

    /// A client's login was authenticated: register it here, or move it to its home shard.
    fn on_logged_in(
        &mut self,
        key: u32,
        gen: u32,
        login: LoginInfo,
        now: Now,
        io: &mut dyn Io,
        rest: Option<&mut BytesMut>,
    ) -> Flow {
        let LoginInfo {
            principal,
            user,
            device,
            network_key,
            probe,
        } = login;
        let conn = &mut self.conns[key as usize];
        match principal {
            Principal::Backend => {
                conn.kind = Kind::Backend;
                conn.user = Some(Rc::from(user));
                self.counters.inc(Counter::LoggedInBackend);
            }
            Principal::Client if probe => {
                conn.kind = Kind::Probe;
                conn.user = Some(Rc::from(user));
                self.counters.inc(Counter::LoggedInProbe);
            }
            Principal::Client => {
                let home = shard_for(&user, self.mesh.shards());
                if home != self.mesh.me() {
                    let login = LoginInfo {
                        principal,
                        user,
                        device,
                        network_key,
                        probe,
                    };
                    return self.hand_over(key, home, login, rest, io);
                }
                self.register(key, gen, &user, device, now, io);
                self.counters.inc(Counter::LoggedIn);
            }
        }
        self.accept(key, &network_key, now);
        Flow::Alive
    }

    /// Answers the login with `LoginOk` carrying the network's prior (and a GoAway right after
    /// while draining).
    fn accept(&mut self, key: u32, network_key: &str, now: Now) {
        let session_id = self.next_session;
        self.next_session += 1;
        let prior_ms = self.priors.prior(now.ms, NetworkId::of(network_key));
        let conn = &mut self.conns[key as usize];
        let accept = Accept {
            session_id,
            server_epoch: self.cfg.server_epoch,
            prior_ms,
        };
        if conn
            .session
            .accept(&self.cfg.session, now.ms, accept)
            .is_ok()
            && self.draining
        {
            let _ = conn
                .session
                .go_away(CloseCode::ServerShutdown, true, self.drain_window_ms);
        }
    }

    /// Registers connection `key` as `(user, device)`'s main connection; an older connection
    /// of the same device is kicked at once ("replaced", do not reconnect).
    fn register(
        &mut self,
        key: u32,
        gen: u32,
        user: &str,
        device: String,
        now: Now,
        io: &mut dyn Io,
    ) {
        let device = crate::routing::fnv1a64(device.as_bytes());
        let mut old = std::mem::take(&mut self.scratch);
        old.clear();
        old.extend(
            self.users
                .get(user)
                .iter()
                .copied()
                .filter(|k| *k != key && self.conns[*k as usize].device == device),
        );
        for k in old.drain(..) {
            let conn = &mut self.conns[k as usize];
            let old_gen = conn.gen;
            if conn.session.kick(CloseCode::Replaced, false, 0).is_ok() {
                self.counters.inc(Counter::Replaced);
            }
            if self.drive(k, old_gen, now, io, None) == Flow::Alive {
                self.teardown(k, io);
            }
        }
        self.scratch = old;
        let name = self.users.insert(user, key);
        let conn = &mut self.conns[key as usize];
        debug_assert_eq!(conn.gen, gen);
        conn.kind = Kind::Client;
        conn.user = Some(name);
        conn.device = device;
    }

    /// Removes connection `key` from the user index (if it is a registered main connection).
    fn unregister(&mut self, key: u32) {
        let conn = &mut self.conns[key as usize];
        if conn.kind == Kind::Client {
            if let Some(user) = conn.user.take() {
                self.users.remove(&user, key);
            }
            conn.kind = Kind::Pending;
        }
    }

    /// A client reported the interval it learned on its network: file it here and tell the
    /// other shards, so every shard gives the same prior.
    fn on_net_report(&mut self, key: u32, network: NetworkId, learned_ms: u32, now: Now) {
        self.counters.inc(Counter::NetReports);
        let Some(user) = self.conns[key as usize].user.as_deref() else {
            return;
        };
        let reporter = reporter_id(user);
        self.priors.report(now.ms, network, reporter, learned_ms);
        for shard in 0..self.mesh.shards() {
            if shard == self.mesh.me() {
                continue;
            }
            let msg = MeshMsg::NetReport {
                network,
                reporter,
                learned_ms,
            };
            if self.mesh.send(shard, msg).is_err() {
                self.counters.inc(Counter::NetReportNotShared);
            }
        }
    }

    /// Files a report another shard received.
    pub(crate) fn on_shared_report(
        &mut self,
        network: NetworkId,
        reporter: u64,
        learned_ms: u32,
        now: Now,
    ) {
        self.priors.report(now.ms, network, reporter, learned_ms);
    }

    /// Sends connection `key` to shard `home` with its session and unread bytes.
    fn hand_over(
        &mut self,
        key: u32,
        home: usize,
        login: LoginInfo,
        rest: Option<&mut BytesMut>,
        io: &mut dyn Io,
    ) -> Flow {
        let conn = self.conns.remove(key as usize);
        if conn.armed_at != NOT_ARMED {
            self.wheel.cancel(conn.timer);
        }
        io.unwatch(key, conn.gen, conn.flags & flag::POLLOUT != 0);
        let mut bytes = rest.map(|b| b.split()).unwrap_or_default();
        if let Some(ext) = conn.ext {
            // Unread input only: nothing was written to a connection that is not accepted.
            let mut all = ext.partial;
            all.extend_from_slice(&bytes);
            bytes = all;
        }
        // SAFETY: the slab entry owned the descriptor and is gone; ownership moves here.
        let fd = unsafe { OwnedFd::from_raw_fd(conn.fd) };
        let handover = Handover {
            fd,
            session: conn.session,
            user: login.user,
            device: login.device,
            network_key: login.network_key,
            rest: bytes.freeze(),
        };
        match self.mesh.send(home, MeshMsg::Handover(Box::new(handover))) {
            Ok(()) => self.counters.inc(Counter::HandoverOut),
            Err(MeshMsg::Handover(h)) => self.refuse_handover(*h, CloseCode::Overloaded, io),
            Err(_) => unreachable!("the mesh gives back the message it was given"),
        }
        Flow::Gone
    }

    /// Closes a connection that could not be adopted, with a best-effort Close frame.
    fn refuse_handover(&mut self, mut h: Handover, code: CloseCode, io: &mut dyn Io) {
        use std::os::fd::AsRawFd;
        let _ = h.session.close(code);
        self.wbuf.clear();
        while let Some(frame) = h.session.poll_transmit() {
            let _ = codec::encode(&frame, &mut self.wbuf);
        }
        let _ = io.send(h.fd.as_raw_fd(), &self.wbuf);
        self.counters.close(code, false);
        // Dropping `h` closes the socket.
    }

    /// Takes over a connection another shard moved here (this is its user's home).
    pub(crate) fn adopt(&mut self, h: Handover, now: Now, io: &mut dyn Io) {
        if self.conns.len() >= self.cfg.max_connections {
            return self.refuse_handover(h, CloseCode::Overloaded, io);
        }
        self.counters.inc(Counter::HandoverIn);
        let Handover {
            fd,
            session,
            user,
            device,
            network_key,
            rest,
        } = h;
        let fd = fd.into_raw_fd();
        let key = self.insert_conn(fd, session);
        let gen = self.conns[key as usize].gen;
        io.watch(fd, key, gen);
        self.register(key, gen, &user, device, now, io);
        self.counters.inc(Counter::LoggedIn);
        self.accept(key, &network_key, now);
        if self.drive(key, gen, now, io, None) == Flow::Gone || rest.is_empty() {
            return;
        }
        let mut buf = BytesMut::from(&rest[..]);
        if self.process(key, gen, &mut buf, now, io) == Flow::Alive && !buf.is_empty() {
            self.keep_partial(key, &buf);
        }
    }

    /// Removes connection `key` for good: wheel entry, user index, socket.
    pub(crate) fn teardown(&mut self, key: u32, io: &mut dyn Io) {
        self.unregister(key);
        let conn = self.conns.remove(key as usize);
        if conn.armed_at != NOT_ARMED {
            self.wheel.cancel(conn.timer);
        }
        io.close(conn.fd, key, conn.gen, conn.flags & flag::POLLOUT != 0);
    }

    /// Starts the drain: every open session gets a GoAway with `window_ms` (clients reconnect
    /// at random within it), connections not yet logged in are closed, new ones are refused.
    pub fn begin_drain(&mut self, window_ms: u32, now: Now, io: &mut dyn Io) {
        self.draining = true;
        self.drain_window_ms = window_ms;
        let keys: Vec<(u32, u32)> = self.conns.iter().map(|(k, c)| (k as u32, c.gen)).collect();
        for (key, gen) in keys {
            let Some(conn) = self.live(key, gen) else {
                continue;
            };
            if conn.session.is_open() {
                let _ = conn
                    .session
                    .go_away(CloseCode::ServerShutdown, true, window_ms);
            } else {
                let _ = conn.session.close(CloseCode::ServerShutdown);
            }
            self.drive(key, gen, now, io, None);
        }
    }

    /// Closes every remaining connection (end of the drain).
    pub fn close_all(&mut self, now: Now, io: &mut dyn Io) {
        let keys: Vec<(u32, u32)> = self.conns.iter().map(|(k, c)| (k as u32, c.gen)).collect();
        for (key, gen) in keys {
            let Some(conn) = self.live(key, gen) else {
                continue;
            };
            let _ = conn.session.close(CloseCode::ServerShutdown);
            if self.drive(key, gen, now, io, None) == Flow::Alive {
                self.teardown(key, io);
            }
        }
    }

    /// Sends parked results and wakes the shards that got messages. Call after each batch.
    pub fn end_batch(&mut self) {
        while let Some((to, msg)) = self.retry.pop_front() {
            if let Err(msg) = self.mesh.send(to, msg) {
                self.retry.push_front((to, msg));
                break;
            }
        }
        self.mesh.wake_dirty();
    }

    /// Bytes of one connection's slab entry (the fixed per-connection cost in the shard).
    pub const fn conn_bytes() -> usize {
        std::mem::size_of::<Conn>()
    }

    /// Bytes of a connection's buffer extension, allocated only while a partial frame or
    /// unsent bytes wait (plus the buffers' contents).
    pub const fn ext_bytes() -> usize {
        std::mem::size_of::<ConnExt>()
    }
}
