//! The two baselines tether is compared with, driven through the same simulator.
//!
//! - **Fixed**: a ping every 4 minutes; the link is declared dead after 5 unanswered pings in
//!   a row (the rule of the IM course lesson).
//! - **Mars-style stepper** (Tencent Mars on Android): start at 210 s; after 5 successes at
//!   the current interval add 60 s (cap 580 s); after 2 failures fall back to the last
//!   successful interval − 20 s and stop growing. A single 8 s pong timeout closes the link; a
//!   ping goes out right after connecting. Once stable, 2 more failures in a row restart the
//!   search from 210 s (our reading of how Mars reacts to a changed network).
//!
//! Both use one main connection only and reconnect after a short random delay.

use std::collections::VecDeque;

use super::Keeper;
use crate::heartbeat::events::{Action, ConnId};
use crate::heartbeat::rng::Rng;
use crate::message::{Frame, Login, Ping, PROTOCOL_VERSION};
use crate::Millis;

/// Which baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaselineKind {
    /// Fixed interval, dead after 5 missed pongs.
    Fixed {
        /// The interval.
        interval_ms: u32,
    },
    /// Mars-style stepper.
    Mars,
}

const MARS_MIN: u32 = 210_000;
const MARS_MAX: u32 = 580_000;
const MARS_STEP: u32 = 60_000;
const MARS_BACK: u32 = 20_000;
const MARS_PONG_TIMEOUT: u64 = 8_000;

/// Main connection state of a baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reconnect at this time.
    Waiting(Millis),
    /// Transport or login under way.
    Starting(ConnId),
    /// Logged in.
    Open {
        /// The connection.
        conn: ConnId,
        /// When the next ping goes out.
        next_ping: Millis,
        /// Mars: when the ping in flight times out.
        pong_deadline: Option<Millis>,
        /// Fixed: pings unanswered in a row.
        missed: u32,
        /// Mars: the ping in flight is the one right after connecting, not a test of the
        /// interval.
        first: bool,
    },
}

/// A baseline client.
#[derive(Debug)]
pub struct Baseline {
    /// Which policy.
    kind: BaselineKind,
    /// Main connection.
    state: State,
    /// Current interval.
    interval_ms: u32,
    /// Mars: successes at the current interval.
    successes: u32,
    /// Mars: failures in a row.
    failures: u32,
    /// Mars: largest interval that succeeded.
    last_success: u32,
    /// Mars: stopped growing.
    stable: bool,
    /// Reconnect jitter.
    rng: Rng,
    /// Next connection id.
    next_conn: u32,
    /// Actions for the simulator.
    actions: VecDeque<Action>,
}

impl Baseline {
    /// A baseline client that connects at once.
    pub fn new(kind: BaselineKind, seed: u64) -> Self {
        let interval_ms = match kind {
            BaselineKind::Fixed { interval_ms } => interval_ms,
            BaselineKind::Mars => MARS_MIN,
        };
        Baseline {
            kind,
            state: State::Waiting(0),
            interval_ms,
            successes: 0,
            failures: 0,
            last_success: 0,
            stable: false,
            rng: Rng::new(seed),
            next_conn: 0,
            actions: VecDeque::new(),
        }
    }

    fn reconnect(&mut self, now: Millis, conn: ConnId) {
        self.actions.push_back(Action::Close { conn });
        self.state = State::Waiting(now + 1_000 + self.rng.below(2_000));
    }

    fn send_ping(&mut self, conn: ConnId) {
        self.actions.push_back(Action::Send {
            conn,
            frame: Frame::Ping(Ping {
                lease_ms: self.interval_ms,
            }),
        });
    }

    /// Mars: the ping at the current interval failed.
    fn mars_failure(&mut self) {
        self.successes = 0;
        self.failures += 1;
        if self.failures < 2 {
            return;
        }
        self.failures = 0;
        if self.stable {
            self.stable = false;
            self.interval_ms = MARS_MIN;
            self.last_success = 0;
        } else {
            self.interval_ms = self.last_success.saturating_sub(MARS_BACK).max(MARS_MIN);
            self.stable = true;
        }
    }

