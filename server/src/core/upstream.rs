//! Upstream messages on a shard: from a client's main connection to the app's backend, and its
//! one result back (see `crate::upstream` for the sinks).
//!
//! On the client's shard: [`Core::on_upstream`] checks the message (the connection's messages
//! in flight, size, drain, the sink) and hands it on; every message the client sent is counted
//! in the connection's `owed` until [`Core::finish_upstream`] writes its `UpstreamResult`.
//!
//! With sink `backends`, the message goes to a backend connection that logged in with the
//! `UPSTREAM` flag: one on the client's own shard when it has any (no mesh hop, no other shard
//! woken), else on any shard; every shard knows every shard's list ([`Backends`]) and picks one
//! per sender user by rendezvous hashing, so a user's messages keep to one backend while the
//! set is unchanged and several backends share the users. The shard holding that backend
//! connection writes `UpstreamDeliver` and keeps the delivery in flight ([`InFlight`]) until the
//! backend's `UpstreamAnswer`, `upstream.timeout_ms`, or the backend connection's end (both
//! `TimedOut`: the backend may or may not have processed it). Messages of one connection leave
//! its shard in order, cross at most one mesh channel (FIFO) and are written to one backend
//! connection in order, so they reach the backend in the order they were sent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tether_proto::{RefuseReason, Upstream, UpstreamAnswer, UpstreamDeliver, UpstreamResult};
use tracing::debug;

use super::conn::{flag, Kind};
use super::msg::{Outcome, UpstreamJob};
use super::msg::{Post, ShardMsg, UpstreamOrigin};
use super::{Command, ConnId, Core, Flow, Now};
use crate::counters::Counter;
use crate::routing::fnv1a64;
use crate::upstream::Sink;

/// The `[upstream]` rules a shard applies.
#[derive(Clone, Debug)]
pub struct UpstreamRules {
    /// Where messages go.
    pub sink: Sink,
    /// Largest payload.
    pub max_payload: usize,
    /// Largest backend reply passed on.
    pub max_reply_bytes: usize,
    /// Messages one connection may have waiting for their results.
    pub max_in_flight_per_connection: u32,
    /// Deliveries this shard's backend connections may have unanswered at once.
    pub max_in_flight: usize,
    /// How long a delivery waits for its answer.
    pub timeout_ms: u64,
}

impl UpstreamRules {
    /// The rules of an `[upstream]` section on a server whose frames are at most `max_frame`.
    pub fn of(cfg: &crate::upstream::UpstreamConfig, max_frame: usize) -> UpstreamRules {
        UpstreamRules {
            sink: cfg.sink,
            max_payload: cfg.payload_limit(max_frame),
            max_reply_bytes: cfg.reply_limit(max_frame),
            max_in_flight_per_connection: cfg.max_in_flight_per_connection,
            max_in_flight: cfg.max_in_flight,
            timeout_ms: cfg.timeout_ms,
        }
    }
}

impl Default for UpstreamRules {
    fn default() -> Self {
        UpstreamRules {
            sink: Sink::Backends,
            max_payload: 16_384,
            max_reply_bytes: 1024,
            max_in_flight_per_connection: 64,
            max_in_flight: 65_536,
            timeout_ms: 10_000,
        }
    }
}

/// The backend connections that take upstream messages, on every shard.
#[derive(Debug, Default)]
pub(super) struct Backends {
    /// `lists[s]`: shard s's backends as (slab key, generation), as s last told (this
    /// shard's own list is kept here too).
    lists: Vec<Arc<[(u32, u32)]>>,
    /// This shard's list changed since the other shards were last told.
    pub(super) dirty: bool,
}

impl Backends {
    /// The backend for messages of `user`, sent from shard `here` (the user's home shard: all
    /// its main connections live there). A backend on `here` is preferred, so the message and
    /// its result cross no mesh channel and wake no other shard; only when `here` has none do
    /// the other shards' backends count. Among the candidates the one with the highest
    /// rendezvous score wins, so a user keeps to one backend while the set is unchanged and
    /// adding or removing a backend moves only the users whose best one changed.
    fn pick(&self, user: &str, here: usize) -> Option<(usize, ConnId)> {
        let local = self.lists.get(here).filter(|l| !l.is_empty());
        match local {
            Some(list) => Self::best(user, std::iter::once((here, list))),
            None => Self::best(user, self.lists.iter().enumerate()),
        }
    }

