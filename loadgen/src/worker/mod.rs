//! A worker process: one epoll loop holding up to ~15,000 connections.
//!
//! The loop, in order, each turn: run due timers (connect/login deadlines, pings), open the
//! connections the ramp's token bucket allows, perform the load actions the load bucket allows,
//! report to the parent, then sleep in epoll_wait until the next of those is due. Socket events
//! feed [`Worker::on_readable`], which decodes the server's messages through the run's
//! [`Wire`] (tether, MQTT or NATS) and hands the resulting [`Inbound`] events to
//! [`Worker::on_inbound`]: the loop is the same whichever protocol the server speaks.
//! Commands from the parent arrive on stdin, which is just another fd in the same epoll.
//! The load phase's actions are in `load.rs`, the upstream scenario's clients and sinks in
//! `upstream.rs`; progress reports, commands and the final report in `control.rs`; a TLS
//! run's sessions in `tls.rs` (a plaintext run never enters it); a WebSocket run's upgrade and
//! framing in `ws.rs`, between the bytes read (from the socket or the TLS session) and the
//! protocol's decoder, and between its encoder and the write (a TCP run never enters it).

mod control;
mod load;
mod tls;
mod upstream;
mod ws;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io::{self, Write};

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustls::ClientConnection;
use tether_proto::PushStatus;

use crate::clock::now_ns;
use crate::conn::{self, Conn, PongMatch, State, RECONNECT, SETTLED};
use crate::epoll::{self, Epoll, Event};
use crate::job::{Job, Scenario, Shape, WorkerMsg};
use crate::net;
use crate::payload;
use crate::rate::Bucket;
use crate::stats::{hist, Hists, LoadCounters};
use crate::tls::Tls;
use crate::wire::{Inbound, Wire, WireError};
use crate::ws::{Control, WsConn};

/// Epoll token of the stdin command pipe.
const STDIN_TOKEN: u64 = u64::MAX;
/// How often the worker reports progress.
const REPORT_EVERY_NS: u64 = 250_000_000;
/// Most connects (or load actions) done in one loop turn, so events keep being served.
const MAX_ACTIONS_PER_TURN: u64 = 2_000;

/// Timer kinds.
const T_DEADLINE: u8 = 0;
const T_PING: u8 = 1;
const T_RECONNECT: u8 = 2;

/// `--reconnect` back-off after a loss without a `GoAway`: the first delay, ns (doubled per
/// failed attempt, with ±50 % jitter) and the longest.
const BACKOFF_FIRST_NS: u64 = 500_000_000;
const BACKOFF_MAX_NS: u64 = 30_000_000_000;

/// A due time for a slot: (deadline ns, slot, generation, kind), earliest first.
type Timer = Reverse<(u64, u32, u32, u8)>;

/// The load phase, between a `Load` command and its `LoadDone`.
#[derive(Debug)]
struct LoadPhase {
    /// When new load actions stop, ns.
    end_ns: u64,
    /// Paces the load actions.
    bucket: Bucket,
    /// Counters when the phase began, to report the phase's own counts.
    start: LoadCounters,
    /// The burst shape's rounds of pings, when the run has that shape.
    burst: Option<Burst>,
}

/// The burst shape's progress through its rounds of pings.
#[derive(Debug)]
struct Burst {
    /// Rounds started so far.
    started: u32,
    /// Pings of the current round not answered yet.
    outstanding: u64,
    /// When the current round began, ns.
    round_ns: u64,
}

