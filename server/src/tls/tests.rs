//! A rustls client against [`TlsConn`], in memory.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::config::{CertFiles, TlsConfig};
use super::session::{Progress, TlsConn, TlsError};

/// A certificate for `names` written as PEM files in `dir`: (certificate path, key path, DER).
pub fn certificate(
    dir: &std::path::Path,
    stem: &str,
    names: &[&str],
) -> (String, String, CertificateDer<'static>) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("certificate");
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (
        cert.display().to_string(),
        key.display().to_string(),
        CertificateDer::from(ck.cert.der().to_vec()),
    )
}

/// `[tls]` serving `cert`/`key`.
pub fn config(cert: &str, key: &str) -> TlsConfig {
    TlsConfig {
        listen: "127.0.0.1:0".into(),
        certificate: cert.into(),
        key: key.into(),
        sni: Vec::new(),
        alpn: vec!["tether".into()],
        handshakes_per_batch: 32,
    }
}

fn client(root: &CertificateDer<'static>, alpn: &[&[u8]], name: &str) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut cc =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    cc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    ClientConnection::new(
        Arc::new(cc),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap()
}

/// The server side of a test: a `TlsConn` and what it produced.
struct Server {
    conn: TlsConn,
    plain: Vec<u8>,
    closed: bool,
    opened: bool,
}

impl Server {
    fn new(tls: &TlsConfig) -> Server {
        Server {
            conn: TlsConn::new(tls.server_config().unwrap()).unwrap(),
            plain: Vec::new(),
            closed: false,
            opened: false,
        }
    }

    /// Feeds `bytes` in pieces of `split`; returns what to send back.
    fn feed(&mut self, bytes: &[u8], split: usize) -> Result<Vec<u8>, (TlsError, Vec<u8>)> {
        let mut wire = Vec::new();
        let mut scratch = Vec::new();
        for piece in bytes.chunks(split.max(1)) {
            match self
                .conn
                .receive(piece, &mut self.plain, &mut wire, &mut scratch)
            {
                Ok(Progress::Opened) => self.opened = true,
                Ok(Progress::PeerClosed) => self.closed = true,
                Ok(Progress::Continue) => {}
                Err(e) => return Err((e, wire)),
            }
        }
        Ok(wire)
    }
}

/// Moves bytes both ways until neither side has anything to say.
fn pump(c: &mut ClientConnection, s: &mut Server, split: usize) {
    for _ in 0..10 {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        let back = s.feed(&out, split).expect("server side");
        let mut r = &back[..];
        while !r.is_empty() {
            c.read_tls(&mut r).unwrap();
            c.process_new_packets().unwrap();
        }
        if out.is_empty() && back.is_empty() {
            return;
        }
    }
}

fn read_all(c: &mut ClientConnection) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    got
}

#[test]
fn a_client_handshakes_and_bytes_flow_both_ways_at_any_split() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path(), "a", &["localhost"]);
    let tls = config(&cert, &key);
    for split in [1, 7, 100, 100_000] {
        let mut c = client(&der, &[b"tether"], "localhost");
        let mut s = Server::new(&tls);
        c.writer().write_all(b"login frame").unwrap();
        pump(&mut c, &mut s, split);
        assert!(s.opened && s.conn.is_open(), "split {split}");
        assert_eq!(c.alpn_protocol(), Some(&b"tether"[..]));
        assert_eq!(s.plain, b"login frame", "split {split}");
        // The server's records reach the client, in order, across many records.
        let big = vec![42u8; 40_000];
        let mut wire = Vec::new();
        s.conn.encrypt(b"pong", &mut wire).unwrap();
        s.conn.encrypt(&big, &mut wire).unwrap();
        let mut r = &wire[..];
        let mut got = Vec::new();
        while !r.is_empty() {
            c.read_tls(&mut r).unwrap();
            c.process_new_packets().unwrap();
            got.extend(read_all(&mut c));
        }
        assert_eq!(&got[..4], b"pong");
        assert_eq!(&got[4..], &big[..]);
        // close_notify ends the stream.
        c.send_close_notify();
        pump(&mut c, &mut s, split);
        assert!(s.closed, "split {split}");
    }
}

#[test]
fn key_updates_from_the_client_are_followed_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path(), "a", &["localhost"]);
    let tls = config(&cert, &key);
    let mut c = client(&der, &[b"tether"], "localhost");
    let mut s = Server::new(&tls);
    pump(&mut c, &mut s, 1000);
    for round in 0..3 {
        // rustls asks the peer to update too: the server must answer with its own.
        c.refresh_traffic_keys().unwrap();
        c.writer()
            .write_all(format!("after update {round}").as_bytes())
            .unwrap();
        pump(&mut c, &mut s, 3);
        let mut wire = Vec::new();
        s.conn.encrypt(b"with new keys", &mut wire).unwrap();
        let mut r = &wire[..];
        while !r.is_empty() {
            c.read_tls(&mut r).unwrap();
            c.process_new_packets().unwrap();
        }
        assert_eq!(read_all(&mut c), b"with new keys");
    }
    assert_eq!(s.plain, b"after update 0after update 1after update 2");
}

