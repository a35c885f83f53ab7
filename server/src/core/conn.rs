//! One connection as the shard holds it: a compact slab entry.
//!
//! An idle logged-in connection is this struct and nothing else: no task, no buffer, no
//! descriptor (the shard's driver keeps those), no per-connection kernel object beyond its
//! socket and one armed multishot receive. Buffers exist only in [`ConnExt`], allocated while a
//! partial frame or unsent bytes are waiting.

use std::rc::Rc;

use bytes::BytesMut;
use tether_proto::session::ServerSession;
use tether_proto::Millis;

use super::devices::DeviceId;
use crate::core::wheel::TimerId;

/// `Conn::armed_at` when the connection has no wheel entry.
pub const NOT_ARMED: Millis = Millis::MAX;

/// What a connection is, once logged in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Not logged in yet.
    Pending,
    /// A client's main connection: registered in the user index, receives pushes.
    Client,
    /// A client's heartbeat probe connection: not registered, gets one ProbeFire.
    Probe,
    /// A backend service: sends pushes, receives results.
    Backend,
}

/// Bits of [`Conn::flags`].
pub mod flag {
    /// A `Send` command is outstanding: its completion has not been reported yet. At most one
    /// is outstanding per connection, so bytes leave in the order they were encoded.
    pub const SENDING: u16 = 0x01;
    /// The connection is finished and waits for its last bytes to leave (bounded by the
    /// linger deadline); it is out of the user index and takes no more input.
    pub const CLOSING: u16 = 0x02;
    /// The driver receives with a multishot receive (logged in on this shard); otherwise with
    /// one-shot receives (not logged in yet: nothing arrives behind a hand-over).
    pub const MULTISHOT: u16 = 0x04;
    /// The peer half-closed (EOF) while results were still owed to it (a backend).
    pub const HALF_CLOSED: u16 = 0x08;
    /// A backend connection that takes upstream messages (logged in with the `UPSTREAM` flag).
    pub const UPSTREAM: u16 = 0x200;
    /// The connection used its share of the current batch: its receive is cancelled and
    /// what arrived waits in `ConnExt::partial` until the end of the batch.
    pub const PAUSED: u16 = 0x10;
    /// End of stream arrived while paused: handled once the kept bytes are.
    pub const EOF: u16 = 0x20;
    /// The connection filed its one NetReport.
    pub const REPORTED: u16 = 0x40;
    /// The outstanding send was emitted in the current batch and has not reached the kernel
    /// yet: bytes queued behind it do not count against the slow-consumer bound until the
    /// batch ends (a burst of pushes in one batch is not a slow reader).
    pub const FRESH: u16 = 0x80;
    /// The connection's first bytes must be a PROXY protocol v2 header (`proxy.rs`).
    pub const PROXY: u16 = 0x100;
}

/// Buffers of a connection that is mid-frame or has unsent bytes; `None` in [`Conn::ext`]
/// otherwise, so an idle connection holds no buffer.
#[derive(Debug, Default)]
pub struct ConnExt {
    /// Bytes of an incomplete inbound frame, kept until the rest arrives.
    pub partial: BytesMut,
    /// Encoded frames waiting behind the outstanding send, oldest first; bounded by
    /// `outbound.max_queue_bytes`.
    pub out: BytesMut,
    /// When `out` last went from empty to non-empty: the write deadline counts from here.
    pub out_since: Millis,
    /// While [`flag::CLOSING`]: when the connection is cut even if its last send has not
    /// completed.
    pub linger_until: Millis,
    /// Pushes whose bytes are in the outstanding send: delivered when it completes.
    pub in_flight: Vec<u64>,
    /// Pushes whose bytes wait in `out`: they go in flight with it.
    pub queued: Vec<u64>,
    /// Bytes of `partial` and `out` last counted in the shard's buffer budget.
    pub accounted: usize,
}

