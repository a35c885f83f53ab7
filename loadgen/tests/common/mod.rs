//! A tiny tether server for the loadgen's own tests: std sockets, one thread per connection,
//! speaking the real codec and checking the real tokens. It logs clients in, answers pings,
//! routes backend pushes and sends to every connection of the target user, and counts what it
//! saw, so tests can compare the loadgen's report with what really happened.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tether_proto::token::{KeyRing, Principal, Secret, Verifier};
use tether_proto::{
    decode, encode, Close, CloseCode, Frame, GoAway, LoginOk, Pong, Push, PushResult, PushStatus,
    SendResult,
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
}

type Writers = Arc<Mutex<HashMap<String, Vec<(u64, TcpStream)>>>>;

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
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let writers: Writers = Arc::default();
    let next_id = Arc::new(AtomicU64::new(1));
    let c = counts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            c.accepted.fetch_add(1, Ordering::Relaxed);
            let (c, w, ids) = (c.clone(), writers.clone(), next_id.clone());
            std::thread::spawn(move || serve(stream, c, w, ids, go_away_after));
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

fn send(stream: &mut TcpStream, frame: &Frame) -> bool {
    let mut out = BytesMut::new();
    encode(frame, &mut out).expect("fake server frames are valid");
    stream.write_all(&out).is_ok()
}

fn serve(
    mut stream: TcpStream,
    counts: Arc<Counts>,
    writers: Writers,
    ids: Arc<AtomicU64>,
    go_away_after: u64,
) {
    let mut pings = 0u64;
    let ring = |s: &str| KeyRing::new(&Secret::new(s.as_bytes()).unwrap(), None);
    let verifier = Verifier::new(ring(SECRET), ring(BACKEND_SECRET));
    let conn_id = ids.fetch_add(1, Ordering::Relaxed);
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut who: Option<(String, Principal)> = None;
    'conn: loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let frame = match decode(&mut buf, tether_proto::DEFAULT_MAX_FRAME) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    send(
                        &mut stream,
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
                    Ok(p) => {
                        counts.logins.fetch_add(1, Ordering::Relaxed);
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
                            &mut stream,
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
                            &mut stream,
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
                        &mut stream,
                        &Frame::Pong(Pong {
                            deadline_ms: p.lease_ms,
                        }),
                    );
                    pings += 1;
                    if pings == go_away_after {
                        counts.go_aways.fetch_add(1, Ordering::Relaxed);
                        send(
                            &mut stream,
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
                (Frame::BackendPush(p), Some((_, Principal::Backend))) => {
                    counts.pushes.fetch_add(1, Ordering::Relaxed);
                    let n = deliver(&writers, &p.user, &ids, p.payload.to_vec());
                    let status = if n == 0 {
                        PushStatus::Offline
                    } else {
                        PushStatus::Delivered(n)
                    };
                    send(
                        &mut stream,
                        &Frame::PushResult(PushResult { id: p.id, status }),
                    );
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
                        &mut stream,
                        &Frame::SendResult(SendResult {
                            client_id: s.client_id,
                            status,
                        }),
                    );
                }
                (_, _) => {
                    send(
                        &mut stream,
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
    if let Some((user, Principal::Client)) = who {
        let mut map = writers.lock().unwrap();
        if let Some(list) = map.get_mut(&user) {
            list.retain(|(id, _)| *id != conn_id);
        }
    }
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