#[test]
fn bad_input_fails_the_handshake_with_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path(), "a", &["localhost"]);
    let tls = config(&cert, &key);
    // Plaintext on the TLS port: a tether frame, an HTTP request.
    for bytes in [
        &[0x01, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5][..],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut s = Server::new(&tls);
        let (e, alert) = s.feed(bytes, 1000).expect_err("refused");
        assert!(matches!(e, TlsError::Handshake(_)), "{e}");
        assert_eq!(alert.first(), Some(&21), "an alert record");
    }
    // A truncated ClientHello waits (the login deadline ends it); garbage after a valid start
    // fails.
    let mut c = client(&der, &[b"tether"], "localhost");
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    let mut s = Server::new(&tls);
    assert!(s.feed(&hello[..hello.len() / 2], 1000).unwrap().is_empty());
    assert!(s.conn.is_handshaking());
    let mut garbage = hello[hello.len() / 2..].to_vec();
    for b in garbage.iter_mut().skip(4) {
        *b = 0xff;
    }
    assert!(s.feed(&garbage, 1000).is_err());
    // More handshake bytes than allowed.
    let mut s = Server::new(&tls);
    let header = [22, 3, 1, 0xff, 0xff];
    let mut flood = header.to_vec();
    flood.resize(40_000, 0);
    assert!(matches!(
        s.feed(&flood, 40_000),
        Err((TlsError::TooLarge, _)) | Err((TlsError::Handshake(_), _))
    ));
}

#[test]
fn sni_picks_the_certificate_and_an_unknown_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der_a) = certificate(dir.path(), "a", &["a.example"]);
    let (cert_b, key_b, der_b) = certificate(dir.path(), "b", &["b.example"]);
    let mut tls = config(&cert, &key);
    tls.sni = vec![CertFiles {
        certificate: cert_b.into(),
        key: key_b.into(),
    }];
    for (name, der) in [("a.example", &der_a), ("b.example", &der_b)] {
        let mut c = client(der, &[b"tether"], name);
        let mut s = Server::new(&tls);
        pump(&mut c, &mut s, 1000);
        assert!(s.conn.is_open(), "{name}");
    }
    let mut c = client(&der_a, &[b"tether"], "c.example");
    let mut s = Server::new(&tls);
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    assert!(s.feed(&hello, 1000).is_err(), "unknown name refused");
}

#[test]
fn a_client_without_the_protocol_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path(), "a", &["localhost"]);
    let tls = config(&cert, &key);
    let mut c = client(&der, &[b"h2"], "localhost");
    let mut s = Server::new(&tls);
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    let (_, wire) = s.feed(&hello, 1000).expect_err("no common protocol");
    // The client reads why: rustls had begun its answer, and the alert follows it.
    let mut r = &wire[..];
    let mut told = None;
    while !r.is_empty() && told.is_none() {
        c.read_tls(&mut r).unwrap();
        told = c.process_new_packets().err();
    }
    let told = told
        .expect("the client learns the handshake failed")
        .to_string();
    assert!(told.contains("NoApplicationProtocol"), "{told}");
    // No ALPN at all is served.
    let mut c = client(&der, &[], "localhost");
    let mut s = Server::new(&tls);
    pump(&mut c, &mut s, 1000);
    assert!(s.conn.is_open());
}

#[test]
fn records_after_the_handshake_that_do_not_authenticate_close_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path(), "a", &["localhost"]);
    let tls = config(&cert, &key);
    let mut c = client(&der, &[b"tether"], "localhost");
    let mut s = Server::new(&tls);
    pump(&mut c, &mut s, 1000);
    c.writer().write_all(b"ping").unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    let last = out.len() - 1;
    out[last] ^= 1;
    let (e, alert) = s.feed(&out, 1000).expect_err("tampered");
    assert!(matches!(e, TlsError::Record(_)), "{e}");
    assert!(!alert.is_empty(), "bad_record_mac sent");
    // Nothing more is read.
    assert!(s.feed(b"more", 1000).unwrap().is_empty());
}

#[test]
fn bad_files_are_named_and_a_mismatched_pair_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate(dir.path(), "a", &["localhost"]);
    let (_, other_key, _) = certificate(dir.path(), "b", &["localhost"]);
    let e = config(&cert, &other_key)
        .server_config()
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong"), "{e}");
    let e = config("/nonexistent.pem", &key)
        .server_config()
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent.pem"), "{e}");
    let e = config(&key, &key).server_config().unwrap_err().to_string();
    assert!(
        e.contains("certificate") && e.contains("no CERTIFICATE"),
        "{e}"
    );
    let e = config(&cert, &cert)
        .server_config()
        .unwrap_err()
        .to_string();
    assert!(e.contains("key"), "{e}");
    // The key's bytes never appear in an error.
    let pem = std::fs::read_to_string(&other_key).unwrap();
    let body: String = pem
        .lines()
        .nth(1)
        .unwrap_or_default()
        .chars()
        .take(20)
        .collect();
    assert!(!e.contains(&body));
}
