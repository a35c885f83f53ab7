//! A deterministic simulator for heartbeat policies: a NAT with an idle timeout T that silently
//! drops flows (T may change over time), frame loss, late client timers (including Android-style
//! batching), and the server's real [`ServerSession`](crate::session::ServerSession)s, all on a
//! virtual clock. Hours of network time run in milliseconds, and a run is fully determined by
//! its [`Scenario`] (seed included).
//!
//! [`run`] drives tether's [`Client`] or one of the [`baseline`]s through a scenario;
//! [`standard_scenarios`] and [`markdown_table`] produce the comparison in `docs/heartbeat.md`
//! (`cargo run -p tether-proto --example heartbeat_sim --release`).

pub mod baseline;
mod net;

use std::fmt::Write as _;

use super::client::Client;
use super::config::HeartbeatConfig;
use super::events::{Action, ConnId, Credentials};
use super::memory::NetMemory;
use crate::message::Frame;
use crate::Millis;
use baseline::{Baseline, BaselineKind};

/// A client the simulator can drive: the shape of [`Client`]'s sans-IO interface.
pub trait Keeper {
    /// The transport `conn` is up.
    fn connected(&mut self, now: Millis, conn: ConnId);
    /// The transport `conn` closed.
    fn disconnected(&mut self, now: Millis, conn: ConnId);
    /// A frame arrived on `conn`.
    fn handle_frame(&mut self, now: Millis, conn: ConnId, frame: Frame);
    /// The timer fired.
    fn handle_timeout(&mut self, now: Millis);
    /// The next action.
    fn poll_action(&mut self) -> Option<Action>;
    /// When to call `handle_timeout`.
    fn poll_timeout(&self) -> Option<Millis>;
    /// The main connection's heartbeat interval now.
    fn interval_ms(&self) -> u32;
}

impl Keeper for Client {
    fn connected(&mut self, now: Millis, conn: ConnId) {
        Client::connected(self, now, conn)
    }
    fn disconnected(&mut self, now: Millis, conn: ConnId) {
        Client::disconnected(self, now, conn)
    }
    fn handle_frame(&mut self, now: Millis, conn: ConnId, frame: Frame) {
        Client::handle_frame(self, now, conn, frame);
        // The simulated app reads its events and acts on none of them.
        while self.poll_event().is_some() {}
    }
    fn handle_timeout(&mut self, now: Millis) {
        Client::handle_timeout(self, now)
    }
    fn poll_action(&mut self) -> Option<Action> {
        Client::poll_action(self)
    }
    fn poll_timeout(&self) -> Option<Millis> {
        Client::poll_timeout(self)
    }
    fn interval_ms(&self) -> u32 {
        Client::interval_ms(self)
    }
}

/// How late the client's timers fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerLateness {
    /// On time.
    Exact,
    /// Late by a uniformly random 0..=`max_ms`.
    Uniform {
        /// Largest lateness.
        max_ms: u32,
    },
    /// Deferred to the next point of a grid `window_ms` apart (Android Doze-style batching).
    Batched {
        /// Grid spacing, e.g. 9 minutes.
        window_ms: u32,
    },
}

/// One simulated situation.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Label in the table.
    pub name: String,
    /// Simulated time.
    pub duration_ms: u64,
    /// The NAT idle timeout as a step function: (from, T) pairs, ascending, the first from 0.
    pub timeouts: Vec<(Millis, u32)>,
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Client timer model.
    pub lateness: TimerLateness,
    /// One-way delay between client and server.
    pub one_way_ms: u32,
    /// Fixes every random choice of the run.
    pub seed: u64,
    /// The prior the server hands out in `LoginOk` (0: none), as if earlier clients on this
    /// network had reported.
    pub prior_ms: u32,
}

impl Scenario {
    /// The NAT timeout at `t`.
    pub fn timeout_at(&self, t: Millis) -> u32 {
        self.timeouts
            .iter()
            .rev()
            .find(|(from, _)| *from <= t)
            .or(self.timeouts.first())
            .map_or(u32::MAX, |(_, v)| *v)
    }

    /// When T last changes (0 for a constant T).
    pub fn last_change(&self) -> Millis {
        self.timeouts.last().map_or(0, |(from, _)| *from)
    }
}

