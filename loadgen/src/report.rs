//! The run's results: merged from the workers, derived figures, and their three renderings
//! (a table for people, JSON for machines, .hgrm and SVG files for plotting).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::job::WorkerReport;
use crate::procfs::ServerSample;
use crate::resolution::{self, Instruments};
use crate::stats::{hist, new_hist, LoadCounters, Percentiles};

/// Everything a run reports.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// The server's protocol (`tether`, `mqtt`, `nats`).
    pub protocol: String,
    /// Whether the connections spoke TLS.
    pub tls: bool,
    /// Whether the connections spoke WebSocket (with `tls`: wss://).
    #[serde(default)]
    pub websocket: bool,
    /// How heartbeats were timed (`spread`, `burst`).
    pub shape: String,
    /// Servers connected to.
    pub servers: Vec<String>,
    /// Client connections asked for.
    pub connections: u32,
    /// Worker processes used.
    pub workers: u32,
    /// Source addresses connections were spread over (0: the kernel chose).
    pub sources: usize,
    /// Heartbeat interval, ms.
    pub interval_ms: u64,
    /// Seconds from the start until every worker finished its ramp.
    pub ramp_s: f64,
    /// Clients logged in when the ramp ended.
    pub online_after_ramp: u64,
    /// Clients logged in at the end of the load phase.
    pub online_after_load: u64,
    /// Logins per second over the ramp.
    pub connect_rate_per_s: f64,
    /// Length of the load phase, seconds.
    pub load_s: f64,
    /// What happened during the load phase.
    pub load: LoadCounters,
    /// What happened over the whole run.
    pub totals: LoadCounters,
    /// Per-second rates during the load phase.
    pub throughput_per_s: BTreeMap<String, f64>,
    /// Latency percentiles by name, microseconds.
    pub latency_us: BTreeMap<String, Percentiles>,
    /// Latencies the scenario has but the protocol cannot measure, with why (e.g. the result
    /// latency of an upstream message over MQTT, which has no per-message result): not 0, n/a.
    pub latency_not_applicable: BTreeMap<String, String>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Outcomes by kind (push and send statuses).
    pub events: BTreeMap<String, u64>,
    /// The server's footprint, when `--server-pid` was given.
    pub server: Option<ServerFigures>,
    /// The loadgen's own cost.
    pub loadgen: LoadgenFigures,
    /// Things that make the figures doubtful.
    pub warnings: Vec<String>,
    /// (seconds since start, clients online) during the run.
    pub timeline: Vec<(f64, u64)>,
    /// Merged histograms, for files; not serialized.
    #[serde(skip)]
    pub hists: BTreeMap<String, Histogram<u64>>,
}

/// The server's footprint and the figures derived from it.
#[derive(Debug, Serialize)]
pub struct ServerFigures {
    /// Process sampled.
    pub pid: u32,
    /// Every sample taken, in order.
    pub samples: Vec<ServerSample>,
    /// RSS growth from before the ramp to after it, bytes.
    pub rss_growth_bytes: i64,
    /// RSS growth per client online after the ramp, bytes; `None` when the growth is below a
    /// page or negative (see `resolution.rs`).
    pub user_bytes_per_conn: Option<f64>,
    /// Growth of the kernel's TCP buffer memory (both ends of loopback connections) over the
    /// ramp, bytes, as sockstat reports it.
    pub tcp_mem_growth_bytes: i64,
    /// [`Self::tcp_mem_growth_bytes`] per client; `None` when below what the counter resolves.
    pub kernel_tcp_bytes_per_conn: Option<f64>,
    /// The granularity of the counters these figures come from.
    pub instruments: Instruments,
    /// Growth of the kernel's slab memory per client, bytes: socket, inode, file and epoll
    /// objects of both ends and of the loadgen, and anything else the machine did meanwhile.
    pub kernel_slab_bytes_per_conn: Option<f64>,
    /// Server CPU time during the load phase, µs.
    pub load_cpu_us: u64,
    /// Server CPU during the load phase, % of one core.
    pub load_cpu_pct: f64,
    /// Server CPU per pong received during the load phase, µs (idle scenario only). This and
    /// the other per-unit CPU figures are `None` when the CPU time spans fewer than
    /// [`resolution::MIN_CPU_TICKS`] clock ticks.
    pub cpu_us_per_heartbeat: Option<f64>,
    /// Server CPU per push sent during the load phase, µs (push scenario; includes the
    /// phase's heartbeats, few with the default 30 s interval).
    pub cpu_us_per_push: Option<f64>,
    /// Server CPU per send during the load phase, µs (send scenario; as for pushes).
    pub cpu_us_per_send: Option<f64>,
    /// Server CPU per churned connection (close + accept + login), µs (churn scenario).
    pub cpu_us_per_churn: Option<f64>,
    /// Server CPU per upstream message sent during the load phase, µs (upstream scenario; with
    /// tether the delivery to the sink, its answer and the result to the client).
    pub cpu_us_per_upstream: Option<f64>,
    /// RSS after every connection closed minus RSS before the run, bytes (leak hint).
    pub rss_after_close_growth_bytes: Option<i64>,
}