/// Everything one worker process owns.
pub struct Worker {
    /// What to do.
    job: Job,
    /// The server's protocol: encodes what connections send, decodes what they receive.
    wire: Wire,
    /// The event loop.
    epoll: Epoll,
    /// Client slots `0..job.users`, then the backend slots: the push scenario's backend, or
    /// the upstream scenario's sinks.
    conns: Vec<Conn>,
    /// The TLS client configuration, when the run speaks TLS.
    tls: Option<Tls>,
    /// A TLS run's session of each slot, while it has one (beside `conns`, so a slot stays
    /// small); empty in a plaintext run.
    sessions: Vec<Option<Box<ClientConnection>>>,
    /// A WebSocket run's state of each slot (beside `conns`, as the TLS sessions are); empty
    /// in a TCP run.
    ws: Vec<WsConn>,
    /// A WebSocket run: the server's control frames read with the data of one read, handled
    /// after that data.
    ws_controls: Vec<Control>,
    /// A WebSocket run: where the encoded bytes are framed before they replace `out`.
    ws_out: BytesMut,
    /// Due times of deadlines and pings.
    timers: BinaryHeap<Timer>,
    /// Latencies.
    hists: Hists,
    /// Errors by kind.
    errors: BTreeMap<String, u64>,
    /// Other outcomes by kind.
    events: BTreeMap<String, u64>,
    /// Running counts.
    counters: LoadCounters,
    /// Push / send / upstream id → send time, ns, for result latency.
    inflight: HashMap<u64, u64>,
    /// Next push / send / upstream id (the worker index is in the top 16 bits, so ids are
    /// unique per run; they only grow, so each connection's upstream ids are increasing).
    next_id: u64,
    /// Upstream sinks: the last sequence number (tether's client id) received per sender
    /// (user, device), to check that each connection's messages arrive in order.
    sink_last: HashMap<(String, String), u64>,
    /// Upstream sinks: when the last message arrived, ns (the load phase of MQTT and NATS,
    /// which have no result to wait for, ends once the sinks have been quiet a moment).
    sink_last_ns: u64,
    /// Upstream: the next client slot to send (round robin, so every client sends at the
    /// same rate).
    next_sender: usize,
    /// Random targets, churn victims, first-ping offsets.
    rng: StdRng,
    /// Receive buffer shared by all connections (a connection only keeps a partial frame).
    scratch: BytesMut,
    /// Encode buffer.
    out: BytesMut,
    /// Next slot the ramp opens.
    ramp_next: usize,
    /// Paces the ramp.
    ramp_bucket: Bucket,
    /// Slots whose first attempt ended.
    settled: usize,
    /// Whether `Ramped` was sent.
    ramped_sent: bool,
    /// The load phase, when one runs.
    load: Option<LoadPhase>,
    /// Connection attempts started.
    attempted: u64,
    /// Attempts and connections that ended in error.
    failed: u64,
    /// Connections logged in now (clients only).
    online: u64,
    /// Most clients online at once.
    peak_online: u64,
    /// Bytes of an incomplete command line from stdin.
    stdin_buf: Vec<u8>,
    /// Set by `Stop` or by stdin closing.
    stopping: bool,
    /// When progress was last reported, ns, and this process's CPU time then, µs.
    last_report: (u64, u64),
    /// CPU share of one core over the last report interval, %.
    cpu_pct: f64,
    /// Highest CPU share of a report interval, %.
    max_cpu_pct: f64,
    /// When the worker started, ns.
    started_ns: u64,
    /// The open-files soft limit in force.
    nofile: u64,
}

/// Reads the job (one JSON line on stdin), runs it, and writes the final report.
pub fn run() -> anyhow::Result<()> {
    let line = read_line_raw(0).context("reading the job from stdin")?;
    let job: Job = serde_json::from_str(&line).context("parsing the job")?;
    let nofile = net::raise_nofile().context("raising the open-files limit")?;
    if (job.users as u64) + 64 > nofile {
        anyhow::bail!(
            "worker {} needs {} connections but may open only {nofile} files",
            job.worker,
            job.users
        );
    }
    let mut worker = Worker::new(job, nofile)?;
    worker.run_loop()?;
    let report = worker.finish();
    emit(&WorkerMsg::Final(Box::new(report)))?;
    Ok(())
}

/// Reads one line from `fd` byte by byte, so nothing after the newline is consumed.
fn read_line_raw(fd: i32) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match net::read(fd, &mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one message line to the parent.
fn emit(msg: &WorkerMsg) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, msg)?;
    out.write_all(b"\n")?;
    out.flush()
}

