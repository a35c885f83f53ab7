//! Logins, replacement of a device's connection, idle expiry, the login deadline, probes.

use std::time::{Duration, Instant};

use tether_proto::{CloseCode, Frame, Probe};
use tether_tests::{Client, Server, Settings};

fn close_code(frames: &[Frame]) -> Option<CloseCode> {
    frames.iter().find_map(|f| match f {
        Frame::Close(c) => Some(c.code),
        Frame::Kick(k) => Some(k.reason),
        _ => None,
    })
}

#[test]
fn relogin_of_same_device_kicks_the_old_connection() {
    let server = Server::start(&Settings::default()).unwrap();
    let (mut old, _) = server.client("erin", "phone").unwrap();
    let (mut other_device, _) = server.client("erin", "tablet").unwrap();
    let (mut new, _) = server.client("erin", "phone").unwrap();
    let frames = old.until_closed().unwrap();
    match frames.last() {
        Some(Frame::Kick(k)) => {
            assert_eq!(k.reason, CloseCode::Replaced);
            assert!(!k.may_reconnect, "a replaced connection must not reconnect");
        }
        other => panic!("old connection ended with {other:?}, all: {frames:?}"),
    }
    // The new connection and the other device are untouched.
    new.ping(60_000).unwrap();
    other_device.ping(60_000).unwrap();
    let mut backend = server.backend("svc").unwrap();
    backend
        .send(&Frame::BackendPush(tether_proto::BackendPush {
            id: 1,
            flags: 0,
            user: "erin".into(),
            payload: bytes::Bytes::from_static(b"p"),
        }))
        .unwrap();
    match backend.recv().unwrap() {
        Frame::PushResult(r) => assert_eq!(r.status, tether_proto::PushStatus::Delivered(2)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn silent_connection_expires_after_its_lease() {
    let settings = Settings {
        grace_ms: 500,
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    // Login promises a heartbeat every second: idle window = 1.5 s + 0.5 s grace.
    let (mut quiet, _) = Client::login(server.addr, "frank", "d", 0, 1_000).unwrap();
    let (mut lively, _) = Client::login(server.addr, "gina", "d", 0, 1_000).unwrap();
    let start = Instant::now();
    let pinger = std::thread::spawn(move || {
        // Keeps pinging well within the lease for longer than the quiet one's window.
        for _ in 0..12 {
            std::thread::sleep(Duration::from_millis(300));
            lively.ping(1_000).unwrap();
        }
        lively
    });
    let frames = quiet.until_closed().unwrap();
    assert_eq!(
        close_code(&frames),
        Some(CloseCode::IdleTimeout),
        "{frames:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1_900),
        "closed before its lease ran out"
    );
    let mut lively = pinger.join().unwrap();
    lively
        .ping(1_000)
        .expect("a heartbeating connection stays open");
}

#[test]
fn connection_without_login_is_closed_at_the_deadline() {
    let settings = Settings {
        login_timeout_ms: 1_000,
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let mut c = Client::connect(server.addr).unwrap();
    let start = Instant::now();
    let frames = c.until_closed().unwrap();
    assert_eq!(
        close_code(&frames),
        Some(CloseCode::LoginTimeout),
        "{frames:?}"
    );
    assert!(start.elapsed() >= Duration::from_millis(900));
}

#[test]
fn bad_token_is_refused() {
    let server = Server::start(&Settings::default()).unwrap();
    let mut c = Client::connect(server.addr).unwrap();
    c.send(&Frame::Login(tether_proto::Login {
        version: tether_proto::PROTOCOL_VERSION,
        flags: 0,
        user: "mallory".into(),
        device: "d".into(),
        token: "not-a-token".into(),
        heartbeat_ms: 60_000,
        network_key: String::new(),
    }))
    .unwrap();
    let frames = c.until_closed().unwrap();
    let code = close_code(&frames).expect("a close frame");
    assert!(!code.may_reconnect(), "auth failure is final: {code:?}");
}

#[test]
fn probe_fires_after_the_requested_silence_and_is_not_a_push_target() {
    let server = Server::start(&Settings::default()).unwrap();
    let mut probe = Client::probe(server.addr, "hank", "phone").unwrap();
    let start = Instant::now();
    probe.send(&Frame::Probe(Probe { delay_ms: 700 })).unwrap();
    match probe.recv().unwrap() {
        Frame::ProbeFire => {}
        other => panic!("expected ProbeFire, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(650));
    // The probe did not register hank: a push finds him offline.
    let mut backend = server.backend("svc").unwrap();
    backend
        .send(&Frame::BackendPush(tether_proto::BackendPush {
            id: 9,
            flags: 0,
            user: "hank".into(),
            payload: bytes::Bytes::from_static(b"p"),
        }))
        .unwrap();
    match backend.recv().unwrap() {
        Frame::PushResult(r) => assert_eq!(r.status, tether_proto::PushStatus::Offline),
        other => panic!("{other:?}"),
    }
}

/// Data and end of stream arriving together: the server answers the last frame and closes at
/// once, not at the idle deadline (60 s lease here, so about 100 s).
#[test]
fn a_frame_then_end_of_stream_is_answered_and_closed_at_once() {
    let server = Server::start(&Settings::default()).unwrap();
    for i in 0..20 {
        let user = format!("leaver{i}");
        let (mut c, _) = Client::login(server.addr, &user, "d", 0, 60_000).unwrap();
        let mut bytes = bytes::BytesMut::new();
        tether_proto::codec::encode(
            &Frame::Ping(tether_proto::Ping { lease_ms: 60_000 }),
            &mut bytes,
        )
        .unwrap();
        c.send_raw(&bytes).unwrap();
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let started = Instant::now();
        let frames = c.until_closed().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "connection {i} closed only after {:?}",
            started.elapsed()
        );
        assert!(
            matches!(frames.as_slice(), [Frame::Pong(_)]),
            "connection {i}: {frames:?}"
        );
    }
}

/// The Login frame of `user` on device "d" with `token`.
fn login_frame(user: &str, token: String) -> Frame {
    Frame::Login(tether_proto::Login {
        version: tether_proto::PROTOCOL_VERSION,
        flags: 0,
        user: user.into(),
        device: "d".into(),
        token,
        heartbeat_ms: 60_000,
        network_key: String::new(),
    })
}

#[test]
fn login_and_ping_in_one_write_get_login_ok_then_pong() {
    let settings = Settings {
        max_frame: 4_096,
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    // One user whose home is each shard: whichever shard accepts, one of them is handed over
    // with the Ping still unread.
    for shard in 0..settings.shards {
        let user = tether_tests::user_on_shard("ivy", shard, settings.shards);
        let token = tether_tests::minter()
            .client(&user, "d", tether_tests::expiry())
            .unwrap();
        let mut bytes = bytes::BytesMut::new();
        tether_proto::encode(&login_frame(&user, token), &mut bytes).unwrap();
        tether_proto::encode(
            &Frame::Ping(tether_proto::Ping { lease_ms: 30_000 }),
            &mut bytes,
        )
        .unwrap();
        let mut c = Client::connect(server.addr).unwrap();
        c.send_raw(&bytes).unwrap();
        match c.recv().unwrap() {
            Frame::LoginOk(ok) => assert_eq!(ok.max_frame, 4_096, "{ok:?}"),
            other => panic!("{user}: expected LoginOk first, got {other:?}"),
        }
        match c.recv().unwrap() {
            Frame::Pong(p) => assert!(p.deadline_ms >= 30_000, "{p:?}"),
            other => panic!("{user}: expected the pipelined Ping's Pong, got {other:?}"),
        }
        // Still open and serving.
        c.ping(30_000).unwrap();
    }
}

#[test]
fn a_backend_token_signed_with_the_client_secret_is_refused() {
    let server = Server::start(&Settings::default()).unwrap();
    let forged = tether_tests::minter()
        .backend("svc", tether_tests::expiry())
        .unwrap();
    let mut c = Client::connect(server.addr).unwrap();
    c.send(&login_frame("svc", forged)).unwrap();
    let frames = c.until_closed().unwrap();
    assert_eq!(
        close_code(&frames),
        Some(CloseCode::AuthFailed),
        "{frames:?}"
    );
    // The backend secret works.
    server.backend("svc").unwrap();
}

#[test]
fn a_token_valid_for_longer_than_the_maximum_lifetime_is_refused() {
    let server = Server::start(&Settings::default()).unwrap();
    for expiry in [u64::MAX, tether_tests::expiry() + 31 * 24 * 3600] {
        let token = tether_tests::minter().client("jo", "d", expiry).unwrap();
        let mut c = Client::connect(server.addr).unwrap();
        c.send(&login_frame("jo", token)).unwrap();
        let frames = c.until_closed().unwrap();
        assert_eq!(
            close_code(&frames),
            Some(CloseCode::AuthFailed),
            "expiry {expiry}: {frames:?}"
        );
    }
}
