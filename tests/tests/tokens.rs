//! Tokens on live connections: a connection lives by its token and may refresh it in place;
//! a secret a reload withdraws ends the connections it authenticated after a grace.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tether_client::{Driver, Options, Report};
use tether_proto::heartbeat::{ClientEvent, Credentials, HeartbeatConfig};
use tether_proto::token::{Minter, Secret};
use tether_proto::{CloseCode, Frame, Login, Refresh, PROTOCOL_V1, PROTOCOL_V2};
use tether_tests::{Client, Server, Settings, BACKEND_SECRET, PATIENCE, SECRET};

const NEW_SECRET: &str = "tokens-test-new-client-secret-5d2e";
const NEW_BACKEND_SECRET: &str = "tokens-test-new-backend-secret-9b41";

fn unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn minter(secret: &str) -> Minter {
    Minter::new(&Secret::new(secret.as_bytes().to_vec()).unwrap())
}

/// Logs `user`/`device` in with protocol `version` and a token minted with `secret` that
/// ends `life_s` from now.
fn login(server: &Server, user: &str, version: u8, secret: &str, life_s: u64) -> Client {
    let mut c = Client::connect(server.addr).unwrap();
    c.send(&Frame::Login(Login {
        version,
        flags: 0,
        user: user.into(),
        device: "d".into(),
        token: minter(secret).client(user, "d", unix() + life_s).unwrap(),
        heartbeat_ms: 600_000,
        network_key: String::new(),
    }))
    .unwrap();
    match c.recv().unwrap() {
        Frame::LoginOk(_) => c,
        other => panic!("login of {user} answered with {other:?}"),
    }
}

fn settings(notice_s: u32, grace_s: u32) -> Settings {
    Settings {
        session_extra: format!("token_notice_s = {notice_s}\n"),
        auth_extra: format!("revoked_grace_s = {grace_s}\n"),
        ..Settings::default()
    }
}

fn close_code(frames: &[Frame]) -> Option<CloseCode> {
    match frames.last() {
        Some(Frame::Close(c)) => Some(c.code),
        _ => None,
    }
}

#[test]
fn a_version_1_connection_is_closed_when_its_token_expires() {
    // Before, a token was checked at login only: the connection outlived it for good.
    let server = Server::start(&settings(300, 60)).unwrap();
    let start = Instant::now();
    let mut c = login(&server, "ann", PROTOCOL_V1, SECRET, 3);
    let frames = c.until_closed().unwrap();
    assert_eq!(
        close_code(&frames),
        Some(CloseCode::TokenExpired),
        "{frames:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "closed after {:?}, long before its token ended",
        start.elapsed()
    );
}

#[test]
fn the_client_library_refreshes_through_the_apps_callback() {
    // Tokens of 4 s, notice 2 s before the end: without refreshes the connection would end
    // within 4 s; it stays up for 9 s on one connection.
    let server = Server::start(&settings(2, 60)).unwrap();
    let mint = |life_s: u64| {
        minter(SECRET)
            .client("bea", "phone", unix() + life_s)
            .unwrap()
    };
    let mut driver = Driver::new(Options {
        server: server.addr,
        bind: None,
        credentials: Credentials {
            user: "bea".into(),
            device: "phone".into(),
            token: mint(4),
        },
        network_key: String::new(),
        heartbeat: HeartbeatConfig::default(),
        seed: 1,
        max_frame: 1 << 20,
        tls: None,
    })
    .unwrap();
    let asked = Rc::new(Cell::new(0u32));
    let counter = Rc::clone(&asked);
    driver.set_token_source(move || {
        counter.set(counter.get() + 1);
        Some(mint(4))
    });
    let mut stopped = None;
    let status = driver
        .run(Instant::now() + Duration::from_secs(9), |_, report| {
            if let Report::Event(ClientEvent::Stopped { code }) = report {
                stopped = Some(*code);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(stopped, None, "{status:?}");
    assert!(status.online, "{status:?}");
    assert_eq!(status.main_connects, 1, "reconnected: {status:?}");
    assert!(status.token_refreshes >= 2, "{status:?}");
    assert_eq!(status.token_notices, u64::from(asked.get()), "{status:?}");
}

#[test]
fn a_withdrawn_secret_ends_its_connections_after_the_grace() {
    // The finding: a connection opened with a token of a secret the operator removed (a leak)
    // kept working until a restart.
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let mut settings = settings(60, 2);
    settings.secrets_file = Some(secrets.clone());
    let server = Server::start(&settings).unwrap();
    let mut v2 = login(&server, "v2", PROTOCOL_V2, SECRET, 3600);
    let mut v1 = login(&server, "v1", PROTOCOL_V1, SECRET, 3600);
    let mut refresher = login(&server, "refresher", PROTOCOL_V2, SECRET, 3600);
    let mut backend = Client::backend(server.addr, "svc").unwrap();

    std::fs::write(&secrets, format!("{NEW_SECRET}\n")).unwrap();
    std::fs::write(
        server.config_path(),
        settings.toml().replace(BACKEND_SECRET, NEW_BACKEND_SECRET),
    )
    .unwrap();
    server.sighup();

    // Version 2 peers are told at once (the grace is within the notice period).
    for c in [&mut v2, &mut refresher, &mut backend] {
        match c.recv().unwrap() {
            Frame::TokenNotice(n) => assert!(n.expires_in_ms <= 2_000, "{n:?}"),
            other => panic!("expected a TokenNotice, got {other:?}"),
        }
    }
    let token = minter(NEW_SECRET)
        .client("refresher", "d", unix() + 3600)
        .unwrap();
    refresher.send(&Frame::Refresh(Refresh { token })).unwrap();
    assert_eq!(refresher.recv().unwrap(), Frame::Refreshed);

    let start = Instant::now();
    for (name, c) in [("v2", &mut v2), ("v1", &mut v1), ("backend", &mut backend)] {
        let frames = c.until_closed().unwrap();
        assert_eq!(
            close_code(&frames),
            Some(CloseCode::TokenExpired),
            "{name}: {frames:?}"
        );
    }
    assert!(start.elapsed() < PATIENCE);
    // The refreshed one lives on, by a secret still in use.
    std::thread::sleep(Duration::from_millis(1_500));
    refresher
        .ping(600_000)
        .expect("the refreshed connection was closed");
}
