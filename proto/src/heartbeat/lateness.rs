//! How late the client's timers fire.
//!
//! A phone does not wake exactly when asked: alarms are batched (Android in Doze defers them to
//! maintenance windows about 9 minutes apart), and the CPU may be asleep. A ping that leaves
//! late makes the idle gap the NAT sees longer than the interval, so the heartbeat margin
//! includes the lateness observed recently.
//!
//! Batched alarms also make the firings *quantized*: they land on a grid of maintenance
//! windows. Once recent firings show such a grid, the client stops treating lateness as noise
//! and plans its pings onto the grid points instead (see [`Grid`]).

/// Firings closer than this to a grid point count as on it.
const GRID_TOLERANCE_MS: u64 = 250;

/// Smallest batching window recognised: below it lateness is noise, handled by the margin.
const MIN_GRID_MS: u64 = 10_000;

/// Firings needed (distinct times) before a grid is believed.
const MIN_GRID_FIRINGS: usize = 4;

/// A grid the client's timers fire on: every firing lands at `anchor + k × period_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// The batching window.
    pub period_ms: u32,
    /// One firing on the grid.
    pub anchor: u64,
}

impl Grid {
    /// The last grid point at or before `t`.
    pub fn point_at_or_before(&self, t: u64) -> u64 {
        let p = u64::from(self.period_ms.max(1));
        if t >= self.anchor {
            t - (t - self.anchor) % p
        } else {
            let back = (self.anchor - t).div_ceil(p) * p;
            self.anchor.saturating_sub(back)
        }
    }
}

/// The largest lateness among the last few timer firings, with headroom, and the grid the
/// firings land on, if they do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lateness {
    /// Recent samples in milliseconds, oldest overwritten first.
    samples: [u32; 16],
    /// Where the next sample goes.
    next: usize,
    /// Recent timer firings (any timer): when, and how late.
    firings: [(u64, u32); 16],
    /// Firings recorded so far (saturating at the ring's size).
    firings_len: usize,
    /// Where the next firing goes.
    firings_next: usize,
    /// The grid recognised in the firings; kept while every firing lands on it (so a steady
    /// ping every three windows does not turn it into a grid of three windows).
    grid: Option<Grid>,
}

impl Lateness {
    /// Records that a timer due at `due` fired at `now`.
    pub fn record(&mut self, due: u64, now: u64) {
        let late = u32::try_from(now.saturating_sub(due)).unwrap_or(u32::MAX);
        self.samples[self.next] = late;
        self.next = (self.next + 1) % self.samples.len();
    }

    /// The largest recent lateness (of the pings and of any other timer) plus a quarter, in
    /// milliseconds (0 before any sample). The next firing can be later than any of the last
    /// sixteen; the headroom covers most of that without a long memory.
    pub fn estimate_ms(&self) -> u32 {
        let max = self.max_ms();
        max.saturating_add(max / 4)
    }

    /// The largest recent lateness, without headroom.
    pub fn max_ms(&self) -> u32 {
        let firings = self.firings[..self.firings_len].iter().map(|(_, l)| *l);
        self.samples
            .iter()
            .copied()
            .chain(firings)
            .max()
            .unwrap_or(0)
    }

    /// Records that some timer due at `due` fired at `now` (every timer, not only pings: the
    /// more firings, the sooner a grid shows).
    pub fn record_firing(&mut self, due: u64, now: u64) {
        let late = u32::try_from(now.saturating_sub(due)).unwrap_or(u32::MAX);
        self.firings[self.firings_next] = (now, late);
        self.firings_next = (self.firings_next + 1) % self.firings.len();
        self.firings_len = (self.firings_len + 1).min(self.firings.len());
        self.grid = match self.grid {
            Some(g)
                if now.abs_diff(g.point_at_or_before(now + GRID_TOLERANCE_MS))
                    <= GRID_TOLERANCE_MS
                    && u64::from(late) <= u64::from(g.period_ms) + GRID_TOLERANCE_MS =>
            {
                Some(Grid { anchor: now, ..g })
            }
            _ => self.detect(),
        };
    }

    /// The grid recent firings land on, if any (see [`Lateness::record_firing`]).
    pub fn grid(&self) -> Option<Grid> {
        self.grid
    }

