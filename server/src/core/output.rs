//! Bytes out: the shard's encode arena, per-connection queues, and the `Send`, `Close` and
//! `Abort` commands.
//!
//! A connection's frames are encoded into the shard's arena and leave as one `Send` command
//! whose bytes are a slice of the arena (no allocation per frame; the slice keeps its part of
//! the arena alive until the send completes). Only one send is outstanding per connection;
//! frames produced meanwhile wait in the connection's own queue (`ConnExt::out`), bounded in
//! bytes (`max_queue_bytes`, past which the connection is a slow consumer) and in time (the
//! write deadline, counted from when the queue last made progress).
//!
//! A connection whose session finished (a `Close` or `Kick` frame written) lingers until its
//! last send completes, at most `linger_ms`, and is then closed; it leaves the user index at
//! once, so later pushes see the user offline.

use std::collections::VecDeque;
use std::io::ErrorKind;

use bytes::{Bytes, BytesMut};
use tether_proto::{codec, CloseCode, Frame};
use tracing::debug;

use super::conn::flag;
use super::delivery::Settled;
use super::{Command, ConnId, Core, Flow, Now, Transfer};
use crate::counters::Counter;

/// Bytes the arena grows by when it runs out: many connections' frames share one allocation.
const ARENA_CHUNK: usize = 64 * 1024;

/// Encoded bytes and commands on their way to the driver.
#[derive(Debug, Default)]
pub(super) struct Outbound {
    /// Where frames are encoded; each send takes its bytes off the front.
    arena: BytesMut,
    /// Commands not yet taken by the driver, oldest first.
    pub(super) commands: VecDeque<Command>,
}

impl Outbound {
    /// Queues a command for the driver.
    pub(super) fn push(&mut self, cmd: Command) {
        self.commands.push_back(cmd);
    }
}

impl Core {
    /// Writes the session's pending frames; closes the connection when its session finished;
    /// re-arms its timer.
    pub(super) fn flush(&mut self, id: ConnId, now: Now) -> Flow {
        let Some(conn) = self.conns.get_mut(id) else {
            return Flow::Gone;
        };
        let arena = &mut self.out.arena;
        if arena.capacity() < 512 {
            arena.reserve(ARENA_CHUNK);
        }
        while let Some(frame) = conn.session.poll_transmit() {
            if matches!(frame, Frame::ProbeFire) {
                self.counters.inc(Counter::ProbeFired);
            }
            if let Err(e) = codec::encode(&frame, arena) {
                // Only server-built frames get here, checked against the limits before.
                debug!(key = id.key, error = %e, "frame not encodable, not sent");
            }
        }
        let mut queued = false;
        if !arena.is_empty() {
            let bytes = arena.split();
            if conn.flags & flag::SENDING == 0 {
                conn.flags |= flag::SENDING | flag::FRESH;
                self.fresh.push(id);
                self.out.push(Command::Send {
                    conn: id,
                    bytes: bytes.freeze(),
                });
            } else {
                let ext = conn.ext.get_or_insert_with(Box::default);
                if ext.out.is_empty() {
                    ext.out_since = now.ms;
                }
                ext.out.extend_from_slice(&bytes);
                if ext.out.len() > self.cfg.max_queue_bytes && conn.flags & flag::FRESH == 0 {
                    debug!(key = id.key, queued = ext.out.len(), "slow consumer");
                    self.counters.close(CloseCode::SlowConsumer, false);
                    self.cut_slow = true;
                    self.teardown(id);
                    return Flow::Gone;
                }
                queued = true;
            }
        }
        let finished = conn.session.is_finished();
        if queued && self.account(id.key) {
            self.over_budget(id);
            return Flow::Gone;
        }
        if finished {
            self.finish(id, now);
            return Flow::Gone;
        }
        self.rearm(id.key);
        Flow::Alive
    }

    /// Whether anything rides on the completion of `id`'s outstanding send: a push's result
    /// (the frames of a delivery are in it) or the connection's close (it finished and waits
    /// for its last bytes). When nothing does (a `Pong`, a notice), the driver may send it so
    /// that success posts no completion and wakes nobody, and report it later
    /// ([`Core::on_sent`] after the submission that took it).
    pub fn awaits_send(&self, id: ConnId) -> bool {
        let Some(conn) = self.conns.get(id) else {
            return true;
        };
        conn.flags & flag::CLOSING != 0
            || conn.session.is_finished()
            || conn.ext.as_ref().is_some_and(|e| !e.in_flight.is_empty())
    }

