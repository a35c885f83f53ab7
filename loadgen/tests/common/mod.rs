//! A tiny tether server for the loadgen's own tests: std sockets, one thread per connection,
//! speaking the real codec and checking the real tokens. It logs clients in, answers pings,
//! routes backend pushes and sends to every connection of the target user, routes clients'
//! upstream messages (protocol version 2) to a backend logged in with the `UPSTREAM` flag and
//! its answers back as results, and counts what it saw, so tests can compare the loadgen's
//! report with what really happened.

#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tether_proto::token::{KeyRing, Principal, Secret, Verifier};
use tether_proto::{
    decode_version, encode, login_flags, Close, CloseCode, Frame, GoAway, LoginOk, Pong, Push,
    PushResult, PushStatus, RefuseReason, SendResult, Upstream, UpstreamDeliver, UpstreamResult,
    UpstreamStatus, PROTOCOL_V1,
};

/// The client secret the fake server accepts.
pub const SECRET: &str = "loadgen-test-secret-0123456789";
/// The backend secret the fake server accepts.
pub const BACKEND_SECRET: &str = "loadgen-test-backend-secret-0123456789";

/// What the fake server counted.
#[derive(Default, Debug)]
pub struct Counts {
    pub accepted: AtomicU64,
    pub logins: AtomicU64,
    pub refused_logins: AtomicU64,
    pub pings: AtomicU64,
    pub pushes: AtomicU64,
    pub sends: AtomicU64,
    pub acks: AtomicU64,
    pub closed: AtomicU64,
    pub go_aways: AtomicU64,
    /// Upstream messages received from clients.
    pub upstreams: AtomicU64,
    /// Upstream messages delivered to a sink after a later message of the same connection.
    pub reordered: AtomicU64,
    /// UpstreamAnswers received from sinks.
    pub upstream_answers: AtomicU64,
}

type Writers = Arc<Mutex<HashMap<String, Vec<(u64, TcpStream)>>>>;

/// How the fake server misbehaves, for the tests that need it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Answer the nth Ping of every connection with a `GoAway { ServerShutdown,
    /// may_reconnect, 300 ms }` as well (0: never), as a draining server would.
    pub go_away_after: u64,
    /// Hold every nth upstream message of a client connection and hand it to the sink after
    /// the connection's next one (or after 50 ms without one), as a server that broke the
    /// per-connection order would (0: never).
    pub reorder_upstream_every: u64,
}

/// The upstream routing shared by every connection thread.
#[derive(Default)]
struct Upstreams {
    /// Sink connections (backends logged in with the `UPSTREAM` flag): connection id, writer.
    sinks: Mutex<Vec<(u64, Arc<TcpStream>)>>,
    /// Deliveries waiting for their answer: delivery id → the client's writer and client id.
    pending: Mutex<HashMap<u64, (Arc<TcpStream>, u64)>>,
}

/// A client connection as its upstream messages name it.
struct Sender {
    user: String,
    device: String,
    session_id: u64,
    writer: Arc<TcpStream>,
}

/// A running fake server; it lives until the test process ends.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
}

/// Starts a fake server on a free port of 127.0.0.1.
pub fn start() -> FakeServer {
    start_with(0)
}

/// Starts a fake server that answers the `go_away_after`th Ping of every connection with a
/// `GoAway { ServerShutdown, may_reconnect, 300 ms }` as well (0: never), as a draining server
/// would.
pub fn start_with(go_away_after: u64) -> FakeServer {
    start_opts(Options {
        go_away_after,
        ..Options::default()
    })
}

/// Starts a fake server that behaves as `opts` says.
pub fn start_opts(opts: Options) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let writers: Writers = Arc::default();
    let upstreams: Arc<Upstreams> = Arc::default();
    let next_id = Arc::new(AtomicU64::new(1));
    let c = counts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            c.accepted.fetch_add(1, Ordering::Relaxed);
            let (c, w, u, ids) = (
                c.clone(),
                writers.clone(),
                upstreams.clone(),
                next_id.clone(),
            );
            std::thread::spawn(move || serve(stream, c, w, u, ids, opts));
        }
    });
    FakeServer { addr, counts }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn send(mut stream: &TcpStream, frame: &Frame) -> bool {
    let mut out = BytesMut::new();
    encode(frame, &mut out).expect("fake server frames are valid");
    stream.write_all(&out).is_ok()
}