/// The loadgen's own CPU use.
#[derive(Debug, Serialize)]
pub struct LoadgenFigures {
    /// Per worker.
    pub workers: Vec<WorkerCost>,
    /// All workers' CPU over the run's wall time, % of one core.
    pub total_cpu_pct: f64,
}

/// One worker's cost.
#[derive(Debug, Serialize)]
pub struct WorkerCost {
    pub cpu_user_us: u64,
    pub cpu_system_us: u64,
    pub wall_us: u64,
    /// CPU over wall, %.
    pub cpu_pct: f64,
    /// Highest CPU share of one core in a 250 ms interval, %.
    pub max_cpu_pct: f64,
    /// Open-files soft limit it ran with.
    pub nofile: u64,
}

/// Inputs of [`Summary::build`] that the parent collected.
#[derive(Debug)]
pub struct RunFacts {
    pub scenario: String,
    pub protocol: String,
    pub tls: bool,
    pub websocket: bool,
    pub shape: String,
    pub servers: Vec<String>,
    pub connections: u32,
    pub sources: usize,
    pub interval_ms: u64,
    pub ramp_s: f64,
    pub online_after_ramp: u64,
    pub online_after_load: u64,
    pub load_s: f64,
    pub load: LoadCounters,
    pub timeline: Vec<(f64, u64)>,
    pub server_pid: Option<u32>,
    pub samples: Vec<ServerSample>,
    pub warnings: Vec<String>,
}

/// A worker busier than this (share of an interval outside epoll_wait) may be the bottleneck.
pub const SATURATED_PCT: f64 = 90.0;
/// A loop running timers later than this at the 99th percentile distorts latencies.
const LAG_P99_WARN_US: u64 = 100_000;

