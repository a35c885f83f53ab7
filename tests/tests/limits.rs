//! Admission limits and overload on the real server: every refusal is a pre-login
//! `GoAway { Overloaded, may_reconnect: true, window_ms }` followed by end of stream.
//!
//! The caps are server-wide and each shard enforces its share, so these tests run one shard
//! to make the arithmetic exact. Other source addresses come from 127.0.0.0/8.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tether_proto::{CloseCode, Frame, GoAway, Login, PROTOCOL_VERSION};
use tether_tests::{eventually, take_refused, Client, Server, Settings, PATIENCE};

/// The back-off the server sends before closing, or a panic naming what came instead.
fn expect_backoff(client: &mut Client) -> GoAway {
    let frames = client
        .until_closed()
        .expect("the refused connection is closed");
    match frames.as_slice() {
        [Frame::GoAway(g)] => {
            assert_eq!(g.reason, CloseCode::Overloaded, "{g:?}");
            assert!(g.may_reconnect, "{g:?}");
            assert!(g.window_ms > 0, "{g:?}");
            *g
        }
        other => panic!("expected one GoAway(Overloaded) then end of stream, got {other:?}"),
    }
}

fn one_shard(limits: &str) -> Settings {
    Settings {
        shards: 1,
        limits: limits.into(),
        ..Settings::default()
    }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[test]
fn max_connections_refuses_the_extra_connections_with_a_back_off() {
    let settings = Settings {
        max_connections: 5,
        limits: "backoff_window_ms = 7000".into(),
        ..one_shard("")
    };
    let server = Server::start(&settings).unwrap();
    let held: Vec<_> = (0..5)
        .map(|i| server.client(&format!("full-{i}"), "d").unwrap())
        .collect();
    for _ in 0..5 {
        let mut extra = Client::connect(server.addr).unwrap();
        let g = expect_backoff(&mut extra);
        assert_eq!(g.window_ms, 7_000);
    }
    // Room again once one leaves (the server sees the close asynchronously).
    drop(held);
    server.client_when_room("full-late", "d");
}

#[test]
fn one_address_is_capped_and_other_addresses_are_not() {
    let server = Server::start(&one_shard("per_address_connections = 3")).unwrap();
    let mut held: Vec<_> = (0..3)
        .map(|i| {
            Client::connect_from(server.addr, ip(1))
                .unwrap()
                .log_in(&format!("cap-{i}"), "d")
                .unwrap()
        })
        .collect();
    let mut fourth = Client::connect_from(server.addr, ip(1)).unwrap();
    expect_backoff(&mut fourth);
    // Another address is not affected.
    let (mut other, _) = Client::connect_from(server.addr, ip(2))
        .unwrap()
        .log_in("cap-other", "d")
        .unwrap();
    other.ping(60_000).unwrap();
    // A closed connection frees its place.
    held.pop();
    eventually(|| {
        let c = Client::connect_from(server.addr, ip(1)).unwrap();
        c.log_in("cap-late", "d")
            .map_err(|e| format!("the address stayed at its cap: {e:#}"))
    });
}

#[test]
fn accept_rate_of_one_address_refuses_a_burst_beyond_it() {
    let server = Server::start(&one_shard(
        "per_address_accept_rate = 1\nper_address_accept_burst = 3",
    ))
    .unwrap();
    let start = Instant::now();
    let clients: Vec<_> = (0..12)
        .map(|_| Client::connect_from(server.addr, ip(3)).unwrap())
        .collect();
    let took = start.elapsed();
    // 3 in the burst plus one per second: 12 connections within 8 s leave some refused.
    let mut refused = 0;
    let mut accepted = 0;
    for mut c in clients {
        c.stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut byte = [0u8; 1];
        match c.stream.read(&mut byte) {
            // An accepted connection stays silent until its login deadline.
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                accepted += 1
            }
            Ok(1) => {
                assert_eq!(byte[0], tether_proto::kind::GO_AWAY);
                refused += 1;
            }
            other => panic!("unexpected read result {other:?}"),
        }
    }
    if took < Duration::from_secs(8) {
        assert!(refused > 0, "none of 12 refused (accepted {accepted})");
    }
    assert!(
        accepted >= 3,
        "the burst must be admitted (accepted {accepted})"
    );
    // Other addresses are not affected.
    Client::connect_from(server.addr, ip(4))
        .unwrap()
        .log_in("rate-other", "d")
        .unwrap();
}