    fn best<'a>(
        user: &str,
        lists: impl Iterator<Item = (usize, &'a Arc<[(u32, u32)]>)>,
    ) -> Option<(usize, ConnId)> {
        let u = fnv1a64(user.as_bytes());
        let mut best: Option<(u64, usize, ConnId)> = None;
        for (shard, list) in lists {
            for &(key, gen) in list.iter() {
                let score =
                    mix(u ^ mix(((shard as u64) << 58) ^ (u64::from(gen) << 32) ^ u64::from(key)));
                if best.map_or(true, |(b, _, _)| score > b) {
                    best = Some((score, shard, ConnId { key, gen }));
                }
            }
        }
        best.map(|(_, shard, id)| (shard, id))
    }
}

/// A 64-bit finalizer (splitmix64's): spreads the scores of similar inputs.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A delivery written to a backend connection of this shard, waiting for its answer.
#[derive(Debug)]
pub(super) struct InFlight {
    /// The client connection and its `client_id`.
    origin: UpstreamOrigin,
    /// The backend connection it was written to: only it may answer.
    backend: ConnId,
}

/// The sink side of upstream messages on one shard.
#[derive(Debug, Default)]
pub(super) struct UpstreamTable {
    /// Every shard's upstream backends.
    pub(super) backends: Backends,
    /// Deliveries waiting for an answer, by delivery id.
    in_flight: HashMap<u64, InFlight>,
    /// (deadline, delivery id) in delivery order, which is deadline order; may hold ids already
    /// answered (skipped when they come up).
    expiry: VecDeque<(u64, u64)>,
    /// Next delivery id.
    next_id: u64,
}

impl Core {
    /// A client sent an upstream message: check it and hand it to the sink, or answer it now.
    pub(super) fn on_upstream(&mut self, id: ConnId, up: Upstream, now: Now) {
        self.counters.inc(Counter::UpstreamIn);
        let origin = UpstreamOrigin {
            conn: self.node_key(id),
            client_id: up.client_id,
        };
        let rules = &self.cfg.upstream;
        let (sink, max_payload, per_conn) = (
            rules.sink,
            rules.max_payload,
            rules.max_in_flight_per_connection,
        );
        let conn = self.conns.at(id.key);
        if conn.kind != Kind::Client {
            // The session lets only a main client connection send these.
            return;
        }
        if conn.owed >= per_conn {
            // Answered without counting against the bound it is refused for.
            conn.owed += 1;
            return self.finish_upstream(origin, Outcome::refused(RefuseReason::RateLimited), now);
        }
        conn.owed += 1;
        let refuse = if self.draining {
            Some(RefuseReason::ShuttingDown)
        } else if sink == Sink::Off {
            Some(RefuseReason::NotAllowed)
        } else if up.payload.len() > max_payload {
            Some(RefuseReason::TooLarge)
        } else {
            None
        };
        if let Some(reason) = refuse {
            return self.finish_upstream(origin, Outcome::refused(reason), now);
        }
        let conn = self.conns.at(id.key);
        let job = UpstreamJob {
            origin,
            user: conn.user.as_deref().unwrap_or_default().to_string(),
            device: self.devices.name(conn.device).to_string(),
            session_id: conn.session_id,
            payload: up.payload,
        };
        match sink {
            Sink::Backends => self.route_upstream(job, now),
            Sink::Webhook | Sink::Nats => {
                self.out.push(Command::Post(Post::Upstream(Box::new(job))));
            }
            Sink::Off => {}
        }
    }

    /// Sends a message to the backend connection its user maps to.
    fn route_upstream(&mut self, job: UpstreamJob, now: Now) {
        let origin = job.origin;
        let Some((shard, target)) = self.upstream.backends.pick(&job.user, self.me) else {
            return self.finish_upstream(origin, Outcome::refused(RefuseReason::NoBackend), now);
        };
        if shard == self.me {
            return self.deliver_upstream(job, target, now);
        }
        self.post_to(shard, ShardMsg::Upstream(Box::new(job), target));
    }

