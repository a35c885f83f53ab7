//! The shard state without sockets: sessions, timers and pushes on a virtual clock.

use bytes::BytesMut;
use tether_proto::session::SessionConfig;
use tether_proto::token::{KeyRing, Minter, Secret, Verifier};
use tether_proto::{
    codec, push_flags, BackendPush, CloseCode, Frame, Login, Ping, PushStatus, RefuseReason,
    PROTOCOL_VERSION,
};
use tether_server::counters::Counter;
use tether_server::io::NullIo;
use tether_server::mesh::MeshPort;
use tether_server::state::{Flow, Now, ShardConfig, ShardState};

const SECRET: &[u8] = b"state-test-secret-0123456789";
const BACKEND_SECRET: &[u8] = b"state-test-backend-secret-0123456789";
const UNIX: u64 = 1_700_000_000;

fn config() -> ShardConfig {
    ShardConfig {
        session: SessionConfig {
            login_timeout_ms: 5_000,
            min_lease_ms: 1_000,
            max_lease_ms: 600_000,
            lease_multiplier_pct: 150,
            grace_ms: 1_000,
            max_frame: 65_536,
        },
        max_frame: 65_536,
        max_connections: 1_000,
        max_queue_bytes: 65_536,
        write_timeout_ms: 10_000,
        tick_ms: 10,
        server_epoch: 1,
        max_ack_waiting: 100,
        ack_timeout_ms: 60_000,
        priors: Default::default(),
    }
}

/// A one-shard state with a virtual clock and a socket-less Io that keeps what is written.
struct Harness {
    state: ShardState,
    io: NullIo,
    now: u64,
    /// (key, gen) of each descriptor.
    conns: Vec<(i32, u32, u32)>,
}

impl Harness {
    fn new() -> Harness {
        let ring = |s: &[u8]| KeyRing::new(&Secret::new(s.to_vec()).unwrap(), None);
        let auth = Box::new(Verifier::new(ring(SECRET), ring(BACKEND_SECRET)));
        let state = ShardState::new(config(), auth, MeshPort::single(64).unwrap(), 0);
        let io = NullIo {
            keep_sent: true,
            ..NullIo::default()
        };
        Harness {
            state,
            io,
            now: 0,
            conns: Vec::new(),
        }
    }

    fn now(&self) -> Now {
        Now {
            ms: self.now,
            unix: UNIX + self.now / 1000,
        }
    }

    fn open(&mut self, fd: i32) {
        let now = self.now();
        let key = self.state.open(fd, now, &mut self.io).unwrap();
        // The generation is not exposed by `open`; the first is 1 and they count up.
        let gen = self.conns.len() as u32 + 1;
        self.conns.push((fd, key, gen));
    }

    fn feed(&mut self, fd: i32, frame: &Frame) -> Flow {
        let (_, key, gen) = *self.conns.iter().find(|c| c.0 == fd).unwrap();
        let mut bytes = BytesMut::new();
        codec::encode(frame, &mut bytes).unwrap();
        let now = self.now();
        self.state.on_bytes(key, gen, &bytes, now, &mut self.io)
    }

    fn login(&mut self, fd: i32, user: &str, device: &str, heartbeat_ms: u32) {
        self.open(fd);
        let minter = Minter::new(&Secret::new(SECRET.to_vec()).unwrap());
        let token = minter.client(user, device, UNIX + 3600).unwrap();
        self.feed(fd, &login(user, device, token, heartbeat_ms));
        assert!(matches!(self.frames(fd).first(), Some(Frame::LoginOk(_))));
    }

    fn backend(&mut self, fd: i32) {
        self.open(fd);
        let minter = Minter::new(&Secret::new(BACKEND_SECRET.to_vec()).unwrap());
        let token = minter.backend("svc", UNIX + 3600).unwrap();
        self.feed(fd, &login("svc", "", token, 60_000));
        assert!(matches!(self.frames(fd).first(), Some(Frame::LoginOk(_))));
    }

    /// Frames written to `fd` since the last call.
    fn frames(&mut self, fd: i32) -> Vec<Frame> {
        let mut out = Vec::new();
        if let Some(buf) = self.io.sent.get_mut(&fd) {
            while let Some(f) = codec::decode(buf, 1 << 20).unwrap() {
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
            self.state.tick(now, &mut self.io);
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
    assert_eq!(h.io.closed, vec![3]);
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
    assert_eq!(h.io.closed, vec![3]);
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
    h.io.stalled.insert(3);
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
    assert_eq!(&statuses[..3], &[PushStatus::Delivered(1); 3]);
    assert_eq!(statuses[3], PushStatus::Refused(RefuseReason::SlowConsumer));
    assert!(statuses[4..].iter().all(|s| *s == PushStatus::Offline));
    assert_eq!(h.state.counters().get(Counter::CloseSlowConsumer), 1);
}