impl Summary {
    pub fn build(facts: RunFacts, reports: &[WorkerReport], instruments: Instruments) -> Summary {
        let mut hists: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut events = BTreeMap::new();
        let mut totals = LoadCounters::default();
        let mut workers = Vec::new();
        let mut cpu_total = 0u64;
        let mut wall_max = 1u64;
        let mut warnings = facts.warnings;
        for (i, r) in reports.iter().enumerate() {
            for (name, data) in &r.hists {
                data.add_to(hists.entry(name.clone()).or_insert_with(new_hist));
            }
            for (k, v) in &r.errors {
                *errors.entry(k.clone()).or_insert(0) += v;
            }
            for (k, v) in &r.events {
                *events.entry(k.clone()).or_insert(0) += v;
            }
            totals.add(&r.totals);
            let cpu = r.cpu_user_us + r.cpu_system_us;
            cpu_total += cpu;
            wall_max = wall_max.max(r.wall_us);
            let cpu_pct = 100.0 * cpu as f64 / r.wall_us.max(1) as f64;
            if r.max_cpu_pct > SATURATED_PCT {
                warnings.push(format!(
                    "worker {i} used {:.0}% of a core in its busiest 250 ms: the loadgen may be the \
                     bottleneck (use fewer connections per worker with --per-worker, or another machine)",
                    r.max_cpu_pct
                ));
            }
            workers.push(WorkerCost {
                cpu_user_us: r.cpu_user_us,
                cpu_system_us: r.cpu_system_us,
                wall_us: r.wall_us,
                cpu_pct,
                max_cpu_pct: r.max_cpu_pct,
                nofile: r.nofile,
            });
        }
        if let Some(lag) = hists.get(hist::LOOP_LAG) {
            let p99 = lag.value_at_quantile(0.99);
            if p99 > LAG_P99_WARN_US {
                warnings.push(format!(
                    "the loadgen's timers ran {} ms late at p99: its latencies include its own delay",
                    p99 / 1000
                ));
            }
        }
        let load_s = facts.load_s.max(1e-9);
        let mut throughput = BTreeMap::new();
        if facts.load_s > 0.0 {
            let l = &facts.load;
            for (name, n) in [
                ("pings", l.pings),
                ("pongs", l.pongs),
                ("pushes_sent", l.pushes_sent),
                ("sends_sent", l.sends_sent),
                ("delivered", l.delivered),
                ("churned", l.churned),
                ("reconnects", l.reconnects),
                ("upstream_sent", l.upstream_sent),
                ("upstream_received", l.upstream_received),
                ("upstream_accepted", l.upstream_accepted),
                ("upstream_refused", l.upstream_refused),
            ] {
                if n > 0 {
                    throughput.insert(name.to_string(), n as f64 / load_s);
                }
            }
        }
        let mut not_applicable = BTreeMap::new();
        let no_result = format!("{} has no per-message result", facts.protocol);
        match facts.scenario.as_str() {
            "push" if facts.protocol != "tether" => {
                not_applicable.insert(hist::PUSH_RESULT.to_string(), no_result);
            }
            "upstream" if facts.protocol != "tether" => {
                not_applicable.insert(hist::UPSTREAM_RESULT.to_string(), no_result);
            }
            _ => {}
        }
        let server = facts.server_pid.map(|pid| {
            server_figures(
                pid,
                &facts.scenario,
                facts.samples,
                facts.online_after_ramp,
                &facts.load,
                facts.load_s,
                instruments,
            )
        });
        Summary {
            scenario: facts.scenario,
            protocol: facts.protocol,
            tls: facts.tls,
            websocket: facts.websocket,
            shape: facts.shape,
            servers: facts.servers,
            connections: facts.connections,
            workers: reports.len() as u32,
            sources: facts.sources,
            interval_ms: facts.interval_ms,
            ramp_s: facts.ramp_s,
            online_after_ramp: facts.online_after_ramp,
            online_after_load: facts.online_after_load,
            connect_rate_per_s: totals.logins.min(facts.connections as u64) as f64
                / facts.ramp_s.max(1e-9),
            load_s: facts.load_s,
            load: facts.load,
            totals,
            throughput_per_s: throughput,
            latency_us: hists
                .iter()
                .map(|(k, h)| (k.clone(), Percentiles::of(h)))
                .collect(),
            latency_not_applicable: not_applicable,
            errors,
            events,
            server,
            loadgen: LoadgenFigures {
                workers,
                total_cpu_pct: 100.0 * cpu_total as f64 / wall_max as f64,
            },
            warnings,
            timeline: facts.timeline,
            hists,
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "tether-loadgen {} against {} ({}{})",
            self.scenario,
            self.servers.join(", "),
            self.protocol,
            match (self.websocket, self.tls) {
                (false, false) => "",
                (false, true) => " over TLS",
                (true, false) => " over WebSocket",
                (true, true) => " over WebSocket and TLS",
            }
        );
        let _ = writeln!(
            s,
            "  {} connections asked, {} worker process(es), {} source address(es), heartbeat every {} ms ({})",
            self.connections,
            self.workers,
            self.sources,
            self.interval_ms,
            self.shape
        );
        let _ = writeln!(
            s,
            "  ramp: {:.1} s, {} online after it ({:.0} logins/s), {} online at the end",
            self.ramp_s, self.online_after_ramp, self.connect_rate_per_s, self.online_after_load
        );
        if self.load_s > 0.0 {
            let _ = writeln!(s, "  load phase: {:.1} s", self.load_s);
            for (k, v) in &self.throughput_per_s {
                let _ = writeln!(s, "    {k:<17} {v:>12.1} /s");
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:<15} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}   (ms)",
            "latency", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in &self.latency_us {
            let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
            let _ = writeln!(
                s,
                "  {:<15} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
                name,
                p.count,
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.p999),
                ms(p.max)
            );
        }
        for (name, why) in &self.latency_not_applicable {
            let _ = writeln!(s, "  {name:<15} {:>9} {:>10}   ({why})", "-", "n/a");
        }
        if self.scenario == "upstream" {
            let (l, t) = (&self.load, &self.totals);
            let results = if self.protocol == "tether" {
                format!(
                    "{} accepted, {} refused",
                    l.upstream_accepted, l.upstream_refused
                )
            } else {
                format!("results n/a ({} has none)", self.protocol)
            };
            let _ = writeln!(
                s,
                "\n  upstream (load phase): {} sent, {} received by the sink, {results}",
                l.upstream_sent, l.upstream_received
            );
            let _ = writeln!(
                s,
                "    out of order at the sink (whole run, must be 0): {}",
                t.upstream_out_of_order
            );
        }
        if !self.events.is_empty() {
            let _ = writeln!(s, "\n  outcomes:");
            for (k, v) in &self.events {
                let _ = writeln!(s, "    {k:<40} {v:>10}");
            }
        }
        let _ = writeln!(
            s,
            "\n  errors:{}",
            if self.errors.is_empty() { " none" } else { "" }
        );
        for (k, v) in &self.errors {
            let _ = writeln!(s, "    {k:<40} {v:>10}");
        }
        if let Some(sv) = &self.server {
            let _ = writeln!(s, "\n  server (pid {}):", sv.pid);
            for smp in &sv.samples {
                let _ = writeln!(
                    s,
                    "    {:<12} t={:>7.1}s  rss {:>10.1} MiB  cpu {:>9.3} s  tcp inuse {:>7}  tcp mem {:>6} pages  sockets {:>7}",
                    smp.label,
                    smp.at_s,
                    smp.rss_bytes as f64 / 1048576.0,
                    smp.cpu_us as f64 / 1e6,
                    smp.sockstat.tcp_inuse,
                    smp.sockstat.tcp_mem_pages,
                    smp.sockstat.sockets_used
                );
            }
            let fmt = |v: Option<f64>, unit: &str| v.map(|v| format!("{v:.1} {unit}"));
            let ins = sv.instruments;
            let online = self.online_after_ramp;
            let cpu = |units: u64, scenario: &str| {
                (self.scenario == scenario)
                    .then(|| resolution::cpu_per_unit_text(sv.load_cpu_us, ins.cpu_tick_us, units))
            };
            let rows = [
                (
                    "user-space bytes per connection",
                    Some(resolution::bytes_per_conn_text(
                        sv.rss_growth_bytes,
                        ins.page_bytes,
                        online,
                    )),
                ),
                (
                    "kernel TCP bytes per connection",
                    Some(resolution::bytes_per_conn_text(
                        sv.tcp_mem_growth_bytes,
                        ins.tcp_mem_bytes,
                        online,
                    )),
                ),
                (
                    "kernel slab bytes per connection",
                    fmt(sv.kernel_slab_bytes_per_conn, "B"),
                ),
                (
                    "CPU during load",
                    Some(format!("{:.2} % of a core", sv.load_cpu_pct)),
                ),
                ("CPU per heartbeat", cpu(self.load.pongs, "idle")),
                ("CPU per push", cpu(self.load.pushes_sent, "push")),
                ("CPU per send", cpu(self.load.sends_sent, "send")),
                (
                    "CPU per churned connection",
                    cpu(self.load.churned, "churn"),
                ),
                (
                    "CPU per upstream message",
                    cpu(self.load.upstream_sent, "upstream"),
                ),
                (
                    "RSS after close vs before",
                    sv.rss_after_close_growth_bytes
                        .map(|g| format!("{:+.1} KiB", g as f64 / 1024.0)),
                ),
            ];
            for (label, value) in rows {
                if let Some(value) = value {
                    let _ = writeln!(s, "    {label:<34} {value}");
                }
            }
        }
        let _ = writeln!(
            s,
            "\n  loadgen: {:.1} % of a core in total",
            self.loadgen.total_cpu_pct
        );
        for (i, w) in self.loadgen.workers.iter().enumerate() {
            let _ = writeln!(
                s,
                "    worker {i}: cpu {:.1} % (user {:.2} s, sys {:.2} s), busiest 250 ms {:.0} %, nofile {}",
                w.cpu_pct,
                w.cpu_user_us as f64 / 1e6,
                w.cpu_system_us as f64 / 1e6,
                w.max_cpu_pct,
                w.nofile
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "\n  WARNING: {w}");
        }
        s
    }

    /// Writes `<name>.hgrm` per histogram, `latency.svg`, `ramp.svg` and `report.json` to `dir`.
    pub fn write_files(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, h) in &self.hists {
            let mut f =
                std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{name}.hgrm")))?);
            crate::hgrm::write(h, 5, &mut f)?;
        }
        let shown: Vec<(String, &Histogram<u64>)> = self
            .hists
            .iter()
            .filter(|(k, _)| k.as_str() != hist::LOOP_LAG)
            .map(|(k, h)| (k.clone(), h))
            .collect();
        std::fs::write(
            dir.join("latency.svg"),
            crate::svg::latency_chart(
                &format!("tether-loadgen {}: latency by percentile", self.scenario),
                &shown,
            ),
        )?;
        std::fs::write(
            dir.join("ramp.svg"),
            crate::svg::ramp_chart(
                &format!("tether-loadgen {}: clients online", self.scenario),
                &self.timeline,
            ),
        )?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }
}

