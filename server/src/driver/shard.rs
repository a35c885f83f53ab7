//! One shard at run time: the driver that carries out its [`Core`]'s commands on the shard's
//! own io_uring and feeds the core what the ring reports.
//!
//! The shard is one loop on its thread:
//!
//! 1. wait in one `io_uring_enter` on the shard's ring ([`RingIo::wait`]), which also submits
//!    every request queued in the previous batch (sends, receives, cancels), for completions
//!    and the mesh doorbell (a multishot poll on the shard's eventfd, which other shards write
//!    after queueing a message), at most until the next wheel tick;
//! 2. feed every completion and every mesh message to the core, carrying out the commands it
//!    emits after each one;
//! 3. when a tick is due: fire due deadlines, run the drain, publish the counters.
//!
//! The driver owns the sockets (direct descriptors in the ring's own file table, by the core's
//! slab key: `shard/files.rs`), the memory of sends in flight (until their completion), and
//! the receive buffers (lent to the kernel). The core owns every decision and no descriptor.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use tether_proto::token::Authenticate;
use tracing::{debug, info, warn};

mod files;
mod layered;
mod transport;

use crate::control::Control;
use crate::core::{Command, ConnId, Core, Now, Post, ShardConfig, Transfer, Undelivered};
use crate::counters::{Counter, Published};
use crate::driver::accept::{AcceptGate, GateConfig};
use crate::driver::ring::{unpack, user_data, Completion, Direct, RingIo, Tag, WaitPolicy};
use crate::histogram::Histogram;
use crate::layers::{Buffers, Layers, WsRules};
use crate::mesh::{Handover, MeshMsg, MeshPort, MeshShared};
use files::{Files, Moving, Socket};
use layered::Transport;
use transport::{TlsShard, WsShard};

/// Everything a shard thread needs, built by [`crate::server::run`].
pub struct ShardArgs {
    /// The shard's index.
    pub index: usize,
    /// Session, limits and wheel settings.
    pub cfg: ShardConfig,
    /// Token verification.
    pub auth: Box<dyn Authenticate + std::marker::Send>,
    /// This shard's `SO_REUSEPORT` listener.
    pub listener: OwnedFd,
    /// This shard's TLS listener, when `[tls] listen` is set.
    pub tls: Option<TlsListener>,
    /// This shard's WebSocket listener, when `[websocket] listen` is set.
    pub ws: Option<WsListener>,
    /// The mesh (channels and eventfds of all shards).
    pub mesh: Arc<MeshShared>,
    /// This shard's inbox.
    pub inbox: Receiver<MeshMsg>,
    /// io_uring submission entries.
    pub ring_entries: u32,
    /// Slots of the ring's file table: the most sockets the shard holds at once.
    pub ring_files: u32,
    /// Bytes of receive buffers lent to the kernel.
    pub recv_pool_bytes: usize,
    /// How the wait gathers completions.
    pub wait: WaitPolicy,
    /// Socket options, admission limits and the accept policy.
    pub gate: GateConfig,
    /// Set when the server must drain.
    pub stop: Arc<AtomicBool>,
    /// Where the counters are published for the metrics surface.
    pub published: Arc<Published>,
    /// Drain period.
    pub drain_ms: u64,
    /// Period of the counters log line (0 = off).
    pub stats_interval_ms: u64,
    /// The server's monotonic clock origin.
    pub epoch: Instant,
    /// The start-up handshake with `server::run`.
    pub startup: Startup,
}

/// A shard's TLS listener and what its connections need.
#[derive(Debug)]
pub struct TlsListener {
    /// The `SO_REUSEPORT` listener.
    pub fd: OwnedFd,
    /// Certificates and policy (replaced by a reload).
    pub config: Arc<rustls::ServerConfig>,
    /// Handshake steps per batch.
    pub handshakes_per_batch: u32,
}

/// A shard's WebSocket listener and what its connections need.
#[derive(Debug)]
pub struct WsListener {
    /// The `SO_REUSEPORT` listener.
    pub fd: OwnedFd,
    /// Path, origins, largest message.
    pub rules: WsRules,
    /// `wss://`: `[tls]`'s configuration, and the handshakes per batch when no TLS
    /// listener sets them.
    pub tls: Option<(Arc<rustls::ServerConfig>, u32)>,
}

