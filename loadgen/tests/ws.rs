//! WebSocket runs against the fake server behind a WebSocket front (an in-process proxy that
//! answers the upgrade, unmasks the client's frames and passes the bytes on, and wraps the
//! server's bytes in frames of a few bytes each, with pings between them): the loadgen's
//! upgrade, masking and unwrapping, its upgrade latency and the causes of failed upgrades.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;

use common::count;

/// What the front saw.
#[derive(Debug, Default)]
struct FrontCounts {
    /// Upgrades answered with 101.
    upgrades: AtomicU64,
    /// Client frames without a mask (each ends its connection).
    unmasked: AtomicU64,
    /// Pongs that came back for the front's pings.
    pongs: AtomicU64,
    /// Pings the front sent.
    pings: AtomicU64,
}

/// Starts a WebSocket front for `backend` on a free port, serving `path`.
fn front(backend: SocketAddr, path: &'static str) -> (SocketAddr, Arc<FrontCounts>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(FrontCounts::default());
    let c = counts.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let c = c.clone();
            std::thread::spawn(move || serve(client, backend, path, c));
        }
    });
    (addr, counts)
}

/// One connection: the upgrade, then a thread each way.
fn serve(client: TcpStream, backend: SocketAddr, path: &str, counts: Arc<FrontCounts>) {
    client.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let header = |name: &str| {
        head.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut out = &client;
    if head[0] != format!("GET {path} HTTP/1.1") {
        let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    assert_eq!(header("Upgrade").as_deref(), Some("websocket"));
    assert_eq!(header("Sec-WebSocket-Version").as_deref(), Some("13"));
    assert_eq!(header("Sec-WebSocket-Protocol").as_deref(), Some("tether"));
    let key = header("Sec-WebSocket-Key").expect("a key");
    let Ok(upstream) = TcpStream::connect(backend) else {
        return;
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: tether\r\n\r\n",
        tether_loadgen::ws::accept(&key)
    );
    out.write_all(answer.as_bytes()).unwrap();
    counts.upgrades.fetch_add(1, Ordering::Relaxed);
    let (down_client, down_backend) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let c = counts.clone();
    std::thread::spawn(move || downstream(down_backend, down_client, c));
    upstream_frames(reader, upstream, &counts);
    let _ = client.shutdown(Shutdown::Both);
}

/// The client's frames, unmasked, to the backend.
fn upstream_frames(mut from: BufReader<TcpStream>, mut to: TcpStream, counts: &FrontCounts) {
    loop {
        let mut h = [0u8; 2];
        if from.read_exact(&mut h).is_err() {
            break;
        }
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                from.read_exact(&mut b).unwrap();
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                from.read_exact(&mut b).unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        if h[1] & 0x80 == 0 {
            counts.unmasked.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let mut mask = [0u8; 4];
        let mut payload = vec![0u8; len];
        if from.read_exact(&mut mask).is_err() || from.read_exact(&mut payload).is_err() {
            break;
        }
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        match h[0] & 0x0f {
            0x0 | 0x2 => {
                if to.write_all(&payload).is_err() {
                    break;
                }
            }
            0xA => {
                assert_eq!(payload, b"front");
                counts.pongs.fetch_add(1, Ordering::Relaxed);
            }
            _ => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// The backend's bytes to the client in frames of 1 to 5 bytes, each its own message or a
/// fragment of one, with a ping every few reads.
fn downstream(mut from: TcpStream, mut to: TcpStream, counts: Arc<FrontCounts>) {
    let mut chunk = [0u8; 16 * 1024];
    let mut turn = 0usize;
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut wire = Vec::new();
        if turn % 3 == 0 {
            wire.extend_from_slice(&[0x89, 5]);
            wire.extend_from_slice(b"front");
            counts.pings.fetch_add(1, Ordering::Relaxed);
        }
        let mut at = 0;
        let mut first = true;
        while at < n {
            let size = (1 + (turn + at) % 5).min(n - at);
            let last = at + size == n;
            // Odd turns: one fragmented message per read; even: a message per piece.
            let (fin, opcode) = if turn % 2 == 1 {
                (last, if first { 0x2 } else { 0x0 })
            } else {
                (true, 0x2)
            };
            wire.push(if fin { 0x80 } else { 0 } | opcode);
            wire.push(size as u8);
            wire.extend_from_slice(&chunk[at..at + size]);
            at += size;
            first = false;
        }
        turn += 1;
        if to.write_all(&wire).is_err() {
            break;
        }
    }
    let _ = to.write_all(&[0x88, 2, 0x03, 0xe8]);
    let _ = to.shutdown(Shutdown::Both);
}

/// Runs the loadgen against `addr` over WebSocket and returns its report.
fn loadgen(addr: SocketAddr, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--connect-timeout", "3s"]);
    common::run_loadgen(addr, &all, &["--transport".as_ref(), "ws".as_ref()])
}

#[test]
fn idle_and_push_run_over_websocket() {
    let server = common::start();
    let (addr, front) = front(server.addr, "/tether");
    let v = loadgen(
        addr,
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
    assert_eq!(v["websocket"], true);
    assert_eq!(v["online_after_ramp"], 40);
    assert_eq!(count(&v, "upgrade"), 40);
    assert_eq!(count(&v, "login"), 40);
    assert!(count(&v, "ping_rtt") >= 40, "{}", v["latency_us"]);
    assert_eq!(front.upgrades.load(Ordering::Relaxed), 40);
    assert_eq!(front.unmasked.load(Ordering::Relaxed), 0);
    assert!(front.pings.load(Ordering::Relaxed) > 0);

    let v = loadgen(
        addr,
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
    assert_eq!(front.unmasked.load(Ordering::Relaxed), 0);
    // Every ping of the front is answered (the last ones may still be on their way).
    assert!(front.pongs.load(Ordering::Relaxed) > 0);
}

#[test]
fn failed_upgrades_are_counted_by_cause() {
    let server = common::start();
    let (addr, _) = front(server.addr, "/tether");
    let v = loadgen(
        addr,
        &["connect", "-n", "5", "--rate", "100", "--ws-path", "/other"],
    );
    assert_eq!(
        v["errors"],
        serde_json::json!({"ws upgrade: refused with HTTP 404": 5})
    );
    // A tether listener, not a WebSocket one: it reads the request as a frame and closes.
    let v = loadgen(server.addr, &["connect", "-n", "5", "--rate", "100"]);
    let errors = v["errors"].as_object().unwrap();
    assert_eq!(errors.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), 5);
    assert!(
        errors.keys().all(|k| k.starts_with("ws upgrade: ")),
        "{errors:?}"
    );
    assert_eq!(server.counts.logins.load(Ordering::Relaxed), 0);
}
