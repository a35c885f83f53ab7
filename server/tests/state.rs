//! The shard's core without sockets: sessions, timers and pushes on a virtual clock, driven
//! through the same commands the server's ring driver carries out.

use bytes::Bytes;
use bytes::BytesMut;
use std::collections::HashMap;
use tether_proto::session::SessionConfig;
use tether_proto::token::{KeyId, KeyRing, Minter, Secret, Verifier};
use tether_proto::{
    codec, login_flags, push_flags, BackendPush, CloseCode, Frame, Login, Ping, PushStatus,
    RefuseReason, Upstream, UpstreamAnswer, UpstreamDeliver, UpstreamStatus, PROTOCOL_V1,
    PROTOCOL_V2, PROTOCOL_VERSION,
};
use tether_server::core::sim::SimDriver;
use tether_server::core::{ConnId, Core, Now, ShardConfig};
use tether_server::counters::Counter;

const SECRET: &[u8] = b"state-test-secret-0123456789";
const BACKEND_SECRET: &[u8] = b"state-test-backend-secret-0123456789";
const UNIX: u64 = 1_700_000_000;

fn config() -> ShardConfig {
    config_with_budget(1 << 30)
}

fn config_with_budget(max_buffered_bytes: usize) -> ShardConfig {
    ShardConfig {
        session: SessionConfig {
            login_timeout_ms: 5_000,
            min_lease_ms: 1_000,
            max_lease_ms: 600_000,
            lease_multiplier_pct: 150,
            grace_ms: 1_000,
            max_frame: 65_536,
            token_notice_s: 30,
        },
        max_frame: 65_536,
        max_login_frame: 1_024,
        max_connections: 1_000,
        max_queue_bytes: 65_536,
        max_buffered_bytes,
        write_timeout_ms: 10_000,
        linger_ms: 1_000,
        tick_ms: 10,
        server_epoch: 1,
        max_ack_waiting: 100,
        ack_timeout_ms: 60_000,
        max_retry: 100,
        revoked_grace_s: 60,
        frame_budget: 64,
        client_frame_rate: 0,
        backend_max_in_flight: 0,
        priors: Default::default(),
        upstream: Default::default(),
        // The send tests below see what a sender is told when presence is revealed.
        send: tether_server::upstream::SendConfig {
            enabled: true,
            reveal_presence: true,
        },
        cluster: None,
    }
}

/// A one-shard core with a virtual clock and a socket-less driver that keeps what is written.
/// Connections are named by small integers, as descriptors would be.
struct Harness {
    state: Core,
    io: SimDriver,
    now: u64,
    /// Connection of each name.
    conns: HashMap<i32, ConnId>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(config())
    }

    fn with(cfg: ShardConfig) -> Harness {
        Harness::shard(cfg, 0, 1)
    }

    /// Shard `me` of `shards`: what it posts to the others stays in `io.posted`.
    fn shard(cfg: ShardConfig, me: usize, shards: usize) -> Harness {
        let ring = |s: &[u8]| KeyRing::new(&Secret::new(s.to_vec()).unwrap(), None);
        let auth = Box::new(Verifier::new(ring(SECRET), ring(BACKEND_SECRET)));
        let state = Core::new(cfg, auth, me, shards, 0);
        let io = SimDriver {
            keep_sent: true,
            ..SimDriver::default()
        };
        Harness {
            state,
            io,
            now: 0,
            conns: HashMap::new(),
        }
    }

    fn now(&self) -> Now {
        Now {
            ms: self.now,
            us: self.now * 1000,
            unix: UNIX + self.now / 1000,
        }
    }

    fn id(&self, name: i32) -> ConnId {
        self.conns[&name]
    }

    fn open(&mut self, name: i32) {
        let now = self.now();
        let id = self.state.open(now).unwrap();
        self.io.run(&mut self.state, now);
        self.conns.insert(name, id);
    }

    fn feed_bytes(&mut self, name: i32, bytes: &[u8]) {
        let id = self.id(name);
        let now = self.now();
        self.state.on_bytes(id, bytes, now);
        self.io.run(&mut self.state, now);
        self.state.end_batch(now);
        self.io.run(&mut self.state, now);
    }

    fn feed(&mut self, name: i32, frame: &Frame) {
        let mut bytes = BytesMut::new();
        codec::encode(frame, &mut bytes).unwrap();
        self.feed_bytes(name, &bytes);
    }

    fn hang_up(&mut self, name: i32) {
        let id = self.id(name);
        let now = self.now();
        self.state.on_hangup(id, None, now);
        self.io.run(&mut self.state, now);
    }

    fn closed(&self, name: i32) -> bool {
        self.io.closed.contains(&self.id(name))
    }

    fn login(&mut self, name: i32, user: &str, device: &str, heartbeat_ms: u32) {
        self.open(name);
        let minter = Minter::new(&Secret::new(SECRET.to_vec()).unwrap());
        let token = minter.client(user, device, UNIX + 3600).unwrap();
        self.feed(name, &login(user, device, token, heartbeat_ms));
        assert!(matches!(self.frames(name).first(), Some(Frame::LoginOk(_))));
    }

    fn backend(&mut self, name: i32) {
        self.backend_with(name, PROTOCOL_VERSION, 0);
    }

    /// A backend connection of protocol `version` with login `flags`.
    fn backend_with(&mut self, name: i32, version: u8, flags: u8) {
        self.open(name);
        let minter = Minter::new(&Secret::new(BACKEND_SECRET.to_vec()).unwrap());
        let token = minter.backend("svc", UNIX + 3600).unwrap();
        let Frame::Login(mut l) = login("svc", "", token, 60_000) else {
            unreachable!()
        };
        l.version = version;
        l.flags = flags;
        self.feed(name, &Frame::Login(l));
        assert!(matches!(self.frames(name).first(), Some(Frame::LoginOk(_))));
    }

    /// A client main connection of protocol `version`.
    fn login_version(&mut self, name: i32, user: &str, device: &str, version: u8) {
        self.open(name);
        let minter = Minter::new(&Secret::new(SECRET.to_vec()).unwrap());
        let token = minter.client(user, device, UNIX + 3600).unwrap();
        let Frame::Login(mut l) = login(user, device, token, 60_000) else {
            unreachable!()
        };
        l.version = version;
        self.feed(name, &Frame::Login(l));
        assert!(matches!(self.frames(name).first(), Some(Frame::LoginOk(_))));
    }

    /// Frames written to `name` since the last call.
    fn frames(&mut self, name: i32) -> Vec<Frame> {
        let id = self.id(name);
        let mut out = Vec::new();
        if let Some(buf) = self.io.sent.get_mut(&id) {
            while let Some(f) = codec::decode_version(buf, 1 << 20, PROTOCOL_V2).unwrap() {
                out.push(f);
            }
        }
        out
    }

    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 10;
            let now = self.now();
            self.state.tick(now);
            self.io.run(&mut self.state, now);
        }
    }
}

fn login(user: &str, device: &str, token: String, heartbeat_ms: u32) -> Frame {
    Frame::Login(Login {
        version: PROTOCOL_VERSION,
        flags: 0,
        user: user.into(),
        device: device.into(),
        token,
        heartbeat_ms,
        network_key: String::new(),
    })
}

#[test]
fn heartbeats_keep_a_session_and_silence_ends_it() {
    let mut h = Harness::new();
    // Lease 2 s: idle window 2 × 1.5 + 1 = 4 s.
    h.login(3, "ann", "phone", 2_000);
    for _ in 0..10 {
        h.advance(2_000);
        h.feed(3, &Frame::Ping(Ping { lease_ms: 2_000 }));
        assert_eq!(
            h.frames(3),
            vec![Frame::Pong(tether_proto::Pong { deadline_ms: 4_000 })]
        );
    }
    assert_eq!(h.state.connections(), 1);
    h.advance(3_900);
    assert_eq!(h.state.connections(), 1, "closed before the deadline");
    h.advance(200);
    assert_eq!(h.state.connections(), 0, "not closed after the deadline");
    assert!(matches!(
        h.frames(3).last(),
        Some(Frame::Close(c)) if c.code == CloseCode::IdleTimeout
    ));
    assert!(h.closed(3));
    assert_eq!(h.state.counters().get(Counter::CloseIdle), 1);
}

