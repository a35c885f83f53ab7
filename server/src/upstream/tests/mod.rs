//! The `tether-upstream` thread against real backends on loopback: a small HTTP/1.1 server
//! (`http.rs`) for the webhook, and `nats-server` when it is installed for NATS.
//!
//! Results are read where a shard would read them: from a real mesh's receiver.

mod http;
mod nats;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Receiver;

use super::{Outcome, Sink, UpstreamConfig, UpstreamJob, UpstreamStats};
use crate::core::msg::{ConnKey, UpstreamOrigin};
use crate::core::ConnId;
use crate::mesh::{MeshMsg, MeshShared};

/// A configuration for `sink` with small limits.
fn config(sink: Sink) -> UpstreamConfig {
    UpstreamConfig {
        sink,
        max_payload: 1024,
        max_reply_bytes: 64,
        max_in_flight_per_connection: 8,
        max_in_flight: 64,
        timeout_ms: 2_000,
        webhook_url: String::new(),
        webhook_concurrency: 4,
        webhook_secret: String::new(),
        nats_subject: "tether.test.upstream".into(),
    }
}

/// Message `id` of client connection `conn`.
fn job(conn: u32, id: u64, payload: &str) -> UpstreamJob {
    UpstreamJob {
        origin: UpstreamOrigin {
            conn: ConnKey {
                shard: 0,
                handle: ConnId { key: conn, gen: 7 },
            },
            client_id: id,
        },
        user: "alice".into(),
        device: "phone".into(),
        session_id: 42,
        payload: Bytes::from(payload.to_owned()),
    }
}

/// The thread for `cfg`, with one shard whose channel holds `capacity` messages.
struct Harness {
    /// The mesh the thread answers on (its inbox is registered there).
    mesh: Arc<MeshShared>,
    /// Shard 0's channel.
    rx: Receiver<MeshMsg>,
    /// The thread's figures.
    stats: Arc<UpstreamStats>,
}

impl Harness {
    fn start(cfg: UpstreamConfig, nats_urls: Vec<String>, capacity: usize) -> Harness {
        let (mesh, mut rxs) = MeshShared::new(1, capacity).unwrap();
        let servers = crate::cluster::NatsServers::plain(nats_urls);
        let stats = super::spawn(cfg, servers, Arc::clone(&mesh)).unwrap();
        Harness {
            mesh,
            rx: rxs.remove(0),
            stats,
        }
    }

    /// Hands `job` to the thread as a shard does.
    fn send(&self, job: UpstreamJob) {
        self.mesh.upstream().unwrap().try_send(job).unwrap();
    }

    /// The next result on shard 0, within `within`.
    fn result_within(&self, within: Duration) -> (u64, Outcome) {
        match self.rx.recv_timeout(within) {
            Ok(MeshMsg::Shard(crate::core::ShardMsg::UpstreamResult { origin, outcome })) => {
                (origin.client_id, *outcome)
            }
            Ok(other) => panic!("not an upstream result: {other:?}"),
            Err(e) => panic!("no result within {within:?}: {e}"),
        }
    }

    /// The next result on shard 0 (within 5 s).
    fn result(&self) -> (u64, Outcome) {
        self.result_within(Duration::from_secs(5))
    }

    /// A figure by name.
    fn stat(&self, name: &str) -> u64 {
        self.stats
            .all()
            .into_iter()
            .find(|(f, _)| f.name == name)
            .map(|(_, v)| v.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap()
    }
}
