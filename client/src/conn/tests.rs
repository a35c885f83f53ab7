//! The TLS layer of [`Conn`] against an in-process rustls server on a loopback socket, whose
//! bytes cross in small odd pieces so every record arrives split.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use tether_proto::{codec, Frame, Ping, Push, PushAck, PROTOCOL_VERSION};

use super::{Conn, ConnError};
use crate::tls::{Tls, TlsFailure, ALPN};

/// Most turns a test drives before it gives up.
const TURNS: usize = 5_000;

/// A self-signed certificate and its key.
struct Cert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn cert(names: &[&str]) -> Cert {
    cert_named("tether test", names)
}

/// A self-signed certificate whose subject (and so issuer) is `CN=common_name`.
fn cert_named(common_name: &str, names: &[&str]) -> Cert {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let key = rcgen::KeyPair::generate().unwrap();
    let made = params.self_signed(&key).unwrap();
    Cert {
        der: made.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    }
}

fn trusting(cert: &Cert) -> Tls {
    let mut roots = RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    Tls::with_roots(roots)
}

/// The server end: a rustls session over an accepted socket, moved by hand `piece` bytes at a
/// time each way.
struct Server {
    tls: ServerConnection,
    stream: TcpStream,
    piece: usize,
    /// Records the session produced that the socket has not taken yet.
    out: Vec<u8>,
    /// Plaintext received.
    plain: BytesMut,
    /// The session failed (after the client's alert, say).
    failed: Option<rustls::Error>,
}

impl Server {
    fn step(&mut self) {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.out).unwrap();
        }
        if !self.out.is_empty() {
            let n = self.piece.min(self.out.len());
            match self.stream.write(&self.out[..n]) {
                Ok(n) => drop(self.out.drain(..n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("server write: {e}"),
            }
        }
        let mut buf = vec![0; self.piece];
        let n = match self.stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // The client went away (after its alert, say).
            Err(_) => 0,
        };
        if n == 0 || self.failed.is_some() {
            return;
        }
        self.tls.read_tls(&mut &buf[..n]).unwrap();
        if let Err(e) = self.tls.process_new_packets() {
            self.failed = Some(e);
        }
    }

    /// Moves received plaintext into `plain`.
    fn take_plain(&mut self) {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = self.tls.reader().read(&mut chunk) {
            if n == 0 {
                break;
            }
            self.plain.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A client connected to a fresh in-process server with `config`, and that server.
fn pair(config: ServerConfig, tls: &Tls, piece: usize) -> (Conn, Server) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let conn = Conn::connect(
        listener.local_addr().unwrap(),
        None,
        PROTOCOL_VERSION,
        Some(tls),
    )
    .unwrap();
    let (stream, _) = listener.accept().unwrap();
    stream.set_nonblocking(true).unwrap();
    stream.set_nodelay(true).unwrap();
    let server = Server {
        tls: ServerConnection::new(Arc::new(config)).unwrap(),
        stream,
        piece,
        out: Vec::new(),
        plain: BytesMut::new(),
        failed: None,
    };
    (conn, server)
}

fn server_config(cert: &Cert, alpn: &[&[u8]]) -> ServerConfig {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der.clone()], cert.key.clone_key())
            .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// One turn of the client as the driver runs it: wait for what it is interested in, then
