//! Bytes in: new connections, partial frames, decoding, hang-ups and receive re-arming.
//!
//! Bytes arrive in whatever pieces the kernel's receive buffers hold. Whole frames are decoded
//! straight from the piece; the bytes of an incomplete frame are kept in the connection's
//! `ConnExt::partial`, and the next pieces are appended to it (never copied again: checking
//! whether a frame is complete reads only its header). Before login a frame may be at most
//! `max_login_frame` bytes, so a connection that has proved nothing holds little.
//!
//! A connection that is not logged in receives with one-shot receives (re-armed here after
//! each piece): when its `Login` moves it to its home shard, nothing else is in flight on this
//! shard's ring. Once it is logged in on this shard it gets one multishot receive.

use std::io::ErrorKind;

use bytes::BytesMut;
use tether_proto::{codec, CloseCode, Frame};
use tracing::debug;

use super::conn::{flag, Kind};
use super::{Command, ConnId, Core, Flow, Now};
use crate::counters::Counter;

/// Why [`Core::open`] refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The shard holds `max_connections`.
    Full,
    /// The server is draining.
    Draining,
}

impl Core {
    /// Adopts a freshly accepted socket: starts its login deadline and asks for its first
    /// receive. Refused when the shard is full or draining (the driver closes it).
    pub fn open(&mut self, now: Now) -> Result<ConnId, Refusal> {
        self.clock = now;
        if self.draining {
            self.counters.inc(Counter::RefusedAtAccept);
            return Err(Refusal::Draining);
        }
        if self.conns.len() >= self.cfg.max_connections {
            self.counters.inc(Counter::RefusedAtAccept);
            return Err(Refusal::Full);
        }
        self.counters.inc(Counter::Accepted);
        let session = tether_proto::session::ServerSession::new(&self.cfg.session, now.ms);
        let id = self.conns.insert(session);
        self.out.push(Command::Recv {
            conn: id,
            multishot: false,
        });
        Ok(id)
    }

    /// Bytes arrived on connection `id`: handle every whole frame, keep a partial one, and
    /// re-arm a one-shot receive.
    pub fn on_bytes(&mut self, id: ConnId, bytes: &[u8], now: Now) {
        self.clock = now;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        self.counters.add(Counter::BytesIn, bytes.len() as u64);
        if conn.flags & flag::CLOSING != 0 {
            // Finished: its input is no longer read.
            return;
        }
        if conn.flags & flag::PAUSED != 0 {
            // Bytes the cancelled receive had already taken: keep them, in order.
            let ext = conn.ext.get_or_insert_with(Box::default);
            ext.partial.extend_from_slice(bytes);
            if self.account(id.key) {
                self.over_budget(id);
            }
            return;
        }
        self.feed(id, bytes, now);
    }

