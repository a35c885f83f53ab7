//! Round-trip time of the main connection, for the pong timeout of the dead-link check.
//!
//! The estimator is TCP's (RFC 6298): smoothed RTT and its variation; the timeout is
//! `srtt + 4 × rttvar`, clamped. A missed pong is then noticed within a few round trips, not
//! within a heartbeat interval.

/// Smoothed RTT and variation, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RttEstimator {
    /// Smoothed round-trip time; 0 until the first sample.
    srtt_ms: u32,
    /// Mean deviation of the samples.
    rttvar_ms: u32,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl RttEstimator {
    /// An estimator without samples.
    pub fn new() -> Self {
        RttEstimator {
            srtt_ms: 0,
            rttvar_ms: 0,
        }
    }

    /// Adds one measured round trip.
    pub fn sample(&mut self, rtt_ms: u32) {
        if self.srtt_ms == 0 {
            self.srtt_ms = rtt_ms.max(1);
            self.rttvar_ms = rtt_ms / 2;
            return;
        }
        let err = self.srtt_ms.abs_diff(rtt_ms);
        self.rttvar_ms = (3 * self.rttvar_ms + err) / 4;
        self.srtt_ms = ((7 * u64::from(self.srtt_ms) + u64::from(rtt_ms)) / 8).max(1) as u32;
    }

    /// The smoothed round trip, if any sample was taken.
    pub fn srtt_ms(&self) -> Option<u32> {
        (self.srtt_ms > 0).then_some(self.srtt_ms)
    }

    /// How long to wait for an answer: `srtt + 4 × rttvar` within `min..=max`, or `initial`
    /// before the first sample.
    pub fn timeout_ms(&self, min: u32, max: u32, initial: u32) -> u32 {
        if self.srtt_ms == 0 {
            return initial.clamp(min, max.max(min));
        }
        self.srtt_ms
            .saturating_add(self.rttvar_ms.saturating_mul(4))
            .clamp(min, max.max(min))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_follows_the_samples_within_bounds() {
        let mut e = RttEstimator::new();
        assert_eq!(e.timeout_ms(1_000, 10_000, 5_000), 5_000);
        for _ in 0..20 {
            e.sample(100);
        }
        assert_eq!(e.srtt_ms(), Some(100));
        assert_eq!(e.timeout_ms(1_000, 10_000, 5_000), 1_000);
        for _ in 0..20 {
            e.sample(3_000);
        }
        let t = e.timeout_ms(1_000, 10_000, 5_000);
        assert!((3_000..=10_000).contains(&t), "{t}");
    }
}
