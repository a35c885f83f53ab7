//! Authenticated logins: registration in the user index, the hand-over of a client's
//! connection to its home shard, adoption there, and the learned-interval priors.

use std::rc::Rc;

use bytes::BytesMut;
use tether_proto::heartbeat::{reporter_id, NetworkId};
use tether_proto::session::Accept;
use tether_proto::token::Principal;
use tether_proto::CloseCode;

use super::conn::{flag, Kind};
use super::devices::DeviceId;
use super::msg::{Post, ShardMsg};
use super::{Command, ConnId, Core, Flow, Now, Transfer};
use crate::counters::Counter;
use crate::routing::shard_for;

/// Most reports one shard shares per tick; past it they stay local (counted).
const MAX_REPORTS_PER_TICK: usize = 1024;

/// What an authenticated login said, as the session reported it.
#[derive(Debug)]
pub(super) struct LoginInfo {
    /// Client or backend.
    pub(super) principal: Principal,
    /// The user id (service name for a backend).
    pub(super) user: String,
    /// The device id.
    pub(super) device: String,
    /// The network key (may be empty).
    pub(super) network_key: String,
    /// Whether this is a heartbeat probe connection.
    pub(super) probe: bool,
    /// A backend connection that takes upstream messages.
    pub(super) upstream: bool,
}

impl Core {
    /// A login was authenticated: register it here, or move it to its home shard.
    pub(super) fn on_logged_in(
        &mut self,
        id: ConnId,
        login: LoginInfo,
        now: Now,
        rest: Option<&mut BytesMut>,
    ) -> Flow {
        match login.principal {
            Principal::Backend => {
                self.conns.set_kind(id.key, Kind::Backend);
                self.conns.at(id.key).user = Some(Rc::from(login.user));
                self.counters.inc(Counter::LoggedInBackend);
                self.out.push(Command::Prompt { conn: id });
                if login.upstream {
                    self.upstream_backend_joined(id);
                }
            }
            Principal::Client if login.probe => {
                self.conns.set_kind(id.key, Kind::Probe);
                self.conns.at(id.key).user = Some(Rc::from(login.user));
                self.counters.inc(Counter::LoggedInProbe);
            }
            Principal::Client => {
                let home = shard_for(&login.user, self.shards);
                if home != self.me {
                    return self.hand_over(id, home, login, rest);
                }
                self.register(id, &login.user, &login.device, now);
                self.counters.inc(Counter::LoggedIn);
            }
        }
        self.accept(id.key, &login.network_key, now);
        Flow::Alive
    }

    /// Answers the login with `LoginOk` carrying the network's prior (and a GoAway right after
    /// while draining, whose window is what is left of the drain's, so the client leaves
    /// before the drain closes it).
    fn accept(&mut self, key: u32, network_key: &str, now: Now) {
        let session_id = self.next_session;
        self.next_session += 1;
        let prior_ms = self.priors.prior(now.ms, NetworkId::of(network_key));
        let draining = self.draining;
        let window = self.drain_window_left(now);
        let conn = self.conns.at(key);
        conn.session_id = session_id;
        let accept = Accept {
            session_id,
            server_epoch: self.cfg.server_epoch,
            prior_ms,
        };
        if conn
            .session
            .accept(&self.cfg.session, now.ms, accept)
            .is_ok()
            && draining
        {
            let _ = conn
                .session
                .go_away(CloseCode::ServerShutdown, true, window);
        }
    }

    /// Registers connection `id` as `(user, device)`'s main connection; an older connection
    /// of the same device is kicked at once ("replaced", do not reconnect).
    fn register(&mut self, id: ConnId, user: &str, device: &str, now: Now) {
        let device_name = device;
        let device = self.devices.hold(device);
        let mut old = std::mem::take(&mut self.scratch);
        old.clear();
        old.extend(
            self.users
                .get(user)
                .iter()
                .copied()
                .filter(|k| *k != id.key),
        );
        for k in old.drain(..) {
            let conn = self.conns.at(k);
            if conn.device != device {
                continue;
            }
            let old_id = ConnId {
                key: k,
                gen: conn.gen,
            };
            if conn.session.kick(CloseCode::Replaced, false, 0).is_ok() {
                self.counters.inc(Counter::Replaced);
            }
            if self.drive(old_id, now, None) == Flow::Alive {
                self.teardown(old_id);
            }
        }
        self.scratch = old;
        self.cluster_event(|| super::msg::ClusterEvent::Login {
            user: user.to_string(),
            device: device_name.to_string(),
        });
        let name = self.users.insert(user, id.key);
        self.conns.set_kind(id.key, Kind::Client);
        let conn = self.conns.at(id.key);
        conn.user = Some(name);
        conn.device = device;
    }

    /// Removes connection `key` from the user index (if it is a registered main connection).
    pub(super) fn unregister(&mut self, key: u32) {
        let conn = self.conns.at(key);
        if conn.kind == Kind::Client {
            let device = std::mem::replace(&mut conn.device, DeviceId::NONE);
            self.devices.release(device);
            if let Some(user) = conn.user.take() {
                self.users.remove(&user, key);
                if self.users.get(&user).is_empty() {
                    self.cluster_event(|| super::msg::ClusterEvent::Logout {
                        user: user.to_string(),
                    });
                }
            }
            self.conns.set_kind(key, Kind::Pending);
        }
        if conn_is_upstream_backend(self.conns.at(key)) {
            self.upstream_backend_left(key);
        }
    }

