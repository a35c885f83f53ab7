//! The client's connection state machine: one main connection kept alive with as few pings as
//! the network allows, plus the probe connections that learn how few that is.
//!
//! Sans-IO like the rest of the crate: the app opens and closes transports when asked
//! ([`Action`]), reports what happened to them, and passes the time in.

use std::collections::VecDeque;

use super::adaptive::Learner;
use super::backoff::Backoff;
use super::config::HeartbeatConfig;
use super::events::{Action, ClientEvent, ConnId, Credentials};
use super::lateness::{Grid, Lateness};
use super::memory::NetMemory;
use super::prober::{ProbeOutcome, Prober};
use super::rng::Rng;
use super::rtt::RttEstimator;
use crate::message::{Close, CloseCode, Frame, Login, NetReport, Ping, PROTOCOL_VERSION};
use crate::Millis;

/// A ping waiting for its pong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outstanding {
    /// When the latest attempt was sent (RTT sample base).
    sent_at: Millis,
    /// The idle gap the first attempt tested.
    gap_ms: u32,
    /// Whether the one fast retry was sent.
    retried: bool,
    /// When the current attempt counts as missed.
    deadline: Millis,
}

/// The main connection.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Main {
    /// No usable network: nothing to do.
    Idle,
    /// Reconnecting at `until` (backoff, jitter or a GoAway window).
    Waiting {
        /// When to connect.
        until: Millis,
    },
    /// Transport connecting or `Login` sent.
    Starting {
        /// The connection.
        conn: ConnId,
        /// Given up at this time.
        deadline: Millis,
    },
    /// Logged in.
    Open {
        /// The connection.
        conn: ConnId,
        /// Last frame received or sent: the NAT's idle clock restarts there.
        last_activity: Millis,
        /// The ping in flight, if any.
        ping: Option<Outstanding>,
    },
    /// The server said not to reconnect.
    Stopped,
}

/// The client heartbeat machine.
///
/// # Driving it
///
/// Inputs: [`network_up`](Self::network_up) / [`network_down`](Self::network_down) (the app's
/// view of whether the network is usable, and its key), [`set_foreground`](Self::set_foreground),
/// [`connected`](Self::connected) / [`disconnected`](Self::disconnected) for transports it opened,
/// [`handle_frame`](Self::handle_frame) for each frame received, [`send`](Self::send) for the
/// app's own frames, and [`handle_timeout`](Self::handle_timeout) when
/// [`poll_timeout`](Self::poll_timeout) is reached. After each input drain
/// [`poll_action`](Self::poll_action) (carry them out in order) and
/// [`poll_event`](Self::poll_event), then re-read `poll_timeout`.
#[derive(Debug)]
pub struct Client {
    /// Parameters.
    cfg: HeartbeatConfig,
    /// For `Login`.
    creds: Credentials,
    /// Jitter and backoff randomness, seeded by the caller.
    rng: Rng,
    /// What was learned per network.
    memory: NetMemory,
    /// Bounds for the current network.
    learner: Learner,
    /// The current network key; `None` while the network is down.
    network: Option<String>,
    /// Whether the app is in the foreground (short fixed interval, no learning).
    foreground: bool,
    /// The main connection.
    main: Main,
    /// Probe connections in flight.
    prober: Prober,
    /// Reconnect delays.
    backoff: Backoff,
    /// Round trips of the main connection, for the pong timeout.
    rtt: RttEstimator,
    /// How late our timers fire, for the margin.
    lateness: Lateness,
    /// Next connection id.
    next_conn: u32,
    /// Actions for the app.
    actions: VecDeque<Action>,
    /// Events for the app.
    events: VecDeque<ClientEvent>,
    /// The server's largest lease (from `LoginOk`); bounds interval and probe delays.
    server_max_ms: u32,
    /// The server's maximum frame body (from the latest `LoginOk`); 0 before the first one.
    server_max_frame: u32,
    /// When learning converged (for the periodic recheck); `None` while learning.
    converged_at: Option<Millis>,
    /// No probe starts before this (after a probe could not run).
    next_round_at: Millis,
    /// The interval last announced in [`ClientEvent::IntervalChanged`].
    announced_ms: u32,
    /// The verified gap last sent in a `NetReport` on this connection.
    reported_ms: u32,
    /// A GoAway on the main connection (a drain while open, or the back-off refusal before
    /// login) asked to reconnect at this time. Consumed when that connection ends (by the
    /// timer, a loss or a network change), never carried over to a later connection.
    go_away_at: Option<Millis>,
    /// Whether the server's GoAway said not to reconnect.
    go_away_final: bool,
    /// Main connections declared dead after a missed pong and retry.
    dead_links: u64,
    /// The lease last told to the server (login or ping): its idle deadline follows it, so the
    /// next ping is due within it even when the interval has just grown.
    lease_told_ms: u32,
}

