//! The learner: what idle gap does this network's path survive?
//!
//! It keeps two bounds on the NAT idle timeout: the largest gap *verified* to survive and the
//! smallest gap seen to *fail*. Evidence comes from probe connections (a delayed byte after a
//! chosen silence) and from the main connection's own pings. While no failure is known the
//! probe delays grow geometrically (×1.5 per probe by default: with four parallel probes a
//! round covers 5×, which finds the first failure sooner than doubling one probe at a time);
//! once a failure is known, they split the open interval into equal parts (a k-ary bisection,
//! k = parallel probes). The main connection always runs below the verified gap,
//! so learning never risks it.
//!
//! Evidence that contradicts the bounds wins: a failure at or below the verified gap means the
//! network's timeout dropped, so the verified gap is forgotten; a success at or above the failed
//! gap means it grew.

use super::config::HeartbeatConfig;
use super::memory::Learned;

/// Bounds on one network's idle timeout and the interval they allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learner {
    /// Largest idle gap verified to survive, ms (0: none).
    verified: u32,
    /// Smallest idle gap seen to fail, ms (0: none).
    failed: u32,
    /// An unverified suggestion (a server prior), tried first by the probes; 0: none.
    hint: u32,
}

impl Learner {
    /// Nothing known.
    pub fn new() -> Self {
        Learner {
            verified: 0,
            failed: 0,
            hint: 0,
        }
    }

    /// Starts from what was remembered for a network.
    pub fn from_learned(learned: Learned) -> Self {
        let mut l = Learner::new();
        l.verified = learned.verified_ms;
        l.failed = learned.failed_ms;
        if l.failed != 0 && l.failed <= l.verified {
            l.failed = 0;
        }
        l
    }

    /// The bounds, for memory.
    pub fn learned(&self) -> Learned {
        Learned {
            verified_ms: self.verified,
            failed_ms: self.failed,
        }
    }

    /// Largest verified gap (0: none).
    pub fn verified_ms(&self) -> u32 {
        self.verified
    }

    /// Smallest failed gap (0: none).
    pub fn failed_ms(&self) -> u32 {
        self.failed
    }

    /// Suggests where the timeout may be (a server prior); only probes act on it.
    pub fn set_hint(&mut self, ms: u32) {
        self.hint = ms;
    }

    /// Records that an idle gap of `gap_ms` survived (`ok`) or killed the flow.
    pub fn record(&mut self, gap_ms: u32, ok: bool) {
        if gap_ms == 0 {
            return;
        }
        if ok {
            if gap_ms > self.verified {
                self.verified = gap_ms;
            }
            if self.failed != 0 && self.verified >= self.failed {
                self.failed = 0; // the timeout grew
            }
        } else {
            if self.failed == 0 || gap_ms < self.failed {
                self.failed = gap_ms;
            }
            if self.verified >= self.failed {
                self.verified = 0; // the timeout dropped
            }
        }
    }

    /// Forgets the failed bound so the probes look for a larger timeout again.
    pub fn forget_failed(&mut self) {
        self.failed = 0;
    }

    /// Whether the bounds are as tight as `cfg` asks (or cannot get tighter under `max_ms`).
    pub fn is_converged(&self, cfg: &HeartbeatConfig, max_ms: u32) -> bool {
        if self.verified >= max_ms {
            return true;
        }
        if self.failed == 0 {
            return false;
        }
        if self.failed <= cfg.min_interval_ms {
            return true; // nothing to learn: even the floor fails
        }
        self.verified > 0
            && u64::from(self.failed - self.verified) * 100
                <= u64::from(self.failed) * u64::from(cfg.precision_pct)
    }

    /// The gap the main connection tests by itself while nothing is verified.
    fn floor_ms(&self, cfg: &HeartbeatConfig) -> u32 {
        let mut base = cfg.safe_interval_ms;
        if self.failed != 0 {
            base = base.min(self.failed / 2);
        }
        base.max(cfg.min_interval_ms)
    }

    /// The probe delays of the next round, ascending; empty when converged.
    pub fn plan(&self, cfg: &HeartbeatConfig, max_ms: u32) -> Vec<u32> {
        if self.is_converged(cfg, max_ms) {
            return Vec::new();
        }
        let k = u32::from(cfg.parallel_probes.max(1));
        let lower = if self.verified > 0 {
            self.verified
        } else {
            self.floor_ms(cfg)
        };
        let mut points: Vec<u32> = if self.failed == 0 {
            if self.verified == 0 && self.hint > 0 {
                // Around the prior: 0.8× .. 1.1×.
                (0..k)
                    .map(|i| {
                        let pct = if k == 1 { 95 } else { 80 + 30 * i / (k - 1) };
                        (u64::from(self.hint) * u64::from(pct) / 100) as u32
                    })
                    .collect()
            } else {
                let mut p = u64::from(lower);
                (1..=k)
                    .map(|_| {
                        p = p * u64::from(cfg.growth_pct) / 100;
                        p.min(u64::from(max_ms)) as u32
                    })
                    .collect()
            }
        } else {
            let span = u64::from(self.failed.saturating_sub(lower));
            (1..=k)
                .map(|i| lower + (span * u64::from(i) / u64::from(k + 1)) as u32)
                .collect()
        };
        points.retain(|&p| p > lower && p <= max_ms && (self.failed == 0 || p < self.failed));
        points.sort_unstable();
        points.dedup();
        points
    }

