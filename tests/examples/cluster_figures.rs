//! The cluster's figures for BENCHMARKS.md: push latency across nodes against the same node
//! (and a node without a cluster), what a login costs the directory (CPU and NATS messages),
//! and what a node's death costs the cluster. Bounded: a few thousand pushes and logins on
//! loopback, about a minute.
//!
//! `cargo run --release -p tether-tests --example cluster_figures -- [PUSHES] [USERS]`
//! (defaults 2000 and 3000). Needs `nats-server` on the PATH.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tether_proto::{BackendPush, Frame, PushStatus};
use tether_tests::http::get;
use tether_tests::nats::{self, Nats, CLUSTER_SECRET};
use tether_tests::{Client, Server, Settings};

/// Admission caps out of the way: every connection comes from 127.0.0.1.
const OPEN_LIMITS: &str = "per_address_accept_rate = 1000000\nper_address_accept_burst = 1000000\n\
     per_address_login_rate = 1000000\nper_address_login_burst = 1000000\n\
     accept_rate = 1000000\naccept_burst = 1000000\nlogin_rate = 1000000\nlogin_burst = 1000000\n";
/// Directory timings of the measured fleet.
const TTL_MS: u64 = 40_000;
const REFRESH_MS: u64 = 15_000;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let pushes: usize = args.next().map_or(Ok(2000), |a| a.parse())?;
    let users: usize = args.next().map_or(Ok(3000), |a| a.parse())?;
    if !nats::installed() {
        bail!("nats-server is not installed");
    }
    let nats = Nats::start()?;
    let solo = Server::start(&settings(None))?;
    let nodes: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|id| Server::start(&settings(Some((&nats, id)))))
        .collect::<anyhow::Result<_>>()?;
    for n in &nodes {
        wait(
            Duration::from_secs(30),
            || Ok(cluster(n)?["connected"] == 1),
        )?;
    }
    println!("# cluster figures: {pushes} pushes per case, {users} logins");

    // ---- latency: one backend on node a, pushes one at a time, result round trip ----
    let (_solo_user, _) = solo.client("lat", "d")?;
    let solo_rtt = push_rtts(&solo, "lat", pushes)?;
    let (_same, _) = nodes[0].client("lat-same", "d")?;
    let (_remote, _) = nodes[2].client("lat-remote", "d")?;
    wait(Duration::from_secs(30), || {
        Ok(presence_nodes(&nodes[0], "lat-remote")?.contains(&"c".to_string()))
    })?;
    let local_first0 = local_first(&nodes[0])?;
    let same_rtt = push_rtts(&nodes[0], "lat-same", pushes)?;
    let local_first_same = local_first(&nodes[0])? - local_first0;
    let cross_rtt = push_rtts(&nodes[0], "lat-remote", pushes)?;
    println!("\n## push result round trip (backend on node a, BackendPush -> PushResult)");
    println!("| case | p50 | p99 | mean |");
    println!("|---|---|---|---|");
    for (name, rtts) in [
        ("single node, no cluster", &solo_rtt),
        ("cluster, user on the same node", &same_rtt),
        ("cluster, user on another node", &cross_rtt),
    ] {
        let (p50, p99, mean) = summary(rtts);
        println!("| {name} | {p50:.0} µs | {p99:.0} µs | {mean:.0} µs |");
    }
    println!(
        "- same-node pushes delivered without the directory (local-first): {local_first_same} of {}",
        pushes + 100
    );

    // ---- a login's cost: CPU of the node, NATS messages ----
    let solo_cpu = login_cpu(&solo, "solo", users)?;
    let a = &nodes[0];
    let writes0 = cluster(a)?["directory_writes"].as_u64().unwrap_or(0);
    let (in0, out0) = nats.messages()?;
    let started = Instant::now();
    let (cpu, clients) = login_cpu_keep(a, "dir", users)?;
    wait(Duration::from_secs(60), || {
        Ok(cluster(a)?["directory_writes"].as_u64().unwrap_or(0) >= writes0 + users as u64)
    })?;
    let elapsed = started.elapsed();
    let (in1, out1) = nats.messages()?;
    println!("\n## directory cost per login ({users} logins on node a)");
    println!(
        "- node CPU per login (process CPU from /proc in 10 ms ticks, so ±{:.0} µs): {:.0} µs in a cluster, {:.0} µs alone",
        per(Duration::from_millis(10), users),
        per(cpu, users),
        per(solo_cpu, users),
    );
    println!(
        "- NATS messages per login: {:.2} in, {:.2} out (all logins registered in {:.2} s)",
        (in1 - in0) as f64 / users as f64,
        (out1 - out0) as f64 / users as f64,
        elapsed.as_secs_f64()
    );
    // One refresh pass over them.
    let passes0 = cluster(a)?["refresh_passes"].as_u64().unwrap_or(0);
    wait(Duration::from_secs(30), || {
        Ok(cluster(a)?["refresh_passes"].as_u64().unwrap_or(0) > passes0)
    })?;
    let (in2, _) = nats.messages()?;
    let cpu2 = a.cpu_time()?;
    let passes2 = cluster(a)?["refresh_passes"].as_u64().unwrap_or(0);
    wait(Duration::from_secs(30), || {
        Ok(cluster(a)?["refresh_passes"].as_u64().unwrap_or(0) > passes2)
    })?;
    let (in3, _) = nats.messages()?;
    let cpu3 = a.cpu_time()?;
    println!(
        "- one refresh pass over {} users: {:.2} NATS messages in and {:.0} µs of node CPU per user \
         (every {} s; measured over one pass period, idle otherwise)",
        users + 1,
        (in3 - in2) as f64 / (users + 1) as f64,
        per(cpu3 - cpu2, users + 1),
        REFRESH_MS / 1000
    );
    drop(clients);

    // ---- a node dies: its users reconnect elsewhere ----
    let mut nodes = nodes;
    let movers = log_in(&nodes[2], "mover", users)?;
    wait(Duration::from_secs(60), || {
        Ok(presence_nodes(&nodes[0], &format!("mover-{}", users - 1))?.contains(&"c".to_string()))
    })?;
    nodes[2].kill();
    drop(movers);
    let t = Instant::now();
    let mut backend = nodes[0].backend("bench")?;
    let s = push_once(&mut backend, 1, "mover-0")?;
    let dead_rtt = t.elapsed();
    let (in0, _) = nats.messages()?;
    let cpu_b0 = nodes[1].cpu_time()?;
    let t = Instant::now();
    let moved = log_in(&nodes[1], "mover", users)?;
    let mut reached = 0;
    let mut id = 2;
    for i in 0..users {
        loop {
            id += 1;
            match push_once(&mut backend, id, &format!("mover-{i}"))? {
                PushStatus::Delivered(_) => break,
                _ if t.elapsed() < Duration::from_millis(TTL_MS) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                other => bail!("mover-{i} still unreachable after the TTL: {other:?}"),
            }
        }
        reached += 1;
    }
    let all_reached = t.elapsed();
    let (in1, _) = nats.messages()?;
    let cpu_b = nodes[1].cpu_time()? - cpu_b0;
    println!("\n## a node killed (SIGKILL) with {users} users, who reconnect to another node");
    println!(
        "- a push to a user of the dead node before it reconnects: {s:?} in {:.1} ms (no responders, no timeout)",
        dead_rtt.as_secs_f64() * 1000.0
    );
    println!(
        "- {reached} users logged in again on node b and reached by pushes from node a within {:.2} s",
        all_reached.as_secs_f64()
    );
    println!(
        "- NATS messages in during that: {:.2} per user (re-login directory writes, replace \
         requests to the dead node, plus the {} pushes); node b CPU {:.0} µs per user",
        (in1 - in0) as f64 / users as f64,
        users,
        per(cpu_b, users)
    );
    drop(moved);
    Ok(())
}

