//! The simulated world: one client, a NAT, and the server's real session state machines, on a
//! virtual clock driven by an event queue.
//!
//! The NAT keeps one mapping per connection. A packet reaching it more than T after the
//! flow's previous packet finds the mapping gone and is dropped silently, as are all later
//! packets of the flow (no reset). T may change over time. Each transmission of a frame may be
//! lost (independently, with a fixed probability); as in TCP, a lost frame is retransmitted
//! after 300 ms, 600 ms, ... (it arrives late, and frames may overtake it, which the protocol's
//! ping/pong and probe exchanges do not mind). The client's timers fire late by a configurable
//! model.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::{Keeper, Report, Scenario, TimerLateness};
use crate::heartbeat::events::{Action, ConnId};
use crate::heartbeat::rng::Rng;
use crate::message::{CloseCode, Frame, Login};
use crate::session::{Accept, Event, ServerSession, SessionConfig};
use crate::token::{Authenticate, Grant, KeyId, Principal};
use crate::Millis;

/// What travels on a simulated connection.
#[derive(Clone, Debug)]
enum Packet {
    /// Connection setup (creates the NAT mapping).
    Syn,
    /// Setup answer: the client's transport is up.
    SynAck,
    /// A protocol frame.
    Frame(Frame),
    /// The server closed the connection.
    Fin,
}

/// First TCP retransmission timeout.
const RTO_MS: u64 = 300;

/// Retransmissions before TCP gives up on a segment (the frame is then lost).
const MAX_RETRANSMISSIONS: u32 = 6;

/// A run stops after this many events: a client that keeps asking to be woken at the same
/// instant would otherwise never let virtual time advance. Real runs use a few thousand.
const MAX_EVENTS: u64 = 2_000_000;

/// A scheduled happening.
#[derive(Clone, Debug)]
enum Ev {
    /// A packet reaches the NAT.
    Nat {
        /// Its connection.
        conn: ConnId,
        /// Its direction.
        to_server: bool,
        /// What it carries.
        packet: Packet,
        /// 0 for the first transmission, n for the n-th retransmission.
        attempt: u32,
    },
    /// A packet reaches its destination.
    Arrive {
        /// Its connection.
        conn: ConnId,
        /// Its direction.
        to_server: bool,
        /// What it carries.
        packet: Packet,
    },
    /// The client's timer fires.
    ClientWake {
        /// Ignored unless it is the current timer's generation.
        gen: u64,
    },
    /// A server session's timer.
    ServerWake {
        /// Whose.
        conn: ConnId,
    },
}

/// One connection as the NAT and the server see it.
#[derive(Debug)]
struct Flow {
    /// Main connection (not a probe).
    main: bool,
    /// When the NAT last saw a packet of the flow.
    last_seen: Millis,
    /// The NAT forgot the mapping.
    nat_dead: bool,
    /// The client closed it; nothing more is delivered.
    closed: bool,
    /// The server's state machine, once the setup reached the server.
    session: Option<ServerSession>,
}

/// What a run produced.
pub(super) struct Outcome {
    /// The measurements that need no post-processing.
    pub(super) report: Report,
    /// The client's interval over time: (time, interval) at every change.
    pub(super) intervals: Vec<(Millis, u32)>,
    /// When each main ping was sent.
    pub(super) pings: Vec<Millis>,
    /// The idle gap the NAT saw before each main ping that passed it: (time, gap).
    pub(super) gaps: Vec<(Millis, u64)>,
}

/// Accepts every login: the simulator is about heartbeats, not tokens.
struct Anyone;

impl Authenticate for Anyone {
    fn authenticate(&self, _login: &Login, _now_unix: u64) -> Result<Grant, CloseCode> {
        Ok(Grant {
            principal: Principal::Client,
            expiry_unix: u64::MAX,
            key: KeyId::NONE,
        })
    }
}