#[test]
fn login_deadline_closes_a_silent_connection() {
    let mut h = Harness::new();
    h.open(4);
    h.advance(4_900);
    assert_eq!(h.state.connections(), 1);
    h.advance(200);
    assert_eq!(h.state.connections(), 0);
    assert_eq!(h.state.counters().get(Counter::CloseLoginTimeout), 1);
}

#[test]
fn relogin_replaces_and_pushes_reach_every_device() {
    let mut h = Harness::new();
    h.login(3, "bob", "phone", 60_000);
    h.login(4, "bob", "laptop", 60_000);
    h.login(5, "bob", "phone", 60_000);
    assert!(matches!(
        h.frames(3).last(),
        Some(Frame::Kick(k)) if k.reason == CloseCode::Replaced && !k.may_reconnect
    ));
    assert!(h.closed(3));
    h.backend(9);
    h.feed(
        9,
        &Frame::BackendPush(BackendPush {
            id: 77,
            flags: push_flags::WANT_ACK,
            user: "bob".into(),
            payload: bytes::Bytes::from_static(b"hi"),
        }),
    );
    let results = h.frames(9);
    assert!(matches!(
        results.as_slice(),
        [Frame::PushResult(r)] if r.id == 77 && r.status == PushStatus::Delivered(2)
    ));
    let id = match h.frames(4).as_slice() {
        [Frame::Push(p)] => p.id,
        other => panic!("{other:?}"),
    };
    assert_eq!(h.frames(5).len(), 1);
    h.feed(4, &Frame::PushAck(tether_proto::PushAck { id }));
    assert!(matches!(
        h.frames(9).as_slice(),
        [Frame::PushResult(r)] if r.id == 77 && r.status == PushStatus::Acked
    ));
    h.feed(
        9,
        &Frame::BackendPush(BackendPush {
            id: 78,
            flags: 0,
            user: "nobody".into(),
            payload: bytes::Bytes::from_static(b"hi"),
        }),
    );
    assert!(matches!(
        h.frames(9).as_slice(),
        [Frame::PushResult(r)] if r.status == PushStatus::Offline
    ));
}

#[test]
fn slow_consumer_is_closed_and_refused() {
    let mut h = Harness::new();
    h.login(3, "cat", "phone", 60_000);
    h.backend(9);
    // The device's socket takes nothing any more: everything queues until the bound.
    let id = h.id(3);
    h.io.stalled.insert(id);
    let mut statuses = Vec::new();
    for id in 0..10 {
        h.feed(
            9,
            &Frame::BackendPush(BackendPush {
                id,
                flags: 0,
                user: "cat".into(),
                payload: bytes::Bytes::from(vec![0u8; 20_000]),
            }),
        );
        for f in h.frames(9) {
            if let Frame::PushResult(r) = f {
                statuses.push(r.status);
            }
        }
    }
    assert_eq!(statuses.len(), 10, "one result per push: {statuses:?}");
    // The first push is in flight (20 kB) and never completes, the next three wait in the
    // queue (60 kB); the fifth passes the 64 KiB bound and the connection is cut. None of the
    // five left, so none is Delivered: each is refused as a slow consumer's. Later pushes
    // find the user offline.
    assert_eq!(
        &statuses[..5],
        &[PushStatus::Refused(RefuseReason::SlowConsumer); 5]
    );
    assert!(statuses[5..].iter().all(|s| *s == PushStatus::Offline));
    assert_eq!(h.state.counters().get(Counter::PushLostInFlight), 4);
    assert_eq!(h.state.counters().get(Counter::CloseSlowConsumer), 1);
}

#[test]
fn a_backend_past_its_in_flight_limit_is_refused_rate_limited_at_once() {
    let mut h = Harness::with(ShardConfig {
        backend_max_in_flight: 3,
        ..config()
    });
    h.login(3, "dan", "phone", 60_000);
    h.backend(9);
    // The device stops reading: every push to it waits for its bytes to leave.
    let phone = h.id(3);
    h.io.stalled.insert(phone);
    let push = |id| {
        Frame::BackendPush(BackendPush {
            id,
            flags: 0,
            user: "dan".into(),
            payload: Bytes::from_static(b"hi"),
        })
    };
    let results = |h: &mut Harness| -> Vec<(u64, PushStatus)> {
        h.frames(9)
            .into_iter()
            .filter_map(|f| match f {
                Frame::PushResult(r) => Some((r.id, r.status)),
                _ => None,
            })
            .collect()
    };
    for id in 0..5 {
        h.feed(9, &push(id));
    }
    let limited = PushStatus::Refused(RefuseReason::RateLimited);
    assert_eq!(
        results(&mut h),
        [(3, limited), (4, limited)],
        "three wait for the device; past them the backend hears at once"
    );
    assert_eq!(h.state.counters().get(Counter::PushRefusedRateLimited), 2);
    // The device reads again: the three are delivered, and the backend may push again.
    h.io.stalled.remove(&phone);
    let n = h.io.outstanding.remove(&phone).expect("a send waits");
    let now = h.now();
    h.state.on_sent(phone, Ok(n), now);
    h.io.run(&mut h.state, now);
    let delivered = PushStatus::Delivered(1);
    assert_eq!(
        results(&mut h),
        [(0, delivered), (1, delivered), (2, delivered)]
    );
    h.feed(9, &push(5));
    assert_eq!(results(&mut h), [(5, delivered)]);
}

#[test]
fn a_frame_then_end_of_stream_closes_at_once() {
    let mut h = Harness::new();
    h.login(3, "dan", "phone", 60_000);
    h.feed(3, &Frame::Ping(Ping { lease_ms: 60_000 }));
    h.hang_up(3);
    assert!(
        h.closed(3),
        "closed when the peer hung up, not at its deadline"
    );
    assert_eq!(h.state.connections(), 0);
    assert_eq!(h.state.users(), 0);
    assert_eq!(h.state.counters().get(Counter::ClosePeer), 1);
}

#[test]
fn only_a_recipient_may_acknowledge_a_push() {
    let mut h = Harness::new();
    h.login(3, "eve", "phone", 60_000);
    h.login(4, "fay", "phone", 60_000);
    h.backend(9);
    h.feed(
        9,
        &Frame::BackendPush(BackendPush {
            id: 5,
            flags: push_flags::WANT_ACK,
            user: "eve".into(),
            payload: bytes::Bytes::from_static(b"for eve"),
        }),
    );
    let push_id = match h.frames(3).as_slice() {
        [Frame::Push(p)] => p.id,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        h.frames(9).as_slice(),
        [Frame::PushResult(r)] if r.status == PushStatus::Delivered(1)
    ));
    // fay guesses eve's push id: no Acked for the backend, a protocol error for fay.
    h.feed(4, &Frame::PushAck(tether_proto::PushAck { id: push_id }));
    assert!(
        h.frames(9).is_empty(),
        "an ack from a non-recipient reached the backend"
    );
    assert_eq!(h.state.counters().get(Counter::AckNotRecipient), 1);
    assert!(h.closed(4));
    h.feed(3, &Frame::PushAck(tether_proto::PushAck { id: push_id }));
    assert!(matches!(
        h.frames(9).as_slice(),
        [Frame::PushResult(r)] if r.id == 5 && r.status == PushStatus::Acked
    ));
}

#[test]
fn before_login_a_frame_is_at_most_max_login_frame() {
    let mut h = Harness::new();
    h.open(3);
    // A Login whose length prefix says 60,000 bytes is refused from its header.
    let mut small = BytesMut::new();
    codec::encode(&login("gus", "phone", "t".into(), 60_000), &mut small).unwrap();
    // The Login type byte, then the varint 60,000 (0xE0 0xD4 0x03).
    h.feed_bytes(3, &[small[0], 0xE0, 0xD4, 0x03, 0, 0, 0]);
    assert!(h.closed(3));
    assert_eq!(h.state.counters().get(Counter::CloseProtocol), 1);
}

