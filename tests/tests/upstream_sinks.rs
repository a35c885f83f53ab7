//! The sinks of the `tether-upstream` thread through the real server (two shards): a webhook
//! (an HTTP/1.1 server in the test) and NATS (a real nats-server and a NATS backend written
//! here over a bare TCP stream). Each message gets one result, a connection's messages reach
//! the backend one at a time and in order, the sender travels in headers, and every refusal
//! maps as documented.
//!
//! The NATS tests are skipped (with a message) when `nats-server` is not installed.

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_proto::{Frame, RefuseReason, Upstream, UpstreamResult, UpstreamStatus};
use tether_tests::http::{self, scrape_until};
use tether_tests::nats::{self, Nats};
use tether_tests::{user_on_shard, Client, Server, Settings, PATIENCE};

/// The webhook's bearer secret.
const HOOK_SECRET: &str = "upstream-sink-test-secret-0123";
/// A device id that must be percent-encoded in the headers, and its encoding.
const DEVICE: &str = "téléphone+1";
const DEVICE_ENCODED: &str = "t%C3%A9l%C3%A9phone%2B1";

/// One NATS test at a time: a nats-server and a node each, on two cores.
static NATS_TURN: Mutex<()> = Mutex::new(());

fn upstream(client_id: u64, payload: &[u8]) -> Frame {
    Frame::Upstream(Upstream {
        client_id,
        flags: 0,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Reads `n` results from `c`: each `Accepted` with the sink's `seq=<client_id>` reply, one
/// for each of the ids 1..=n.
fn expect_one_accepted_result_each(c: &mut Client, n: u64) {
    let mut ids: Vec<u64> = (0..n)
        .map(|_| {
            let r = next_result(c);
            assert_eq!(r.status, UpstreamStatus::Accepted, "{r:?}");
            assert_eq!(&r.reply[..], format!("seq={}", r.client_id).as_bytes());
            r.client_id
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "one result each");
}

fn next_result(c: &mut Client) -> UpstreamResult {
    loop {
        match c.recv().expect("an UpstreamResult") {
            Frame::UpstreamResult(r) => return r,
            Frame::Pong(_) => {}
            other => panic!("expected an UpstreamResult, got {other:?}"),
        }
    }
}

/// Sends one message and returns its result and how long it took.
fn round_trip(c: &mut Client, client_id: u64, payload: &[u8]) -> (UpstreamResult, Duration) {
    let start = Instant::now();
    c.send(&upstream(client_id, payload)).unwrap();
    let r = next_result(c);
    assert_eq!(r.client_id, client_id);
    (r, start.elapsed())
}

fn refused(reason: RefuseReason) -> UpstreamStatus {
    UpstreamStatus::Refused(reason)
}

/// What a backend answers for a payload: the tests pick the answer by what they send.
#[derive(Debug, PartialEq)]
enum Answer {
    /// Accepted, with this reply.
    Accept(String),
    /// Rejected (webhook 409, NATS `Tether-Status: rejected`), with this reply.
    Reject(String),
    /// This HTTP status, empty body (webhook only).
    Status(u16),
    /// No answer at all.
    Silent,
}

fn answer_for(payload: &[u8], client_id: &str) -> Answer {
    match payload {
        b"reject" => Answer::Reject("blocked".into()),
        b"slow down" => Answer::Status(429),
        b"busy" => Answer::Status(503),
        b"fail" => Answer::Status(500),
        b"silent" => Answer::Silent,
        _ => Answer::Accept(format!("seq={client_id}")),
    }
}

/// One message as a backend saw it.
#[derive(Clone, Debug)]
struct Seen {
    /// Which backend connection got it (webhook: the HTTP connection; NATS: the subscriber).
    conn: usize,
    /// The webhook request's method and path (NATS: the subject).
    target: String,
    /// Header names in lower case, and values.
    headers: HashMap<String, String>,
    /// The payload.
    body: Vec<u8>,
    /// Whether another message of the same session was still unanswered when it arrived.
    overlapped: bool,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map_or("", String::as_str)
    }

    fn session(&self) -> String {
        self.header("Tether-Session").to_string()
    }

    fn client_id(&self) -> u64 {
        self.header("Tether-Client-Id")
            .parse()
            .unwrap_or_else(|_| panic!("no client id in {self:?}"))
    }
}

/// What every backend of a test saw, in arrival order, and the sessions with a message
/// delivered and not yet answered (shared by the webhook's connections or the NATS
/// subscribers, so the order is one order across them).
#[derive(Default)]
struct Log {
    seen: Vec<Seen>,
    open: HashSet<String>,
}

type SharedLog = Arc<Mutex<Log>>;

/// Records `seen` on arrival; returns its answer.
fn arrive(log: &SharedLog, mut seen: Seen) -> Answer {
    let answer = answer_for(&seen.body, seen.header("Tether-Client-Id"));
    let mut log = log.lock().unwrap();
    let session = seen.session();
    seen.overlapped = !log.open.insert(session);
    log.seen.push(seen);
    answer
}

/// Marks `session`'s message answered; called before the answer is written.
fn answered(log: &SharedLog, session: &str) {
    log.lock().unwrap().open.remove(session);
}

fn snapshot(log: &SharedLog) -> Vec<Seen> {
    log.lock().unwrap().seen.clone()
}

/// Checks that every session's messages arrived one at a time with increasing client ids, and
/// returns the ids by session.
fn check_order(seen: &[Seen]) -> HashMap<String, Vec<u64>> {
    let mut by_session: HashMap<String, Vec<u64>> = HashMap::new();
    for s in seen {
        assert!(!s.overlapped, "two messages of one session at once: {s:?}");
        let ids = by_session.entry(s.session()).or_default();
        if let Some(&prev) = ids.last() {
            assert!(
                s.client_id() > prev,
                "session {} out of order: {} after {prev}",
                s.session(),
                s.client_id()
            );
        }
        ids.push(s.client_id());
    }
    by_session
}

// ---------------------------------------------------------------------------------------------
// The webhook.

/// An HTTP/1.1 server on loopback: a thread per connection, keep-alive, Content-Length
/// bodies; answers by [`answer_for`] after `delay`. Stops when dropped.
struct Hook {
    addr: SocketAddr,
    log: SharedLog,
    stop: Arc<AtomicBool>,
}

impl Hook {
    fn start(delay: Duration) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = SharedLog::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            for (conn, stream) in listener.incoming().enumerate() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (l, s) = (Arc::clone(&l), Arc::clone(&s));
                std::thread::spawn(move || serve_http(stream, conn, &l, &s, delay));
            }
        });
        Hook { addr, log, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/up", self.addr)
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves one keep-alive connection until the peer closes it or the hook stops.
fn serve_http(
    mut stream: TcpStream,
    conn: usize,
    log: &SharedLog,
    stop: &AtomicBool,
    delay: Duration,
) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = Vec::new();
    while let Some(seen) = read_request(&mut stream, &mut buf, conn, stop) {
        let session = seen.session();
        let answer = arrive(log, seen);
        let (code, body) = match answer {
            Answer::Accept(r) => (200, r),
            Answer::Reject(r) => (409, r),
            Answer::Status(code) => (code, String::new()),
            // Read on: tether gives up and closes the connection.
            Answer::Silent => continue,
        };
        std::thread::sleep(delay);
        answered(log, &session);
        let response = format!(
            "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads one request (head and Content-Length body); `None` at the end of the connection or
/// when the hook stops.
fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    conn: usize,
    stop: &AtomicBool,
) -> Option<Seen> {
    let mut need: Option<(usize, usize)> = None; // (head end, body length)
    loop {
        if need.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.trim().parse::<usize>().expect("a length"))
                    .unwrap_or_else(|| panic!("a request without Content-Length: {head:?}"));
                need = Some((end + 4, len));
            }
        }
        if let Some((start, len)) = need {
            if buf.len() >= start + len {
                let head = String::from_utf8_lossy(&buf[..start - 4]).to_string();
                let body = buf[start..start + len].to_vec();
                buf.drain(..start + len);
                let mut lines = head.split("\r\n");
                let line = lines.next().unwrap_or_default();
                let target = line.rsplit_once(' ').map_or(line, |(t, _)| t).to_string();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                return Some(Seen {
                    conn,
                    target,
                    headers,
                    body,
                    overlapped: false,
                });
            }
        }
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// A server whose upstream sink is the webhook at `url`.
fn webhook_server(url: &str, timeout_ms: u64) -> Server {
    Server::start(&Settings {
        log: "info",
        extra: format!(
            "[upstream]\nsink = \"webhook\"\nwebhook_url = \"{url}\"\n\
             webhook_secret = \"{HOOK_SECRET}\"\ntimeout_ms = {timeout_ms}\n"
        ),
        ..Settings::default()
    })
    .unwrap()
}

#[test]
fn webhook_gets_each_connections_messages_in_order_with_the_sender_and_each_gets_one_result() {
    const PER_CLIENT: u64 = 20;
    // A short pause before each answer, so a connection's second message sent early would
    // be seen while its first is still open.
    let hook = Hook::start(Duration::from_millis(2));
    let server = webhook_server(&hook.url(), 10_000);
    let users: Vec<String> = (0..4)
        .map(|i| user_on_shard(&format!("hook-ü+{i}"), i % 2, 2))
        .collect();
    let mut clients: Vec<(Client, u64)> = users
        .iter()
        .map(|u| {
            let (c, ok) = server.client(u, DEVICE).unwrap();
            (c, ok.session_id)
        })
        .collect();
    for (c, _) in clients.iter_mut() {
        for id in 1..=PER_CLIENT {
            c.send(&upstream(id, format!("msg {id}").as_bytes()))
                .unwrap();
        }
    }
    for (c, _) in clients.iter_mut() {
        expect_one_accepted_result_each(c, PER_CLIENT);
    }

    let seen = snapshot(&hook.log);
    assert_eq!(seen.len(), clients.len() * PER_CLIENT as usize);
    let by_session = check_order(&seen);
    for (user, (_, session)) in users.iter().zip(&clients) {
        let ids = &by_session[&session.to_string()];
        assert_eq!(ids, &(1..=PER_CLIENT).collect::<Vec<_>>(), "{user}");
        for s in seen.iter().filter(|s| s.session() == session.to_string()) {
            assert_eq!(s.target, "POST /up");
            assert_eq!(s.header("Tether-User"), encode(user), "{s:?}");
            assert_eq!(s.header("Tether-Device"), DEVICE_ENCODED);
            assert_eq!(s.header("Authorization"), format!("Bearer {HOOK_SECRET}"));
            assert_eq!(s.header("Content-Type"), "application/octet-stream");
            assert_eq!(s.body, format!("msg {}", s.client_id()).as_bytes());
        }
    }
    let connections: HashSet<usize> = seen.iter().map(|s| s.conn).collect();
    assert!(
        connections.len() < seen.len(),
        "no connection was kept alive"
    );

    let accepted = seen.len() as f64;
    scrape_until(server.api, "the accepted messages", |s| {
        http::sum(
            s,
            "tether_upstream_results_total",
            &[("outcome", "accepted")],
        ) == accepted
            && http::sum(s, "tether_upstream_sink_sent_total", &[]) == accepted
            && http::sum(s, "tether_upstream_sink_accepted_total", &[]) == accepted
    });
}

/// A user id as the headers carry it: UTF-8, unreserved characters kept, the rest `%XX`.
fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn webhook_refusals_map_to_their_reasons() {
    const TIMEOUT_MS: u64 = 1_000;
    let hook = Hook::start(Duration::ZERO);
    let server = webhook_server(&hook.url(), TIMEOUT_MS);
    let (mut c, _) = server
        .client(&user_on_shard("hook-no", 1, 2), "phone")
        .unwrap();

    let (r, _) = round_trip(&mut c, 1, b"reject");
    assert_eq!(r.status, refused(RefuseReason::Rejected));
    assert_eq!(&r.reply[..], b"blocked");
    let (r, _) = round_trip(&mut c, 2, b"slow down");
    assert_eq!(
        (r.status, r.reply.len()),
        (refused(RefuseReason::RateLimited), 0)
    );
    let (r, _) = round_trip(&mut c, 3, b"busy");
    assert_eq!(r.status, refused(RefuseReason::Overloaded));
    let (r, _) = round_trip(&mut c, 4, b"fail");
    assert_eq!(r.status, refused(RefuseReason::TimedOut));

    let (r, took) = round_trip(&mut c, 5, b"silent");
    assert_eq!(r.status, refused(RefuseReason::TimedOut));
    assert!(
        took >= Duration::from_millis(TIMEOUT_MS - 50) && took < Duration::from_secs(8),
        "timed out after {took:?}, expected about {TIMEOUT_MS} ms"
    );
    // The connection's next message goes on.
    let (r, _) = round_trip(&mut c, 6, b"hello");
    assert_eq!(r.status, UpstreamStatus::Accepted);
    assert_eq!(&r.reply[..], b"seq=6");
    let ids: Vec<u64> = snapshot(&hook.log).iter().map(Seen::client_id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);

    scrape_until(server.api, "the refusals", |s| {
        let results = |reason| {
            http::sum(
                s,
                "tether_upstream_results_total",
                &[("outcome", "refused"), ("reason", reason)],
            )
        };
        results("rejected") == 1.0
            && results("rate_limited") == 1.0
            && results("overloaded") == 1.0
            && results("timed_out") == 2.0
            && http::sum(s, "tether_upstream_sink_sent_total", &[]) == 6.0
    });
}

#[test]
fn an_unreachable_webhook_is_no_backend() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = webhook_server(&format!("http://{closed}/up"), 1_000);
    let (mut c, _) = server
        .client(&user_on_shard("hook-gone", 0, 2), "phone")
        .unwrap();
    for id in 1..=3 {
        let (r, _) = round_trip(&mut c, id, b"anyone?");
        assert_eq!(r.status, refused(RefuseReason::NoBackend));
        assert!(r.reply.is_empty());
    }
    scrape_until(server.api, "the NoBackend results", |s| {
        http::sum(
            s,
            "tether_upstream_results_total",
            &[("outcome", "refused"), ("reason", "no_backend")],
        ) == 3.0
    });
}

// ---------------------------------------------------------------------------------------------
// NATS.

/// A NATS backend over a bare TCP stream: subscribes to `tether.upstream` in queue group
/// `workers`, answers by [`answer_for`] after `delay`. Stops when dropped.
struct Subscriber {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// Connects, subscribes, and returns once the server has the subscription.
    fn start(nats: &Nats, id: usize, log: &SharedLog, delay: Duration) -> Subscriber {
        let mut stream = TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = Vec::new();
        stream
            .write_all(
                b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1}\r\n\
                  SUB tether.upstream workers 1\r\nPING\r\n",
            )
            .unwrap();
        // The PONG comes after the SUB is processed.
        let until = Instant::now() + PATIENCE;
        loop {
            let line = read_line(&mut stream, &mut buf, until).expect("PONG from nats-server");
            if line == "PONG" {
                break;
            }
            assert!(!line.starts_with("-ERR"), "nats-server said {line}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (s, log) = (Arc::clone(&stop), Arc::clone(log));
        let thread = std::thread::spawn(move || {
            serve_nats(stream, buf, id, &log, &s, delay);
        });
        Subscriber {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads bytes until `buf` holds `n`; `false` on end of stream, a stop or past `until`.
fn fill(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    n: usize,
    until: Option<Instant>,
    stop: Option<&AtomicBool>,
) -> bool {
    while buf.len() < n {
        if until.is_some_and(|u| Instant::now() > u)
            || stop.is_some_and(|s| s.load(Ordering::SeqCst))
        {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// The next `\r\n`-terminated line, without it.
fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>, until: Instant) -> Option<String> {
    next_line(stream, buf, Some(until), None)
}

fn next_line(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    until: Option<Instant>,
    stop: Option<&AtomicBool>,
) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 2);
            return Some(line);
        }
        let want = buf.len() + 1;
        if !fill(stream, buf, want, until, stop) {
            return None;
        }
    }
}

/// Serves deliveries until the subscriber stops or nats-server closes the connection.
fn serve_nats(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    id: usize,
    log: &SharedLog,
    stop: &AtomicBool,
    delay: Duration,
) {
    while let Some(line) = next_line(&mut stream, &mut buf, None, Some(stop)) {
        let mut words = line.split_whitespace();
        let open = match words.next() {
            Some("PING") => stream.write_all(b"PONG\r\n").is_ok(),
            Some("HMSG") => {
                let args: Vec<&str> = words.collect();
                let [subject, _sid, reply, hdr_len, total_len] = args[..] else {
                    panic!("HMSG without a reply subject: {line}");
                };
                let hmsg = Hmsg {
                    subscriber: id,
                    subject,
                    reply,
                    hdr_len: hdr_len.parse().unwrap(),
                    total_len: total_len.parse().unwrap(),
                };
                answer_hmsg(&mut stream, &mut buf, &hmsg, log, stop, delay)
            }
            Some("MSG") => panic!("a request without headers: {line}"),
            Some("-ERR") => panic!("nats-server said {line}"),
            _ => true, // INFO, PONG, +OK
        };
        if !open {
            return;
        }
    }
}

/// An `HMSG` line: `HMSG <subject> <sid> <reply> <header bytes> <total bytes>`.
struct Hmsg<'a> {
    /// Which subscriber read it.
    subscriber: usize,
    subject: &'a str,
    reply: &'a str,
    hdr_len: usize,
    total_len: usize,
}

/// Reads the rest of `hmsg` (header block, payload, `\r\n`), records it and answers it;
/// `false` when the connection is over.
fn answer_hmsg(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    hmsg: &Hmsg<'_>,
    log: &SharedLog,
    stop: &AtomicBool,
    delay: Duration,
) -> bool {
    let (hdr_len, total_len, reply) = (hmsg.hdr_len, hmsg.total_len, hmsg.reply);
    if !fill(stream, buf, total_len + 2, None, Some(stop)) {
        return false;
    }
    let block = String::from_utf8_lossy(&buf[..hdr_len]).to_string();
    let body = buf[hdr_len..total_len].to_vec();
    buf.drain(..total_len + 2);
    let mut lines = block.split("\r\n");
    assert!(lines.next().is_some_and(|l| l.starts_with("NATS/1.0")));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let seen = Seen {
        conn: hmsg.subscriber,
        target: hmsg.subject.to_string(),
        headers,
        body,
        overlapped: false,
    };
    let session = seen.session();
    let out = match arrive(log, seen) {
        Answer::Accept(r) => format!("PUB {reply} {}\r\n{r}\r\n", r.len()),
        Answer::Reject(r) => {
            let head = "NATS/1.0\r\nTether-Status: rejected\r\n\r\n";
            format!(
                "HPUB {reply} {} {}\r\n{head}{r}\r\n",
                head.len(),
                head.len() + r.len()
            )
        }
        Answer::Status(_) | Answer::Silent => return true,
    };
    std::thread::sleep(delay);
    answered(log, &session);
    stream.write_all(out.as_bytes()).is_ok()
}

/// Starts nats-server and a node whose upstream sink is NATS, and waits until the node's
/// upstream thread is connected. `None` (the test is skipped) without nats-server.
fn nats_node(timeout_ms: u64) -> Option<(Nats, Server)> {
    if !nats::installed() {
        eprintln!(
            "SKIPPED: nats-server is not installed (apt-get install nats-server); \
             the NATS sink tests need a real one"
        );
        return None;
    }
    let nats = Nats::start().expect("nats-server");
    let server = Server::start(&Settings {
        log: "info",
        extra: format!(
            "[cluster]\nnats_urls = [\"{}\"]\nnode_id = \"n1\"\nsecrets = [\"{}\"]\n\
             [upstream]\nsink = \"nats\"\nnats_subject = \"tether.upstream\"\n\
             timeout_ms = {timeout_ms}\n",
            nats.url(),
            tether_tests::nats::CLUSTER_SECRET,
        ),
        ..Settings::default()
    })
    .expect("node");
    scrape_until(server.api, "the upstream sink connected to NATS", |s| {
        http::sum(s, "tether_upstream_sink_connected", &[]) == 1.0
    });
    Some((nats, server))
}

#[test]
fn nats_accepts_and_rejects_with_the_sender_in_headers() {
    let _turn = NATS_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let Some((nats, server)) = nats_node(10_000) else {
        return;
    };
    let log = SharedLog::default();
    let _sub = Subscriber::start(&nats, 0, &log, Duration::ZERO);
    let user = user_on_shard("nats-ü+", 1, 2);
    let (mut c, ok) = server.client(&user, DEVICE).unwrap();

    let (r, _) = round_trip(&mut c, 7, b"hello");
    assert_eq!(r.status, UpstreamStatus::Accepted);
    assert_eq!(&r.reply[..], b"seq=7");
    let (r, _) = round_trip(&mut c, 8, b"reject");
    assert_eq!(r.status, refused(RefuseReason::Rejected));
    assert_eq!(&r.reply[..], b"blocked");

    let seen = snapshot(&log);
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (s, (id, body)) in seen.iter().zip([(7, &b"hello"[..]), (8, b"reject")]) {
        assert_eq!(s.target, "tether.upstream");
        assert_eq!(s.header("Tether-User"), encode(&user), "{s:?}");
        assert_eq!(s.header("Tether-Device"), DEVICE_ENCODED);
        assert_eq!(s.header("Tether-Session"), ok.session_id.to_string());
        assert_eq!(s.client_id(), id);
        assert_eq!(s.body, body);
    }
    scrape_until(server.api, "the NATS results", |s| {
        http::sum(
            s,
            "tether_upstream_results_total",
            &[("outcome", "accepted")],
        ) == 1.0
            && http::sum(
                s,
                "tether_upstream_results_total",
                &[("outcome", "refused"), ("reason", "rejected")],
            ) == 1.0
            && http::sum(s, "tether_upstream_sink_sent_total", &[]) == 2.0
    });
}

#[test]
fn nats_without_a_subscriber_is_no_backend_at_once() {
    const TIMEOUT_MS: u64 = 10_000;
    let _turn = NATS_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_nats, server)) = nats_node(TIMEOUT_MS) else {
        return;
    };
    let (mut c, _) = server
        .client(&user_on_shard("nats-alone", 0, 2), "phone")
        .unwrap();
    for id in 1..=3 {
        let (r, took) = round_trip(&mut c, id, b"anyone?");
        assert_eq!(r.status, refused(RefuseReason::NoBackend));
        assert!(
            took < Duration::from_millis(TIMEOUT_MS / 4),
            "NoBackend after {took:?}"
        );
    }
}

