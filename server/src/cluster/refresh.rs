//! Refresh passes: every local user's entry is rewritten once per `refresh_ms`, and at once
//! after a reconnect; the list of local users is rebuilt from the shards when a login or
//! logout event was dropped; and a watch voids every local-only note when passes fall behind.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::bucket::Why;
use super::node::{Node, SHARD_ANSWER};
use super::stats::ClusterStats;
use crate::control::Control;
use crate::mesh::MeshMsg;

impl Node {
    /// Rewrites every local user's entry once per `refresh_ms` (and at once after a
    /// reconnect); sweeps acknowledgement waits that ran out.
    pub(super) async fn refresh_loop(self: Arc<Self>) {
        let period = Duration::from_millis(self.cfg.refresh_ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.refresh_now.notified() => {}
            }
            self.sweep();
            if self.mesh.take_resync() {
                self.resync().await;
            }
            if !self.connected() {
                continue;
            }
            let started = Instant::now();
            let users = self.locals().names();
            let mut writes = JoinSet::new();
            for user in users {
                while writes.len() >= self.cfg.refresh_concurrency {
                    writes.join_next().await;
                }
                let node = Arc::clone(&self);
                writes.spawn(async move {
                    let _ = node.write(&user, Why::Refresh).await;
                });
            }
            while writes.join_next().await.is_some() {}
            *self.pass_started.lock().unwrap_or_else(|e| e.into_inner()) = started;
            ClusterStats::inc(&self.stats.refresh_passes);
        }
    }

    /// Voids every note while the last refresh pass that completed began more than 5/8 of
    /// the TTL ago (looked at every 1/16 of it, and only when a note was given since the last
    /// void). A note stands on this node's part of the entry being live, so that a node
    /// joining asks this one (`local.rs`, rule 2): every noted user was written since that
    /// pass began (a failed write drops its note), so its part is live until that start plus
    /// the TTL. When passes fall behind, no note outlives 11/16 of the TTL after the write
    /// behind it, which leaves the rest to clocks that disagree.
    pub(super) async fn watch_refresh(self: Arc<Self>) {
        let ttl = Duration::from_millis(self.cfg.directory_ttl_ms);
        loop {
            tokio::time::sleep(ttl / 16).await;
            let since = self
                .pass_started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed();
            let noted = self.stats.local_only_noted.load(Ordering::Relaxed);
            if since > ttl * 5 / 8 && noted != self.noted_at_void.load(Ordering::Relaxed) {
                self.void_notes();
            }
        }
    }

    /// Rebuilds the local user list from the shards (a login or logout event was dropped).
    async fn resync(&self) {
        let mut users = HashSet::new();
        for shard in 0..self.mesh.len() {
            let (reply, rx) = flume::bounded(1);
            let msg = MeshMsg::Control(Box::new(Control::Users { reply }));
            if self.mesh.post(shard, msg).is_err() {
                self.mesh.request_resync();
                return;
            }
            match tokio::time::timeout(SHARD_ANSWER, rx.recv_async()).await {
                Ok(Ok(list)) => users.extend(list),
                _ => {
                    self.mesh.request_resync();
                    return;
                }
            }
        }
        let gone = {
            let mut locals = self.locals();
            let gone = locals.rebuild(&users);
            self.stats
                .users
                .store(locals.len() as u64, Ordering::Relaxed);
            gone
        };
        for user in gone {
            let _ = self.write(&user, Why::Update).await;
        }
    }
}
