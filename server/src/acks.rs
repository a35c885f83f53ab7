//! Pushes waiting for a device's `PushAck` because their sender asked for an `Acked` result.
//!
//! Bounded in entries and in time: a push nobody acknowledges within the timeout is forgotten
//! (its sender already has its `Delivered` result), and when the table is full new pushes are
//! not tracked (counted), so a backend asking for acks cannot grow the shard's memory.

use std::collections::{HashMap, VecDeque};

use tether_proto::Millis;

use crate::mesh::Origin;

/// Push id → sender waiting for the first acknowledgement.
#[derive(Debug)]
pub struct AckTable {
    /// The waiting pushes.
    waiting: HashMap<u64, Origin>,
    /// (expiry, push id) in insertion order, which is expiry order.
    expiry: VecDeque<(Millis, u64)>,
    /// Most entries held at once.
    max: usize,
    /// How long an entry waits for its acknowledgement.
    timeout_ms: u64,
}

impl AckTable {
    /// An empty table holding at most `max` entries for `timeout_ms` each.
    pub fn new(max: usize, timeout_ms: u64) -> AckTable {
        AckTable {
            waiting: HashMap::new(),
            expiry: VecDeque::new(),
            max,
            timeout_ms,
        }
    }

    /// Tracks push `id` for `origin`; false when the table is full.
    pub fn insert(&mut self, id: u64, origin: Origin, now: Millis) -> bool {
        if self.waiting.len() >= self.max {
            return false;
        }
        self.waiting.insert(id, origin);
        self.expiry
            .push_back((now.saturating_add(self.timeout_ms), id));
        true
    }

    /// The sender waiting for push `id`, removed; `None` if none (or already acknowledged).
    pub fn take(&mut self, id: u64) -> Option<Origin> {
        self.waiting.remove(&id)
    }

    /// Forgets entries whose time ran out.
    pub fn expire(&mut self, now: Millis) {
        while let Some(&(at, id)) = self.expiry.front() {
            if at > now {
                break;
            }
            self.expiry.pop_front();
            self.waiting.remove(&id);
        }
        if self.waiting.is_empty() {
            self.expiry.clear();
        }
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}
