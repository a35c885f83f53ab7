//! One simulated client (or backend) connection: a few words of state, kept in a flat vector
//! so 15,000 of them fit in well under a megabyte.

use std::os::fd::RawFd;

use bytes::BytesMut;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No socket.
    Free,
    /// `connect()` issued, waiting for the socket to become writable.
    Connecting,
    /// Login sent, waiting for LoginOk.
    LoggingIn,
    /// Logged in: heartbeating, receiving pushes.
    Ready,
}

/// Flag: this slot's first attempt has ended (logged in or failed); counted once for the ramp.
pub const SETTLED: u8 = 0x01;
/// Flag: this attempt replaces a connection closed on purpose (churn) or lost (`--reconnect`).
pub const RECONNECT: u8 = 0x02;

/// State of one connection slot.
#[derive(Debug)]
pub struct Conn {
    /// The socket, -1 when [`State::Free`].
    pub fd: RawFd,
    /// Bumped every time the slot gets a new socket, so stale timers and events are ignored.
    pub gen: u32,
    /// Life stage.
    pub state: State,
    /// [`SETTLED`], [`RECONNECT`].
    pub flags: u8,
    /// When the current stage began (connect or login sent), ns; the base of stage latencies.
    pub since_ns: u64,
    /// When the connection's first connect() was issued, ns; the base of reconnect latency.
    pub attempt_ns: u64,
    /// When the oldest unanswered Ping was sent, ns; 0 when none is outstanding. Pongs come
    /// back in order, so the next Pong answers this one.
    pub ping_sent_ns: u64,
    /// When the second unanswered Ping was sent, ns; 0 when fewer than two are outstanding
    /// (or the one after the oldest was not timed).
    pub ping_next_ns: u64,
    /// Pings sent and not yet answered (saturating).
    pub pings_out: u8,
    /// The server shard holding this connection (from its LoginOk session id), so push
    /// latencies can be split into same-shard and cross-shard; `UNKNOWN_SHARD` before login.
    pub shard: u8,
    /// Bytes of an incomplete frame received so far; `None` (no allocation) nearly always.
    pub partial: Option<Box<BytesMut>>,
    /// Bytes the socket did not take yet; `None` nearly always.
    pub pending: Option<Box<Vec<u8>>>,
    /// Attempts since the connection was last logged in (`--reconnect` back-off).
    pub retries: u8,
}

/// Which Ping a Pong answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PongMatch {
    /// The oldest outstanding Ping, sent at this time (ns).
    Timed(u64),
    /// An outstanding Ping whose send time was not kept (three or more were outstanding).
    Untimed,
    /// No Ping was outstanding.
    Unexpected,
}

impl Conn {
    /// Records a Ping sent at `now_ns`; returns whether an earlier Ping is still unanswered.
    /// Send times of the first two outstanding Pings are kept; later ones go untimed.
    pub fn ping_sent(&mut self, now_ns: u64) -> bool {
        let late = self.pings_out > 0;
        match self.pings_out {
            0 => self.ping_sent_ns = now_ns,
            1 => self.ping_next_ns = now_ns,
            _ => {}
        }
        self.pings_out = self.pings_out.saturating_add(1);
        late
    }

    /// A Pong arrived: it answers the oldest outstanding Ping (pongs come back in order).
    pub fn pong(&mut self) -> PongMatch {
        if self.pings_out == 0 {
            return PongMatch::Unexpected;
        }
        let sent = self.ping_sent_ns;
        self.pings_out -= 1;
        self.ping_sent_ns = std::mem::take(&mut self.ping_next_ns);
        if sent != 0 {
            PongMatch::Timed(sent)
        } else {
            PongMatch::Untimed
        }
    }

    pub fn free() -> Conn {
        Conn {
            fd: -1,
            gen: 0,
            state: State::Free,
            flags: 0,
            since_ns: 0,
            attempt_ns: 0,
            ping_sent_ns: 0,
            ping_next_ns: 0,
            pings_out: 0,
            shard: crate::payload::UNKNOWN_SHARD,
            partial: None,
            pending: None,
            retries: 0,
        }
    }
}

/// Epoll token of a slot's current socket: slot index in the low half, generation in the high.
pub fn token(slot: usize, gen: u32) -> u64 {
    slot as u64 | (gen as u64) << 32
}

/// The (slot, generation) of a token.
pub fn untoken(token: u64) -> (usize, u32) {
    ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        assert_eq!(untoken(token(14_999, 7)), (14_999, 7));
        assert_eq!(untoken(token(0, u32::MAX)), (0, u32::MAX));
    }

    #[test]
    fn pongs_answer_pings_in_order() {
        let mut c = Conn::free();
        assert_eq!(c.pong(), PongMatch::Unexpected);
        assert!(!c.ping_sent(100));
        assert_eq!(c.pong(), PongMatch::Timed(100));
        // A late pong: the second ping goes out first, and each pong is timed against its own.
        assert!(!c.ping_sent(200));
        assert!(c.ping_sent(300));
        assert_eq!(c.pong(), PongMatch::Timed(200));
        assert_eq!(c.pong(), PongMatch::Timed(300));
        assert_eq!(c.pong(), PongMatch::Unexpected);
    }

    #[test]
    fn third_outstanding_ping_is_counted_but_not_timed() {
        let mut c = Conn::free();
        c.ping_sent(1);
        c.ping_sent(2);
        assert!(c.ping_sent(3));
        assert_eq!(c.pong(), PongMatch::Timed(1));
        assert_eq!(c.pong(), PongMatch::Timed(2));
        // A fourth ping while only the untimed third is outstanding keeps its own time.
        c.ping_sent(4);
        assert_eq!(c.pong(), PongMatch::Untimed);
        assert_eq!(c.pong(), PongMatch::Timed(4));
        assert_eq!(c.pong(), PongMatch::Unexpected);
    }

    #[test]
    fn slot_stays_small() {
        assert!(
            std::mem::size_of::<Conn>() <= 64,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