/// The start-up handshake: a shard reports once it holds everything it needs (its ring, its
/// reserve descriptor) and arms its accept only when told that every shard does. Otherwise the
/// first shard could accept until the process ran out of descriptors while another still
/// creates its ring, which then fails, and that shard's queued connections would be reset.
#[derive(Debug)]
pub struct Startup {
    /// Where the shard reports its set-up (an error text when it failed).
    pub ready: std::sync::mpsc::Sender<Result<(), String>>,
    /// `true`: start accepting; `false` (or the sender gone): another shard failed, end.
    pub go: std::sync::mpsc::Receiver<bool>,
}

impl std::fmt::Debug for ShardArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardArgs")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// A connection's socket in the driver's table (the core's slab key is the index). Its
/// layers (TLS, WebSocket), when it has any, are in [`Shard::layered`], so a plain
/// connection's entry stays eight bytes.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The socket's slot in the ring's file table, while the connection has one.
    file: Option<Direct>,
    /// The generation of the connection that owns it.
    gen: u32,
}

/// A send in flight: its bytes stay here until the kernel reports it done.
#[derive(Debug)]
struct InFlight {
    /// What is being sent.
    bytes: Bytes,
    /// How much of it the kernel took so far (a short send continues from here).
    done: usize,
    /// What to tell the core once it is all written: the length of the core's bytes in it
    /// (for TLS, the plaintext's), or `None` for records the driver sent by itself (a
    /// handshake flight, a `KeyUpdate`).
    report: Option<usize>,
}

impl InFlight {
    /// `bytes` about to be sent, none of them taken yet.
    fn new(bytes: Bytes, report: Option<usize>) -> InFlight {
        InFlight {
            bytes,
            done: 0,
            report,
        }
    }
}

/// What the driver could not carry out, given back to the core once the commands in hand are
/// done (carrying out a command never calls into the core).
#[derive(Debug)]
enum Feedback {
    /// A post the receiver did not take.
    Undelivered(Post, Undelivered),
    /// A hand-over that could not happen (the home shard's channel did not take it, its socket
    /// could not leave the ring's table, or its layers still had bytes to send): the socket
    /// is refused.
    HandoverRefused(Socket, Box<Transfer>, Option<Box<Layers>>),
    /// A send to a connection that cannot take bytes (gone, or its layers not open).
    NotConnected(ConnId),
}

/// The shard's driver state.
struct Shard {
    /// Every decision.
    core: Core,
    /// The shard's ring.
    ring: RingIo,
    /// Sockets by slab key.
    slots: Vec<Slot>,
    /// Which slots of the ring's file table are free.
    files: Files,
    /// Connections whose socket is being brought out of the file table to move to their home
    /// shard, by slot.
    moving: HashMap<u32, Moving>,
    /// The last words of sockets being closed ([`RingIo::close_after`]), by slot, until the
    /// close completes.
    last_words: HashMap<u32, Vec<u8>>,
    /// The layers of the connections that came through the TLS or WebSocket listener, by
    /// slab key.
    layered: HashMap<u32, Box<Transport>>,
    /// Sends in flight by `user_data`. A connection has at most one, but a slab key does not:
    /// an aborted connection's cancelled send completes after its key may serve a new
    /// connection, and its bytes must live until then, so the generation is part of the key.
    sends: HashMap<u64, InFlight>,
    /// Connections whose input is handled at once ([`Command::Prompt`]: backends); while
    /// there is one, the shard's waits do not gather.
    prompt: std::collections::HashSet<ConnId>,
    /// Quiet sends ([`RingIo::send_quiet`]) queued and not yet known to be written: nothing
    /// rides on their completion, so a successful one posts none. Settled after the
    /// submission that took them ([`Shard::settle_quiet`]).
    quiet: Vec<(u64, InFlight)>,
    /// The listener while accepting; `None` once draining.
    listener: Option<OwnedFd>,
    /// The TLS listener and its handshakes, when it runs.
    tls: Option<TlsShard>,
    /// The WebSocket listener, when it runs.
    ws: Option<WsShard>,
    /// The layers' reusable buffers.
    bufs: Buffers,
    /// A layered connection's received bytes, copied out of the ring's buffer.
    input: Vec<u8>,
    /// Completions copied out of the ring, reused between batches.
    completions: Vec<Completion>,
    /// Accept policy: socket options, admission, refusals, pauses.
    gate: AcceptGate,
    /// The shard's index.
    index: usize,
    /// Clock origin.
    epoch: Instant,
    /// Whether the drain began (the listeners are closed).
    draining: bool,
    /// The shard's doorbell eventfd (owned by the mesh), drained when its poll fires.
    doorbell: RawFd,
    /// The shard's mesh port: its inbox, the other shards' channels and doorbells, the
    /// threads' channels, and the verifier a reload publishes.
    port: MeshPort,
    /// What the core must hear of the commands just carried out.
    feedback: Vec<Feedback>,
    /// The generation of the last verifier taken from the mesh.
    auth_generation: u64,
    /// How long each wheel tick's work took.
    ticks: Histogram,
}

