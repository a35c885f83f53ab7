//! State-only scale bench: one shard's core (slab of connections, timing wheel, user index,
//! sans-IO sessions) holding millions of simulated sessions, beyond what one box's open-files
//! limit allows with sockets. It drives exactly the server's path: the same `Core` calls the
//! ring driver makes, with a driver that carries out the commands in memory (`SimDriver`).
//!
//! Sessions log in with their logins spread evenly over one heartbeat interval (as after a
//! ramp that long). Then simulated time advances tick by tick for `--duration`: in every tick
//! the sessions whose phase falls in it send a Ping ([`Core::on_bytes`]) and the wheel ticks
//! ([`Core::tick`]). Reported: bytes per session (RSS growth of this process over the logins),
//! the cost of a login, of a heartbeat, and of a wheel tick (which re-arms the entries whose
//! deadline moved), and whether any session expired (none should).
//!
//! Logins are accepted without checking tokens (token HMACs are not the subject here).
//!
//! `cargo bench -p tether-server --bench state -- --sessions 10000000 --duration 60 [--json]`

use std::time::Instant;

use bytes::BytesMut;
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use tether_proto::heartbeat::PriorConfig;
use tether_proto::session::SessionConfig;
use tether_proto::token::{Authenticate, Grant, KeyId, Principal};
use tether_proto::{CloseCode, Frame, Login, Ping, PROTOCOL_VERSION};
use tether_server::core::sim::SimDriver;
use tether_server::core::{ConnId, Core, Now, ShardConfig};

