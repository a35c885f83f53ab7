//! A token bucket: how many actions (connects, pushes, ...) are due now for a target rate.

/// Accumulates permission to act at `rate` per second.
#[derive(Clone, Debug)]
pub struct Bucket {
    /// Target actions per second; 0 or less never grants anything.
    rate: f64,
    /// Actions granted but not yet taken (fractional).
    tokens: f64,
    /// Most tokens held at once: a late loop catches up by at most this many actions.
    burst: f64,
    /// When `tokens` was last refilled, ns.
    last_ns: u64,
}

impl Bucket {
    /// A bucket starting empty at `now_ns`; it may catch up by 100 ms worth of actions.
    pub fn new(rate: f64, now_ns: u64) -> Bucket {
        Bucket {
            rate,
            tokens: 0.0,
            burst: (rate * 0.1).max(1.0),
            last_ns: now_ns,
        }
    }

    /// Whole actions due at `now_ns`, removed from the bucket.
    pub fn take(&mut self, now_ns: u64) -> u64 {
        if self.rate <= 0.0 {
            return 0;
        }
        let dt = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = now_ns.max(self.last_ns);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        let whole = self.tokens.floor();
        self.tokens -= whole;
        whole as u64
    }

    /// Nanoseconds from the last refill until the next whole action is due (`None`: never).
    pub fn next_in_ns(&self) -> Option<u64> {
        if self.rate <= 0.0 {
            return None;
        }
        Some((((1.0 - self.tokens).max(0.0) / self.rate) * 1e9) as u64)
    }

    /// The time of the last refill, ns.
    pub fn last_ns(&self) -> u64 {
        self.last_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_the_rate_over_time() {
        let mut b = Bucket::new(1000.0, 0);
        let mut total = 0;
        for ms in 1..=1000u64 {
            total += b.take(ms * 1_000_000);
        }
        assert!((999..=1000).contains(&total), "{total}");
    }

    #[test]
    fn late_loop_catches_up_only_by_the_burst() {
        let mut b = Bucket::new(1000.0, 0);
        assert_eq!(b.take(5_000_000_000), 100);
        assert_eq!(b.take(5_000_000_000), 0);
    }

    #[test]
    fn zero_rate_never_grants() {
        let mut b = Bucket::new(0.0, 0);
        assert_eq!(b.take(u64::MAX / 2), 0);
        assert_eq!(b.next_in_ns(), None);
    }

    #[test]
    fn slow_rate_waits_for_a_whole_token() {
        let mut b = Bucket::new(2.0, 0);
        assert_eq!(b.take(100_000_000), 0);
        let wait = b.next_in_ns().unwrap();
        assert!((390_000_000..=410_000_000).contains(&wait), "{wait}");
        assert_eq!(b.take(500_000_000), 1);
    }
}
