//! Latency histograms and counters, and how they travel from workers to the parent.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Names of the latency histograms, all in microseconds.
pub mod hist {
    /// From `connect()` to the socket becoming writable.
    pub const CONNECT: &str = "connect";
    /// From sending Login to receiving LoginOk. With TLS the Login is written when the connect
    /// completes and goes out with the end of the handshake, so this includes the handshake
    /// (and with NATS the wait for the INFO line that precedes it).
    pub const LOGIN: &str = "login";
    /// TLS runs: from the connect completing to the end of the TLS handshake (NATS: including
    /// the wait for the server's INFO line, after which the handshake starts).
    pub const TLS_HANDSHAKE: &str = "tls_handshake";
    /// WebSocket runs: from the connect completing (wss://: from the start of the TLS
    /// handshake, which it includes) to the server's `101`. The login latency of these runs
    /// starts at the Login written after the `101`.
    pub const UPGRADE: &str = "upgrade";
    /// From sending Ping to receiving Pong.
    pub const PING_RTT: &str = "ping_rtt";
    /// From the backend sending a push to the client receiving it.
    pub const PUSH_E2E: &str = "push_e2e";
    /// [`PUSH_E2E`] of pushes whose backend connection is on the target's shard.
    pub const PUSH_E2E_SAME: &str = "push_e2e_same_shard";
    /// [`PUSH_E2E`] of pushes that crossed the mesh from the backend's shard to the target's.
    pub const PUSH_E2E_CROSS: &str = "push_e2e_cross_shard";
    /// From the backend sending a push to it receiving the PushResult.
    pub const PUSH_RESULT: &str = "push_result";
    /// From a client sending a Send to the target client receiving it.
    pub const SEND_E2E: &str = "send_e2e";
    /// From a client sending a Send to it receiving the SendResult.
    pub const SEND_RESULT: &str = "send_result";
    /// From a client sending an upstream message to the backend sink receiving it.
    pub const UPSTREAM_E2E: &str = "upstream_e2e";
    /// From a client sending an upstream message to it receiving the UpstreamResult (tether
    /// only: MQTT and NATS have no per-message result).
    pub const UPSTREAM_RESULT: &str = "upstream_result";
    /// Churn: from `connect()` of a replacement connection to its LoginOk.
    pub const RECONNECT: &str = "reconnect";
    /// Burst shape: from a round's pings going out to the last of their pongs coming back.
    pub const BURST_ROUND: &str = "burst_round";
    /// How late the worker's event loop ran a due timer: the loadgen's own saturation.
    pub const LOOP_LAG: &str = "loop_lag";
}

/// Highest value a histogram tracks: 1 hour in microseconds (larger values are clamped).
const HIST_MAX_US: u64 = 3_600_000_000;

/// A new latency histogram (microseconds, 3 significant digits).
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static bounds are valid")
}

/// A histogram as (value, count) pairs of its recorded buckets, for JSON transport.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistData(pub Vec<(u64, u64)>);

impl HistData {
    pub fn from_hist(h: &Histogram<u64>) -> HistData {
        HistData(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these values to `into`.
    pub fn add_to(&self, into: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            into.saturating_record_n(value.clamp(1, HIST_MAX_US), count);
        }
    }
}

/// Named histograms of one worker.
#[derive(Debug, Default)]
pub struct Hists {
    /// By name (see [`hist`]).
    map: BTreeMap<&'static str, Histogram<u64>>,
}

impl Hists {
    /// Records `us` microseconds in histogram `name`.
    pub fn record(&mut self, name: &'static str, us: u64) {
        self.map
            .entry(name)
            .or_insert_with(new_hist)
            .saturating_record(us.clamp(1, HIST_MAX_US));
    }

    /// Records a latency given as two nanosecond timestamps (clamped at zero).
    pub fn record_ns(&mut self, name: &'static str, from_ns: u64, to_ns: u64) {
        self.record(name, to_ns.saturating_sub(from_ns) / 1000);
    }