/// What to simulate.
#[derive(Debug, Clone, Parser)]
struct StateBench {
    /// Sessions to hold.
    #[arg(long, default_value_t = 1_000_000)]
    sessions: u32,
    /// Heartbeat interval (= lease announced), ms.
    #[arg(long = "interval-ms", default_value_t = 30_000)]
    interval_ms: u32,
    /// Simulated time to run after the logins, s.
    #[arg(long = "duration", default_value_t = 60, value_parser = secs_to_ms)]
    duration_ms: u64,
    /// Wheel tick, ms (the server's `tick_ms`).
    #[arg(long = "tick-ms", default_value_t = 100)]
    tick_ms: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn secs_to_ms(s: &str) -> Result<u64, String> {
    let s = s.trim_end_matches('s');
    s.parse::<u64>()
        .map(|v| v * 1000)
        .map_err(|e| e.to_string())
}

/// p50, p99 and max of a histogram, µs.
#[derive(Debug, Serialize)]
struct Percentiles {
    p50: u64,
    p99: u64,
    max: u64,
}

/// What it measured.
#[derive(Debug, Serialize)]
struct StateReport {
    sessions: u32,
    connections_held: usize,
    users_indexed: usize,
    /// Slab entry size of one connection, bytes.
    conn_struct_bytes: usize,
    /// RSS growth over the logins divided by the sessions, bytes.
    rss_bytes_per_session: f64,
    /// Wall time of open + login per session, ns.
    login_ns: f64,
    /// Heartbeats fed during the run.
    heartbeats: u64,
    /// Wall time per heartbeat (decode, lease update, Pong encode, send command), ns.
    heartbeat_ns: f64,
    /// Wheel ticks run.
    ticks: u64,
    /// Per-tick wall time, µs.
    tick_us: Percentiles,
    /// Sessions closed during the run (idle expiry would show here; expected 0).
    closed: usize,
    /// Simulated seconds.
    simulated_s: f64,
    /// Wall seconds of the whole bench.
    wall_s: f64,
}

/// Accepts every login as a client without looking at the token.
struct AcceptAll;

impl Authenticate for AcceptAll {
    fn authenticate(&self, _login: &Login, _now_unix: u64) -> Result<Grant, CloseCode> {
        Ok(Grant {
            principal: Principal::Client,
            expiry_unix: u64::MAX,
            key: KeyId::NONE,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let b = StateBench::parse();
    let report = run(&b, |line| eprintln!("{line}"))?;
    if b.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn self_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

/// Runs the bench; `progress` is called with a line of text now and then.
fn run(b: &StateBench, mut progress: impl FnMut(&str)) -> anyhow::Result<StateReport> {
    anyhow::ensure!(b.sessions > 0, "--sessions must be positive");
    anyhow::ensure!(
        b.tick_ms > 0 && b.interval_ms > 0,
        "tick and interval must be positive"
    );
    let started = Instant::now();
    let n = b.sessions as usize;
    let session = SessionConfig {
        min_lease_ms: 1,
        max_lease_ms: b.interval_ms.max(1),
        ..SessionConfig::default()
    };
    let cfg = ShardConfig {
        session,
        max_frame: tether_proto::DEFAULT_MAX_FRAME,
        max_login_frame: 1024,
        max_connections: n,
        max_queue_bytes: 64 * 1024,
        max_buffered_bytes: 1 << 30,
        write_timeout_ms: 30_000,
        linger_ms: 2_000,
        max_retry: 1024,
        revoked_grace_s: 60,
        frame_budget: 256,
        client_frame_rate: 0,
        backend_max_in_flight: 0,
        tick_ms: b.tick_ms,
        server_epoch: 1,
        max_ack_waiting: 1024,
        ack_timeout_ms: 30_000,
        priors: PriorConfig::default(),
        upstream: Default::default(),
        send: Default::default(),
        cluster: None,
    };
    // The bench's own bookkeeping is resident before the baseline is read.
    let mut ids: Vec<ConnId> = vec![
        ConnId {
            key: u32::MAX,
            gen: 0
        };
        n
    ];
    let mut io = SimDriver::default();
    let mut frame = BytesMut::with_capacity(512);
    let mut ping = BytesMut::new();
    tether_proto::encode(
        &Frame::Ping(Ping {
            lease_ms: b.interval_ms,
        }),
        &mut ping,
    )?;
    let rss_before = self_rss();
    let mut state = Core::new(cfg, Box::new(AcceptAll), 0, 1, 0);
    state.reserve(n);
    // Login i happens at phase(i): logins spread evenly over one interval.
    let interval = b.interval_ms as u64;
    let phase = |i: usize| i as u64 * interval / n as u64;
    let login_started = Instant::now();
    for (i, id) in ids.iter_mut().enumerate() {
        let now = Now {
            ms: phase(i),
            us: phase(i) * 1000,
            unix: 0,
        };
        if i % 64 == 0 {
            state.tick(now);
            io.run(&mut state, now);
        }
        *id = state
            .open(now)
            .map_err(|_| anyhow::anyhow!("the shard refused connection {i}"))?;
        io.run(&mut state, now);
        frame.clear();
        tether_proto::encode(
            &Frame::Login(Login {
                version: PROTOCOL_VERSION,
                flags: 0,
                user: format!("u{i}"),
                device: "d0".into(),
                token: "t".into(),
                heartbeat_ms: b.interval_ms,
                network_key: String::new(),
            }),
            &mut frame,
        )?;
        state.on_bytes(*id, &frame, now);
        io.run(&mut state, now);
        if i % 1024 == 0 {
            state.end_batch(now);
            io.run(&mut state, now);
        }
        if i % 1_000_000 == 0 && i > 0 {
            progress(&format!("{i} sessions logged in"));
        }
    }
    let at = Now {
        ms: interval,
        us: interval * 1000,
        unix: 0,
    };
    state.end_batch(at);
    io.run(&mut state, at);
    let login_ns = login_started.elapsed().as_nanos() as f64 / n as f64;
    let rss_after = self_rss();
    let held = state.connections();
    anyhow::ensure!(
        held == n,
        "only {held} of {n} sessions are held after the logins"
    );
    progress(&format!(
        "{n} sessions held; simulating {} s of heartbeats",
        b.duration_ms / 1000
    ));

    // Steady state: session i pings at phase(i) + k × interval.
    let mut tick_hist = Histogram::<u64>::new(3)?;
    let mut hb_time_ns: u128 = 0;
    let mut heartbeats = 0u64;
    let mut ticks = 0u64;
    let closed_before = io.closed.len();
    let start_ms = interval;
    let end_ms = start_ms + b.duration_ms;
    // Index of the next session to ping, cycling through 0..n in phase order.
    let mut next = 0usize;
    let mut round = 1u64;
    let mut t = start_ms;
    while t < end_ms {
        let tick_end = t + b.tick_ms;
        let now = Now {
            ms: t,
            us: t * 1000,
            unix: 0,
        };
        let hb_started = Instant::now();
        while round * interval + phase(next) < tick_end {
            let at = Now {
                ms: round * interval + phase(next),
                us: (round * interval + phase(next)) * 1000,
                unix: 0,
            };
            state.on_bytes(ids[next], &ping, at);
            io.run(&mut state, at);
            heartbeats += 1;
            next += 1;
            if next == n {
                next = 0;
                round += 1;
            }
        }
        state.end_batch(now);
        io.run(&mut state, now);
        hb_time_ns += hb_started.elapsed().as_nanos();
        let tick_started = Instant::now();
        let at = Now {
            ms: tick_end,
            us: tick_end * 1000,
            unix: now.unix,
        };
        state.tick(at);
        io.run(&mut state, at);
        tick_hist.saturating_record((tick_started.elapsed().as_nanos() / 1000).max(1) as u64);
        ticks += 1;
        t = tick_end;
    }
    Ok(StateReport {
        sessions: b.sessions,
        connections_held: state.connections(),
        users_indexed: state.users(),
        conn_struct_bytes: Core::conn_bytes(),
        rss_bytes_per_session: (rss_after as f64 - rss_before as f64) / n as f64,
        login_ns,
        heartbeats,
        heartbeat_ns: if heartbeats > 0 {
            hb_time_ns as f64 / heartbeats as f64
        } else {
            0.0
        },
        ticks,
        tick_us: Percentiles {
            p50: tick_hist.value_at_quantile(0.5),
            p99: tick_hist.value_at_quantile(0.99),
            max: tick_hist.max(),
        },
        closed: io.closed.len() - closed_before,
        simulated_s: b.duration_ms as f64 / 1000.0,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

impl StateReport {
    /// The human-readable table.
    fn table(&self) -> String {
        format!(
            "state bench: {} simulated sessions in one shard's real structures\n\
             \x20 held {} connections, {} users indexed; connection slab entry {} B\n\
             \x20 RSS per session          {:>10.1} B\n\
             \x20 open + login             {:>10.0} ns per session\n\
             \x20 heartbeat                {:>10.0} ns ({} heartbeats)\n\
             \x20 wheel tick               p50 {} µs, p99 {} µs, max {} µs ({} ticks)\n\
             \x20 sessions closed          {:>10} (idle expiry; expected 0)\n\
             \x20 simulated {:.0} s in {:.1} s of wall time\n",
            self.sessions,
            self.connections_held,
            self.users_indexed,
            self.conn_struct_bytes,
            self.rss_bytes_per_session,
            self.login_ns,
            self.heartbeat_ns,
            self.heartbeats,
            self.tick_us.p50,
            self.tick_us.p99,
            self.tick_us.max,
            self.ticks,
            self.closed,
            self.simulated_s,
            self.wall_s
        )
    }
}