#[test]
fn a_partial_frame_is_kept_across_many_small_pieces() {
    let mut h = Harness::new();
    h.open(3);
    let minter = Minter::new(&Secret::new(SECRET.to_vec()).unwrap());
    let token = minter.client("hal", "phone", UNIX + 3600).unwrap();
    let mut bytes = BytesMut::new();
    codec::encode(&login("hal", "phone", token, 60_000), &mut bytes).unwrap();
    codec::encode(&Frame::Ping(Ping { lease_ms: 60_000 }), &mut bytes).unwrap();
    for b in bytes.chunks(1) {
        h.feed_bytes(3, b);
    }
    let frames = h.frames(3);
    assert!(
        matches!(frames.first(), Some(Frame::LoginOk(_))),
        "{frames:?}"
    );
    assert!(matches!(frames.get(1), Some(Frame::Pong(_))), "{frames:?}");
}

#[test]
fn a_flooding_connection_waits_its_turn_and_loses_nothing() {
    let mut h = Harness::new();
    h.open(3);
    let minter = Minter::new(&Secret::new(SECRET.to_vec()).unwrap());
    let token = minter.client("ivy", "phone", UNIX + 3600).unwrap();
    let mut ivy = login("ivy", "phone", token, 60_000);
    if let Frame::Login(l) = &mut ivy {
        l.network_key = "wifi:home".into();
    }
    h.feed(3, &ivy);
    assert!(matches!(h.frames(3).first(), Some(Frame::LoginOk(_))));
    h.login(4, "jon", "phone", 60_000);
    let mut flood = BytesMut::new();
    for _ in 0..1_000 {
        codec::encode(
            &Frame::NetReport(tether_proto::NetReport { learned_ms: 30_000 }),
            &mut flood,
        )
        .unwrap();
    }
    codec::encode(&Frame::Ping(Ping { lease_ms: 60_000 }), &mut flood).unwrap();
    let (a, b) = (h.id(3), h.id(4));
    let now = h.now();
    // One batch: the flood arrives first, then the other client's ping.
    h.state.on_bytes(a, &flood, now);
    let mut ping = BytesMut::new();
    codec::encode(&Frame::Ping(Ping { lease_ms: 60_000 }), &mut ping).unwrap();
    h.state.on_bytes(b, &ping, now);
    h.io.run(&mut h.state, now);
    assert!(matches!(h.frames(4).as_slice(), [Frame::Pong(_)]));
    assert!(
        h.frames(3).is_empty(),
        "the flood was handled past its budget"
    );
    assert_eq!(h.state.counters().get(Counter::Paused), 1);
    // The rest must not wait for an unrelated wakeup: the driver is told not to sleep.
    assert!(h.state.input_waiting());
    // Later batches handle the rest, in order: the flood's ping is answered at its end.
    let mut batches = 0;
    while h.state.input_waiting() {
        batches += 1;
        assert!(batches <= 100, "the flood is never handled to its end");
        h.state.end_batch(now);
        h.io.run(&mut h.state, now);
    }
    // 1,001 frames at 64 per batch (this harness's frame_budget): the batch above and 15 more.
    assert_eq!(batches, 15);
    assert!(matches!(h.frames(3).as_slice(), [Frame::Pong(_)]));
    assert_eq!(h.state.counters().get(Counter::NetReports), 1_000);
    assert_eq!(h.state.counters().get(Counter::NetReportIgnored), 999);
    assert_eq!(h.state.connections(), 2);
}

#[test]
fn the_shard_buffer_budget_bounds_partial_frames_together() {
    // 4 KiB for the whole shard: four connections holding 1,000 bytes of an unfinished Login
    // each fit, the fifth does not and is closed with Overloaded; the others stay.
    let mut h = Harness::with(config_with_budget(4_096));
    let mut small = BytesMut::new();
    codec::encode(&login("kim", "phone", "t".into(), 60_000), &mut small).unwrap();
    // The Login type byte and a length of 1,000 (0xE8 0x07), then 998 of those bytes.
    let mut partial = vec![small[0], 0xE8, 0x07];
    partial.resize(1_000, b'x');
    for name in 0..5 {
        h.open(name);
        h.feed_bytes(name, &partial);
    }
    for name in 0..4 {
        assert!(!h.closed(name), "connection {name} closed");
    }
    assert!(h.closed(4), "the connection past the budget stays");
    assert_eq!(h.state.counters().get(Counter::CloseBufferBudget), 1);
    assert_eq!(h.state.buffered(), 4_000);
}

#[test]
fn connections_are_tallied_by_state() {
    let mut h = Harness::new();
    h.open(1);
    h.login(2, "lea", "phone", 60_000);
    h.backend(3);
    assert_eq!(h.state.by_kind(), [1, 1, 0, 1]);
    h.hang_up(2);
    assert_eq!(h.state.by_kind(), [1, 0, 0, 1]);
    h.advance(6_000);
    // The silent one reached its login deadline.
    assert_eq!(h.state.by_kind(), [0, 0, 0, 1]);
}

#[test]
fn a_client_past_its_frame_rate_is_closed_and_a_backend_is_not() {
    let mut h = Harness::with(ShardConfig {
        client_frame_rate: 100,
        ..config()
    });
    h.login(1, "kai", "phone", 60_000);
    h.login(2, "lea", "phone", 60_000);
    h.backend(3);
    let reports = |n: usize| {
        let mut b = BytesMut::new();
        for _ in 0..n {
            codec::encode(
                &Frame::NetReport(tether_proto::NetReport { learned_ms: 0 }),
                &mut b,
            )
            .unwrap();
        }
        b
    };
    // The Login counted too: 99 more frames are within the second, the 101st is not.
    h.feed_bytes(1, &reports(99));
    assert!(!h.closed(1));
    h.advance(1_000);
    // lea sends 100 per second for three seconds and stays.
    for _ in 0..3 {
        h.feed_bytes(2, &reports(50));
        h.feed_bytes(2, &reports(50));
        h.advance(1_000);
    }
    assert!(!h.closed(2));
    h.feed_bytes(1, &reports(1));
    assert!(
        !h.closed(1),
        "the window ended with the tick past one second"
    );
    h.feed_bytes(1, &reports(200));
    assert!(h.closed(1), "101 frames in one window");
    assert!(h
        .frames(1)
        .iter()
        .any(|f| matches!(f, Frame::Close(c) if c.code == CloseCode::ProtocolError)));
    assert_eq!(h.state.counters().get(Counter::CloseFrameRate), 1);
    assert!(!h.closed(2));
    // A backend pipelines as much as it likes.
    let mut pushes = BytesMut::new();
    for id in 0..500u64 {
        codec::encode(
            &Frame::BackendPush(tether_proto::BackendPush {
                id,
                flags: 0,
                user: "lea".into(),
                payload: bytes::Bytes::from_static(b"x"),
            }),
            &mut pushes,
        )
        .unwrap();
    }
    let (b, now) = (h.id(3), h.now());
    h.state.on_bytes(b, &pushes, now);
    h.io.run(&mut h.state, now);
    while h.state.input_waiting() {
        h.state.end_batch(now);
        h.io.run(&mut h.state, now);
    }
    assert!(!h.closed(3));
    assert_eq!(h.state.counters().get(Counter::PushIn), 500);
}

fn upstream(client_id: u64, payload: &'static [u8]) -> Frame {
    Frame::Upstream(Upstream {
        client_id,
        flags: 0,
        payload: Bytes::from_static(payload),
    })
}

fn answer(id: u64, accepted: bool, reply: &'static [u8]) -> Frame {
    Frame::UpstreamAnswer(UpstreamAnswer {
        id,
        accepted,
        reply: Bytes::from_static(reply),
    })
}

/// The (client_id, status, reply) of every UpstreamResult among `frames`.
fn results(frames: &[Frame]) -> Vec<(u64, UpstreamStatus, Bytes)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::UpstreamResult(r) => Some((r.client_id, r.status, r.reply.clone())),
            _ => None,
        })
        .collect()
}

