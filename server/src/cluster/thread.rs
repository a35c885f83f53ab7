//! The cluster thread: its NATS connection, the tasks it starts and its main loop.
//!
//! [`run`] connects to NATS (and reconnects forever), builds the thread's state ([`Node`],
//! `node.rs`), starts its tasks and then takes the shards' and the API's messages
//! ([`ClusterMsg`]) one after another ([`Node::handle`]). Everything runs on one
//! current-thread tokio runtime. Shards are reached only through the mesh
//! ([`MeshShared::post`]), and their answers come back on the mesh's cluster result channel
//! (pushes) or on a channel the request carries (kick, presence, users).
//!
//! **Bounded work.** Every task this thread spawns holds a permit: this node's own work (a
//! push fanned out, a kick, a presence question, a login's or logout's directory write) one of
//! `max_in_flight`, a request served for another node one of `max_served_in_flight`. Permits
//! are taken with `try_acquire` where the work arrives: past the bound a push is refused
//! `Overloaded` at once, another node's push is answered `Overloaded` and its other requests
//! with an error, and nothing waits in an unbounded line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tether_proto::{PushStatus, RefuseReason};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::bucket::Why;
use super::config::ClusterConfig;
use super::link::NatsServers;
use super::local::{Locals, Tell};
use super::msg::{ClusterMsg, Fanned};
use super::node::Node;
use super::peers::REFUSAL_LOG_MS;
use super::seal::{Guard, Keys};
use super::stats::ClusterStats;
use super::wire::Request;
use crate::control::ApiResult;
use crate::core::msg::ClusterEvent;
use crate::mesh::MeshShared;
use crate::ratelog::RateLog;
use crate::results::Waiters;

/// Runs the cluster thread until the process exits.
pub(super) async fn run(
    cfg: ClusterConfig,
    mesh: Arc<MeshShared>,
    stats: Arc<ClusterStats>,
    inbox: flume::Receiver<ClusterMsg>,
    results: flume::Receiver<ApiResult>,
) {
    let refresh_now = Arc::new(Notify::new());
    let events_stats = Arc::clone(&stats);
    let events_refresh = Arc::clone(&refresh_now);
    let events_mesh = Arc::clone(&mesh);
    let Some(keys) = Keys::new(&cfg.secrets) else {
        warn!("cluster: cluster.secrets unusable; running alone");
        return;
    };
    let servers = NatsServers::of(&cfg);
    let options = match servers.options() {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "cluster: NATS options unusable; running alone");
            return;
        }
    };
    let options = options
        .name(format!("tether-{}", cfg.node_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_millis(cfg.forward_timeout_ms)))
        // Back in at most a second once NATS is there again.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .event_callback(move |event| {
            let stats = Arc::clone(&events_stats);
            let refresh = Arc::clone(&events_refresh);
            if !matches!(event, async_nats::Event::Connected) {
                // Notices from other nodes may have been lost (a dropped connection, a slow
                // consumer, a server error): no note can be vouched for any more.
                events_mesh.void_local_only();
                ClusterStats::inc(&stats.local_only_voided);
            }
            async move {
                match event {
                    async_nats::Event::Connected => {
                        stats.connected.store(1, Ordering::Relaxed);
                        ClusterStats::inc(&stats.reconnects);
                        info!("cluster: connected to NATS; re-registering this node's users");
                        refresh.notify_one();
                    }
                    async_nats::Event::Disconnected => {
                        stats.connected.store(0, Ordering::Relaxed);
                        ClusterStats::inc(&stats.disconnects);
                        warn!(
                            "cluster: NATS connection lost; local delivery only until it is back"
                        );
                    }
                    other => debug!(event = %other, "cluster: NATS event"),
                }
            }
        });
    let client = match options.connect(servers.urls.clone()).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cluster: NATS client could not start; running alone");
            return;
        }
    };
    let js = jetstream::new(client.clone());
    let subject = cfg.subject(&cfg.node_id);
    info!(node = %cfg.node_id, %subject, urls = ?servers.urls_for_log(), "cluster: joining");
    let guard = Guard::new(
        keys.clone(),
        &cfg.node_id,
        cfg.max_clock_skew_ms,
        cfg.replay_cache,
    );
    let (late, late_rx) = flume::unbounded();
    let node = Arc::new(Node {
        subject,
        mesh,
        stats,
        client,
        js,
        store: tokio::sync::Mutex::new(None),
        waiting: Mutex::new(Waiters::default()),
        acks: Mutex::new(HashMap::new()),
        locals: Mutex::new(Locals::new(cfg.local_first)),
        pass_started: Mutex::new(Instant::now()),
        noted_at_void: AtomicU64::new(0),
        next_job: AtomicU64::new(1),
        refresh_now: Notify::new(),
        keys,
        guard: Mutex::new(guard),
        seq: AtomicU64::new(1),
        own: Arc::new(Semaphore::new(cfg.max_in_flight)),
        served: Arc::new(Semaphore::new(cfg.max_served_in_flight)),
        late,
        refusal_log: Mutex::new(RateLog::new(REFUSAL_LOG_MS)),
        cfg,
    });
    // The connect callback's notify is a separate handle: forward it.
    let forward = Arc::clone(&node);
    tokio::spawn(async move {
        loop {
            refresh_now.notified().await;
            forward.refresh_now.notify_one();
        }
    });
    tokio::spawn(Arc::clone(&node).dispatch(results));
    tokio::spawn(Arc::clone(&node).answer_late(late_rx));
    tokio::spawn(Arc::clone(&node).serve());
    tokio::spawn(Arc::clone(&node).refresh_loop());
    tokio::spawn(Arc::clone(&node).watch_refresh());
    while let Ok(msg) = inbox.recv_async().await {
        node.handle(msg);
    }
}