impl Shard {
    /// The clock now.
    fn now(&self) -> Now {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let since = self.epoch.elapsed();
        Now {
            ms: since.as_millis() as u64,
            us: since.as_micros() as u64,
            unix,
        }
    }

    /// Handles everything that is ready: a reloaded verifier, completions, then mesh
    /// messages.
    fn batch(&mut self) {
        let now = self.now();
        // Before anything new is queued: were the quiet sends queued so far all submitted?
        let settled = if self.ring.quiet_settled() {
            self.quiet.len()
        } else {
            0
        };
        self.take_reload(now);
        let mut completions = std::mem::take(&mut self.completions);
        self.ring.completions(&mut completions);
        self.settle_quiet(&completions, settled, now);
        self.resume_handshakes(now);
        for c in completions.drain(..) {
            self.on_completion(c, now);
        }
        self.completions = completions;
        let mut budget = 4096;
        while budget > 0 {
            let Some(msg) = self.port.recv() else {
                break;
            };
            match msg {
                MeshMsg::Handover(h) => self.adopt(h, now),
                MeshMsg::Control(c) => self.serve(*c, now),
                MeshMsg::Shard(msg) => self.core.on_mesh(msg, now),
            }
            self.execute(now);
            budget -= 1;
        }
        if budget == 0 {
            // More messages are waiting: make sure the next wait returns at once.
            self.port.wake_self();
        }
        self.end_batch(now);
        if self.core.batch_pings() > 0 {
            // The batch began at `now`: one more clock read, only for batches with a Ping.
            let us = (self.epoch.elapsed().as_micros() as u64).saturating_sub(now.us);
            self.core.record_batch(us);
        }
    }

    /// Ends a batch: the core's last commands, then one doorbell for each shard that got
    /// messages.
    fn end_batch(&mut self, now: Now) {
        self.core.end_batch(now);
        self.execute(now);
        self.port.wake_dirty();
    }

    /// Answers a control-plane request with what the core says.
    fn serve(&mut self, c: Control, now: Now) {
        match c {
            Control::Push(p) => self.core.on_push_request(p, now),
            Control::Kick { kick, reply } => {
                let _ = reply.try_send(self.core.on_kick_request(&kick, now));
            }
            Control::Presence { user, reply } => {
                let _ = reply.try_send(self.core.presence(&user));
            }
            Control::Stats { reply } => {
                let _ = reply.try_send(self.core.stats());
            }
            Control::Users { reply } => {
                let _ = reply.try_send(self.core.user_names());
            }
            Control::LocalOnly { user, epoch, done } => {
                self.core.note_local_only(&user, epoch);
                if let Some(done) = done {
                    let _ = done.try_send(());
                }
            }
        }
    }

    /// The layers of `id`, if it has any.
    fn transport(&mut self, id: ConnId) -> Option<&mut Transport> {
        if self.layered.is_empty() || self.file(id).is_none() {
            return None;
        }
        self.layered.get_mut(&id.key).map(|t| &mut **t)
    }

    /// Carries out every command the core emitted, in order; then tells the core what could
    /// not be carried out, and carries out what it answers, until nothing is left.
    fn execute(&mut self, now: Now) {
        loop {
            while let Some(cmd) = self.core.poll_command() {
                self.carry_out(cmd);
            }
            if self.feedback.is_empty() {
                return;
            }
            for f in std::mem::take(&mut self.feedback) {
                match f {
                    Feedback::Undelivered(post, why) => self.core.on_undelivered(post, why, now),
                    Feedback::HandoverRefused(socket, transfer, layers) => {
                        let bytes = self.core.on_handover_refused(*transfer);
                        self.refuse(socket, &bytes, layers);
                    }
                    Feedback::NotConnected(id) => {
                        self.core.on_sent(id, Err(ErrorKind::NotConnected), now);
                    }
                }
            }
        }
    }

