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
//!
//! MQTT at QoS 0 and NATS have no per-message result, so a push's result latency exists for
//! tether only; end-to-end latency (the stamp in the payload) exists for all.

pub mod mqtt;
pub mod nats;
pub mod tether;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tether_proto::{Frame, Ping, PushAck, PushStatus};

pub use tether::Credentials;

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
                    self.creds().backend_login(user, heartbeat_ms)
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
        Packet::Publish { payload, .. } => Inbound::Push { payload, ack: None },
        Packet::PingResp => Inbound::Pong,
        Packet::Other(kind) => Inbound::Closed(format!("unexpected MQTT packet type {kind}")),
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
        ServerOp::Msg { payload, .. } => Inbound::Push { payload, ack: None },
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