    /// A grid in the recent firings: at least four distinct firing times, all within a
    /// quarter second of multiples of one window of at least 10 s, and late by up to a quarter
    /// of that window or more (on-time timers are not batched, whatever their spacing) but
    /// never by more than the window (a timer deferred to the next point of a grid is late by
    /// less than its period: later firings mean a coarser or irregular batching).
    fn detect(&self) -> Option<Grid> {
        let mut times: Vec<u64> = self.firings[..self.firings_len]
            .iter()
            .map(|(t, _)| *t)
            .collect();
        times.sort_unstable();
        times.dedup_by(|a, b| a.abs_diff(*b) <= GRID_TOLERANCE_MS);
        if times.len() < MIN_GRID_FIRINGS {
            return None;
        }
        let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let period = gaps
            .iter()
            .copied()
            .reduce(|a, b| approx_gcd(a, b, GRID_TOLERANCE_MS))?;
        if period < MIN_GRID_MS {
            return None;
        }
        let late = self.firings[..self.firings_len]
            .iter()
            .map(|(_, l)| u64::from(*l))
            .max()
            .unwrap_or(0);
        let batched = late * 4 >= period && late <= period + GRID_TOLERANCE_MS;
        (batched && gaps.iter().all(|&g| on_grid(g, period))).then(|| Grid {
            period_ms: u32::try_from(period).unwrap_or(u32::MAX),
            anchor: *times.last().unwrap_or(&0),
        })
    }
}

/// Whether `gap` is within the tolerance of a multiple of `period` (> 0).
fn on_grid(gap: u64, period: u64) -> bool {
    let r = gap % period;
    r <= GRID_TOLERANCE_MS || period - r <= GRID_TOLERANCE_MS
}

/// The greatest common divisor of `a` and `b` up to `tol`: remainders within `tol` of zero or
/// of the divisor count as zero.
fn approx_gcd(a: u64, b: u64, tol: u64) -> u64 {
    let (mut a, mut b) = (a.max(b), a.min(b));
    while b > tol {
        let r = a % b;
        a = b;
        b = if b - r <= tol { 0 } else { r };
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_recent_maximum() {
        let mut l = Lateness::default();
        assert_eq!(l.estimate_ms(), 0);
        l.record(1_000, 1_400);
        l.record(2_000, 2_100);
        assert_eq!(l.estimate_ms(), 500);
        for i in 0..16 {
            l.record(i, i + 8);
        }
        assert_eq!(l.estimate_ms(), 10, "old samples age out");
        l.record(5, 1);
        assert_eq!(
            l.estimate_ms(),
            10,
            "an early call is not negative lateness"
        );
    }

    #[test]
    fn firings_on_a_batching_grid_are_recognised() {
        let w = 540_000;
        let phase = 123_456;
        let mut l = Lateness::default();
        // Timers due at assorted times fire at the next point of a 9-minute grid.
        for (i, k) in [1u64, 2, 4, 7].iter().enumerate() {
            assert_eq!(l.grid(), None, "too few firings after {i}");
            let fire = phase + k * w;
            l.record_firing(fire - 1_000 - (i as u64 * 97_000) % w, fire);
        }
        let g = l.grid().expect("a grid");
        assert_eq!(g.period_ms, 540_000);
        assert_eq!(g.point_at_or_before(phase + 20 * w + 5), phase + 20 * w);
        assert_eq!(g.point_at_or_before(phase + 3 * w - 1), phase + 2 * w);
        // Firings three windows apart keep it (they are on it)...
        for k in [10u64, 13, 16, 19, 22] {
            l.record_firing(phase + k * w - w / 2, phase + k * w);
        }
        assert_eq!(l.grid().map(|g| g.period_ms), Some(540_000));
        // ...one firing off it and it is gone (the finer grid that would fit every firing is
        // refused: the timers were later than its period).
        l.record_firing(phase + 23 * w, phase + 23 * w + 60_000);
        assert_eq!(l.grid(), None);
        // A timer deferred by more than a window: not this grid any more.
        let mut l = Lateness::default();
        for k in [1u64, 2, 4, 7] {
            l.record_firing(phase + k * w - w / 2, phase + k * w);
        }
        assert!(l.grid().is_some());
        l.record_firing(phase + 8 * w - w / 2, phase + 10 * w);
        assert_eq!(l.grid(), None);
    }

    #[test]
    fn punctual_or_jittery_timers_have_no_grid() {
        let mut on_time = Lateness::default();
        let mut jittery = Lateness::default();
        let mut rng = crate::heartbeat::Rng::new(7);
        for i in 1..=16u64 {
            // Regular pings, on time: evenly spaced, but not late.
            on_time.record_firing(i * 600_000, i * 600_000);
            let due = i * 290_000 + rng.below(50_000);
            jittery.record_firing(due, due + rng.below(1_001));
        }
        assert_eq!(on_time.grid(), None);
        assert_eq!(jittery.grid(), None);
    }
}
