//! State-only scale bench: the shard's real data structures (slab of connections, timing
//! wheel, user index, sans-IO sessions) holding millions of simulated sessions, beyond what
//! one box's open-files limit allows with sockets.
//!
//! Sessions log in with their logins spread evenly over one heartbeat interval (as after a
//! ramp that long). Then simulated time advances tick by tick for `--duration`: in every tick
//! the sessions whose phase falls in it send a Ping (fed to [`ShardState::on_bytes`] as if
//! read from their sockets) and the wheel ticks ([`ShardState::tick`]). Reported: bytes per
//! session (RSS growth of this process over the logins), the cost of a login, of a
//! heartbeat, and of a wheel tick (which re-arms the entries whose deadline moved), and
//! whether any session expired (none should: every one pings within its lease).
//!
//! Logins are accepted without checking tokens (token HMACs are not the subject here), and
//! writes go nowhere ([`CountingIo`]).

use std::os::fd::RawFd;
use std::time::Instant;

use bytes::BytesMut;
use serde::Serialize;
use tether_proto::heartbeat::PriorConfig;
use tether_proto::session::SessionConfig;
use tether_proto::token::{Authenticate, Principal};
use tether_proto::{CloseCode, Frame, Login, Ping, PROTOCOL_VERSION};
use tether_server::io::Io;
use tether_server::mesh::MeshPort;
use tether_server::state::{Now, ShardConfig, ShardState};

use crate::stats::{new_hist, Percentiles};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct StateBench {
    /// Sessions to hold.
    pub sessions: u32,
    /// Heartbeat interval (= lease announced), ms.
    pub interval_ms: u32,
    /// Simulated time to run after the logins, ms.
    pub duration_ms: u64,
    /// Wheel tick, ms (the server's `tick_ms`).
    pub tick_ms: u64,
}

/// What it measured.
#[derive(Debug, Serialize)]
pub struct StateReport {
    pub sessions: u32,
    pub connections_held: usize,
    pub users_indexed: usize,
    /// Slab entry size of one connection, bytes.
    pub conn_struct_bytes: usize,
    /// RSS growth over the logins divided by the sessions, bytes.
    pub rss_bytes_per_session: f64,
    /// Wall time of open + login per session, ns.
    pub login_ns: f64,
    /// Heartbeats fed during the run.
    pub heartbeats: u64,
    /// Wall time per heartbeat (decode, lease update, Pong encode), ns.
    pub heartbeat_ns: f64,
    /// Wheel ticks run.
    pub ticks: u64,
    /// Per-tick wall time, µs.
    pub tick_us: Percentiles,
    /// Sessions closed during the run (idle expiry would show here; expected 0).
    pub closed: usize,
    /// Simulated seconds.
    pub simulated_s: f64,
    /// Wall seconds of the whole bench.
    pub wall_s: f64,
}

/// Accepts every login as a client without looking at the token.
struct AcceptAll;

impl Authenticate for AcceptAll {
    fn authenticate(&self, _login: &Login, _now_unix: u64) -> Result<Principal, CloseCode> {
        Ok(Principal::Client)
    }
}

/// An [`Io`] without sockets that remembers the generation of the last watched connection
/// and counts what was written and closed.
#[derive(Debug, Default)]
struct CountingIo {
    /// Generation given with the last `watch`.
    last_gen: u32,
    /// Bytes "sent".
    sent: u64,
    /// Connections closed.
    closed: usize,
}

impl Io for CountingIo {
    fn recv(&mut self, _fd: RawFd, _buf: &mut BytesMut, _max: usize) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
    fn send(&mut self, _fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
        self.sent += buf.len() as u64;
        Ok(buf.len())
    }
    fn watch(&mut self, _fd: RawFd, _key: u32, gen: u32) {
        self.last_gen = gen;
    }
    fn want_writable(&mut self, _fd: RawFd, _key: u32, _gen: u32) {}
    fn unwatch(&mut self, _key: u32, _gen: u32, _writable: bool) {}
    fn close(&mut self, _fd: RawFd, _key: u32, _gen: u32, _writable: bool) {
        self.closed += 1;
    }
}

fn self_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| crate::procfs::parse_vmrss(&s).ok())
        .unwrap_or(0)
}