impl Worker {
    fn new(job: Job, nofile: u64) -> anyhow::Result<Worker> {
        let now = now_ns();
        let wire = Wire::new(
            job.protocol,
            &job.secret,
            &job.backend_secret,
            job.token_ttl_s,
            job.interval_ms,
        )?;
        let backends = match job.scenario {
            Scenario::Push => 1,
            Scenario::Upstream => job.sinks as usize,
            _ => 0,
        };
        let slots = job.users as usize + backends;
        let mut conns = Vec::with_capacity(slots);
        conns.resize_with(slots, Conn::free);
        let tls = match &job.tls {
            Some(t) => Some(Tls::new(t, job.protocol, job.ws.is_some())?),
            None => None,
        };
        let mut ws = Vec::new();
        if job.ws.is_some() {
            ws.resize_with(slots, || WsConn::Idle);
        }
        let mut sessions = Vec::new();
        if tls.is_some() {
            sessions.resize_with(slots, || None);
        }
        let epoll = Epoll::new()?;
        net::set_nonblocking(0)?;
        epoll.add(0, STDIN_TOKEN, epoll::READ)?;
        Ok(Worker {
            ramp_bucket: Bucket::new(job.connect_rate, now),
            rng: StdRng::seed_from_u64(now ^ (job.worker as u64) << 40),
            next_id: (job.worker as u64) << 48,
            wire,
            epoll,
            conns,
            tls,
            sessions,
            ws,
            ws_controls: Vec::new(),
            ws_out: BytesMut::new(),
            timers: BinaryHeap::new(),
            hists: Hists::default(),
            errors: BTreeMap::new(),
            events: BTreeMap::new(),
            counters: LoadCounters::default(),
            inflight: HashMap::new(),
            sink_last: HashMap::new(),
            sink_last_ns: 0,
            next_sender: 0,
            scratch: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::with_capacity(1024),
            ramp_next: 0,
            settled: 0,
            ramped_sent: false,
            load: None,
            attempted: 0,
            failed: 0,
            online: 0,
            peak_online: 0,
            stdin_buf: Vec::new(),
            stopping: false,
            last_report: (now, {
                let (user, system) = crate::procfs::self_cpu_us();
                user + system
            }),
            cpu_pct: 0.0,
            max_cpu_pct: 0.0,
            started_ns: now,
            nofile,
            job,
        })
    }

    /// The first backend slot (the push scenario's one backend), if any.
    fn backend_slot(&self) -> Option<usize> {
        (self.conns.len() > self.job.users as usize).then_some(self.job.users as usize)
    }

    /// Whether `slot` is a backend (push backend or upstream sink) rather than a client.
    fn is_backend(&self, slot: usize) -> bool {
        slot >= self.job.users as usize
    }

    fn run_loop(&mut self) -> anyhow::Result<()> {
        let mut raw = Vec::with_capacity(1024);
        let mut events = Vec::with_capacity(1024);
        // The backends connect first, so they are ready when the load starts.
        for slot in self.job.users as usize..self.conns.len() {
            self.open(slot, now_ns());
        }
        while !self.stopping {
            let now = now_ns();
            self.fire_timers(now);
            self.ramp_step(now);
            self.load_step(now);
            self.report_step(now)?;
            if self.stopping {
                break;
            }
            let timeout = self.next_wakeup_ms(now_ns());
            self.epoll.wait(&mut raw, &mut events, timeout)?;
            for ev in events.iter().copied() {
                if ev.token == STDIN_TOKEN {
                    self.on_stdin()?;
                } else {
                    self.on_event(ev);
                }
            }
        }
        // Frames already in the sockets' receive queues when the stop came (e.g. a push whose
        // result the backend already has) still count.
        for _ in 0..16 {
            self.epoll.wait(&mut raw, &mut events, 0)?;
            if events.is_empty() {
                break;
            }
            for ev in events.iter().copied().filter(|e| e.token != STDIN_TOKEN) {
                self.on_event(ev);
            }
        }
        Ok(())
    }

    /// Milliseconds until the next timer, token or report is due (at least 1 when something
    /// is pending soon, so the loop never spins).
    fn next_wakeup_ms(&self, now: u64) -> i32 {
        let mut due = self.last_report.0 + REPORT_EVERY_NS;
        if let Some(Reverse((t, ..))) = self.timers.peek() {
            due = due.min(*t);
        }
        if self.ramp_next < self.job.users as usize {
            if let Some(dt) = self.ramp_bucket.next_in_ns() {
                due = due.min(self.ramp_bucket.last_ns() + dt);
            }
        }
        if let Some(load) = &self.load {
            if now < load.end_ns {
                if let Some(dt) = load.bucket.next_in_ns() {
                    due = due.min(load.bucket.last_ns() + dt);
                }
            }
            // After the end, results still in flight are awaited: look again every 10 ms.
            due = due.min(load.end_ns.max(now + 10_000_000));
        }
        let ms = due.saturating_sub(now).div_ceil(1_000_000);
        ms.clamp(0, 1000) as i32
    }