fn serve(
    mut stream: TcpStream,
    counts: Arc<Counts>,
    writers: Writers,
    upstreams: Arc<Upstreams>,
    ids: Arc<AtomicU64>,
    opts: Options,
) {
    let go_away_after = opts.go_away_after;
    if opts.reorder_upstream_every > 0 {
        // Wakes the loop to let a held upstream message go when no later one comes.
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
    }
    let mut pings = 0u64;
    // The version the connection logged in with: the rules its frames are read by.
    let mut version = PROTOCOL_V1;
    let mut sender: Option<Sender> = None;
    let mut upstream_count = 0u64;
    let mut held: Option<Upstream> = None;
    let ring = |s: &str| KeyRing::new(&Secret::new(s.as_bytes()).unwrap(), None);
    let verifier = Verifier::new(ring(SECRET), ring(BACKEND_SECRET));
    let conn_id = ids.fetch_add(1, Ordering::Relaxed);
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut who: Option<(String, Principal)> = None;
    'conn: loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if let (Some(up), Some(from)) = (held.take(), &sender) {
                    route_upstream(&upstreams, &ids, from, up);
                }
                continue;
            }
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let frame = match decode_version(&mut buf, tether_proto::DEFAULT_MAX_FRAME, version) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    send(
                        &stream,
                        &Frame::Close(Close {
                            code: e.close_code(),
                            text: String::new(),
                        }),
                    );
                    break 'conn;
                }
            };
            match (frame, &who) {
                (Frame::Login(login), None) => match verifier.check_login(&login, now_unix()) {
                    Ok(grant) => {
                        let p = grant.principal;
                        counts.logins.fetch_add(1, Ordering::Relaxed);
                        version = login.version;
                        let writer = Arc::new(stream.try_clone().unwrap());
                        if p == Principal::Backend && login.flags & login_flags::UPSTREAM != 0 {
                            upstreams
                                .sinks
                                .lock()
                                .unwrap()
                                .push((conn_id, writer.clone()));
                        }
                        sender = Some(Sender {
                            user: login.user.clone(),
                            device: login.device.clone(),
                            session_id: conn_id,
                            writer,
                        });
                        if p == Principal::Client {
                            let w = stream.try_clone().unwrap();
                            writers
                                .lock()
                                .unwrap()
                                .entry(login.user.clone())
                                .or_default()
                                .push((conn_id, w));
                        }
                        who = Some((login.user.clone(), p));
                        send(
                            &stream,
                            &Frame::LoginOk(LoginOk {
                                session_id: conn_id,
                                server_epoch: 1,
                                min_lease_ms: 1,
                                max_lease_ms: 3_600_000,
                                lease_multiplier_pct: 150,
                                grace_ms: 1000,
                                prior_ms: 0,
                                max_frame: tether_proto::DEFAULT_MAX_FRAME as u32,
                            }),
                        );
                    }
                    Err(e) => {
                        counts.refused_logins.fetch_add(1, Ordering::Relaxed);
                        send(
                            &stream,
                            &Frame::Close(Close {
                                code: e.close_code(),
                                text: "auth".into(),
                            }),
                        );
                        break 'conn;
                    }
                },
                (Frame::Ping(p), Some(_)) => {
                    counts.pings.fetch_add(1, Ordering::Relaxed);
                    send(
                        &stream,
                        &Frame::Pong(Pong {
                            deadline_ms: p.lease_ms,
                        }),
                    );
                    pings += 1;
                    if pings == go_away_after {
                        counts.go_aways.fetch_add(1, Ordering::Relaxed);
                        send(
                            &stream,
                            &Frame::GoAway(GoAway {
                                reason: CloseCode::ServerShutdown,
                                may_reconnect: true,
                                window_ms: 300,
                            }),
                        );
                    }
                }
                (Frame::PushAck(_), Some(_)) => {
                    counts.acks.fetch_add(1, Ordering::Relaxed);
                }
                (Frame::Upstream(up), Some((_, Principal::Client))) => {
                    counts.upstreams.fetch_add(1, Ordering::Relaxed);
                    upstream_count += 1;
                    let from = sender.as_ref().expect("set at login");
                    let every = opts.reorder_upstream_every;
                    if let Some(earlier) = held.take() {
                        // The later message first, then the one held back.
                        route_upstream(&upstreams, &ids, from, up);
                        route_upstream(&upstreams, &ids, from, earlier);
                        counts.reordered.fetch_add(1, Ordering::Relaxed);
                    } else if every > 0 && upstream_count % every == 0 {
                        held = Some(up);
                    } else {
                        route_upstream(&upstreams, &ids, from, up);
                    }
                }
                (Frame::UpstreamAnswer(a), Some((_, Principal::Backend))) => {
                    counts.upstream_answers.fetch_add(1, Ordering::Relaxed);
                    let waiting = upstreams.pending.lock().unwrap().remove(&a.id);
                    if let Some((client, client_id)) = waiting {
                        let status = if a.accepted {
                            UpstreamStatus::Accepted
                        } else {
                            UpstreamStatus::Refused(RefuseReason::Rejected)
                        };
                        send(
                            &client,
                            &Frame::UpstreamResult(UpstreamResult {
                                client_id,
                                status,
                                reply: a.reply,
                            }),
                        );
                    }
                }
                (Frame::BackendPush(p), Some((_, Principal::Backend))) => {
                    counts.pushes.fetch_add(1, Ordering::Relaxed);
                    let n = deliver(&writers, &p.user, &ids, p.payload.to_vec());
                    let status = if n == 0 {
                        PushStatus::Offline
                    } else {
                        PushStatus::Delivered(n)
                    };
                    send(&stream, &Frame::PushResult(PushResult { id: p.id, status }));
                }
                (Frame::Send(s), Some((_, Principal::Client))) => {
                    counts.sends.fetch_add(1, Ordering::Relaxed);
                    let n = deliver(&writers, &s.to, &ids, s.payload.to_vec());
                    let status = if n == 0 {
                        PushStatus::Offline
                    } else {
                        PushStatus::Delivered(n)
                    };
                    send(
                        &stream,
                        &Frame::SendResult(SendResult {
                            client_id: s.client_id,
                            status,
                        }),
                    );
                }
                (_, _) => {
                    send(
                        &stream,
                        &Frame::Close(Close {
                            code: CloseCode::ProtocolError,
                            text: "unexpected".into(),
                        }),
                    );
                    break 'conn;
                }
            }
        }
    }
    counts.closed.fetch_add(1, Ordering::Relaxed);
    upstreams
        .sinks
        .lock()
        .unwrap()
        .retain(|(id, _)| *id != conn_id);
    if let Some((user, Principal::Client)) = who {
        let mut map = writers.lock().unwrap();
        if let Some(list) = map.get_mut(&user) {
            list.retain(|(id, _)| *id != conn_id);
        }
    }
}