    pub fn export(&self) -> BTreeMap<String, HistData> {
        self.map
            .iter()
            .map(|(k, h)| (k.to_string(), HistData::from_hist(h)))
            .collect()
    }
}

/// Counts of the load-relevant events; the worker sends the totals and the difference over
/// the load phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadCounters {
    /// Connections that logged in.
    pub logins: u64,
    /// Pings sent.
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,
    /// Pushes sent by the backend.
    pub pushes_sent: u64,
    /// PushResults received by the backend.
    pub push_results: u64,
    /// Sends sent by clients.
    pub sends_sent: u64,
    /// SendResults received.
    pub send_results: u64,
    /// Push frames received by clients (from pushes or sends).
    pub delivered: u64,
    /// Connections closed on purpose and replaced (churn).
    pub churned: u64,
    /// Load actions skipped because too many were in flight.
    pub skipped: u64,
    /// Reconnect attempts scheduled after a loss (`--reconnect`).
    #[serde(default)]
    pub reconnects: u64,
    /// Upstream messages sent by clients.
    #[serde(default)]
    pub upstream_sent: u64,
    /// Upstream messages received by the backend sinks.
    #[serde(default)]
    pub upstream_received: u64,
    /// UpstreamResults `Accepted` received by clients.
    #[serde(default)]
    pub upstream_accepted: u64,
    /// UpstreamResults `Refused` (any reason) received by clients.
    #[serde(default)]
    pub upstream_refused: u64,
    /// Upstream messages that reached a sink with a sequence number not above the last one of
    /// the same (user, device): the server reordered a connection's messages (must be 0).
    #[serde(default)]
    pub upstream_out_of_order: u64,
}

impl LoadCounters {
    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &LoadCounters) -> LoadCounters {
        LoadCounters {
            logins: self.logins - earlier.logins,
            pings: self.pings - earlier.pings,
            pongs: self.pongs - earlier.pongs,
            pushes_sent: self.pushes_sent - earlier.pushes_sent,
            push_results: self.push_results - earlier.push_results,
            sends_sent: self.sends_sent - earlier.sends_sent,
            send_results: self.send_results - earlier.send_results,
            delivered: self.delivered - earlier.delivered,
            churned: self.churned - earlier.churned,
            skipped: self.skipped - earlier.skipped,
            reconnects: self.reconnects - earlier.reconnects,
            upstream_sent: self.upstream_sent - earlier.upstream_sent,
            upstream_received: self.upstream_received - earlier.upstream_received,
            upstream_accepted: self.upstream_accepted - earlier.upstream_accepted,
            upstream_refused: self.upstream_refused - earlier.upstream_refused,
            upstream_out_of_order: self.upstream_out_of_order - earlier.upstream_out_of_order,
        }
    }

    /// Adds another worker's counts.
    pub fn add(&mut self, o: &LoadCounters) {
        self.logins += o.logins;
        self.pings += o.pings;
        self.pongs += o.pongs;
        self.pushes_sent += o.pushes_sent;
        self.push_results += o.push_results;
        self.sends_sent += o.sends_sent;
        self.send_results += o.send_results;
        self.delivered += o.delivered;
        self.churned += o.churned;
        self.skipped += o.skipped;
        self.reconnects += o.reconnects;
        self.upstream_sent += o.upstream_sent;
        self.upstream_received += o.upstream_received;
        self.upstream_accepted += o.upstream_accepted;
        self.upstream_refused += o.upstream_refused;
        self.upstream_out_of_order += o.upstream_out_of_order;
    }
}

/// The percentiles every latency is reported with, in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_survives_transport() {
        let mut h = Hists::default();
        for v in 1..=1000u64 {
            h.record(hist::PING_RTT, v * 10);
        }
        let data = h.export();
        let json = serde_json::to_string(&data).unwrap();
        let back: BTreeMap<String, HistData> = serde_json::from_str(&json).unwrap();
        let mut merged = new_hist();
        back[hist::PING_RTT].add_to(&mut merged);
        back[hist::PING_RTT].add_to(&mut merged);
        assert_eq!(merged.len(), 2000);
        let p = Percentiles::of(&merged);
        assert!((4990..=5010).contains(&p.p50), "p50 {}", p.p50);
        assert!((9990..=10010).contains(&p.max), "max {}", p.max);
    }

    #[test]
    fn counters_difference() {
        let a = LoadCounters {
            pongs: 5,
            pushes_sent: 2,
            ..Default::default()
        };
        let b = LoadCounters {
            pongs: 12,
            pushes_sent: 2,
            delivered: 1,
            ..Default::default()
        };
        let d = b.since(&a);
        assert_eq!(d.pongs, 7);
        assert_eq!(d.pushes_sent, 0);
        assert_eq!(d.delivered, 1);
    }
}
