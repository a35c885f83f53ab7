//! Parameters of the client's heartbeat machine.

use serde::{Deserialize, Serialize};

/// Parameters of the client heartbeat machine ([`super::Client`]). `Default` is tuned for
/// phones on real networks; tests and the real-socket proofs scale everything down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Interval while the app is in the foreground: short and fixed, since the user is active
    /// and the radio is awake anyway. No learning happens then.
    pub foreground_interval_ms: u32,
    /// Background interval while nothing is verified for the network: below the smallest
    /// NAT timeout commonly seen, so learning does not cost the main connection.
    pub safe_interval_ms: u32,
    /// Smallest interval ever used (the floor when even the safe interval fails).
    pub min_interval_ms: u32,
    /// Largest interval and probe delay; also bounded by the server's `max_lease_ms`.
    pub max_interval_ms: u32,
    /// Probe connections open at once during learning (at most 32). A new probe starts
    /// whenever one ends, so more in flight converge faster and cost more short connections.
    pub parallel_probes: u8,
    /// While no failing gap is known, the probe delays below the fine range step up by this
    /// factor (in percent) from the safe interval: 1.5 finds the first failure sooner than
    /// doubling, which overshoots further.
    pub growth_pct: u16,
    /// Step between probe delays in the fine range, in percent: small enough that one of them
    /// lands in the band the interval is good for (at most `100 / (100 − 8)` ≈ 8.7 %), so the
    /// first probe to fail above a success there already ends the search.
    pub fine_step_pct: u8,
    /// The fine range: delays from this percentage of the largest interval up to it. A probe
    /// costs its delay in wall time, so a second, narrowing stage after the first failure costs
    /// most where delays are longest; there the probes are fine from the start.
    pub fine_from_pct: u8,
    /// While no failing gap is known, probes run up to this multiple of the verified gap (the
    /// safe interval at first). Larger starts long probes sooner and wastes more of them.
    pub probe_reach: u8,
    /// Learning stops when the smallest failed gap is within this percentage above the
    /// largest verified one.
    pub precision_pct: u8,
    /// The main interval stays this percentage below the verified gap...
    pub margin_pct: u8,
    /// ...and at least this many milliseconds, plus the recently observed timer lateness.
    pub min_margin_ms: u32,
    /// Timer lateness the app expects anyway (for example 9 minutes when it knows the phone
    /// batches alarms), used until and unless more is observed. Added to the margin and to
    /// the lease told to the server.
    pub assumed_lateness_ms: u32,
    /// Bounds of the RTT-based pong timeout of the dead-link check.
    pub pong_timeout_min_ms: u32,
    /// Upper bound of the pong timeout.
    pub pong_timeout_max_ms: u32,
    /// Pong timeout before any round trip was measured.
    pub pong_timeout_initial_ms: u32,
    /// A connection (transport, `Login`, `LoginOk`) must be up within this time.
    pub connect_timeout_ms: u32,
    /// Smallest reconnect backoff delay.
    pub backoff_base_ms: u32,
    /// Largest reconnect backoff delay.
    pub backoff_cap_ms: u32,
    /// After a network change, reconnect after a random delay below this.
    pub network_change_jitter_ms: u32,
    /// After learning converged, look again for a larger timeout after this long (NATs get
    /// reconfigured; Mars re-probes weekly). 0 disables.
    pub recheck_after_ms: u64,
    /// Networks remembered by [`super::NetMemory`].
    pub memory_capacity: usize,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            foreground_interval_ms: 30_000,
            safe_interval_ms: 45_000,
            min_interval_ms: 5_000,
            max_interval_ms: 30 * 60_000,
            parallel_probes: 10,
            growth_pct: 150,
            fine_step_pct: 7,
            fine_from_pct: 33,
            probe_reach: 6,
            precision_pct: 4,
            margin_pct: 2,
            min_margin_ms: 500,
            assumed_lateness_ms: 0,
            pong_timeout_min_ms: 2_000,
            pong_timeout_max_ms: 10_000,
            pong_timeout_initial_ms: 5_000,
            connect_timeout_ms: 10_000,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 120_000,
            network_change_jitter_ms: 2_000,
            recheck_after_ms: 12 * 3_600_000,
            memory_capacity: super::memory::DEFAULT_MEMORY_CAPACITY,
        }
    }
}