    /// Carries out one command.
    fn carry_out(&mut self, cmd: Command) {
        match cmd {
            Command::Recv { conn, multishot } => {
                if let Some(d) = self.file(conn) {
                    self.ring.recv(d, conn, multishot);
                }
            }
            Command::Send { conn, bytes } => {
                if self.file(conn).is_none() {
                    self.feedback.push(Feedback::NotConnected(conn));
                    return;
                }
                if self.transport(conn).is_some() {
                    return self.send_layered(conn, &bytes);
                }
                let report = Some(bytes.len());
                self.start(conn, InFlight::new(bytes, report));
            }
            Command::Prompt { conn } => {
                self.prompt.insert(conn);
            }
            Command::Pause { conn } => {
                self.ring.cancel(user_data(Tag::RecvMulti, conn));
            }
            Command::Close { conn } => {
                self.prompt.remove(&conn);
                if let Some((d, layers)) = self.take_file(conn) {
                    self.ring.cancel_recv(conn);
                    // Its last word (a WebSocket Close) leaves just before the close.
                    let last = layers.map(|mut t| t.last_word());
                    self.close_with(d, last.unwrap_or_default());
                }
            }
            Command::Abort { conn } => {
                self.prompt.remove(&conn);
                if let Some((d, _)) = self.take_file(conn) {
                    self.ring.cancel_recv(conn);
                    self.ring.cancel(user_data(Tag::Send, conn));
                    self.ring.close(d);
                }
            }
            Command::HandOver { conn, to, transfer } => self.hand_over(conn, to, transfer),
            Command::Post(post) => {
                if let Err((post, why)) = self.port.post(post) {
                    self.feedback.push(Feedback::Undelivered(post, why));
                }
            }
        }
    }

    /// Queues `f`: a quiet send when nothing rides on its completion (only the core's own
    /// bytes can be quiet), else an ordinary one.
    fn start(&mut self, conn: ConnId, f: InFlight) {
        if f.report.is_some() && !self.core.awaits_send(conn) {
            self.start_quiet_send(conn, f);
        } else {
            self.start_send(conn, f);
        }
    }

