//! A session's events: what the shard does after the session handled a frame or a timeout.

use bytes::BytesMut;
use tether_proto::session::Event;

use super::login::LoginInfo;
use super::msg::{ConnOrigin, Origin, Sent};
use super::{ConnId, Core, Flow, Now};

impl Core {
    /// Acts on the session's events, writes its frames, closes it when finished and re-arms
    /// its timer. `rest` is the undecoded input after the current frame (it travels with a
    /// connection that moves to its home shard).
    pub(super) fn drive(&mut self, id: ConnId, now: Now, mut rest: Option<&mut BytesMut>) -> Flow {
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                return Flow::Gone;
            };
            let Some(event) = conn.session.poll_event() else {
                break;
            };
            match event {
                Event::LoggedIn {
                    principal,
                    user,
                    device,
                    probe,
                    network_key,
                    upstream,
                } => {
                    self.login_ok();
                    let login = LoginInfo {
                        principal,
                        user,
                        device,
                        network_key,
                        probe,
                        upstream,
                    };
                    if self.on_logged_in(id, login, now, rest.as_deref_mut()) == Flow::Gone {
                        return Flow::Gone;
                    }
                }
                Event::Send(send) => self.on_send(id, send, now),
                Event::BackendPush(push) => {
                    let origin = Origin::Conn(ConnOrigin {
                        conn: self.node_key(id),
                        sent: Sent::BackendPush,
                        id: push.id,
                    });
                    let want_ack = push.flags & tether_proto::push_flags::WANT_ACK != 0;
                    self.route(origin, push.user, push.payload, want_ack, None, now);
                }
                Event::PushAck(ack) => self.on_ack(id, ack.id, now),
                Event::Upstream(up) => self.on_upstream(id, up, now),
                Event::UpstreamAnswer(answer) => self.on_upstream_answer(id, answer, now),
                Event::Refresh(refresh) => self.on_refresh(id, refresh, now),
                Event::NetReport {
                    network,
                    learned_ms,
                } => self.on_net_report(id.key, network, learned_ms, now),
                Event::Closed { code, by_peer } => {
                    self.counters.close(code, by_peer);
                    self.login_closed(id.key, code, by_peer, now);
                    self.unregister(id.key);
                }
            }
        }
        self.flush(id, now)
    }
}
