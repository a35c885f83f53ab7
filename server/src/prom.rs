//! `/metrics`: the shards' published counters, the mesh depths and the control plane's own
//! figures in the OpenMetrics text format (which Prometheus scrapes), encoded by
//! `prometheus-client`.
//!
//! Nothing here touches a shard: shards copy their plain counters into [`Published`] atomics
//! twice a second, and a scrape reads those snapshots (and the mesh channels' lengths). Every
//! [`Counter`] is rendered where [`Counter::metric`] says (its family, labels and help are
//! declared with the counter in `counters.rs`), so a new counter cannot be forgotten.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter as PCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::counters::{Counter, Published, RING_STATS};
use crate::figures::{Figure, Kind};
use crate::histogram::{PublishedHistogram, Snapshot};
use crate::mesh::MeshShared;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label pairs of one sample.
pub type Labels = Vec<(String, String)>;

/// Declares [`ApiMetrics`], a row per figure: `field: Type [= initial] => "name", "help";`,
/// shown as `tether_<name>`.
macro_rules! api_metrics {
    (@initial) => {
        Default::default()
    };
    (@initial $initial:expr) => {
        $initial
    };
    ($($field:ident: $ty:ty $(= $initial:expr)? => $name:literal, $help:literal;)*) => {
        /// Figures the control plane keeps itself (it owns them; a scrape registers clones).
        #[derive(Clone, Debug)]
        pub struct ApiMetrics {
            $(#[doc = $help] pub $field: $ty,)*
        }

        impl Default for ApiMetrics {
            fn default() -> Self {
                ApiMetrics { $($field: api_metrics!(@initial $($initial)?),)* }
            }
        }

        impl ApiMetrics {
            /// Registers a clone of every figure.
            fn register(&self, registry: &mut Registry) {
                $(registry.register($name, $help, self.$field.clone());)*
            }
        }
    };
}

api_metrics! {
    requests: Family<Labels, PCounter> => "api_requests",
        "HTTP requests to the API and metrics listeners, by route and status";
    pushes: Family<Labels, PCounter> => "api_pushes",
        "API push outcomes per target user, as answered to the caller";
    // 100 µs .. ~13 s
    push_seconds: Histogram = Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.0001, 4.0, 9),
    ) => "api_push_duration_seconds",
        "From an API push request's arrival to its last result";
    in_flight: Gauge => "api_pushes_in_flight", "API pushes waiting for their result";
    accept_errors: PCounter => "api_accept_errors", "Accept errors of the HTTP listeners";
    late_results: PCounter => "api_late_results",
        "API results that arrived after their request had given up";
    connections: Family<Labels, Gauge> => "api_connections",
        "Open HTTP connections, by listener (api, metrics)";
    refused: Family<Labels, PCounter> => "api_connections_refused",
        "HTTP connections closed at accept, by listener and the cap reached (listener: the listener's own cap; address: the per-source cap)";
    timeouts: Family<Labels, PCounter> => "api_timeouts",
        "HTTP connections closed because a deadline passed, by listener and kind (header, body, idle)";
}

/// Server-wide state shown as gauges.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    /// Listeners are up and the server is not draining.
    pub ready: bool,
    /// The drain has started.
    pub draining: bool,
    /// Descriptors open in the process's table, when they could be counted.
    pub open_fds: Option<u64>,
}

/// Descriptors open in this process's table (`/proc/self/fd`); `None` when unreadable.
pub fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as u64)
}