fn delivers(frames: Vec<Frame>) -> Vec<UpstreamDeliver> {
    frames
        .into_iter()
        .filter_map(|f| match f {
            Frame::UpstreamDeliver(d) => Some(d),
            _ => None,
        })
        .collect()
}

const REFUSED_NO_BACKEND: UpstreamStatus = UpstreamStatus::Refused(RefuseReason::NoBackend);
const REFUSED_TIMED_OUT: UpstreamStatus = UpstreamStatus::Refused(RefuseReason::TimedOut);

#[test]
fn upstream_messages_reach_the_backend_in_order_with_their_sender_and_each_gets_one_result() {
    let mut h = Harness::new();
    h.backend_with(1, PROTOCOL_V2, login_flags::UPSTREAM);
    h.login_version(2, "alice", "phone", PROTOCOL_V2);
    for id in 1..=3 {
        h.feed(2, &upstream(id, b"hello"));
    }
    let got = delivers(h.frames(1));
    assert_eq!(got.len(), 3);
    assert_eq!(
        got.iter().map(|d| d.client_id).collect::<Vec<_>>(),
        [1, 2, 3],
        "in the order sent"
    );
    assert!(got
        .iter()
        .all(|d| d.user == "alice" && d.device == "phone" && &d.payload[..] == b"hello"));
    assert_ne!(got[0].session_id, 0, "the sender's session id");
    assert!(
        h.frames(2).is_empty(),
        "no result before the backend answers"
    );

    h.feed(1, &answer(got[1].id, false, b"blocked"));
    h.feed(1, &answer(got[0].id, true, b"seq=1"));
    h.feed(1, &answer(got[2].id, true, b""));
    let r = results(&h.frames(2));
    assert_eq!(
        r,
        [
            (
                2,
                UpstreamStatus::Refused(RefuseReason::Rejected),
                Bytes::from_static(b"blocked")
            ),
            (1, UpstreamStatus::Accepted, Bytes::from_static(b"seq=1")),
            (3, UpstreamStatus::Accepted, Bytes::new()),
        ]
    );
    // A second answer to the same delivery is counted and ignored.
    h.feed(1, &answer(got[0].id, true, b""));
    assert!(h.frames(2).is_empty());
    assert_eq!(h.state.counters().get(Counter::UpstreamAnswerUnknown), 1);
    assert_eq!(h.state.counters().get(Counter::UpstreamAccepted), 2);
    assert_eq!(h.state.upstream_in_flight(), 0);
}

#[test]
fn without_a_backend_an_upstream_message_is_refused_at_once() {
    let mut h = Harness::new();
    h.login_version(2, "alice", "phone", PROTOCOL_V2);
    // A backend without the UPSTREAM flag, or of version 1, takes none.
    h.backend_with(3, PROTOCOL_V2, 0);
    h.backend_with(4, PROTOCOL_V1, login_flags::UPSTREAM);
    h.feed(2, &upstream(1, b"x"));
    assert_eq!(
        results(&h.frames(2)),
        [(1, REFUSED_NO_BACKEND, Bytes::new())]
    );
    assert!(delivers(h.frames(3)).is_empty() && delivers(h.frames(4)).is_empty());
}

#[test]
fn upstream_bounds_refuse_with_their_reason() {
    let mut cfg = config();
    cfg.upstream.max_in_flight_per_connection = 2;
    cfg.upstream.max_payload = 8;
    let mut h = Harness::with(cfg);
    h.backend_with(1, PROTOCOL_V2, login_flags::UPSTREAM);
    h.login_version(2, "alice", "phone", PROTOCOL_V2);
    h.feed(2, &upstream(1, b"123456789"));
    for id in 2..=4 {
        h.feed(2, &upstream(id, b"ok"));
    }
    let r = results(&h.frames(2));
    assert_eq!(
        r.iter().map(|(id, s, _)| (*id, *s)).collect::<Vec<_>>(),
        [
            (1, UpstreamStatus::Refused(RefuseReason::TooLarge)),
            (4, UpstreamStatus::Refused(RefuseReason::RateLimited)),
        ]
    );
    let got = delivers(h.frames(1));
    assert_eq!(got.iter().map(|d| d.client_id).collect::<Vec<_>>(), [2, 3]);
    // Once one is answered there is room again.
    h.feed(1, &answer(got[0].id, true, b""));
    h.feed(2, &upstream(5, b"ok"));
    assert_eq!(delivers(h.frames(1)).len(), 1);

    let mut off = config();
    off.upstream.sink = tether_server::upstream::Sink::Off;
    let mut h = Harness::with(off);
    h.backend_with(1, PROTOCOL_V2, login_flags::UPSTREAM);
    h.login_version(2, "alice", "phone", PROTOCOL_V2);
    h.feed(2, &upstream(1, b"x"));
    assert_eq!(
        results(&h.frames(2)),
        [(
            1,
            UpstreamStatus::Refused(RefuseReason::NotAllowed),
            Bytes::new()
        )]
    );
}

#[test]
fn an_unanswered_upstream_message_times_out_and_a_late_answer_is_ignored() {
    let mut cfg = config();
    cfg.upstream.timeout_ms = 500;
    let mut h = Harness::with(cfg);
    h.backend_with(1, PROTOCOL_V2, login_flags::UPSTREAM);
    h.login_version(2, "alice", "phone", PROTOCOL_V2);
    h.feed(2, &upstream(1, b"x"));
    let got = delivers(h.frames(1));
    h.advance(400);
    assert!(results(&h.frames(2)).is_empty());
    h.advance(200);
    assert_eq!(
        results(&h.frames(2)),
        [(1, REFUSED_TIMED_OUT, Bytes::new())]
    );
    h.feed(1, &answer(got[0].id, true, b""));
    assert!(h.frames(2).is_empty(), "exactly one result");
    assert!(!h.closed(1));
}

#[test]
fn a_backend_that_dies_mid_stream_times_out_what_it_held_and_takes_no_more() {
    let mut h = Harness::new();
    h.backend_with(1, PROTOCOL_V2, login_flags::UPSTREAM);
    h.login_version(2, "alice", "phone", PROTOCOL_V2);
    h.feed(2, &upstream(1, b"x"));
    h.feed(2, &upstream(2, b"y"));
    assert_eq!(delivers(h.frames(1)).len(), 2);
    h.hang_up(1);
    assert!(h.closed(1));
    let r = results(&h.frames(2));
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|(_, s, _)| *s == REFUSED_TIMED_OUT));
    h.feed(2, &upstream(3, b"z"));
    assert_eq!(
        results(&h.frames(2)),
        [(3, REFUSED_NO_BACKEND, Bytes::new())]
    );
}

#[test]
fn several_backends_share_users_and_a_user_keeps_to_one() {
    let mut h = Harness::new();
    h.backend_with(1, PROTOCOL_V2, login_flags::UPSTREAM);
    h.backend_with(2, PROTOCOL_V2, login_flags::UPSTREAM);
    for u in 0..20 {
        h.login_version(10 + u, &format!("user-{u}"), "phone", PROTOCOL_V2);
        for id in 1..=3 {
            h.feed(10 + u, &upstream(id, b"m"));
        }
    }
    let a = delivers(h.frames(1));
    let b = delivers(h.frames(2));
    assert_eq!(a.len() + b.len(), 60);
    assert!(!a.is_empty() && !b.is_empty(), "both backends take users");
    for d in &a {
        assert!(!b.iter().any(|e| e.user == d.user), "{} split", d.user);
    }
}

#[test]
fn an_answer_from_another_backend_is_a_protocol_error() {
    let mut h = Harness::new();
    h.backend_with(1, PROTOCOL_V2, login_flags::UPSTREAM);
    h.login_version(2, "alice", "phone", PROTOCOL_V2);
    h.feed(2, &upstream(1, b"x"));
    let got = delivers(h.frames(1));
    h.backend_with(3, PROTOCOL_V2, 0);
    h.feed(3, &answer(got[0].id, true, b""));
    assert!(h.closed(3));
    assert_eq!(h.state.counters().get(Counter::UpstreamAnswerNotOwner), 1);
    h.feed(1, &answer(got[0].id, true, b"ok"));
    assert_eq!(
        results(&h.frames(2)),
        [(1, UpstreamStatus::Accepted, Bytes::from_static(b"ok"))]
    );
}

