//! Pushes and sends: from the sender's connection to the target user's home shard, to every
//! device connection there, and the result back to the sender.
//!
//! Every routed push ends in exactly one outcome, counted by the shard that decides it:
//! `Delivered(n)` once its bytes were handed to `n` device sockets (the sends completed),
//! `Offline` when no device connection holds it (none there, or each closed before its bytes
//! left), or refused with a reason; an `Acked` result follows when the sender asked for it and
//! a device the push was written to acknowledged it.

use bytes::Bytes;
use tether_proto::{limits, CloseCode, PushStatus, RefuseReason};
use tracing::debug;

use super::conn::{flag, Kind};
use super::msg::{
    ClusterEvent, ConnKey, ConnOrigin, Origin, Post, RoutedPush, SendFrom, Sent, ShardMsg,
};
use super::{Command, ConnId, Core, Flow, Now};
use crate::core::acks::AckCheck;
use crate::counters::Counter;
use crate::routing::shard_for;

/// Bytes a `Push` body adds to its payload at most (the id's varint).
const PUSH_OVERHEAD: usize = 10;

impl Core {
    /// Connection `id` of this shard, as the rest of the node names it.
    pub(super) fn node_key(&self, id: ConnId) -> ConnKey {
        ConnKey {
            shard: self.me as u16,
            handle: id,
        }
    }

    /// A client's `Send`: refused unless `[send] enabled`; its recipients see who sent it;
    /// unless `[send] reveal_presence`, a version-2 sender is told `Accepted` at once (what
    /// happens next is counted, not told) and a version-1 sender, whose protocol has no such
    /// answer, is refused.
    pub(super) fn on_send(&mut self, id: ConnId, send: tether_proto::Send, now: Now) {
        let origin = Origin::Conn(ConnOrigin {
            conn: self.node_key(id),
            sent: Sent::Send,
            id: send.client_id,
        });
        let conn = self.conns.at(id.key);
        let v2 = conn.session.version() >= tether_proto::PROTOCOL_V2;
        let rules = &self.cfg.send;
        if !rules.enabled || (!rules.reveal_presence && !v2) {
            self.counters.inc(Counter::PushIn);
            conn.owed += 1;
            return self.complete(origin, PushStatus::Refused(RefuseReason::NotAllowed), now);
        }
        let from = Box::new(SendFrom {
            user: conn.user.as_deref().unwrap_or_default().to_string(),
            device: self.devices.name(conn.device).to_string(),
        });
        let origin = if rules.reveal_presence {
            origin
        } else {
            // Told now, before anything about the target is known.
            if let Ok(()) = conn.session.send_result(tether_proto::SendResult {
                client_id: send.client_id,
                status: PushStatus::Accepted,
            }) {
                self.counters.inc(Counter::SendAccepted);
                let _: Flow = self.flush(id, now);
            }
            Origin::Untold
        };
        self.route(origin, send.to, send.payload, false, Some(from), now);
    }

    /// Routes a push (or send) for `user` to its home shard: handled here when this is the
    /// home, otherwise one mesh hop away ([`Core::at_home`] there). A full channel refuses it
    /// with `Overloaded`; a draining server refuses new pushes with `ShuttingDown`.
    pub(super) fn route(
        &mut self,
        origin: Origin,
        user: String,
        payload: Bytes,
        want_ack: bool,
        from: Option<Box<SendFrom>>,
        now: Now,
    ) {
        self.counters.inc(Counter::PushIn);
        // The sender is owed a result (a backend that half-closes is answered first); an
        // untold sender was answered already. A backend connection with
        // `backend_max_in_flight` results owed is refused at once (its refusal is owed too).
        let limit = self.cfg.backend_max_in_flight;
        match origin {
            Origin::Conn(by) => {
                if let Some(conn) = self.conns.get_mut(by.conn.handle) {
                    let backend = by.sent == Sent::BackendPush;
                    let over = backend && limit > 0 && conn.owed >= limit;
                    conn.owed += 1;
                    if over {
                        let status = PushStatus::Refused(RefuseReason::RateLimited);
                        return self.complete(origin, status, now);
                    }
                }
            }
            Origin::Untold | Origin::Api { .. } | Origin::Cluster { .. } => {}
        }
        if self.draining {
            let status = PushStatus::Refused(RefuseReason::ShuttingDown);
            return self.complete(origin, status, now);
        }
        if user.is_empty() || user.len() > limits::USER_MAX {
            return self.complete(origin, PushStatus::Refused(RefuseReason::BadTarget), now);
        }
        if payload.len() + PUSH_OVERHEAD > self.cfg.max_frame {
            return self.complete(origin, PushStatus::Refused(RefuseReason::TooLarge), now);
        }
        let push = RoutedPush {
            origin,
            user,
            payload,
            want_ack,
            from,
        };
        let home = shard_for(&push.user, self.shards);
        if home == self.me {
            return self.at_home(push, now);
        }
        self.post_to(home, ShardMsg::Push(Box::new(push)));
    }