    /// Queues a send of the rest of `f` to `conn`.
    fn start_send(&mut self, conn: ConnId, f: InFlight) {
        let Some(d) = self.file(conn) else {
            return;
        };
        let ud = user_data(Tag::Send, conn);
        let rest = &f.bytes[f.done..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let ptr = rest.as_ptr();
        self.sends.insert(ud, f);
        // SAFETY: the bytes are owned by the `InFlight` stored in `self.sends` under `ud`
        // (a `Bytes` points to heap memory that does not move with it) and stay there until
        // this send's completion is reaped.
        unsafe { self.ring.send(d, ptr, len, ud) };
    }

    /// `n` more bytes of `f` reached `id`'s socket: reports the send when that was all of it,
    /// or continues with the rest as an ordinary send.
    fn sent_part(&mut self, id: ConnId, mut f: InFlight, n: usize, now: Now) {
        f.done += n;
        if f.done < f.bytes.len() {
            self.start_send(id, f);
        } else {
            self.sent(id, f.report, Ok(()), now);
        }
    }

    /// A send of `id` ended: the core hears of its bytes (`report`), and a layered
    /// connection's next bytes go out.
    fn sent(&mut self, id: ConnId, report: Option<usize>, result: Result<(), ErrorKind>, now: Now) {
        let mut failed_queued = None;
        if let Some(t) = self.transport(id) {
            t.busy = false;
            if result.is_ok() && !t.queued.is_empty() {
                let bytes = Bytes::from(std::mem::take(&mut t.queued));
                let report = t.queued_report.take();
                t.busy = true;
                self.start(id, InFlight::new(bytes, report));
            } else if result.is_err() {
                t.queued = Vec::new();
                failed_queued = t.queued_report.take();
            }
        }
        match (report.or(failed_queued), result) {
            (Some(n), Ok(())) => self.core.on_sent(id, Ok(n), now),
            (Some(_), Err(kind)) => self.core.on_sent(id, Err(kind), now),
            // Records the driver sent by itself failed: the connection is over.
            (None, Err(kind)) => self.core.on_hangup(id, Some(kind), now),
            (None, Ok(())) => {}
        }
    }

    /// Queues a quiet send of `f` to `conn`: nothing rides on its completion (a heartbeat's
    /// `Pong`, a token notice), so a successful one wakes nobody.
    fn start_quiet_send(&mut self, conn: ConnId, f: InFlight) {
        let Some(d) = self.file(conn) else {
            return;
        };
        let ud = user_data(Tag::Quiet, conn);
        let len = u32::try_from(f.bytes.len()).unwrap_or(u32::MAX);
        let ptr = f.bytes.as_ptr();
        self.quiet.push((ud, f));
        // SAFETY: the bytes are owned by the `InFlight` kept in `self.quiet` (a `Bytes` points
        // to heap memory that does not move with it) until the submission that takes the send
        // has returned and its failure, if any, was reaped (`settle_quiet`).
        unsafe { self.ring.send_quiet(d, ptr, len, ud) };
    }

    /// Settles the quiet sends: each failure among `completions` continues as an ordinary
    /// send (the socket was full) or ends the connection; the first `settled` of them (those
    /// queued before the last submission, when it took them all and every failure they
    /// produced is in the completion queue: [`RingIo::quiet_settled`]) were written whole and
    /// are reported so. Quiet sends queued while settling (a TLS connection's next records)
    /// come after them and wait for the next submission.
    fn settle_quiet(&mut self, completions: &[Completion], settled: usize, now: Now) {
        if self.quiet.is_empty() {
            return;
        }
        let mut settled = settled.min(self.quiet.len());
        for c in completions
            .iter()
            .filter(|c| Tag::of(c.user_data) == Tag::Quiet)
        {
            let Some(i) = self.quiet.iter().position(|(ud, _)| *ud == c.user_data) else {
                continue;
            };
            // In order: the settled ones stay first.
            let (_, f) = self.quiet.remove(i);
            if i < settled {
                settled -= 1;
            }
            let id = unpack(c.user_data).1;
            match c.result {
                // The socket was full (nothing written), or took a part before it filled (or
                // all of it, on a kernel that posts successes too): the rest goes as an
                // ordinary send.
                r if r == -libc::EAGAIN => self.sent_part(id, f, 0, now),
                r if r < 0 => self.sent(id, f.report, Err(kind(-r)), now),
                r => self.sent_part(id, f, r as usize, now),
            }
        }
        let written: Vec<_> = self.quiet.drain(..settled).collect();
        for (ud, f) in written {
            self.sent(unpack(ud).1, f.report, Ok(()), now);
        }
        self.execute(now);
    }

    /// Acts on one completion.
    fn on_completion(&mut self, c: Completion, now: Now) {
        let (tag, id) = unpack(c.user_data);
        match tag {
            Tag::Recv | Tag::RecvMulti => {
                let layered = !self.layered.is_empty()
                    && self.file(id).is_some()
                    && self.layered.contains_key(&id.key);
                let data = self.ring.received(&c);
                let got = !data.is_empty();
                if layered {
                    // Copied out, so the buffer goes back to the kernel before the work.
                    self.input.clear();
                    self.input.extend_from_slice(data);
                    self.ring.recycle(&c);
                    if got {
                        self.layered_received(id, now);
                    }
                } else {
                    if got {
                        self.core.on_bytes(id, data, now);
                    }
                    self.ring.recycle(&c);
                }
                self.execute(now);
                match c.result {
                    0 => self.core.on_hangup(id, None, now),
                    r if r < 0 => match -r {
                        libc::ECANCELED => {}
                        libc::ENOBUFS => self.core.on_recv_ended(id, true),
                        e => self.core.on_hangup(id, Some(kind(e)), now),
                    },
                    _ if tag == Tag::RecvMulti && !c.more() => {
                        self.core.on_recv_ended(id, false);
                    }
                    _ => {}
                }
                self.execute(now);
            }
            Tag::Send => {
                let Some(f) = self.sends.remove(&c.user_data) else {
                    return;
                };
                if c.result < 0 {
                    self.sent(id, f.report, Err(kind(-c.result)), now);
                } else if c.result == 0 && f.done < f.bytes.len() {
                    self.sent(id, f.report, Err(ErrorKind::WriteZero), now);
                } else {
                    self.sent_part(id, f, c.result as usize, now);
                }
                self.execute(now);
            }
            Tag::Quiet => {} // settled before the other completions (`settle_quiet`)
            Tag::Accept => self.on_accept(c, now),
            Tag::File => {
                self.on_file(c);
                self.execute(now);
            }
            Tag::Doorbell => {
                // Reset the counter so the next ring is a new wakeup; the messages themselves
                // are read from the channel after the completions.
                let mut count = 0u64;
                // SAFETY: an 8-byte read into a local from a non-blocking eventfd the mesh
                // keeps open; EAGAIN (already drained) is harmless.
                let _ = unsafe { libc::read(self.doorbell, (&mut count as *mut u64).cast(), 8) };
                if !c.more() {
                    self.ring.watch_doorbell(self.doorbell);
                }
            }
            // Cancellations and last words: nothing waits for them.
            Tag::Ignore => {}
        }
    }

    /// Takes the verifier of a reload newer than this shard's, if there is one.
    fn take_reload(&mut self, now: Now) {
        if let Some((generation, reloaded)) = self.port.shared().auth_since(self.auth_generation) {
            self.auth_generation = generation;
            let live: Vec<_> = reloaded.verifier.key_ids().collect();
            self.core.set_auth(Box::new(reloaded.verifier), &live, now);
            // New handshakes use the new certificates; open connections keep their keys.
            if let (Some(shared), Some(config)) = (self.tls.as_mut(), reloaded.tls.clone()) {
                shared.config = config;
            }
            if let (Some(ws), Some(config)) = (self.ws.as_mut(), reloaded.tls) {
                if ws.tls.is_some() {
                    ws.tls = Some(transport::for_websocket(&config));
                }
            }
        }
    }

    /// A connection moved here from another shard: into the core and the ring's file table,
    /// or refused with `Overloaded` when either is full.
    fn adopt(&mut self, h: Handover, now: Now) {
        // The login was verified on another shard, perhaps with a reload this one has not
        // taken yet: take it first, so a secret the reload added is not mistaken for one it
        // withdrew.
        self.take_reload(now);
        let Handover {
            fd,
            transfer,
            layers,
        } = h;
        if !self.files.has_room() {
            let counter = self.gate.table_full(now);
            self.core.count(counter, 1);
            let bytes = self.core.on_adoption_refused(*transfer);
            return self.refuse(Socket::Fd(fd), &bytes, layers);
        }
        match self.core.adopt(*transfer, now) {
            Ok(id) => {
                self.install(id, fd, layers.map(|l| Transport::new(*l)), now);
                self.execute(now);
            }
            Err(bytes) => self.refuse(Socket::Fd(fd), &bytes, layers),
        }
    }

    /// The work of one wheel tick, timed.
    fn tick(&mut self, stop: &AtomicBool, drain_ms: u64) {
        let started = Instant::now();
        self.tick_work(stop, drain_ms);
        self.ticks.record(started.elapsed().as_micros() as u64, 1);
    }

    /// The work of one wheel tick: accepts resume after a pause, deadlines fire (what they
    /// close or send), and the drain begins when the server stops (its timeline is the core's).
    fn tick_work(&mut self, stop: &AtomicBool, drain_ms: u64) {
        let now = self.now();
        if self.gate.resume(now) && !self.draining {
            self.arm_accepts();
        }
        if stop.load(Ordering::Relaxed) && !self.draining {
            self.begin_drain(now, drain_ms);
        }
        self.core.tick(now);
        self.execute(now);
        if self.core.is_done() {
            info!(shard = self.index, "drained");
        }
        self.end_batch(now);
    }

    /// Stops accepting and lets the core send every client its GoAway.
    fn begin_drain(&mut self, now: Now, drain_ms: u64) {
        info!(
            shard = self.index,
            connections = self.core.connections(),
            drain_ms,
            "draining"
        );
        self.draining = true;
        self.ring.cancel_accept();
        // The pending accept holds its own reference; closing our descriptor is safe.
        self.listener = None;
        if let Some(t) = self.tls.as_mut() {
            t.listener = None;
        }
        if let Some(w) = self.ws.as_mut() {
            w.listener = None;
        }
        let window = u32::try_from(drain_ms).unwrap_or(u32::MAX);
        self.core.begin_drain(window, now);
        self.execute(now);
    }
}

/// The shard's handshake budget (and TLS listener): with a TLS listener, or a `wss://` one.
fn tls_shard(tls: Option<TlsListener>, ws: Option<&WsListener>) -> Option<TlsShard> {
    let (listener, config, per_batch) = match (tls, ws.and_then(|w| w.tls.as_ref())) {
        (Some(t), _) => (Some(t.fd), t.config, t.handshakes_per_batch),
        (None, Some((config, per_batch))) => (None, Arc::clone(config), *per_batch),
        (None, None) => return None,
    };
    Some(TlsShard {
        listener,
        config,
        per_batch,
        budget: per_batch,
        deferred: Vec::new(),
    })
}

/// The error kind of an errno from a completion.
fn kind(errno: i32) -> ErrorKind {
    std::io::Error::from_raw_os_error(errno).kind()
}

/// Runs shard `args.index` on the current thread until it has drained.
pub async fn run_shard(args: ShardArgs) -> std::io::Result<()> {
    let ShardArgs {
        index,
        cfg,
        auth,
        listener,
        tls,
        ws,
        mesh,
        inbox,
        ring_entries,
        ring_files,
        recv_pool_bytes,
        wait,
        gate,
        stop,
        published,
        drain_ms,
        stats_interval_ms,
        epoch,
        startup,
    } = args;
    let tick_ms = cfg.tick_ms;
    // Hold every descriptor this shard needs before any shard accepts (see `Startup`).
    let accept_gate = AcceptGate::new(index, &gate);
    let ring = RingIo::new(ring_entries, recv_pool_bytes, ring_files, wait);
    let _ = startup.ready.send(
        ring.as_ref()
            .map(|_| ())
            .map_err(|e| format!("io_uring: {e}")),
    );
    let mut ring = ring?;
    if !startup.go.recv().unwrap_or(false) {
        return Ok(());
    }
    let (count, size, incremental) = ring.pool();
    debug!(
        shard = index,
        buffers = count,
        buffer_bytes = size,
        incremental,
        direct_descriptors = ring.files(),
        "receive buffer pool and file table"
    );
    let doorbell = mesh.eventfd(index);
    ring.watch_doorbell(doorbell);
    let port = MeshPort::new(index, Arc::clone(&mesh), inbox);
    let start_ms = epoch.elapsed().as_millis() as u64;
    let mut core = Core::new(cfg, auth, index, mesh.len(), start_ms);
    core.set_admission(crate::core::admission::Admission::new(
        gate.limits.clone(),
        gate.hasher.clone(),
        start_ms,
    ));
    let mut shard = Shard {
        core,
        ring,
        slots: Vec::new(),
        files: Files::new(ring_files),
        moving: HashMap::new(),
        last_words: HashMap::new(),
        layered: HashMap::new(),
        sends: HashMap::new(),
        prompt: std::collections::HashSet::new(),
        quiet: Vec::new(),
        listener: Some(listener),
        tls: tls_shard(tls, ws.as_ref()),
        ws: ws.map(|w| WsShard {
            listener: Some(w.fd),
            rules: w.rules,
            tls: w.tls.map(|(c, _)| transport::for_websocket(&c)),
        }),
        bufs: Buffers::default(),
        input: Vec::new(),
        completions: Vec::new(),
        gate: accept_gate,
        index,
        epoch,
        draining: false,
        doorbell,
        port,
        feedback: Vec::new(),
        auth_generation: 0,
        ticks: Histogram::default(),
    };
    shard.arm_accepts();
    if let Err(e) = shard.ring.submit() {
        warn!(shard = index, error = %e, "io_uring submit failed");
    }

    // The signal mask of gathering waits; without it (an error here) the shard never gathers.
    let nudges = Arc::clone(&mesh);
    let nudges = nudges.nudges();
    let gather_mask = if shard.ring.gathers() {
        nudges
            .enter(index)
            .map_err(|e| warn!(shard = index, error = %e, "no gathering: its signal could not be set up"))
            .ok()
    } else {
        None
    };
    let tick = Duration::from_millis(tick_ms);
    let mut next_tick = Instant::now() + tick;
    let mut last_stats = Instant::now();
    let mut last_publish = Instant::now();
    // Past the drain's end the loop runs on only while a socket is leaving the ring's table
    // for its home shard (its completion comes with the next wait), so that it is handed over
    // rather than closed with the ring; at most a second, should that completion never come.
    let mut done_at: Option<Instant> = None;
    while !shard.core.is_done()
        || (!shard.moving.is_empty()
            && done_at.get_or_insert_with(Instant::now).elapsed() < Duration::from_secs(1))
    {
        // Input kept back for fairness is handled by the next batch at once, after whatever
        // else the ring has for it; otherwise sleep until the tick.
        let wait = if shard.core.input_waiting() || shard.handshakes_waiting() {
            Duration::ZERO
        } else {
            next_tick.saturating_duration_since(Instant::now())
        };
        // Gather (ring.rs, "Gathering") only with nothing prompt on the shard and no send
        // whose completion decides a result (a push is Delivered when its bytes are written),
        // marked as gathering before a last look at the inbox (nudge.rs).
        let gather = gather_mask
            .as_ref()
            .filter(|_| shard.prompt.is_empty() && shard.sends.is_empty() && !wait.is_zero())
            .filter(|_| {
                nudges.gathering(index);
                !shard.port.has_mail()
            });
        if let Err(e) = shard.ring.wait(wait, gather) {
            warn!(shard = index, error = %e, "io_uring wait failed");
        }
        nudges.awake(index);
        shard.batch();
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + tick;
            shard.tick(&stop, drain_ms);
            if last_publish.elapsed() >= Duration::from_millis(500) || shard.core.is_done() {
                last_publish = Instant::now();
                publish(&mut shard, &published);
            }
            if stats_interval_ms > 0
                && last_stats.elapsed() >= Duration::from_millis(stats_interval_ms)
            {
                last_stats = Instant::now();
                log_stats(index, &shard.core);
            }
        }
    }
    // Let the last closes and cancels reach the kernel.
    let _ = shard.ring.submit();
    publish(&mut shard, &published);
    log_stats(index, &shard.core);
    Ok(())
}

