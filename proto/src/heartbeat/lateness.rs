//! How late the client's timers fire.
//!
//! A phone does not wake exactly when asked: alarms are batched (Android in Doze defers them to
//! maintenance windows about 9 minutes apart), and the CPU may be asleep. A ping that leaves
//! late makes the idle gap the NAT sees longer than the interval, so the heartbeat margin
//! includes the lateness observed recently.

/// The largest lateness among the last few timer firings, with headroom.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lateness {
    /// Recent samples in milliseconds, oldest overwritten first.
    samples: [u32; 16],
    /// Where the next sample goes.
    next: usize,
}

impl Lateness {
    /// Records that a timer due at `due` fired at `now`.
    pub fn record(&mut self, due: u64, now: u64) {
        let late = u32::try_from(now.saturating_sub(due)).unwrap_or(u32::MAX);
        self.samples[self.next] = late;
        self.next = (self.next + 1) % self.samples.len();
    }

    /// The largest recent lateness plus a quarter, in milliseconds (0 before any sample). The
    /// next firing can be later than any of the last sixteen; the headroom covers most of
    /// that without a long memory.
    pub fn estimate_ms(&self) -> u32 {
        let max = self.max_ms();
        max.saturating_add(max / 4)
    }

    /// The largest recent lateness, without headroom.
    pub fn max_ms(&self) -> u32 {
        self.samples.iter().copied().max().unwrap_or(0)
    }
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
}
