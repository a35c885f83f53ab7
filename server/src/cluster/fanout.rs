//! Pushes fanned out. This node's part goes to the user's home shard here with a cluster
//! origin, every other node the directory names is asked at the same time, and the parts
//! make one result for the sender (`wire::combine`), handed back through the mesh or the
//! API's result channel.
//!
//! A push posted to this node's shards (this node's part, or a push another node forwarded
//! here) waits for its results in a [`Waiters`] table, the one the HTTP API keeps for its own
//! pushes (`results.rs`). Its `Acked` goes to the job here, or back to the node that
//! forwarded it. A job that asked for an acknowledgement gives the sender its `Acked` after
//! the delivered result, even when a device acknowledged before that result went out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_proto::{PushStatus, RefuseReason};

use super::node::{valid_user, AckTo, AckWait, Node};
use super::peers::{join_all, AskError};
use super::stats::ClusterStats;
use super::wire::{combine, Part, Request};
use crate::control::{ApiResult, Control};
use crate::core::ShardMsg;
use crate::mesh::{MeshMsg, Origin, RoutedPush, SendFrom};
use crate::results::{Settled, Waiters, FIRST_RESULT_TIMEOUT};
use crate::routing::shard_for;

/// How long a push that asked for an acknowledgement keeps waiting for one.
const ACK_WAIT: Duration = Duration::from_secs(5 * 60);

/// Tries, 10 ms apart, to hand a result to a shard whose channel is full.
const RESULT_TRIES: usize = 200;

impl Node {
    /// Fans a push out: this node's home shard and every other node the directory names, at
    /// once; then one result to the sender.
    pub(super) async fn push(
        self: Arc<Self>,
        origin: Origin,
        user: String,
        payload: Bytes,
        want_ack: bool,
        sender: Option<Box<SendFrom>>,
    ) {
        ClusterStats::inc(&self.stats.pushes);
        let job = self.next_job.fetch_add(1, Ordering::Relaxed);
        if want_ack {
            self.acks.lock().unwrap_or_else(|e| e.into_inner()).insert(
                job,
                AckWait {
                    origin: None,
                    early: false,
                    since: Instant::now(),
                },
            );
        }
        let status = if valid_user(&user) {
            let remote = self.remote_push(&user, &payload, want_ack, job, sender.as_deref());
            let ack = want_ack.then_some(AckTo::Job(job));
            let local = self.local_push(&user, payload.clone(), ack, sender.clone());
            let (local, mut parts) = tokio::join!(local, remote);
            parts.push(local);
            combine(&parts)
        } else {
            PushStatus::Refused(RefuseReason::BadTarget)
        };
        self.stats.outcome(status);
        self.answer(origin, status).await;
        if !want_ack {
            return;
        }
        let acked_early = {
            let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
            match (status, acks.get_mut(&job)) {
                (PushStatus::Delivered(_), Some(w)) if w.early => {
                    acks.remove(&job);
                    true
                }
                (PushStatus::Delivered(_), Some(w)) => {
                    w.origin = Some(origin);
                    false
                }
                _ => {
                    acks.remove(&job);
                    false
                }
            }
        };
        if acked_early {
            self.answer(origin, PushStatus::Acked).await;
        }
    }

    /// This node's part: the push goes to the user's home shard with a cluster origin (`ack`:
    /// where its acknowledgement goes, when it asks for one).
    pub(super) async fn local_push(
        &self,
        user: &str,
        payload: Bytes,
        ack: Option<AckTo>,
        sender: Option<Box<SendFrom>>,
    ) -> Part {
        let want_ack = ack.is_some();
        let (id, first) = self.waiting().wait(ack, Instant::now());
        let origin = Origin::Cluster { id };
        let home = shard_for(user, self.mesh.len());
        let msg = MeshMsg::Control(Box::new(Control::Push(RoutedPush {
            origin,
            user: user.to_string(),
            payload,
            want_ack,
            from: sender,
        })));
        if self.mesh.post(home, msg).is_err() {
            self.waiting().forget(id);
            return Part::Status(PushStatus::Refused(RefuseReason::Overloaded));
        }
        match tokio::time::timeout(FIRST_RESULT_TIMEOUT, first.recv_async()).await {
            Ok(Ok(status)) => Part::Status(status),
            _ => {
                self.waiting().forget(id);
                Part::TimedOut
            }
        }
    }