#[test]
fn a_version_1_client_is_served_as_before_and_cannot_send_upstream() {
    let mut h = Harness::new();
    h.backend_with(1, PROTOCOL_V2, login_flags::UPSTREAM);
    h.login_version(2, "alice", "phone", PROTOCOL_V1);
    h.feed(
        1,
        &Frame::BackendPush(BackendPush {
            id: 5,
            flags: 0,
            user: "alice".into(),
            payload: Bytes::from_static(b"hi"),
        }),
    );
    assert!(matches!(&h.frames(2)[..], [Frame::Push(p)] if &p.payload[..] == b"hi"));
    let mut bytes = BytesMut::new();
    codec::encode(&upstream(1, b"x"), &mut bytes).unwrap();
    h.feed_bytes(2, &bytes);
    assert!(h.closed(2), "an unknown frame type in version 1");
    assert!(matches!(
        h.frames(2).last(),
        Some(Frame::Close(c)) if c.code == CloseCode::UnknownFrame
    ));
}

fn send(to: &str, client_id: u64) -> Frame {
    Frame::Send(tether_proto::Send {
        to: to.into(),
        client_id,
        payload: Bytes::from_static(b"yo"),
    })
}

fn send_results(frames: &[Frame]) -> Vec<(u64, PushStatus)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::SendResult(r) => Some((r.client_id, r.status)),
            _ => None,
        })
        .collect()
}

#[test]
fn sends_are_off_by_default() {
    let mut cfg = config();
    cfg.send = Default::default();
    let mut h = Harness::with(cfg);
    h.login_version(1, "alice", "phone", PROTOCOL_V2);
    h.login_version(2, "bob", "phone", PROTOCOL_V2);
    h.feed(1, &send("bob", 7));
    assert_eq!(
        send_results(&h.frames(1)),
        [(7, PushStatus::Refused(RefuseReason::NotAllowed))]
    );
    assert!(h.frames(2).is_empty());
}

#[test]
fn a_send_names_its_sender_and_tells_nothing_about_presence() {
    let mut cfg = config();
    cfg.send.reveal_presence = false;
    let mut h = Harness::with(cfg);
    h.login_version(1, "alice", "phone", PROTOCOL_V2);
    h.login_version(2, "bob", "tablet", PROTOCOL_V2);
    h.login_version(3, "bob", "old-phone", PROTOCOL_V1);
    h.login_version(4, "carol", "phone", PROTOCOL_V1);
    h.feed(1, &send("bob", 7));
    h.feed(1, &send("nobody", 8));
    assert_eq!(
        send_results(&h.frames(1)),
        [(7, PushStatus::Accepted), (8, PushStatus::Accepted)],
        "online and offline look the same"
    );
    assert!(matches!(
        &h.frames(2)[..],
        [Frame::Message(m)] if m.from_user == "alice" && m.from_device == "phone"
    ));
    assert!(
        h.frames(3).is_empty(),
        "a version-1 device cannot show a sender"
    );
    // A version-1 sender has no answer that hides presence.
    h.feed(4, &send("bob", 9));
    assert_eq!(
        send_results(&h.frames(4)),
        [(9, PushStatus::Refused(RefuseReason::NotAllowed))]
    );
    assert!(h.frames(2).is_empty());
}

#[test]
fn a_backend_that_half_closes_takes_no_more_upstream_messages() {
    let mut h = Harness::new();
    h.backend_with(1, PROTOCOL_V2, login_flags::UPSTREAM);
    h.login_version(2, "alice", "phone", PROTOCOL_V2);
    h.feed(2, &upstream(1, b"x"));
    assert_eq!(delivers(h.frames(1)).len(), 1);
    // Still owed a push result (carol does not read), so the half-close keeps the connection
    // open for it.
    h.login_version(3, "carol", "phone", PROTOCOL_V2);
    let carol = h.id(3);
    h.io.stalled.insert(carol);
    h.feed(
        1,
        &Frame::BackendPush(BackendPush {
            id: 5,
            flags: 0,
            user: "carol".into(),
            payload: Bytes::from_static(b"hi"),
        }),
    );
    h.hang_up(1);
    assert!(!h.closed(1), "half-closed, owed a push result");
    let r = results(&h.frames(2));
    assert_eq!(
        r,
        [(1, REFUSED_TIMED_OUT, Bytes::new())],
        "it can answer nothing more"
    );
    h.feed(2, &upstream(2, b"y"));
    assert_eq!(
        results(&h.frames(2)),
        [(2, REFUSED_NO_BACKEND, Bytes::new())]
    );
}

/// The 32-bit id a connection kept of its device before device names were interned: FNV-1a
/// (64-bit) of the name, folded. Two names with the same fold were "the same device".
fn old_device_hash(device: &str) -> u32 {
    let h = tether_server::routing::fnv1a64(device.as_bytes());
    (h ^ (h >> 32)) as u32
}

/// Two device names whose old ids collide: the first pair a birthday search over
/// `device-0`, `device-1`, ... meets (after some 2^16..2^18 names; deterministic).
fn colliding_devices() -> (String, String) {
    let mut seen: HashMap<u32, String> = HashMap::new();
    for i in 0u64.. {
        let name = format!("device-{i}");
        if let Some(first) = seen.insert(old_device_hash(&name), name.clone()) {
            return (first, name);
        }
    }
    unreachable!("u64 names run out after a collision")
}

#[test]
fn two_devices_whose_old_32_bit_ids_collide_both_stay_connected() {
    let (a, b) = colliding_devices();
    assert_ne!(a, b);
    assert_eq!(old_device_hash(&a), old_device_hash(&b));
    let mut h = Harness::new();
    h.login(3, "dora", &a, 60_000);
    h.login(4, "dora", &b, 60_000);
    // The second device's login replaces nothing: device ids are compared in full.
    assert!(!h.closed(3), "{a} was replaced by {b}: {:?}", h.frames(3));
    assert_eq!(h.state.counters().get(Counter::Replaced), 0);
    h.backend(9);
    h.feed(
        9,
        &Frame::BackendPush(BackendPush {
            id: 1,
            flags: 0,
            user: "dora".into(),
            payload: Bytes::from_static(b"both"),
        }),
    );
    assert!(matches!(
        h.frames(9).as_slice(),
        [Frame::PushResult(r)] if r.status == PushStatus::Delivered(2)
    ));
    // A kick of one device by name leaves the other connected.
    let now = h.now();
    let kick = Kick {
        user: "dora".into(),
        device: Some(b.clone()),
        code: CloseCode::Kicked,
        may_reconnect: false,
    };
    let kicked = h.state.on_kick_request(&kick, now);
    h.io.run(&mut h.state, now);
    assert_eq!(kicked, 1);
    assert!(h.closed(4));
    assert!(!h.closed(3), "kicking {b} closed {a}");
    assert_eq!(h.state.users(), 1);
}

// --- Local-first pushes on a cluster node ---

use tether_server::core::msg::{ClusterEvent, Kick, Origin, Post, RoutedPush};
use tether_server::core::ClusterEpoch;

/// A one-shard core of a cluster node, and the cluster epoch its cluster thread would move on.
fn cluster_node() -> (Harness, ClusterEpoch) {
    let epoch = ClusterEpoch::default();
    let cfg = ShardConfig {
        cluster: Some(epoch.clone()),
        ..config()
    };
    (Harness::with(cfg), epoch)
}

impl Harness {
    /// A backend push from connection `name` to `user`.
    fn push(&mut self, name: i32, id: u64, user: &str) {
        let push = BackendPush {
            id,
            flags: 0,
            user: user.into(),
            payload: Bytes::from_static(b"p"),
        };
        self.feed(name, &Frame::BackendPush(push));
    }

