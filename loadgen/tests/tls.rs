//! TLS runs against the fake server behind a TLS front (an in-process rustls server that
//! passes the plaintext on, as a TLS-terminating proxy would): the loadgen's sessions, their
//! handshake latency and the causes of failed handshakes.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection};
use serde_json::Value;

use common::count;

/// A self-signed certificate for 127.0.0.1 (as PEM, for `--ca`) and a server configuration
/// with it that offers `alpn`.
fn server_config(alpn: &[&[u8]]) -> (String, Arc<ServerConfig>) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![made.cert.der().clone()], key)
            .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (made.cert.pem(), Arc::new(config))
}

/// Starts a TLS front for `backend` on a free port; a thread per connection.
fn front(backend: SocketAddr, config: Arc<ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || relay(client, backend, config));
        }
    });
    addr
}

/// Moves bytes between a TLS client and its plaintext backend until either side ends.
fn relay(client: TcpStream, backend: SocketAddr, config: Arc<ServerConfig>) {
    let Ok(upstream) = TcpStream::connect(backend) else {
        return;
    };
    client.set_nonblocking(true).unwrap();
    upstream.set_nonblocking(true).unwrap();
    let mut tls = ServerConnection::new(config).unwrap();
    let mut to_backend = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tls.read_tls(&mut &client) {
            Ok(0) => return,
            Ok(_) => {
                if tls.process_new_packets().is_err() {
                    let _ = tls.write_tls(&mut &client);
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        while let Ok(n) = tls.reader().read(&mut chunk) {
            if n == 0 {
                return;
            }
            to_backend.extend_from_slice(&chunk[..n]);
        }
        if !to_backend.is_empty() {
            match (&upstream).write(&to_backend) {
                Ok(n) => drop(to_backend.drain(..n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
        match (&upstream).read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => tls.writer().write_all(&chunk[..n]).unwrap(),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        while tls.wants_write() {
            match tls.write_tls(&mut &client) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        let mut fds = [
            libc::pollfd {
                fd: client.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: upstream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds. A short timeout covers the writes left for later.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 5) };
    }
}

/// Runs the loadgen against `addr` over TLS, trusting `ca_pem`, and returns its report.
fn loadgen(addr: SocketAddr, ca_pem: &str, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let mut all = args.to_vec();
    all.extend(["--connect-timeout", "3s"]);
    common::run_loadgen(
        addr,
        &all,
        &["--tls".as_ref(), "--ca".as_ref(), ca.as_os_str()],
    )
}

#[test]
fn idle_and_push_run_over_tls() {
    let server = common::start();
    let (ca, config) = server_config(&[b"tether"]);
    let addr = front(server.addr, config);
    let v = loadgen(
        addr,
        &ca,
        &[
            "idle",
            "-n",
            "40",
            "--rate",
            "400",
            "--interval",
            "200ms",
            "--duration",
            "1s",
        ],
    );
    assert_eq!(v["errors"], serde_json::json!({}), "{}", v["errors"]);
    assert_eq!(v["tls"], true);
    assert_eq!(v["online_after_ramp"], 40);
    assert_eq!(count(&v, "tls_handshake"), 40);
    assert!(count(&v, "ping_rtt") >= 40, "{}", v["latency_us"]);

    let v = loadgen(
        addr,
        &ca,
        &[
            "push",
            "-n",
            "20",
            "--rate",
            "400",
            "--msg-rate",
            "200",
            "--duration",
            "1s",
        ],
    );
    assert_eq!(v["errors"], serde_json::json!({}), "{}", v["errors"]);
    let sent = v["load"]["pushes_sent"].as_u64().unwrap();
    assert!(sent > 0);
    assert_eq!(v["load"]["delivered"].as_u64().unwrap(), sent);
    assert_eq!(count(&v, "push_result"), sent);
    assert!(server.counts.pushes.load(Ordering::Relaxed) >= sent);
}

#[test]
fn failed_handshakes_are_counted_by_cause() {
    let server = common::start();
    // The front does not speak tether's ALPN.
    let (ca, config) = server_config(&[]);
    let v = loadgen(
        front(server.addr, config),
        &ca,
        &["connect", "-n", "5", "--rate", "100"],
    );
    assert_eq!(
        v["errors"],
        serde_json::json!({"tls: the server did not agree to ALPN \"tether\"": 5})
    );
    // A certificate from another CA.
    let (_, config) = server_config(&[b"tether"]);
    let (other_ca, _) = server_config(&[b"tether"]);
    let v = loadgen(
        front(server.addr, config),
        &other_ca,
        &["connect", "-n", "5", "--rate", "100"],
    );
    assert_eq!(
        v["errors"],
        serde_json::json!({"tls: certificate not signed by --ca": 5})
    );
    assert_eq!(server.counts.logins.load(Ordering::Relaxed), 0);
}
