//! The shard's admission hooks: [`ShardState`] methods that consult its
//! [`Admission`](crate::admission::Admission) when a connection arrives, when a `Login`
//! arrives, when a login fails and when a PROXY protocol header arrives.
//!
//! The decisions are `admission.rs`'s and `proxy.rs`'s; this file only applies them to a
//! connection (refuse with the back-off frame, count, close), and performs no system call
//! beyond the [`Io`] it is given.

use std::os::fd::RawFd;

use bytes::{Buf, BytesMut};
use tether_proto::CloseCode;
use tracing::debug;

use crate::admission::{AddrKey, Reason, Refusal};
use crate::conn::{flag, Kind};
use crate::counters::Counter;
use crate::io::Io;
use crate::overload;
use crate::proxy;
use crate::state::{Flow, Now, ShardState};

impl ShardState {
    /// Adopts a freshly accepted socket from `peer` if the shard has room and admission lets
    /// it in. `proxy`: its first bytes must be a PROXY protocol header (then `peer` is the
    /// balancer, not counted: the header's address is). On refusal the descriptor comes back
    /// with the refusal to send (`None`: close it without a word, the shard is draining).
    pub fn open_from(
        &mut self,
        fd: RawFd,
        peer: AddrKey,
        proxy: bool,
        now: Now,
        io: &mut dyn Io,
    ) -> Result<u32, (RawFd, Option<Refusal>)> {
        if self.is_draining() {
            self.counters.inc(Counter::RefusedAtAccept);
            return Err((fd, None));
        }
        if self.connections() >= self.cfg.max_connections {
            self.counters.inc(Counter::RefusedAtAccept);
            return Err((fd, Some(self.admission.refusal(Reason::Full))));
        }
        let peer = if proxy { AddrKey::UNKNOWN } else { peer };
        if let Err(r) = self.admit(peer, now) {
            return Err((fd, Some(r)));
        }
        match self.open(fd, now, io) {
            Ok(key) => {
                let conn = &mut self.conns[key as usize];
                conn.peer = peer;
                if proxy {
                    conn.flags |= flag::PROXY;
                }
                Ok(key)
            }
            Err(fd) => {
                self.admission.on_close(peer);
                Err((fd, None))
            }
        }
    }

    /// Asks admission about a new connection from `peer` and counts the answer.
    fn admit(&mut self, peer: AddrKey, now: Now) -> Result<(), Refusal> {
        let untracked = self.admission.untracked;
        let verdict = self.admission.on_accept(peer, now.ms);
        if self.admission.untracked != untracked {
            self.counters.inc(Counter::AdmissionUntracked);
        }
        if let Err(r) = verdict {
            self.counters.inc(r.reason.counter());
        }
        verdict
    }

    /// A `Login` frame arrived on connection `key`: refuses it (back-off frame, close) when
    /// the login rate or a ban says so. True when the connection is gone.
    pub(crate) fn login_refused(&mut self, key: u32, now: Now, io: &mut dyn Io) -> bool {
        let conn = &self.conns[key as usize];
        if conn.kind != Kind::Pending {
            return false;
        }
        match self.admission.on_login(conn.peer, now.ms) {
            Ok(()) => false,
            Err(r) => {
                self.counters.inc(r.reason.counter());
                self.refuse_conn(key, r, io);
                true
            }
        }
    }

    /// Connection `key`'s session closed with `code`: a failed login counts against its
    /// address (and may ban it).
    pub(crate) fn login_closed(&mut self, key: u32, code: CloseCode, by_peer: bool, now: Now) {
        let conn = &self.conns[key as usize];
        let failed = matches!(
            code,
            CloseCode::AuthFailed | CloseCode::TokenExpired | CloseCode::UnsupportedVersion
        );
        if by_peer || !failed || conn.kind != Kind::Pending {
            return;
        }
        if self.admission.on_login_failed(conn.peer, now.ms) {
            self.counters.inc(Counter::AddressBans);
        }
    }

    /// Connection `key` waits for its PROXY protocol header and `buf` holds its first bytes.
    /// `None`: the header was taken off `buf` and its address admitted, go on decoding.
    /// `Some(Flow::Alive)`: more bytes are needed (the caller keeps `buf`).
    /// `Some(Flow::Gone)`: refused and closed.
    pub(crate) fn proxy_header(
        &mut self,
        key: u32,
        buf: &mut BytesMut,
        now: Now,
        io: &mut dyn Io,
    ) -> Option<Flow> {
        if self.conns[key as usize].flags & flag::PROXY == 0 {
            return None;
        }
        let header = match proxy::parse(buf) {
            Ok(None) => return Some(Flow::Alive),
            Ok(Some(h)) => h,
            Err(e) => {
                debug!(key, error = %e, "PROXY protocol header refused");
                self.counters.inc(Counter::CloseProxyHeader);
                self.counters.close(e.close_code(), false);
                self.teardown(key, io);
                return Some(Flow::Gone);
            }
        };
        self.counters.inc(Counter::ProxyHeaders);
        buf.advance(header.len);
        let peer = header
            .source
            .map_or(AddrKey::UNKNOWN, |a| self.admission.key(a.ip()));
        self.conns[key as usize].flags &= !flag::PROXY;
        if let Err(r) = self.admit(peer, now) {
            self.refuse_conn(key, r, io);
            return Some(Flow::Gone);
        }
        self.conns[key as usize].peer = peer;
        None
    }

    /// Sends connection `key` the back-off frame of `r` and closes it.
    fn refuse_conn(&mut self, key: u32, r: Refusal, io: &mut dyn Io) {
        let mut frame = BytesMut::new();
        overload::backoff(r.window_ms, &mut frame);
        let _ = io.send(self.conns[key as usize].fd, &frame);
        self.counters.close(CloseCode::Overloaded, false);
        self.teardown(key, io);
    }
}