/// Renders everything as OpenMetrics text.
pub fn render(
    shards: &[Arc<Published>],
    mesh: &MeshShared,
    api: &ApiMetrics,
    cluster: Option<&crate::cluster::ClusterStats>,
    upstream: Option<&crate::upstream::UpstreamStats>,
    status: Status,
) -> String {
    let mut registry = Registry::with_prefix("tether");
    if let Some(stats) = upstream {
        register_figures(&mut registry, "upstream_sink_", stats.all());
    }
    if let Some(stats) = cluster {
        register_figures(&mut registry, "cluster_", stats.all());
    }
    let mut counters: Vec<(&'static str, &'static str, Family<Labels, PCounter>)> = Vec::new();
    for (i, p) in shards.iter().enumerate() {
        for &c in Counter::ALL {
            let m = c.metric();
            let fam = match counters.iter().find(|(n, _, _)| *n == m.family) {
                Some((_, _, f)) => f.clone(),
                None => {
                    let f = Family::default();
                    counters.push((m.family, m.help, f.clone()));
                    f
                }
            };
            let mut labels: Labels = vec![("shard".into(), i.to_string())];
            labels.extend(m.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            fam.get_or_create(&labels).inc_by(p.get(c));
        }
    }
    for (name, help, fam) in counters {
        registry.register(name, help, fam);
    }
    let slow: Family<Labels, PCounter> = Family::default();
    let connections: Family<Labels, Gauge> = Family::default();
    let users: Family<Labels, Gauge> = Family::default();
    let depth: Family<Labels, Gauge> = Family::default();
    let by_state: Family<Labels, Gauge> = Family::default();
    for (i, p) in shards.iter().enumerate() {
        let l: Labels = vec![("shard".into(), i.to_string())];
        for (state, g) in ["pending", "client", "probe", "backend"]
            .iter()
            .zip(&p.by_state)
        {
            let labels: Labels = vec![
                ("shard".into(), i.to_string()),
                ("state".into(), state.to_string()),
            ];
            by_state
                .get_or_create(&labels)
                .set(g.load(Ordering::Relaxed) as i64);
        }
        slow.get_or_create(&l)
            .inc_by(p.get(Counter::CloseSlowConsumer));
        connections
            .get_or_create(&l)
            .set(p.connections.load(Ordering::Relaxed) as i64);
        users
            .get_or_create(&l)
            .set(p.users.load(Ordering::Relaxed) as i64);
        depth.get_or_create(&l).set(mesh.depth(i) as i64);
    }
    // The same figure as `closes{reason="slow_consumer"}`, under the name it had first.
    registry.register(
        "slow_consumers",
        "Connections closed because their outbound queue passed its bound",
        slow,
    );
    registry.register("connections", "Connections held, by shard", connections);
    registry.register("users", "Users with a main connection, by shard", users);
    registry.register(
        "connections_by_state",
        "Connections held, by shard and state (pending: not logged in yet)",
        by_state,
    );
    registry.register(
        "mesh_depth",
        "Messages waiting in a shard's mesh channel",
        depth,
    );
    let ring: Vec<Family<Labels, PCounter>> =
        RING_STATS.iter().map(|_| Family::default()).collect();
    let pool: Family<Labels, Gauge> = Family::default();
    let files: Family<Labels, Gauge> = Family::default();
    let files_capacity: Family<Labels, Gauge> = Family::default();
    for (i, p) in shards.iter().enumerate() {
        let l: Labels = vec![("shard".into(), i.to_string())];
        for (fam, v) in ring.iter().zip(&p.ring) {
            fam.get_or_create(&l).inc_by(v.load(Ordering::Relaxed));
        }
        pool.get_or_create(&l)
            .set(p.recv_pool_bytes.load(Ordering::Relaxed) as i64);
        files
            .get_or_create(&l)
            .set(p.ring_files.load(Ordering::Relaxed) as i64);
        files_capacity
            .get_or_create(&l)
            .set(p.ring_files_capacity.load(Ordering::Relaxed) as i64);
    }
    for ((name, help), fam) in RING_STATS.iter().zip(ring) {
        registry.register(format!("ring_{name}"), *help, fam);
    }
    registry.register(
        "ring_recv_pool_bytes",
        "Bytes of receive buffers lent to the shard's ring (allocated once)",
        pool,
    );
    registry.register(
        "ring_files",
        "Direct descriptors in the shard ring's file table: one per connection, and sockets being closed or moved (not in the process's descriptor table)",
        files,
    );
    registry.register(
        "ring_files_capacity",
        "Slots of the shard ring's file table: the most sockets the shard holds (at most the open-files limit; refused beyond it: refused_ring_table)",
        files_capacity,
    );
    if let Some(n) = status.open_fds {
        let g: Gauge = Gauge::default();
        g.set(n as i64);
        registry.register(
            "process_open_fds",
            "Descriptors open in the process's own table (listeners, rings, eventfds, HTTP connections, sockets being set up or moved: connections live in the rings' tables)",
            g,
        );
    }
    registry.register(
        "ping_handling_seconds",
        "Per Ping: the batch of work that read it, from its first completion to its last command (an upper bound on the time from the Ping's arrival in the shard to its Pong being queued for the kernel)",
        ShardHistograms::new(shards, |p| &p.ping),
    );
    registry.register(
        "tick_seconds",
        "Per wheel tick: the shard's work for it (due deadlines checked or re-armed, the closes and sends they caused, the drain's step)",
        ShardHistograms::new(shards, |p| &p.tick),
    );
    registry.register(
        "push_delivery_seconds",
        "Per push written to at least one device: from routing on the user's home shard to its result (the bytes handed to every device's socket)",
        ShardHistograms::new(shards, |p| &p.push),
    );
    let ready: Gauge = Gauge::default();
    ready.set(i64::from(status.ready));
    registry.register("ready", "1 when listening and not draining", ready);
    let draining: Gauge = Gauge::default();
    draining.set(i64::from(status.draining));
    registry.register("draining", "1 once the drain started", draining);
    registry.register(
        "build",
        "Version of the running binary",
        Info::new(vec![(
            "version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )]),
    );
    api.register(&mut registry);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Registers a thread's figures as `tether_<prefix><name>`, each a counter or a gauge as it
/// was declared.
fn register_figures(registry: &mut Registry, prefix: &str, figures: Vec<(Figure, &AtomicU64)>) {
    for (figure, value) in figures {
        let name = format!("{prefix}{}", figure.name);
        let value = value.load(Ordering::Relaxed);
        match figure.kind {
            Kind::Counter => {
                let c: PCounter = PCounter::default();
                c.inc_by(value);
                registry.register(name, figure.help, c);
            }
            Kind::Gauge => {
                let g: Gauge = Gauge::default();
                g.set(value as i64);
                registry.register(name, figure.help, g);
            }
        }
    }
}

/// One histogram per shard, copied from the shards' published buckets at scrape time and
/// encoded as one family with a `shard` label.
#[derive(Debug)]
struct ShardHistograms(Vec<(Labels, Snapshot)>);

impl ShardHistograms {
    fn new(shards: &[Arc<Published>], which: fn(&Published) -> &PublishedHistogram) -> Self {
        ShardHistograms(
            shards
                .iter()
                .enumerate()
                .map(|(i, p)| (vec![("shard".into(), i.to_string())], which(p).snapshot()))
                .collect(),
        )
    }
}

impl EncodeMetric for ShardHistograms {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        for (labels, h) in &self.0 {
            encoder
                .encode_family(labels)?
                .encode_histogram::<()>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_exposed_with_help_and_type() {
        let (mesh, _rx) = MeshShared::new(2, 4).unwrap();
        let shards = vec![
            Arc::new(Published::default()),
            Arc::new(Published::default()),
        ];
        let cluster = crate::cluster::ClusterStats::default();
        cluster
            .push_unavailable
            .store(3, std::sync::atomic::Ordering::Relaxed);
        let upstream = crate::upstream::UpstreamStats::default();
        upstream
            .timed_out
            .store(2, std::sync::atomic::Ordering::Relaxed);
        let text = render(
            &shards,
            &mesh,
            &ApiMetrics::default(),
            Some(&cluster),
            Some(&upstream),
            Status {
                ready: true,
                draining: false,
                open_fds: Some(7),
            },
        );
        for &c in Counter::ALL {
            let name = c.metric().family;
            assert!(
                text.contains(&format!("# TYPE tether_{name} counter")),
                "{name} missing"
            );
            assert!(
                text.contains(&format!("# HELP tether_{name} ")),
                "{name} help"
            );
            assert!(text.contains(&format!("tether_{name}_total{{shard=\"1\"")));
        }
        assert!(text.contains("tether_build_info{version=\""));
        assert!(text.contains("# TYPE tether_ping_handling_seconds histogram"));
        assert!(text.contains("tether_ping_handling_seconds_bucket{le=\"+Inf\",shard=\"1\"} 0"));
        assert!(text.contains("# TYPE tether_push_delivery_seconds histogram"));
        assert!(text.contains("tether_ring_waits_total{shard=\"0\"} 0"));
        assert!(text.contains("tether_ring_recv_pool_bytes{shard=\"0\"} 0"));
        assert!(text.contains("tether_ring_files{shard=\"1\"} 0"));
        assert!(text.contains("tether_ring_files_capacity{shard=\"0\"} 0"));
        assert!(text.contains("tether_process_open_fds 7"));
        assert!(text.contains("# TYPE tether_tick_seconds histogram"));
        assert!(text.contains("tether_cluster_push_unavailable_total 3"));
        assert!(text.contains("# TYPE tether_cluster_connected gauge"));
        assert!(text.contains("tether_upstream_sink_timed_out_total 2"));
        assert!(text.contains("# TYPE tether_upstream_sink_in_flight gauge"));
        assert!(text.ends_with("# EOF\n"));
    }

    /// Where [`the_exposition_is_what_operators_scrape`] keeps the expected text.
    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/metrics.txt");

    /// Every figure with a value of its own, for [`the_exposition_is_what_operators_scrape`].
    fn filled() -> String {
        use crate::counters::Counters;
        use crate::histogram::Histogram;
        let (mesh, _rx) = MeshShared::new(2, 4).unwrap();
        let mut n = 0u64;
        let mut next = || {
            n += 1;
            n
        };
        let shards: Vec<Arc<Published>> = (0..2)
            .map(|_| {
                let p = Published::default();
                let mut c = Counters::default();
                for &k in Counter::ALL {
                    c.add(k, next());
                }
                p.store(&c);
                p.connections.store(next(), Ordering::Relaxed);
                p.users.store(next(), Ordering::Relaxed);
                for g in p.by_state.iter().chain(&p.ring) {
                    g.store(next(), Ordering::Relaxed);
                }
                p.recv_pool_bytes.store(next(), Ordering::Relaxed);
                let mut h = Histogram::default();
                h.record(next() * 10, next());
                p.ping.store(&h);
                h.record(next() * 1000, next());
                p.push.store(&h);
                Arc::new(p)
            })
            .collect();
        let cluster = crate::cluster::ClusterStats::default();
        let upstream = crate::upstream::UpstreamStats::default();
        for (_, value) in cluster.all().into_iter().chain(upstream.all()) {
            value.store(next() + 1000, Ordering::Relaxed);
        }
        let api = ApiMetrics::default();
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        api.requests
            .get_or_create(&labels(&[("route", "push"), ("status", "200")]))
            .inc_by(next());
        api.pushes
            .get_or_create(&labels(&[("outcome", "delivered")]))
            .inc_by(next());
        api.push_seconds.observe(0.002);
        api.in_flight.set(next() as i64);
        api.accept_errors.inc_by(next());
        api.late_results.inc_by(next());
        api.connections
            .get_or_create(&labels(&[("listener", "api")]))
            .set(next() as i64);
        api.refused
            .get_or_create(&labels(&[("listener", "api"), ("cap", "address")]))
            .inc_by(next());
        api.timeouts
            .get_or_create(&labels(&[("listener", "api"), ("kind", "idle")]))
            .inc_by(next());
        // Set last, so that a figure added here leaves every other figure's value alone.
        for p in &shards {
            p.ring_files.store(next(), Ordering::Relaxed);
            p.ring_files_capacity.store(next(), Ordering::Relaxed);
            let mut h = Histogram::default();
            h.record(next() * 100, next());
            p.tick.store(&h);
        }
        let open_fds = Some(next());
        render(
            &shards,
            &mesh,
            &api,
            Some(&cluster),
            Some(&upstream),
            Status {
                ready: true,
                draining: false,
                open_fds,
            },
        )
        .replace(env!("CARGO_PKG_VERSION"), "VERSION")
    }

    /// `text` with each family's samples sorted (a family's samples come in no fixed order).
    fn sorted(text: &str) -> String {
        let mut out = String::new();
        let mut samples: Vec<&str> = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                samples.sort_unstable();
                samples.drain(..).for_each(|s| out.extend([s, "\n"]));
                out.extend([line, "\n"]);
            } else {
                samples.push(line);
            }
        }
        out
    }

    /// The whole exposition, every figure set, against `tests/golden/metrics.txt`: the names,
    /// labels, types and help that operators' dashboards and alerts depend on.
    /// `TETHER_BLESS=1` rewrites the file (then read its diff).
    #[test]
    fn the_exposition_is_what_operators_scrape() {
        let text = sorted(&filled());
        if std::env::var_os("TETHER_BLESS").is_some() {
            std::fs::create_dir_all(std::path::Path::new(GOLDEN).parent().unwrap()).unwrap();
            std::fs::write(GOLDEN, &text).unwrap();
        }
        let golden = std::fs::read_to_string(GOLDEN).expect("tests/golden/metrics.txt");
        for (got, want) in text.lines().zip(golden.lines()) {
            assert_eq!(got, want, "TETHER_BLESS=1 rewrites the file");
        }
        assert_eq!(text.lines().count(), golden.lines().count(), "lines");
    }
}
