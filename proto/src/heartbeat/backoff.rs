//! Reconnect backoff with decorrelated jitter.
//!
//! Each delay is random in `base..3 × previous`, capped. Unlike plain exponential backoff with
//! full jitter, consecutive delays are not synchronised across clients that failed at the same
//! moment (a server restart), and unlike fixed steps they grow quickly when the server stays
//! down.

use super::rng::Rng;

/// Decorrelated-jitter backoff state of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Smallest delay, and where the sequence restarts after [`Backoff::reset`].
    base_ms: u64,
    /// Largest delay.
    cap_ms: u64,
    /// The previous delay; the next one is drawn below three times it.
    prev_ms: u64,
}

impl Backoff {
    /// Backoff between `base_ms` and `cap_ms`.
    pub fn new(base_ms: u64, cap_ms: u64) -> Self {
        let base_ms = base_ms.max(1);
        Backoff {
            base_ms,
            cap_ms: cap_ms.max(base_ms),
            prev_ms: base_ms,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self, rng: &mut Rng) -> u64 {
        let hi = self.prev_ms.saturating_mul(3).max(self.base_ms + 1);
        let d = rng.between(self.base_ms, hi).min(self.cap_ms);
        self.prev_ms = d;
        d
    }

    /// Starts over from the base delay (after a connection succeeded).
    pub fn reset(&mut self) {
        self.prev_ms = self.base_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_within_bounds_and_reset() {
        let mut rng = Rng::new(3);
        let mut b = Backoff::new(1_000, 60_000);
        let delays: Vec<u64> = (0..30).map(|_| b.next_delay(&mut rng)).collect();
        assert!(delays.iter().all(|d| (1_000..=60_000).contains(d)));
        assert!(delays.iter().any(|d| *d > 10_000), "grows: {delays:?}");
        assert!(
            delays.iter().filter(|d| **d == 60_000).count() < 30,
            "jittered at the cap"
        );
        b.reset();
        assert!(b.next_delay(&mut rng) < 3_000);
        // Two clients failing together drift apart.
        let (mut r1, mut r2) = (Rng::new(1), Rng::new(2));
        let (mut b1, mut b2) = (Backoff::new(1_000, 60_000), Backoff::new(1_000, 60_000));
        let same = (0..10)
            .filter(|_| b1.next_delay(&mut r1) == b2.next_delay(&mut r2))
            .count();
        assert!(same < 3);
    }
}