    /// The main connection's background interval: below the verified gap by the margin and the
    /// observed timer lateness, or the safe interval while nothing is verified.
    pub fn main_interval_ms(&self, cfg: &HeartbeatConfig, lateness_ms: u32, max_ms: u32) -> u32 {
        let base = if self.verified > 0 {
            let v = self.verified.min(max_ms);
            let margin = (u64::from(v) * u64::from(cfg.margin_pct) / 100) as u32;
            v.saturating_sub(margin.max(cfg.min_margin_ms))
        } else {
            self.floor_ms(cfg).min(max_ms)
        };
        base.saturating_sub(lateness_ms).max(cfg.min_interval_ms)
    }
}

impl Default for Learner {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 1_800_000;

    /// Runs rounds against a fixed timeout `t`; returns the learner and the rounds used.
    fn learn(t: u32) -> (Learner, usize) {
        let cfg = HeartbeatConfig::default();
        let mut l = Learner::new();
        // The main connection verifies the safe interval by itself.
        l.record(cfg.safe_interval_ms.min(t - 1), cfg.safe_interval_ms < t);
        let mut rounds = 0;
        loop {
            let plan = l.plan(&cfg, MAX);
            if plan.is_empty() {
                return (l, rounds);
            }
            rounds += 1;
            assert!(rounds < 20, "does not converge for {t}: {l:?}");
            for p in plan {
                l.record(p, p < t);
            }
        }
    }

    #[test]
    fn converges_close_below_the_timeout() {
        let cfg = HeartbeatConfig::default();
        for t in [60_000, 180_000, 300_000, 600_000, 900_000, 1_680_000] {
            let (l, rounds) = learn(t);
            assert!(l.verified_ms() < t);
            assert!(l.verified_ms() as f64 >= 0.95 * t as f64, "{t}: {l:?}");
            let interval = l.main_interval_ms(&cfg, 0, MAX);
            assert!(interval as f64 >= 0.92 * t as f64, "{t}: {interval}");
            assert!(rounds <= 6, "{t}: {rounds} rounds");
        }
    }

    #[test]
    fn contradicting_evidence_resets_the_other_bound() {
        let mut l = Learner::from_learned(Learned {
            verified_ms: 800_000,
            failed_ms: 820_000,
        });
        // The timeout dropped: a failure below the verified gap.
        l.record(780_000, false);
        assert_eq!((l.verified_ms(), l.failed_ms()), (0, 780_000));
        let cfg = HeartbeatConfig::default();
        assert_eq!(l.main_interval_ms(&cfg, 0, MAX), cfg.safe_interval_ms);
        // The timeout grew.
        l.record(790_000, true);
        assert_eq!((l.verified_ms(), l.failed_ms()), (790_000, 0));
    }

    #[test]
    fn the_interval_shrinks_when_even_the_safe_interval_fails() {
        let cfg = HeartbeatConfig::default();
        let mut l = Learner::new();
        l.record(45_000, false);
        assert_eq!(l.main_interval_ms(&cfg, 0, MAX), 22_500);
        l.record(20_000, false);
        assert_eq!(l.main_interval_ms(&cfg, 0, MAX), 10_000);
        l.record(6_000, false);
        assert_eq!(l.main_interval_ms(&cfg, 0, MAX), cfg.min_interval_ms);
        assert!(
            !l.is_converged(&cfg, MAX),
            "gaps between the floor and 6 s remain"
        );
        l.record(cfg.min_interval_ms, false);
        assert!(
            l.is_converged(&cfg, MAX),
            "even the floor fails: nothing left to learn"
        );
        assert!(l.plan(&cfg, MAX).is_empty());
    }

    #[test]
    fn a_hint_is_probed_around_and_lateness_widens_the_margin() {
        let cfg = HeartbeatConfig::default();
        let mut l = Learner::new();
        l.set_hint(600_000);
        assert_eq!(l.plan(&cfg, MAX), vec![480_000, 540_000, 600_000, 660_000]);
        l.record(570_000, true);
        assert_eq!(l.main_interval_ms(&cfg, 0, MAX), 570_000 - 11_400);
        assert_eq!(
            l.main_interval_ms(&cfg, 60_000, MAX),
            570_000 - 11_400 - 60_000
        );
        // The server's maximum lease caps everything.
        assert_eq!(l.main_interval_ms(&cfg, 0, 300_000), 300_000 - 6_000);
    }
}
