//! A fleet for the cluster tests: a real nats-server with JetStream and tether nodes joined to
//! it on loopback, with the questions those tests ask of them (is a node connected, which
//! devices of a user does a node see where, what did a push come to).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tether_proto::{CloseCode, Frame};

use crate::http::{get, post};
use crate::nats::{self, Nats, CLUSTER_SECRET};
use crate::{Client, Server, Settings};

/// The directory TTL of the test nodes (a refresh every second).
pub const TTL_MS: u64 = 6_000;
/// How long a test waits for the cluster to settle (a loaded 2-core machine is slow).
pub const SETTLE: Duration = Duration::from_secs(30);

/// A nats-server and nodes named by their ids.
pub struct Fleet {
    /// The nats-server.
    pub nats: Nats,
    /// The nodes, in the order of their ids.
    pub nodes: Vec<Server>,
}

impl Fleet {
    /// Starts NATS and three nodes `a`, `b`, `c`, and waits until each is connected to NATS.
    /// `None` (the test is skipped) when nats-server is not installed.
    pub fn start() -> Option<Fleet> {
        Fleet::start_with("")
    }

    /// [`Fleet::start`], with `a_cluster` (lines of `[cluster]`) added to node a's settings.
    pub fn start_with(a_cluster: &str) -> Option<Fleet> {
        Fleet::of(&["a", "b", "c"], a_cluster, "")
    }

    /// NATS and one node per id, with `first_cluster` (lines of `[cluster]`) added to the
    /// first node's settings and `every_cluster` to every node's; waits until each node is
    /// connected to NATS.
    pub fn of(ids: &[&str], first_cluster: &str, every_cluster: &str) -> Option<Fleet> {
        if !nats::installed() {
            eprintln!(
                "SKIPPED: nats-server is not installed (apt-get install nats-server); \
                 the cluster tests need a real one"
            );
            return None;
        }
        let nats = Nats::start().expect("nats-server");
        let nodes: Vec<Server> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let first = if i == 0 { first_cluster } else { "" };
                let extra = format!("{first}{every_cluster}");
                Server::start(&node_settings(&nats, id, &extra)).expect("node")
            })
            .collect();
        let fleet = Fleet { nats, nodes };
        for i in 0..ids.len() {
            fleet.wait_connected(i);
        }
        Some(fleet)
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Server {
        &self.nodes[i]
    }

    /// The node's cluster figures (`/api/stats`).
    pub fn cluster_stats(&self, i: usize) -> Value {
        let resp = get(self.node(i).api, "/api/stats", &[]).expect("stats");
        resp.json()["cluster"].clone()
    }

    /// One of the node's cluster figures.
    pub fn cluster_figure(&self, i: usize, name: &str) -> u64 {
        self.cluster_stats(i)[name].as_u64().unwrap_or(0)
    }

    /// One shard counter of the node, added up over its shards (`/api/stats`).
    pub fn shard_counter(&self, i: usize, name: &str) -> u64 {
        let resp = get(self.node(i).api, "/api/stats", &[]).expect("stats");
        resp.json()["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .map(|s| s["counters"][name].as_u64().unwrap_or(0))
            .sum()
    }

    /// Waits until node `i` is connected to NATS.
    pub fn wait_connected(&self, i: usize) {
        poll(SETTLE, &format!("node {i} connected to NATS"), || {
            self.cluster_stats(i)["connected"] == json!(1)
        });
    }

    /// The devices of `user` node `i` reports for node `on` (presence, cluster-wide).
    pub fn devices_seen(&self, i: usize, user: &str, on: &str) -> Option<u64> {
        let resp = get(self.node(i).api, &format!("/api/presence?user={user}"), &[]).ok()?;
        let v = resp.json();
        v["cluster"]["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == on)
            .and_then(|n| n["count"].as_u64())
    }

    /// Waits until node `i` sees `devices` devices of `user` on node `on` through the directory.
    pub fn wait_seen(&self, i: usize, user: &str, on: &str, devices: u64) {
        poll(SETTLE, &format!("node {i} sees {user} on {on}"), || {
            self.devices_seen(i, user, on) == Some(devices)
        });
    }
}

/// The configuration of node `id`, with `cluster` (lines of `[cluster]`).
pub fn node_settings(nats: &Nats, id: &str, cluster: &str) -> Settings {
    Settings {
        log: "info,tether_server::cluster=debug",
        extra: format!(
            "[cluster]\nnats_urls = [\"{}\"]\nnode_id = \"{id}\"\nsecrets = [\"{CLUSTER_SECRET}\"]\ndirectory_ttl_ms = {TTL_MS}\n\
             refresh_ms = 1000\nforward_timeout_ms = 3000\nmax_clock_skew_ms = 300000\n{cluster}\
             [send]\nenabled = true\n",
            nats.url()
        ),
        ..Settings::default()
    }
}

/// Polls `ok` every 100 ms until it holds; fails the test after `limit`.
pub fn poll(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pushes `payload` to `user` through node `server`'s HTTP API; returns that user's result.
pub fn api_push(server: &Server, user: &str, payload: &str) -> Value {
    let resp = post(
        server.api,
        "/api/push",
        &[],
        &json!({"user": user, "payload": payload}),
    )
    .expect("push request");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let results = resp.json()["results"].clone();
    assert_eq!(results.as_array().map(Vec::len), Some(1), "{results}");
    results[0].clone()
}

/// The next frame a client gets is a `Push` of `body`.
pub fn expect_push(client: &mut Client, body: &[u8]) {
    match client.recv().expect("a push") {
        Frame::Push(p) => assert_eq!(&p.payload[..], body),
        other => panic!("expected Push, got {other:?}"),
    }
}

/// The frames a client gets until its connection closes contain a `Kick` with `code`.
pub fn expect_kick(client: &mut Client, code: CloseCode) {
    let frames = client.until_closed().expect("frames until close");
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Kick(k) if k.reason == code)),
        "expected a Kick({code:?}), got {frames:?}"
    );
}
