//! The shard side of the control plane: requests from the HTTP API and the cluster thread
//! arriving through the mesh as [`MeshMsg::Control`](crate::mesh::MeshMsg::Control). (A SIGHUP
//! reload's verifier takes another way, one all shards share: `MeshShared::publish_auth`.)
//!
//! The control plane never touches a shard's data: it posts a [`Control`] into the shard's
//! mesh channel and awaits the reply on a channel the request carries. The shard handles it in
//! its normal batch, with its own data structures, and answers with a non-blocking send; a
//! requester that gave up simply finds nobody reading.
//!
//! Pushes reuse the backend path: [`Control::Push`] goes to the user's home shard and into
//! `route` with an [`Origin::Api`](crate::mesh::Origin::Api), so validation,
//! delivery, counting and acknowledgements are the same code; `complete` sends the outcome to
//! the API result channel (see `core/control.rs`) instead of to a connection.

pub use crate::core::msg::{ApiResult, Kick, Presence, RoutedPush, ShardStats};

/// A request to a shard; replies go to the channel inside, without blocking.
pub enum Control {
    /// Route a push to `push.user` (the receiving shard is its home) with an API origin.
    Push(RoutedPush),
    /// Kick the user's main connections (only `kick.device`'s when given) with a `Kick` frame.
    Kick {
        /// Who, and with which code.
        kick: Kick,
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
    /// Every user with a main connection on this shard (the cluster thread rebuilding its list
    /// after a dropped event).
    Users {
        /// Receives the answer.
        reply: flume::Sender<Vec<String>>,
    },
    /// The cluster thread's word on a user of this shard (`cluster/local.rs`): the directory
    /// named this node alone for it, so its pushes may skip the directory; or another node may
    /// hold one of its devices, so they may not.
    LocalOnly {
        /// The user.
        user: String,
        /// `Some`: named alone, in this cluster epoch; `None`: maybe not alone.
        epoch: Option<std::num::NonZeroU32>,
        /// Told once the shard took it in (the cluster thread waits for that before it answers
        /// another node or writes the directory).
        done: Option<flume::Sender<()>>,
    },
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::Push(p) => f.debug_tuple("Push").field(&p.user).finish(),
            Control::Kick { kick, .. } => f
                .debug_struct("Kick")
                .field("user", &kick.user)
                .field("device", &kick.device)
                .finish_non_exhaustive(),
            Control::Presence { user, .. } => {
                f.debug_struct("Presence").field("user", user).finish()
            }
            Control::Stats { .. } => f.write_str("Stats"),
            Control::Users { .. } => f.write_str("Users"),
            Control::LocalOnly { user, epoch, .. } => f
                .debug_struct("LocalOnly")
                .field("user", user)
                .field("epoch", epoch)
                .finish_non_exhaustive(),
        }
    }
}