/// move the connect or handshake on, or write and read.
fn client_turn(conn: &mut Conn) -> Result<(), ConnError> {
    let mut pfd = libc::pollfd {
        fd: conn.fd(),
        events: conn.interest(),
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 2) };
    if n <= 0 || pfd.revents == 0 {
        return Ok(());
    }
    if !conn.is_connected() {
        conn.establish()?;
        return Ok(());
    }
    if pfd.revents & libc::POLLOUT != 0 {
        conn.flush()?;
    }
    if pfd.revents & libc::POLLIN != 0 && !conn.read()? {
        return Err(std::io::Error::from(ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

/// Turns of both ends until `done`; the client's error if it fails first.
fn drive(
    conn: &mut Conn,
    server: &mut Server,
    mut done: impl FnMut(&mut Conn, &mut Server) -> bool,
) -> Result<(), ConnError> {
    for _ in 0..TURNS {
        server.step();
        client_turn(conn)?;
        if done(conn, server) {
            return Ok(());
        }
    }
    panic!("not done after {TURNS} turns");
}

#[test]
fn frames_cross_a_tls_session_split_at_odd_boundaries() {
    let cert = cert(&["localhost", "127.0.0.1"]);
    let (mut conn, mut server) = pair(server_config(&cert, &[ALPN, b"other"]), &trusting(&cert), 7);
    // A frame queued before the handshake waits for it.
    conn.send(&Frame::Ping(Ping { lease_ms: 123_457 })).unwrap();
    drive(&mut conn, &mut server, |c, _| c.is_connected()).unwrap();
    assert_eq!(server.tls.alpn_protocol(), Some(ALPN));
    conn.send(&Frame::PushAck(PushAck {
        id: 0x1234_5678_9abc,
    }))
    .unwrap();
    let mut got = Vec::new();
    drive(&mut conn, &mut server, |_, s| {
        s.take_plain();
        while let Some(f) = codec::decode(&mut s.plain, 1 << 16).unwrap() {
            got.push(f);
        }
        got.len() == 2
    })
    .unwrap();
    assert_eq!(
        got,
        [
            Frame::Ping(Ping { lease_ms: 123_457 }),
            Frame::PushAck(PushAck {
                id: 0x1234_5678_9abc
            }),
        ]
    );

    // One frame in two records, cut at an odd offset.
    let payload: Bytes = (0..1001u32).map(|i| (i * 7) as u8).collect();
    let push = Frame::Push(Push {
        id: 99,
        payload: payload.clone(),
    });
    let mut bytes = BytesMut::new();
    codec::encode(&push, &mut bytes).unwrap();
    server.tls.writer().write_all(&bytes[..13]).unwrap();
    server.tls.writer().write_all(&bytes[13..]).unwrap();
    let mut received = None;
    drive(&mut conn, &mut server, |c, _| {
        received = c.next_frame(1 << 16).unwrap();
        received.is_some()
    })
    .unwrap();
    assert_eq!(received, Some(push));
}

#[test]
fn a_certificate_from_an_unknown_ca_is_refused_by_name() {
    // Another CA's certificate, and one named like ours but signed by another key.
    for theirs in ["their CA", "our CA"] {
        let theirs = cert_named(theirs, &["127.0.0.1"]);
        let ours = cert_named("our CA", &["127.0.0.1"]);
        let (mut conn, mut server) = pair(server_config(&theirs, &[ALPN]), &trusting(&ours), 11);
        let err = drive(&mut conn, &mut server, |_, _| false).unwrap_err();
        assert!(
            matches!(&err, ConnError::Tls(TlsFailure::UnknownCa)),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("not signed by a trusted CA"),
            "{err}"
        );
        // The server heard why.
        for _ in 0..100 {
            server.step();
        }
        assert!(server.failed.is_some(), "the server got no alert");
    }
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let cert = cert(&["tether.example"]);
    let (mut conn, mut server) = pair(server_config(&cert, &[ALPN]), &trusting(&cert), 64);
    let err = drive(&mut conn, &mut server, |_, _| false).unwrap_err();
    assert!(
        matches!(err, ConnError::Tls(TlsFailure::NameMismatch)),
        "{err:?}"
    );
    // Asking for the certificate's name makes the same server acceptable.
    let tls = trusting(&cert).server_name("tether.example").unwrap();
    let (mut conn, mut server) = pair(server_config(&cert, &[ALPN]), &tls, 64);
    drive(&mut conn, &mut server, |c, _| c.is_connected()).unwrap();
}

#[test]
fn a_server_without_the_tether_alpn_is_refused() {
    let cert = cert(&["127.0.0.1"]);
    // No ALPN at all: the handshake completes, but nothing says this is tether.
    let (mut conn, mut server) = pair(server_config(&cert, &[]), &trusting(&cert), 5);
    let err = drive(&mut conn, &mut server, |_, _| false).unwrap_err();
    assert!(matches!(err, ConnError::Tls(TlsFailure::NoAlpn)), "{err:?}");
    assert!(err.to_string().contains("\"tether\" (ALPN)"), "{err}");
    // Other protocols only: the server refuses the offer with an alert.
    let (mut conn, mut server) = pair(server_config(&cert, &[b"h2"]), &trusting(&cert), 5);
    let err = drive(&mut conn, &mut server, |_, _| false).unwrap_err();
    assert!(matches!(err, ConnError::Tls(TlsFailure::NoAlpn)), "{err:?}");
}

#[test]
fn a_plaintext_server_ends_the_handshake_with_a_clear_error() {
    let cert = cert(&["127.0.0.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut conn = Conn::connect(
        listener.local_addr().unwrap(),
        None,
        PROTOCOL_VERSION,
        Some(&trusting(&cert)),
    )
    .unwrap();
    let (stream, _) = listener.accept().unwrap();
    let mut err = None;
    for _ in 0..TURNS {
        if let Err(e) = client_turn(&mut conn) {
            err = Some(e);
            break;
        }
        // The plaintext server reads the hello as garbage and hangs up.
        if conn.interest() & libc::POLLIN != 0 {
            stream.shutdown(std::net::Shutdown::Both).unwrap();
        }
    }
    let err = err.expect("the handshake should fail");
    assert!(
        matches!(err, ConnError::Tls(TlsFailure::ClosedInHandshake)),
        "{err:?}"
    );
}

#[test]
fn a_bad_ca_file_says_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("tether-client-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let err = Tls::with_ca_file(&empty).unwrap_err();
    assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    let missing = dir.join("missing.pem");
    assert!(Tls::with_ca_file(&missing).is_err());
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let good = dir.join("ca.pem");
    std::fs::write(&good, made.cert.pem()).unwrap();
    Tls::with_ca_file(&good).unwrap();
    assert!(Tls::with_ca_file(&good)
        .unwrap()
        .server_name("not a name!")
        .is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_plaintext_answer_to_the_hello_says_it_is_not_tls() {
    let cert = cert(&["127.0.0.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut conn = Conn::connect(
        listener.local_addr().unwrap(),
        None,
        PROTOCOL_VERSION,
        Some(&trusting(&cert)),
    )
    .unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    // A tether server reads the hello as a frame it cannot decode and answers with a Close.
    let mut close = BytesMut::new();
    codec::encode(
        &Frame::Close(tether_proto::Close {
            code: tether_proto::CloseCode::ProtocolError,
            text: String::new(),
        }),
        &mut close,
    )
    .unwrap();
    stream.write_all(&close).unwrap();
    let mut err = None;
    for _ in 0..TURNS {
        if let Err(e) = client_turn(&mut conn) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("the handshake should fail");
    assert!(matches!(err, ConnError::Tls(TlsFailure::NotTls)), "{err:?}");
    assert!(err.to_string().contains("plaintext port"), "{err}");
}
