//! Sink `nats` against a real `nats-server` on loopback (skipped, with a note, when it is not
//! installed), with a backend that answers in a queue group.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_lite::StreamExt;
use tether_proto::{RefuseReason, UpstreamStatus};

use super::{config, job, Harness};
use crate::upstream::{Sink, UpstreamConfig};

const SUBJECT: &str = "tether.test.upstream";

/// A `nats-server` on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts one on a port it picks itself, or `None` (with a note) when `nats-server` is not
    /// on the PATH. (A port taken from the kernel and handed over could be handed to a test
    /// running beside this one too; the second server would then fail to listen while the
    /// first one answered for it.)
    fn start() -> Option<Server> {
        let mut child = match Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: nats-server is not installed ({e})");
                return None;
            }
        };
        let stderr = child.stderr.take().expect("piped stderr");
        let (port_tx, port_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Reads the log to its end, so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("Listening for client connections on 127.0.0.1:")
                    .nth(1)
                    .and_then(|p| p.trim().parse::<u16>().ok())
                {
                    let _ = port_tx.send(port);
                }
            }
        });
        let mut server = Server { child, port: 0 };
        server.port = port_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("nats-server did not say where it listens");
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", server.port)).is_err() {
            assert!(Instant::now() < until, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backend on its own thread: in queue group `backends` on [`SUBJECT`], it answers
/// `deny` with `Tether-Status: rejected` and a reason, anything else with `ok:` and the
/// payload; it reports each request's headers. Returns once it is subscribed.
/// What the test backend is asked until it answers, before it counts as ready; not reported.
const READY_PROBE: &[u8] = b"ready?";

fn backend(url: String) -> mpsc::Receiver<HeaderMap> {
    let (seen_tx, seen) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = async_nats::connect(url.clone()).await.unwrap();
            let mut sub = client
                .queue_subscribe(SUBJECT, "backends".into())
                .await
                .unwrap();
            client.flush().await.unwrap();
            // A flush does not say the server has registered the subscription: ready once a
            // request from another connection is answered through it.
            let prober = async_nats::connect(url).await.unwrap();
            let probe = async move {
                while prober
                    .request(SUBJECT, Bytes::from_static(READY_PROBE))
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ready_tx.send(()).unwrap();
            };
            tokio::spawn(probe);
            while let Some(msg) = sub.next().await {
                if &msg.payload[..] != READY_PROBE {
                    let _ = seen_tx.send(msg.headers.clone().unwrap_or_default());
                }
                let Some(reply) = msg.reply else { continue };
                if &msg.payload[..] == b"deny" {
                    let mut h = HeaderMap::new();
                    h.insert("Tether-Status", "rejected");
                    client
                        .publish_with_headers(reply, h, Bytes::from_static(b"not allowed"))
                        .await
                        .unwrap();
                } else {
                    let mut body = b"ok:".to_vec();
                    body.extend_from_slice(&msg.payload);
                    client.publish(reply, body.into()).await.unwrap();
                }
                client.flush().await.unwrap();
            }
        });
    });
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    seen
}

fn nats_config() -> UpstreamConfig {
    UpstreamConfig {
        nats_subject: SUBJECT.into(),
        ..config(Sink::Nats)
    }
}

/// Waits until the thread's NATS connection is up.
fn connected(h: &Harness) {
    let until = Instant::now() + Duration::from_secs(10);
    while h.stat("connected") == 0 {
        assert!(
            Instant::now() < until,
            "the upstream thread did not connect"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn nats_accepted_rejected_and_no_responders() {
    let Some(server) = Server::start() else {
        return;
    };
    let cfg = UpstreamConfig {
        timeout_ms: 5_000,
        ..nats_config()
    };
    let h = Harness::start(cfg, vec![server.url()], 16);
    connected(&h);
    // Nobody subscribed yet: no responders, at once.
    let start = Instant::now();
    h.send(job(1, 1, "early"));
    let (id, outcome) = h.result();
    assert_eq!(id, 1);
    assert_eq!(
        outcome.status,
        UpstreamStatus::Refused(RefuseReason::NoBackend)
    );
    assert!(start.elapsed() < Duration::from_millis(2_500));

    let seen = backend(server.url());
    let mut hello = job(1, 2, "hello");
    hello.user = "José".into();
    h.send(hello);
    let (id, outcome) = h.result();
    assert_eq!((id, outcome.status), (2, UpstreamStatus::Accepted));
    assert_eq!(&outcome.reply[..], b"ok:hello");
    let headers = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    let get = |n: &str| headers.get(n).map(|v| v.as_str().to_owned());
    assert_eq!(get("Tether-User").as_deref(), Some("Jos%C3%A9"));
    assert_eq!(get("Tether-Device").as_deref(), Some("phone"));
    assert_eq!(get("Tether-Session").as_deref(), Some("42"));
    assert_eq!(get("Tether-Client-Id").as_deref(), Some("2"));

    h.send(job(1, 3, "deny"));
    let (id, outcome) = h.result();
    assert_eq!(
        (id, outcome.status),
        (3, UpstreamStatus::Refused(RefuseReason::Rejected))
    );
    assert_eq!(&outcome.reply[..], b"not allowed");
    assert_eq!(h.stat("accepted"), 1);
    assert_eq!(h.stat("rejected"), 1);
    assert_eq!(h.stat("no_backend"), 1);
}

#[test]
fn nats_unreachable_is_no_backend_at_once() {
    // A port bound and never listened on: connections to it are refused, and nothing else can
    // take it while the test runs.
    let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    closed
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = closed.local_addr().unwrap().as_socket().unwrap().port();
    let url = format!("nats://127.0.0.1:{port}");
    let cfg = UpstreamConfig {
        timeout_ms: 5_000,
        ..nats_config()
    };
    let h = Harness::start(cfg, vec![url], 16);
    let start = Instant::now();
    h.send(job(1, 1, "x"));
    let (_, outcome) = h.result();
    assert_eq!(
        outcome.status,
        UpstreamStatus::Refused(RefuseReason::NoBackend)
    );
    assert!(start.elapsed() < Duration::from_millis(2_500));
    assert_eq!(h.stat("connected"), 0);
}

#[test]
fn nats_silent_backend_is_timed_out_at_the_timeout() {
    let Some(server) = Server::start() else {
        return;
    };
    // A subscriber that never answers.
    let (ready_tx, ready) = mpsc::channel();
    let url = server.url();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let mut sub = client.subscribe(SUBJECT).await.unwrap();
            client.flush().await.unwrap();
            ready_tx.send(()).unwrap();
            while sub.next().await.is_some() {}
        });
    });
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    let cfg = UpstreamConfig {
        timeout_ms: 300,
        ..nats_config()
    };
    let h = Harness::start(cfg, vec![server.url()], 16);
    connected(&h);
    let start = Instant::now();
    h.send(job(1, 1, "x"));
    let (_, outcome) = h.result();
    let took = start.elapsed();
    assert_eq!(
        outcome.status,
        UpstreamStatus::Refused(RefuseReason::TimedOut)
    );
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(2_500),
        "{took:?}"
    );
}