/// Which client to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// tether's adaptive client.
    Tether(HeartbeatConfig),
    /// A baseline.
    Baseline(BaselineKind),
}

impl Policy {
    /// Label in the table.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Tether(cfg) if cfg.assumed_lateness_ms > 0 => "tether, lateness declared",
            Policy::Tether(_) => "tether",
            Policy::Baseline(BaselineKind::Fixed { .. }) => "fixed 4 min",
            Policy::Baseline(BaselineKind::Mars) => "Mars-style",
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// The client's interval at the end.
    pub final_interval_ms: u32,
    /// T at the end.
    pub final_timeout_ms: u32,
    /// Time from the last change of T (or the start) until the client's interval entered
    /// [0.9 T, T) for good; `None` if it was outside at the end.
    pub converged_after_ms: Option<u64>,
    /// Main connections the NAT dropped.
    pub main_losses: u32,
    /// ...of which after the last change of T.
    pub losses_after_change: u32,
    /// Probe connections opened.
    pub probes: u32,
    /// Main connections opened (the first included).
    pub main_connects: u32,
    /// Main pings per hour over the last hour.
    pub pings_per_hour: f64,
    /// The idle gap the NAT saw before the main pings of the last hour (the lower median;
    /// the last one if none; 0 if no ping ever passed the NAT), measured from the simulated
    /// send times: under timer batching this, not the interval asked for, is what the NAT has
    /// to survive.
    pub final_gap_ms: u64,
    /// Time the main connection was dead at the NAT before a new one was up: pushes sent then
    /// were lost.
    pub unreachable_ms: u64,
    /// Simulator events processed (bounded: a client that never lets time advance is cut off).
    pub events: u64,
}

/// Runs `policy` through `sc`.
pub fn run(sc: &Scenario, policy: &Policy) -> Report {
    let outcome = match policy {
        Policy::Tether(cfg) => {
            let creds = Credentials {
                user: "sim".into(),
                device: "phone".into(),
                token: String::new(),
            };
            let client = Client::new(cfg.clone(), creds, NetMemory::default(), sc.seed);
            net::World::new(sc, client).run(|c, now| c.network_up(now, "sim-net"))
        }
        Policy::Baseline(kind) => {
            net::World::new(sc, Baseline::new(*kind, sc.seed)).run(|c, now| c.handle_timeout(now))
        }
    };
    let mut report = outcome.report;
    let t = sc.timeout_at(sc.duration_ms);
    report.final_timeout_ms = t;
    report.converged_after_ms = converged_after(&outcome.intervals, sc.last_change(), t);
    let hour = 3_600_000;
    let from = sc.duration_ms.saturating_sub(hour);
    let pings = outcome.pings.iter().filter(|at| **at >= from).count();
    report.pings_per_hour = pings as f64 * hour as f64 / (sc.duration_ms - from).max(1) as f64;
    let mut recent: Vec<u64> = outcome
        .gaps
        .iter()
        .filter(|(at, _)| *at >= from)
        .map(|(_, gap)| *gap)
        .collect();
    recent.sort_unstable();
    report.final_gap_ms = match recent.len() {
        0 => outcome.gaps.last().map_or(0, |(_, gap)| *gap),
        n => recent[(n - 1) / 2],
    };
    report
}

/// Time from `since` until the interval entered [0.9 T, T) for good; `intervals` holds
/// (time, interval) at every change.
fn converged_after(intervals: &[(Millis, u32)], since: Millis, t: u32) -> Option<u64> {
    let good = |iv: u32| u64::from(iv) * 10 >= u64::from(t) * 9 && iv < t;
    if !intervals.last().is_some_and(|(_, iv)| good(*iv)) {
        return None;
    }
    // When it last moved into the band; at or before `since` means it held throughout.
    let entered = intervals
        .iter()
        .rposition(|(_, iv)| !good(*iv))
        .map_or(0, |i| intervals[i + 1].0);
    Some(entered.saturating_sub(since))
}

const MIN: u64 = 60_000;

