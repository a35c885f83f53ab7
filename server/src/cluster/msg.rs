//! What the cluster thread is sent: [`ClusterMsg`], from the shards (through the mesh's
//! cluster port) and from the HTTP API, and [`Fanned`], the counts a kick or presence
//! question gathers from every node. Plain data, so that the mesh, which carries these
//! messages, needs nothing else of the cluster.

use crate::core::msg::{ClusterEvent, Kick};

/// A message to the cluster thread.
#[derive(Debug)]
pub enum ClusterMsg {
    /// What a shard tells the cluster thread: a login, a logout, or a push to fan out.
    Event(ClusterEvent),
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

impl ClusterMsg {
    /// A shard's event given back (its channel was full), or `None` for the control plane's
    /// requests.
    pub fn into_event(self) -> Option<ClusterEvent> {
        match self {
            ClusterMsg::Event(event) => Some(event),
            _ => None,
        }
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
