//! What the client learned, per network.
//!
//! A phone moves between a few networks (home Wi-Fi, office Wi-Fi, its carrier), each behind a
//! different NAT. Relearning every time costs probes and time, so the learned bounds are kept
//! per network key (supplied by the app: an SSID hash, a carrier id). The table is bounded:
//! the least recently used network is forgotten first. It is serde-serialisable so an app can
//! persist it across restarts.

use serde::{Deserialize, Serialize};

/// What is known about one network's idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    /// Largest idle gap verified to survive, in ms (0: none).
    pub verified_ms: u32,
    /// Smallest idle gap seen to fail, in ms (0: none).
    pub failed_ms: u32,
}

/// One remembered network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// The app's key for the network.
    key: String,
    /// What was learned there.
    learned: Learned,
    /// Value of [`NetMemory::clock`] at the last use; the smallest is evicted first. A logical
    /// counter, not a time, so it survives being persisted and reloaded.
    used: u64,
}

/// Learned bounds per network key, at most `capacity` networks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetMemory {
    /// How many networks are kept.
    capacity: usize,
    /// Counts uses; orders entries by recency.
    clock: u64,
    /// The networks, in no particular order (a linear scan over a few dozen is cheapest).
    entries: Vec<Entry>,
}

/// Default number of networks remembered (Mars keeps 20).
pub const DEFAULT_MEMORY_CAPACITY: usize = 32;

impl Default for NetMemory {
    fn default() -> Self {
        Self::new(DEFAULT_MEMORY_CAPACITY)
    }
}

impl NetMemory {
    /// An empty memory for at most `capacity` networks (at least one).
    pub fn new(capacity: usize) -> Self {
        NetMemory {
            capacity: capacity.max(1),
            clock: 0,
            entries: Vec::new(),
        }
    }

    /// What was learned on `key`, marking it as recently used.
    pub fn get(&mut self, key: &str) -> Option<Learned> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.iter_mut().find(|e| e.key == key).map(|e| {
            e.used = clock;
            e.learned
        })
    }

    /// Stores what was learned on `key`, evicting the least recently used network when full.
    pub fn put(&mut self, key: &str, learned: Learned) {
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.key == key) {
            e.learned = learned;
            e.used = self.clock;
            return;
        }
        self.trim(self.capacity - 1);
        self.entries.push(Entry {
            key: key.to_owned(),
            learned,
            used: self.clock,
        });
    }

    /// Forgets `key`.
    pub fn forget(&mut self, key: &str) {
        self.entries.retain(|e| e.key != key);
    }

    /// Number of networks remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Restores the capacity bound after deserialising data that may exceed it (a file edited
    /// by hand, or written with a larger capacity).
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self.trim(self.capacity);
        self
    }

    /// Evicts least recently used entries until at most `keep` remain.
    fn trim(&mut self, keep: usize) {
        while self.entries.len() > keep {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
                .unwrap_or(0);
            self.entries.swap_remove(oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: u32) -> Learned {
        Learned {
            verified_ms: v,
            failed_ms: 0,
        }
    }

    #[test]
    fn bounded_least_recently_used_and_serialisable() {
        let mut m = NetMemory::new(2);
        m.put("a", l(1));
        m.put("b", l(2));
        assert_eq!(m.get("a"), Some(l(1)));
        m.put("c", l(3)); // evicts b, the least recently used
        assert_eq!(m.get("b"), None);
        assert_eq!(m.get("a"), Some(l(1)));
        assert_eq!(m.get("c"), Some(l(3)));
        m.put("c", l(4));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("c"), Some(l(4)));

        let json = serde_json::to_string(&m).unwrap();
        let back: NetMemory = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let mut small = back.with_capacity(1);
        assert_eq!(small.len(), 1);
        assert_eq!(small.get("c"), Some(l(4)), "the most recent survives");
        small.forget("c");
        assert!(small.is_empty());
    }
}
