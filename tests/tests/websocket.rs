//! The WebSocket listener: the same protocol in binary messages (across shards, over wss://
//! too), what the upgrade checks, and what no client may send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tether_proto::{codec, BackendPush, Frame, PushStatus};
use tether_tests::http::post;
use tether_tests::tls::{client_config, Cert};
use tether_tests::ws::{connect, masked, request, upgrade};
use tether_tests::{Client, Server, Settings, PATIENCE};

const SECTION: &str =
    "[websocket]\nlisten = \"127.0.0.1:0\"\nallowed_origins = [\"https://app.example\"]\n";

fn ws_server(tweak: impl FnOnce(&mut Settings)) -> Server {
    let mut settings = Settings {
        extra: SECTION.into(),
        ..Settings::default()
    };
    tweak(&mut settings);
    Server::start(&settings).unwrap()
}

/// Reads until the server closes; the close code of its WebSocket Close frame, if any.
fn ws_close(c: &mut Client) -> Option<u16> {
    let _ = c.until_closed();
    c.ws_close_code()
}

#[test]
fn pushes_and_heartbeats_flow_in_binary_messages_on_every_shard() {
    let server = ws_server(|_| {});
    let addr = server
        .websocket
        .expect("the server printed its WebSocket address");
    let mut clients = Vec::new();
    for i in 0..8 {
        let user = format!("ws-user-{i}");
        let (mut c, _) = connect(addr).unwrap().log_in(&user, "browser").unwrap();
        c.ping(30_000).unwrap();
        clients.push((user, c));
    }
    let mut backend = server.backend("svc").unwrap();
    for (i, (user, _)) in clients.iter().enumerate() {
        backend
            .send(&Frame::BackendPush(BackendPush {
                id: i as u64 + 1,
                flags: 0,
                user: user.clone(),
                payload: bytes::Bytes::from(format!("to {user}")),
            }))
            .unwrap();
    }
    for (user, c) in clients.iter_mut() {
        match c.recv().unwrap() {
            Frame::Push(p) => assert_eq!(p.payload, format!("to {user}").as_bytes()),
            other => panic!("{user}: {other:?}"),
        }
        assert!(matches!(
            backend.recv().unwrap(),
            Frame::PushResult(r) if r.status == PushStatus::Delivered(1)
        ));
    }
    // A frame may span messages, and a message may hold several frames.
    let (_, c) = &mut clients[0];
    let mut two = bytes::BytesMut::new();
    codec::encode(
        &Frame::Ping(tether_proto::Ping { lease_ms: 30_000 }),
        &mut two,
    )
    .unwrap();
    codec::encode(
        &Frame::Ping(tether_proto::Ping { lease_ms: 30_000 }),
        &mut two,
    )
    .unwrap();
    let (a, b) = two.split_at(3);
    c.write_raw(&masked(0x2, a)).unwrap();
    c.write_raw(&masked(0x2, b)).unwrap();
    for _ in 0..2 {
        assert!(matches!(c.recv().unwrap(), Frame::Pong(_)));
    }
    // WebSocket pings are answered.
    c.write_raw(&masked(0x9, b"hi")).unwrap();
    c.ping(30_000).unwrap();
    assert_eq!(c.ws_pongs(), 1);
    // A large push spans one message of 40 kB.
    let big = tether_tests::payload(40_000);
    backend
        .send(&Frame::BackendPush(BackendPush {
            id: 99,
            flags: 0,
            user: clients[0].0.clone(),
            payload: big.clone(),
        }))
        .unwrap();
    assert!(matches!(clients[0].1.recv().unwrap(), Frame::Push(p) if p.payload == big));
}

