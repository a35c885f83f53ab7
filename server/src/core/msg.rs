//! What the core speaks: the messages it takes in and the ones it hands its driver to post,
//! as plain data. Nothing here holds a descriptor, a channel or a clock; the driver moves these
//! values over the mesh's channels, to the control plane, the cluster thread and the upstream
//! thread (`mesh.rs`, `shard.rs`), and reports back what it could not post
//! ([`Core::on_undelivered`](super::Core::on_undelivered)).

use std::sync::Arc;

use bytes::Bytes;
use tether_proto::heartbeat::NetworkId;
use tether_proto::{CloseCode, PushStatus, RefuseReason, UpstreamStatus};

use crate::counters::Counters;

/// A connection's handle: its slab key and the generation that tells it from earlier
/// connections with the same key. Every input and command names a connection this way, so a
/// late completion for a connection that is gone is recognised and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// Slab key.
    pub key: u32,
    /// Generation (29 bits, [`GEN_MASK`](super::GEN_MASK): it travels in io_uring `user_data`
    /// beside a 3-bit tag and the 32-bit key).
    pub gen: u32,
}

/// Who gets the result of a routed push. Only a push sent by a connection of this node has a
/// connection to answer on; the others are answered on a channel, by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A backend's `BackendPush` or a client's `Send`: answered on the sender's connection,
    /// through its shard.
    Conn(ConnOrigin),
    /// A client's `Send` whose sender was already told `Accepted` (`[send] reveal_presence`
    /// off): the outcome is counted where it is decided and goes nowhere.
    Untold,
    /// A push from the HTTP API; answered on the mesh's API result channel with `id`. See
    /// `control.rs`.
    Api {
        /// The API's id for the push.
        id: u64,
    },
    /// The local part of a push the cluster thread fans out, or a push another node forwarded
    /// here; answered on the mesh's cluster result channel with `id`. See `cluster/`.
    Cluster {
        /// The cluster thread's id for the push.
        id: u64,
    },
}

/// A push sent by a connection of this node, answered on that connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnOrigin {
    /// The sender's connection.
    pub conn: ConnKey,
    /// What it sent, which says how it is answered.
    pub sent: Sent,
    /// The sender's id for the push (`BackendPush::id` or `Send::client_id`).
    pub id: u64,
}

/// See [`ConnOrigin::sent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// A backend's `BackendPush`; answered with `PushResult`.
    BackendPush,
    /// A client's `Send`; answered with `SendResult`.
    Send,
}

/// Where the one result of a client's upstream message goes: its connection, and its
/// `client_id` for the message. See `upstream/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamOrigin {
    /// The client's connection.
    pub conn: ConnKey,
    /// The client's id for the message.
    pub client_id: u64,
}

/// One connection anywhere on this node: its shard and its handle there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Its shard.
    pub shard: u16,
    /// Its handle on that shard (the generation keeps a reply from a newer connection with
    /// the same slab key).
    pub handle: ConnId,
}

/// A push or send on its way to the target user's home shard.
#[derive(Debug)]
pub struct RoutedPush {
    /// Where the result goes.
    pub origin: Origin,
    /// The target user id.
    pub user: String,
    /// The application bytes.
    pub payload: Bytes,
    /// Whether the origin wants an `Acked` result when a device acknowledges.
    pub want_ack: bool,
    /// A client's `Send`: who sent it. Its recipients' version-2 devices get a `Message`
    /// naming the sender; version-1 devices, which cannot show one, get nothing. `None`: a
    /// backend's or the API's push, delivered as `Push`.
    pub from: Option<Box<SendFrom>>,
}

/// The sender of a client's `Send`, as its token says. Travels between nodes in a push
/// request too (`cluster/wire.rs`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendFrom {
    /// Its user id.
    pub user: String,
    /// Its device id.
    pub device: String,
}

/// A kick: the user's main connections (only `device`'s when given) get a `Kick` frame and
/// are closed. The HTTP API and the cluster thread send it to a home shard as it is, and it
/// travels between nodes as the body of a `kick` request (`cluster/wire.rs`), the close code
/// as its number.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kick {
    /// The user.
    pub user: String,
    /// One device id, or every device.
    pub device: Option<String>,
    /// The close code in the `Kick` frame.
    #[serde(with = "close_code")]
    pub code: CloseCode,
    /// Whether the client may reconnect.
    pub may_reconnect: bool,
}

/// A close code in JSON: its wire number (unknown numbers are kept as
/// [`CloseCode::Other`]).
mod close_code {
    use serde::{Deserialize, Deserializer, Serializer};
    use tether_proto::CloseCode;