/// The scenarios of the table in `docs/heartbeat.md`: constant T of 60 s, 3, 5, 10, 15 and 28
/// minutes, and T dropping from 15 to 5 minutes; up to 1 s of timer lateness, 0.5 % frame
/// loss, 100 ms round trips.
pub fn standard_scenarios() -> Vec<Scenario> {
    let base = |name: &str, hours: u64, timeouts: Vec<(Millis, u32)>| Scenario {
        name: name.into(),
        duration_ms: hours * 60 * MIN,
        timeouts,
        loss: 0.005,
        lateness: TimerLateness::Uniform { max_ms: 1_000 },
        one_way_ms: 50,
        seed: 1,
        prior_ms: 0,
    };
    let mut v: Vec<Scenario> = [(60_000, "60 s"), (180_000, "3 min"), (300_000, "5 min")]
        .into_iter()
        .chain([
            (600_000, "10 min"),
            (900_000, "15 min"),
            (1_680_000, "28 min"),
        ])
        .map(|(t, name)| base(&format!("T = {name}"), 6, vec![(0, t)]))
        .collect();
    v.push(base(
        "T 15 → 5 min at 4 h",
        8,
        vec![(0, 900_000), (4 * 60 * MIN, 300_000)],
    ));
    v
}

/// Extra situations shown below the main table: Android-style 9-minute timer batching, and
/// heavy loss.
pub fn stress_scenarios() -> Vec<Scenario> {
    let mut batched = standard_scenarios()[5].clone();
    batched.name = "T = 28 min, 9-min timer batching".into();
    batched.lateness = TimerLateness::Batched {
        window_ms: 9 * 60_000,
    };
    batched.duration_ms = 12 * 60 * MIN;
    let mut lossy = standard_scenarios()[2].clone();
    lossy.name = "T = 5 min, 5 % loss".into();
    lossy.loss = 0.05;
    vec![batched, lossy]
}

/// The stress table adds tether told by the app to expect 9-minute timer batching.
pub fn stress_policies() -> Vec<Policy> {
    let mut v = policies();
    v.insert(
        1,
        Policy::Tether(HeartbeatConfig {
            assumed_lateness_ms: 9 * 60_000,
            ..HeartbeatConfig::default()
        }),
    );
    v
}

/// A client joining a network the server already has a prior for (what earlier clients
/// reported, here 97 % of T), against the same network without one.
pub fn prior_scenarios() -> Vec<Scenario> {
    let plain = standard_scenarios()[4].clone(); // T = 15 min
    let mut with_prior = plain.clone();
    with_prior.name = "T = 15 min, server prior 14.5 min".into();
    with_prior.prior_ms = 873_000;
    vec![plain, with_prior]
}

/// The three policies compared.
pub fn policies() -> Vec<Policy> {
    vec![
        Policy::Tether(HeartbeatConfig::default()),
        Policy::Baseline(BaselineKind::Fixed {
            interval_ms: 240_000,
        }),
        Policy::Baseline(BaselineKind::Mars),
    ]
}

fn minutes(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.0} s", ms as f64 / 1000.0)
    } else {
        format!("{:.1} min", ms as f64 / 60_000.0)
    }
}

/// Runs every policy through every scenario and formats the results as a Markdown table.
pub fn markdown_table(scenarios: &[Scenario], policies: &[Policy]) -> String {
    let mut out = String::from(
        "| scenario | policy | final interval | final / T | NAT gap (/ T) | converged after | \
         main losses (after change) | probe conns | reconnects | pings / h (ideal) | \
         unreachable |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for sc in scenarios {
        for policy in policies {
            let r = run(sc, policy);
            let ideal = 3_600_000.0 / f64::from(r.final_timeout_ms);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {} | {} | {} ({}) | {} | {} | {:.1} ({:.1}) | {} |",
                sc.name,
                policy.name(),
                minutes(r.final_interval_ms.into()),
                f64::from(r.final_interval_ms) / f64::from(r.final_timeout_ms),
                match r.final_gap_ms {
                    0 => "–".into(),
                    gap => format!(
                        "{} ({:.2})",
                        minutes(gap),
                        gap as f64 / f64::from(r.final_timeout_ms)
                    ),
                },
                r.converged_after_ms.map_or("never".into(), minutes),
                r.main_losses,
                r.losses_after_change,
                r.probes,
                r.main_connects.saturating_sub(1),
                r.pings_per_hour,
                ideal,
                minutes(r.unreachable_ms),
            );
        }
    }
    out
}
