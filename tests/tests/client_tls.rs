//! The client library (`tether_client::Driver`) over the server's TLS listener: it logs in,
//! heartbeats and gets a push; a certificate it does not trust ends in a report that names
//! the cause.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tether_client::{Driver, Options, Report, Tls, TlsFailure};
use tether_proto::heartbeat::{ClientEvent, Credentials, HeartbeatConfig};
use tether_proto::{BackendPush, Frame};
use tether_tests::tls::Cert;
use tether_tests::{expiry, minter, Server, Settings, PATIENCE};

/// A driver for `user` that reaches the TLS listener `server`, trusting `ca`.
fn driver(server: std::net::SocketAddr, ca: &Cert, user: &str) -> Driver {
    Driver::new(Options {
        server,
        bind: None,
        credentials: Credentials {
            user: user.into(),
            device: "phone".into(),
            token: minter().client(user, "phone", expiry()).unwrap(),
        },
        network_key: String::new(),
        heartbeat: HeartbeatConfig::default(),
        seed: 3,
        max_frame: 1 << 20,
        tls: Some(Tls::with_ca_file(&ca.cert).unwrap()),
    })
    .unwrap()
}

#[test]
fn the_client_library_gets_a_push_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = Cert::new(dir.path(), "server", &[]).unwrap();
    let server = Server::start(&Settings {
        extra: cert.section(),
        ..Settings::default()
    })
    .unwrap();
    let tls = server.tls.expect("the server printed its TLS address");
    let mut driver = driver(tls, &cert, "tls-lib-user");
    let mut backend = server.backend("svc").unwrap();
    let mut got = None;
    let status = driver
        .run(Instant::now() + PATIENCE, |_, report| match report {
            Report::Event(ClientEvent::Online { .. }) => {
                backend
                    .send(&Frame::BackendPush(BackendPush {
                        id: 7,
                        flags: 0,
                        user: "tls-lib-user".into(),
                        payload: "over tls".into(),
                    }))
                    .unwrap();
                ControlFlow::Continue(())
            }
            Report::Event(ClientEvent::Received(Frame::Push(p))) => {
                got = Some(p.payload.clone());
                ControlFlow::Break(())
            }
            Report::TlsFailed(f) => panic!("TLS failed: {f}"),
            _ => ControlFlow::Continue(()),
        })
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"over tls"[..]), "{status:?}");
    assert!(status.online, "{status:?}");
    assert_eq!(status.tls_failures, 0);
}

#[test]
fn a_certificate_the_client_does_not_trust_is_reported_by_cause() {
    let dir = tempfile::tempdir().unwrap();
    let cert = Cert::new(dir.path(), "server", &[]).unwrap();
    let other = Cert::new(dir.path(), "other", &[]).unwrap();
    let server = Server::start(&Settings {
        extra: cert.section(),
        ..Settings::default()
    })
    .unwrap();
    let tls = server.tls.expect("the server printed its TLS address");
    let mut failure = None;
    driver(tls, &other, "tls-lib-stranger")
        .run(Instant::now() + Duration::from_secs(5), |_, report| {
            if let Report::TlsFailed(f) = report {
                failure = Some(f.clone());
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(failure, Some(TlsFailure::UnknownCa));
    // The plaintext port is not a TLS one, and the error says so.
    let mut failure = None;
    driver(server.addr, &cert, "tls-lib-lost")
        .run(Instant::now() + Duration::from_secs(5), |_, report| {
            if let Report::TlsFailed(f) = report {
                failure = Some(f.clone());
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(
        matches!(
            failure,
            Some(TlsFailure::NotTls | TlsFailure::ClosedInHandshake)
        ),
        "{failure:?}"
    );
}
