//! The learner: what idle gap does this network's path survive?
//!
//! It keeps two bounds on the NAT idle timeout: the largest gap *verified* to survive and the
//! smallest gap seen to *fail*. Evidence comes from probe connections (a delayed byte after a
//! chosen silence) and from the main connection's own pings. Probes are pipelined: the client
//! asks [`Learner::next_probe`] whenever a slot is free. While no failure is known the delays
//! come from a fixed grid (×1.5 steps from the safe interval, then 7 % steps over the top
//! third of the range, where a probe lasts longest and a second stage would cost most); once a
//! failure is known, they split the open interval into equal parts (a k-ary bisection). The
//! main connection always runs below the verified gap, so learning never risks it.
//!
//! Evidence that contradicts the bounds wins: a failure at or below the verified gap means the
//! network's timeout dropped, so the verified gap is forgotten; a success at or above the failed
//! gap means it grew.

use super::config::HeartbeatConfig;
use super::memory::Learned;

/// Probes in flight at once between the bounds once a failure is known: each one that ends
/// is replaced by one in the widest gap left, so four split the interval about fivefold per
/// probe duration, as many as a phone needs.
const NARROWING_PROBES: usize = 4;

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

    /// The delay of the next probe to start now, given the delays of the probes in flight;
    /// `None` when no probe is worth starting (converged, or waiting for those in flight).
    ///
    /// Probes are pipelined: the client asks again whenever one ends, up to
    /// `parallel_probes` at once. `target` is a gap worth verifying even when converged (the
    /// next whole multiple of the alarm-batching window): it goes first if still open.
    pub fn next_probe(
        &self,
        cfg: &HeartbeatConfig,
        max_ms: u32,
        in_flight: &[u32],
        target: Option<u32>,
    ) -> Option<u32> {
        let lower = if self.verified > 0 {
            self.verified
        } else {
            self.floor_ms(cfg)
        };
        let open = |d: u32| {
            d > lower
                && d <= max_ms
                && (self.failed == 0 || d < self.failed)
                && !in_flight.contains(&d)
        };
        if let Some(t) = target.filter(|&t| open(t)) {
            return Some(t);
        }
        if self.is_converged(cfg, max_ms) {
            return None;
        }
        if self.failed == 0 && self.hint > 0 {
            // A prior: probe around it first (0.8×, 0.9×, 1×, 1.1×) and nothing else while
            // those run, so an accurate prior costs four probes.
            let around: Vec<u32> = [80u64, 90, 100, 110]
                .iter()
                .map(|pct| (u64::from(self.hint) * pct / 100).min(u64::from(u32::MAX)) as u32)
                .collect();
            if let Some(&d) = around.iter().find(|&&d| open(d)) {
                return Some(d);
            }
            if in_flight.iter().any(|d| around.contains(d)) {
                return None;
            }
        }
        if self.failed != 0 {
            // Split the widest gap left between the bounds and the probes in flight into as
            // many equal parts as there are free slots and take the highest point: started
            // together, the probes divide the interval evenly (a k-ary search); one at a time,
            // each halves the widest gap.
            let mut points: Vec<u32> = in_flight
                .iter()
                .copied()
                .filter(|&d| d > lower && d < self.failed)
                .collect();
            let free = NARROWING_PROBES
                .checked_sub(points.len())
                .filter(|&n| n > 0)?;
            points.push(lower);
            points.push(self.failed);
            points.sort_unstable();
            let (a, b) = points
                .windows(2)
                .map(|w| (w[0], w[1]))
                .max_by_key(|(a, b)| b - a)?;
            let fine =
                u64::from(b - a) * 100 <= u64::from(self.failed) * u64::from(cfg.precision_pct);
            let d = b - (u64::from(b - a) / (free as u64 + 1)) as u32;
            return (!fine && open(d)).then_some(d);
        }
        let reach = u64::from(lower) * u64::from(cfg.probe_reach);
        probe_grid(cfg, max_ms)
            .into_iter()
            .find(|&d| open(d) && u64::from(d) <= reach)
    }

    /// The probe delays of one round without pipelining: what [`Learner::next_probe`] would
    /// start one after another with nothing resolved, ascending; empty when converged.
    pub fn plan(&self, cfg: &HeartbeatConfig, max_ms: u32) -> Vec<u32> {
        let mut round = Vec::new();
        while round.len() < usize::from(cfg.parallel_probes.max(1)) {
            match self.next_probe(cfg, max_ms, &round, None) {
                Some(d) => round.push(d),
                None => break,
            }
        }
        round.sort_unstable();
        round
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

/// The probe delays tried while no failure is known, ascending: steps of `growth_pct` from the
/// safe interval up to the fine range, then steps of `fine_step_pct` counted down from the
/// largest delay. The grid is fixed, so probes started at different times never probe nearly
/// the same gap twice.
fn probe_grid(cfg: &HeartbeatConfig, max_ms: u32) -> Vec<u32> {
    let max = u64::from(max_ms);
    let fine_from = max * u64::from(cfg.fine_from_pct.clamp(1, 100)) / 100;
    let step = 100 + u64::from(cfg.fine_step_pct.max(1));
    let mut fine = Vec::new();
    let mut d = max;
    while d >= fine_from.max(1) {
        fine.push(d as u32);
        d = d * 100 / step;
    }
    // The coarse steps stop a fine step below the fine range.
    let coarse_below = fine.last().map_or(max, |&lo| u64::from(lo) * 100 / step);
    let mut grid = Vec::new();
    let mut d = u64::from(cfg.safe_interval_ms.max(cfg.min_interval_ms).max(1));
    loop {
        d = d * u64::from(cfg.growth_pct.max(101)) / 100;
        if d >= coarse_below {
            break;
        }
        grid.push(d as u32);
    }
    grid.extend(fine.into_iter().rev());
    grid
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
    fn the_fine_range_puts_a_probe_within_the_band_of_every_timeout() {
        // An interval of 0.9 T needs a verified gap of about 0.92 T: in the fine range (the
        // top two thirds by default) some grid delay lies in [0.92 T, T) whatever T is.
        let cfg = HeartbeatConfig::default();
        let grid = probe_grid(&cfg, MAX);
        assert!(grid.windows(2).all(|w| w[0] < w[1]), "{grid:?}");
        assert!(grid.len() <= 30, "{} delays", grid.len());
        for t in (MAX / 3 + MAX / 25..MAX).step_by(1_000) {
            assert!(
                grid.iter()
                    .any(|&d| u64::from(d) * 100 >= u64::from(t) * 92 && d < t),
                "no probe for T = {t}: {grid:?}"
            );
        }
        // Below it, ×1.5 from the safe interval.
        assert_eq!(&grid[..4], &[67_500, 101_250, 151_875, 227_812]);
    }

    #[test]
    fn probes_are_placed_by_what_is_known_and_what_is_in_flight() {
        let cfg = HeartbeatConfig::default();
        let mut l = Learner::new();
        l.record(45_000, true);
        // Nothing failed: the grid, smallest first, up to six times the verified gap.
        assert_eq!(
            l.next_probe(&cfg, MAX, &[67_500, 101_250], None),
            Some(151_875)
        );
        assert_eq!(l.plan(&cfg, MAX), vec![67_500, 101_250, 151_875, 227_812]);
        // A failure: free slots divide the widest gap evenly, highest point first.
        l.record(300_000, false);
        assert_eq!(l.next_probe(&cfg, MAX, &[], None), Some(249_000));
        assert_eq!(l.plan(&cfg, MAX), vec![96_000, 147_000, 198_000, 249_000]);
        // One slot free among three in flight: halve the widest gap left.
        assert_eq!(
            l.next_probe(&cfg, MAX, &[147_000, 198_000, 249_000], None),
            Some(96_000)
        );
        assert_eq!(
            l.next_probe(&cfg, MAX, &[96_000, 147_000, 198_000, 249_000], None),
            None,
            "four in flight between the bounds are enough"
        );
        // A target (one more batching window) goes first while it is open.
        assert_eq!(l.next_probe(&cfg, MAX, &[], Some(280_000)), Some(280_000));
        assert_eq!(l.next_probe(&cfg, MAX, &[], Some(310_000)), Some(249_000));
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