/// Copies the shard's counters, histograms and ring figures to the metrics surface.
fn publish(shard: &mut Shard, published: &Published) {
    let ring = shard.ring.stats();
    let core = &shard.core;
    published.store(core.counters());
    published.ping.store(&core.latencies().ping);
    published.push.store(&core.latencies().push);
    let figures = [
        ring.waits,
        ring.submitted,
        ring.completions,
        ring.sq_full,
        ring.cq_overflow,
    ];
    for (a, v) in published.ring.iter().zip(figures) {
        a.store(v, Ordering::Relaxed);
    }
    let (count, size, _) = shard.ring.pool();
    published
        .recv_pool_bytes
        .store((count * size) as u64, Ordering::Relaxed);
    let (in_use, capacity) = shard.file_figures();
    published
        .ring_files
        .store(u64::from(in_use), Ordering::Relaxed);
    published
        .ring_files_capacity
        .store(u64::from(capacity), Ordering::Relaxed);
    published.tick.store(&shard.ticks);
    published
        .connections
        .store(core.connections() as u64, Ordering::Relaxed);
    published
        .users
        .store(core.users() as u64, Ordering::Relaxed);
    for (gauge, n) in published.by_state.iter().zip(core.by_kind()) {
        gauge.store(n as u64, Ordering::Relaxed);
    }
}

/// Logs the shard's main counters.
fn log_stats(index: usize, core: &Core) {
    let c = core.counters();
    info!(
        shard = index,
        connections = core.connections(),
        users = core.users(),
        accepted = c.get(Counter::Accepted),
        pings = c.get(Counter::Pings),
        push_in = c.get(Counter::PushIn),
        delivered = c.get(Counter::PushDelivered),
        offline = c.get(Counter::PushOffline),
        refused_slow = c.get(Counter::PushRefusedSlow),
        refused_overloaded = c.get(Counter::PushRefusedOverloaded),
        acked = c.get(Counter::PushAcked),
        closed = c.get(Counter::Closed),
        "shard stats"
    );
}