#[test]
fn nats_keeps_each_connections_order_across_two_queue_subscribers() {
    const PER_CLIENT: u64 = 30;
    let _turn = NATS_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let Some((nats, server)) = nats_node(10_000) else {
        return;
    };
    let log = SharedLog::default();
    // Each answers after a pause, so a connection's next message sent early would reach the
    // other subscriber while the first is still open.
    let subs: Vec<Subscriber> = (0..2)
        .map(|i| Subscriber::start(&nats, i, &log, Duration::from_millis(2)))
        .collect();
    let mut clients: Vec<(Client, u64)> = (0..4)
        .map(|i| {
            let (c, ok) = server
                .client(&user_on_shard(&format!("nats-q{i}"), i % 2, 2), "phone")
                .unwrap();
            (c, ok.session_id)
        })
        .collect();
    for (c, _) in clients.iter_mut() {
        for id in 1..=PER_CLIENT {
            c.send(&upstream(id, b"in order")).unwrap();
        }
    }
    for (c, _) in clients.iter_mut() {
        expect_one_accepted_result_each(c, PER_CLIENT);
    }
    drop(subs);
    let seen = snapshot(&log);
    let by_session = check_order(&seen);
    for (_, session) in &clients {
        assert_eq!(
            by_session[&session.to_string()],
            (1..=PER_CLIENT).collect::<Vec<_>>()
        );
    }
    for sub in 0..2 {
        assert!(
            seen.iter().any(|s| s.conn == sub),
            "subscriber {sub} got nothing: the queue group was not shared"
        );
    }
}
