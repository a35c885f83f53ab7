//! The TLS listener: logins, heartbeats and pushes over TLS (across shards), bad input on the
//! TLS port, certificates renewed by SIGHUP without dropping a connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tether_proto::{BackendPush, Frame, PushStatus};
use tether_tests::http::get;
use tether_tests::tls::{client_config, connect, handshake, Cert};
use tether_tests::{Client, Server, Settings, PATIENCE};

/// A server with a TLS listener serving a fresh certificate (kept in `dir`).
fn tls_server(dir: &std::path::Path, tweak: impl FnOnce(&mut Settings)) -> (Server, Cert) {
    let cert = Cert::new(dir, "server", &["tether.test"]).unwrap();
    let mut settings = Settings {
        extra: cert.section(),
        ..Settings::default()
    };
    tweak(&mut settings);
    (Server::start(&settings).unwrap(), cert)
}

/// The sum over shards of counter `name` (`/api/stats`), once it is at least `at_least`.
fn counter_reaches(server: &Server, name: &str, at_least: u64) -> u64 {
    let until = Instant::now() + PATIENCE;
    loop {
        let s = get(server.api, "/api/stats", &[]).unwrap().json();
        let n: u64 = s["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sh| sh["counters"][name].as_u64().unwrap_or(0))
            .sum();
        if n >= at_least || Instant::now() > until {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long until the server closes `stream` (reading and dropping what it sends), or `None`
/// when it stays open past `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn clients_log_in_heartbeat_and_get_pushes_over_tls_on_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path(), |_| {});
    let tls = server.tls.expect("the server printed its TLS address");
    // Enough users that some log in on a shard that is not their home and move there, TLS
    // session and all.
    let mut clients = Vec::new();
    for i in 0..8 {
        let user = format!("tls-user-{i}");
        let (mut c, ok) = connect(tls, &cert).unwrap().log_in(&user, "phone").unwrap();
        assert!(ok.max_lease_ms > 0);
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
                payload: bytes::Bytes::from(format!("hello {user}")),
            }))
            .unwrap();
    }
    for (i, (user, c)) in clients.iter_mut().enumerate() {
        match c.recv().unwrap() {
            Frame::Push(p) => assert_eq!(p.payload, format!("hello {user}").as_bytes()),
            other => panic!("{user}: expected a push, got {other:?}"),
        }
        match backend.recv().unwrap() {
            Frame::PushResult(r) => assert_eq!(r.status, PushStatus::Delivered(1), "push {i}"),
            other => panic!("expected a result, got {other:?}"),
        }
        // Large frames span several records.
        c.ping(30_000).unwrap();
    }
    let big = tether_tests::payload(40_000);
    backend
        .send(&Frame::BackendPush(BackendPush {
            id: 100,
            flags: 0,
            user: clients[0].0.clone(),
            payload: big.clone(),
        }))
        .unwrap();
    match clients[0].1.recv().unwrap() {
        Frame::Push(p) => assert_eq!(p.payload, big),
        other => panic!("expected the large push, got {other:?}"),
    }
    assert!(counter_reaches(&server, "tls_handshakes", 8) >= 8);
    // The plaintext listener still serves as before.
    let (mut plain, _) = server.client("plain-user", "phone").unwrap();
    plain.ping(30_000).unwrap();
}

#[test]
fn bad_input_on_the_tls_port_is_closed_promptly_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path(), |s| s.login_timeout_ms = 1_500);
    let tls = server.tls.unwrap();
    let prompt = Duration::from_secs(5);
    // Plaintext: a tether Login frame on the TLS port.
    let mut plain = Client::connect(tls).unwrap();
    let token = tether_tests::minter()
        .client("mallory", "d", tether_tests::expiry())
        .unwrap();
    plain
        .send(&Frame::Login(tether_proto::Login {
            version: tether_proto::PROTOCOL_VERSION,
            flags: 0,
            user: "mallory".into(),
            device: "d".into(),
            token,
            heartbeat_ms: 60_000,
            network_key: String::new(),
        }))
        .unwrap();
    assert!(
        closed_within(&mut plain.stream, prompt).is_some(),
        "plaintext login"
    );
    // Garbage.
    let mut garbage = TcpStream::connect(tls).unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    assert!(closed_within(&mut garbage, prompt).is_some(), "garbage");
    // A ClientHello cut short, then silence: the login deadline ends it.
    let mut conn = rustls::ClientConnection::new(
        client_config(&cert.der, &[b"tether"]),
        "localhost".try_into().unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut cut = TcpStream::connect(tls).unwrap();
    cut.write_all(&hello[..hello.len() / 2]).unwrap();
    let took = closed_within(&mut cut, prompt).expect("a truncated ClientHello is closed");
    assert!(
        took >= Duration::from_millis(1_000),
        "closed at the login deadline, not before: {took:?}"
    );
    // Silence right after connecting: the same deadline.
    let mut silent = TcpStream::connect(tls).unwrap();
    assert!(
        closed_within(&mut silent, prompt).is_some(),
        "silent client"
    );
    // A server name no certificate is valid for, a protocol the server does not speak, a CA
    // the client does not trust: refused.
    let e = handshake(
        tls,
        "unknown.example",
        client_config(&cert.der, &[b"tether"]),
    )
    .expect_err("unknown SNI");
    assert!(
        format!("{e:#}").contains("alert") || format!("{e:#}").contains("Alert"),
        "{e:#}"
    );
    let e = handshake(tls, "localhost", client_config(&cert.der, &[b"h2"])).expect_err("ALPN");
    assert!(
        format!("{e:#}").to_lowercase().contains("protocol"),
        "{e:#}"
    );
    let other = Cert::new(dir.path(), "other", &[]).unwrap();
    assert!(handshake(tls, "localhost", client_config(&other.der, &[b"tether"])).is_err());
    // Counted: the plaintext login, the garbage, the unknown name, the foreign protocol.
    assert!(counter_reaches(&server, "tls_handshake_failures", 4) >= 4);
    assert!(counter_reaches(&server, "close_login_timeout", 2) >= 2);
    // Bystanders were never disturbed.
    let (mut ok, _) = connect(tls, &cert)
        .unwrap()
        .log_in("bystander", "d")
        .unwrap();
    ok.ping(30_000).unwrap();
}

