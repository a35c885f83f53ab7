//! The shard's handling of control-plane requests ([`Control`]): API pushes enter the same
//! routing as a backend's, kicks go through the session, presence and stats read the shard's
//! own structures; a reload swaps the token verifier.

use tether_proto::{CloseCode, PushStatus};

use super::{Core, Flow, Now};
use crate::control::{ApiResult, Control, Presence, ShardStats};
use crate::counters::Counter;
use crate::mesh::{Origin, RoutedPush};

impl Core {
    /// Handles one control-plane request.
    pub(super) fn on_control(&mut self, msg: Control, now: Now) {
        self.counters.inc(Counter::ControlIn);
        match msg {
            Control::Push(p) => {
                let RoutedPush {
                    origin,
                    user,
                    payload,
                    want_ack,
                    from,
                } = p;
                self.route(origin, user, payload, want_ack, from, now);
            }
            Control::Kick {
                user,
                device,
                code,
                may_reconnect,
                reply,
            } => {
                let n = self.kick(&user, device.as_deref(), code, may_reconnect, now);
                let _ = reply.try_send(n);
            }
            Control::Presence { user, reply } => {
                let devices = u32::try_from(self.users.get(&user).len()).unwrap_or(u32::MAX);
                let _ = reply.try_send(Presence {
                    devices,
                    shard: self.mesh.me(),
                });
            }
            Control::Stats { reply } => {
                let _ = reply.try_send(ShardStats {
                    shard: self.mesh.me(),
                    connections: self.connections(),
                    users: self.users(),
                    draining: self.is_draining(),
                    acks_waiting: self.acks.len(),
                    counters: self.counters.clone(),
                });
            }
            Control::Users { reply } => {
                let _ = reply.try_send(self.users.names());
            }
            Control::LocalOnly { user, epoch, done } => {
                self.users.note_local_only(&user, epoch);
                if let Some(done) = done {
                    let _ = done.try_send(());
                }
            }
        }
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

    /// Hands the outcome of a push with a cluster origin to the cluster thread (counted as
    /// orphaned when it is gone).
    pub(super) fn cluster_result(&mut self, origin: Origin, status: PushStatus) {
        let result = ApiResult {
            id: origin.id,
            status,
        };
        if !self.mesh.shared().cluster_result(result) {
            self.counters.inc(Counter::ResultOrphaned);
        }
    }

    /// Tells the cluster thread (if any) about a login or logout without waiting: a full
    /// channel is counted and the cluster thread re-reads the shards' users later.
    pub(super) fn cluster_event(&mut self, msg: impl FnOnce() -> crate::cluster::ClusterMsg) {
        let Some(tx) = self.mesh.shared().cluster() else {
            return;
        };
        if tx.try_send(msg()).is_err() {
            self.counters.inc(Counter::ClusterEventDropped);
            self.mesh.shared().request_resync();
        }
    }

    /// Hands the outcome of an API push to the control plane (counted as orphaned when the
    /// control plane is gone).
    pub(super) fn api_result(&mut self, origin: Origin, status: PushStatus) {
        let result = ApiResult {
            id: origin.id,
            status,
        };
        if !self.mesh.shared().api_result(result) {
            self.counters.inc(Counter::ResultOrphaned);
        }
    }
}