    fn fire_timers(&mut self, now: u64) {
        while let Some(&Reverse((due, slot, gen, kind))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            let slot = slot as usize;
            if self.conns[slot].gen != gen {
                continue;
            }
            if kind == T_RECONNECT {
                if self.stopping {
                    continue;
                }
                if self.conns[slot].state != State::Free {
                    // The moment a GoAway picked: leave the old connection for a new one.
                    self.close(slot);
                    self.conns[slot].flags |= RECONNECT;
                }
                self.open(slot, now);
                continue;
            }
            if self.conns[slot].state == State::Free {
                continue;
            }
            match kind {
                T_DEADLINE => match self.conns[slot].state {
                    State::Connecting => self.fail(slot, "connect: timeout".into()),
                    State::LoggingIn if self.ws_upgrading(slot) => {
                        self.fail(slot, crate::ws::UpgradeError::Timeout.to_string())
                    }
                    State::LoggingIn => self.fail(slot, "login: timeout".into()),
                    _ => {}
                },
                _ => {
                    self.hists.record(hist::LOOP_LAG, (now - due) / 1000);
                    if self.ping(slot, now) {
                        let next = now + self.job.interval_ms as u64 * 1_000_000;
                        self.timers.push(Reverse((next, slot as u32, gen, T_PING)));
                    }
                }
            }
        }
    }

    /// Sends a heartbeat on a logged-in connection; false when it is not logged in or failed.
    fn ping(&mut self, slot: usize, now: u64) -> bool {
        if self.conns[slot].state != State::Ready {
            return false;
        }
        let lease_ms = self.job.interval_ms;
        if !self.send_with(slot, |wire, out| wire.ping(lease_ms, out)) {
            return false;
        }
        if self.conns[slot].ping_sent(now) {
            *self
                .errors
                .entry("pong not back within the interval".into())
                .or_default() += 1;
        }
        self.counters.pings += 1;
        true
    }

    /// A Pong answers the oldest outstanding Ping (see [`Conn::pong`]).
    fn on_pong(&mut self, slot: usize, now: u64) {
        let key = match self.conns[slot].pong() {
            PongMatch::Timed(sent) => {
                self.counters.pongs += 1;
                self.hists.record_ns(hist::PING_RTT, sent, now);
                self.burst_pong(now);
                return;
            }
            PongMatch::Untimed => {
                self.counters.pongs += 1;
                self.burst_pong(now);
                "pong not timed (3+ pings outstanding)"
            }
            PongMatch::Unexpected => "pong without a ping",
        };
        *self.events.entry(key.into()).or_default() += 1;
    }

    fn ramp_step(&mut self, now: u64) {
        let users = self.job.users as usize;
        if self.ramp_next >= users {
            return;
        }
        let n = self.ramp_bucket.take(now).min(MAX_ACTIONS_PER_TURN);
        for _ in 0..n {
            if self.ramp_next >= users {
                break;
            }
            let slot = self.ramp_next;
            self.ramp_next += 1;
            self.open(slot, now);
        }
    }

    /// The server `slot` connects to.
    fn server_of(&self, slot: usize) -> std::net::SocketAddr {
        let user = self.job.first_user as usize + slot;
        self.job.servers[user % self.job.servers.len()]
    }

