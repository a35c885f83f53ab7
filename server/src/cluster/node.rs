//! The cluster thread's state, [`Node`], which every task of the thread shares, and the few
//! helpers every job uses. The jobs are each in a file of their own, as methods of [`Node`]:
//! `thread.rs` connects to NATS, starts the tasks and runs the main loop; `bucket.rs` reads and
//! writes the directory, `notes.rs` tells home shards about local-only notes, `refresh.rs`
//! runs the refresh passes, `fanout.rs` fans pushes out and gathers their results, `counts.rs`
//! fans kicks and presence questions out, `peers.rs` sends requests to other nodes and
//! `serve.rs` answers theirs. This file imports none of them, so none imports another
//! through it.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;
use async_nats::jetstream::{self, kv};
use tether_proto::{limits, PushStatus};
use tokio::sync::{Notify, Semaphore};

use super::config::ClusterConfig;
use super::local::Locals;
use super::seal::{Guard, Keys};
use super::stats::ClusterStats;
use crate::mesh::{MeshShared, Origin};
use crate::ratelog::RateLog;
use crate::results::Waiters;

/// How long a kick, presence or users question waits for a local shard.
pub(super) const SHARD_ANSWER: Duration = Duration::from_secs(5);

/// Where the acknowledgement of a push posted to a shard goes (`fanout.rs`, `serve.rs`).
#[derive(Clone, Debug)]
pub(super) enum AckTo {
    /// A push this node fans out: its job.
    Job(u64),
    /// A push another node forwarded here: back to that node, naming its job.
    Remote { node: String, job: u64 },
}

/// A fanned-out push that asked for an acknowledgement (`fanout.rs`).
pub(super) struct AckWait {
    /// The sender, once its first result (delivered) went out.
    pub(super) origin: Option<Origin>,
    /// An acknowledgement came before the first result went out.
    pub(super) early: bool,
    /// When the push started.
    pub(super) since: Instant,
}

/// The cluster thread's state, shared by its tasks.
pub(super) struct Node {
    // The connection and what every job shares.
    /// `[cluster]`.
    pub(super) cfg: ClusterConfig,
    /// This node's subject.
    pub(super) subject: String,
    /// The shards.
    pub(super) mesh: Arc<MeshShared>,
    /// Figures.
    pub(super) stats: Arc<ClusterStats>,
    /// The NATS connection (reconnects by itself).
    pub(super) client: async_nats::Client,
    /// JetStream on it.
    pub(super) js: jetstream::Context,
    /// The cluster secrets: requests and directory entries are signed with them.
    pub(super) keys: Keys,
    /// Sequence number of the requests this node sends.
    pub(super) seq: AtomicU64,
    /// Permits for this node's own tasks (`max_in_flight`).
    pub(super) own: Arc<Semaphore>,
    /// Rate of the log lines about refused requests and replies.
    pub(super) refusal_log: Mutex<RateLog>,

    // The directory and local-only notes (`bucket.rs`, `notes.rs`, `refresh.rs`).
    /// The directory bucket, once created or found.
    pub(super) store: tokio::sync::Mutex<Option<kv::Store>>,
    /// Users with a main connection on this node, with what the directory said of them (a
    /// refresh of an entry that named this node alone writes without reading first; a home
    /// shard is told when the directory names this node alone: `local.rs`). Every decision
    /// about a note is posted to the shard while this lock is held, so shards take them in
    /// the order they were made.
    pub(super) locals: Mutex<Locals>,
    /// When the last refresh pass that completed began (`watch_refresh`).
    pub(super) pass_started: Mutex<Instant>,
    /// `local_only_noted` when notes were last voided: none was given since when it has not
    /// moved.
    pub(super) noted_at_void: AtomicU64,
    /// Wakes the refresh loop at once (after a reconnect).
    pub(super) refresh_now: Notify,

    // Pushes fanned out and their results (`fanout.rs`).
    /// The next job's id (jobs are the pushes this node fans out).
    pub(super) next_job: AtomicU64,
    /// Pushes posted to this node's shards, by their cluster origin id.
    pub(super) waiting: Mutex<Waiters<AckTo>>,
    /// Fanned-out pushes waiting for an acknowledgement, by job.
    pub(super) acks: Mutex<HashMap<u64, AckWait>>,
    /// Refused results whose shard's channel was full, handed over again by one task.
    pub(super) late: flume::Sender<(Origin, PushStatus)>,

    // Requests from other nodes (`serve.rs`).
    /// Permits for requests served for other nodes (`max_served_in_flight`).
    pub(super) served: Arc<Semaphore>,
    /// Checks requests from other nodes (signature, window, replays).
    pub(super) guard: Mutex<Guard>,
}

/// Milliseconds since the Unix epoch.
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a user id is one a shard accepts.
pub(super) fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= limits::USER_MAX
}

impl Node {
    /// Whether NATS is connected now.
    pub(super) fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// How long a request to another node, or a directory read or write, may take.
    pub(super) fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.forward_timeout_ms)
    }
}
