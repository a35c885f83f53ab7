//! [`ControlPlane`]: everything the control plane is given when it starts.

use std::net::TcpListener as StdListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::config::ApiConfig;
use super::keys::ApiKeys;
use crate::control::ApiResult;
use crate::counters::Published;
use crate::mesh::MeshShared;
use crate::shutdown::Shutdown;

/// Everything the control plane needs, built by [`crate::server::run`] and moved to its
/// thread.
#[derive(Debug)]
pub struct ControlPlane {
    /// The API listener (bound by the server so errors show at start), if on.
    pub api: Option<StdListener>,
    /// The metrics-only listener, if on.
    pub metrics: Option<StdListener>,
    /// `[api]` settings.
    pub cfg: ApiConfig,
    /// Current bearer keys (swapped on reload).
    pub keys: ApiKeys,
    /// The shards' channels.
    pub mesh: Arc<MeshShared>,
    /// Results of API pushes, from the shards.
    pub results: flume::Receiver<ApiResult>,
    /// The shards' published counters.
    pub published: Vec<Arc<Published>>,
    /// Starts the drain.
    pub shutdown: Shutdown,
    /// Set once every shard listens.
    pub ready: Arc<AtomicBool>,
    /// This node's id and the cluster thread's figures, when the node joins a cluster (pushes,
    /// kicks and presence then go through the cluster thread).
    pub cluster: Option<(String, Arc<crate::cluster::ClusterStats>)>,
    /// The `tether-upstream` thread's figures, when `[upstream] sink` is `webhook` or `nats`.
    pub upstream: Option<Arc<crate::upstream::UpstreamStats>>,
}