/// A connection from `from` that sent a login of `user` with a token that does not verify.
fn send_bad_login(server: &Server, from: IpAddr, user: &str) -> Client {
    let mut c = Client::connect_from(server.addr, from).unwrap();
    c.send(&Frame::Login(Login {
        version: PROTOCOL_VERSION,
        flags: 0,
        user: user.into(),
        device: "d".into(),
        token: "not-a-token".into(),
        heartbeat_ms: 60_000,
        network_key: String::new(),
    }))
    .unwrap();
    c
}

/// The frames a login with a bad token gets until the close.
fn bad_login(server: &Server, from: IpAddr, user: &str) -> Vec<Frame> {
    send_bad_login(server, from, user).until_closed().unwrap()
}

fn auth_failed(frames: &[Frame]) -> bool {
    matches!(frames, [Frame::Close(c)] if c.code == CloseCode::AuthFailed)
}

#[test]
fn a_failed_login_ban_covers_one_user_at_one_address_and_never_a_valid_token() {
    // One subscriber behind a carrier NAT fails logins in a loop: the ban must not reach the
    // others behind the same address, nor anyone who holds a valid token.
    let server = Server::start(&one_shard(
        "failed_logins = 3\nfailed_login_window_ms = 600000\nban_ms = 600000",
    ))
    .unwrap();
    for _ in 0..3 {
        let frames = bad_login(&server, ip(5), "mallory");
        assert!(auth_failed(&frames), "{frames:?}");
    }
    // Banned: mallory's failing login from that address is told to stay away for the rest of
    // the ban.
    let g = expect_backoff(&mut send_bad_login(&server, ip(5), "mallory"));
    assert!(g.window_ms > 500_000, "{g:?}");
    // Everyone else behind the address is served, with their own reasons.
    Client::connect_from(server.addr, ip(5))
        .unwrap()
        .log_in("neighbour", "d")
        .expect("a neighbour behind the same address logs in");
    let frames = bad_login(&server, ip(5), "stale-neighbour");
    assert!(auth_failed(&frames), "{frames:?}");
    // Mallory with a valid token passes the ban, which it ends.
    Client::connect_from(server.addr, ip(5))
        .unwrap()
        .log_in("mallory", "d")
        .expect("a valid token passes a ban");
    let frames = bad_login(&server, ip(5), "mallory");
    assert!(
        auth_failed(&frames),
        "the ban ended with the valid login: {frames:?}"
    );
    assert_eq!(server.counter("login_bans"), 1);
    assert_eq!(server.counter("refused_banned"), 1);
}

#[test]
fn login_rate_of_one_address_refuses_logins_beyond_it() {
    let server = Server::start(&one_shard(
        "per_address_login_rate = 1\nper_address_login_burst = 2",
    ))
    .unwrap();
    let start = Instant::now();
    let mut outcomes = Vec::new();
    let mut held = Vec::new();
    for i in 0..8 {
        let c = Client::connect_from(server.addr, ip(7)).unwrap();
        match c.log_in(&format!("lr-{i}"), "d") {
            Ok(ok) => {
                held.push(ok);
                outcomes.push(true);
            }
            Err(e) => {
                let text = format!("{e:#}");
                assert!(
                    text.contains("GoAway") && text.contains("Overloaded"),
                    "refused login answered with: {text}"
                );
                outcomes.push(false);
            }
        }
    }
    assert!(
        outcomes[0] && outcomes[1],
        "the burst logs in: {outcomes:?}"
    );
    if start.elapsed() < Duration::from_secs(5) {
        assert!(outcomes.contains(&false), "none refused: {outcomes:?}");
    }
}

