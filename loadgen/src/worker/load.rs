//! The load phase of a worker: pushes, sends, upstream messages and churn, paced by the load
//! bucket, or the burst shape's rounds of pings; then the drain of results still in flight (and
//! of upstream messages still on their way to a sink, for protocols without results) and the
//! `LoadDone` report.

use rand::Rng;

use super::{emit, Burst, Worker, MAX_ACTIONS_PER_TURN};

/// Upstream over MQTT or NATS (no results to wait for): after the load, a worker holding a
/// sink waits until no message arrived for this long (bounded by the drain), so the messages
/// still on their way are counted in the load phase.
const SINK_QUIET_NS: u64 = 50_000_000;
use crate::clock::now_ns;
use crate::conn::{State, RECONNECT};
use crate::job::{Scenario, WorkerMsg};
use crate::payload;
use crate::stats::hist;

impl Worker {
    pub(super) fn load_step(&mut self, now: u64) {
        let Some(load) = self.load.as_mut() else {
            return;
        };
        if load.burst.is_some() && now < load.end_ns {
            self.burst_step(now);
            return;
        }
        if now >= load.end_ns {
            if let Some(b) = load.burst.take() {
                let missing = self.job.rounds.saturating_sub(b.started) as u64;
                if missing > 0 {
                    *self
                        .errors
                        .entry("burst rounds not played before the duration ended".into())
                        .or_default() += missing;
                }
            }
            let sink_waits = self.job.scenario == Scenario::Upstream
                && !self.job.protocol.upstream_has_result()
                && self.job.sinks > 0
                && now < load.end_ns.max(self.sink_last_ns) + SINK_QUIET_NS;
            let drained = self.inflight.is_empty() && !sink_waits;
            if drained || now >= load.end_ns + self.job.drain_ms * 1_000_000 {
                let missing = self.inflight.len() as u64;
                if missing > 0 {
                    *self
                        .errors
                        .entry("no result before the drain ended".into())
                        .or_default() += missing;
                    self.inflight.clear();
                }
                let counts = self.counters.since(&load.start);
                self.load = None;
                let sent = self
                    .emit_progress(now)
                    .and_then(|_| emit(&WorkerMsg::LoadDone(counts)));
                if let Err(e) = sent {
                    eprintln!("worker {}: cannot report: {e}", self.job.worker);
                    self.stopping = true;
                }
            }
            return;
        }
        let n = load.bucket.take(now).min(MAX_ACTIONS_PER_TURN);
        for _ in 0..n {
            match self.job.scenario {
                Scenario::Push => self.push_one(now),
                Scenario::Send => self.send_one(now),
                Scenario::Churn => self.churn_one(now),
                Scenario::Upstream => self.upstream_one(now),
                Scenario::Connect | Scenario::Idle => break,
            }
        }
    }

    /// A random slot of this worker that is logged in, if one is found in a few tries.
    fn random_ready(&mut self) -> Option<usize> {
        let users = self.job.users as usize;
        if users == 0 {
            return None;
        }
        (0..8)
            .map(|_| self.rng.gen_range(0..users))
            .find(|&s| self.conns[s].state == State::Ready)
    }

    fn push_one(&mut self, now: u64) {
        let Some(backend) = self.backend_slot() else {
            return;
        };
        if self.conns[backend].state != State::Ready || self.inflight.len() >= self.job.max_inflight
        {
            self.counters.skipped += 1;
            return;
        }
        let target = self.rng.gen_range(0..self.job.total_users.max(1)) as usize;
        let id = self.next_id;
        self.next_id += 1;
        let user = self.user_name(target);
        let body = payload::stamp(now_ns(), self.conns[backend].shard, self.job.payload);
        if self.send_with(backend, |wire, out| wire.push(id, &user, &body, out)) {
            // MQTT at QoS 0 and NATS answer nothing: only tether's pushes wait for a result.
            if self.job.protocol.push_has_result() {
                self.inflight.insert(id, now);
            }
            self.counters.pushes_sent += 1;
        }
    }

    fn send_one(&mut self, now: u64) {
        let total = self.job.total_users.max(2) as usize;
        let Some(slot) = self.random_ready() else {
            self.counters.skipped += 1;
            return;
        };
        if self.inflight.len() >= self.job.max_inflight {
            self.counters.skipped += 1;
            return;
        }
        let me = self.job.first_user as usize + slot;
        let mut target = self.rng.gen_range(0..total - 1);
        if target >= me {
            target += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        let to = self.user_name(target);
        let body = payload::stamp(now_ns(), self.conns[slot].shard, self.job.payload);
        if self.send_with(slot, |wire, out| wire.send(id, &to, &body, out)) {
            self.inflight.insert(id, now);
            self.counters.sends_sent += 1;
        }
    }

    fn churn_one(&mut self, now: u64) {
        let Some(slot) = self.random_ready() else {
            self.counters.skipped += 1;
            return;
        };
        self.close(slot);
        self.counters.churned += 1;
        self.open(slot, now);
        if self.conns[slot].state != State::Free {
            self.conns[slot].flags |= RECONNECT;
        }
    }
}

impl Worker {
    /// The burst shape: when the round in flight is answered (or has waited longer than the
    /// connect timeout, its missing pongs counted), starts the next round by pinging every
    /// logged-in client at once; after the last round, ends the load phase.
    fn burst_step(&mut self, now: u64) {
        let Some(load) = self.load.as_mut() else {
            return;
        };
        let Some(b) = load.burst.as_mut() else {
            return;
        };
        let timeout_ns = self.job.connect_timeout_ms * 1_000_000;
        if b.started > 0 && b.outstanding > 0 {
            if now < b.round_ns + timeout_ns {
                return;
            }
            let missing = b.outstanding;
            *self
                .errors
                .entry("pong not back within the burst round".into())
                .or_default() += missing;
        }
        if b.started >= self.job.rounds {
            // The last round is answered: the phase ends now.
            load.end_ns = now;
            load.burst = None;
            return;
        }
        b.started += 1;
        b.outstanding = 0;
        b.round_ns = now;
        let mut sent = 0;
        for slot in 0..self.job.users as usize {
            if self.ping(slot, now) {
                sent += 1;
            }
        }
        if let Some(b) = self.load.as_mut().and_then(|l| l.burst.as_mut()) {
            b.outstanding = sent;
        }
    }

    /// A pong arrived: in the burst shape, one fewer to wait for; the round's time is recorded
    /// when its last pong arrives.
    pub(super) fn burst_pong(&mut self, now: u64) {
        let Some(b) = self.load.as_mut().and_then(|l| l.burst.as_mut()) else {
            return;
        };
        if b.outstanding == 0 {
            return;
        }
        b.outstanding -= 1;
        if b.outstanding == 0 {
            let started = b.round_ns;
            self.hists.record_ns(hist::BURST_ROUND, started, now);
        }
    }
}

/// A fresh burst state for a load phase of the burst shape.
pub(super) fn new_burst() -> Burst {
    Burst {
        started: 0,
        outstanding: 0,
        round_ns: 0,
    }
}
