//! A scripted stand-in for a tether server, for the `tether-client` commands' tests: std
//! sockets, one thread per connection, the real codec and the real token checks. It logs a
//! connection in (or refuses a login version it does not speak with `UnsupportedVersion`, as
//! an older server does), answers its pings, records what it sends, and hands the main
//! connection to the test's script. Probe connections are logged in and otherwise left alone.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tether_proto::token::{KeyRing, Principal, Secret, Verifier};
use tether_proto::{
    decode_version, encode, login_flags, Close, CloseCode, Frame, Login, LoginOk, Pong,
    DEFAULT_MAX_FRAME, PROTOCOL_V2,
};

/// The client-token secret the fake accepts.
pub const SECRET: &str = "client-test-secret-0123456789";
/// The backend-token secret the fake accepts: the development one `tether-client backend`
/// uses by default.
pub const BACKEND_SECRET: &str = "tether-dev-backend-secret-not-for-production";

/// The session id the fake gives every connection (shard 1, connection 1).
pub const SESSION_ID: u64 = (1 << 48) + 1;

/// What the fake saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every login, in order, with whom its token says it is (`None`: refused).
    pub logins: Vec<(Login, Option<Principal>)>,
    /// Every frame main connections sent after their login, with its arrival, in order.
    pub frames: Vec<(Instant, Frame)>,
    /// Pings received on main connections.
    pub pings: u64,
}

/// A running fake server; it lives until the test process ends.
pub struct Fake {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw so far.
    pub seen: Arc<Mutex<Seen>>,
}

impl Fake {
    /// The frames received so far that `pick` keeps.
    pub fn frames<T>(&self, pick: impl Fn(&Frame) -> Option<T>) -> Vec<T> {
        let seen = self.seen.lock().unwrap();
        seen.frames.iter().filter_map(|(_, f)| pick(f)).collect()
    }

    /// Waits up to `limit` for `done` to hold over what was seen.
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if done(&self.seen.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// One logged-in main connection, handed to the script.
pub struct Peer {
    /// The socket.
    stream: TcpStream,
    /// Bytes read and not decoded yet.
    buf: BytesMut,
    /// The login's version: the rules the peer's frames are read by.
    version: u8,
    /// The login.
    pub login: Login,
    /// Shared record.
    seen: Arc<Mutex<Seen>>,
}

impl Peer {
    /// Writes `frame`.
    pub fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        encode(&frame, &mut out).expect("the fake's frames are valid");
        let _ = self.stream.write_all(&out);
    }

    /// The next frame that is not a `Ping` (pings are answered and counted), recorded; `None`
    /// once the peer closed or sent something undecodable.
    pub fn recv(&mut self) -> Option<Frame> {
        loop {
            let frame = next_frame(&mut self.stream, &mut self.buf, self.version)?;
            let mut seen = self.seen.lock().unwrap();
            if let Frame::Ping(_) = frame {
                seen.pings += 1;
                drop(seen);
                self.send(Frame::Pong(Pong {
                    deadline_ms: 60_000,
                }));
                continue;
            }
            seen.frames.push((Instant::now(), frame.clone()));
            return Some(frame);
        }
    }
}

/// Starts a fake that speaks protocol versions up to `max_version` and runs `script` on each
/// main connection once it is logged in.
pub fn start(max_version: u8, script: impl Fn(&mut Peer) + Send + Sync + 'static) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let script = Arc::new(script);
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (seen, script) = (s.clone(), script.clone());
            std::thread::spawn(move || serve(stream, max_version, &seen, &*script));
        }
    });
    Fake { addr, seen }
}

fn serve(stream: TcpStream, max_version: u8, seen: &Arc<Mutex<Seen>>, script: &dyn Fn(&mut Peer)) {
    let mut stream = stream;
    let mut buf = BytesMut::new();
    // A `Login` is read by the rules of the version it carries, whatever this one is.
    let Some(Frame::Login(login)) = next_frame(&mut stream, &mut buf, PROTOCOL_V2) else {
        return;
    };
    let ring = |s: &str| KeyRing::new(&Secret::new(s.as_bytes()).unwrap(), None);
    let verifier = Verifier::new(ring(SECRET), ring(BACKEND_SECRET));
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let principal = verifier.check_login(&login, unix).ok().map(|g| g.principal);
    seen.lock().unwrap().logins.push((login.clone(), principal));
    let mut peer = Peer {
        stream,
        buf,
        version: login.version,
        login,
        seen: seen.clone(),
    };
    let refusal = if peer.login.version > max_version {
        Some(CloseCode::UnsupportedVersion)
    } else if principal.is_none() {
        Some(CloseCode::AuthFailed)
    } else {
        None
    };
    if let Some(code) = refusal {
        peer.send(Frame::Close(Close {
            code,
            text: String::new(),
        }));
        return;
    }
    peer.send(Frame::LoginOk(LoginOk {
        session_id: SESSION_ID,
        server_epoch: 1,
        min_lease_ms: 100,
        max_lease_ms: 600_000,
        lease_multiplier_pct: 150,
        grace_ms: 10_000,
        prior_ms: 0,
        max_frame: DEFAULT_MAX_FRAME as u32,
    }));
    if peer.login.flags & login_flags::PROBE != 0 {
        // A probe: hold it open, answering nothing, until the client gives up on it.
        while next_frame(&mut peer.stream, &mut peer.buf, peer.version).is_some() {}
        return;
    }
    script(&mut peer);
}

/// The next frame of `stream`, read by `version`'s rules; `None` at its end or on garbage.
fn next_frame(stream: &mut TcpStream, buf: &mut BytesMut, version: u8) -> Option<Frame> {
    let mut chunk = [0u8; 4096];
    loop {
        match decode_version(buf, DEFAULT_MAX_FRAME, version) {
            Ok(Some(frame)) => return Some(frame),
            Ok(None) => {}
            Err(_) => return None,
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}