    /// Writes a message to backend connection `target` of this shard (or, if it just left,
    /// to the best other one here) and keeps it in flight until its answer.
    pub(super) fn deliver_upstream(&mut self, job: UpstreamJob, target: ConnId, now: Now) {
        let origin = job.origin;
        let live = |core: &Core, id: ConnId| {
            core.conns
                .get(id)
                .is_some_and(|c| c.flags & (flag::UPSTREAM | flag::CLOSING) == flag::UPSTREAM)
        };
        let backend = if live(self, target) {
            Some(target)
        } else {
            // The sender's shard had not heard yet that it left: a backend of this shard takes it.
            let me = self.me;
            let own = self.upstream.backends.lists.get(me).cloned();
            let mut lists = vec![Arc::from(&[][..]); me + 1];
            lists[me] = own.unwrap_or_else(|| Arc::from(&[][..]));
            let local = Backends {
                lists,
                dirty: false,
            };
            local
                .pick(&job.user, me)
                .map(|(_, id)| id)
                .filter(|&id| live(self, id))
        };
        let Some(backend) = backend else {
            return self.upstream_result(origin, Outcome::refused(RefuseReason::NoBackend), now);
        };
        if self.upstream.in_flight.len() >= self.cfg.upstream.max_in_flight {
            return self.upstream_result(origin, Outcome::refused(RefuseReason::Overloaded), now);
        }
        let id = self.upstream.next_id;
        self.upstream.next_id += 1;
        let deliver = UpstreamDeliver {
            id,
            user: job.user,
            device: job.device,
            session_id: job.session_id,
            client_id: origin.client_id,
            payload: job.payload,
        };
        if self
            .conns
            .at(backend.key)
            .session
            .upstream_deliver(deliver)
            .is_err()
        {
            return self.upstream_result(origin, Outcome::refused(RefuseReason::NoBackend), now);
        }
        self.counters.inc(Counter::UpstreamToBackend);
        let deadline = now.ms.saturating_add(self.cfg.upstream.timeout_ms);
        self.upstream
            .in_flight
            .insert(id, InFlight { origin, backend });
        self.upstream.expiry.push_back((deadline, id));
        // A backend cut for being slow fails this delivery through `upstream_backend_left`.
        self.flush(backend, now);
    }

    /// A backend answered delivery `answer.id`.
    pub(super) fn on_upstream_answer(&mut self, from: ConnId, answer: UpstreamAnswer, now: Now) {
        let Some(entry) = self.upstream.in_flight.get(&answer.id) else {
            // Answered after its timeout (the client was told TimedOut), or never sent.
            self.counters.inc(Counter::UpstreamAnswerUnknown);
            return;
        };
        if entry.backend != from {
            debug!(
                key = from.key,
                id = answer.id,
                "answer for another connection's delivery"
            );
            self.counters.inc(Counter::UpstreamAnswerNotOwner);
            if let Some(conn) = self.conns.get_mut(from) {
                let _ = conn.session.close(tether_proto::CloseCode::ProtocolError);
            }
            return;
        }
        let Some(entry) = self.upstream.in_flight.remove(&answer.id) else {
            return;
        };
        let (outcome, dropped) = Outcome::answered(
            answer.accepted,
            answer.reply,
            self.cfg.upstream.max_reply_bytes,
        );
        if dropped {
            self.counters.inc(Counter::UpstreamReplyDropped);
        }
        self.upstream_result(entry.origin, outcome, now);
    }

    /// Sends an upstream message's result to its client's shard.
    pub(super) fn upstream_result(&mut self, origin: UpstreamOrigin, outcome: Outcome, now: Now) {
        let to = usize::from(origin.conn.shard);
        if to == self.me {
            return self.finish_upstream(origin, outcome, now);
        }
        let msg = ShardMsg::UpstreamResult {
            origin,
            outcome: Box::new(outcome),
        };
        self.post_to(to, msg);
    }

    /// Writes an upstream message's one result to its client, if the connection is still here.
    pub(super) fn finish_upstream(&mut self, origin: UpstreamOrigin, outcome: Outcome, now: Now) {
        self.counters.upstream_outcome(outcome.status);
        let id = origin.conn.handle;
        let Some(conn) = self
            .conns
            .get_mut(id)
            .filter(|c| c.flags & flag::CLOSING == 0)
        else {
            self.counters.inc(Counter::ResultOrphaned);
            return;
        };
        conn.owed = conn.owed.saturating_sub(1);
        let result = UpstreamResult {
            client_id: origin.client_id,
            status: outcome.status,
            reply: outcome.reply,
        };
        if conn.session.upstream_result(result).is_err() {
            self.counters.inc(Counter::ResultOrphaned);
            return;
        }
        let _: Flow = self.flush(id, now);
    }

    /// A backend connection that takes upstream messages logged in here.
    pub(super) fn upstream_backend_joined(&mut self, id: ConnId) {
        self.conns.at(id.key).flags |= flag::UPSTREAM;
        self.edit_local_backends(|list| list.push((id.key, id.gen)));
    }

    /// Backend connection `key` is closing, or half-closed (it can answer nothing more): it
    /// takes no more messages, and what it was sent and did not answer is `TimedOut` (it may
    /// or may not have processed it).
    pub(super) fn upstream_backend_left(&mut self, key: u32) {
        let conn = self.conns.at(key);
        conn.flags &= !flag::UPSTREAM;
        let gen = conn.gen;
        self.edit_local_backends(|list| list.retain(|&(k, g)| (k, g) != (key, gen)));
        let lost: Vec<u64> = self
            .upstream
            .in_flight
            .iter()
            .filter(|(_, f)| f.backend.key == key && f.backend.gen == gen)
            .map(|(&id, _)| id)
            .collect();
        let now = self.clock;
        for id in lost {
            if let Some(f) = self.upstream.in_flight.remove(&id) {
                self.upstream_result(f.origin, Outcome::refused(RefuseReason::TimedOut), now);
            }
        }
    }