    /// A push at its user's home shard: delivered here, as on a lone node, unless this node is
    /// in a cluster and the user has no local-only note of the current cluster epoch (another
    /// node may hold a device: `cluster/local.rs`). Then the cluster thread reads the
    /// directory and fans it out (this node's part comes back with a cluster origin, and is
    /// delivered here) and answers the origin itself.
    fn at_home(&mut self, push: RoutedPush, now: Now) {
        let RoutedPush {
            origin,
            user,
            payload,
            want_ack,
            from,
        } = push;
        // A cluster origin is the cluster thread's fan-out already.
        let fanned_out = match origin {
            Origin::Cluster { .. } => true,
            Origin::Conn(_) | Origin::Untold | Origin::Api { .. } => false,
        };
        if let (Some(epoch), false) = (&self.cfg.cluster, fanned_out) {
            if self.users.local_only(&user, epoch.current()) {
                self.counters.inc(Counter::ClusterLocalFirst);
            } else {
                let event = ClusterEvent::Push {
                    origin,
                    user,
                    payload,
                    want_ack,
                    sender: from,
                };
                self.out.push(Command::Post(Post::Cluster(event)));
                return;
            }
        }
        if let Some(status) = self.deliver(&user, payload, origin, want_ack, from, now) {
            self.complete(origin, status, now);
        }
    }

    /// Posts `msg` to shard `to` (what happens when its channel is full is decided in
    /// [`Core::on_undelivered`]).
    pub(super) fn post_to(&mut self, to: usize, msg: ShardMsg) {
        self.out.push(Command::Post(Post::Shard {
            to,
            msg,
            parked: false,
        }));
    }

    /// Writes a push to every main connection of `user` on this shard (its home). The result
    /// is decided now when no device takes it (`Offline`, or `Refused(SlowConsumer)` when every
    /// device's queue overflowed); otherwise once every device's bytes have left or failed
    /// ([`Core::settle`]), and `None` is returned.
    pub(super) fn deliver(
        &mut self,
        user: &str,
        payload: Bytes,
        origin: Origin,
        want_ack: bool,
        from: Option<Box<SendFrom>>,
        now: Now,
    ) -> Option<PushStatus> {
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        keys.extend_from_slice(self.users.get(user));
        let id = self.next_push_id;
        self.next_push_id += 1;
        let mut written: Vec<ConnId> = Vec::new();
        let mut refused = 0u32;
        for &key in &keys {
            let Some(conn_id) = self.conns.id_at(key) else {
                continue;
            };
            let conn = self.conns.at(key);
            let queued = match &from {
                None => conn.session.push(id, payload.clone()),
                // A version-1 device cannot show who sent it: it gets nothing.
                Some(_) if conn.session.version() < tether_proto::PROTOCOL_V2 => continue,
                Some(sender) => conn.session.message(tether_proto::Message {
                    id,
                    from_user: sender.user.clone(),
                    from_device: sender.device.clone(),
                    payload: payload.clone(),
                }),
            };
            if queued.is_err() {
                continue;
            }
            let was_sending = conn.flags & flag::SENDING != 0;
            self.counters.inc(Counter::DeviceFrames);
            if self.flush(conn_id, now) == Flow::Gone {
                refused += 1;
                continue;
            }
            let ext = self.conns.at(key).ext.get_or_insert_with(Box::default);
            if was_sending {
                ext.queued.push(id);
            } else {
                ext.in_flight.push(id);
            }
            written.push(conn_id);
        }
        self.scratch = keys;
        if written.is_empty() {
            return Some(if refused > 0 {
                PushStatus::Refused(RefuseReason::SlowConsumer)
            } else {
                PushStatus::Offline
            });
        }
        if want_ack && !self.acks.insert(id, origin, &written, now.ms) {
            self.counters.inc(Counter::AckUntracked);
        }
        self.pending.insert(
            id,
            PendingPush {
                origin,
                outstanding: written.len() as u32,
                delivered: 0,
                failed_slow: refused > 0,
                acked: false,
                since_us: now.us,
            },
        );
        None
    }

