//! Pushes waiting for a device's `PushAck` because their sender asked for an `Acked` result.
//!
//! Bounded in entries and in time: a push nobody acknowledges within the timeout is forgotten
//! (its sender already has its `Delivered` result), and when the table is full new pushes are
//! not tracked (counted), so a backend asking for acks cannot grow the shard's memory.

use std::collections::{HashMap, VecDeque};

use tether_proto::Millis;

use super::msg::Origin;
use super::ConnId;

/// A push waiting for its first acknowledgement.
#[derive(Debug)]
struct Waiting {
    /// Who gets the `Acked` result.
    origin: Origin,
    /// The connections the push was written to: only they may acknowledge it.
    recipients: Box<[ConnId]>,
}

/// What an acknowledgement turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum AckCheck {
    /// The first acknowledgement of a tracked push, from one of its recipients.
    First(Origin),
    /// A tracked push acknowledged by a connection it was not written to.
    NotRecipient,
    /// Not tracked (no ack was asked for, already acknowledged, or expired).
    Untracked,
}

/// Push id → sender waiting for the first acknowledgement.
#[derive(Debug)]
pub struct AckTable {
    /// The waiting pushes.
    waiting: HashMap<u64, Waiting>,
    /// (expiry, push id) in insertion order, which is expiry order. May hold ids already
    /// acknowledged; compacted when it reaches twice `max`, so it stays bounded too.
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

    /// Tracks push `id`, written to `recipients`, for `origin`; false when the table is full.
    pub fn insert(&mut self, id: u64, origin: Origin, recipients: &[ConnId], now: Millis) -> bool {
        if self.waiting.len() >= self.max {
            return false;
        }
        if self.expiry.len() >= self.max.saturating_mul(2).max(16) {
            let waiting = &self.waiting;
            self.expiry.retain(|(_, id)| waiting.contains_key(id));
        }
        self.waiting.insert(
            id,
            Waiting {
                origin,
                recipients: recipients.into(),
            },
        );
        self.expiry
            .push_back((now.saturating_add(self.timeout_ms), id));
        true
    }

    /// Checks an acknowledgement of push `id` by connection `from`; the first one from a
    /// recipient removes the entry.
    pub fn take(&mut self, id: u64, from: ConnId) -> AckCheck {
        match self.waiting.get(&id) {
            None => AckCheck::Untracked,
            Some(w) if !w.recipients.contains(&from) => AckCheck::NotRecipient,
            Some(_) => match self.waiting.remove(&id) {
                Some(w) => AckCheck::First(w.origin),
                None => AckCheck::Untracked,
            },
        }
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

    /// Length of the expiry queue (bounded by twice the table's size).
    #[cfg(test)]
    fn queue_len(&self) -> usize {
        self.expiry.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::msg::{ConnKey, ConnOrigin, Sent};

    fn origin() -> Origin {
        Origin::Conn(ConnOrigin {
            conn: ConnKey {
                shard: 0,
                handle: ConnId { key: 1, gen: 1 },
            },
            sent: Sent::BackendPush,
            id: 9,
        })
    }

    #[test]
    fn only_a_recipient_acknowledges() {
        let mut t = AckTable::new(8, 1000);
        let a = ConnId { key: 1, gen: 1 };
        let b = ConnId { key: 2, gen: 1 };
        assert!(t.insert(7, origin(), &[a], 0));
        assert_eq!(t.take(7, b), AckCheck::NotRecipient);
        assert_eq!(t.take(7, a), AckCheck::First(origin()));
        assert_eq!(t.take(7, a), AckCheck::Untracked);
    }

    #[test]
    fn expiry_queue_stays_bounded_when_acks_arrive() {
        let mut t = AckTable::new(4, 1_000_000);
        let a = ConnId { key: 1, gen: 1 };
        for id in 0..10_000 {
            assert!(t.insert(id, origin(), &[a], 0));
            assert_eq!(t.take(id, a), AckCheck::First(origin()));
        }
        assert!(t.queue_len() <= 16, "queue grew to {}", t.queue_len());
    }
}
