//! The `tether-upstream` thread's figures, shown by `/metrics` as `tether_upstream_sink_*`.
//!
//! The shards count every upstream message's result where its client is (`upstream_*` in
//! `counters.rs`); these count what the thread itself saw: what it sent to the webhook or on
//! the NATS subject, how each ended, and how its results reached the shards.

use std::sync::atomic::{AtomicU64, Ordering};

use tether_proto::{RefuseReason, UpstreamStatus};

crate::figures::figures! {
    /// The `tether-upstream` thread's figures, read by `/metrics`.
    pub struct UpstreamStats;
    sent => "messages handed to the webhook client (a connect that then fails counts too) or published on the NATS subject";
    accepted => "messages the backend accepted";
    rejected => "messages the backend rejected (webhook 4xx other than 429, NATS reply with Tether-Status: rejected)";
    rate_limited => "messages refused RateLimited (webhook 429)";
    no_backend => "messages refused NoBackend: the webhook or NATS unreachable, or no NATS subscriber (not processed)";
    timed_out => "messages refused TimedOut: no answer within upstream.timeout_ms, the webhook failed (5xx other than 503) or the connection broke after sending (may or may not have been processed)";
    overloaded => "messages refused Overloaded: upstream.max_in_flight held already, no webhook request slot free in time, or the webhook answered 503 (not processed)";
    reply_dropped => "backend replies dropped (longer than upstream.max_reply_bytes, or not read whole); the status was passed on";
    results_retried => "results that found their shard's channel full and were retried every 10 ms";
    results_lost => "results never handed to their shard (only when the thread stops with results still held)";
    in_flight: gauge => "messages sent and waiting for the backend's answer";
    waiting: gauge => "messages waiting behind their connection's message in flight";
    connected: gauge => "1 while the NATS sink is connected (sink nats)";
}

impl UpstreamStats {
    /// Adds one to a figure.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message's result.
    pub(crate) fn outcome(&self, status: UpstreamStatus) {
        Self::inc(match status {
            UpstreamStatus::Accepted => &self.accepted,
            UpstreamStatus::Refused(RefuseReason::Rejected) => &self.rejected,
            UpstreamStatus::Refused(RefuseReason::RateLimited) => &self.rate_limited,
            UpstreamStatus::Refused(RefuseReason::NoBackend) => &self.no_backend,
            UpstreamStatus::Refused(RefuseReason::TimedOut) => &self.timed_out,
            // The thread makes no other refusal.
            UpstreamStatus::Refused(_) => &self.overloaded,
        });
    }
}