/// Runs the bench; `progress` is called with a line of text now and then.
pub fn run(b: &StateBench, mut progress: impl FnMut(&str)) -> anyhow::Result<StateReport> {
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
        max_connections: n,
        max_queue_bytes: 64 * 1024,
        write_timeout_ms: 30_000,
        tick_ms: b.tick_ms,
        server_epoch: 1,
        max_ack_waiting: 1024,
        ack_timeout_ms: 30_000,
        priors: PriorConfig::default(),
    };
    // The bench's own bookkeeping is resident before the baseline is read.
    let mut ids: Vec<(u32, u32)> = vec![(u32::MAX, 0); n];
    let mut io = CountingIo::default();
    let mut frame = BytesMut::with_capacity(512);
    let mut ping = BytesMut::new();
    tether_proto::encode(
        &Frame::Ping(Ping {
            lease_ms: b.interval_ms,
        }),
        &mut ping,
    )?;
    let rss_before = self_rss();
    let mut state = ShardState::new(cfg, Box::new(AcceptAll), MeshPort::single(1024)?, 0);
    state.reserve(n);
    // Login i happens at phase(i): logins spread evenly over one interval.
    let interval = b.interval_ms as u64;
    let phase = |i: usize| i as u64 * interval / n as u64;
    let login_started = Instant::now();
    for (i, id) in ids.iter_mut().enumerate() {
        let now = Now {
            ms: phase(i),
            unix: 0,
        };
        if i % 64 == 0 {
            state.tick(now, &mut io);
        }
        let key = state
            .open(i as RawFd + 1000, now, &mut io)
            .map_err(|_| anyhow::anyhow!("the shard refused connection {i}"))?;
        *id = (key, io.last_gen);
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
        state.on_bytes(key, io.last_gen, &frame, now, &mut io);
        if i % 1024 == 0 {
            state.end_batch();
        }
        if i % 1_000_000 == 0 && i > 0 {
            progress(&format!("{i} sessions logged in"));
        }
    }
    state.end_batch();
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
    let mut tick_hist = new_hist();
    let mut hb_time_ns: u128 = 0;
    let mut heartbeats = 0u64;
    let mut ticks = 0u64;
    let closed_before = io.closed;
    let start_ms = interval;
    let end_ms = start_ms + b.duration_ms;
    // Index of the next session to ping, cycling through 0..n in phase order.
    let mut next = 0usize;
    let mut round = 1u64;
    let mut t = start_ms;
    while t < end_ms {
        let tick_end = t + b.tick_ms;
        let now = Now { ms: t, unix: 0 };
        let hb_started = Instant::now();
        while round * interval + phase(next) < tick_end {
            let (key, gen) = ids[next];
            let at = Now {
                ms: round * interval + phase(next),
                unix: 0,
            };
            state.on_bytes(key, gen, &ping, at, &mut io);
            heartbeats += 1;
            next += 1;
            if next == n {
                next = 0;
                round += 1;
            }
        }
        state.end_batch();
        hb_time_ns += hb_started.elapsed().as_nanos();
        let tick_started = Instant::now();
        state.tick(
            Now {
                ms: tick_end,
                unix: now.unix,
            },
            &mut io,
        );
        tick_hist.saturating_record((tick_started.elapsed().as_nanos() / 1000).max(1) as u64);
        ticks += 1;
        t = tick_end;
    }
    Ok(StateReport {
        sessions: b.sessions,
        connections_held: state.connections(),
        users_indexed: state.users(),
        conn_struct_bytes: ShardState::conn_bytes(),
        rss_bytes_per_session: (rss_after as f64 - rss_before as f64) / n as f64,
        login_ns,
        heartbeats,
        heartbeat_ns: if heartbeats > 0 {
            hb_time_ns as f64 / heartbeats as f64
        } else {
            0.0
        },
        ticks,
        tick_us: Percentiles::of(&tick_hist),
        closed: io.closed - closed_before,
        simulated_s: b.duration_ms as f64 / 1000.0,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

impl StateReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        format!(
            "tether-loadgen state: {} simulated sessions in one shard's real structures\n\
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_keeps_every_session_alive() {
        let b = StateBench {
            sessions: 2_000,
            interval_ms: 1_000,
            duration_ms: 5_000,
            tick_ms: 100,
        };
        let r = run(&b, |_| {}).unwrap();
        assert_eq!(r.connections_held, 2_000);
        assert_eq!(r.users_indexed, 2_000);
        assert_eq!(r.closed, 0, "a session pinging within its lease expired");
        // Every session pings once per interval: 5 intervals' worth.
        assert!((9_990..=10_010).contains(&r.heartbeats), "{}", r.heartbeats);
        assert_eq!(r.ticks, 50);
    }
}