/// Derives the server figures from its samples. Labels: `before`, `ramped`, `load start`,
/// `load end`, `after close` (any may be missing if sampling failed).
fn server_figures(
    pid: u32,
    scenario: &str,
    samples: Vec<ServerSample>,
    online: u64,
    load: &LoadCounters,
    load_s: f64,
    ins: Instruments,
) -> ServerFigures {
    let get = |label: &str| samples.iter().find(|s| s.label == label);
    let per = |num: f64, den: u64| (den > 0).then(|| num / den as f64);
    let (before, ramped) = (get("before"), get("ramped"));
    let rss_growth = match (before, ramped) {
        (Some(b), Some(r)) => r.rss_bytes as i64 - b.rss_bytes as i64,
        _ => 0,
    };
    let user_bytes = match (before, ramped) {
        (Some(_), Some(_)) => resolution::bytes_per_conn(rss_growth, ins.page_bytes, online),
        _ => None,
    };
    let tcp_mem_growth = match (before, ramped) {
        (Some(b), Some(r)) => {
            (r.sockstat.tcp_mem_pages as i64 - b.sockstat.tcp_mem_pages as i64)
                * ins.page_bytes as i64
        }
        _ => 0,
    };
    let kernel = match (before, ramped) {
        (Some(_), Some(_)) => resolution::bytes_per_conn(tcp_mem_growth, ins.tcp_mem_bytes, online),
        _ => None,
    };
    let slab = match (before, ramped) {
        (Some(b), Some(r)) => per(r.slab_bytes as f64 - b.slab_bytes as f64, online),
        _ => None,
    };
    let load_cpu = match (get("load start"), get("load end")) {
        (Some(a), Some(b)) => b.cpu_us.saturating_sub(a.cpu_us),
        _ => 0,
    };
    let cpu_per = |units: u64| resolution::cpu_per_unit(load_cpu, ins.cpu_tick_us, units);
    let close_growth = match (before, get("after close")) {
        (Some(b), Some(c)) => Some(c.rss_bytes as i64 - b.rss_bytes as i64),
        _ => None,
    };
    ServerFigures {
        pid,
        rss_growth_bytes: rss_growth,
        user_bytes_per_conn: user_bytes,
        kernel_tcp_bytes_per_conn: kernel,
        kernel_slab_bytes_per_conn: slab,
        load_cpu_us: load_cpu,
        load_cpu_pct: if load_s > 0.0 {
            load_cpu as f64 / (load_s * 1e4)
        } else {
            0.0
        },
        cpu_us_per_heartbeat: cpu_per(load.pongs).filter(|_| scenario == "idle"),
        cpu_us_per_push: cpu_per(load.pushes_sent).filter(|_| scenario == "push"),
        cpu_us_per_send: cpu_per(load.sends_sent).filter(|_| scenario == "send"),
        cpu_us_per_churn: cpu_per(load.churned).filter(|_| scenario == "churn"),
        cpu_us_per_upstream: cpu_per(load.upstream_sent).filter(|_| scenario == "upstream"),
        tcp_mem_growth_bytes: tcp_mem_growth,
        instruments: ins,
        rss_after_close_growth_bytes: close_growth,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::SockStat;
    use crate::stats::Hists;

    const INS: Instruments = Instruments {
        page_bytes: 4096,
        cpu_tick_us: 10_000,
        tcp_mem_bytes: 2 << 20,
    };

    #[test]
    fn tcp_memory_below_its_batches_is_withheld() {
        let samples = vec![
            sample("before", 10_000_000, 0, 10),
            sample("ramped", 14_000_000, 0, 100),
        ];
        let f = server_figures(
            7,
            "idle",
            samples,
            19_000,
            &LoadCounters::default(),
            1.0,
            INS,
        );
        assert_eq!(f.tcp_mem_growth_bytes, 90 * 4096);
        assert_eq!(f.kernel_tcp_bytes_per_conn, None);
    }

    fn sample(label: &str, rss: u64, cpu: u64, mem: u64) -> ServerSample {
        ServerSample {
            label: label.into(),
            at_s: 0.0,
            rss_bytes: rss,
            cpu_us: cpu,
            sockstat: SockStat {
                tcp_mem_pages: mem,
                ..Default::default()
            },
            slab_bytes: 1_000_000 + mem * 1000,
        }
    }

    #[test]
    fn derives_bytes_and_cpu_per_unit() {
        let samples = vec![
            sample("before", 10_000_000, 1_000_000, 10),
            sample("ramped", 19_500_000, 1_500_000, 1010),
            sample("load start", 19_500_000, 2_000_000, 1010),
            sample("load end", 19_600_000, 2_600_000, 1010),
            sample("after close", 10_100_000, 2_700_000, 10),
        ];
        let load = LoadCounters {
            pongs: 20_000,
            ..Default::default()
        };
        let f = server_figures(7, "idle", samples, 19_000, &load, 60.0, INS);
        assert_eq!(f.rss_growth_bytes, 9_500_000);
        assert_eq!(f.user_bytes_per_conn, Some(500.0));
        let k = f.kernel_tcp_bytes_per_conn.unwrap();
        assert!((k - 1000.0 * 4096.0 / 19_000.0).abs() < 1e-9);
        assert_eq!(f.load_cpu_us, 600_000);
        assert_eq!(f.cpu_us_per_heartbeat, Some(30.0));
        assert_eq!(f.cpu_us_per_push, None);
        let slab = f.kernel_slab_bytes_per_conn.unwrap();
        assert!((slab - 1_000_000.0 / 19_000.0).abs() < 1e-9);
        // Per-unit CPU belongs to its own scenario only.
        let load = LoadCounters {
            pongs: 10,
            pushes_sent: 10,
            ..Default::default()
        };
        let g = server_figures(7, "push", vec![], 19_000, &load, 60.0, INS);
        assert_eq!(g.cpu_us_per_heartbeat, None);
        // No CPU time at all is below the tick's resolution, not zero.
        assert_eq!(g.cpu_us_per_push, None);
        assert!((f.load_cpu_pct - 1.0).abs() < 1e-9);
        assert_eq!(f.rss_after_close_growth_bytes, Some(100_000));
    }

    #[test]
    fn merges_workers_and_warns_when_saturated() {
        let mut reports = Vec::new();
        for cpu in [20.0, 97.0] {
            let mut h = Hists::default();
            h.record(hist::PING_RTT, 100);
            let mut errors = BTreeMap::new();
            errors.insert("connect: refused".to_string(), 2);
            reports.push(WorkerReport {
                hists: h.export(),
                errors,
                max_cpu_pct: cpu,
                wall_us: 1_000_000,
                cpu_user_us: 100_000,
                totals: LoadCounters {
                    logins: 5,
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        let facts = RunFacts {
            scenario: "idle".into(),
            protocol: "tether".into(),
            tls: false,
            websocket: false,
            shape: "spread".into(),
            servers: vec!["127.0.0.1:1".into()],
            connections: 10,
            sources: 1,
            interval_ms: 1000,
            ramp_s: 2.0,
            online_after_ramp: 10,
            online_after_load: 10,
            load_s: 1.0,
            load: LoadCounters {
                pongs: 10,
                ..Default::default()
            },
            timeline: vec![],
            server_pid: None,
            samples: vec![],
            warnings: vec![],
        };
        let s = Summary::build(facts, &reports, INS);
        assert_eq!(s.latency_us[hist::PING_RTT].count, 2);
        assert_eq!(s.errors["connect: refused"], 4);
        assert_eq!(s.connect_rate_per_s, 5.0);
        assert_eq!(s.warnings.len(), 1);
        assert!(s.warnings[0].contains("worker 1"));
        assert!((s.loadgen.total_cpu_pct - 20.0).abs() < 1e-9);
        let table = s.table();
        assert!(table.contains("ping_rtt"));
        assert!(table.contains("WARNING"));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["latency_us"]["ping_rtt"]["count"], 2);
    }

    #[test]
    fn upstream_over_a_peer_has_no_result_latency_and_counts_cpu_per_message() {
        let mut h = Hists::default();
        h.record(hist::UPSTREAM_E2E, 80);
        let report = WorkerReport {
            hists: h.export(),
            wall_us: 1_000_000,
            ..Default::default()
        };
        let load = LoadCounters {
            upstream_sent: 1000,
            upstream_received: 1000,
            ..Default::default()
        };
        let facts = RunFacts {
            scenario: "upstream".into(),
            protocol: "mqtt".into(),
            tls: false,
            websocket: false,
            shape: "spread".into(),
            servers: vec!["127.0.0.1:1".into()],
            connections: 10,
            sources: 1,
            interval_ms: 1000,
            ramp_s: 1.0,
            online_after_ramp: 10,
            online_after_load: 10,
            load_s: 2.0,
            load,
            timeline: vec![],
            server_pid: Some(7),
            samples: vec![
                sample("load start", 1, 1_000_000, 0),
                sample("load end", 1, 1_200_000, 0),
            ],
            warnings: vec![],
        };
        let s = Summary::build(facts, &[report], INS);
        assert_eq!(
            s.latency_not_applicable[hist::UPSTREAM_RESULT],
            "mqtt has no per-message result"
        );
        assert_eq!(s.throughput_per_s["upstream_received"], 500.0);
        let sv = s.server.as_ref().unwrap();
        assert_eq!(sv.cpu_us_per_upstream, Some(200.0));
        assert_eq!(sv.cpu_us_per_push, None);
        let table = s.table();
        assert!(table.contains("upstream_result"), "{table}");
        assert!(table.contains("mqtt has no per-message result"), "{table}");
        assert!(
            table.contains("out of order at the sink (whole run, must be 0): 0"),
            "{table}"
        );
        assert!(table.contains("CPU per upstream message"), "{table}");
        assert!(table.contains("results n/a (mqtt has none)"), "{table}");
    }
}
