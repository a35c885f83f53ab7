//! The load phase of a worker: pushes, sends and churn, paced by the load bucket, then the
//! drain of results still in flight and the `LoadDone` report.

use rand::Rng;
use tether_proto::{BackendPush, Frame, Send};

use super::{emit, Worker, MAX_ACTIONS_PER_TURN};
use crate::clock::now_ns;
use crate::conn::{State, RECONNECT};
use crate::job::{Scenario, WorkerMsg};
use crate::payload;

impl Worker {
    pub(super) fn load_step(&mut self, now: u64) {
        let Some(load) = self.load.as_mut() else {
            return;
        };
        if now >= load.end_ns {
            let drained = self.inflight.is_empty();
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
        let frame = Frame::BackendPush(BackendPush {
            id,
            flags: 0,
            user: self.user_name(target),
            payload: payload::stamp(now_ns(), self.conns[backend].shard, self.job.payload).into(),
        });
        if self.send_frame(backend, &frame) {
            self.inflight.insert(id, now);
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
        let frame = Frame::Send(Send {
            to: self.user_name(target),
            client_id: id,
            payload: payload::stamp(now_ns(), self.conns[slot].shard, self.job.payload).into(),
        });
        if self.send_frame(slot, &frame) {
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