/// The simulated world around one client.
pub(super) struct World<'a, K: Keeper> {
    /// What to simulate.
    sc: &'a Scenario,
    /// The client under test.
    client: K,
    /// Virtual time.
    now: Millis,
    /// Events by (time, sequence).
    queue: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    /// Event bodies, indexed by the queue entries.
    bodies: Vec<Option<Ev>>,
    /// Tie-breaker keeping the order of events at the same time.
    seq: u64,
    /// Connections.
    flows: HashMap<ConnId, Flow>,
    /// Server rules.
    server_cfg: SessionConfig,
    /// Loss and lateness randomness.
    rng: Rng,
    /// The client's timer: requested time and generation.
    client_timer: Option<Millis>,
    /// Generation of the current client timer.
    client_gen: u64,
    /// The batching grid's phase.
    phase: Millis,
    /// Results.
    report: Report,
    /// The client's interval over time: (time, interval) at every change.
    samples: Vec<(Millis, u32)>,
    /// When each main ping was sent.
    pings: Vec<Millis>,
    /// The idle gap the NAT saw before each main ping that passed it: (time, gap).
    gaps: Vec<(Millis, u64)>,
    /// Since when the main connection has been dead at the NAT, unnoticed.
    dead_since: Option<Millis>,
}

impl<'a, K: Keeper> World<'a, K> {
    pub(super) fn new(sc: &'a Scenario, client: K) -> Self {
        let mut rng = Rng::new(sc.seed ^ 0x5eed);
        let phase = match sc.lateness {
            TimerLateness::Batched { window_ms } => rng.below(window_ms.into()),
            _ => 0,
        };
        World {
            sc,
            client,
            now: 0,
            queue: BinaryHeap::new(),
            bodies: Vec::new(),
            seq: 0,
            flows: HashMap::new(),
            server_cfg: SessionConfig::default(),
            rng,
            client_timer: None,
            client_gen: 0,
            phase,
            report: Report::default(),
            samples: Vec::new(),
            pings: Vec::new(),
            gaps: Vec::new(),
            dead_since: None,
        }
    }

    /// Runs the scenario to its end and returns what was measured.
    pub(super) fn run(mut self, start: impl FnOnce(&mut K, Millis)) -> Outcome {
        start(&mut self.client, 0);
        self.after_client();
        while let Some(Reverse((t, _, idx))) = self.queue.pop() {
            if t > self.sc.duration_ms || self.report.events >= MAX_EVENTS {
                break;
            }
            self.report.events += 1;
            self.now = t;
            if let Some(ev) = self.bodies[idx].take() {
                self.handle(ev);
            }
        }
        self.now = self.sc.duration_ms;
        // A main mapping that expired without anyone noticing yet is a loss too.
        let now = self.now;
        let expired: Vec<ConnId> = self
            .flows
            .iter()
            .filter(|(_, f)| f.main && !f.closed && !f.nat_dead)
            .filter(|(_, f)| now - f.last_seen > u64::from(self.sc.timeout_at(now)))
            .map(|(c, _)| *c)
            .collect();
        for conn in expired {
            self.kill(conn, now);
        }
        if let Some(since) = self.dead_since {
            self.report.unreachable_ms += self.now.saturating_sub(since);
        }
        self.report.final_interval_ms = self.client.interval_ms();
        Outcome {
            report: self.report,
            intervals: self.samples,
            pings: self.pings,
            gaps: self.gaps,
        }
    }

    fn schedule(&mut self, at: Millis, ev: Ev) {
        self.seq += 1;
        self.bodies.push(Some(ev));
        self.queue
            .push(Reverse((at, self.seq, self.bodies.len() - 1)));
    }