    /// Mars: a pong came back after a full interval.
    fn mars_success(&mut self) {
        self.failures = 0;
        self.last_success = self.last_success.max(self.interval_ms);
        if self.stable {
            return;
        }
        self.successes += 1;
        if self.successes >= 5 && self.interval_ms < MARS_MAX {
            self.successes = 0;
            self.interval_ms = (self.interval_ms + MARS_STEP).min(MARS_MAX);
        }
    }
}

impl Keeper for Baseline {
    fn connected(&mut self, _now: Millis, conn: ConnId) {
        if self.state == State::Starting(conn) {
            self.actions.push_back(Action::Send {
                conn,
                frame: Frame::Login(Login {
                    version: PROTOCOL_VERSION,
                    flags: 0,
                    user: "sim".into(),
                    device: "baseline".into(),
                    token: String::new(),
                    heartbeat_ms: self.interval_ms,
                    network_key: String::new(),
                }),
            });
        }
    }

    fn disconnected(&mut self, now: Millis, conn: ConnId) {
        match self.state {
            State::Starting(c) | State::Open { conn: c, .. } if c == conn => {
                self.reconnect(now, conn)
            }
            _ => {}
        }
    }

    fn handle_frame(&mut self, now: Millis, conn: ConnId, frame: Frame) {
        match (self.state, frame) {
            (State::Starting(c), Frame::LoginOk(_)) if c == conn => {
                let mars = self.kind == BaselineKind::Mars;
                self.state = State::Open {
                    conn,
                    next_ping: if mars {
                        now
                    } else {
                        now + u64::from(self.interval_ms)
                    },
                    pong_deadline: None,
                    missed: 0,
                    first: mars,
                };
            }
            (
                State::Open {
                    conn: c,
                    pong_deadline,
                    next_ping,
                    first,
                    ..
                },
                Frame::Pong(_),
            ) if c == conn => {
                // A pong for a ping sent after a full idle interval is a success at it.
                if self.kind == BaselineKind::Mars && pong_deadline.is_some() && !first {
                    self.mars_success();
                }
                self.state = State::Open {
                    conn,
                    next_ping: if self.kind == BaselineKind::Mars {
                        now + u64::from(self.interval_ms)
                    } else {
                        next_ping
                    },
                    pong_deadline: None,
                    missed: 0,
                    first: false,
                };
            }
            (
                State::Open { conn: c, .. } | State::Starting(c),
                Frame::Close(_) | Frame::Kick(_),
            ) if c == conn => self.reconnect(now, conn),
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Millis) {
        match self.state {
            State::Waiting(at) if now >= at => {
                self.next_conn += 1;
                let conn = ConnId(self.next_conn);
                self.state = State::Starting(conn);
                self.actions
                    .push_back(Action::Connect { conn, probe: false });
            }
            State::Open {
                conn,
                pong_deadline: Some(d),
                first,
                ..
            } if now >= d => {
                if !first {
                    self.mars_failure();
                }
                self.reconnect(now, conn);
            }
            State::Open {
                conn,
                next_ping,
                pong_deadline: None,
                missed,
                first,
            } if now >= next_ping => {
                if missed >= 5 {
                    return self.reconnect(now, conn);
                }
                self.send_ping(conn);
                self.state = match self.kind {
                    BaselineKind::Mars => State::Open {
                        conn,
                        next_ping,
                        pong_deadline: Some(now + MARS_PONG_TIMEOUT),
                        missed,
                        first,
                    },
                    BaselineKind::Fixed { interval_ms } => State::Open {
                        conn,
                        next_ping: now + u64::from(interval_ms),
                        pong_deadline: None,
                        missed: missed + 1,
                        first,
                    },
                };
            }
            _ => {}
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Millis> {
        match self.state {
            State::Waiting(at) => Some(at),
            State::Starting(_) => None,
            State::Open {
                pong_deadline: Some(d),
                ..
            } => Some(d),
            State::Open { next_ping, .. } => Some(next_ping),
        }
    }

    fn interval_ms(&self) -> u32 {
        self.interval_ms
    }
}
