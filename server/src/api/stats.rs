//! `GET /api/stats`: the live figures of every shard of this node, asked through the mesh
//! (each shard answers in its batch), and the cluster thread's figures when the node is in a
//! cluster.

use std::sync::atomic::Ordering;

use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

use super::ctx::Ctx;
use super::reach::{post_shard, shard_answer};
use super::response::{json_response, Body};
use crate::control::{Control, ShardStats};
use crate::counters::Counter;

/// One shard's figures as JSON.
#[derive(Debug, Serialize)]
struct ShardJson {
    /// The shard's index.
    shard: usize,
    /// Connections it holds.
    connections: usize,
    /// Users with a main connection on it.
    users: usize,
    /// Whether it is draining.
    draining: bool,
    /// Pushes waiting there for an acknowledgement.
    acks_waiting: usize,
    /// Messages waiting in its mesh channel.
    mesh_depth: usize,
    /// Every counter, by its `/api/stats` name.
    counters: serde_json::Map<String, Value>,
}

/// Asks every shard for its figures; a shard that does not answer is listed with an error.
pub(super) async fn stats(ctx: &Ctx) -> Response<Body> {
    let n = ctx.plane.mesh.len();
    let mut asked = Vec::with_capacity(n);
    for i in 0..n {
        let (reply, rx) = flume::bounded(1);
        let posted = post_shard(&ctx.plane.mesh, i, Control::Stats { reply }).is_ok();
        asked.push((i, posted.then_some(rx)));
    }
    let mut shards = Vec::with_capacity(n);
    let (mut connections, mut users) = (0, 0);
    for (i, rx) in asked {
        let answer = match rx {
            Some(rx) => shard_answer(&rx).await,
            None => None,
        };
        match answer {
            Some(s) => {
                connections += s.connections;
                users += s.users;
                shards.push(serde_json::to_value(shard_json(ctx, s)).unwrap_or(Value::Null));
            }
            None => shards.push(json!({"shard": i, "error": "no answer"})),
        }
    }
    let cluster = match &ctx.plane.cluster {
        Some((node, stats)) => {
            let mut figures: serde_json::Map<String, Value> = stats
                .all()
                .into_iter()
                .map(|(f, v)| (f.name.to_string(), Value::from(v.load(Ordering::Relaxed))))
                .collect();
            figures.insert("node".into(), Value::from(node.as_str()));
            Value::Object(figures)
        }
        None => Value::Null,
    };
    json_response(
        StatusCode::OK,
        &json!({
            "ready": ctx.ready(),
            "draining": ctx.plane.shutdown.is_triggered(),
            "connections": connections,
            "users": users,
            "shards": shards,
            "cluster": cluster,
        }),
    )
}

/// One shard's answer, with the depth of its mesh channel.
fn shard_json(ctx: &Ctx, s: ShardStats) -> ShardJson {
    let counters = Counter::ALL
        .iter()
        .map(|c| (c.name().to_string(), Value::from(s.counters.get(*c))))
        .collect();
    ShardJson {
        shard: s.shard,
        connections: s.connections,
        users: s.users,
        draining: s.draining,
        acks_waiting: s.acks_waiting,
        mesh_depth: ctx.plane.mesh.depth(s.shard),
        counters,
    }
}