    /// The cluster thread's word on `user`, handled by the shard.
    fn note(&mut self, user: &str, epoch: Option<std::num::NonZeroU32>) {
        self.state.note_local_only(user, epoch);
        let now = self.now();
        self.io.run(&mut self.state, now);
    }

    /// What the core posted to the cluster thread since the last call.
    fn cluster_posts(&mut self) -> Vec<Post> {
        let (cluster, rest): (Vec<Post>, Vec<Post>) = std::mem::take(&mut self.io.posted)
            .into_iter()
            .partition(|p| matches!(p, Post::Cluster(_) | Post::ClusterResult(_)));
        self.io.posted = rest;
        cluster
    }
}

#[test]
fn a_cluster_push_skips_the_directory_only_with_a_local_only_note_of_the_epoch() {
    let (mut h, epoch) = cluster_node();
    h.login(3, "ann", "phone", 60_000);
    assert!(matches!(
        h.cluster_posts().as_slice(),
        [Post::Cluster(ClusterEvent::Login { user, .. })] if user == "ann"
    ));
    h.backend(9);
    let to_directory = |posted: Vec<Post>| matches!(posted.as_slice(), [Post::Cluster(ClusterEvent::Push { user, .. })] if user == "ann");

    // No note: the cluster thread reads the directory; nothing is decided here.
    h.push(9, 1, "ann");
    assert!(to_directory(h.cluster_posts()));
    assert!(h.frames(3).is_empty() && h.frames(9).is_empty());

    // Noted in the current epoch: delivered here at once, as on a lone node.
    h.note("ann", Some(epoch.current()));
    h.push(9, 2, "ann");
    assert!(
        h.cluster_posts().is_empty(),
        "the cluster thread never saw it"
    );
    assert!(matches!(
        h.frames(9).as_slice(),
        [Frame::PushResult(r)] if r.id == 2 && r.status == PushStatus::Delivered(1)
    ));
    assert!(matches!(h.frames(3).as_slice(), [Frame::Push(_)]));
    assert_eq!(h.state.counters().get(Counter::ClusterLocalFirst), 1);

    // Every note voided at once: the directory again.
    epoch.void_all();
    h.push(9, 3, "ann");
    assert!(to_directory(h.cluster_posts()));

    // Noted in the new epoch, then taken away (another node joined): the directory again.
    h.note("ann", Some(epoch.current()));
    h.note("ann", None);
    h.push(9, 4, "ann");
    assert!(to_directory(h.cluster_posts()));

    // This node's part of a fanned-out push is delivered here, note or not, and its result
    // goes to the cluster thread.
    let now = h.now();
    let part = RoutedPush {
        origin: Origin::Cluster { id: 77 },
        user: "ann".into(),
        payload: Bytes::from_static(b"part"),
        want_ack: false,
        from: None,
    };
    h.state.on_push_request(part, now);
    h.io.run(&mut h.state, now);
    assert!(matches!(h.frames(3).as_slice(), [Frame::Push(_)]));
    assert!(matches!(
        h.cluster_posts().as_slice(),
        [Post::ClusterResult(r)] if r.id == 77 && r.status == PushStatus::Delivered(1)
    ));

    // A user who leaves takes the note along; a note for a user not here is not kept.
    h.note("ann", Some(epoch.current()));
    h.hang_up(3);
    assert!(matches!(
        h.cluster_posts().as_slice(),
        [Post::Cluster(ClusterEvent::Logout { .. })]
    ));
    h.note("ann", Some(epoch.current()));
    h.login(4, "ann", "tablet", 60_000);
    let _login = h.cluster_posts();
    h.push(9, 5, "ann");
    assert!(
        to_directory(h.cluster_posts()),
        "a new stay starts without a note"
    );
    assert_eq!(h.state.counters().get(Counter::ClusterLocalFirst), 1);
}

// --- Tokens on live connections ---

/// A verifier whose client and backend secrets carry ids, as the server numbers them.
fn verifier_with_ids(client: &[(&[u8], u16)], backend: &[(&[u8], u16)]) -> Verifier {
    let secrets = |list: &[(&[u8], u16)]| -> Vec<(Secret, KeyId)> {
        list.iter()
            .map(|(s, id)| (Secret::new(s.to_vec()).unwrap(), KeyId(*id)))
            .collect()
    };
    let ring = |list: &[(Secret, KeyId)]| {
        KeyRing::with_ids((&list[0].0, list[0].1), list.get(1).map(|(s, id)| (s, *id)))
    };
    Verifier::new(ring(&secrets(client)), ring(&secrets(backend)))
}

impl Harness {
    /// A client main connection of `version` whose token (minted with `secret`) expires
    /// `life_s` seconds from now.
    fn login_expiring(&mut self, name: i32, device: &str, version: u8, secret: &[u8], life_s: u64) {
        self.open(name);
        let minter = Minter::new(&Secret::new(secret.to_vec()).unwrap());
        let token = minter
            .client("ann", device, self.now().unix + life_s)
            .unwrap();
        let Frame::Login(mut l) = login("ann", device, token, 600_000) else {
            unreachable!()
        };
        l.version = version;
        self.feed(name, &Frame::Login(l));
        assert!(matches!(self.frames(name).first(), Some(Frame::LoginOk(_))));
    }

    /// Pings `name` every 20 s for `ms`, so only the token can end it.
    fn keep_alive(&mut self, name: i32, ms: u64) {
        let mut left = ms;
        while left > 0 && !self.closed(name) {
            let step = left.min(20_000);
            self.advance(step);
            left -= step;
            if !self.closed(name) {
                self.feed(name, &Frame::Ping(Ping { lease_ms: 600_000 }));
            }
        }
    }

    fn close_code(&mut self, name: i32) -> Option<CloseCode> {
        self.frames(name).into_iter().find_map(|f| match f {
            Frame::Close(c) => Some(c.code),
            _ => None,
        })
    }

    fn client_token(&self, device: &str, secret: &[u8], life_s: u64) -> String {
        Minter::new(&Secret::new(secret.to_vec()).unwrap())
            .client("ann", device, self.now().unix + life_s)
            .unwrap()
    }
}

#[test]
fn a_version_1_connection_is_closed_when_its_token_expires() {
    // Before, a token was only checked at login: the connection outlived it for good.
    let mut h = Harness::new();
    h.login_expiring(1, "phone", PROTOCOL_V1, SECRET, 100);
    h.keep_alive(1, 98_000);
    assert!(!h.closed(1), "closed before its token expired");
    assert!(
        !h.frames(1)
            .iter()
            .any(|f| matches!(f, Frame::TokenNotice(_))),
        "a version-1 peer cannot read a TokenNotice"
    );
    h.keep_alive(1, 4_000);
    assert!(h.closed(1), "outlived its token");
    assert_eq!(h.close_code(1), Some(CloseCode::TokenExpired));
    assert_eq!(h.state.counters().get(Counter::TokenEnded), 1);
}

#[test]
fn a_version_2_connection_is_told_then_refreshes_in_place() {
    let mut h = Harness::new();
    h.login_expiring(1, "phone", PROTOCOL_V2, SECRET, 100);
    // token_notice_s is 30: the notice comes 70 s in, with 30 s left.
    h.keep_alive(1, 69_000);
    assert!(!h
        .frames(1)
        .iter()
        .any(|f| matches!(f, Frame::TokenNotice(_))));
    h.advance(1_500);
    let notices: Vec<u32> = h
        .frames(1)
        .into_iter()
        .filter_map(|f| match f {
            Frame::TokenNotice(n) => Some(n.expires_in_ms),
            _ => None,
        })
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!((28_000..=31_000).contains(&notices[0]), "{notices:?}");

    // A fresh token for the same identity is taken in place.
    let token = h.client_token("phone", SECRET, 600);
    h.feed(1, &Frame::Refresh(tether_proto::Refresh { token }));
    assert_eq!(h.frames(1), vec![Frame::Refreshed]);
    assert_eq!(h.state.counters().get(Counter::TokenRefreshed), 1);
    // It lives past the old token's end, by the new one.
    h.keep_alive(1, 200_000);
    assert!(!h.closed(1), "closed at the old token's end");
    assert_eq!(h.state.counters().get(Counter::TokenEnded), 0);
}

