//! The cluster: a fleet of tether nodes behind one push API, over NATS with JetStream.
//!
//! A node joins when `[cluster] nats_urls` is set; otherwise none of this runs. Then one
//! thread, `tether-cluster`, runs a current-thread tokio runtime with the NATS client
//! (async-nats). It is never on a shard's path: shards reach it through a bounded channel
//! ([`ClusterMsg`], a non-blocking send; a full channel is counted or refuses the push) and
//! it reaches shards only through the mesh ([`MeshShared::post`](crate::mesh::MeshShared::post)
//! of a [`Control`](crate::control::Control), as the HTTP control plane does). A NATS outage
//! therefore never stalls a shard.
//!
//! - **Directory** (`directory.rs`, `bucket.rs`, `refresh.rs`): JetStream key-value, one entry
//!   per user naming the nodes that hold its devices, written on a user's first login and last
//!   logout on this node and refreshed in one pass per `refresh_ms`; entries expire by
//!   themselves (`max_age`).
//! - **Delivery** (`wire.rs`, `fanout.rs`, `serve.rs`): every node listens on one subject,
//!   `<subject_prefix>.<node_id>`. A push accepted anywhere (backend or HTTP) comes here, is
//!   delivered on this node's home shard and forwarded to every other node the directory names,
//!   in parallel (one hop), and ends in one result for its sender.
//! - **Local-first** (`local.rs`, `notes.rs`): a user whose entry names this node alone carries a note on
//!   its home shard, and its pushes are delivered there at once, without the directory or this
//!   thread; a node that writes itself into an entry first tells the nodes named there, which
//!   drop their notes. The directory stays the only source of truth.
//! - **Kick, presence and replaced logins** take the same way (`counts.rs`, `serve.rs`).
//! - **Trust** (`seal.rs`, `link.rs`, `peers.rs`, `serve.rs`): NATS is reached with credentials and TLS from
//!   `[cluster]`; every request between nodes is signed with the cluster secret and checked
//!   (signature, clock window, replays) before anything is done with it, every reply is bound
//!   to its request, and directory entries are signed and bounded. A party that can publish
//!   on NATS but lacks the secret can make a node do nothing (it can still drop or delay
//!   messages: NATS is trusted with availability, not with authority).
//!
//! The files: what the thread is sent (`msg.rs`), and the pure parts it is built on
//! (`directory.rs`, `local.rs`, `wire.rs`, `seal.rs`, `config.rs`, `link.rs`); then the thread
//! itself, one job per file: `thread.rs` its NATS connection, tasks and main loop, `node.rs`
//! the state its tasks share, `bucket.rs` directory reads and writes, `notes.rs` local-only
//! notes as home shards are told of them, `refresh.rs` refresh passes, `fanout.rs` pushes
//! fanned out and their results, `counts.rs` kicks and presence questions, `peers.rs` requests
//! to other nodes, `serve.rs` requests from them.

mod bucket;
mod config;
mod counts;
pub mod directory;
mod fanout;
mod link;
mod local;
pub(crate) mod msg;
mod node;
mod notes;
mod peers;
mod refresh;
pub mod seal;
mod serve;
mod thread;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tether_proto::{PushStatus, RefuseReason};

pub use config::{redact_url, ClusterConfig, Hidden};
pub use link::NatsServers;
pub use msg::{ClusterMsg, Fanned};

use crate::mesh::{ClusterPort, MeshShared};

