//! The `tether-client` commands against a scripted fake server (`fake/`): `watch`
//! acknowledges pushes and names a message's sender, `upstream` prints each result in order and
//! exits (or names the ids still waiting), `backend` answers each delivered message, and an
//! older server that refuses version 2 gets a version-1 login.

mod fake;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_proto::token::Principal;
use tether_proto::{
    login_flags, Frame, Message, Push, PushAck, RefuseReason, UpstreamAnswer, UpstreamDeliver,
    UpstreamResult, UpstreamStatus, PROTOCOL_V1, PROTOCOL_V2,
};

/// Longest a test waits for anything.
const LIMIT: Duration = Duration::from_secs(10);

/// A running `tether-client`, killed when dropped.
struct Run {
    child: Child,
    /// Its stdout, line by line.
    stdout: Receiver<String>,
    /// Its stderr so far.
    stderr: Arc<Mutex<String>>,
}

/// Starts `tether-client ARGS` against `fake`, with `stdin` as its input (then closed).
fn spawn(fake: &fake::Fake, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether-client"))
        .args(args)
        .args(["--server", &fake.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tether-client");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let (tx, stdout) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let (err, sink) = (child.stderr.take().unwrap(), stderr.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    Run {
        child,
        stdout,
        stderr,
    }
}

impl Run {
    /// Stdout lines up to and including the first that `last` accepts (all of them if none
    /// does within `LIMIT`).
    fn lines_until(&self, last: impl Fn(&str) -> bool) -> Vec<String> {
        let end = Instant::now() + LIMIT;
        let mut lines = Vec::new();
        while let Ok(line) = self
            .stdout
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            let stop = last(&line);
            lines.push(line);
            if stop {
                break;
            }
        }
        lines
    }

    /// Waits for the exit; the rest of stdout and all of stderr.
    fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let end = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < end, "tether-client did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let lines: Vec<String> = self.stdout.iter().collect();
        let stderr = self.stderr.lock().unwrap().clone();
        (status, lines, stderr)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tether-client watch` as bob against `fake`.
fn watch_as_bob(fake: &fake::Fake) -> Run {
    spawn(
        fake,
        &["watch", "--user", "bob", "--secret", fake::SECRET],
        "",
    )
}

fn push(id: u64, payload: &'static [u8]) -> Frame {
    Frame::Push(Push {
        id,
        payload: Bytes::from_static(payload),
    })
}

/// The id of a `PushAck`.
fn acks(f: &Frame) -> Option<u64> {
    match f {
        Frame::PushAck(PushAck { id }) => Some(*id),
        _ => None,
    }
}

#[test]
fn watch_acknowledges_every_push_and_names_a_messages_sender() {
    let fake = fake::start(PROTOCOL_V2, |peer| {
        peer.send(push(7, b"hello"));
        peer.send(Frame::Message(Message {
            id: 8,
            from_user: "alice".into(),
            from_device: "phone".into(),
            payload: Bytes::from_static(b"yo"),
        }));
        while peer.recv().is_some() {}
    });
    let run = watch_as_bob(&fake);
    let lines = run.lines_until(|l| l.starts_with("message"));
    assert!(
        lines.contains(&r#"push 7: "hello""#.to_owned()),
        "{lines:#?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some(r#"message 8 from alice/phone: "yo""#),
        "{lines:#?}"
    );
    assert!(
        fake.wait_for(LIMIT, |s| s.frames.len() >= 2),
        "no acks: {:?}",
        fake.seen.lock().unwrap()
    );
    assert_eq!(fake.frames(acks), vec![7, 8]);
    let seen = fake.seen.lock().unwrap();
    let (login, principal) = &seen.logins[0];
    assert_eq!(
        (login.version, login.flags, login.device.as_str()),
        (PROTOCOL_V2, 0, "watch")
    );
    assert_eq!(*principal, Some(Principal::Client));
}

/// A backend as the fake plays it: accepted with `seq=<client id>`, except payloads with
/// "reject" (rejected) and "nobody" (no backend), and no answer at all for "lost".
fn answer_upstreams(peer: &mut fake::Peer) {
    while let Some(frame) = peer.recv() {
        let Frame::Upstream(up) = frame else { continue };
        let text = String::from_utf8_lossy(&up.payload).into_owned();
        let (status, reply) = if text.contains("lost") {
            continue;
        } else if text.contains("reject") {
            (UpstreamStatus::Refused(RefuseReason::Rejected), "rejected")
        } else if text.contains("nobody") {
            (UpstreamStatus::Refused(RefuseReason::NoBackend), "")
        } else {
            (UpstreamStatus::Accepted, "")
        };
        let reply = match reply {
            "" if status == UpstreamStatus::Accepted => format!("seq={}", up.client_id),
            other => other.to_owned(),
        };
        peer.send(Frame::UpstreamResult(UpstreamResult {
            client_id: up.client_id,
            status,
            reply: reply.into(),
        }));
    }
}

/// `tether-client upstream` as alice against `fake`, with `extra` flags and `stdin`.
fn upstream_as_alice(fake: &fake::Fake, extra: &[&str], stdin: &str) -> Run {
    let alice = ["upstream", "--user", "alice", "--secret", fake::SECRET];
    spawn(fake, &[&alice[..], extra].concat(), stdin)
}

#[test]
fn upstream_prints_each_result_in_order_and_exits() {
    let fake = fake::start(PROTOCOL_V2, answer_upstreams);
    let run = upstream_as_alice(
        &fake,
        &["--device", "phone"],
        "hello\nplease reject this\r\nnobody home\n",
    );
    let (status, lines, stderr) = run.finish();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(
        lines,
        [
            r#"upstream 1: accepted, reply "seq=1""#,
            r#"upstream 2: refused rejected, reply "rejected""#,
            "upstream 3: refused no_backend",
        ],
        "{stderr}"
    );
    let payloads = fake.frames(|f| match f {
        Frame::Upstream(u) => Some((u.client_id, u.payload.clone())),
        _ => None,
    });
    assert_eq!(
        payloads,
        [
            (1, Bytes::from_static(b"hello")),
            (2, Bytes::from_static(b"please reject this")),
            (3, Bytes::from_static(b"nobody home")),
        ]
    );
    let login = &fake.seen.lock().unwrap().logins[0].0;
    assert_eq!((login.version, login.flags), (PROTOCOL_V2, 0));
}

#[test]
fn upstream_names_the_ids_without_a_result_and_heartbeats_while_it_waits() {
    let fake = fake::start(PROTOCOL_V2, answer_upstreams);
    let run = upstream_as_alice(
        &fake,
        &[
            "--message",
            "one",
            "--message",
            "lost",
            "--count",
            "3",
            // A 250 ms interval (a quarter of the hint), so pings go out while it waits.
            "--nat-hint",
            "1000",
            "--wait-ms",
            "1500",
        ],
        "",
    );
    let (status, lines, stderr) = run.finish();
    assert!(!status.success(), "{lines:?}");
    assert_eq!(
        lines,
        [
            r#"upstream 1: accepted, reply "seq=1""#,
            r#"upstream 3: accepted, reply "seq=3""#,
        ]
    );
    assert!(
        stderr.contains("no result for 1500 ms: upstream 2 still waiting for a result"),
        "{stderr}"
    );
    assert!(fake.seen.lock().unwrap().pings >= 2, "{stderr}");
}

#[test]
fn backend_answers_each_delivered_message() {
    let fake = fake::start(PROTOCOL_V2, |peer| {
        for (id, payload) in [(1, "hi"), (2, "buy spam"), (3, "bye")] {
            peer.send(Frame::UpstreamDeliver(UpstreamDeliver {
                id,
                user: "alice".into(),
                device: "phone".into(),
                session_id: fake::SESSION_ID,
                client_id: id + 10,
                payload: payload.into(),
            }));
        }
        while peer.recv().is_some() {}
    });
    let run = spawn(&fake, &["backend", "--reject-if", "spam"], "");
    let lines = run.lines_until(|l| l.contains("client_id 13"));
    assert_eq!(
        lines,
        [
            r#"from alice/phone session 281474976710657 client_id 11: "hi" -> accepted "seq=1""#,
            r#"from alice/phone session 281474976710657 client_id 12: "buy spam" -> rejected "rejected""#,
            r#"from alice/phone session 281474976710657 client_id 13: "bye" -> accepted "seq=2""#,
        ]
    );
    assert!(fake.wait_for(LIMIT, |s| s.frames.len() >= 3));
    let answers = fake.frames(|f| match f {
        Frame::UpstreamAnswer(a) => Some(a.clone()),
        _ => None,
    });
    let answer = |id, accepted, reply: &'static str| UpstreamAnswer {
        id,
        accepted,
        reply: reply.into(),
    };
    assert_eq!(
        answers,
        [
            answer(1, true, "seq=1"),
            answer(2, false, "rejected"),
            answer(3, true, "seq=2"),
        ]
    );
    let seen = fake.seen.lock().unwrap();
    let (login, principal) = &seen.logins[0];
    assert_eq!(
        (login.version, login.flags, login.user.as_str()),
        (PROTOCOL_V2, login_flags::UPSTREAM, "chat")
    );
    assert_eq!(*principal, Some(Principal::Backend));
}

#[test]
fn backend_answers_late_and_prints_json() {
    let sent_at = Arc::new(Mutex::new(None));
    let at = sent_at.clone();
    let fake = fake::start(PROTOCOL_V2, move |peer| {
        *at.lock().unwrap() = Some(Instant::now());
        peer.send(Frame::UpstreamDeliver(UpstreamDeliver {
            id: 5,
            user: "alice".into(),
            device: "phone".into(),
            session_id: 42,
            client_id: 1,
            payload: Bytes::from_static(b"\xffhi"),
        }));
        while peer.recv().is_some() {}
    });
    let run = spawn(
        &fake,
        &[
            "backend",
            "--json",
            "--delay-ms",
            "300",
            "--service",
            "chat",
        ],
        "",
    );
    let lines = run.lines_until(|_| true);
    let object: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        object,
        serde_json::json!({
            "id": 5, "user": "alice", "device": "phone", "session_id": 42, "client_id": 1,
            "payload": "\u{fffd}hi", "payload_b64": "/2hp", "accepted": true, "reply": "seq=1",
        })
    );
    assert!(fake.wait_for(LIMIT, |s| !s.frames.is_empty()));
    let seen = fake.seen.lock().unwrap();
    let (answered_at, answer) = &seen.frames[0];
    assert!(matches!(answer, Frame::UpstreamAnswer(a) if a.id == 5 && a.accepted));
    let delay = answered_at.duration_since(sent_at.lock().unwrap().unwrap());
    assert!(delay >= Duration::from_millis(300), "{delay:?}");
}

#[test]
fn a_server_that_refuses_version_2_gets_a_version_1_login() {
    let fake = fake::start(PROTOCOL_V1, |peer| {
        peer.send(push(1, b"old"));
        while peer.recv().is_some() {}
    });
    let run = watch_as_bob(&fake);
    let lines = run.lines_until(|l| l.starts_with("push"));
    assert_eq!(lines.last().map(String::as_str), Some(r#"push 1: "old""#));
    assert!(fake.wait_for(LIMIT, |s| !s.frames.is_empty()));
    assert_eq!(fake.frames(acks), vec![1]);
    let stderr = run.stderr.lock().unwrap().clone();
    assert!(
        stderr.contains("logging in again with version 1"),
        "{stderr}"
    );
    let seen = fake.seen.lock().unwrap();
    let versions: Vec<u8> = seen.logins.iter().map(|(l, _)| l.version).collect();
    assert_eq!(versions[..2], [PROTOCOL_V2, PROTOCOL_V1]);
}

#[test]
fn upstream_against_a_version_1_server_says_it_cannot() {
    let fake = fake::start(PROTOCOL_V1, answer_upstreams);
    let run = spawn(
        &fake,
        &[
            "send-up",
            "--user",
            "alice",
            "--secret",
            fake::SECRET,
            "--message",
            "hi",
        ],
        "",
    );
    let (status, lines, stderr) = run.finish();
    assert!(!status.success());
    assert!(lines.is_empty(), "{lines:?}");
    assert!(
        stderr.contains("logging in again with version 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("speaks protocol version 1 only: upstream messages need version 2"),
        "{stderr}"
    );
    assert!(fake.frames(|f| Some(f.clone())).is_empty());
}
