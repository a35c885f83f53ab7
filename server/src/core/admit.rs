//! The shard's admission hooks: [`Core`] methods that consult its
//! [`Admission`](crate::core::admission::Admission) when a connection arrives, when a `Login`
//! arrives, when a login fails or succeeds and when a PROXY protocol header arrives.
//!
//! The decisions are `admission.rs`'s and `proxy.rs`'s; this file only applies them to a
//! connection (refuse with the back-off frame, count, close).

use bytes::{Buf, BytesMut};
use tether_proto::{CloseCode, Login};
use tracing::debug;

use super::conn::{flag, Kind};
use super::{Command, ConnId, Core, Flow, Now};
use crate::core::admission::{AddrKey, Admission, Reason, Refusal};
use crate::counters::Counter;
use crate::{overload, proxy};

impl Core {
    /// Replaces the admission state (the driver builds it from the shard's share of
    /// `[limits]`).
    pub fn set_admission(&mut self, admission: Admission) {
        self.admission = admission;
    }

    /// The admission state (address keys, refusal windows).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Adds `n` to counter `c` (events the driver sees: accept errors, pauses).
    pub fn count(&mut self, c: Counter, n: u64) {
        self.counters.add(c, n);
    }

    /// Opens a connection from `peer` if the shard has room and admission lets it in.
    /// `proxy`: its first bytes must be a PROXY protocol header (then `peer` is the balancer,
    /// not counted: the header's address is). On refusal, the back-off to send before closing
    /// (`None`: close without a word, the shard is draining).
    pub fn open_from(
        &mut self,
        peer: AddrKey,
        proxy: bool,
        now: Now,
    ) -> Result<ConnId, Option<Refusal>> {
        if self.draining {
            self.counters.inc(Counter::RefusedAtAccept);
            return Err(None);
        }
        if self.conns.len() >= self.cfg.max_connections {
            self.counters.inc(Counter::RefusedAtAccept);
            return Err(Some(self.admission.refusal(Reason::Full)));
        }
        let peer = if proxy { AddrKey::UNKNOWN } else { peer };
        self.admit(peer, now).map_err(Some)?;
        match self.open(now) {
            Ok(id) => {
                let conn = self.conns.at(id.key);
                conn.peer = peer;
                if proxy {
                    conn.flags |= flag::PROXY;
                }
                Ok(id)
            }
            Err(_) => {
                self.admission.on_close(peer);
                Err(None)
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

    /// A `Login` frame arrived on connection `id`: refuses it (back-off frame, close) when
    /// the login rate says so, or when its (address, user) pair is banned and its token fails
    /// (a valid token passes a ban: `bans.rs`). True when the connection is gone. Remembers
    /// the pair for [`Core::login_closed`] and [`Core::login_ok`].
    pub(super) fn login_refused(&mut self, id: ConnId, login: &Login, now: Now) -> bool {
        let conn = self.conns.at(id.key);
        if conn.kind != Kind::Pending {
            return false;
        }
        let peer = conn.peer;
        let verdict = self.admission.on_login(peer, now.ms).and_then(|()| {
            self.login_pair = self.admission.pair(peer, &login.user);
            match self.login_pair.and_then(|p| self.admission.ban(p, now.ms)) {
                Some(ban) if self.auth.authenticate(login, now.unix).is_err() => Err(ban),
                _ => Ok(()),
            }
        });
        match verdict {
            Ok(()) => false,
            Err(r) => {
                self.login_pair = None;
                self.counters.inc(r.reason.counter());
                self.refuse_conn(id, r, now);
                true
            }
        }
    }

    /// Connection `key`'s session closed with `code`: a failed login counts against its
    /// (address, user) pair (and may ban it).
    pub(super) fn login_closed(&mut self, key: u32, code: CloseCode, by_peer: bool, now: Now) {
        let conn = self.conns.at(key);
        let failed = matches!(
            code,
            CloseCode::AuthFailed | CloseCode::TokenExpired | CloseCode::UnsupportedVersion
        );
        if by_peer || !failed || conn.kind != Kind::Pending {
            return;
        }
        if let Some(pair) = self.login_pair.take() {
            if self.admission.on_login_failed(pair, now.ms) {
                self.counters.inc(Counter::LoginBans);
            }
        }
    }

    /// The login being handled succeeded: its pair's failures are forgotten.
    pub(super) fn login_ok(&mut self) {
        if let Some(pair) = self.login_pair.take() {
            self.admission.on_login_ok(pair);
        }
    }

    /// Connection `id` waits for its PROXY protocol header and `buf` holds its first bytes.
    /// `None`: the header was taken off `buf` and its address admitted, go on decoding.
    /// `Some(Flow::Alive)`: more bytes are needed (the caller keeps `buf`).
    /// `Some(Flow::Gone)`: refused and closed.
    pub(super) fn proxy_header(
        &mut self,
        id: ConnId,
        buf: &mut BytesMut,
        now: Now,
    ) -> Option<Flow> {
        if self.conns.at(id.key).flags & flag::PROXY == 0 {
            return None;
        }
        let header = match proxy::parse(buf) {
            Ok(None) => return Some(Flow::Alive),
            Ok(Some(h)) => h,
            Err(e) => {
                debug!(key = id.key, error = %e, "PROXY protocol header refused");
                self.counters.inc(Counter::CloseProxyHeader);
                self.counters.close(e.close_code(), false);
                self.teardown(id);
                return Some(Flow::Gone);
            }
        };
        self.counters.inc(Counter::ProxyHeaders);
        buf.advance(header.len);
        let peer = header
            .source
            .map_or(AddrKey::UNKNOWN, |a| self.admission.key(a.ip()));
        self.conns.at(id.key).flags &= !flag::PROXY;
        if let Err(r) = self.admit(peer, now) {
            self.refuse_conn(id, r, now);
            return Some(Flow::Gone);
        }
        self.conns.at(id.key).peer = peer;
        None
    }

    /// Sends connection `id` the back-off frame of `r` and closes it once that left.
    fn refuse_conn(&mut self, id: ConnId, r: Refusal, now: Now) {
        let mut frame = BytesMut::new();
        overload::backoff(r.window_ms, &mut frame);
        self.counters.close(CloseCode::Overloaded, false);
        let conn = self.conns.at(id.key);
        if conn.flags & flag::SENDING == 0 {
            conn.flags |= flag::SENDING;
            self.out.push(Command::Send {
                conn: id,
                bytes: frame.freeze(),
            });
        }
        self.finish(id, now);
    }
}