    fn half_delays(&self) -> (u64, u64) {
        // The NAT sits near the client: a tenth of the one-way delay from it.
        let one_way = u64::from(self.sc.one_way_ms);
        let near = (one_way / 10).max(1);
        (near, one_way - near.min(one_way))
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Nat {
                conn,
                to_server,
                packet,
                attempt,
            } => self.at_nat(conn, to_server, packet, attempt),
            Ev::Arrive {
                conn,
                to_server: true,
                packet,
            } => self.at_server(conn, packet),
            Ev::Arrive {
                conn,
                to_server: false,
                packet,
            } => self.at_client(conn, packet),
            Ev::ClientWake { gen } => {
                if gen == self.client_gen {
                    self.client_timer = None;
                    self.client.handle_timeout(self.now);
                    self.after_client();
                }
            }
            Ev::ServerWake { conn } => {
                let now = self.now;
                let cfg = &self.server_cfg;
                let Some(s) = self.flows.get_mut(&conn).and_then(|f| f.session.as_mut()) else {
                    return;
                };
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(cfg, now);
                    self.after_server(conn);
                }
            }
        }
    }

    /// Marks `conn`'s mapping as forgotten by the NAT.
    fn kill(&mut self, conn: ConnId, now: Millis) {
        let t = u64::from(self.sc.timeout_at(now));
        let Some(f) = self.flows.get_mut(&conn) else {
            return;
        };
        f.nat_dead = true;
        if f.main && !f.closed {
            self.report.main_losses += 1;
            if self.sc.last_change() > 0 && now >= self.sc.last_change() {
                self.report.losses_after_change += 1;
            }
            let died = f.last_seen + t;
            self.dead_since = Some(self.dead_since.map_or(died, |d| d.min(died)));
        }
    }

    fn at_nat(&mut self, conn: ConnId, to_server: bool, packet: Packet, attempt: u32) {
        let now = self.now;
        let timeout = u64::from(self.sc.timeout_at(now));
        let lost = matches!(packet, Packet::Frame(_)) && self.rng.chance(self.sc.loss);
        let Some(f) = self.flows.get_mut(&conn) else {
            return;
        };
        if f.closed || f.nat_dead {
            return;
        }
        if !matches!(packet, Packet::Syn) && now - f.last_seen > timeout {
            self.kill(conn, now);
            return;
        }
        if lost {
            // TCP retransmits a lost segment after its retransmission timeout, doubling each
            // time: loss shows up as delay (and the retransmission meets the NAT later).
            if attempt < MAX_RETRANSMISSIONS {
                self.schedule(
                    now + (RTO_MS << attempt),
                    Ev::Nat {
                        conn,
                        to_server,
                        packet,
                        attempt: attempt + 1,
                    },
                );
            }
            return;
        }
        if f.main && to_server && matches!(packet, Packet::Frame(Frame::Ping(_))) {
            self.gaps.push((now, now - f.last_seen));
        }
        f.last_seen = now;
        let (near, far) = self.half_delays();
        let delay = if to_server { far } else { near };
        self.schedule(
            now + delay,
            Ev::Arrive {
                conn,
                to_server,
                packet,
            },
        );
    }

    fn send_from_server(&mut self, conn: ConnId, packet: Packet) {
        let (_, far) = self.half_delays();
        self.schedule(
            self.now + far,
            Ev::Nat {
                conn,
                to_server: false,
                packet,
                attempt: 0,
            },
        );
    }

    fn at_server(&mut self, conn: ConnId, packet: Packet) {
        let now = self.now;
        let cfg = self.server_cfg.clone();
        let Some(f) = self.flows.get_mut(&conn) else {
            return;
        };
        if f.closed {
            return;
        }
        match packet {
            Packet::Syn => {
                f.session = Some(ServerSession::new(&cfg, now));
                self.send_from_server(conn, Packet::SynAck);
            }
            Packet::Frame(frame) => {
                if let Some(s) = f.session.as_mut() {
                    s.handle_frame(&cfg, now, 0, frame, &Anyone);
                }
            }
            Packet::SynAck | Packet::Fin => {}
        }
        self.after_server(conn);
    }

    fn after_server(&mut self, conn: ConnId) {
        let now = self.now;
        let cfg = self.server_cfg.clone();
        let mut out = Vec::new();
        let mut finished = false;
        let mut wake = None;
        if let Some(s) = self.flows.get_mut(&conn).and_then(|f| f.session.as_mut()) {
            while let Some(ev) = s.poll_event() {
                if let Event::LoggedIn { .. } = ev {
                    let accept = Accept {
                        session_id: u64::from(conn.0),
                        server_epoch: 1,
                        prior_ms: self.sc.prior_ms,
                    };
                    // The session just asked for it: it cannot be in another state.
                    let _ = s.accept(&cfg, now, accept);
                }
            }
            while let Some(frame) = s.poll_transmit() {
                out.push(Packet::Frame(frame));
            }
            finished = s.is_finished();
            wake = s.poll_timeout();
        }
        for p in out {
            self.send_from_server(conn, p);
        }
        if finished {
            self.send_from_server(conn, Packet::Fin);
            if let Some(f) = self.flows.get_mut(&conn) {
                f.session = None;
            }
        } else if let Some(t) = wake {
            self.schedule(t.max(now), Ev::ServerWake { conn });
        }
    }

    fn at_client(&mut self, conn: ConnId, packet: Packet) {
        let now = self.now;
        let Some(f) = self.flows.get(&conn) else {
            return;
        };
        if f.closed {
            return;
        }
        let main = f.main;
        match packet {
            Packet::SynAck => self.client.connected(now, conn),
            Packet::Fin => self.client.disconnected(now, conn),
            Packet::Frame(frame) => {
                if main && matches!(frame, Frame::LoginOk(_)) {
                    if let Some(since) = self.dead_since.take() {
                        self.report.unreachable_ms += now.saturating_sub(since);
                    }
                }
                self.client.handle_frame(now, conn, frame)
            }
            Packet::Syn => {}
        }
        self.after_client();
    }

    /// Carries out the client's actions and re-arms its timer.
    fn after_client(&mut self) {
        let now = self.now;
        let (near, _) = self.half_delays();
        while let Some(action) = self.client.poll_action() {
            match action {
                Action::Connect { conn, probe } => {
                    if probe {
                        self.report.probes += 1;
                    } else {
                        self.report.main_connects += 1;
                    }
                    self.flows.insert(
                        conn,
                        Flow {
                            main: !probe,
                            last_seen: now,
                            nat_dead: false,
                            closed: false,
                            session: None,
                        },
                    );
                    self.schedule(
                        now + near,
                        Ev::Nat {
                            conn,
                            to_server: true,
                            packet: Packet::Syn,
                            attempt: 0,
                        },
                    );
                }
                Action::Send { conn, frame } => {
                    let main = self.flows.get(&conn).is_some_and(|f| f.main && !f.closed);
                    if main && matches!(frame, Frame::Ping(_)) {
                        self.pings.push(now);
                    }
                    self.schedule(
                        now + near,
                        Ev::Nat {
                            conn,
                            to_server: true,
                            packet: Packet::Frame(frame),
                            attempt: 0,
                        },
                    );
                }
                Action::Close { conn } => {
                    if let Some(f) = self.flows.get_mut(&conn) {
                        f.closed = true;
                        f.session = None;
                    }
                }
            }
        }
        let interval = self.client.interval_ms();
        if self.samples.last().map(|(_, iv)| *iv) != Some(interval) {
            self.samples.push((now, interval));
        }
        let want = self.client.poll_timeout();
        if want != self.client_timer {
            self.client_timer = want;
            self.client_gen += 1;
            if let Some(t) = want {
                let fire = self.fire_time(t.max(now));
                self.schedule(
                    fire,
                    Ev::ClientWake {
                        gen: self.client_gen,
                    },
                );
            }
        }
    }

    /// When a timer asked for `t` really fires.
    fn fire_time(&mut self, t: Millis) -> Millis {
        match self.sc.lateness {
            TimerLateness::Exact => t,
            TimerLateness::Uniform { max_ms } => t + self.rng.below(u64::from(max_ms) + 1),
            TimerLateness::Batched { window_ms } => {
                let w = u64::from(window_ms.max(1));
                let k = (t.saturating_sub(self.phase)).div_ceil(w);
                (self.phase + k * w).max(t)
            }
        }
    }
}
