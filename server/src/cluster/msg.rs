//! What the cluster thread is sent: [`ClusterMsg`], from the shards (through the mesh's
//! cluster port) and from the HTTP API, and [`Fanned`], the counts a kick or presence
//! question gathers from every node. Plain data, so that the mesh, which carries these
//! messages, needs nothing else of the cluster.

use bytes::Bytes;

use crate::core::msg::{ClusterEvent, Kick, Origin, SendFrom};

/// A message to the cluster thread.
#[derive(Debug)]
pub enum ClusterMsg {
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
    /// Kick a user on every node.
    Kick {
        /// Who, and with which code.
        kick: Kick,
        /// Receives the count per node.
        reply: flume::Sender<Fanned>,
    },
    /// Where is a user online?
    Presence {
        /// The user.
        user: String,
        /// Receives the devices per node.
        reply: flume::Sender<Fanned>,
    },
}

impl From<ClusterEvent> for ClusterMsg {
    fn from(event: ClusterEvent) -> ClusterMsg {
        match event {
            ClusterEvent::Login { user, device } => ClusterMsg::Login { user, device },
            ClusterEvent::Logout { user } => ClusterMsg::Logout { user },
            ClusterEvent::Push {
                origin,
                user,
                payload,
                want_ack,
                sender,
            } => ClusterMsg::Push {
                origin,
                user,
                payload,
                want_ack,
                sender,
            },
        }
    }
}

impl ClusterMsg {
    /// A shard's event given back (its channel was full), or `None` for the control plane's
    /// requests.
    pub fn into_event(self) -> Option<ClusterEvent> {
        Some(match self {
            ClusterMsg::Login { user, device } => ClusterEvent::Login { user, device },
            ClusterMsg::Logout { user } => ClusterEvent::Logout { user },
            ClusterMsg::Push {
                origin,
                user,
                payload,
                want_ack,
                sender,
            } => ClusterEvent::Push {
                origin,
                user,
                payload,
                want_ack,
                sender,
            },
            _ => return None,
        })
    }
}

/// A count (connections kicked, devices present) gathered from every node holding a user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fanned {
    /// This node's count; `None` when its shard did not answer.
    pub local: Option<u32>,
    /// Every other node the directory named, with its count or why there is none
    /// (`gone`, `timed_out`, `unavailable`).
    pub nodes: Vec<(String, Result<u32, &'static str>)>,
    /// Whether the directory could be read (false while NATS is unreachable).
    pub directory: bool,
}

impl Fanned {
    /// The counts added up.
    pub fn total(&self) -> u32 {
        let remote: u32 = self.nodes.iter().filter_map(|(_, c)| c.ok()).sum();
        self.local.unwrap_or(0).saturating_add(remote)
    }
}