impl Client {
    /// A machine that connects once the app reports a usable network. `seed` fixes all of its
    /// random choices; `memory` is what an earlier run learned (or `NetMemory::default()`).
    pub fn new(cfg: HeartbeatConfig, creds: Credentials, memory: NetMemory, seed: u64) -> Self {
        let backoff = Backoff::new(cfg.backoff_base_ms.into(), cfg.backoff_cap_ms.into());
        let memory = memory.with_capacity(cfg.memory_capacity);
        let server_max_ms = cfg.max_interval_ms;
        Client {
            cfg,
            creds,
            rng: Rng::new(seed),
            memory,
            learner: Learner::new(),
            network: None,
            foreground: false,
            main: Main::Idle,
            prober: Prober::default(),
            backoff,
            rtt: RttEstimator::new(),
            lateness: Lateness::default(),
            next_conn: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            server_max_ms,
            server_max_frame: 0,
            converged_at: None,
            next_round_at: 0,
            announced_ms: 0,
            reported_ms: 0,
            go_away_at: None,
            go_away_final: false,
            dead_links: 0,
            lease_told_ms: 0,
        }
    }

    /// The network is usable, with this key (empty: none). A new key switches the learned
    /// state to that network's and reconnects after a short random delay.
    pub fn network_up(&mut self, now: Millis, key: &str) {
        if self.network.as_deref() == Some(key) && self.main != Main::Idle {
            return;
        }
        self.drop_connections(now);
        if self.network.as_deref() != Some(key) {
            self.learner = match self.memory.get(key) {
                Some(l) if !key.is_empty() => Learner::from_learned(l),
                _ => Learner::new(),
            };
            self.converged_at = None;
        }
        self.network = Some(key.to_owned());
        // A GoAway's moment belongs to the connection that got it: it is the earliest time the
        // replacement may connect, used here once. Kept past this point it would later stand
        // in for the backoff of an unrelated failure, with a time already gone.
        let not_before = self.go_away_at.take().unwrap_or(0);
        if self.main != Main::Stopped {
            let jitter = self.rng.below(self.cfg.network_change_jitter_ms.into());
            self.main = Main::Waiting {
                until: (now + jitter).max(not_before),
            };
        }
        self.after_input(now);
    }

    /// The network is not usable: everything closes, nothing reconnects until `network_up`.
    pub fn network_down(&mut self, now: Millis) {
        self.drop_connections(now);
        self.network = None;
        if self.main != Main::Stopped {
            self.main = Main::Idle;
        }
        self.after_input(now);
    }

    /// The app moved to the foreground (`true`) or the background.
    pub fn set_foreground(&mut self, now: Millis, foreground: bool) {
        self.foreground = foreground;
        self.after_input(now);
    }

    /// Uses `token` for every later login (the main connection's and probes'). Sending it on
    /// the open connection as a `Refresh` is the caller's choice ([`Client::send`]).
    pub fn set_token(&mut self, token: String) {
        self.creds.token = token;
    }

    /// Starts again after [`ClientEvent::Stopped`] (for example with a new token).
    pub fn restart(&mut self, now: Millis, creds: Credentials) {
        self.creds = creds;
        if self.main == Main::Stopped {
            self.main = if self.network.is_some() {
                Main::Waiting { until: now }
            } else {
                Main::Idle
            };
        }
        self.after_input(now);
    }