/// A test server's settings: `cluster` = the NATS server and the node id, or alone.
fn settings(cluster: Option<(&Nats, &str)>) -> Settings {
    Settings {
        shards: 1,
        log: "warn",
        limits: OPEN_LIMITS.to_string(),
        extra: cluster.map_or(String::new(), |(nats, id)| {
            format!(
                "[cluster]\nnats_urls = [\"{}\"]\nnode_id = \"{id}\"\nsecrets = [\"{CLUSTER_SECRET}\"]\ndirectory_ttl_ms = {TTL_MS}\n\
                 refresh_ms = {REFRESH_MS}\n",
                nats.url()
            )
        }),
        ..Settings::default()
    }
}

/// The node's cluster figures.
fn cluster(s: &Server) -> anyhow::Result<Value> {
    Ok(get(s.api, "/api/stats", &[])?.json()["cluster"].clone())
}

/// Pushes the node delivered without the directory (`cluster_pushes_local_first`, all shards).
fn local_first(s: &Server) -> anyhow::Result<u64> {
    let stats = get(s.api, "/api/stats", &[])?.json();
    Ok(stats["shards"]
        .as_array()
        .context("no shards")?
        .iter()
        .map(|sh| {
            sh["counters"]["cluster_pushes_local_first"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum())
}

/// The nodes presence names for `user` (this node first).
fn presence_nodes(s: &Server, user: &str) -> anyhow::Result<Vec<String>> {
    let v = get(s.api, &format!("/api/presence?user={user}"), &[])?.json();
    Ok(v["cluster"]["nodes"]
        .as_array()
        .context("no nodes")?
        .iter()
        .filter(|n| n["count"].as_u64().unwrap_or(0) > 0)
        .filter_map(|n| n["node"].as_str().map(str::to_string))
        .collect())
}

/// Polls `ok` every 50 ms up to `limit`.
fn wait(limit: Duration, mut ok: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    while !ok()? {
        if Instant::now() > until {
            bail!("timed out");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One push and its result.
fn push_once(backend: &mut Client, id: u64, user: &str) -> anyhow::Result<PushStatus> {
    backend.send(&Frame::BackendPush(BackendPush {
        id,
        flags: 0,
        user: user.into(),
        payload: bytes::Bytes::from_static(b"0123456789abcdef0123456789abcdef"),
    }))?;
    loop {
        match backend.recv()? {
            Frame::PushResult(r) if r.id == id => return Ok(r.status),
            _ => {}
        }
    }
}

/// Round trips of `n` pushes (after 100 unmeasured) from a backend on `s` to `user`, who
/// must be delivered each time; in µs.
fn push_rtts(s: &Server, user: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut backend = s.backend("bench")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..(n + 100) {
        let t = Instant::now();
        let status = push_once(&mut backend, i as u64, user)?;
        if !matches!(status, PushStatus::Delivered(1)) {
            bail!("push to {user}: {status:?}");
        }
        if i >= 100 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

/// p50, p99, mean.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[((s.len() as f64 * q) as usize).min(s.len() - 1)];
    (at(0.5), at(0.99), s.iter().sum::<f64>() / s.len() as f64)
}

/// Logs in `n` users `<prefix>-<i>` on `s` (one device each); the clients stay connected.
fn log_in(s: &Server, prefix: &str, n: usize) -> anyhow::Result<Vec<Client>> {
    (0..n)
        .map(|i| Ok(s.client(&format!("{prefix}-{i}"), "d")?.0))
        .collect()
}

/// CPU the server spent on `n` logins and the 2 s after them (the same quiet wait on both
/// kinds of server, so a cluster node's directory writes are inside it).
fn login_cpu_keep(s: &Server, prefix: &str, n: usize) -> anyhow::Result<(Duration, Vec<Client>)> {
    let before = s.cpu_time()?;
    let clients = log_in(s, prefix, n)?;
    std::thread::sleep(Duration::from_secs(2));
    Ok((s.cpu_time()? - before, clients))
}

/// [`login_cpu_keep`], then the clients leave.
fn login_cpu(s: &Server, prefix: &str, n: usize) -> anyhow::Result<Duration> {
    Ok(login_cpu_keep(s, prefix, n)?.0)
}

/// µs per item.
fn per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}
