//! The shard side of the control plane: requests from the HTTP API (and a SIGHUP reload)
//! arriving through the mesh as [`MeshMsg::Control`](crate::mesh::MeshMsg::Control).
//!
//! The control plane never touches a shard's data: it posts a [`Control`] into the shard's
//! mesh channel and awaits the reply on a channel the request carries. The shard handles it in
//! its normal batch, with its own data structures, and answers with a non-blocking send; a
//! requester that gave up simply finds nobody reading.
//!
//! Pushes reuse the backend path: [`Control::Push`] goes to the user's home shard and into
//! `route` with an [`OriginKind::Api`](crate::mesh::OriginKind::Api) origin, so validation,
//! delivery, counting and acknowledgements are the same code; `complete` sends the outcome to
//! the API result channel (see [`ShardState::api_result`]) instead of to a connection.

use tether_proto::token::Authenticate;
use tether_proto::{CloseCode, PushStatus};

use crate::counters::{Counter, Counters};
use crate::io::Io;
use crate::mesh::{Origin, RoutedPush};
use crate::state::{Flow, Now, ShardState};

/// The outcome of an API push, sent by the shard that decided it. Two can arrive for one
/// push: `Delivered` and later `Acked`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiResult {
    /// The API's id for the push (`Origin::id`).
    pub id: u64,
    /// What happened.
    pub status: PushStatus,
}

/// What a shard knows about one user (it is the user's home shard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    /// Main connections of the user on this shard.
    pub devices: u32,
    /// The shard that answered.
    pub shard: usize,
}

/// One shard's live figures.
#[derive(Clone, Debug)]
pub struct ShardStats {
    /// The shard's index.
    pub shard: usize,
    /// Connections held.
    pub connections: usize,
    /// Users with a main connection here.
    pub users: usize,
    /// Whether the shard is draining.
    pub draining: bool,
    /// Pushes waiting for an acknowledgement.
    pub acks_waiting: usize,
    /// Every counter.
    pub counters: Counters,
}

/// A request to a shard; replies go to the channel inside, without blocking.
pub enum Control {
    /// Route a push to `push.user` (the receiving shard is its home) with an API origin.
    Push(RoutedPush),
    /// Kick the user's main connections (only `device`'s when given) with a `Kick` frame.
    Kick {
        /// The user.
        user: String,
        /// One device id, or every device.
        device: Option<String>,
        /// The close code in the `Kick` frame.
        code: CloseCode,
        /// Whether the client may reconnect.
        may_reconnect: bool,
        /// Receives the number of connections kicked.
        reply: flume::Sender<u32>,
    },
    /// Is the user online here?
    Presence {
        /// The user.
        user: String,
        /// Receives the answer.
        reply: flume::Sender<Presence>,
    },
    /// The shard's live figures.
    Stats {
        /// Receives the answer.
        reply: flume::Sender<ShardStats>,
    },
    /// Replace the token verifier (secrets reloaded); connections stay.
    Auth(Box<dyn Authenticate + Send>),
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::Push(p) => f.debug_tuple("Push").field(&p.user).finish(),
            Control::Kick { user, device, .. } => f
                .debug_struct("Kick")
                .field("user", user)
                .field("device", device)
                .finish_non_exhaustive(),
            Control::Presence { user, .. } => {
                f.debug_struct("Presence").field("user", user).finish()
            }
            Control::Stats { .. } => f.write_str("Stats"),
            Control::Auth(_) => f.write_str("Auth"),
        }
    }
}

impl ShardState {
    /// Handles one control-plane request.
    pub(crate) fn on_control(&mut self, msg: Control, now: Now, io: &mut dyn Io) {
        self.counters.inc(Counter::ControlIn);
        match msg {
            Control::Push(p) => {
                let RoutedPush {
                    origin,
                    user,
                    payload,
                    want_ack,
                } = p;
                self.route(origin, user, payload, want_ack, now, io);
            }
            Control::Kick {
                user,
                device,
                code,
                may_reconnect,
                reply,
            } => {
                let n = self.kick(&user, device.as_deref(), code, may_reconnect, now, io);
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
            Control::Auth(auth) => {
                self.auth = auth;
                self.counters.inc(Counter::AuthReloads);
            }
        }
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
        io: &mut dyn Io,
    ) -> u32 {
        let device = device.map(|d| crate::routing::fnv1a64(d.as_bytes()));
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        keys.extend(
            self.users
                .get(user)
                .iter()
                .copied()
                .filter(|k| device.map_or(true, |d| self.conns[*k as usize].device == d)),
        );
        let mut kicked = 0;
        for key in keys.drain(..) {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            let gen = conn.gen;
            if conn.session.kick(code, may_reconnect, 0).is_ok() {
                kicked += 1;
                self.counters.inc(Counter::Kicked);
            }
            if self.drive(key, gen, now, io, None) == Flow::Alive {
                self.teardown(key, io);
            }
        }
        self.scratch = keys;
        kicked
    }

    /// Hands the outcome of an API push to the control plane (counted as orphaned when the
    /// control plane is gone).
    pub(crate) fn api_result(&mut self, origin: Origin, status: PushStatus) {
        let result = ApiResult {
            id: origin.id,
            status,
        };
        if !self.mesh.shared().api_result(result) {
            self.counters.inc(Counter::ResultOrphaned);
        }
    }
}