#[test]
fn a_refresh_for_another_identity_or_kind_closes_the_connection() {
    let mut h = Harness::new();
    let other_device = h.client_token("tablet", SECRET, 600);
    let backend = Minter::new(&Secret::new(BACKEND_SECRET.to_vec()).unwrap())
        .backend("ann", h.now().unix + 600)
        .unwrap();
    let forged = h.client_token("phone", b"not-the-server-secret-0123", 600);
    for (name, token, code) in [
        (1, other_device, CloseCode::AuthFailed),
        (2, backend, CloseCode::AuthFailed),
        (3, forged, CloseCode::AuthFailed),
        (
            4,
            h.client_token("phone", SECRET, 0),
            CloseCode::TokenExpired,
        ),
    ] {
        h.login_expiring(name, "phone", PROTOCOL_V2, SECRET, 100);
        h.feed(name, &Frame::Refresh(tether_proto::Refresh { token }));
        assert!(h.closed(name), "refresh {name} was taken");
        assert_eq!(h.close_code(name), Some(code), "refresh {name}");
    }
    assert_eq!(h.state.counters().get(Counter::TokenRefreshRefused), 4);
    assert_eq!(h.state.counters().get(Counter::TokenRefreshed), 0);
}

#[test]
fn a_version_1_peer_cannot_send_refresh() {
    let mut h = Harness::new();
    h.login_expiring(1, "phone", PROTOCOL_V1, SECRET, 100);
    // The type does not exist in version 1: the decoder refuses it.
    let token = h.client_token("phone", SECRET, 600);
    h.feed(1, &Frame::Refresh(tether_proto::Refresh { token }));
    assert!(h.closed(1));
    assert_eq!(h.close_code(1), Some(CloseCode::UnknownFrame));
}

#[test]
fn withdrawing_a_secret_ends_its_connections_after_the_grace() {
    const OLD: &[u8] = b"state-test-old-secret-0123456789";
    let mut h = Harness::new();
    h.state.set_auth(
        Box::new(verifier_with_ids(
            &[(SECRET, 1), (OLD, 2)],
            &[(BACKEND_SECRET, 3)],
        )),
        &[KeyId(1), KeyId(2), KeyId(3)],
        h.now(),
    );
    h.login_expiring(1, "phone", PROTOCOL_V2, OLD, 3_000);
    h.login_expiring(2, "tablet", PROTOCOL_V1, OLD, 3_000);
    h.login_expiring(3, "watch", PROTOCOL_V2, SECRET, 3_000);
    h.login_expiring(4, "laptop", PROTOCOL_V2, OLD, 3_000);
    for name in 1..=4 {
        h.frames(name);
    }
    // A reload drops OLD: its connections have revoked_grace_s (60 s) to refresh.
    h.state.set_auth(
        Box::new(verifier_with_ids(&[(SECRET, 1)], &[(BACKEND_SECRET, 3)])),
        &[KeyId(1), KeyId(3)],
        h.now(),
    );
    let now = h.now();
    h.io.run(&mut h.state, now);
    assert_eq!(h.state.counters().get(Counter::TokenRevoked), 3);
    // The grace (60 s) is longer than token_notice_s (30 s): the version-2 ones are told
    // 30 s before the end, like any token's end.
    let told = |h: &mut Harness, name| {
        h.frames(name)
            .iter()
            .any(|f| matches!(f, Frame::TokenNotice(_)))
    };
    assert!(!told(&mut h, 1), "told before the notice period");
    h.advance(31_000);
    assert!(told(&mut h, 1), "connection 1 was not told");
    assert!(told(&mut h, 4), "connection 4 was not told");
    assert!(!told(&mut h, 3), "a connection of a kept secret was told");
    // Connection 4 refreshes with a token of the kept secret and stays.
    let token = h.client_token("laptop", SECRET, 3_000);
    h.feed(4, &Frame::Refresh(tether_proto::Refresh { token }));
    assert_eq!(h.frames(4), vec![Frame::Refreshed]);
    for name in 1..=4 {
        h.feed(name, &Frame::Ping(Ping { lease_ms: 600_000 }));
    }
    h.advance(30_000);
    assert!(
        h.closed(1) && h.closed(2),
        "withdrawn-secret connections outlived the grace"
    );
    assert_eq!(h.close_code(1), Some(CloseCode::TokenExpired));
    assert_eq!(h.close_code(2), Some(CloseCode::TokenExpired));
    assert!(!h.closed(3), "a connection of a kept secret was closed");
    assert!(!h.closed(4), "a refreshed connection was closed");
}

/// Logs `user` in on shard 0's `from` with a token of `secret`, and returns the connection it
/// hands over to shard 1, the user's home.
fn login_moving_to_shard_1(
    from: &mut Core,
    user: &str,
    secret: &[u8],
    now: Now,
) -> Box<tether_server::core::Transfer> {
    use tether_server::core::Command;
    let token = Minter::new(&Secret::new(secret.to_vec()).unwrap())
        .client(user, "d", UNIX + 3600)
        .unwrap();
    let id = from.open(now).unwrap();
    let mut bytes = BytesMut::new();
    codec::encode(&login(user, "d", token, 600_000), &mut bytes).unwrap();
    from.on_bytes(id, &bytes, now);
    std::iter::from_fn(|| from.poll_command())
        .find_map(|c| match c {
            Command::HandOver {
                to: 1, transfer, ..
            } => Some(transfer),
            _ => None,
        })
        .expect("the login moves to shard 1")
}

