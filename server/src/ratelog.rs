//! A log line at a bounded rate: at most one line per period for a repeating event, carrying
//! how many were suppressed since the last line. Pure: the caller passes `now`.
//!
//! A condition that repeats at machine speed (a failing accept, a full descriptor table) must
//! not become millions of log lines; it is counted by a counter and logged with
//! `RateLog::hit`: the first event is logged (`Some(0)`), later ones within the period are
//! only counted (`None`), and the next line says how many were suppressed (`Some(n)`); the
//! unit tests below show it.

/// See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct RateLog {
    /// Smallest time between two lines, in milliseconds.
    period_ms: u64,
    /// When the last line was allowed; `None` before the first.
    last: Option<u64>,
    /// Events not logged since the last line.
    suppressed: u64,
}

impl RateLog {
    /// At most one line per `period_ms`.
    pub fn new(period_ms: u64) -> RateLog {
        RateLog {
            period_ms,
            last: None,
            suppressed: 0,
        }
    }

    /// An event happened at `now`: `Some(suppressed)` when it should be logged (with the
    /// number of events suppressed since the last line), `None` when it is only counted.
    pub fn hit(&mut self, now: u64) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_sub(last) < self.period_ms => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_events_over_ten_seconds_make_three_lines() {
        // One event every 10 µs from 0 to 10 000 ms: lines at 0, 5 000 and 10 000 ms.
        let mut log = RateLog::new(5_000);
        let mut lines = Vec::new();
        for i in 0..1_000_001u64 {
            if let Some(s) = log.hit(i / 100) {
                lines.push(s);
            }
        }
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], 0);
        assert_eq!(lines.iter().sum::<u64>() + 3 + log.suppressed, 1_000_001);
    }

    #[test]
    fn a_clock_going_backwards_does_not_open_the_gate() {
        let mut log = RateLog::new(1_000);
        assert_eq!(log.hit(5_000), Some(0));
        assert_eq!(log.hit(4_000), None);
        assert_eq!(log.hit(6_000), Some(1));
    }
}
