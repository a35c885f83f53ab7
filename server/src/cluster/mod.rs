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
//! The files: what the thread is sent (`msg.rs`), its figures (`stats.rs`), and the pure parts
//! it is built on (`directory.rs`, `local.rs`, `wire.rs`, `seal.rs`, `config.rs`, `link.rs`);
//! then the thread itself, one job per file: `thread.rs` its NATS connection, tasks and main
//! loop, `node.rs` the state its tasks share, `bucket.rs` directory reads and writes,
//! `notes.rs` local-only notes as home shards are told of them, `refresh.rs` refresh passes,
//! `fanout.rs` pushes fanned out and their results, `counts.rs` kicks and presence questions,
//! `peers.rs` requests to other nodes, `serve.rs` requests from them.

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
mod stats;
mod thread;
pub mod wire;

use std::sync::Arc;

pub use config::{redact_url, ClusterConfig, Hidden};
pub use link::NatsServers;
pub use msg::{ClusterMsg, Fanned};
pub use stats::ClusterStats;

use crate::mesh::{ClusterPort, MeshShared};

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
