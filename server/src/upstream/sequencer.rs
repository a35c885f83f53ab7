//! Per-connection order for sinks that could otherwise reorder: at most one message of each
//! client connection in flight, the rest waiting in arrival order.
//!
//! The webhook and NATS sinks send many messages at once over several connections or
//! subscribers; two messages of one client sent concurrently could reach the backend in either
//! order. The sequencer holds a connection's later messages until its earlier one has its
//! result. Bounded: a connection has at most `upstream.max_in_flight_per_connection` messages
//! anywhere (its shard refuses more), and the whole sequencer at most `capacity` (a message
//! past it is given back to be refused `Overloaded`).

use std::collections::{HashMap, VecDeque};

use super::{ConnKey, UpstreamJob};

/// Messages waiting behind their connection's message in flight.
#[derive(Debug)]
pub struct Sequencer {
    /// Per connection with a message in flight: the ones waiting behind it, oldest first.
    waiting: HashMap<ConnKey, VecDeque<UpstreamJob>>,
    /// Messages held: in flight plus waiting.
    held: usize,
    /// Most messages held at once.
    capacity: usize,
}

impl Sequencer {
    /// An empty sequencer holding at most `capacity` messages.
    pub fn new(capacity: usize) -> Sequencer {
        Sequencer {
            waiting: HashMap::new(),
            held: 0,
            capacity,
        }
    }

    /// Takes a new message. `Ok(Some(job))`: send it now (its connection had nothing in
    /// flight). `Ok(None)`: it waits behind its connection's message in flight. `Err(job)`:
    /// the sequencer is full; refuse it.
    pub fn admit(&mut self, job: UpstreamJob) -> Result<Option<UpstreamJob>, UpstreamJob> {
        if self.held >= self.capacity {
            return Err(job);
        }
        self.held += 1;
        match self.waiting.entry(job.origin.conn) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                e.get_mut().push_back(job);
                Ok(None)
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(VecDeque::new());
                Ok(Some(job))
            }
        }
    }

    /// The message in flight for `conn` has its result: returns the connection's next
    /// message to send, if one waits.
    pub fn done(&mut self, conn: ConnKey) -> Option<UpstreamJob> {
        let std::collections::hash_map::Entry::Occupied(mut e) = self.waiting.entry(conn) else {
            return None;
        };
        self.held = self.held.saturating_sub(1);
        match e.get_mut().pop_front() {
            Some(next) => Some(next),
            None => {
                e.remove();
                None
            }
        }
    }

    /// Messages held (in flight and waiting).
    pub fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::core::ConnId;
    use crate::upstream::UpstreamOrigin;

    fn job(key: u32, id: u64) -> UpstreamJob {
        UpstreamJob {
            origin: UpstreamOrigin {
                conn: ConnKey {
                    shard: 0,
                    handle: ConnId { key, gen: 1 },
                },
                client_id: id,
            },
            user: "u".into(),
            device: "d".into(),
            session_id: 1,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn one_in_flight_per_connection_and_the_rest_in_order() {
        let mut s = Sequencer::new(10);
        assert_eq!(s.admit(job(1, 1)).unwrap().unwrap().origin.client_id, 1);
        assert!(s.admit(job(1, 2)).unwrap().is_none());
        assert!(s.admit(job(1, 3)).unwrap().is_none());
        // Another connection is not held up.
        assert_eq!(s.admit(job(2, 9)).unwrap().unwrap().origin.client_id, 9);
        let c1 = job(1, 0).origin.conn;
        assert_eq!(s.done(c1).unwrap().origin.client_id, 2);
        assert_eq!(s.done(c1).unwrap().origin.client_id, 3);
        assert!(s.done(c1).is_none());
        assert!(s.done(c1).is_none(), "a stray done changes nothing");
        assert_eq!(s.held(), 1);
        assert!(s.admit(job(1, 4)).unwrap().is_some(), "idle again");
    }

    #[test]
    fn full_gives_the_message_back() {
        let mut s = Sequencer::new(2);
        s.admit(job(1, 1)).unwrap();
        s.admit(job(1, 2)).unwrap();
        assert_eq!(s.admit(job(3, 3)).unwrap_err().origin.client_id, 3);
    }
}