#[test]
fn a_connection_handed_over_is_checked_against_the_secrets_in_use_where_it_lands() {
    // Shard 0 verifies logins with a verifier that still takes OLD; shard 1 has taken the
    // reload that withdrew it. A connection of OLD that moves to shard 1 gets the grace there.

    use tether_server::routing::shard_for;

    const OLD: &[u8] = b"state-test-old-secret-0123456789";
    let both = || verifier_with_ids(&[(SECRET, 1), (OLD, 2)], &[(BACKEND_SECRET, 3)]);
    let mut a = Core::new(config(), Box::new(both()), 0, 2, 0);
    let mut b = Core::new(config(), Box::new(both()), 1, 2, 0);
    let now = Now {
        ms: 0,
        us: 0,
        unix: UNIX,
    };
    b.set_auth(
        Box::new(verifier_with_ids(&[(SECRET, 1)], &[(BACKEND_SECRET, 3)])),
        &[KeyId(1), KeyId(3)],
        now,
    );
    let users: Vec<String> = (0..)
        .map(|i| format!("u{i}"))
        .filter(|u| shard_for(u, 2) == 1)
        .take(2)
        .collect();
    let mut io = SimDriver {
        keep_sent: true,
        ..SimDriver::default()
    };
    let mut landed = Vec::new();
    for (user, secret) in [(&users[0], OLD), (&users[1], SECRET)] {
        let transfer = login_moving_to_shard_1(&mut a, user, secret, now);
        landed.push(b.adopt(*transfer, now).unwrap());
        io.run(&mut b, now);
    }
    assert_eq!(b.counters().get(Counter::TokenRevoked), 1);
    // The grace (60 s) runs out on shard 1 for the OLD one only.
    let mut t = now;
    for _ in 0..62 {
        t.ms += 1_000;
        t.unix += 1;
        b.tick(t);
        io.run(&mut b, t);
    }
    assert!(
        io.closed.contains(&landed[0]),
        "the withdrawn secret's connection lived on"
    );
    assert!(!io.closed.contains(&landed[1]));
    let frames = |id| {
        let mut buf = io.sent.get(&id).cloned().unwrap_or_default();
        std::iter::from_fn(|| codec::decode_version(&mut buf, 1 << 20, PROTOCOL_V2).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(frames(landed[0])
        .iter()
        .any(|f| matches!(f, Frame::TokenNotice(_))));
    assert!(matches!(
        frames(landed[0]).last(),
        Some(Frame::Close(c)) if c.code == CloseCode::TokenExpired
    ));
}

// --- The drain and the mesh, on the virtual clock ---

#[test]
fn the_drain_sends_goaways_then_closes_the_rest_and_ends() {
    let mut h = Harness::new();
    h.login(1, "ann", "a", 60_000);
    h.login(2, "bob", "b", 60_000);
    h.open(3);
    let now = h.now();
    h.state.begin_drain(2_000, now);
    h.io.run(&mut h.state, now);
    // Logged in: a GoAway with the window; not logged in: closed at once.
    for name in [1, 2] {
        assert!(matches!(
            h.frames(name).as_slice(),
            [Frame::GoAway(g)] if g.window_ms == 2_000
        ));
    }
    assert!(h.closed(3));
    assert!(!h.state.is_done());
    // Ann leaves within the window; Bob stays until it ends.
    h.advance(500);
    h.hang_up(1);
    h.advance(1_000);
    assert!(!h.closed(2), "closed before the window ended");
    assert!(!h.state.is_done());
    h.advance(600);
    assert!(matches!(
        h.frames(2).as_slice(),
        [Frame::Close(c)] if c.code == CloseCode::ServerShutdown
    ));
    assert!(h.closed(2));
    h.advance(20);
    assert!(h.state.is_done());
    assert_eq!(h.state.connections(), 0);
}

#[test]
fn a_connection_moved_to_a_draining_shard_is_sent_away_and_refused_once_it_closed() {
    // Shard 1 drains while shard 0 does not yet (each notices the stop at its own tick): a
    // login on shard 0 for a user of shard 1 moves there. In the drain's window it gets a
    // GoAway after its LoginOk, with what is left of the window; once shard 1 has sent its Closes, it is refused with one of
    // its own instead of joining a core about to stop (whose ring would drop it unanswered).
    use tether_server::routing::shard_for;

    let verifier = || verifier_with_ids(&[(SECRET, 1)], &[(BACKEND_SECRET, 3)]);
    let mut a = Core::new(config(), Box::new(verifier()), 0, 2, 0);
    let mut b = Core::new(config(), Box::new(verifier()), 1, 2, 0);
    let mut now = Now {
        ms: 0,
        us: 0,
        unix: UNIX,
    };
    let mut users = (0..)
        .map(|i| format!("u{i}"))
        .filter(|u| shard_for(u, 2) == 1);
    let mut io = SimDriver {
        keep_sent: true,
        ..SimDriver::default()
    };
    b.begin_drain(2_000, now);
    io.run(&mut b, now);
    now.ms += 500;
    let landed = b
        .adopt(
            *login_moving_to_shard_1(&mut a, &users.next().unwrap(), SECRET, now),
            now,
        )
        .expect("adopted in the drain's window");
    io.run(&mut b, now);
    let mut sent = io.sent.get(&landed).cloned().unwrap_or_default();
    let frames: Vec<Frame> =
        std::iter::from_fn(|| codec::decode_version(&mut sent, 1 << 20, PROTOCOL_V2).unwrap())
            .collect();
    assert!(
        matches!(frames.as_slice(), [Frame::LoginOk(_), Frame::GoAway(g)] if g.window_ms == 1_500),
        "{frames:?}"
    );
    // The window ends: shard 1 closes what it holds, then refuses what still arrives.
    now.ms += 1_600;
    b.tick(now);
    io.run(&mut b, now);
    let mut refused = BytesMut::from(
        &b.adopt(
            *login_moving_to_shard_1(&mut a, &users.next().unwrap(), SECRET, now),
            now,
        )
        .expect_err("refused once the drain closed its sessions")[..],
    );
    assert!(matches!(
        codec::decode_version(&mut refused, 1 << 20, PROTOCOL_V2).unwrap(),
        Some(Frame::Close(c)) if c.code == CloseCode::ServerShutdown
    ));
}

#[test]
fn a_connection_that_does_not_read_is_cut_when_the_drain_lingers_out() {
    let mut h = Harness::new();
    h.login(1, "ann", "a", 60_000);
    h.io.stalled.insert(h.id(1));
    let now = h.now();
    h.state.begin_drain(1_000, now);
    h.io.run(&mut h.state, now);
    // Window (1 s), then its Close cannot leave: cut after linger_ms (1 s), not before.
    h.advance(1_500);
    assert!(!h.closed(1));
    h.advance(400);
    assert!(!h.closed(1), "cut before linger_ms");
    h.advance(300);
    assert!(h.closed(1));
    assert!(h.state.is_done());
}

#[test]
fn the_drain_ends_early_when_every_client_has_left() {
    let mut h = Harness::new();
    h.login(1, "ann", "a", 60_000);
    let now = h.now();
    h.state.begin_drain(60_000, now);
    h.io.run(&mut h.state, now);
    h.advance(100);
    h.hang_up(1);
    h.advance(20);
    assert!(h.state.is_done(), "waited out the window with nobody left");
}

/// A user whose home is shard `home` of `shards`.
fn user_on(home: usize, shards: usize) -> String {
    (0..)
        .map(|i| format!("user{i}"))
        .find(|u| tether_server::routing::shard_for(u, shards) == home)
        .unwrap()
}

fn backend_push(id: u64, user: &str) -> Frame {
    Frame::BackendPush(BackendPush {
        id,
        flags: 0,
        user: user.into(),
        payload: Bytes::from_static(b"p"),
    })
}

#[test]
fn a_push_for_another_shard_is_posted_and_one_the_mesh_refuses_is_overloaded() {
    use tether_server::core::{Post, ShardMsg};
    let mut h = Harness::shard(config(), 0, 2);
    h.backend(9);
    let away = user_on(1, 2);
    h.feed(9, &backend_push(1, &away));
    assert!(h.frames(9).is_empty(), "answered before its home shard did");
    assert!(matches!(
        h.io.posted.as_slice(),
        [Post::Shard { to: 1, msg: ShardMsg::Push(p), parked: false }] if p.user == away
    ));
    // The mesh gives it back (the channel is full): refused Overloaded, at once.
    h.io.refuse_posts = true;
    h.feed(9, &backend_push(2, &away));
    assert!(matches!(
        h.frames(9).as_slice(),
        [Frame::PushResult(r)]
            if r.id == 2 && r.status == PushStatus::Refused(RefuseReason::Overloaded)
    ));
}

#[test]
fn a_result_the_mesh_refuses_is_parked_and_posted_again_after_the_batch() {
    use tether_server::core::msg::{ConnKey, ConnOrigin, Origin, RoutedPush, Sent};
    use tether_server::core::{Post, ShardMsg};
    let mut h = Harness::shard(config(), 0, 2);
    let here = user_on(0, 2);
    let origin = Origin::Conn(ConnOrigin {
        conn: ConnKey {
            shard: 1,
            handle: ConnId { key: 7, gen: 1 },
        },
        sent: Sent::BackendPush,
        id: 42,
    });
    let push = ShardMsg::Push(Box::new(RoutedPush {
        origin,
        user: here,
        payload: Bytes::from_static(b"p"),
        want_ack: false,
        from: None,
    }));
    h.io.refuse_posts = true;
    let now = h.now();
    h.state.on_mesh(push, now);
    h.io.run(&mut h.state, now);
    assert_eq!(h.state.counters().get(Counter::MeshRetry), 1);
    // Still full after the batch: parked again, counted once.
    h.state.end_batch(now);
    h.io.run(&mut h.state, now);
    assert_eq!(h.state.counters().get(Counter::MeshRetry), 1);
    assert!(h.io.posted.is_empty());
    // Room again: the next batch posts it.
    h.io.refuse_posts = false;
    h.state.end_batch(now);
    h.io.run(&mut h.state, now);
    assert!(matches!(
        h.io.posted.as_slice(),
        [Post::Shard { to: 1, msg: ShardMsg::Result { origin: o, status: PushStatus::Offline }, parked: true }]
            if o.id == 42
    ));
    assert_eq!(h.state.counters().get(Counter::ResultLostOverload), 0);
}