impl Node {
    /// A permit for one of this node's own tasks, or `None` (counted) past `max_in_flight`.
    fn permit(&self) -> Option<OwnedSemaphorePermit> {
        let p = Arc::clone(&self.own).try_acquire_owned().ok();
        if p.is_none() {
            ClusterStats::inc(&self.stats.overloaded);
        }
        p
    }

    /// One message from a shard or the API, in arrival order: the local user list changes
    /// here, so a logout and a new login of the same user keep their order. Each task it
    /// starts holds a permit; without one the work is refused now and counted: a push
    /// `Overloaded`, a kick or presence question answered with nothing found, a login's
    /// directory write left to the next refresh pass (and its `replace` not sent), a logout's
    /// not written (this node's part of the entry expires by itself; pushes forwarded here
    /// meanwhile find the user offline).
    fn handle(self: &Arc<Self>, msg: ClusterMsg) {
        match msg {
            ClusterMsg::Event(ClusterEvent::Login { user, device }) => {
                let mut locals = self.locals();
                locals.arrive(&user);
                self.stats
                    .users
                    .store(locals.len() as u64, Ordering::Relaxed);
                drop(locals);
                if let Some(permit) = self.permit() {
                    let node = Arc::clone(self);
                    tokio::spawn(async move {
                        let _ = node.write(&user, Why::Login(&device)).await;
                        drop(permit);
                    });
                }
            }
            ClusterMsg::Event(ClusterEvent::Logout { user }) => {
                let mut locals = self.locals();
                locals.leave(&user);
                self.stats
                    .users
                    .store(locals.len() as u64, Ordering::Relaxed);
                // A note given for this stay may still be on its way to the shard, which may
                // hold the user again already: this takes it away behind it.
                self.tell(&mut locals, &user, Tell::NotAlone, None);
                drop(locals);
                if let Some(permit) = self.permit() {
                    let node = Arc::clone(self);
                    tokio::spawn(async move {
                        let _ = node.write(&user, Why::Update).await;
                        drop(permit);
                    });
                }
            }
            ClusterMsg::Event(ClusterEvent::Push {
                origin,
                user,
                payload,
                want_ack,
                sender,
            }) => {
                let Some(permit) = self.permit() else {
                    ClusterStats::inc(&self.stats.pushes);
                    let status = PushStatus::Refused(RefuseReason::Overloaded);
                    self.stats.outcome(status);
                    return self.answer_now(origin, status);
                };
                let node = Arc::clone(self);
                tokio::spawn(async move {
                    node.push(origin, user, payload, want_ack, sender).await;
                    drop(permit);
                });
            }
            ClusterMsg::Kick { kick, reply } => {
                let Some(permit) = self.permit() else {
                    let _ = reply.try_send(Fanned::default());
                    return;
                };
                let node = Arc::clone(self);
                tokio::spawn(async move {
                    let local = node.local_kick(kick.clone());
                    let req = Request::Kick(kick.clone());
                    let fanned = node.fan_count(&kick.user, local, req).await;
                    let _ = reply.try_send(fanned);
                    drop(permit);
                });
            }
            ClusterMsg::Presence { user, reply } => {
                let Some(permit) = self.permit() else {
                    let _ = reply.try_send(Fanned::default());
                    return;
                };
                let node = Arc::clone(self);
                tokio::spawn(async move {
                    let local = node.local_presence(&user);
                    let req = Request::Presence { user: user.clone() };
                    let fanned = node.fan_count(&user, local, req).await;
                    let _ = reply.try_send(fanned);
                    drop(permit);
                });
            }
        }
    }
}