    /// The outstanding send of `id` completed: `Ok(n)` when all `n` bytes were handed to the
    /// socket, or the error that ended it. Sends what queued meanwhile, or closes a finished
    /// connection.
    pub fn on_sent(&mut self, id: ConnId, result: Result<usize, ErrorKind>, now: Now) {
        self.clock = now;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.flags &= !flag::SENDING;
        match result {
            Ok(n) => self.counters.add(Counter::BytesOut, n as u64),
            Err(kind) => {
                debug!(key = id.key, error = ?kind, "send failed");
                if conn.flags & flag::CLOSING == 0 {
                    self.count_socket_error(kind);
                }
                return self.teardown(id);
            }
        }
        let delivered = conn
            .ext
            .as_mut()
            .map(|e| std::mem::take(&mut e.in_flight))
            .unwrap_or_default();
        if let Some(ext) = conn.ext.as_mut().filter(|e| !e.out.is_empty()) {
            let bytes = ext.out.split().freeze();
            ext.out_since = now.ms;
            ext.in_flight = std::mem::take(&mut ext.queued);
            conn.flags |= flag::SENDING;
            self.out.push(Command::Send { conn: id, bytes });
            self.account(id.key);
            self.settle(&delivered, Settled::Sent, now);
            return;
        }
        self.settle(&delivered, Settled::Sent, now);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if let Some(ext) = conn.ext.as_mut() {
            ext.out = BytesMut::new();
        }
        self.account(id.key);
        let conn = self.conns.at(id.key);
        conn.shrink();
        if conn.flags & flag::CLOSING != 0 {
            return self.teardown(id);
        }
        if conn.flags & flag::HALF_CLOSED != 0 && conn.owed == 0 {
            self.counters.close(CloseCode::Normal, true);
            return self.finish(id, now);
        }
        self.rearm(id.key);
    }

    /// Brings connection `key`'s share of the shard's buffer budget up to date; true when
    /// the shard is now over its budget.
    pub(super) fn account(&mut self, key: u32) -> bool {
        let conn = self.conns.at(key);
        if let Some(ext) = conn.ext.as_mut() {
            let now = ext.partial.len() + ext.out.len();
            self.buffered = self.buffered + now - ext.accounted;
            ext.accounted = now;
        }
        self.buffered > self.cfg.max_buffered_bytes
    }

    /// The shard is over its buffer budget because connection `id` grew: close it with
    /// `Overloaded` (it may reconnect), so one connection's memory cannot starve the others.
    pub(super) fn over_budget(&mut self, id: ConnId) {
        debug!(
            key = id.key,
            buffered = self.buffered,
            "shard buffer budget exceeded"
        );
        self.counters.inc(Counter::CloseBufferBudget);
        self.counters.close(CloseCode::Overloaded, false);
        self.teardown(id);
    }

    /// Counts a socket that failed (a dead link when the kernel gave up on unacknowledged
    /// bytes: `TCP_USER_TIMEOUT` or retransmissions).
    pub(super) fn count_socket_error(&mut self, kind: ErrorKind) {
        if kind == ErrorKind::TimedOut {
            debug!("socket timed out: the peer stopped acknowledging (dead link)");
            self.counters.inc(Counter::CloseDeadLink);
        }
        self.counters.close(CloseCode::InternalError, false);
    }

    /// The session of `id` finished (its last frames are encoded): leave the user index now,
    /// close once the last send completed, at most `linger_ms` from now.
    pub(super) fn finish(&mut self, id: ConnId, now: Now) {
        self.unregister(id.key);
        let linger = self.cfg.linger_ms;
        let conn = self.conns.at(id.key);
        if conn.flags & flag::SENDING == 0 {
            return self.teardown(id);
        }
        conn.flags |= flag::CLOSING;
        let until = now.ms.saturating_add(linger);
        conn.ext.get_or_insert_with(Box::default).linger_until = until;
        self.conns.arm_by(id.key, until);
    }

    /// Removes connection `id` for good: user index, timer, and the socket (`Close`, or
    /// `Abort` when a send is outstanding). Anything still queued is discarded.
    pub(super) fn teardown(&mut self, id: ConnId) {
        if self.conns.get(id).is_none() {
            return;
        }
        self.unregister(id.key);
        let conn = self.conns.remove(id.key);
        self.admission.on_close(conn.peer);
        if let Some(ext) = conn.ext.as_ref() {
            self.buffered -= ext.accounted;
        }
        if conn.flags & flag::SENDING != 0 {
            self.out.push(Command::Abort { conn: id });
        } else {
            self.out.push(Command::Close { conn: id });
        }
        let slow = std::mem::take(&mut self.cut_slow);
        if let Some(ext) = conn.ext {
            // What had not left yet is not delivered: those pushes' senders learn it.
            let now = self.clock;
            self.settle(&ext.in_flight, Settled::Failed { slow }, now);
            self.settle(&ext.queued, Settled::Failed { slow }, now);
        }
    }

    /// Makes sure the wheel fires no later than the connection's deadline. A deadline that
    /// moved later (every heartbeat) leaves the wheel alone: the entry fires early and is
    /// re-armed then.
    pub(super) fn rearm(&mut self, key: u32) {
        let write_timeout = self.cfg.write_timeout_ms;
        if let Some(d) = self.conns.at(key).deadline(write_timeout) {
            self.conns.arm_by(key, d);
        }
    }

    /// The bytes to write to a connection the mesh would not take (its home shard's channel
    /// was full) or its home shard could not hold, before the driver closes it: a `Close`
    /// with `code`. Counts the close.
    pub(super) fn refuse_transfer(&mut self, mut transfer: Transfer, code: CloseCode) -> Bytes {
        let _ = transfer.session.close(code);
        let mut buf = BytesMut::new();
        while let Some(frame) = transfer.session.poll_transmit() {
            let _ = codec::encode(&frame, &mut buf);
        }
        self.counters.close(code, false);
        buf.freeze()
    }
}