    /// The transport `conn` is up.
    pub fn connected(&mut self, now: Millis, conn: ConnId) {
        if self.prober.owns(conn) {
            let login = self.login(0);
            self.prober.connected(conn, login, &mut self.actions);
        } else if matches!(self.main, Main::Starting { conn: c, .. } if c == conn) {
            self.lease_told_ms = self.lease_ms();
            let login = self.login(self.lease_told_ms);
            self.actions.push_back(Action::Send {
                conn,
                frame: Frame::Login(login),
            });
        }
        self.after_input(now);
    }

    /// The transport `conn` failed to connect, or closed.
    pub fn disconnected(&mut self, now: Millis, conn: ConnId) {
        if let Some(outcome) = self.prober.disconnected(now, conn, &mut self.actions) {
            self.on_probe(now, outcome);
        } else if self.main_conn() == Some(conn) {
            self.lose_main(now, None);
        }
        self.after_input(now);
    }

    /// A frame arrived on `conn`.
    pub fn handle_frame(&mut self, now: Millis, conn: ConnId, frame: Frame) {
        if self.prober.owns(conn) {
            if let Some(o) = self
                .prober
                .handle_frame(now, conn, &frame, &mut self.actions)
            {
                self.on_probe(now, o);
            }
        } else if self.main_conn() == Some(conn) {
            self.on_main_frame(now, conn, frame);
        }
        self.after_input(now);
    }

    /// Sends an application frame (`Send`, `PushAck`) on the main connection; `false` when it
    /// is not open (the app keeps the frame for later).
    pub fn send(&mut self, now: Millis, frame: Frame) -> bool {
        let Main::Open {
            conn,
            last_activity,
            ..
        } = &mut self.main
        else {
            return false;
        };
        *last_activity = now;
        self.actions.push_back(Action::Send { conn: *conn, frame });
        self.after_input(now);
        true
    }

    /// Time passed; call when [`poll_timeout`](Self::poll_timeout) is reached.
    pub fn handle_timeout(&mut self, now: Millis) {
        if let Some(due) = self.poll_timeout().filter(|&due| now >= due) {
            self.lateness.record_firing(due, now);
        }
        for outcome in self.prober.handle_timeout(now, &mut self.actions) {
            self.on_probe(now, outcome);
        }
        match self.main.clone() {
            Main::Waiting { until } if now >= until && self.network.is_some() => {
                self.connect_main(now)
            }
            Main::Starting { conn, deadline } if now >= deadline => {
                self.actions.push_back(Action::Close { conn });
                self.lose_main(now, None);
            }
            Main::Open {
                conn,
                last_activity,
                ping,
            } => self.main_timer(now, conn, last_activity, ping),
            _ => {}
        }
        self.after_input(now);
    }

