//! The protocols the loadgen speaks, behind one small surface the worker uses, so its epoll
//! loop is one path whichever server it measures.
//!
//! A [`Wire`] encodes what a connection sends (login, heartbeat, push, acknowledgement) into
//! the worker's output buffer and turns what the server sent into [`Inbound`] events. Each
//! protocol's bytes live in its own file: `tether.rs` (the gateway's own frames), `mqtt.rs`
//! (MQTT 3.1.1), `nats.rs` (the NATS client protocol).
//!
//! How each protocol plays the loadgen's roles:
//!
//! | role | tether | MQTT 3.1.1 | NATS |
//! |---|---|---|---|
//! | login | Login → LoginOk | CONNECT (client id = user, keep alive = interval) and SUBSCRIBE to topic = user → CONNACK, SUBACK | CONNECT, SUB subject = user, PING → PONG |
//! | heartbeat | Ping → Pong | PINGREQ → PINGRESP | PING → PONG |
//! | push | BackendPush → Push (+ PushAck), PushResult | PUBLISH QoS 0 to the user's topic | PUB to the user's subject |
//! | upstream sink login | Login (version 2, backend token, flag `UPSTREAM`) → LoginOk | CONNECT and SUBSCRIBE to `up/#` | CONNECT, SUB `up.*` in queue group `q`, PING → PONG |
//! | upstream | Upstream → UpstreamDeliver at a sink, UpstreamAnswer → UpstreamResult | PUBLISH QoS 0 to `up/<user>` → the sink | PUB to `up.<user>` → the sink |
//!
//! MQTT at QoS 0 and NATS have no per-message result, so the result latency of a push or an
//! upstream message exists for tether only; end-to-end latency (the stamp in the payload)
//! exists for all. An upstream message's sender is named by tether's `UpstreamDeliver` (user,
//! device, client id) or by the topic or subject it came on (its sequence number then travels
//! in the payload, `payload::stamp_seq`); user ids must not contain `/`, `.`, `#` or `*`.

pub mod mqtt;
pub mod nats;
pub mod tether;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tether_proto::{Frame, Ping, PushAck, PushStatus, UpstreamStatus};

pub use tether::Credentials;

/// MQTT: clients publish upstream messages to `up/<user>`; the sink subscribes to `up/#`.
pub const UPSTREAM_TOPIC_PREFIX: &str = "up/";
/// NATS: clients publish upstream messages to `up.<user>`; the sink subscribes to `up.*` in
/// the queue group [`UPSTREAM_QUEUE`].
pub const UPSTREAM_SUBJECT_PREFIX: &str = "up.";
/// The NATS queue group of the upstream sinks (several share the messages).
pub const UPSTREAM_QUEUE: &str = "q";

/// Which protocol a run speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// tether's own framing and tokens.
    Tether,
    /// MQTT 3.1.1 (mosquitto, rumqttd, ...).
    Mqtt,
    /// The NATS client protocol (nats-server).
    Nats,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tether => "tether",
            Protocol::Mqtt => "mqtt",
            Protocol::Nats => "nats",
        }
    }

    /// Whether the server answers every push with a result (tether's PushResult).
    pub fn push_has_result(self) -> bool {
        self == Protocol::Tether
    }

    /// Whether the server answers every upstream message with a result (tether's
    /// UpstreamResult, after the backend's answer).
    pub fn upstream_has_result(self) -> bool {
        self == Protocol::Tether
    }
}