    fn edit_local_backends(&mut self, edit: impl FnOnce(&mut Vec<(u32, u32)>)) {
        let me = self.me;
        let lists = &mut self.upstream.backends.lists;
        if lists.len() < self.shards {
            lists.resize(self.shards, Arc::from(&[][..]));
        }
        let mut list = lists[me].to_vec();
        edit(&mut list);
        lists[me] = Arc::from(list);
        self.upstream.backends.dirty = self.shards > 1;
    }

    /// Shard `shard`'s backends changed.
    pub(super) fn on_upstream_backends(&mut self, shard: u16, conns: Arc<[(u32, u32)]>) {
        let lists = &mut self.upstream.backends.lists;
        if lists.len() < self.shards {
            lists.resize(self.shards, Arc::from(&[][..]));
        }
        if let Some(slot) = lists.get_mut(usize::from(shard)) {
            *slot = conns;
        }
    }

    /// At the tick: deliveries past their timeout are `TimedOut`, and a changed list of this
    /// shard's backends goes to the other shards (retried at the next tick where a channel is
    /// full).
    pub(super) fn upstream_tick(&mut self, now: Now) {
        while let Some(&(deadline, id)) = self.upstream.expiry.front() {
            if deadline > now.ms {
                break;
            }
            self.upstream.expiry.pop_front();
            if let Some(f) = self.upstream.in_flight.remove(&id) {
                self.upstream_result(f.origin, Outcome::refused(RefuseReason::TimedOut), now);
            }
        }
        if self.upstream.expiry.len() > 2 * self.upstream.in_flight.len() + 1024 {
            let in_flight = &self.upstream.in_flight;
            self.upstream
                .expiry
                .retain(|(_, id)| in_flight.contains_key(id));
        }
        if !self.upstream.backends.dirty {
            return;
        }
        let me = self.me;
        let list = self.upstream.backends.lists.get(me).cloned();
        let list = list.unwrap_or_else(|| Arc::from(&[][..]));
        // A list the mesh gives back marks it dirty again (`on_undelivered`).
        self.upstream.backends.dirty = false;
        for shard in (0..self.shards).filter(|&s| s != me) {
            let msg = ShardMsg::UpstreamBackends {
                shard: me as u16,
                conns: Arc::clone(&list),
            };
            self.post_to(shard, msg);
        }
    }

    /// Deliveries waiting for a backend's answer on this shard.
    pub fn upstream_in_flight(&self) -> usize {
        self.upstream.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(lists: Vec<Vec<(u32, u32)>>) -> Backends {
        Backends {
            lists: lists.into_iter().map(Arc::from).collect(),
            dirty: false,
        }
    }

    #[test]
    fn a_user_keeps_its_backend_and_users_spread_over_backends() {
        let b = backends(vec![vec![(1, 1), (2, 1)], vec![(1, 1)]]);
        let mut seen = std::collections::HashSet::new();
        for i in 0..300 {
            let user = format!("user-{i}");
            let first = b.pick(&user, 0).unwrap();
            assert_eq!(b.pick(&user, 0), Some(first));
            assert_eq!(first.0, 0, "a backend on the user's own shard is preferred");
            seen.insert(first);
            assert_eq!(b.pick(&user, 1).unwrap().0, 1);
        }
        assert_eq!(seen.len(), 2, "every local backend takes some users");
        // A shard without backends uses every shard's.
        let far = backends(vec![vec![], vec![(1, 1), (2, 1)], vec![(7, 1)]]);
        let spread: std::collections::HashSet<_> = (0..300)
            .map(|i| far.pick(&format!("user-{i}"), 0).unwrap())
            .collect();
        assert_eq!(spread.len(), 3);
        assert_eq!(backends(vec![vec![], vec![]]).pick("a", 0), None);
    }

    #[test]
    fn removing_a_backend_moves_only_its_users() {
        let before = backends(vec![vec![(1, 1), (2, 1), (3, 1)]]);
        let after = backends(vec![vec![(1, 1), (3, 1)]]);
        for i in 0..300 {
            let user = format!("user-{i}");
            let (_, was) = before.pick(&user, 0).unwrap();
            let (_, now) = after.pick(&user, 0).unwrap();
            if was.key != 2 {
                assert_eq!(was, now, "{user} moved although its backend stayed");
            }
        }
    }
}