    /// The next action for the app.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the app.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let main = match &self.main {
            Main::Waiting { until } => Some(*until),
            Main::Starting { deadline, .. } => Some(*deadline),
            Main::Open {
                last_activity,
                ping,
                ..
            } => Some(match ping {
                Some(p) => p.deadline,
                None => self.next_ping_at(*last_activity),
            })
            .map(|t| self.go_away_at.map_or(t, |g| g.min(t))),
            Main::Idle | Main::Stopped => None,
        };
        // Only while a probe could run: otherwise the deadline would pass with nothing to do
        // (inputs that make probing possible again check it anyway).
        let recheck = self
            .converged_at
            .filter(|_| self.cfg.recheck_after_ms > 0 && self.may_probe() && self.prober.is_empty())
            .map(|at| at + self.cfg.recheck_after_ms);
        let round = (self.wants_probe() && self.next_round_at > 0).then_some(self.next_round_at);
        [main, self.prober.poll_timeout(), recheck, round]
            .into_iter()
            .flatten()
            .min()
    }

    /// The main connection's current heartbeat interval: the idle gap between its pings. Under
    /// alarm batching (the timer firings land on a grid) that is a whole number of batching
    /// windows, and the ping timer is asked for half a window before the grid point it is
    /// meant to fire at.
    pub fn interval_ms(&self) -> u32 {
        let background = if let Some((grid, gap)) = self.batching() {
            gap / grid.period_ms * grid.period_ms
        } else {
            // A ping leaves late by the timer's lateness, and a retransmission delays it by
            // about a round trip more: both come off the verified gap.
            let allowance = self
                .lateness_ms()
                .saturating_add(self.rtt.srtt_ms().unwrap_or(0));
            self.learner
                .main_interval_ms(&self.cfg, allowance, self.max_ms())
        };
        if self.foreground {
            background.min(self.cfg.foreground_interval_ms)
        } else {
            background
        }
    }

    /// The largest frame body the server accepts, from its latest `LoginOk`; `None` before
    /// the first login. An app keeps its `Send` payloads below it (minus the target and id
    /// fields): the server closes a connection that sends a longer frame (`FrameTooLarge`).
    pub fn max_frame(&self) -> Option<u32> {
        (self.server_max_frame > 0).then_some(self.server_max_frame)
    }

    /// Whether the main connection is logged in.
    pub fn is_online(&self) -> bool {
        matches!(self.main, Main::Open { .. })
    }

    /// Bounds learned for the current network.
    pub fn learner(&self) -> &Learner {
        &self.learner
    }

    /// What was learned per network, for the app to persist.
    pub fn memory(&self) -> &NetMemory {
        &self.memory
    }

    /// Main connections declared dead by the missed-pong check so far.
    pub fn dead_links(&self) -> u64 {
        self.dead_links
    }

    /// Probe connections in flight.
    pub fn probes_in_flight(&self) -> usize {
        self.prober.len()
    }

    /// "My next frame comes within": the interval (under batching: the longest gap a ping may
    /// be placed at) plus the lateness of the timer that sends it.
    fn lease_ms(&self) -> u32 {
        let gap = match self.batching() {
            Some((_, gap)) => gap,
            None => self.interval_ms(),
        };
        gap.saturating_add(self.lateness_ms())
    }

    /// The batching grid the timers fire on, and the longest idle gap the verified gap allows
    /// when lateness is not subtracted (the grid accounts for it), if that is at least one
    /// window. `None` in the foreground, without a grid, or with too short a gap.
    fn batching(&self) -> Option<(Grid, u32)> {
        if self.foreground || self.learner.verified_ms() == 0 {
            return None;
        }
        let grid = self.lateness.grid()?;
        let gap = self.grid_gap_ms();
        (gap >= grid.period_ms).then_some((grid, gap))
    }

    /// The verified gap less the margin and a round trip: what the NAT may see.
    fn grid_gap_ms(&self) -> u32 {
        let srtt = self.rtt.srtt_ms().unwrap_or(0);
        self.learner
            .main_interval_ms(&self.cfg, srtt, self.max_ms())
    }

    /// Under batching, the probe delay that would allow one more window between pings: worth
    /// verifying even after the bounds converged, since the precision that matters then is
    /// whether that gap survives.
    fn window_target(&self) -> Option<u32> {
        if self.foreground {
            return None;
        }
        let grid = self.lateness.grid()?;
        let windows = if self.learner.verified_ms() > 0 {
            self.grid_gap_ms() / grid.period_ms
        } else {
            0
        };
        // Inverse of the margin: the smallest verified gap that leaves one more window after
        // the margin and a round trip, plus twice the minimum margin so that a round-trip
        // estimate that moves a little does not take the window away again.
        let m = u64::from(self.cfg.min_margin_ms);
        let gap = u64::from(windows + 1) * u64::from(grid.period_ms)
            + u64::from(self.rtt.srtt_ms().unwrap_or(0))
            + m;
        let need = (gap * 100)
            .div_ceil(100 - u64::from(self.cfg.margin_pct.min(50)))
            .max(gap + m);
        let need = u32::try_from(need).ok()?;
        (need <= self.max_ms()).then_some(need)
    }

    /// Timer lateness to allow for: observed, or what the app said to expect.
    fn lateness_ms(&self) -> u32 {
        match self.cfg.assumed_lateness_ms {
            // The app knows the bound (alarm batching): no headroom above it.
            0 => self.lateness.estimate_ms(),
            assumed => self.lateness.max_ms().max(assumed),
        }
    }

    fn max_ms(&self) -> u32 {
        self.cfg.max_interval_ms.min(self.server_max_ms)
    }

    fn pong_timeout_ms(&self) -> u32 {
        self.rtt.timeout_ms(
            self.cfg.pong_timeout_min_ms,
            self.cfg.pong_timeout_max_ms,
            self.cfg.pong_timeout_initial_ms,
        )
    }

    fn next_ping_at(&self, last_activity: Millis) -> Millis {
        if let Some((grid, gap)) = self.batching() {
            // The last grid point the gap allows; ask half a window before it, so the firing
            // lands on it even if the grid's phase is a little off.
            let limit = last_activity + u64::from(gap.min(self.lease_told_ms));
            let point = grid.point_at_or_before(limit);
            if point > last_activity {
                return point
                    .saturating_sub(u64::from(grid.period_ms / 2))
                    .max(last_activity);
            }
        }
        last_activity + u64::from(self.interval_ms().min(self.lease_told_ms))
    }

    fn connect_main(&mut self, now: Millis) {
        let conn = self.new_conn();
        self.main = Main::Starting {
            conn,
            deadline: now + u64::from(self.cfg.connect_timeout_ms),
        };
        self.actions
            .push_back(Action::Connect { conn, probe: false });
    }

    fn new_conn(&mut self) -> ConnId {
        self.next_conn = self.next_conn.wrapping_add(1);
        ConnId(self.next_conn)
    }

    fn main_conn(&self) -> Option<ConnId> {
        match self.main {
            Main::Starting { conn, .. } | Main::Open { conn, .. } => Some(conn),
            _ => None,
        }
    }

    fn login(&self, heartbeat_ms: u32) -> Login {
        Login {
            version: PROTOCOL_VERSION,
            flags: 0,
            user: self.creds.user.clone(),
            device: self.creds.device.clone(),
            token: self.creds.token.clone(),
            heartbeat_ms,
            network_key: self.network.clone().unwrap_or_default(),
        }
    }

    /// The main connection's timer: GoAway reconnect, missed pong, or the next ping.
    fn main_timer(
        &mut self,
        now: Millis,
        conn: ConnId,
        last_activity: Millis,
        ping: Option<Outstanding>,
    ) {
        if self.go_away_at.is_some_and(|g| now >= g) {
            self.actions.push_back(Action::Send {
                conn,
                frame: Frame::Close(Close {
                    code: CloseCode::Normal,
                    text: String::new(),
                }),
            });
            self.actions.push_back(Action::Close { conn });
            self.events.push_back(ClientEvent::Offline);
            self.go_away_at = None;
            // This is the moment the GoAway window picked: connect again right away.
            self.connect_main(now);
            return;
        }
        match ping {
            Some(p) if now >= p.deadline => {
                if !p.retried {
                    // One fast retry: a single lost packet must not cost the connection.
                    self.send_ping(now, conn, p.gap_ms, true);
                } else {
                    self.dead_links += 1;
                    // Evidence about the NAT only if the gap was near the learned one: a
                    // failure far below it is an outage, not a shorter timeout.
                    let verified = self.learner.verified_ms();
                    if verified == 0 || u64::from(p.gap_ms) * 2 >= u64::from(verified) {
                        self.learner.record(p.gap_ms, false);
                        self.remember();
                    }
                    self.actions.push_back(Action::Close { conn });
                    self.lose_main(now, None);
                }
            }
            Some(_) => {}
            None => {
                let due = self.next_ping_at(last_activity);
                if now >= due {
                    self.lateness.record(due, now);
                    let gap = u32::try_from(now.saturating_sub(last_activity)).unwrap_or(u32::MAX);
                    self.send_ping(now, conn, gap, false);
                }
            }
        }
    }

    fn send_ping(&mut self, now: Millis, conn: ConnId, gap_ms: u32, retried: bool) {
        let lease_ms = self.lease_ms();
        self.lease_told_ms = lease_ms;
        self.actions.push_back(Action::Send {
            conn,
            frame: Frame::Ping(Ping { lease_ms }),
        });
        let deadline = now + u64::from(self.pong_timeout_ms());
        if let Main::Open {
            ping,
            last_activity,
            ..
        } = &mut self.main
        {
            *last_activity = now;
            *ping = Some(Outstanding {
                sent_at: now,
                gap_ms,
                retried,
                deadline,
            });
        }
    }

    fn on_main_frame(&mut self, now: Millis, conn: ConnId, frame: Frame) {
        match frame {
            Frame::LoginOk(ok) if matches!(self.main, Main::Starting { .. }) => {
                self.server_max_ms = ok.max_lease_ms.max(1);
                self.server_max_frame = ok.max_frame;
                if self.learner.verified_ms() == 0 && ok.prior_ms > 0 {
                    self.learner.set_hint(ok.prior_ms);
                }
                self.backoff.reset();
                self.reported_ms = 0;
                self.go_away_at = None;
                self.go_away_final = false;
                self.main = Main::Open {
                    conn,
                    last_activity: now,
                    ping: None,
                };
                self.events.push_back(ClientEvent::Online {
                    session_id: ok.session_id,
                    server_epoch: ok.server_epoch,
                });
            }
            // The server's back-off refusal: it is over a limit and will close this connection
            // before the login. Come back at a random moment of its window, not before.
            Frame::GoAway(g) if matches!(self.main, Main::Starting { .. }) => {
                self.actions.push_back(Action::Close { conn });
                if g.may_reconnect {
                    self.go_away_at = Some(now + self.rng.below(g.window_ms.into()));
                } else {
                    self.go_away_final = true;
                }
                self.lose_main(now, None);
            }
            Frame::Close(close) => {
                self.actions.push_back(Action::Close { conn });
                self.lose_main(now, Some((close.code, close.code.may_reconnect(), 0)));
            }
            Frame::Kick(kick) => {
                self.actions.push_back(Action::Close { conn });
                self.lose_main(now, Some((kick.reason, kick.may_reconnect, kick.jitter_ms)));
            }
            frame => {
                let Main::Open {
                    last_activity,
                    ping,
                    ..
                } = &mut self.main
                else {
                    return;
                };
                *last_activity = now;
                match frame {
                    Frame::Pong(_) => {
                        if let Some(p) = ping.take() {
                            let rtt =
                                u32::try_from(now.saturating_sub(p.sent_at)).unwrap_or(u32::MAX);
                            self.rtt.sample(rtt);
                            if !p.retried {
                                // The retry's gap was not idle: only a first attempt is evidence.
                                self.learner.record(p.gap_ms, true);
                                self.remember();
                            }
                        }
                    }
                    Frame::GoAway(g) => {
                        let window = u64::from(g.window_ms);
                        self.go_away_final = !g.may_reconnect;
                        if g.may_reconnect {
                            self.go_away_at = Some(now + self.rng.below(window));
                        }
                    }
                    Frame::Push(_)
                    | Frame::SendResult(_)
                    | Frame::Message(_)
                    | Frame::UpstreamResult(_)
                    | Frame::UpstreamDeliver(_)
                    | Frame::TokenNotice(_)
                    | Frame::Refreshed => self.events.push_back(ClientEvent::Received(frame)),
                    _ => {}
                }
            }
        }
    }

    /// The main connection is gone. `close` is the server's (code, may reconnect, jitter).
    fn lose_main(&mut self, now: Millis, close: Option<(CloseCode, bool, u32)>) {
        if matches!(self.main, Main::Open { .. }) {
            self.events.push_back(ClientEvent::Offline);
        }
        let stop = match close {
            Some((code, false, _)) => Some(code),
            _ if self.go_away_final => Some(CloseCode::ServerShutdown),
            _ => None,
        };
        if let Some(code) = stop {
            self.main = Main::Stopped;
            self.events.push_back(ClientEvent::Stopped { code });
            return;
        }
        let until = if let Some(at) = self.go_away_at.take() {
            at.max(now)
        } else if let Some((_, true, jitter)) = close.filter(|c| c.2 > 0) {
            now + self.rng.below(jitter.into())
        } else {
            now + self.backoff.next_delay(&mut self.rng)
        };
        self.main = if self.network.is_some() {
            Main::Waiting { until }
        } else {
            Main::Idle
        };
    }

    fn drop_connections(&mut self, now: Millis) {
        if let Some(conn) = self.main_conn() {
            self.actions.push_back(Action::Close { conn });
            if matches!(self.main, Main::Open { .. }) {
                self.events.push_back(ClientEvent::Offline);
            }
            self.main = Main::Waiting { until: now };
        }
        self.prober.cancel_where(|_| true, &mut self.actions);
    }

    fn on_probe(&mut self, now: Millis, outcome: ProbeOutcome) {
        match outcome {
            ProbeOutcome::Fired { delay_ms } => {
                self.learner.record(delay_ms, true);
                // Shorter probes started with this one add nothing.
                self.prober
                    .cancel_where(|d| d <= delay_ms, &mut self.actions);
            }
            ProbeOutcome::Failed { delay_ms } => {
                self.learner.record(delay_ms, false);
                // Longer probes would fail too.
                self.prober
                    .cancel_where(|d| d >= delay_ms, &mut self.actions);
            }
            ProbeOutcome::Aborted { .. } => {
                // Do not hammer a server or network that refuses probes.
                self.next_round_at = now + u64::from(self.cfg.safe_interval_ms);
            }
        }
        self.remember();
    }

    fn remember(&mut self) {
        if let Some(key) = self.network.as_deref().filter(|k| !k.is_empty()) {
            self.memory.put(key, self.learner.learned());
        }
    }

    /// Whether probes may run now: in the background, beside a live main connection.
    fn may_probe(&self) -> bool {
        !self.foreground && matches!(self.main, Main::Open { .. })
    }

    /// Whether another probe would start now if one were worth it: learning, and a slot free.
    fn wants_probe(&self) -> bool {
        self.may_probe()
            && self.converged_at.is_none()
            && self.prober.len() < usize::from(self.cfg.parallel_probes.max(1))
    }

    fn start_probe(&mut self, now: Millis, delay_ms: u32) {
        let conn = self.new_conn();
        let wait = self.pong_timeout_ms();
        self.prober.start(
            now,
            conn,
            delay_ms,
            self.cfg.connect_timeout_ms,
            wait,
            &mut self.actions,
        );
    }

    /// Bookkeeping after every input: probes, convergence, reports, interval events.
    fn after_input(&mut self, now: Millis) {
        let max = self.max_ms();
        let target = self.window_target();
        let (verified, failed) = (self.learner.verified_ms(), self.learner.failed_ms());
        let target_open = target.is_some_and(|t| t > verified && (failed == 0 || t < failed));
        if !self.learner.is_converged(&self.cfg, max) || target_open {
            self.converged_at = None;
        } else if self.converged_at.is_none() {
            self.converged_at = Some(now);
            self.events.push_back(ClientEvent::Learned {
                verified_ms: self.learner.verified_ms(),
                failed_ms: self.learner.failed_ms(),
            });
        }
        if self.wants_probe() && now >= self.next_round_at {
            // Pipelined: fill every free slot with the most useful probe given those in flight.
            while self.wants_probe() {
                let in_flight = self.prober.delays();
                match self.learner.next_probe(&self.cfg, max, &in_flight, target) {
                    Some(delay) => self.start_probe(now, delay),
                    None => break,
                }
            }
            // Started, or nothing to probe: either way no timed start is pending.
            self.next_round_at = 0;
        }
        // Recheck: one probe at the smallest failed gap. If it fires now, the timeout grew and
        // learning resumes; if not, the bounds stand for another period.
        let recheck = self.cfg.recheck_after_ms;
        if let Some(at) = self.converged_at {
            let failed = self.learner.failed_ms();
            if recheck > 0 && now >= at + recheck && self.may_probe() && self.prober.is_empty() {
                self.converged_at = Some(now);
                if failed > 0 && failed <= max {
                    self.start_probe(now, failed);
                }
            }
        }
        if let Main::Open { conn, .. } = self.main {
            let verified = self.learner.verified_ms();
            let keyed = self.network.as_deref().is_some_and(|k| !k.is_empty());
            if keyed && self.converged_at.is_some() && verified != self.reported_ms {
                self.reported_ms = verified;
                self.actions.push_back(Action::Send {
                    conn,
                    frame: Frame::NetReport(NetReport {
                        learned_ms: verified,
                    }),
                });
            }
        }
        let interval = self.interval_ms();
        if interval != self.announced_ms {
            self.announced_ms = interval;
            self.events.push_back(ClientEvent::IntervalChanged {
                interval_ms: interval,
            });
        }
    }
}
