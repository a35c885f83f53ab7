//! Heartbeat parameters scaled to a rough guess of the NAT timeout.
//!
//! The machine's defaults are tuned for phones on carrier NATs (minutes). A NAT of a few
//! seconds, as in the real-socket tests or a network namespace on a desk, needs every interval
//! scaled down alike, or learning would take hours of wall time.

use tether_proto::heartbeat::HeartbeatConfig;

/// Smallest hint accepted: below it the floors (50 ms intervals, 500 ms pong timeout) dominate.
pub const MIN_HINT_MS: u32 = 1_000;

/// Heartbeat parameters for a network whose NAT timeout is somewhere around `hint_ms` (within
/// a factor of about 4 either way: the safe interval is a quarter of it and the probes grow
/// from there until one fails). The hint is not told to the learner; it only sets the scale.
pub fn scaled(hint_ms: u32) -> HeartbeatConfig {
    let h = hint_ms.clamp(MIN_HINT_MS, 30 * 60_000);
    HeartbeatConfig {
        foreground_interval_ms: h / 4,
        safe_interval_ms: h / 4,
        min_interval_ms: (h / 20).max(50),
        max_interval_ms: h.saturating_mul(20),
        min_margin_ms: (h / 20).max(20),
        // A loaded machine may hold a pong back for a while; a spurious dead link would cost
        // the main connection, a late probe only a pessimistic bound.
        pong_timeout_min_ms: (h / 6).max(500),
        pong_timeout_max_ms: h.max(2_000),
        pong_timeout_initial_ms: (h / 3).max(1_000),
        connect_timeout_ms: h.saturating_mul(2).max(5_000),
        backoff_base_ms: (h / 10).max(100),
        backoff_cap_ms: h.saturating_mul(4),
        network_change_jitter_ms: (h / 20).max(1),
        recheck_after_ms: u64::from(h) * 100,
        ..HeartbeatConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scale_is_valid_and_below_the_hint() {
        for hint in [1, 1_000, 3_000, 5_000, 60_000, 600_000, u32::MAX] {
            let c = scaled(hint);
            assert_eq!(c.validate(), Ok(()), "hint {hint}: {c:?}");
            assert!(c.safe_interval_ms < hint.max(MIN_HINT_MS), "hint {hint}");
        }
    }
}