    /// Starts a new connection in `slot`.
    fn open(&mut self, slot: usize, now: u64) {
        let user = self.job.first_user as usize + slot;
        let server = self.server_of(slot);
        let source =
            (!self.job.sources.is_empty()).then(|| self.job.sources[user % self.job.sources.len()]);
        self.attempted += 1;
        match net::start_connect(server, source) {
            Ok(fd) => {
                let c = &mut self.conns[slot];
                c.fd = fd;
                c.gen = c.gen.wrapping_add(1);
                c.state = State::Connecting;
                c.since_ns = now;
                if c.flags & RECONNECT == 0 {
                    // A reconnect keeps the moment the connection was lost.
                    c.attempt_ns = now;
                }
                c.ping_sent_ns = 0;
                c.pings_out = 0;
                c.ping_next_ns = 0;
                let gen = c.gen;
                if let Err(e) = self
                    .epoll
                    .add(fd, conn::token(slot, gen), epoll::READ_WRITE)
                {
                    self.fail(slot, format!("epoll: {}", net::errno_kind(&e)));
                    return;
                }
                let deadline = now + self.job.connect_timeout_ms * 1_000_000;
                self.timers
                    .push(Reverse((deadline, slot as u32, gen, T_DEADLINE)));
            }
            Err(e) => {
                self.conns[slot].state = State::Connecting;
                self.fail(slot, format!("connect: {}", net::errno_kind(&e)));
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        let (slot, gen) = conn::untoken(ev.token);
        if slot >= self.conns.len() || self.conns[slot].gen != gen {
            return;
        }
        let now = now_ns();
        if self.conns[slot].state == State::Connecting {
            if !(ev.writable || ev.error) {
                return;
            }
            match net::take_error(self.conns[slot].fd) {
                Some(e) => {
                    self.fail(slot, format!("connect: {}", net::errno_kind(&e)));
                    return;
                }
                None => self.on_connected(slot, now),
            }
        } else if ev.writable {
            self.flush(slot);
        }
        if ev.readable || ev.error {
            self.on_readable(slot, now, ev.hup || ev.error);
        }
    }

    fn on_connected(&mut self, slot: usize, now: u64) {
        let reconnect = self.conns[slot].flags & RECONNECT != 0;
        if !reconnect {
            self.hists
                .record_ns(hist::CONNECT, self.conns[slot].since_ns, now);
        }
        self.conns[slot].state = State::LoggingIn;
        self.conns[slot].since_ns = now;
        if self.tls.is_some() && !self.start_tls(slot) {
            return; // NATS: after the server's INFO
        }
        if !self.ws.is_empty() {
            return self.send_upgrade(slot); // the login after the 101
        }
        self.send_login(slot);
    }

    /// Sends the login `slot` plays: a client's, the push backend's or an upstream sink's.
    fn send_login(&mut self, slot: usize) {
        let backend = self.is_backend(slot);
        let heartbeat_ms = self.job.interval_ms;
        if backend && self.job.scenario == Scenario::Upstream {
            let k = slot - self.job.users as usize;
            let service = format!("{}-sink-{k}", self.job.backend_service);
            self.send_with(slot, |wire, out| {
                wire.sink_login(&service, heartbeat_ms, out)
            });
            return;
        }
        let user = if backend {
            self.job.backend_service.clone()
        } else {
            self.user_name(self.job.first_user as usize + slot)
        };
        let device = self.job.device.clone();
        self.send_with(slot, |wire, out| {
            wire.login(&user, &device, backend, heartbeat_ms, out)
        });
    }

    fn user_name(&self, index: usize) -> String {
        format!("{}{}", self.job.user_prefix, index)
    }

    /// Reads everything the socket has and handles each whole frame. A short read means the
    /// receive queue is empty (a later arrival raises a new edge), so unless the peer closed
    /// (`hup`) the read that would return EAGAIN is skipped: one syscall per pong, not two.
    fn on_readable(&mut self, slot: usize, now: u64, hup: bool) {
        if !self.sessions.is_empty() {
            return self.on_readable_tls(slot, now);
        }
        let gen = self.conns[slot].gen;
        let (mut buf, from_scratch) = match self.conns[slot].partial.take() {
            Some(b) => (*b, false),
            None => (std::mem::take(&mut self.scratch), true),
        };
        'read: loop {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            let spare = buf.chunk_mut();
            // SAFETY: read() only writes into the spare capacity; the bytes it reports are
            // initialised before `advance_mut` exposes them.
            let dst = unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr(), spare.len()) };
            match net::read(self.conns[slot].fd, dst) {
                Ok(0) => {
                    self.fail(slot, self.eof_kind(slot));
                    break;
                }
                Ok(n) => {
                    let drained = n < dst.len() && !hup;
                    let start = buf.len();
                    // SAFETY: `n` bytes were just written by read().
                    unsafe { buf.advance_mut(n) };
                    if !self.take_in(slot, gen, &mut buf, start, now) {
                        break 'read;
                    }
                    if drained {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fail(slot, net::errno_kind(&e));
                    break;
                }
            }
        }
        let alive = self.conns[slot].gen == gen && self.conns[slot].state != State::Free;
        if alive && !buf.is_empty() {
            self.conns[slot].partial = Some(Box::new(BytesMut::from(&buf[..])));
        }
        if from_scratch {
            buf.clear();
            self.scratch = buf;
        }
    }