#[test]
fn out_of_descriptors_refuses_with_a_back_off_without_spinning_or_flooding_the_log() {
    const NOFILE: u64 = 256;
    const CONNECTIONS: usize = 300;
    let settings = Settings {
        shards: 2,
        nofile: Some(NOFILE),
        log: "info",
        login_timeout_ms: 120_000,
        server_extra: "metrics_listen = \"127.0.0.1:0\"".into(),
        api_extra: "max_connections_per_address = 1024\nheader_timeout_ms = 120000\n".into(),
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let metrics: std::net::SocketAddr = server.metrics.expect("the metrics address is printed");
    // Connections live in the shards' rings, not in the process's descriptor table, so they
    // cannot exhaust it; HTTP connections can. Each is opened once the one before was
    // accepted, until no descriptor number below the limit is left (none waits in the API's
    // accept queue, where it could take a number the reserve gives back).
    let free = || {
        let fds = server.open_fds().unwrap();
        NOFILE as usize - fds.iter().filter(|&&n| u64::from(n) < NOFILE).count()
    };
    let mut http = Vec::new();
    while free() > 0 {
        let before = free();
        http.push(tether_tests::http::connect(server.api, None).unwrap());
        let until = Instant::now() + PATIENCE;
        while free() >= before {
            assert!(
                Instant::now() < until,
                "HTTP connection {} not accepted",
                http.len()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mark = server.cpu_mark();
    let mut clients: Vec<Client> = (0..CONNECTIONS)
        .map(|_| Client::connect(server.addr).unwrap())
        .collect();
    // Every connection is answered with the back-off and closed (one accepted on a number
    // something else gave back meanwhile would stay silent: its login deadline is two minutes
    // away).
    let beyond = CONNECTIONS - 5;
    let refused = take_refused(&mut clients, beyond);
    assert!(
        refused >= beyond,
        "only {refused} of the {CONNECTIONS} connections were answered without descriptors"
    );
    // A scrape waiting while the process has no descriptor: the metrics thread's accept fails
    // too, and must back off rather than spin.
    let _scrape = std::net::TcpStream::connect(metrics).unwrap();
    // Keep the accepted ones open a few seconds more: the server must idle, not spin.
    std::thread::sleep(Duration::from_secs(3));
    server.assert_idle_since(mark);
    let lines = server.log().lines().count();
    assert!(lines < 100, "{lines} log lines:\n{}", server.log());
    // Once descriptors are free again, the server accepts again.
    drop(clients);
    drop(http);
    server.client_when_room("after-emfile", "d");
}

#[test]
fn a_second_server_on_a_served_address_is_refused_unless_taking_over() {
    let first = Server::start(&Settings::default()).unwrap();
    let second = Settings {
        listen: first.addr,
        ..Settings::default()
    };
    let (status, log) = Server::start_refused(&second).unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(
        log.contains(&first.addr.to_string()) && log.contains("--takeover"),
        "the refusal names the address and the flag:\n{log}"
    );
    let takeover = Settings {
        args: vec!["--takeover".into()],
        ..second
    };
    let new = Server::start(&takeover).unwrap();
    assert_eq!(new.addr, first.addr);
    // Both serve while the old one drains.
    first.client("old-side", "d").unwrap();
}

/// A PROXY protocol v2 header for a TCP4 connection from `src`.
fn proxy_v4(src: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut h = tether_server::proxy::SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&7700u16.to_be_bytes());
    h
}

#[test]
fn with_proxy_protocol_the_caps_count_the_address_in_the_header() {
    let settings = Settings {
        server_extra: "proxy_protocol = true".into(),
        ..one_shard("per_address_connections = 1")
    };
    let server = Server::start(&settings).unwrap();
    let via_proxy = |src: Ipv4Addr, user: &str| {
        // Every connection comes from the same balancer address, 127.0.0.1.
        let mut c = Client::connect(server.addr).unwrap();
        c.send_raw(&proxy_v4(src, 40_000)).unwrap();
        c.log_in(user, "d")
    };
    let (_held, _) = via_proxy(Ipv4Addr::new(198, 18, 0, 10), "px-1").expect("first logs in");
    // Same original address: over its cap, although the balancer's address is shared.
    let err = via_proxy(Ipv4Addr::new(198, 18, 0, 10), "px-2").unwrap_err();
    assert!(format!("{err:#}").contains("Overloaded"), "{err:#}");
    // Another original address behind the same balancer.
    via_proxy(Ipv4Addr::new(198, 18, 0, 11), "px-3").expect("another address logs in");
    // No header: closed before any frame is read.
    let bare = Client::connect(server.addr).unwrap();
    let err = bare.log_in("px-bare", "d").unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("closed by the server") || text.contains("reset"),
        "a connection without the header is closed: {text}"
    );
    // A header split over two reads is put together.
    let mut split = Client::connect(server.addr).unwrap();
    let header = proxy_v4(Ipv4Addr::new(198, 18, 0, 12), 40_001);
    split.send_raw(&header[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    split.send_raw(&header[10..]).unwrap();
    split.log_in("px-4", "d").expect("a split header works");
}