/// Hands a client's upstream message to the sink its user hashes to (so one user's messages go
/// to one sink), or answers `NoBackend` when there is none.
fn route_upstream(upstreams: &Upstreams, ids: &AtomicU64, from: &Sender, up: Upstream) {
    let sink = {
        let sinks = upstreams.sinks.lock().unwrap();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        from.user.hash(&mut h);
        (!sinks.is_empty()).then(|| sinks[h.finish() as usize % sinks.len()].1.clone())
    };
    let Some(sink) = sink else {
        send(
            &from.writer,
            &Frame::UpstreamResult(UpstreamResult {
                client_id: up.client_id,
                status: UpstreamStatus::Refused(RefuseReason::NoBackend),
                reply: Default::default(),
            }),
        );
        return;
    };
    let id = ids.fetch_add(1, Ordering::Relaxed);
    upstreams
        .pending
        .lock()
        .unwrap()
        .insert(id, (from.writer.clone(), up.client_id));
    send(
        &sink,
        &Frame::UpstreamDeliver(UpstreamDeliver {
            id,
            user: from.user.clone(),
            device: from.device.clone(),
            session_id: from.session_id,
            client_id: up.client_id,
            payload: up.payload,
        }),
    );
}

/// Writes a Push with `payload` to every connection of `user`; returns how many took it.
fn deliver(writers: &Writers, user: &str, ids: &AtomicU64, payload: Vec<u8>) -> u32 {
    let map = writers.lock().unwrap();
    let Some(list) = map.get(user) else { return 0 };
    let mut n = 0;
    for (_, w) in list {
        let mut w = w;
        let frame = Frame::Push(Push {
            id: ids.fetch_add(1, Ordering::Relaxed),
            payload: payload.clone().into(),
        });
        let mut out = BytesMut::new();
        encode(&frame, &mut out).unwrap();
        if w.write_all(&out).is_ok() {
            n += 1;
        }
    }
    n
}

/// Runs the loadgen binary: `args` (the command and its own options), then `--server addr`,
/// `transport` (e.g. `--tls --ca FILE`, `--transport ws`), the fake server's secrets and the
/// test options; returns its JSON report. Fails the test when it fails.
pub fn run_loadgen(
    addr: SocketAddr,
    args: &[&str],
    transport: &[&std::ffi::OsStr],
) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether-loadgen"))
        .args(args)
        .args(["--server", &addr.to_string()])
        .args(transport)
        .args([
            "--secret",
            SECRET,
            "--backend-secret",
            BACKEND_SECRET,
            "--json",
            "--quiet",
            "--settle",
            "100ms",
        ])
        .output()
        .expect("run tether-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tether-loadgen failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// How many samples latency `name` has in a report.
pub fn count(v: &serde_json::Value, name: &str) -> u64 {
    v["latency_us"][name]["count"].as_u64().unwrap_or(0)
}