    /// The bytes of pushes `ids` to one connection left, or never will: when the
    /// last device of a push is settled, its result goes to the sender.
    pub(super) fn settle(&mut self, ids: &[u64], how: Settled, now: Now) {
        for &id in ids {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            p.outstanding -= 1;
            match how {
                Settled::Sent => p.delivered += 1,
                Settled::Failed { slow } => p.failed_slow |= slow,
            }
            if p.outstanding > 0 {
                continue;
            }
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            let status = if p.delivered > 0 {
                PushStatus::Delivered(p.delivered)
            } else if self.draining {
                PushStatus::Refused(RefuseReason::ShuttingDown)
            } else if p.failed_slow {
                PushStatus::Refused(RefuseReason::SlowConsumer)
            } else {
                PushStatus::Offline
            };
            if p.delivered == 0 {
                self.counters.inc(Counter::PushLostInFlight);
            }
            self.latencies
                .push
                .record(now.us.saturating_sub(p.since_us), 1);
            self.complete(p.origin, status, now);
            if p.acked && p.delivered > 0 {
                self.complete(p.origin, PushStatus::Acked, now);
            }
        }
    }

    /// Counts the outcome of a push here, where it was decided, and sends it to its origin.
    pub(super) fn complete(&mut self, origin: Origin, status: PushStatus, now: Now) {
        self.counters.outcome(status);
        // A connection's push is answered on that connection, through its shard; API pushes
        // on the control plane's result channel, cluster pushes on the cluster thread's.
        match origin {
            Origin::Conn(origin) => {
                let shard = usize::from(origin.conn.shard);
                if shard == self.me {
                    return self.deliver_result(origin, status, now);
                }
                self.post_to(shard, ShardMsg::Result { origin, status });
            }
            Origin::Untold => {}
            Origin::Api { id } => self.api_result(id, status),
            Origin::Cluster { id } => self.cluster_result(id, status),
        }
    }

    /// Writes a result to the connection that sent the push, if it is still here.
    pub(super) fn deliver_result(&mut self, origin: ConnOrigin, status: PushStatus, now: Now) {
        let id = origin.conn.handle;
        let Some(conn) = self
            .conns
            .get_mut(id)
            .filter(|c| c.flags & flag::CLOSING == 0)
        else {
            self.counters.inc(Counter::ResultOrphaned);
            return;
        };
        if status != PushStatus::Acked {
            conn.owed = conn.owed.saturating_sub(1);
        }
        let queued = match origin.sent {
            Sent::BackendPush => conn.session.push_result(tether_proto::PushResult {
                id: origin.id,
                status,
            }),
            Sent::Send => conn.session.send_result(tether_proto::SendResult {
                client_id: origin.id,
                status,
            }),
        };
        if queued.is_err() {
            self.counters.inc(Counter::ResultOrphaned);
            return;
        }
        if self.flush(id, now) == Flow::Gone {
            return;
        }
        let conn = self.conns.at(id.key);
        if conn.flags & flag::HALF_CLOSED != 0 && conn.owed == 0 {
            // A backend that half-closed has every result it was owed: finish it.
            self.counters.close(CloseCode::Normal, true);
            if conn.flags & flag::SENDING == 0 {
                self.teardown(id);
            } else {
                self.finish(id, now);
            }
        }
    }

    /// Connection `from` acknowledged push `push_id`: tell the sender if it asked. Only a
    /// connection the push was written to may acknowledge it; any other ack of a tracked push
    /// is a protocol error.
    pub(super) fn on_ack(&mut self, from: ConnId, push_id: u64, now: Now) {
        self.counters.inc(Counter::PushAcked);
        match self.acks.take(push_id, from) {
            AckCheck::First(origin) => match self.pending.get_mut(&push_id) {
                // Acknowledged before its send's completion was seen: Acked follows Delivered.
                Some(p) => p.acked = true,
                None => self.complete(origin, PushStatus::Acked, now),
            },
            AckCheck::Untracked => {}
            AckCheck::NotRecipient => {
                debug!(
                    key = from.key,
                    push_id, "ack of a push this connection never got"
                );
                self.counters.inc(Counter::AckNotRecipient);
                if let Some(conn) = self.conns.get_mut(from) {
                    if conn.kind == Kind::Client {
                        let _ = conn.session.close(CloseCode::ProtocolError);
                    }
                }
            }
        }
    }