    /// Bytes `buf[start..]` just arrived: in a WebSocket run they are unwrapped first (or are
    /// the upgrade's answer); then every whole message at the front of `buf` is handled. False
    /// once the connection ended (or its slot holds a newer one).
    fn take_in(
        &mut self,
        slot: usize,
        gen: u32,
        buf: &mut BytesMut,
        start: usize,
        now: u64,
    ) -> bool {
        if self.ws.is_empty() {
            return self.deliver(slot, gen, buf, now);
        }
        self.take_in_ws(slot, gen, buf, start, now)
    }

    /// Why a connection whose server closed the stream ended.
    fn eof_kind(&self, slot: usize) -> String {
        if self.ws_upgrading(slot) {
            crate::ws::UpgradeError::Closed.to_string()
        } else {
            "closed by server without Close".into()
        }
    }

    /// Handles every whole message at the front of `buf`; false once the connection ended
    /// (or its slot holds a newer one).
    fn deliver(&mut self, slot: usize, gen: u32, buf: &mut BytesMut, now: u64) -> bool {
        loop {
            let logging_in = self.conns[slot].state == State::LoggingIn;
            match self.wire.decode(buf, self.job.max_frame, logging_in) {
                Ok(Some(msg)) => {
                    self.on_inbound(slot, msg, now);
                    if self.conns[slot].gen != gen || self.conns[slot].state == State::Free {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(e) => {
                    self.fail(slot, format!("bad frame from server: {e}"));
                    return false;
                }
            }
        }
    }

    fn on_inbound(&mut self, slot: usize, msg: Inbound, now: u64) {
        let state = self.conns[slot].state;
        match msg {
            Inbound::Ready { shard } if state == State::LoggingIn => {
                self.conns[slot].shard = shard;
                self.on_login_ok(slot, now);
            }
            Inbound::Pong if state == State::Ready => self.on_pong(slot, now),
            Inbound::Push { payload, ack } if state == State::Ready => {
                let name = if self.job.scenario == Scenario::Send {
                    hist::SEND_E2E
                } else {
                    hist::PUSH_E2E
                };
                if let Some((sent, from)) = payload::parse(&payload) {
                    self.hists.record_ns(name, sent, now);
                    let here = self.conns[slot].shard;
                    if name == hist::PUSH_E2E && from != payload::UNKNOWN_SHARD {
                        let split = if from == here {
                            hist::PUSH_E2E_SAME
                        } else {
                            hist::PUSH_E2E_CROSS
                        };
                        self.hists.record_ns(split, sent, now);
                    }
                }
                self.counters.delivered += 1;
                if let Some(id) = ack {
                    self.send_with(slot, |wire, out| wire.push_ack(id, out));
                }
            }
            Inbound::PushResult { id, status } if state == State::Ready => {
                self.on_result(id, status, now, hist::PUSH_RESULT, "push");
            }
            Inbound::SendResult { id, status } if state == State::Ready => {
                self.on_result(id, status, now, hist::SEND_RESULT, "send");
            }
            Inbound::UpstreamResult { id, status }
                if state == State::Ready && !self.is_backend(slot) =>
            {
                self.on_upstream_result(id, status, now);
            }
            Inbound::Upstream {
                answer,
                user,
                device,
                client_id,
                payload,
            } if state == State::Ready && self.is_backend(slot) => {
                self.on_upstream(slot, answer, (user, device), client_id, &payload, now);
            }
            Inbound::ServerPing => {
                self.send_with(slot, |wire, out| wire.pong(out));
            }
            Inbound::Nothing => {}
            Inbound::Closed(why) => self.fail(slot, why),
            Inbound::GoAway { why, window_ms } => {
                if !self.reconnects(slot) {
                    self.fail(slot, why);
                } else if state == State::Ready && window_ms != u32::MAX {
                    // As the client library does: keep the connection (and its pushes) until
                    // a random moment of the window, then move.
                    *self.events.entry(format!("moved: {why}")).or_default() += 1;
                    let c = &mut self.conns[slot];
                    c.attempt_ns = now;
                    c.retries = 0;
                    let gen = c.gen;
                    let delay_ns = self.rng.gen_range(0..=u64::from(window_ms) * 1_000_000);
                    self.counters.reconnects += 1;
                    self.timers
                        .push(Reverse((now + delay_ns, slot as u32, gen, T_RECONNECT)));
                } else {
                    self.lose(slot, why, Some(window_ms), now);
                }
            }
            other => {
                let what = match other {
                    Inbound::Ready { .. } => "login answer",
                    Inbound::Pong => "pong",
                    Inbound::Push { .. } => "push",
                    Inbound::Upstream { .. } if self.is_backend(slot) => "upstream message",
                    Inbound::Upstream { .. } => "upstream message at a client",
                    Inbound::UpstreamResult { .. } => "upstream result",
                    _ => "result",
                };
                let when = if state == State::LoggingIn {
                    "before the login answer"
                } else {
                    "after login"
                };
                self.fail(slot, format!("unexpected {what} {when}"));
            }
        }
    }

    fn on_login_ok(&mut self, slot: usize, now: u64) {
        let c = &mut self.conns[slot];
        c.state = State::Ready;
        c.retries = 0;
        if c.flags & RECONNECT != 0 {
            let from = c.attempt_ns;
            c.flags &= !RECONNECT;
            self.hists.record_ns(hist::RECONNECT, from, now);
        } else {
            let from = c.since_ns;
            self.hists.record_ns(hist::LOGIN, from, now);
        }
        self.settle(slot);
        if !self.is_backend(slot) {
            self.counters.logins += 1;
            self.online += 1;
            self.peak_online = self.peak_online.max(self.online);
        }
        if self.job.shape == Shape::Burst {
            // Pings come only in the load phase's rounds.
            return;
        }
        // The first ping at a random point of the interval spreads heartbeats evenly.
        let interval_ns = self.job.interval_ms as u64 * 1_000_000;
        let first = now + self.rng.gen_range(0..interval_ns.max(1));
        let gen = self.conns[slot].gen;
        self.timers.push(Reverse((first, slot as u32, gen, T_PING)));
    }

    fn on_result(&mut self, id: u64, status: PushStatus, now: u64, name: &'static str, what: &str) {
        let key = match status {
            PushStatus::Delivered(_) => format!("{what}: delivered"),
            PushStatus::Offline => format!("{what}: offline"),
            PushStatus::Refused(r) => format!("{what}: refused {r:?}"),
            PushStatus::Acked => format!("{what}: acked"),
            PushStatus::Accepted => format!("{what}: accepted"),
        };
        *self.events.entry(key).or_default() += 1;
        if status == PushStatus::Acked {
            return;
        }
        if let Some(sent) = self.inflight.remove(&id) {
            self.hists.record_ns(name, sent, now);
            if name == hist::PUSH_RESULT {
                self.counters.push_results += 1;
            } else {
                self.counters.send_results += 1;
            }
        }
    }

    /// Counts the end of a slot's first attempt towards the ramp.
    fn settle(&mut self, slot: usize) {
        if self.conns[slot].flags & SETTLED == 0 {
            self.conns[slot].flags |= SETTLED;
            self.settled += 1;
        }
    }

    /// Whether `slot` is reconnected when it ends (`--reconnect`, a client, not stopping).
    fn reconnects(&self, slot: usize) -> bool {
        self.job.reconnect && !self.stopping && !self.is_backend(slot)
    }

    /// `--reconnect`: counts the loss, closes the socket and schedules the next attempt, inside
    /// `window_ms` when the server gave one (`u32::MAX`: it forbade reconnecting), else after
    /// the back-off. The reconnect latency runs from the first loss to the next login.
    fn lose(&mut self, slot: usize, why: String, window_ms: Option<u32>, now: u64) {
        *self.events.entry(format!("lost: {why}")).or_default() += 1;
        let first_loss = self.conns[slot].retries == 0;
        self.close(slot);
        let delay_ns = match window_ms {
            Some(u32::MAX) => {
                *self
                    .events
                    .entry("not reconnected: GoAway forbids it".into())
                    .or_default() += 1;
                return;
            }
            Some(w) => self.rng.gen_range(0..=u64::from(w) * 1_000_000),
            None => {
                let base = BACKOFF_FIRST_NS
                    .saturating_mul(1 << self.conns[slot].retries.min(6))
                    .min(BACKOFF_MAX_NS);
                self.rng.gen_range(base / 2..=base + base / 2)
            }
        };
        let c = &mut self.conns[slot];
        c.retries = c.retries.saturating_add(1);
        c.flags |= RECONNECT;
        if first_loss {
            c.attempt_ns = now;
        }
        let gen = c.gen;
        self.counters.reconnects += 1;
        self.timers
            .push(Reverse((now + delay_ns, slot as u32, gen, T_RECONNECT)));
    }

    /// Ends a connection with an error of kind `kind` (with `--reconnect`, a loss: see
    /// [`Worker::lose`]).
    fn fail(&mut self, slot: usize, kind: String) {
        if self.reconnects(slot) {
            return self.lose(slot, kind, None, now_ns());
        }
        *self.errors.entry(kind).or_default() += 1;
        self.failed += 1;
        self.close(slot);
    }

    /// Closes a slot's socket (no error counted).
    fn close(&mut self, slot: usize) {
        let backend = self.is_backend(slot);
        let c = &mut self.conns[slot];
        if c.state == State::Ready && !backend {
            self.online -= 1;
        }
        if c.fd >= 0 {
            net::close(c.fd);
        }
        c.fd = -1;
        c.state = State::Free;
        c.ping_sent_ns = 0;
        c.pings_out = 0;
        c.ping_next_ns = 0;
        c.partial = None;
        c.pending = None;
        c.flags &= !RECONNECT;
        if let Some(session) = self.sessions.get_mut(slot) {
            *session = None;
        }
        if let Some(ws) = self.ws.get_mut(slot) {
            *ws = WsConn::Idle;
        }
        self.settle(slot);
    }

    /// Encodes with `encode` and writes the bytes; false when the connection failed.
    fn send_with(
        &mut self,
        slot: usize,
        encode: impl FnOnce(&Wire, &mut BytesMut) -> Result<(), WireError>,
    ) -> bool {
        self.out.clear();
        if let Err(e) = encode(&self.wire, &mut self.out) {
            self.fail(slot, format!("cannot encode: {e}"));
            return false;
        }
        if !self.ws.is_empty() {
            self.frame_out();
        }
        self.write_out(slot)
    }

    /// Writes the bytes of `self.out` (through the TLS session in a TLS run); false when the
    /// connection failed.
    fn write_out(&mut self, slot: usize) -> bool {
        if !self.sessions.is_empty() {
            return self.send_tls(slot);
        }
        if let Some(pending) = self.conns[slot].pending.as_mut() {
            pending.extend_from_slice(&self.out);
            return true;
        }
        match net::write(self.conns[slot].fd, &self.out) {
            Ok(n) if n == self.out.len() => true,
            Ok(n) => {
                self.conns[slot].pending = Some(Box::new(self.out[n..].to_vec()));
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.conns[slot].pending = Some(Box::new(self.out.to_vec()));
                true
            }
            Err(e) => {
                self.fail(slot, net::errno_kind(&e));
                false
            }
        }
    }

    /// Writes what a connection could not write before.
    fn flush(&mut self, slot: usize) {
        if !self.sessions.is_empty() {
            self.flush_tls(slot);
            return;
        }
        let Some(mut pending) = self.conns[slot].pending.take() else {
            return;
        };
        match net::write(self.conns[slot].fd, &pending) {
            Ok(n) if n == pending.len() => {}
            Ok(n) => {
                pending.drain(..n);
                self.conns[slot].pending = Some(pending);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.conns[slot].pending = Some(pending);
            }
            Err(e) => self.fail(slot, net::errno_kind(&e)),
        }
    }
}