crate::figures::figures! {
    /// The cluster thread's figures, read by `/metrics` and `/api/stats`.
    pub struct ClusterStats;
    connected: gauge => "1 while connected to NATS";
    users: gauge => "users with a main connection on this node (as the directory knows them)";
    disconnects => "times the NATS connection was lost";
    reconnects => "times the NATS connection came back (the node then re-registers its users)";
    pushes => "pushes fanned out by this node";
    push_delivered => "fanned-out pushes delivered to at least one device";
    push_offline => "fanned-out pushes that found no device on any node";
    push_refused => "fanned-out pushes refused (a node decided: slow consumer, too large, ...)";
    push_timed_out => "fanned-out pushes answered TimedOut (a node holding the user did not answer)";
    push_unavailable => "fanned-out pushes answered ClusterUnavailable (not local, NATS unreachable)";
    forwards => "requests sent to other nodes (push, kick, presence, replace)";
    forward_gone => "requests to a node nobody listens for (a stale directory entry)";
    forward_timed_out => "requests to another node that timed out";
    forward_failed => "requests that failed (NATS unreachable or a malformed reply)";
    served => "requests served for other nodes";
    served_malformed => "requests from other nodes that were malformed (answered with an error)";
    directory_reads => "directory lookups";
    directory_writes => "directory entries written (logins, logouts, refreshes)";
    directory_errors => "directory reads or writes that failed";
    refresh_passes => "refresh passes over this node's users";
    results_lost => "results that could not be handed to their sender (its shard's channel stayed full, or it had gone)";
    refused_unsigned => "requests from the node's subject refused: no signature (not from a node of the fleet)";
    refused_bad_mac => "requests refused: the signature is not the cluster secret's for this request to this node (forged, altered, or another secret)";
    refused_stale => "requests refused: their timestamp is further than cluster.max_clock_skew_ms from this node's clock";
    refused_replay => "requests refused: seen before within the window (a replay)";
    replies_refused => "replies from other nodes refused: not signed for the request they answer";
    directory_invalid => "directory entries read with something not valid (bad signature, node id, expiry, or too many nodes): ignored for routing, repaired by the next write";
    overloaded => "work refused because cluster.max_in_flight tasks were running (pushes refused Overloaded, kicks and presence questions answered empty, login writes left to the refresh pass, logout writes left to expiry)";
    served_overloaded => "requests from other nodes refused because cluster.max_served_in_flight were being served";
    local_only_noted => "local-only notes given to home shards: the directory named this node alone for a user, so its pushes skip the directory (cluster_pushes_local_first)";
    local_only_dropped => "local-only notes taken away: another node joined the user's entry (replace or joined), this node left it, or a write found another node or failed";
    local_only_voided => "times every local-only note was voided at once (a NATS connection event other than a connect, a notice not taken in by a shard, a notice refused for want of a permit, refresh passes fallen behind); the next writes note again";
}

impl ClusterStats {
    /// Adds one to a figure.
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a fanned-out push's result.
    fn outcome(&self, status: PushStatus) {
        Self::inc(match status {
            PushStatus::Delivered(_) | PushStatus::Acked | PushStatus::Accepted => {
                &self.push_delivered
            }
            PushStatus::Offline => &self.push_offline,
            PushStatus::Refused(RefuseReason::TimedOut) => &self.push_timed_out,
            PushStatus::Refused(RefuseReason::ClusterUnavailable) => &self.push_unavailable,
            PushStatus::Refused(_) => &self.push_refused,
        });
    }
}

/// Starts the cluster thread for `cfg` (which must be enabled) and connects it to the
/// shards' mesh. Returns at once: NATS is reached in the background, and reconnected to
/// forever.
pub fn spawn(cfg: ClusterConfig, mesh: Arc<MeshShared>) -> std::io::Result<Arc<ClusterStats>> {
    let (inbox, rx) = flume::bounded(cfg.queue_capacity);
    let (results, results_rx) = flume::unbounded();
    mesh.set_cluster(ClusterPort { inbox, results });
    let stats = Arc::new(ClusterStats::default());
    let thread_stats = Arc::clone(&stats);
    std::thread::Builder::new()
        .name("tether-cluster".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cluster runtime failed to start; running alone");
                    return;
                }
            };
            runtime.block_on(thread::run(cfg, mesh, thread_stats, rx, results_rx));
        })?;
    Ok(stats)
}
