//! Probe connections: short-lived second connections that measure one idle gap each.
//!
//! A probe logs in with the PROBE flag, sends `Probe { delay_ms }` and stays silent. The
//! server answers with `ProbeFire` after `delay_ms` of silence. If the NAT forgot the flow in
//! the meantime the byte is black-holed and never arrives: the gap failed. This tests the
//! downlink, the direction pushes depend on, and the main connection never goes silent for
//! longer than it has been verified to survive.

use std::collections::VecDeque;

use super::events::{Action, ConnId};
use crate::message::{Frame, Login, Probe};
use crate::Millis;

/// How a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// `ProbeFire` arrived: a gap of `delay_ms` survives.
    Fired {
        /// The probed gap.
        delay_ms: u32,
    },
    /// The byte did not arrive (or the flow was reset after the gap): the gap fails.
    Failed {
        /// The probed gap.
        delay_ms: u32,
    },
    /// The probe could not run (connect or login failed, closed early): no evidence.
    Aborted {
        /// The gap that was to be probed.
        delay_ms: u32,
    },
}

/// Where one probe connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Transport connecting, or `Login` sent; gives up at `deadline`.
    Starting {
        /// When the connection counts as failed.
        deadline: Millis,
        /// Whether the transport is up and `Login` went out.
        logging_in: bool,
    },
    /// `Probe` sent at `sent_at`; the fire must arrive by `deadline`.
    Armed {
        /// When `Probe` was sent.
        sent_at: Millis,
        /// `sent_at + delay + wait`.
        deadline: Millis,
    },
}

/// One probe connection.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProbeConn {
    /// The app's connection.
    conn: ConnId,
    /// The gap this probe measures.
    delay_ms: u32,
    /// Where it is.
    phase: Phase,
    /// How long to wait for the fire after the delay (RTT-based).
    wait_ms: u32,
}

/// The probes in flight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prober {
    /// Open probe connections.
    probes: Vec<ProbeConn>,
}

impl Prober {
    /// Asks the app for a probe connection `conn` measuring `delay_ms`.
    pub fn start(
        &mut self,
        now: Millis,
        conn: ConnId,
        delay_ms: u32,
        connect_timeout_ms: u32,
        wait_ms: u32,
        actions: &mut VecDeque<Action>,
    ) {
        self.probes.push(ProbeConn {
            conn,
            delay_ms,
            phase: Phase::Starting {
                deadline: now + u64::from(connect_timeout_ms),
                logging_in: false,
            },
            wait_ms,
        });
        actions.push_back(Action::Connect { conn, probe: true });
    }

    /// Whether `conn` is one of the probes.
    pub fn owns(&self, conn: ConnId) -> bool {
        self.probes.iter().any(|p| p.conn == conn)
    }

    /// Number of probes in flight.
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    /// The delays of the probes in flight.
    pub fn delays(&self) -> Vec<u32> {
        self.probes.iter().map(|p| p.delay_ms).collect()
    }

    /// Whether no probe is in flight.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// The transport of `conn` is up: log in as a probe.
    pub fn connected(&mut self, conn: ConnId, mut login: Login, actions: &mut VecDeque<Action>) {
        if let Some(p) = self.probes.iter_mut().find(|p| p.conn == conn) {
            if let Phase::Starting { logging_in, .. } = &mut p.phase {
                *logging_in = true;
                login.flags |= crate::message::login_flags::PROBE;
                login.heartbeat_ms = p.delay_ms;
                actions.push_back(Action::Send {
                    conn,
                    frame: Frame::Login(login),
                });
            }
        }
    }

    /// A frame arrived on probe `conn`.
    pub fn handle_frame(
        &mut self,
        now: Millis,
        conn: ConnId,
        frame: &Frame,
        actions: &mut VecDeque<Action>,
    ) -> Option<ProbeOutcome> {
        let i = self.probes.iter().position(|p| p.conn == conn)?;
        let p = &mut self.probes[i];
        match (frame, p.phase) {
            (Frame::LoginOk(_), Phase::Starting { .. }) => {
                p.phase = Phase::Armed {
                    sent_at: now,
                    deadline: now + u64::from(p.delay_ms) + u64::from(p.wait_ms),
                };
                actions.push_back(Action::Send {
                    conn,
                    frame: Frame::Probe(Probe {
                        delay_ms: p.delay_ms,
                    }),
                });
                None
            }
            (Frame::ProbeFire, Phase::Armed { .. }) => Some(self.finish(i, fired, actions)),
            // The server ended it: the path works, so this says nothing about the gap.
            (Frame::Close(_) | Frame::Kick(_), _) => Some(self.finish(i, aborted, actions)),
            _ => None,
        }
    }

    /// The transport of probe `conn` closed or failed to connect.
    pub fn disconnected(
        &mut self,
        now: Millis,
        conn: ConnId,
        actions: &mut VecDeque<Action>,
    ) -> Option<ProbeOutcome> {
        let i = self.probes.iter().position(|p| p.conn == conn)?;
        // A reset after the gap elapsed is what a NAT that answers with RST looks like.
        let failed = matches!(self.probes[i].phase,
            Phase::Armed { sent_at, .. } if now >= sent_at + u64::from(self.probes[i].delay_ms));
        let p = self.probes.swap_remove(i);
        actions.push_back(Action::Close { conn: p.conn });
        Some(if failed {
            ProbeOutcome::Failed {
                delay_ms: p.delay_ms,
            }
        } else {
            aborted(p.delay_ms)
        })
    }

    /// Ends probes whose deadline passed; returns their outcomes.
    pub fn handle_timeout(
        &mut self,
        now: Millis,
        actions: &mut VecDeque<Action>,
    ) -> Vec<ProbeOutcome> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.probes.len() {
            let p = &self.probes[i];
            match p.phase {
                Phase::Starting { deadline, .. } if now >= deadline => {
                    out.push(ProbeOutcome::Aborted {
                        delay_ms: p.delay_ms,
                    });
                    actions.push_back(Action::Close { conn: p.conn });
                    self.probes.swap_remove(i);
                }
                Phase::Armed { deadline, .. } if now >= deadline => {
                    out.push(self.finish(i, failed, actions));
                }
                _ => i += 1,
            }
        }
        out
    }

    /// Closes probes whose delay makes them pointless: `pred(delay)` true.
    pub fn cancel_where(&mut self, pred: impl Fn(u32) -> bool, actions: &mut VecDeque<Action>) {
        self.probes.retain(|p| {
            let cancel = pred(p.delay_ms);
            if cancel {
                actions.push_back(Action::Close { conn: p.conn });
            }
            !cancel
        });
    }

    /// The earliest deadline among the probes.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.probes
            .iter()
            .map(|p| match p.phase {
                Phase::Starting { deadline, .. } | Phase::Armed { deadline, .. } => deadline,
            })
            .min()
    }

    fn finish(
        &mut self,
        i: usize,
        outcome: fn(u32) -> ProbeOutcome,
        actions: &mut VecDeque<Action>,
    ) -> ProbeOutcome {
        let p = self.probes.swap_remove(i);
        actions.push_back(Action::Close { conn: p.conn });
        outcome(p.delay_ms)
    }
}

fn fired(delay_ms: u32) -> ProbeOutcome {
    ProbeOutcome::Fired { delay_ms }
}

fn failed(delay_ms: u32) -> ProbeOutcome {
    ProbeOutcome::Failed { delay_ms }
}

fn aborted(delay_ms: u32) -> ProbeOutcome {
    ProbeOutcome::Aborted { delay_ms }
}