#[test]
fn the_upgrade_checks_path_origin_version_and_size() {
    let server = ws_server(|s| s.login_timeout_ms = 1_500);
    let addr = server.websocket.unwrap();
    let status = |req: &str| upgrade(addr, req).unwrap().1;
    assert!(status(&request("/other", None)).starts_with("HTTP/1.1 404 "));
    assert!(status(&request("/tether", Some("https://evil.example"))).starts_with("HTTP/1.1 403 "));
    assert!(status(&request("/tether", Some("https://app.example"))).starts_with("HTTP/1.1 101 "));
    assert!(
        status(&request("/tether", None).replace("Version: 13", "Version: 8"))
            .starts_with("HTTP/1.1 426 ")
    );
    assert!(status("POST /tether HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 400 "));
    let huge =
        request("/tether", None).replace("Host:", &format!("X-Pad: {}\r\nHost:", "a".repeat(5000)));
    assert!(status(&huge).starts_with("HTTP/1.1 431 "));
    // Half a request head, then silence: closed at the login deadline.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /tether HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1_000) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[test]
fn what_no_client_may_send_closes_with_its_code() {
    let server = ws_server(|_| {});
    let addr = server.websocket.unwrap();
    let mut unmasked = masked(0x2, b"x");
    unmasked[1] &= 0x7f;
    unmasked.drain(2..6);
    let long = vec![0u8; 65_536 + 100];
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (masked(0x1, b"{\"type\":\"login\"}"), 1003),
        (unmasked, 1002),
        (vec![0x09, 0x82, 0, 0, 0, 0, b'h', b'i'], 1002), // a fragmented ping
        (masked(0x2, &long), 1009),
        (masked(0x8, &[0x03, 0xe8, 0xff, 0xfe]), 1007),
    ];
    for (bytes, want) in cases {
        let mut c = connect(addr).unwrap();
        c.write_raw(&bytes).unwrap();
        assert_eq!(ws_close(&mut c), Some(want), "{:?}", &bytes[..2]);
    }
    // Bystanders stay.
    let (mut ok, _) = connect(addr).unwrap().log_in("bystander", "b").unwrap();
    ok.ping(30_000).unwrap();
    // A client's own Close is answered with its code, before and after login.
    for login in [false, true] {
        let mut c = connect(addr).unwrap();
        if login {
            c = c.log_in("leaving", "b").unwrap().0;
        }
        c.write_raw(&masked(0x8, &[0x03, 0xe8])).unwrap();
        assert_eq!(ws_close(&mut c), Some(1000), "logged in: {login}");
    }
}

#[test]
fn a_kick_and_a_failed_login_close_with_codes_a_page_can_read() {
    let server = ws_server(|_| {});
    let addr = server.websocket.unwrap();
    let (mut c, _) = connect(addr).unwrap().log_in("kicked", "browser").unwrap();
    let resp = post(
        server.api,
        "/api/kick",
        &[],
        &serde_json::json!({"user": "kicked"}),
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    // Kicked (2009): do not reconnect without a change.
    assert_eq!(ws_close(&mut c), Some(4509));
    let mut bad = connect(addr).unwrap();
    bad.send(&Frame::Login(tether_proto::Login {
        version: tether_proto::PROTOCOL_VERSION,
        flags: 0,
        user: "mallory".into(),
        device: "d".into(),
        token: "not-a-token".into(),
        heartbeat_ms: 60_000,
        network_key: String::new(),
    }))
    .unwrap();
    // AuthFailed (2005).
    assert_eq!(ws_close(&mut bad), Some(4505));
}

#[test]
fn wss_carries_the_same_protocol_with_the_tls_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let cert = Cert::new(dir.path(), "server", &[]).unwrap();
    let server = Server::start(&Settings {
        extra: format!(
            "[tls]\ncertificate = {:?}\nkey = {:?}\n[websocket]\nlisten = \"127.0.0.1:0\"\ntls = true\n",
            cert.cert.display().to_string(),
            cert.key.display().to_string()
        ),
        ..Settings::default()
    })
    .unwrap();
    let addr = server.websocket.unwrap();
    // TLS first (a browser offers ALPN http/1.1), then the upgrade inside it.
    let mut c =
        tether_tests::tls::handshake(addr, "localhost", client_config(&cert.der, &[b"http/1.1"]))
            .unwrap();
    c.write_raw(request("/tether", None).as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read_exact_raw(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let (mut c, _) = c.with_ws(Vec::new()).log_in("secure", "browser").unwrap();
    c.ping(30_000).unwrap();
}