impl ConnExt {
    /// Whether the extension holds nothing and can be freed.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
            && self.out.is_empty()
            && self.in_flight.is_empty()
            && self.queued.is_empty()
    }
}

/// A connection's slab entry.
#[derive(Debug)]
pub struct Conn {
    /// The protocol state: login, leases, pending control frames (sans-IO, from proto).
    pub session: ServerSession,
    /// The connection's wheel entry, valid while `armed_at != NOT_ARMED`.
    pub timer: TimerId,
    /// The deadline the wheel entry fires at. A heartbeat moves the session's deadline later
    /// and leaves this alone; the wheel entry is re-armed when it fires early, or replaced when
    /// a deadline moves earlier than this.
    pub armed_at: Millis,
    /// The user id (shared with the user index) once logged in; for a backend its service name.
    pub user: Option<Rc<str>>,
    /// The device of a client's main connection, interned in the shard's [`super::Devices`]
    /// (4 bytes instead of a string per connection): who sent an upstream message or a
    /// `Send`, and which connection a re-login of the same device replaces (an exact match).
    /// [`DeviceId::NONE`] otherwise.
    pub device: DeviceId,
    /// The `LoginOk.session_id` the connection was given (0 before login): handed to the
    /// backend with each upstream message.
    pub session_id: u64,
    /// Buffers, only while a partial frame or unsent bytes wait.
    pub ext: Option<Box<ConnExt>>,
    /// Results still owed to this connection (a backend's pushes in flight to other shards, a
    /// client's sends and upstream messages), so a backend that half-closes is answered before
    /// its connection closes, and a client's upstream messages in flight are bounded.
    pub owed: u32,
    /// Frames handled for this connection in the current batch (reset at the end of the
    /// batch): the fairness budget.
    pub work: u16,
    /// Frames received in the current one-second window (reset by the tick), against
    /// `limits.client_frame_rate`.
    pub rate_work: u16,
    /// Distinguishes this connection from earlier ones with the same slab key in ring
    /// completions and mesh replies.
    pub gen: u32,
    /// What the connection is.
    pub kind: Kind,
    /// [`flag`] bits.
    pub flags: u16,
    /// The source address's admission key (`admission.rs`); 4 bytes of what was padding.
    pub peer: crate::core::admission::AddrKey,
}

impl Conn {
    /// A new, not yet logged-in connection.
    pub fn new(gen: u32, session: ServerSession, timer: TimerId) -> Conn {
        Conn {
            session,
            timer,
            armed_at: NOT_ARMED,
            user: None,
            device: DeviceId::NONE,
            session_id: 0,
            ext: None,
            owed: 0,
            work: 0,
            rate_work: 0,
            gen,
            kind: Kind::Pending,
            flags: 0,
            peer: crate::core::admission::AddrKey::UNKNOWN,
        }
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.ext.as_ref().map_or(0, |e| e.out.len())
    }

    /// The earliest instant the shard must look at this connection: the session's deadline,
    /// or the write deadline while bytes wait. `None` when nothing is due.
    pub fn deadline(&self, write_timeout_ms: u64) -> Option<Millis> {
        let write = self
            .ext
            .as_ref()
            .filter(|e| !e.out.is_empty())
            .map(|e| e.out_since.saturating_add(write_timeout_ms));
        match (self.session.poll_timeout(), write) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Frees the buffers when both are empty.
    pub fn shrink(&mut self) {
        if self.ext.as_ref().is_some_and(|e| e.is_empty()) {
            self.ext = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slab entry is the per-connection cost: keep it small (the budget for an idle
    /// connection's whole user-space footprint is 256 bytes). A slab stores `Conn` in an enum
    /// with a vacant variant, at most one word more. 120 since the entry keeps its session id
    /// (8 bytes), which every upstream message carries to the backend.
    #[test]
    fn slab_entry_stays_small() {
        let entry = std::mem::size_of::<Conn>() + std::mem::size_of::<usize>();
        assert!(entry <= 120, "slab entry grew to {entry} bytes");
    }
}