/// A [`HeartbeatConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatConfigError {
    /// A field that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// Two fields are out of order.
    #[error("{0} must not exceed {1}")]
    Order(&'static str, &'static str),
    /// A percentage outside its range.
    #[error("{0} must be within 1..=50")]
    Percent(&'static str),
    /// `growth_pct` outside 110..=400.
    #[error("growth_pct must be within 110..=400, not {0}")]
    Growth(u16),
    /// A count outside its range.
    #[error("{0} must be within {1}..={2}")]
    Range(&'static str, u8, u8),
}

impl HeartbeatConfig {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), HeartbeatConfigError> {
        use HeartbeatConfigError::*;
        for (name, v) in [
            ("foreground_interval_ms", self.foreground_interval_ms),
            ("safe_interval_ms", self.safe_interval_ms),
            ("min_interval_ms", self.min_interval_ms),
            ("pong_timeout_min_ms", self.pong_timeout_min_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("backoff_base_ms", self.backoff_base_ms),
            ("parallel_probes", u32::from(self.parallel_probes)),
            (
                "memory_capacity",
                self.memory_capacity.min(u32::MAX as usize) as u32,
            ),
        ] {
            if v == 0 {
                return Err(Zero(name));
            }
        }
        for (a, av, b, bv) in [
            (
                "min_interval_ms",
                self.min_interval_ms,
                "safe_interval_ms",
                self.safe_interval_ms,
            ),
            (
                "safe_interval_ms",
                self.safe_interval_ms,
                "max_interval_ms",
                self.max_interval_ms,
            ),
            (
                "pong_timeout_min_ms",
                self.pong_timeout_min_ms,
                "pong_timeout_max_ms",
                self.pong_timeout_max_ms,
            ),
            (
                "backoff_base_ms",
                self.backoff_base_ms,
                "backoff_cap_ms",
                self.backoff_cap_ms,
            ),
        ] {
            if av > bv {
                return Err(Order(a, b));
            }
        }
        if !(110..=400).contains(&self.growth_pct) {
            return Err(Growth(self.growth_pct));
        }
        for (name, v, lo, hi) in [
            ("parallel_probes", self.parallel_probes, 1, 32),
            ("fine_step_pct", self.fine_step_pct, 1, 8),
            ("fine_from_pct", self.fine_from_pct, 1, 100),
            ("probe_reach", self.probe_reach, 2, 20),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(Range(name, lo, hi));
            }
        }
        for (name, v) in [
            ("precision_pct", self.precision_pct),
            ("margin_pct", self.margin_pct),
        ] {
            if !(1..=50).contains(&v) {
                return Err(Percent(name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_are_named() {
        assert_eq!(HeartbeatConfig::default().validate(), Ok(()));
        let c = HeartbeatConfig {
            safe_interval_ms: 1,
            ..HeartbeatConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(HeartbeatConfigError::Order(
                "min_interval_ms",
                "safe_interval_ms"
            ))
        );
        let c = HeartbeatConfig {
            parallel_probes: 0,
            ..HeartbeatConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(HeartbeatConfigError::Zero("parallel_probes"))
        );
        let c = HeartbeatConfig {
            margin_pct: 60,
            ..HeartbeatConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(HeartbeatConfigError::Percent("margin_pct"))
        );
        let c = HeartbeatConfig {
            parallel_probes: 33,
            ..HeartbeatConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(HeartbeatConfigError::Range("parallel_probes", 1, 32))
        );
        let c = HeartbeatConfig {
            fine_step_pct: 9,
            ..HeartbeatConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(HeartbeatConfigError::Range("fine_step_pct", 1, 8))
        );
    }
}
