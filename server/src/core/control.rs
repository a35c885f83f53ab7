//! The shard's side of control-plane requests (the driver takes them off the mesh and answers
//! them with what these return): API pushes enter the same routing as a backend's, kicks go
//! through the session, presence and stats read the shard's own structures; a reload swaps
//! the token verifier. Results for the control plane and the cluster thread leave as
//! [`Post`]s.

use tether_proto::{CloseCode, PushStatus};

use super::msg::{ApiResult, ClusterEvent, Kick, Post, Presence, RoutedPush, ShardStats};
use super::{Command, Core, Flow, Now};
use crate::counters::Counter;

impl Core {
    /// An API push (or this node's part of a cluster push) for a user whose home is this
    /// shard: routed like a backend's.
    pub fn on_push_request(&mut self, push: RoutedPush, now: Now) {
        self.clock = now;
        self.counters.inc(Counter::ControlIn);
        let RoutedPush {
            origin,
            user,
            payload,
            want_ack,
            from,
        } = push;
        self.route(origin, user, payload, want_ack, from, now);
    }

    /// A control-plane kick: sends a `Kick` to every main connection of `kick.user` here (or
    /// of its `kick.device`) and closes them; returns how many.
    pub fn on_kick_request(&mut self, kick: &Kick, now: Now) -> u32 {
        self.clock = now;
        self.counters.inc(Counter::ControlIn);
        let device = kick.device.as_deref();
        self.kick(&kick.user, device, kick.code, kick.may_reconnect, now)
    }

    /// Whether `user` is online here (this is the user's home shard).
    pub fn presence(&mut self, user: &str) -> Presence {
        self.counters.inc(Counter::ControlIn);
        let devices = u32::try_from(self.users.get(user).len()).unwrap_or(u32::MAX);
        Presence {
            devices,
            shard: self.me,
        }
    }

    /// The shard's live figures.
    pub fn stats(&mut self) -> ShardStats {
        self.counters.inc(Counter::ControlIn);
        ShardStats {
            shard: self.me,
            connections: self.connections(),
            users: self.users(),
            draining: self.is_draining(),
            acks_waiting: self.acks.len(),
            counters: self.counters.clone(),
        }
    }

    /// Every user with a main connection here.
    pub fn user_names(&mut self) -> Vec<String> {
        self.counters.inc(Counter::ControlIn);
        self.users.names()
    }

    /// The cluster thread's word on a user of this shard (`cluster/local.rs`): `Some(epoch)`,
    /// the directory named this node alone in that cluster epoch, so its pushes may skip the
    /// directory; `None`, another node may hold one of its devices.
    pub fn note_local_only(&mut self, user: &str, epoch: Option<std::num::NonZeroU32>) {
        self.counters.inc(Counter::ControlIn);
        self.users.note_local_only(user, epoch);
    }

    /// Replaces the token verifier (a reload, see `MeshShared::publish_auth`): logins and
    /// refreshes checked from now on use it. `live` names the secrets it takes: connections
    /// authenticated by any other secret end after `revoked_grace_s` unless they refresh;
    /// the others stay as they are.
    pub fn set_auth(
        &mut self,
        auth: Box<dyn tether_proto::token::Authenticate>,
        live: &[tether_proto::token::KeyId],
        now: Now,
    ) {
        self.clock = now;
        self.auth = auth;
        self.live_keys = Some(live.to_vec());
        self.counters.inc(Counter::AuthReloads);
        self.revoke_withdrawn(now);
    }

    /// Sends a `Kick` to every main connection of `user` (or of its `device`) and closes
    /// them; returns how many.
    fn kick(
        &mut self,
        user: &str,
        device: Option<&str>,
        code: CloseCode,
        may_reconnect: bool,
        now: Now,
    ) -> u32 {
        // A device no connection here holds matches nothing.
        let device = match device.map(|d| self.devices.find(d)) {
            Some(None) => return 0,
            Some(Some(d)) => Some(d),
            None => None,
        };
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        keys.extend(
            self.users
                .get(user)
                .iter()
                .copied()
                .filter(|k| device.map_or(true, |d| self.conns.at_ref(*k).device == d)),
        );
        let mut kicked = 0;
        for key in keys.drain(..) {
            let Some(id) = self.conns.id_at(key) else {
                continue;
            };
            let conn = self.conns.at(key);
            if conn.session.kick(code, may_reconnect, 0).is_ok() {
                kicked += 1;
                self.counters.inc(Counter::Kicked);
            }
            if self.drive(id, now, None) == Flow::Alive {
                self.teardown(id);
            }
        }
        self.scratch = keys;
        kicked
    }

    /// Hands the outcome of push `id`, with a cluster origin, to the cluster thread.
    pub(super) fn cluster_result(&mut self, id: u64, status: PushStatus) {
        let result = ApiResult { id, status };
        self.out.push(Command::Post(Post::ClusterResult(result)));
    }

    /// Tells the cluster thread (if any) about a login or logout without waiting (a full
    /// channel is counted and the cluster thread re-reads the shards' users later: see
    /// [`Core::on_undelivered`]).
    pub(super) fn cluster_event(&mut self, event: impl FnOnce() -> ClusterEvent) {
        if self.cfg.cluster.is_some() {
            self.out.push(Command::Post(Post::Cluster(event())));
        }
    }

    /// Hands the outcome of API push `id` to the control plane.
    pub(super) fn api_result(&mut self, id: u64, status: PushStatus) {
        let result = ApiResult { id, status };
        self.out.push(Command::Post(Post::ApiResult(result)));
    }
}
