//! How a request reaches the thread that answers it, and how long its answer is awaited.
//!
//! A request about one user (a kick, a presence question) goes one of two ways. On a node in
//! a cluster it goes to the cluster thread, which asks every node holding the user and
//! gathers their counts into a [`Fanned`]; on a node alone it goes to the user's home shard as
//! a [`Control`] message. [`Reach`] is that choice, made in one place: a handler builds it
//! with [`Reach::of`] and gives [`Reach::ask`] the message for each way, and gets back an
//! [`Answer`] saying which way answered.
//!
//! Either way the request is posted without blocking, so a full channel answers 503
//! `overloaded` at once, and its answer is awaited for a bounded time, after which the caller
//! gets 503 `shard_unavailable` or `cluster_unavailable`. `/api/stats`, which asks every
//! shard of this node, posts and waits with the same [`post_shard`] and [`shard_answer`].

use std::time::Duration;

use hyper::StatusCode;

use super::ctx::Ctx;
use super::response::ApiError;
use crate::cluster::{ClusterMsg, Fanned};
use crate::control::Control;
use crate::mesh::{MeshMsg, MeshShared};
use crate::routing::shard_for;

/// How long a kick, presence or stats request waits for a shard.
const SHARD_ANSWER: Duration = Duration::from_secs(5);
/// How long a cluster-wide kick or presence waits for the cluster thread (it bounds each
/// node's answer by `cluster.forward_timeout_ms` itself).
const CLUSTER_ANSWER: Duration = Duration::from_secs(60);

/// The way a request about one user goes from this node.
#[derive(Clone, Copy)]
pub(super) enum Reach<'a> {
    /// The node is in a cluster: to the cluster thread's inbox.
    Cluster(&'a flume::Sender<ClusterMsg>),
    /// The node is alone: to the user's home shard, through the mesh.
    Home(&'a MeshShared),
}

/// An answer about one user, from the way its request went.
pub(super) enum Answer<T> {
    /// Every node's count, gathered by the cluster thread.
    Cluster(Fanned),
    /// The answer of the user's home shard on this node.
    Home(T),
}

impl<'a> Reach<'a> {
    /// The way requests about a user go from this node: through the cluster thread when the
    /// node joined a cluster, else to the home shard.
    pub(super) fn of(ctx: &'a Ctx) -> Reach<'a> {
        match ctx.plane.mesh.cluster() {
            Some(inbox) => Reach::Cluster(inbox),
            None => Reach::Home(&ctx.plane.mesh),
        }
    }

    /// Asks about `user` and waits for the answer. `cluster` builds the cluster thread's
    /// message and `home` the home shard's, each around the reply channel it is given; only
    /// the one for the way taken is called.
    pub(super) async fn ask<T>(
        self,
        user: &str,
        cluster: impl FnOnce(flume::Sender<Fanned>) -> ClusterMsg,
        home: impl FnOnce(flume::Sender<T>) -> Control,
    ) -> Result<Answer<T>, ApiError> {
        match self {
            Reach::Cluster(inbox) => {
                let (reply, rx) = flume::bounded(1);
                let fanned = ask_cluster(inbox, cluster(reply), &rx).await?;
                Ok(Answer::Cluster(fanned))
            }
            Reach::Home(mesh) => {
                let (reply, rx) = flume::bounded(1);
                let to = shard_for(user, mesh.len());
                let answer = ask_shard(mesh, to, home(reply), &rx).await?;
                Ok(Answer::Home(answer))
            }
        }
    }
}

/// Posts `msg` to shard `to` and waits for its answer on `rx`.
async fn ask_shard<T>(
    mesh: &MeshShared,
    to: usize,
    msg: Control,
    rx: &flume::Receiver<T>,
) -> Result<T, ApiError> {
    post_shard(mesh, to, msg)?;
    shard_answer(rx).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shard_unavailable",
            format!("shard {to} did not answer (stopped or draining)"),
        )
    })
}

/// Hands `msg` to the cluster thread and waits for its answer (every node's, gathered).
async fn ask_cluster(
    inbox: &flume::Sender<ClusterMsg>,
    msg: ClusterMsg,
    rx: &flume::Receiver<Fanned>,
) -> Result<Fanned, ApiError> {
    if inbox.try_send(msg).is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the cluster thread's channel is full",
        ));
    }
    // Every node is asked at once; each answers within the forward timeout.
    recv_within(rx, CLUSTER_ANSWER).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            "the cluster thread did not answer",
        )
    })
}

/// Posts `msg` to shard `to` without blocking; a full channel is 503 `overloaded`.
pub(super) fn post_shard(mesh: &MeshShared, to: usize, msg: Control) -> Result<(), ApiError> {
    if mesh.post(to, MeshMsg::Control(Box::new(msg))).is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("shard {to}'s channel is full"),
        ));
    }
    Ok(())
}

/// A shard's answer on `rx`, or `None` when none comes within [`SHARD_ANSWER`] (the shard
/// stopped or is draining).
pub(super) async fn shard_answer<T>(rx: &flume::Receiver<T>) -> Option<T> {
    recv_within(rx, SHARD_ANSWER).await
}

/// The next value on `rx`, unless `wait` passes first or the sender is gone.
async fn recv_within<T>(rx: &flume::Receiver<T>, wait: Duration) -> Option<T> {
    futures_lite::future::or(async { rx.recv_async().await.ok() }, async {
        glommio::timer::sleep(wait).await;
        None
    })
    .await
}