    /// The other nodes' parts, asked in parallel.
    async fn remote_push(
        &self,
        user: &str,
        payload: &[u8],
        want_ack: bool,
        job: u64,
        sender: Option<&SendFrom>,
    ) -> Vec<Part> {
        let Ok(nodes) = self.lookup(user).await else {
            return vec![Part::Unavailable];
        };
        if nodes.is_empty() {
            return Vec::new();
        }
        let req = Request::push(user, payload, want_ack, &self.cfg.node_id, job, sender).encode();
        let asks = nodes.iter().map(|n| self.ask(n, req.clone()));
        let answers = join_all(asks).await;
        answers
            .into_iter()
            .map(|a| match a {
                Ok(reply) => match reply.to_status() {
                    Some(PushStatus::Acked) | None => {
                        ClusterStats::inc(&self.stats.forward_failed);
                        Part::Unavailable
                    }
                    Some(s) => Part::Status(s),
                },
                Err(AskError::Gone) => Part::Gone,
                Err(AskError::TimedOut) => Part::TimedOut,
                Err(AskError::Failed) => Part::Unavailable,
            })
            .collect()
    }

    /// A device acknowledged a push this node fanned out.
    pub(super) async fn acked(&self, job: u64) {
        let origin = {
            let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
            let Some(w) = acks.get_mut(&job) else {
                return;
            };
            match w.origin {
                Some(o) => {
                    acks.remove(&job);
                    o
                }
                None => {
                    w.early = true;
                    return;
                }
            }
        };
        self.answer(origin, PushStatus::Acked).await;
    }

    /// Results of pushes posted to this node's shards, to whoever waits for them.
    pub(super) async fn dispatch(self: Arc<Self>, results: flume::Receiver<ApiResult>) {
        while let Ok(ApiResult { id, status }) = results.recv_async().await {
            let settled = self.waiting().settle(id, status);
            let Settled::Acked(ack) = settled else {
                continue;
            };
            match ack {
                AckTo::Job(job) => self.acked(job).await,
                AckTo::Remote { node, job } => {
                    let req = Request::Acked { job }.encode();
                    let subject = self.cfg.subject(&node);
                    let (headers, _) = self.sign(&node, &req);
                    ClusterStats::inc(&self.stats.forwards);
                    let sent = self
                        .client
                        .publish_with_headers(subject, headers, req.into());
                    if sent.await.is_err() {
                        ClusterStats::inc(&self.stats.forward_failed);
                    }
                }
            }
        }
    }

    /// Hands a result to the push's sender: the API's result channel, or the sender's shard.
    async fn answer(&self, origin: Origin, status: PushStatus) {
        match origin {
            Origin::Api { id } => {
                if !self.mesh.api_result(ApiResult { id, status }) {
                    ClusterStats::inc(&self.stats.results_lost);
                }
            }
            // The sender was told Accepted already; the outcome was counted where decided.
            Origin::Untold => {}
            Origin::Conn(origin) => {
                let shard = usize::from(origin.conn.shard);
                let mut msg = MeshMsg::Shard(ShardMsg::Result { origin, status });
                for _ in 0..RESULT_TRIES {
                    match self.mesh.post(shard, msg) {
                        Ok(()) => return,
                        Err(back) => msg = back,
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ClusterStats::inc(&self.stats.results_lost);
            }
            Origin::Cluster { .. } => ClusterStats::inc(&self.stats.results_lost),
        }
    }

    /// Hands a refusal decided in [`Node::handle`] to the push's sender without a task: one
    /// try now, and a shard whose channel is full gets it from [`Node::answer_late`].
    pub(super) fn answer_now(&self, origin: Origin, status: PushStatus) {
        match origin {
            Origin::Conn(to) => {
                let msg = MeshMsg::Shard(ShardMsg::Result { origin: to, status });
                if self.mesh.post(usize::from(to.conn.shard), msg).is_err() {
                    let _ = self.late.send((origin, status));
                }
            }
            Origin::Api { .. } | Origin::Untold | Origin::Cluster { .. } => {
                if self.late.send((origin, status)).is_err() {
                    ClusterStats::inc(&self.stats.results_lost);
                }
            }
        }
    }

    /// Refusals whose sender's shard had a full channel, handed over one after another (only
    /// an origin and a status each: no payload waits here).
    pub(super) async fn answer_late(self: Arc<Self>, late: flume::Receiver<(Origin, PushStatus)>) {
        while let Ok((origin, status)) = late.recv_async().await {
            self.answer(origin, status).await;
        }
    }

    /// Drops acknowledgement waits older than [`ACK_WAIT`].
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, w| now.saturating_duration_since(w.since) < ACK_WAIT);
        self.waiting().sweep(now, ACK_WAIT);
    }

    /// Locks the pushes posted to this node's shards.
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiters<AckTo>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}
