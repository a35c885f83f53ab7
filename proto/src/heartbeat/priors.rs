//! Server side: learned intervals reported by clients, aggregated per network into a prior.
//!
//! A client that converged sends `NetReport { learned_ms }`; the server files it under the
//! login's network key. A later client logging in with that key gets a `prior_ms` in `LoginOk`
//! and can verify it with a single probe round instead of learning from scratch.
//!
//! The table takes input from anyone with a token, so it is built not to be poisoned:
//! - values are clamped to the server's lease bounds;
//! - each reporter has one vote per network (a new report replaces its old one), and only the
//!   most recent `reports_per_network` votes count;
//! - the prior is a low quantile (default: the 25th percentile) of the votes, and none is given
//!   before `min_reporters` distinct reporters agree. To raise a network's prior an attacker
//!   must outvote three quarters of its recent reporters; lowering it only costs the clients an
//!   extra probe round;
//! - clients never trust a prior with their main connection: they probe it first.
//!
//! Memory is bounded: at most `capacity` networks (the least recently reported is dropped) and
//! `reports_per_network` votes each.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::network_id::NetworkId;
use crate::Millis;

/// Parameters of a [`PriorTable`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriorConfig {
    /// Networks kept.
    pub capacity: usize,
    /// Votes kept per network.
    pub reports_per_network: usize,
    /// Distinct reporters needed before a prior is given.
    pub min_reporters: usize,
    /// Which quantile of the votes is the prior, in percent (low = conservative).
    pub quantile_pct: u8,
    /// Votes older than this are ignored.
    pub max_age_ms: u64,
    /// Reported values are clamped to at least this (the server's minimum lease).
    pub min_ms: u32,
    /// ...and at most this (the server's maximum lease).
    pub max_ms: u32,
}

impl Default for PriorConfig {
    fn default() -> Self {
        PriorConfig {
            capacity: 4_096,
            reports_per_network: 16,
            min_reporters: 3,
            quantile_pct: 25,
            max_age_ms: 7 * 24 * 3_600_000,
            min_ms: 1_000,
            max_ms: 30 * 60_000,
        }
    }
}

/// One client's vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Vote {
    /// Who (a digest of the user id): one vote per reporter.
    reporter: u64,
    /// The clamped learned interval.
    learned_ms: u32,
    /// When it was filed.
    at: Millis,
}

/// The votes of one network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Network {
    /// At most `reports_per_network`, oldest first.
    votes: Vec<Vote>,
    /// Last time a vote was filed (eviction order).
    touched: Millis,
}

/// Priors per network, bounded and robust against poisoning.
#[derive(Clone, Debug)]
pub struct PriorTable {
    /// Parameters.
    cfg: PriorConfig,
    /// Votes per network.
    networks: HashMap<NetworkId, Network>,
}

/// A stable reporter id for a user id (one vote per user and network).
pub fn reporter_id(user: &str) -> u64 {
    NetworkId::of(user).map_or(0, |n| n.0)
}

impl PriorTable {
    /// An empty table.
    pub fn new(cfg: PriorConfig) -> Self {
        PriorTable {
            cfg,
            networks: HashMap::new(),
        }
    }

    /// Files `reporter`'s learned interval for `network`.
    pub fn report(&mut self, now: Millis, network: NetworkId, reporter: u64, learned_ms: u32) {
        let learned_ms = learned_ms.clamp(self.cfg.min_ms, self.cfg.max_ms.max(self.cfg.min_ms));
        if !self.networks.contains_key(&network) && self.networks.len() >= self.cfg.capacity {
            let oldest = self
                .networks
                .iter()
                .min_by_key(|(_, n)| n.touched)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.networks.remove(&k);
            }
        }
        if self.cfg.capacity == 0 {
            return;
        }
        let net = self.networks.entry(network).or_default();
        net.touched = now;
        net.votes.retain(|v| v.reporter != reporter);
        net.votes.push(Vote {
            reporter,
            learned_ms,
            at: now,
        });
        let excess = net.votes.len().saturating_sub(self.cfg.reports_per_network);
        net.votes.drain(..excess);
    }

    /// The prior for `network`, or 0 when too few recent reporters agree.
    pub fn prior(&self, now: Millis, network: Option<NetworkId>) -> u32 {
        let Some(net) = network.and_then(|n| self.networks.get(&n)) else {
            return 0;
        };
        let mut values: Vec<u32> = net
            .votes
            .iter()
            .filter(|v| now.saturating_sub(v.at) <= self.cfg.max_age_ms)
            .map(|v| v.learned_ms)
            .collect();
        if values.is_empty() || values.len() < self.cfg.min_reporters {
            return 0;
        }
        values.sort_unstable();
        let idx = (values.len() - 1) * usize::from(self.cfg.quantile_pct.min(100)) / 100;
        values[idx]
    }

    /// Networks held.
    pub fn len(&self) -> usize {
        self.networks.len()
    }

    /// Whether no network is held.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(i: u64) -> NetworkId {
        NetworkId(i + 1)
    }

    #[test]
    fn needs_enough_reporters_and_takes_a_low_quantile() {
        let mut t = PriorTable::new(PriorConfig::default());
        t.report(0, net(0), 1, 300_000);
        t.report(0, net(0), 2, 290_000);
        assert_eq!(t.prior(0, Some(net(0))), 0, "two reporters are not enough");
        // The same reporter again does not count twice.
        t.report(0, net(0), 2, 290_000);
        assert_eq!(t.prior(0, Some(net(0))), 0);
        t.report(0, net(0), 3, 310_000);
        t.report(0, net(0), 4, 305_000);
        assert_eq!(t.prior(0, Some(net(0))), 290_000);
        assert_eq!(t.prior(0, None), 0);
        assert_eq!(t.prior(0, Some(net(9))), 0);
        // Old votes expire.
        assert_eq!(t.prior(8 * 24 * 3_600_000, Some(net(0))), 0);
    }

    #[test]
    fn one_reporter_cannot_poison_and_values_are_clamped() {
        let mut t = PriorTable::new(PriorConfig::default());
        for r in 0..10 {
            t.report(0, net(0), r, 300_000);
        }
        // One reporter flooding: it keeps one vote.
        for _ in 0..1_000 {
            t.report(1, net(0), 99, u32::MAX);
        }
        assert_eq!(t.prior(1, Some(net(0))), 300_000);
        // Even a quarter of the recent votes from fresh identities does not move it up.
        for r in 100..104 {
            t.report(2, net(0), r, u32::MAX);
        }
        assert_eq!(t.prior(2, Some(net(0))), 300_000);
        // Clamped to the server's bounds.
        for r in 200..216 {
            t.report(3, net(1), r, u32::MAX);
        }
        assert_eq!(t.prior(3, Some(net(1))), 30 * 60_000);
    }

    #[test]
    fn memory_is_bounded() {
        let cfg = PriorConfig {
            capacity: 8,
            ..PriorConfig::default()
        };
        let mut t = PriorTable::new(cfg);
        for i in 0..100u64 {
            for r in 0..40 {
                t.report(i, net(i), r, 60_000);
            }
        }
        assert_eq!(t.len(), 8);
        assert!(
            t.prior(100, Some(net(99))) > 0,
            "the newest network is kept"
        );
        assert_eq!(t.prior(100, Some(net(0))), 0, "the oldest was evicted");
        assert!(t.networks.values().all(|n| n.votes.len() <= 16));
    }
}