    /// A client reported the interval it learned on its network: file it here, and share it
    /// with the other shards at the next tick (every shard then gives the same prior). One
    /// report per connection counts; more are ignored and counted.
    pub(super) fn on_net_report(
        &mut self,
        key: u32,
        network: NetworkId,
        learned_ms: u32,
        now: Now,
    ) {
        self.counters.inc(Counter::NetReports);
        let conn = self.conns.at(key);
        if conn.kind != Kind::Client || conn.flags & flag::REPORTED != 0 {
            // Probes and backends do not speak for a network; a client speaks once.
            self.counters.inc(Counter::NetReportIgnored);
            return;
        }
        conn.flags |= flag::REPORTED;
        let Some(user) = conn.user.as_deref() else {
            return;
        };
        let reporter = reporter_id(user);
        self.priors.report(now.ms, network, reporter, learned_ms);
        if self.shards > 1 {
            if self.reports.len() < MAX_REPORTS_PER_TICK {
                self.reports.push((network, reporter, learned_ms));
            } else {
                self.counters.inc(Counter::NetReportNotShared);
            }
        }
    }

    /// Sends the reports of this tick to the other shards, one message each.
    pub(super) fn share_reports(&mut self) {
        if self.reports.is_empty() {
            return;
        }
        let reports: std::sync::Arc<[_]> = self.reports.drain(..).collect();
        for to in (0..self.shards).filter(|&s| s != self.me) {
            let msg = ShardMsg::NetReports(std::sync::Arc::clone(&reports));
            self.out.push(Command::Post(Post::Shard {
                to,
                msg,
                parked: false,
            }));
        }
    }

    /// Files a report another shard received.
    pub(super) fn on_shared_report(
        &mut self,
        network: NetworkId,
        reporter: u64,
        learned_ms: u32,
        now: Now,
    ) {
        self.priors.report(now.ms, network, reporter, learned_ms);
    }

    /// Sends connection `id` to shard `home` with its session and unread bytes.
    fn hand_over(
        &mut self,
        id: ConnId,
        home: usize,
        login: LoginInfo,
        rest: Option<&mut BytesMut>,
    ) -> Flow {
        let conn = self.conns.remove(id.key);
        debug_assert_eq!(conn.flags & (flag::SENDING | flag::MULTISHOT), 0);
        // The address's count moves with the connection.
        self.admission.on_close(conn.peer);
        if let Some(ext) = conn.ext.as_ref() {
            self.buffered -= ext.accounted;
        }
        let mut bytes = rest.map(|b| b.split()).unwrap_or_default();
        if let Some(ext) = conn.ext {
            // Unread input only: nothing was written to a connection that is not accepted.
            let mut all = ext.partial;
            all.extend_from_slice(&bytes);
            bytes = all;
        }
        let transfer = Transfer {
            session: conn.session,
            user: login.user,
            device: login.device,
            network_key: login.network_key,
            rest: bytes.freeze(),
            peer: conn.peer,
        };
        self.counters.inc(Counter::HandoverOut);
        self.out.push(Command::HandOver {
            conn: id,
            to: home,
            transfer: Box::new(transfer),
        });
        Flow::Gone
    }

    /// Takes over a connection another shard moved here (this is its user's home). When the
    /// shard is full, returns the bytes that close it `Overloaded`, for the driver to write
    /// before it closes the socket; once the drain has closed its own sessions, the bytes that
    /// close it `ServerShutdown`. During the drain's window it is adopted, and its `LoginOk` is
    /// followed by a `GoAway` like every login's then.
    pub fn adopt(&mut self, transfer: Transfer, now: Now) -> Result<ConnId, bytes::Bytes> {
        self.clock = now;
        if self.drain_closed() {
            return Err(self.refuse_transfer(transfer, CloseCode::ServerShutdown));
        }
        if self.conns.len() >= self.cfg.max_connections {
            return Err(self.refuse_transfer(transfer, CloseCode::Overloaded));
        }
        self.counters.inc(Counter::HandoverIn);
        let Transfer {
            session,
            user,
            device,
            network_key,
            rest,
            peer,
        } = transfer;
        // Inserted before the old device is kicked, so the two never share a slab key within
        // one call (the driver's descriptor table is keyed by it).
        let id = self.conns.insert(session);
        self.conns.at(id.key).peer = peer;
        self.admission.on_adopt(peer, now.ms);
        self.register(id, &user, &device, now);
        self.counters.inc(Counter::LoggedIn);
        self.accept(id.key, &network_key, now);
        self.arm_recv(id);
        // Verified on a shard that had not taken the latest reload yet.
        self.revoke_if_withdrawn(id, now);
        if self.drive(id, now, None) == Flow::Gone {
            return Ok(id);
        }
        if !rest.is_empty() {
            self.on_bytes(id, &rest, now);
        }
        Ok(id)
    }

    /// The mesh would not take the hand-over of a connection (its home shard's channel was
    /// full): counted, and the bytes that refuse it `Overloaded` are returned, for the driver
    /// to write before it closes the socket.
    pub fn on_handover_refused(&mut self, transfer: Transfer) -> bytes::Bytes {
        self.counters.inc(Counter::HandoverRefused);
        self.refuse_transfer(transfer, tether_proto::CloseCode::Overloaded)
    }

    /// A connection moved here that the driver has no room for (its ring's file table is
    /// full; the driver counts why): the bytes that refuse it `Overloaded`, as [`Core::adopt`]
    /// returns them when the shard is full, for the driver to write before it closes the
    /// socket.
    pub fn on_adoption_refused(&mut self, transfer: Transfer) -> bytes::Bytes {
        self.refuse_transfer(transfer, tether_proto::CloseCode::Overloaded)
    }
}

/// Whether `conn` is a backend connection that takes upstream messages.
fn conn_is_upstream_backend(conn: &super::Conn) -> bool {
    conn.kind == Kind::Backend && conn.flags & flag::UPSTREAM != 0
}