#[test]
fn a_reload_renews_the_certificate_without_dropping_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, old) = tls_server(dir.path(), |_| {});
    let tls = server.tls.unwrap();
    let (mut before, _) = connect(tls, &old)
        .unwrap()
        .log_in("renew", "phone")
        .unwrap();
    let renewed = Cert::new(dir.path(), "renewed", &[]).unwrap();
    renewed.install_over(&old).unwrap();
    server.sighup();
    server.wait_log("secrets and API keys reloaded");
    // New handshakes get the new certificate; the open connection keeps its session.
    let deadline = Instant::now() + PATIENCE;
    while connect(tls, &renewed).is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not taken"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        connect(tls, &old).is_err(),
        "the old certificate is no longer served"
    );
    before.ping(30_000).unwrap();
    // A reload with a key that does not match is refused as a whole; TLS keeps serving.
    let stray = Cert::new(dir.path(), "stray", &[]).unwrap();
    std::fs::copy(&stray.key, &old.key).unwrap();
    server.sighup();
    server.wait_log("does not belong");
    let (mut after, _) = connect(tls, &renewed)
        .unwrap()
        .log_in("renew2", "phone")
        .unwrap();
    after.ping(30_000).unwrap();
    before.ping(30_000).unwrap();
}

#[test]
fn a_bad_certificate_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = Cert::new(dir.path(), "a", &[]).unwrap();
    let b = Cert::new(dir.path(), "b", &[]).unwrap();
    let settings = Settings {
        extra: format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ncertificate = {:?}\nkey = {:?}\n",
            a.cert.display().to_string(),
            b.key.display().to_string()
        ),
        ..Settings::default()
    };
    let (status, log) = Server::start_refused(&settings).unwrap();
    assert!(!status.success());
    assert!(log.contains("does not belong to the certificate"), "{log}");
    let settings = Settings {
        extra: "[tls]\nlisten = \"127.0.0.1:0\"\ncertificate = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n".into(),
        ..Settings::default()
    };
    let (_, log) = Server::start_refused(&settings).unwrap();
    assert!(log.contains("/nonexistent/cert.pem"), "{log}");
}

#[test]
fn handshakes_past_the_batch_budget_wait_their_turn_and_all_finish() {
    let dir = tempfile::tempdir().unwrap();
    let cert = Cert::new(dir.path(), "server", &[]).unwrap();
    let settings = Settings {
        extra: format!("{}handshakes_per_batch = 1\n", cert.section()),
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let tls = server.tls.unwrap();
    // Every ClientHello is on the wire before any handshake is answered, so the shards'
    // batches hold several at once.
    let config = client_config(&cert.der, &[b"tether"]);
    let mut pending = Vec::new();
    for _ in 0..30 {
        let mut stream = TcpStream::connect(tls).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut conn =
            rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        stream.write_all(&hello).unwrap();
        pending.push((stream, conn));
    }
    for (i, (mut stream, mut conn)) in pending.into_iter().enumerate() {
        while conn.is_handshaking() {
            conn.complete_io(&mut stream).unwrap();
        }
        let (mut c, _) = match Client::with_tls(stream, conn)
            .unwrap()
            .log_in(&format!("queued-{i}"), "d")
        {
            Ok(c) => c,
            Err(e) => panic!("{i}: {e:#}\n{}", server.log()),
        };
        c.ping(30_000).unwrap();
    }
    assert!(counter_reaches(&server, "tls_handshakes", 30) >= 30);
}

#[test]
fn a_connection_refused_at_accept_is_closed_without_a_frame_it_could_not_read() {
    let dir = tempfile::tempdir().unwrap();
    // One connection per shard.
    let (server, _) = tls_server(dir.path(), |s| s.max_connections = 2);
    let tls = server.tls.unwrap();
    let mut refused = 0;
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(tls).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => refused += 1,
            Ok(n) => panic!("a TLS client was sent {n} plaintext bytes: {:?}", &buf[..n]),
            Err(_) => held.push(s),
        }
    }
    assert!(refused >= 4, "refused {refused}, held {}", held.len());
}
