//! Pushes and sends: from the sender's connection to the target user's home shard, to every
//! device connection there, and the result back to the sender.
//!
//! Every routed push ends in exactly one outcome, counted by the shard that decides it:
//! delivered (written or queued to at least one device), offline, or refused with a reason;
//! an `Acked` result follows when the sender asked for it and a device acknowledged.

use bytes::Bytes;
use tether_proto::{limits, PushStatus, RefuseReason};

use crate::counters::Counter;
use crate::io::Io;
use crate::mesh::{MeshMsg, Origin, OriginKind, RoutedPush};
use crate::routing::shard_for;
use crate::state::{Flow, Now, ShardState};

/// Bytes a `Push` body adds to its payload at most (the id's varint).
const PUSH_OVERHEAD: usize = 10;

impl ShardState {
    /// The origin record of a push sent by connection `(key, gen)` of this shard.
    pub(crate) fn origin(&self, key: u32, gen: u32, kind: OriginKind, id: u64) -> Origin {
        Origin {
            shard: self.mesh.me() as u16,
            kind,
            key,
            gen,
            id,
        }
    }

    /// Routes a push (or send) for `user` to its home shard: handled here when this is the
    /// home, otherwise one mesh hop away. A full channel refuses it with `Overloaded`.
    pub(crate) fn route(
        &mut self,
        origin: Origin,
        user: String,
        payload: Bytes,
        want_ack: bool,
        now: Now,
        io: &mut dyn Io,
    ) {
        self.counters.inc(Counter::PushIn);
        if user.is_empty() || user.len() > limits::USER_MAX {
            return self.complete(
                origin,
                PushStatus::Refused(RefuseReason::BadTarget),
                now,
                io,
            );
        }
        if payload.len() + PUSH_OVERHEAD > self.cfg.max_frame {
            return self.complete(origin, PushStatus::Refused(RefuseReason::TooLarge), now, io);
        }
        let home = shard_for(&user, self.mesh.shards());
        if home == self.mesh.me() {
            let status = self.deliver(&user, payload, want_ack.then_some(origin), now, io);
            return self.complete(origin, status, now, io);
        }
        let msg = MeshMsg::Push(Box::new(RoutedPush {
            origin,
            user,
            payload,
            want_ack,
        }));
        if self.mesh.send(home, msg).is_err() {
            self.complete(
                origin,
                PushStatus::Refused(RefuseReason::Overloaded),
                now,
                io,
            );
        }
    }

    /// Writes a push to every main connection of `user` on this shard (its home). A device
    /// whose queue overflows is closed (slow consumer) and does not count as delivered.
    pub(crate) fn deliver(
        &mut self,
        user: &str,
        payload: Bytes,
        ack_origin: Option<Origin>,
        now: Now,
        io: &mut dyn Io,
    ) -> PushStatus {
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        keys.extend_from_slice(self.users.get(user));
        let id = self.next_push_id;
        self.next_push_id += 1;
        let (mut written, mut refused) = (0u32, 0u32);
        for &key in &keys {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            let gen = conn.gen;
            if conn.session.push(id, payload.clone()).is_err() {
                continue;
            }
            self.counters.inc(Counter::DeviceFrames);
            match self.flush(key, gen, now, io) {
                Flow::Alive => written += 1,
                Flow::Gone => refused += 1,
            }
        }
        self.scratch = keys;
        if written > 0 {
            if let Some(origin) = ack_origin {
                if !self.acks.insert(id, origin, now.ms) {
                    self.counters.inc(Counter::AckUntracked);
                }
            }
            PushStatus::Delivered(written)
        } else if refused > 0 {
            PushStatus::Refused(RefuseReason::SlowConsumer)
        } else {
            PushStatus::Offline
        }
    }

    /// Counts the outcome of a push here, where it was decided, and sends it to its origin.
    pub(crate) fn complete(
        &mut self,
        origin: Origin,
        status: PushStatus,
        now: Now,
        io: &mut dyn Io,
    ) {
        self.counters.outcome(status);
        // control-plane hook: API pushes are answered on the API result channel.
        if origin.kind == OriginKind::Api {
            return self.api_result(origin, status);
        }
        if usize::from(origin.shard) == self.mesh.me() {
            return self.deliver_result(origin, status, now, io);
        }
        let msg = MeshMsg::Result { origin, status };
        if let Err(msg) = self.mesh.send(usize::from(origin.shard), msg) {
            // A result is never dropped: park it and retry after the batch.
            self.counters.inc(Counter::MeshRetry);
            self.retry.push_back((usize::from(origin.shard), msg));
        }
    }

    /// Writes a result to the connection that sent the push, if it is still here.
    pub(crate) fn deliver_result(
        &mut self,
        origin: Origin,
        status: PushStatus,
        now: Now,
        io: &mut dyn Io,
    ) {
        let Some(conn) = self
            .conns
            .get_mut(origin.key as usize)
            .filter(|c| c.gen == origin.gen)
        else {
            self.counters.inc(Counter::ResultOrphaned);
            return;
        };
        let queued = match origin.kind {
            OriginKind::Backend => conn.session.push_result(tether_proto::PushResult {
                id: origin.id,
                status,
            }),
            OriginKind::Send => conn.session.send_result(tether_proto::SendResult {
                client_id: origin.id,
                status,
            }),
            // Never routed to a connection (see `complete`); kept total for the match.
            OriginKind::Api => return self.api_result(origin, status),
        };
        if queued.is_err() {
            self.counters.inc(Counter::ResultOrphaned);
            return;
        }
        self.flush(origin.key, origin.gen, now, io);
    }

    /// A device acknowledged push `id`: tell the sender if it asked.
    pub(crate) fn on_ack(&mut self, id: u64, now: Now, io: &mut dyn Io) {
        self.counters.inc(Counter::PushAcked);
        if let Some(origin) = self.acks.take(id) {
            self.complete(origin, PushStatus::Acked, now, io);
        }
    }

    /// Handles one message from another shard.
    pub fn on_mesh(&mut self, msg: MeshMsg, now: Now, io: &mut dyn Io) {
        self.counters.inc(Counter::MeshIn);
        match msg {
            MeshMsg::Handover(h) => self.adopt(*h, now, io),
            MeshMsg::Push(p) => {
                let RoutedPush {
                    origin,
                    user,
                    payload,
                    want_ack,
                } = *p;
                let status = self.deliver(&user, payload, want_ack.then_some(origin), now, io);
                self.complete(origin, status, now, io);
            }
            MeshMsg::Result { origin, status } => self.deliver_result(origin, status, now, io),
            MeshMsg::NetReport {
                network,
                reporter,
                learned_ms,
            } => self.on_shared_report(network, reporter, learned_ms, now),
            // control-plane hook
            MeshMsg::Control(c) => self.on_control(*c, now, io),
        }
    }
}