    /// Handles one message from another shard, the cluster thread or the upstream thread.
    pub fn on_mesh(&mut self, msg: ShardMsg, now: Now) {
        self.clock = now;
        self.counters.inc(Counter::MeshIn);
        match msg {
            ShardMsg::Push(p) => self.at_home(*p, now),
            ShardMsg::Result { origin, status } => self.deliver_result(origin, status, now),
            ShardMsg::Upstream(job, target) => self.deliver_upstream(*job, target, now),
            ShardMsg::UpstreamResult { origin, outcome } => {
                self.finish_upstream(origin, *outcome, now)
            }
            ShardMsg::UpstreamBackends { shard, conns } => self.on_upstream_backends(shard, conns),
            ShardMsg::NetReports(reports) => {
                for &(network, reporter, learned_ms) in reports.iter() {
                    self.on_shared_report(network, reporter, learned_ms, now);
                }
            }
        }
    }

    /// The driver could not post `post` (`why`: the receiver's channel was full, or nobody
    /// receives). Every push and upstream message still ends in one result its sender reads,
    /// and every loss is counted:
    ///
    /// - a push for another shard or the cluster thread is refused `Overloaded`, and an
    ///   upstream message `Overloaded` (`NoBackend` when no upstream thread runs);
    /// - a result for another shard is parked and posted again after the batch (bounded by
    ///   `max_retry`; past it, counted as lost to an overloaded mesh);
    /// - a result for the control plane or the cluster thread that nobody receives is counted
    ///   as orphaned;
    /// - a login or logout the cluster thread missed makes it re-read every shard's users;
    /// - shared heartbeat reports are counted as not shared; a backend list goes again at the
    ///   next tick.
    pub fn on_undelivered(&mut self, post: Post, why: super::Undelivered, now: Now) {
        self.clock = now;
        match post {
            Post::Shard { to, msg, parked } => match msg {
                ShardMsg::Push(p) => {
                    let status = PushStatus::Refused(RefuseReason::Overloaded);
                    self.complete(p.origin, status, now);
                }
                ShardMsg::Upstream(job, _) => {
                    let outcome = super::msg::Outcome::refused(RefuseReason::Overloaded);
                    self.finish_upstream(job.origin, outcome, now);
                }
                msg @ (ShardMsg::Result { .. } | ShardMsg::UpstreamResult { .. }) => {
                    if parked {
                        self.retry.push_back((to, msg));
                    } else if self.retry.len() >= self.cfg.max_retry {
                        self.counters.inc(Counter::ResultLostOverload);
                    } else {
                        self.counters.inc(Counter::MeshRetry);
                        self.retry.push_back((to, msg));
                    }
                }
                ShardMsg::NetReports(reports) => {
                    self.counters
                        .add(Counter::NetReportNotShared, reports.len() as u64);
                }
                ShardMsg::UpstreamBackends { .. } => self.upstream.backends.dirty = true,
            },
            Post::ApiResult(_) | Post::ClusterResult(_) => {
                self.counters.inc(Counter::ResultOrphaned);
            }
            Post::Cluster(ClusterEvent::Push { origin, .. }) => {
                self.counters.inc(Counter::ClusterRefused);
                let status = PushStatus::Refused(RefuseReason::Overloaded);
                self.complete(origin, status, now);
            }
            Post::Cluster(ClusterEvent::Login { .. } | ClusterEvent::Logout { .. }) => {
                self.counters.inc(Counter::ClusterEventDropped);
                self.out.push(Command::Post(Post::ClusterResync));
            }
            Post::ClusterResync => {}
            Post::Upstream(job) => {
                let reason = match why {
                    super::Undelivered::Full => RefuseReason::Overloaded,
                    super::Undelivered::Closed => RefuseReason::NoBackend,
                };
                let outcome = super::msg::Outcome::refused(reason);
                self.finish_upstream(job.origin, outcome, now);
            }
        }
    }
}

/// How a push's bytes to one device connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Settled {
    /// Handed to the socket.
    Sent,
    /// The connection closed first; `slow` when it was cut for not reading.
    Failed {
        /// Cut for slowness (queue bound, write timeout, linger).
        slow: bool,
    },
}

/// A push whose bytes have not all left yet.
#[derive(Debug)]
pub(super) struct PendingPush {
    /// Who gets the result.
    origin: Origin,
    /// Device connections whose bytes have not left or failed yet.
    outstanding: u32,
    /// Device connections whose bytes left.
    delivered: u32,
    /// Whether a device's queue overflowed at once (the reason if none is delivered).
    failed_slow: bool,
    /// A recipient acknowledged it already: `Acked` follows the result.
    acked: bool,
    /// When it was routed here (`Now::us`), for the push latency histogram.
    since_us: u64,
}