/// What the server sent, as the worker needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// The login (with MQTT and NATS: the subscription too) is done. `shard`: the tether shard
    /// holding the connection, [`crate::payload::UNKNOWN_SHARD`] otherwise.
    Ready { shard: u8 },
    /// The answer to a heartbeat.
    Pong,
    /// A message pushed to this connection; `ack` is the id to acknowledge (tether only).
    Push { payload: Bytes, ack: Option<u64> },
    /// The result of a push this (backend) connection made.
    PushResult { id: u64, status: PushStatus },
    /// The result of a send this connection made.
    SendResult { id: u64, status: PushStatus },
    /// The result of an upstream message this (client) connection sent (tether only).
    UpstreamResult { id: u64, status: UpstreamStatus },
    /// A client's upstream message reaching this sink connection. tether: an UpstreamDeliver
    /// with its id to answer (`answer`), the sender as the server authenticated it and its
    /// client id. MQTT and NATS: a message on the upstream topic or subject, whose sender is
    /// the topic's last level (`device` empty) and whose sequence number is in the payload.
    Upstream {
        answer: Option<u64>,
        user: String,
        device: String,
        client_id: Option<u64>,
        payload: Bytes,
    },
    /// The server's own heartbeat, which must be answered (NATS servers ping their clients).
    ServerPing,
    /// Nothing for the worker (a CONNACK before the SUBACK, INFO, +OK).
    Nothing,
    /// The server ended the session, refused it, or said something out of place: why.
    Closed(String),
    /// The server asked the client to go and come back after a random delay inside
    /// `window_ms` (tether's `GoAway`: a drain or a back-off refusal).
    GoAway { why: String, window_ms: u32 },
}

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    TetherEncode(#[from] tether_proto::EncodeError),
    #[error(transparent)]
    TetherDecode(#[from] tether_proto::DecodeError),
    #[error(transparent)]
    MqttEncode(#[from] mqtt::EncodeError),
    #[error(transparent)]
    MqttDecode(#[from] mqtt::DecodeError),
    #[error(transparent)]
    NatsDecode(#[from] nats::DecodeError),
    #[error("token: {0}")]
    Token(String),
    #[error("{0} has no {1}")]
    Unsupported(&'static str, &'static str),
}

/// One worker's protocol: what it needs to encode logins and the rules it decodes by.
#[derive(Debug)]
pub struct Wire {
    /// Which protocol.
    protocol: Protocol,
    /// Token minting (tether only: MQTT and NATS peers run without authentication).
    creds: Option<Credentials>,
    /// MQTT keep alive announced in CONNECT, seconds: the heartbeat interval rounded up, as
    /// tether's login announces the interval as its first lease.
    keep_alive_s: u16,
}

/// The SUBSCRIBE packet id (one subscription per connection) and the NATS subscription id.
const SUBSCRIPTION_ID: u16 = 1;
/// MQTT's `up/#` and NATS's `up.*`: every upstream topic or subject.
const UPSTREAM_FILTER_MQTT: &str = "up/#";
const UPSTREAM_FILTER_NATS: &str = "up.*";

impl Wire {
    /// `secret` (clients), `backend_secret` and `token_ttl_s` sign tether logins;
    /// `interval_ms` is the heartbeat interval.
    pub fn new(
        protocol: Protocol,
        secret: &str,
        backend_secret: &str,
        token_ttl_s: u64,
        interval_ms: u32,
    ) -> anyhow::Result<Wire> {
        let creds = match protocol {
            Protocol::Tether => Some(Credentials::new(secret, backend_secret, token_ttl_s)?),
            Protocol::Mqtt | Protocol::Nats => None,
        };
        let keep_alive_s = u64::from(interval_ms).div_ceil(1000).clamp(1, 65_535) as u16;
        Ok(Wire {
            protocol,
            creds,
            keep_alive_s,
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    fn creds(&self) -> &Credentials {
        self.creds
            .as_ref()
            .expect("a tether Wire always has credentials")
    }

    /// What a connection sends first: tether's Login (a client of `user` on `device`, or a
    /// backend when `backend`), MQTT's CONNECT and SUBSCRIBE to `user`, or NATS's CONNECT, SUB
    /// to `user` and a PING whose PONG says both were processed.
    pub fn login(
        &self,
        user: &str,
        device: &str,
        backend: bool,
        heartbeat_ms: u32,
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        match self.protocol {
            Protocol::Tether => {
                let frame = if backend {
                    self.creds().backend_login(user, heartbeat_ms, false)
                } else {
                    self.creds().client_login(user, device, heartbeat_ms)
                }
                .map_err(|e| WireError::Token(e.to_string()))?;
                tether::encode(&frame, out)?;
            }
            Protocol::Mqtt => {
                // A client may send further packets right after CONNECT without waiting for
                // the CONNACK (MQTT 3.1.1 §3.1.4).
                mqtt::connect(user, self.keep_alive_s, out)?;
                mqtt::subscribe(SUBSCRIPTION_ID, &[(user, 0)], out)?;
            }
            Protocol::Nats => {
                nats::connect(user, out);
                nats::sub(user, &SUBSCRIPTION_ID.to_string(), out);
                nats::ping(out);
            }
        }
        Ok(())
    }

    /// What an upstream sink connection named `service` sends first: tether's backend Login
    /// with the `UPSTREAM` flag (version 2), MQTT's CONNECT and SUBSCRIBE to `up/#`, or NATS's
    /// CONNECT, SUB to `up.*` in the sinks' queue group and a PING.
    pub fn sink_login(
        &self,
        service: &str,
        heartbeat_ms: u32,
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        match self.protocol {
            Protocol::Tether => {
                let frame = self
                    .creds()
                    .backend_login(service, heartbeat_ms, true)
                    .map_err(|e| WireError::Token(e.to_string()))?;
                tether::encode(&frame, out)?;
            }
            Protocol::Mqtt => {
                mqtt::connect(service, self.keep_alive_s, out)?;
                mqtt::subscribe(SUBSCRIPTION_ID, &[(UPSTREAM_FILTER_MQTT, 0)], out)?;
            }
            Protocol::Nats => {
                nats::connect(service, out);
                nats::sub_queue(
                    UPSTREAM_FILTER_NATS,
                    UPSTREAM_QUEUE,
                    &SUBSCRIPTION_ID.to_string(),
                    out,
                );
                nats::ping(out);
            }
        }
        Ok(())
    }

    /// A heartbeat announcing `lease_ms` (tether; the others have no per-ping lease).
    pub fn ping(&self, lease_ms: u32, out: &mut BytesMut) -> Result<(), WireError> {
        match self.protocol {
            Protocol::Tether => tether::encode(&Frame::Ping(Ping { lease_ms }), out)?,
            Protocol::Mqtt => mqtt::pingreq(out),
            Protocol::Nats => nats::ping(out),
        }
        Ok(())
    }

    /// The answer to [`Inbound::ServerPing`].
    pub fn pong(&self, out: &mut BytesMut) -> Result<(), WireError> {
        match self.protocol {
            Protocol::Nats => nats::pong(out),
            Protocol::Tether | Protocol::Mqtt => {
                return Err(WireError::Unsupported(self.protocol.name(), "server ping"))
            }
        }
        Ok(())
    }

    /// A push from a backend connection to `user`, with push id `id` (tether's result key).
    pub fn push(
        &self,
        id: u64,
        user: &str,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        match self.protocol {
            Protocol::Tether => tether::encode(
                &Frame::BackendPush(tether_proto::BackendPush {
                    id,
                    flags: 0,
                    user: user.to_string(),
                    payload: Bytes::copy_from_slice(payload),
                }),
                out,
            )?,
            Protocol::Mqtt => mqtt::publish(user, 0, 0, payload, out)?,
            Protocol::Nats => nats::publish(user, payload, out),
        }
        Ok(())
    }

    /// A user-to-user message with client id `id` (tether only).
    pub fn send(
        &self,
        id: u64,
        to: &str,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        match self.protocol {
            Protocol::Tether => tether::encode(
                &Frame::Send(tether_proto::Send {
                    to: to.to_string(),
                    client_id: id,
                    payload: Bytes::copy_from_slice(payload),
                }),
                out,
            )?,
            Protocol::Mqtt | Protocol::Nats => {
                return Err(WireError::Unsupported(self.protocol.name(), "send"))
            }
        }
        Ok(())
    }

    /// A client's message to the app's backend with client id `id` (tether's result key and
    /// the sequence the sink checks), from `user`: tether's Upstream, or a publish at QoS 0 to
    /// `up/<user>` (MQTT) or `up.<user>` (NATS).
    pub fn upstream(
        &self,
        id: u64,
        user: &str,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        match self.protocol {
            Protocol::Tether => tether::encode(
                &Frame::Upstream(tether_proto::Upstream {
                    client_id: id,
                    flags: 0,
                    payload: Bytes::copy_from_slice(payload),
                }),
                out,
            )?,
            Protocol::Mqtt => mqtt::publish(
                &format!("{UPSTREAM_TOPIC_PREFIX}{user}"),
                0,
                0,
                payload,
                out,
            )?,
            Protocol::Nats => {
                nats::publish(&format!("{UPSTREAM_SUBJECT_PREFIX}{user}"), payload, out)
            }
        }
        Ok(())
    }

    /// A sink's answer to [`Inbound::Upstream`]'s `answer` id: taken, no reply (tether only:
    /// the others' messages want none).
    pub fn upstream_answer(&self, id: u64, out: &mut BytesMut) -> Result<(), WireError> {
        match self.protocol {
            Protocol::Tether => tether::encode(
                &Frame::UpstreamAnswer(tether_proto::UpstreamAnswer {
                    id,
                    accepted: true,
                    reply: Bytes::new(),
                }),
                out,
            )?,
            Protocol::Mqtt | Protocol::Nats => {
                return Err(WireError::Unsupported(
                    self.protocol.name(),
                    "upstream answer",
                ))
            }
        }
        Ok(())
    }

    /// The acknowledgement of [`Inbound::Push`]'s `ack` id (tether only: the others' pushes
    /// carry none).
    pub fn push_ack(&self, id: u64, out: &mut BytesMut) -> Result<(), WireError> {
        tether::encode(&Frame::PushAck(PushAck { id }), out)?;
        Ok(())
    }

    /// Takes the next whole message off the front of `buf` (`Ok(None)`: incomplete, nothing
    /// consumed). `logging_in` says whether the connection's login is still unanswered, which
    /// is how a NATS PONG is told apart from the end of a login.
    pub fn decode(
        &self,
        buf: &mut BytesMut,
        max: usize,
        logging_in: bool,
    ) -> Result<Option<Inbound>, WireError> {
        Ok(match self.protocol {
            Protocol::Tether => tether::decode(buf, max)?.map(tether::inbound),
            Protocol::Mqtt => mqtt::decode(buf, max)?.map(mqtt_inbound),
            Protocol::Nats => nats::decode(buf, max)?.map(|op| nats_inbound(op, logging_in)),
        })
    }
}

/// What an MQTT packet means to the worker.
fn mqtt_inbound(packet: mqtt::Packet) -> Inbound {
    use mqtt::Packet;
    match packet {
        Packet::ConnAck { return_code: 0, .. } => Inbound::Nothing,
        Packet::ConnAck { return_code, .. } => {
            Inbound::Closed(format!("CONNACK refused: return code {return_code}"))
        }
        Packet::SubAck { return_codes, .. } if return_codes.iter().all(|&c| c <= 2) => {
            Inbound::Ready {
                shard: crate::payload::UNKNOWN_SHARD,
            }
        }
        Packet::SubAck { .. } => Inbound::Closed("SUBACK refused the subscription".into()),
        Packet::Publish { topic, payload, .. } => match topic.strip_prefix(UPSTREAM_TOPIC_PREFIX) {
            Some(user) => upstream_from_topic(user, payload),
            None => Inbound::Push { payload, ack: None },
        },
        Packet::PingResp => Inbound::Pong,
        Packet::Other(kind) => Inbound::Closed(format!("unexpected MQTT packet type {kind}")),
    }
}

/// An upstream message that came to the sink on `user`'s topic or subject: no id to answer, the
/// sequence number in the payload.
fn upstream_from_topic(user: &str, payload: Bytes) -> Inbound {
    Inbound::Upstream {
        answer: None,
        user: user.to_string(),
        device: String::new(),
        client_id: None,
        payload,
    }
}

/// What a NATS operation means to the worker.
fn nats_inbound(op: nats::ServerOp, logging_in: bool) -> Inbound {
    use nats::ServerOp;
    match op {
        ServerOp::Pong if logging_in => Inbound::Ready {
            shard: crate::payload::UNKNOWN_SHARD,
        },
        ServerOp::Pong => Inbound::Pong,
        ServerOp::Ping => Inbound::ServerPing,
        ServerOp::Msg {
            subject, payload, ..
        } => match subject.strip_prefix(UPSTREAM_SUBJECT_PREFIX) {
            Some(user) => upstream_from_topic(user, payload),
            None => Inbound::Push { payload, ack: None },
        },
        ServerOp::Info(_) | ServerOp::Ok => Inbound::Nothing,
        ServerOp::Err(text) => Inbound::Closed(format!("-ERR {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_login_is_connect_then_subscribe_and_ready_on_suback() {
        let wire = Wire::new(Protocol::Mqtt, "", "", 0, 10_000).unwrap();
        let mut out = BytesMut::new();
        wire.login("u7", "d0", false, 10_000, &mut out).unwrap();
        let mut expect = BytesMut::new();
        mqtt::connect("u7", 10, &mut expect).unwrap();
        mqtt::subscribe(1, &[("u7", 0)], &mut expect).unwrap();
        assert_eq!(out, expect);
        let mut inbound = BytesMut::from(&[0x20, 2, 0, 0, 0x90, 3, 0, 1, 0][..]);
        assert_eq!(
            wire.decode(&mut inbound, 1024, true).unwrap(),
            Some(Inbound::Nothing)
        );
        assert!(matches!(
            wire.decode(&mut inbound, 1024, true).unwrap(),
            Some(Inbound::Ready { .. })
        ));
        let mut refused = BytesMut::from(&[0x20, 2, 0, 5][..]);
        assert!(matches!(
            wire.decode(&mut refused, 1024, true).unwrap(),
            Some(Inbound::Closed(_))
        ));
    }

    #[test]
    fn nats_pong_ends_the_login_then_answers_pings() {
        let wire = Wire::new(Protocol::Nats, "", "", 0, 10_000).unwrap();
        let mut out = BytesMut::new();
        wire.login("u7", "d0", false, 10_000, &mut out).unwrap();
        assert!(out.starts_with(b"CONNECT {"));
        assert!(out.ends_with(b"}\r\nSUB u7 1\r\nPING\r\n"), "{out:?}");
        let mut pong = BytesMut::from(&b"PONG\r\nPONG\r\nPING\r\n"[..]);
        assert!(matches!(
            wire.decode(&mut pong, 1024, true).unwrap(),
            Some(Inbound::Ready { .. })
        ));
        assert_eq!(
            wire.decode(&mut pong, 1024, false).unwrap(),
            Some(Inbound::Pong)
        );
        assert_eq!(
            wire.decode(&mut pong, 1024, false).unwrap(),
            Some(Inbound::ServerPing)
        );
    }

    #[test]
    fn keep_alive_rounds_the_interval_up_to_whole_seconds() {
        assert_eq!(
            Wire::new(Protocol::Mqtt, "", "", 0, 10_000)
                .unwrap()
                .keep_alive_s,
            10
        );
        assert_eq!(
            Wire::new(Protocol::Mqtt, "", "", 0, 200)
                .unwrap()
                .keep_alive_s,
            1
        );
        assert_eq!(
            Wire::new(Protocol::Mqtt, "", "", 0, u32::MAX)
                .unwrap()
                .keep_alive_s,
            65_535
        );
    }

    #[test]
    fn upstream_on_each_protocol() {
        let wire = Wire::new(Protocol::Nats, "", "", 0, 10_000).unwrap();
        let mut out = BytesMut::new();
        wire.sink_login("sink-0", 10_000, &mut out).unwrap();
        assert!(out.ends_with(b"}\r\nSUB up.* q 1\r\nPING\r\n"), "{out:?}");
        out.clear();
        wire.upstream(3, "u9", b"hi", &mut out).unwrap();
        assert_eq!(&out[..], b"PUB up.u9 2\r\nhi\r\n");
        assert!(wire.upstream_answer(1, &mut out).is_err());
        let mut msg = BytesMut::from(&b"MSG up.u9 1 2\r\nhi\r\nMSG u9 1 2\r\nyo\r\n"[..]);
        assert_eq!(
            wire.decode(&mut msg, 1024, false).unwrap(),
            Some(Inbound::Upstream {
                answer: None,
                user: "u9".into(),
                device: String::new(),
                client_id: None,
                payload: Bytes::from_static(b"hi"),
            })
        );
        assert!(matches!(
            wire.decode(&mut msg, 1024, false).unwrap(),
            Some(Inbound::Push { .. })
        ));

        let wire = Wire::new(Protocol::Mqtt, "", "", 0, 10_000).unwrap();
        let mut out = BytesMut::new();
        wire.sink_login("sink-0", 10_000, &mut out).unwrap();
        let mut expect = BytesMut::new();
        mqtt::connect("sink-0", 10, &mut expect).unwrap();
        mqtt::subscribe(1, &[("up/#", 0)], &mut expect).unwrap();
        assert_eq!(out, expect);
        let mut publish = BytesMut::new();
        mqtt::publish("up/u4", 0, 0, b"x", &mut publish).unwrap();
        out.clear();
        wire.upstream(1, "u4", b"x", &mut out).unwrap();
        assert_eq!(out, publish);
        assert!(matches!(
            wire.decode(&mut publish, 1024, false).unwrap(),
            Some(Inbound::Upstream { user, .. }) if user == "u4"
        ));
        assert!(!Protocol::Mqtt.upstream_has_result());
        assert!(Protocol::Tether.upstream_has_result());
    }

    #[test]
    fn tether_upstream_frames_are_version_2() {
        let wire = Wire::new(
            Protocol::Tether,
            "client-secret-0123456789",
            "backend-secret-0123456789",
            60,
            10_000,
        )
        .unwrap();
        let mut out = BytesMut::new();
        wire.sink_login("sink-0", 10_000, &mut out).unwrap();
        match tether_proto::decode_version(&mut out, 4096, 2).unwrap() {
            Some(Frame::Login(l)) => {
                assert_eq!(l.version, 2);
                assert_eq!(l.flags, tether_proto::login_flags::UPSTREAM);
                assert_eq!(l.user, "sink-0");
            }
            other => panic!("{other:?}"),
        }
        wire.upstream(7, "u1", b"hi bob", &mut out).unwrap();
        // The golden row `upstream` of docs/protocol.md.
        assert_eq!(
            &out[..],
            [0x12, 0x08, 0x07, 0x00, b'h', b'i', b' ', b'b', b'o', b'b']
        );
        out.clear();
        wire.upstream_answer(1, &mut out).unwrap();
        assert_eq!(&out[..], [0x15, 0x02, 0x01, 0x01]);
        // upstream-deliver and upstream-result-no-backend, then an extension frame.
        let mut inbound = BytesMut::from(
            &[
                0x14, 0x15, 0x01, 0x05, b'a', b'l', b'i', b'c', b'e', 0x05, b'p', b'h', b'o', b'n',
                b'e', 0x2a, 0x07, b'h', b'i', b' ', b'b', b'o', b'b', 0x13, 0x03, 0x08, 0x01, 0x0a,
                0x40, 0x01, 0x00,
            ][..],
        );
        assert_eq!(
            wire.decode(&mut inbound, 4096, false).unwrap(),
            Some(Inbound::Upstream {
                answer: Some(1),
                user: "alice".into(),
                device: "phone".into(),
                client_id: Some(7),
                payload: Bytes::from_static(b"hi bob"),
            })
        );
        assert_eq!(
            wire.decode(&mut inbound, 4096, false).unwrap(),
            Some(Inbound::UpstreamResult {
                id: 8,
                status: UpstreamStatus::Refused(tether_proto::RefuseReason::NoBackend),
            })
        );
        assert_eq!(
            wire.decode(&mut inbound, 4096, false).unwrap(),
            Some(Inbound::Nothing)
        );
    }

    #[test]
    fn peers_push_without_results() {
        assert!(Protocol::Tether.push_has_result());
        assert!(!Protocol::Mqtt.push_has_result());
        let wire = Wire::new(Protocol::Nats, "", "", 0, 10_000).unwrap();
        let mut out = BytesMut::new();
        wire.push(9, "u3", b"hi", &mut out).unwrap();
        assert_eq!(&out[..], b"PUB u3 2\r\nhi\r\n");
        assert!(wire.send(1, "u3", b"hi", &mut out).is_err());
    }
}
