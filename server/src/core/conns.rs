//! Connections and their timers: the slab of [`Conn`] entries and the timing wheel.
//!
//! A connection has at most one wheel entry, at the deadline stored in `Conn::armed_at`. A
//! heartbeat moves the session's deadline later and leaves the wheel alone: the entry fires
//! early and is re-armed then. A deadline that moves earlier replaces the entry.

use slab::Slab;
use tether_proto::session::ServerSession;
use tether_proto::Millis;

use super::conn::{Conn, Kind, NOT_ARMED};
use super::ConnId;
use crate::core::wheel::Wheel;

/// Generations are this wide (they travel in io_uring `user_data`; see `ring.rs`).
pub const GEN_MASK: u32 = (1 << 29) - 1;

/// The slab and the wheel.
pub(super) struct Conns {
    /// The connections, by slab key.
    slab: Slab<Conn>,
    /// One entry per connection, at its deadline.
    wheel: Wheel,
    /// Next connection generation (never 0).
    next_gen: u32,
    /// Connections by [`Kind`] (indexed by `Kind as usize`), for the metrics.
    kinds: [usize; 4],
}

impl Conns {
    /// Empty, with a wheel of `tick_ms` whose clock reads `now`.
    pub(super) fn new(tick_ms: u64, now: Millis) -> Conns {
        Conns {
            slab: Slab::new(),
            wheel: Wheel::new(tick_ms, now),
            next_gen: 1,
            kinds: [0; 4],
        }
    }

    /// Pre-sizes for `n` connections.
    pub(super) fn reserve(&mut self, n: usize) {
        self.slab.reserve(n);
        self.wheel.reserve(n);
    }

    /// Connections held.
    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }

    /// When the wheel next fires, if ever.
    pub(super) fn next_expiry(&self) -> Option<Millis> {
        self.wheel.next_expiry()
    }

    /// Puts a connection in the slab with a wheel entry at its session's deadline.
    pub(super) fn insert(&mut self, session: ServerSession) -> ConnId {
        let gen = self.next_gen;
        self.next_gen = ((self.next_gen + 1) & GEN_MASK).max(1);
        let entry = self.slab.vacant_entry();
        let key = u32::try_from(entry.key()).expect("fewer than 2^32 connections per shard");
        let at = session.poll_timeout().unwrap_or(0);
        let timer = self.wheel.insert(key, at);
        let mut conn = Conn::new(gen, session, timer);
        conn.armed_at = at;
        entry.insert(conn);
        self.kinds[Kind::Pending as usize] += 1;
        ConnId { key, gen }
    }

    /// The connection `id`, if it is still here.
    pub(super) fn get(&self, id: ConnId) -> Option<&Conn> {
        self.slab.get(id.key as usize).filter(|c| c.gen == id.gen)
    }

    /// The connection `id`, if it is still here.
    pub(super) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.slab
            .get_mut(id.key as usize)
            .filter(|c| c.gen == id.gen)
    }

    /// The connection under `key` (a key taken from the user index or the wheel, which only
    /// hold live keys).
    pub(super) fn at(&mut self, key: u32) -> &mut Conn {
        &mut self.slab[key as usize]
    }

    /// The connection under `key`, read-only (a key from the user index).
    pub(super) fn at_ref(&self, key: u32) -> &Conn {
        &self.slab[key as usize]
    }

    /// The handle of the connection under `key`, if any.
    pub(super) fn id_at(&self, key: u32) -> Option<ConnId> {
        self.slab
            .get(key as usize)
            .map(|c| ConnId { key, gen: c.gen })
    }

    /// Every connection's handle (drain, shutdown).
    pub(super) fn ids(&self) -> Vec<ConnId> {
        self.slab
            .iter()
            .map(|(k, c)| ConnId {
                key: k as u32,
                gen: c.gen,
            })
            .collect()
    }

    /// Takes connection `key` out, with its wheel entry.
    pub(super) fn remove(&mut self, key: u32) -> Conn {
        let conn = self.slab.remove(key as usize);
        self.kinds[conn.kind as usize] -= 1;
        if conn.armed_at != NOT_ARMED {
            self.wheel.cancel(conn.timer);
        }
        conn
    }

    /// Makes connection `key` a `kind` (the only way a kind changes, so the tally stays true).
    pub(super) fn set_kind(&mut self, key: u32, kind: Kind) {
        let conn = &mut self.slab[key as usize];
        self.kinds[conn.kind as usize] -= 1;
        self.kinds[kind as usize] += 1;
        conn.kind = kind;
    }

    /// Connections by kind: pending, client, probe, backend.
    pub(super) fn kinds(&self) -> [usize; 4] {
        self.kinds
    }

    /// Makes sure the wheel fires no later than `deadline` for connection `key`.
    pub(super) fn arm_by(&mut self, key: u32, deadline: Millis) {
        let conn = &mut self.slab[key as usize];
        if deadline < conn.armed_at {
            if conn.armed_at != NOT_ARMED {
                self.wheel.cancel(conn.timer);
            }
            conn.timer = self.wheel.insert(key, deadline);
            conn.armed_at = deadline;
        }
    }

    /// Moves the wheel to `now` and appends the keys whose entry fired to `fired` (their
    /// entries are gone: `armed_at` is reset).
    pub(super) fn advance(&mut self, now: Millis, fired: &mut Vec<u32>) {
        let start = fired.len();
        self.wheel.advance(now, fired);
        for &key in &fired[start..] {
            if let Some(conn) = self.slab.get_mut(key as usize) {
                conn.armed_at = NOT_ARMED;
            }
        }
    }
}