    /// Handles `bytes` after whatever partial frame `id` kept.
    fn feed(&mut self, id: ConnId, bytes: &[u8], now: Now) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let kept = conn
            .ext
            .as_mut()
            .filter(|e| !e.partial.is_empty())
            .map(|e| std::mem::take(&mut e.partial));
        let flow = match kept {
            Some(mut buf) => {
                buf.extend_from_slice(bytes);
                let flow = self.process(id, &mut buf, now);
                if flow == Flow::Alive && !buf.is_empty() {
                    self.keep_partial(id.key, buf);
                }
                flow
            }
            None => {
                // The common case (a whole Ping): decode from the shard's reused read buffer,
                // and copy only an incomplete tail out of it.
                let mut buf = std::mem::take(&mut self.rbuf);
                buf.clear();
                buf.extend_from_slice(bytes);
                let flow = self.process(id, &mut buf, now);
                if flow == Flow::Alive && !buf.is_empty() {
                    self.keep_partial(id.key, BytesMut::from(&buf[..]));
                }
                buf.clear();
                self.rbuf = buf;
                flow
            }
        };
        if flow == Flow::Alive {
            if self.account(id.key) {
                return self.over_budget(id);
            }
            let conn = self.conns.at(id.key);
            conn.shrink();
            if conn.flags & flag::PAUSED == 0 {
                self.arm_recv(id);
            }
        }
    }

    /// Pauses `id` for the rest of the batch: it has handled its share of frames.
    fn pause(&mut self, id: ConnId) {
        let conn = self.conns.at(id.key);
        conn.flags |= flag::PAUSED;
        self.counters.inc(Counter::Paused);
        if conn.flags & flag::MULTISHOT != 0 {
            conn.flags &= !flag::MULTISHOT;
            self.out.push(Command::Pause { conn: id });
        }
        self.paused.push(id);
    }

    /// Whether connections paused for fairness still hold input they have not handled: the
    /// driver must then not sleep, or that input would wait for an unrelated wakeup (a
    /// backend's pipelined pushes would stall until the next tick).
    pub fn input_waiting(&self) -> bool {
        !self.paused.is_empty()
    }

    /// Ends the batch for fairness: every connection's share starts again, and paused
    /// connections handle what they kept (possibly pausing again) and read again.
    pub(super) fn end_batch_input(&mut self, now: Now) {
        for key in self.worked.drain(..) {
            if let Some(id) = self.conns.id_at(key) {
                self.conns.at(id.key).work = 0;
            }
        }
        let paused = std::mem::take(&mut self.paused);
        for id in paused {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            conn.flags &= !flag::PAUSED;
            if conn.flags & flag::CLOSING != 0 {
                continue;
            }
            self.feed(id, &[], now);
            if let Some(conn) = self.conns.get_mut(id) {
                if conn.flags & (flag::EOF | flag::PAUSED) == flag::EOF {
                    conn.flags &= !flag::EOF;
                    self.on_hangup(id, None, now);
                }
            }
        }
    }

    /// Asks for the next receive of a connection on one-shot receives, or for its multishot
    /// receive once it is logged in here.
    pub(super) fn arm_recv(&mut self, id: ConnId) {
        let conn = self.conns.at(id.key);
        if conn.flags & flag::MULTISHOT != 0 {
            return;
        }
        let multishot = conn.kind != Kind::Pending;
        if multishot {
            conn.flags |= flag::MULTISHOT;
        }
        if conn.flags & flag::PAUSED != 0 {
            return;
        }
        self.out.push(Command::Recv {
            conn: id,
            multishot,
        });
    }

    /// The receive of `id` ended without end of stream (`no_buffers`: the shard's receive
    /// buffers ran out; the bytes stay in the socket): arm it again.
    pub fn on_recv_ended(&mut self, id: ConnId, no_buffers: bool) {
        if no_buffers {
            self.counters.inc(Counter::RecvNoBuffers);
        }
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.flags & (flag::CLOSING | flag::PAUSED) != 0 {
            return;
        }
        let multishot = conn.flags & flag::MULTISHOT != 0;
        self.out.push(Command::Recv {
            conn: id,
            multishot,
        });
    }

    /// The peer of `id` ended its stream (`error` is `None`) or the socket failed. A client is
    /// finished at once (its last frames were handled before this); a backend that still
    /// waits for results is answered first (a half-close).
    /// The transport below the protocol failed for `id` (its TLS: a handshake or record that
    /// could not be read): nothing more can be read from it or written to it, so it is torn
    /// down at once and counted as a protocol error.
    pub fn on_transport_failed(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.flags & flag::CLOSING != 0 {
            return;
        }
        self.counters.close(CloseCode::ProtocolError, false);
        self.teardown(id);
    }

    pub fn on_hangup(&mut self, id: ConnId, error: Option<ErrorKind>, now: Now) {
        self.clock = now;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.flags & flag::CLOSING != 0 {
            return;
        }
        if conn.flags & flag::PAUSED != 0 && error.is_none() {
            // Its last bytes wait for the end of the batch; the end of stream comes after.
            conn.flags |= flag::EOF;
            return;
        }
        match error {
            None if conn.kind == Kind::Backend && conn.owed > 0 => {
                conn.flags |= flag::HALF_CLOSED;
                if conn.flags & flag::UPSTREAM != 0 {
                    // It can answer no upstream message any more: they go elsewhere, and
                    // what it holds is TimedOut now rather than at the timeout.
                    self.upstream_backend_left(id.key);
                }
            }
            None => {
                self.counters.close(CloseCode::Normal, true);
                self.finish(id, now);
            }
            Some(kind) => {
                debug!(key = id.key, error = ?kind, "receive failed");
                self.count_socket_error(kind);
                self.teardown(id);
            }
        }
    }

    /// Stores the bytes of an incomplete frame in the connection until the rest arrives.
    fn keep_partial(&mut self, key: u32, bytes: BytesMut) {
        let conn = self.conns.at(key);
        conn.ext.get_or_insert_with(Box::default).partial = bytes;
    }

    /// Decodes and handles every whole frame in `buf`.
    pub(super) fn process(&mut self, id: ConnId, buf: &mut BytesMut, now: Now) -> Flow {
        if let Some(flow) = self.proxy_header(id, buf, now) {
            return flow;
        }
        loop {
            let budget = self.cfg.frame_budget;
            let Some(conn) = self.conns.get_mut(id) else {
                return Flow::Gone;
            };
            if buf.is_empty() {
                return Flow::Alive;
            }
            if conn.work >= budget {
                if conn.flags & flag::PAUSED == 0 {
                    self.pause(id);
                }
                return Flow::Alive;
            }
            if conn.work == 0 {
                self.worked.push(id.key);
            }
            conn.work += 1;
            let rate = self.cfg.client_frame_rate;
            if rate > 0 && conn.kind != Kind::Backend {
                if conn.rate_work == 0 {
                    self.rate_worked.push(id.key);
                }
                conn.rate_work = conn.rate_work.saturating_add(1);
                if conn.rate_work > rate {
                    debug!(key = id.key, "client frame rate exceeded");
                    self.counters.inc(Counter::CloseFrameRate);
                    let _ = conn.session.close(CloseCode::ProtocolError);
                    if self.drive(id, now, None) == Flow::Alive {
                        self.teardown(id);
                    }
                    return Flow::Gone;
                }
            }
            let max = if conn.kind == Kind::Pending {
                self.cfg.max_login_frame
            } else {
                self.cfg.max_frame
            };
            let version = conn.session.version();
            let frame = match codec::decode_version(buf, max, version) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Flow::Alive,
                Err(e) => {
                    debug!(key = id.key, error = %e, "undecodable frame");
                    let conn = self.conns.at(id.key);
                    let _ = conn.session.close(e.close_code());
                    if self.drive(id, now, None) == Flow::Alive {
                        self.teardown(id);
                    }
                    return Flow::Gone;
                }
            };
            if matches!(frame, Frame::Ping(_)) {
                self.counters.inc(Counter::Pings);
            }
            if let Frame::Login(login) = &frame {
                if self.login_refused(id, login, now) {
                    return Flow::Gone;
                }
            }
            let conn = self.conns.at(id.key);
            conn.session
                .handle_frame(&self.cfg.session, now.ms, now.unix, frame, &*self.auth);
            let flow = self.drive(id, now, Some(buf));
            self.login_pair = None;
            if flow == Flow::Gone {
                return Flow::Gone;
            }
        }
    }
}
