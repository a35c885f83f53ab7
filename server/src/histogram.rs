//! Latency histograms a shard keeps with plain integers and publishes like its counters.
//!
//! A shard records into a [`Histogram`] (an array of bucket counts, no atomics); the shard
//! driver copies it into a [`PublishedHistogram`] with the counters, and `/metrics` encodes the
//! copies of all shards as one Prometheus histogram family with a `shard` label.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, in microseconds (a last, unbounded bucket follows). From the
/// cost of one idle heartbeat (tens of µs) to a stalled shard (a second).
pub const BOUNDS_US: [u64; 15] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000,
];

/// Buckets including the unbounded last one.
const BUCKETS: usize = BOUNDS_US.len() + 1;

/// A shard's histogram: counts per bucket and the sum of what was recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// `counts[i]`: observations at most `BOUNDS_US[i]` and above the bound before it.
    counts: [u64; BUCKETS],
    /// Sum of the observations, microseconds.
    sum_us: u64,
}

impl Histogram {
    /// Records `n` observations of `us` microseconds each.
    #[inline]
    pub fn record(&mut self, us: u64, n: u64) {
        if n == 0 {
            return;
        }
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.counts[i] += n;
        self.sum_us = self.sum_us.saturating_add(us.saturating_mul(n));
    }

    /// Observations recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A [`Histogram`] as atomics, written by its shard and read by `/metrics`.
#[derive(Debug, Default)]
pub struct PublishedHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl PublishedHistogram {
    /// Copies `h` in.
    pub fn store(&self, h: &Histogram) {
        for (a, v) in self.counts.iter().zip(h.counts.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
        self.sum_us.store(h.sum_us, Ordering::Relaxed);
    }

    /// The published figures, in the shape `prometheus-client` encodes.
    pub fn snapshot(&self) -> Snapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let bounds = BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain(std::iter::once(f64::MAX));
        let buckets = bounds.zip(counts.iter().copied()).collect();
        Snapshot {
            sum: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count: counts.iter().sum(),
            buckets,
        }
    }
}

/// A [`PublishedHistogram`] read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Sum of the observations, seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
    /// Non-cumulative buckets as (upper bound in seconds, count); the last bound is `f64::MAX`
    /// (+Inf).
    pub buckets: Vec<(f64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_least_as_large() {
        let mut h = Histogram::default();
        h.record(0, 1);
        h.record(10, 2);
        h.record(11, 1);
        h.record(1_000_000, 1);
        h.record(5_000_000, 3);
        h.record(7, 0);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 2);
        assert_eq!(h.counts[2], 1);
        assert_eq!(h.counts[BOUNDS_US.len() - 1], 1);
        assert_eq!(h.counts[BOUNDS_US.len()], 3);
        assert_eq!(h.count(), 8);
        assert_eq!(h.sum_us, 20 + 11 + 1_000_000 + 15_000_000);
        let p = PublishedHistogram::default();
        p.store(&h);
        let Snapshot {
            sum,
            count,
            buckets,
        } = p.snapshot();
        assert_eq!(count, 8);
        assert!((sum - 16.000031).abs() < 1e-9);
        assert_eq!(buckets.len(), BOUNDS_US.len() + 1);
        assert_eq!(buckets[1], (10e-6, 2));
        assert_eq!(buckets.last().unwrap(), &(f64::MAX, 3));
    }
}