    pub fn serialize<S: Serializer>(code: &CloseCode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(code.to_u16())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CloseCode, D::Error> {
        u16::deserialize(d).map(CloseCode::from_u16)
    }
}

/// A message from one shard's core to another's (or from the control plane, the cluster
/// thread or the upstream thread to a shard), carried by the mesh.
#[derive(Debug)]
pub enum ShardMsg {
    /// A push for a user whose home is the receiving shard.
    Push(Box<RoutedPush>),
    /// Clients' learned intervals (network, reporter, interval), shared once per tick so
    /// every shard's prior table agrees.
    NetReports(Arc<[(NetworkId, u64, u32)]>),
    /// The outcome of a push, back to the shard of its sender.
    Result {
        /// The sender.
        origin: ConnOrigin,
        /// What happened.
        status: PushStatus,
    },
    /// A client's upstream message for a backend connection on the receiving shard (sink
    /// `backends`): that connection's handle there.
    Upstream(Box<UpstreamJob>, ConnId),
    /// The one result of an upstream message, back to the shard of its client (from the shard
    /// of the backend connection that took it, or from the `tether-upstream` thread).
    UpstreamResult {
        /// The client connection and its `client_id`.
        origin: UpstreamOrigin,
        /// What its client is told.
        outcome: Box<Outcome>,
    },
    /// The upstream backend connections of shard `shard` changed: here is its whole list.
    UpstreamBackends {
        /// The shard whose list this is.
        shard: u16,
        /// Its backend connections that take upstream messages.
        conns: Arc<[(u32, u32)]>,
    },
}

/// What the core asks its driver to post beyond its own sockets ([`super::Command::Post`]).
/// When it cannot (a full or closed channel), the driver gives it back through
/// [`Core::on_undelivered`](super::Core::on_undelivered), and the core decides what that means.
#[derive(Debug)]
pub enum Post {
    /// A message for shard `to`.
    Shard {
        /// The receiving shard.
        to: usize,
        /// The message.
        msg: ShardMsg,
        /// Given back once already and parked (not counted again when it is given back
        /// again).
        parked: bool,
    },
    /// The outcome of an API push, for the control plane.
    ApiResult(ApiResult),
    /// The outcome of the local part of a cluster push, for the cluster thread.
    ClusterResult(ApiResult),
    /// A login, logout or push for the cluster thread (only when the node is in a cluster).
    Cluster(ClusterEvent),
    /// Ask the cluster thread to re-read every shard's users (an event was not posted).
    ClusterResync,
    /// An upstream message for the `tether-upstream` thread (sinks `webhook` and `nats`).
    Upstream(Box<UpstreamJob>),
}

/// Why the driver could not post a [`Post`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undelivered {
    /// The receiver's channel is full.
    Full,
    /// Nobody receives (not connected yet, or gone).
    Closed,
}

/// What a shard tells the cluster thread.
#[derive(Debug)]
pub enum ClusterEvent {
    /// A main connection of `user` registered on this node (from its home shard).
    Login {
        /// The user.
        user: String,
        /// Its device id (an older connection of it on another node is replaced).
        device: String,
    },
    /// The last main connection of `user` on this node left.
    Logout {
        /// The user.
        user: String,
    },
    /// A push to fan out; its one result goes to `origin`.
    Push {
        /// The sender (a backend or client connection on a shard, or the HTTP API).
        origin: Origin,
        /// The target user.
        user: String,
        /// The application bytes.
        payload: Bytes,
        /// Whether the sender wants an `Acked` result.
        want_ack: bool,
        /// A client's `Send`: who sent it.
        sender: Option<Box<SendFrom>>,
    },
}

/// The outcome of an API push, sent by the shard that decided it. Two can arrive for one
/// push: `Delivered` and later `Acked`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiResult {
    /// The API's id for the push ([`Origin::Api`]'s or [`Origin::Cluster`]'s).
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

/// A client's upstream message on its way to the `tether-upstream` thread.
#[derive(Clone, Debug)]
pub struct UpstreamJob {
    /// Where its result goes.
    pub origin: UpstreamOrigin,
    /// The sender's user id, from its token.
    pub user: String,
    /// The sender's device id, from its token.
    pub device: String,
    /// The sender connection's `LoginOk.session_id`.
    pub session_id: u64,
    /// The payload.
    pub payload: Bytes,
}

/// How an upstream message ended: what its client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Accepted or refused, and why.
    pub status: UpstreamStatus,
    /// The backend's reply (empty when no backend answered), at most
    /// `upstream.max_reply_bytes`.
    pub reply: Bytes,
}

impl Outcome {
    /// A refusal without a reply.
    pub fn refused(reason: RefuseReason) -> Outcome {
        Outcome {
            status: UpstreamStatus::Refused(reason),
            reply: Bytes::new(),
        }
    }

    /// The backend's answer; a reply longer than `max_reply` is dropped (the status stands:
    /// the backend did process the message) and `true` is returned beside it so the caller
    /// counts it.
    pub fn answered(accepted: bool, reply: Bytes, max_reply: usize) -> (Outcome, bool) {
        let status = if accepted {
            UpstreamStatus::Accepted
        } else {
            UpstreamStatus::Refused(RefuseReason::Rejected)
        };
        let too_long = reply.len() > max_reply;
        let reply = if too_long { Bytes::new() } else { reply };
        (Outcome { status, reply }, too_long)
    }
}
