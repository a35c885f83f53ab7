//! Sink `webhook` against the test server.

use std::time::{Duration, Instant};

use tether_proto::{RefuseReason, UpstreamStatus};

use super::http::{Http, Reply};
use super::{config, job, Harness};
use crate::mesh::MeshMsg;
use crate::upstream::{Sink, UpstreamConfig};

const SECRET: &str = "0123456789abcdef-secret";

fn webhook(server: &Http) -> UpstreamConfig {
    UpstreamConfig {
        webhook_url: server.url("/hook"),
        webhook_secret: SECRET.into(),
        ..config(Sink::Webhook)
    }
}

fn refused(reason: RefuseReason) -> UpstreamStatus {
    UpstreamStatus::Refused(reason)
}

#[test]
fn accepted_with_the_reply_and_the_sender_in_headers_over_one_connection() {
    let server = Http::start(|seen| {
        let mut body = b"got ".to_vec();
        body.extend_from_slice(&seen.body);
        Reply::new(200, &body)
    });
    let h = Harness::start(webhook(&server), vec![], 16);
    let mut first = job(1, 11, "hello");
    first.user = "José 用户+1".into();
    first.device = "a/b c%".into();
    h.send(first);
    let (id, outcome) = h.result();
    assert_eq!(id, 11);
    assert_eq!(outcome.status, UpstreamStatus::Accepted);
    assert_eq!(&outcome.reply[..], b"got hello");
    // Two more, one after the other: the keep-alive connection is reused.
    for id in [12, 13] {
        h.send(job(1, id, "again"));
        assert_eq!(h.result().1.status, UpstreamStatus::Accepted);
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    let s = &seen[0];
    assert_eq!(&s.body[..], b"hello");
    assert_eq!(s.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        s.header("tether-user"),
        Some("Jos%C3%A9%20%E7%94%A8%E6%88%B7%2B1")
    );
    assert_eq!(s.header("tether-device"), Some("a%2Fb%20c%25"));
    assert_eq!(s.header("tether-session"), Some("42"));
    assert_eq!(s.header("tether-client-id"), Some("11"));
    assert_eq!(
        s.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(seen[2].header("tether-client-id"), Some("13"));
    assert_eq!(server.connections(), 1, "one keep-alive connection");
    assert_eq!(h.stat("sent"), 3);
    assert_eq!(h.stat("accepted"), 3);
}

#[test]
fn without_a_secret_no_authorization_header() {
    let server = Http::start(|_| Reply::new(204, b""));
    let h = Harness::start(
        UpstreamConfig {
            webhook_secret: String::new(),
            ..webhook(&server)
        },
        vec![],
        16,
    );
    h.send(job(1, 1, "x"));
    let (_, outcome) = h.result();
    assert_eq!(outcome.status, UpstreamStatus::Accepted);
    assert!(outcome.reply.is_empty());
    assert_eq!(server.seen()[0].header("authorization"), None);
}

#[test]
fn four_hundreds_reject_with_the_body_and_429_is_rate_limited() {
    let server = Http::start(|seen| match &seen.body[..] {
        b"rate" => Reply::new(429, b"slow down"),
        _ => Reply::new(403, b"not your room"),
    });
    let h = Harness::start(webhook(&server), vec![], 16);
    h.send(job(1, 1, "deny"));
    let (_, outcome) = h.result();
    assert_eq!(outcome.status, refused(RefuseReason::Rejected));
    assert_eq!(&outcome.reply[..], b"not your room");
    h.send(job(1, 2, "rate"));
    let (_, outcome) = h.result();
    assert_eq!(outcome.status, refused(RefuseReason::RateLimited));
    assert!(outcome.reply.is_empty());
    assert_eq!(h.stat("rejected"), 1);
    assert_eq!(h.stat("rate_limited"), 1);
}

#[test]
fn five_hundreds_are_timed_out_and_503_overloaded() {
    let server = Http::start(|seen| match &seen.body[..] {
        b"busy" => Reply::new(503, b"try later"),
        _ => Reply::new(500, b"stack trace"),
    });
    let h = Harness::start(webhook(&server), vec![], 16);
    h.send(job(1, 1, "boom"));
    let (_, outcome) = h.result();
    assert_eq!(outcome.status, refused(RefuseReason::TimedOut));
    assert!(outcome.reply.is_empty(), "an error page is not a reply");
    h.send(job(1, 2, "busy"));
    assert_eq!(h.result().1.status, refused(RefuseReason::Overloaded));
}

#[test]
fn a_dead_url_is_no_backend_at_once() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = UpstreamConfig {
        webhook_url: format!("http://127.0.0.1:{port}/hook"),
        timeout_ms: 5_000,
        ..config(Sink::Webhook)
    };
    let h = Harness::start(cfg, vec![], 16);
    let start = Instant::now();
    h.send(job(1, 1, "x"));
    let (_, outcome) = h.result();
    assert_eq!(outcome.status, refused(RefuseReason::NoBackend));
    assert!(
        start.elapsed() < Duration::from_millis(2_500),
        "not waited out"
    );
    assert_eq!(h.stat("no_backend"), 1);
}

#[test]
fn a_slow_webhook_is_timed_out_at_the_timeout() {
    let server = Http::start(|_| Reply {
        delay: Duration::from_secs(3),
        ..Reply::new(200, b"late")
    });
    let cfg = UpstreamConfig {
        timeout_ms: 300,
        ..webhook(&server)
    };
    let h = Harness::start(cfg, vec![], 16);
    let start = Instant::now();
    h.send(job(1, 1, "x"));
    let (_, outcome) = h.result();
    let took = start.elapsed();
    assert_eq!(outcome.status, refused(RefuseReason::TimedOut));
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(2_500),
        "{took:?}"
    );
    assert_eq!(h.stat("timed_out"), 1);
}

#[test]
fn a_connections_messages_go_one_at_a_time_and_others_go_meanwhile() {
    let server = Http::start(|seen| Reply {
        delay: if &seen.body[..] == b"first" {
            Duration::from_millis(300)
        } else {
            Duration::ZERO
        },
        ..Reply::new(200, &seen.body)
    });
    let h = Harness::start(webhook(&server), vec![], 16);
    h.send(job(1, 1, "first"));
    h.send(job(1, 2, "second"));
    h.send(job(2, 3, "other"));
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(h.result().0);
    }
    assert_eq!(order, [3, 1, 2], "the other connection's is not held up");
    let seen = server.seen();
    let by_body = |b: &[u8]| seen.iter().find(|s| &s.body[..] == b).unwrap().clone();
    let (first, second, other) = (by_body(b"first"), by_body(b"second"), by_body(b"other"));
    assert!(
        second.arrived >= first.answered.unwrap(),
        "the second message was sent before the first's answer"
    );
    assert!(other.arrived < first.answered.unwrap());
}

#[test]
fn a_reply_longer_than_max_is_dropped_and_the_status_stands() {
    let server = Http::start(|_| Reply::new(200, &[b'x'; 100]));
    let h = Harness::start(webhook(&server), vec![], 16);
    h.send(job(1, 1, "x"));
    let (_, outcome) = h.result();
    assert_eq!(outcome.status, UpstreamStatus::Accepted);
    assert!(outcome.reply.is_empty());
    assert_eq!(h.stat("reply_dropped"), 1);
}

#[test]
fn a_full_sequencer_refuses_overloaded() {
    let server = Http::start(|_| Reply {
        delay: Duration::from_millis(300),
        ..Reply::new(200, b"")
    });
    let cfg = UpstreamConfig {
        max_in_flight: 1,
        ..webhook(&server)
    };
    let h = Harness::start(cfg, vec![], 16);
    h.send(job(1, 1, "x"));
    // Once the thread holds the first, the second finds no room.
    let deadline = Instant::now() + Duration::from_secs(2);
    while h.stat("in_flight") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    h.send(job(2, 2, "y"));
    let (id, outcome) = h.result();
    assert_eq!((id, outcome.status), (2, refused(RefuseReason::Overloaded)));
    let (id, outcome) = h.result();
    assert_eq!((id, outcome.status), (1, UpstreamStatus::Accepted));
    assert_eq!(h.stat("overloaded"), 1);
}

#[test]
fn a_result_for_a_full_shard_waits_and_arrives() {
    let server = Http::start(|_| Reply::new(200, b"ok"));
    let h = Harness::start(webhook(&server), vec![], 1);
    // Fill shard 0's channel (one message).
    assert!(h
        .mesh
        .post(
            0,
            MeshMsg::Shard(crate::core::ShardMsg::NetReports(std::sync::Arc::from(
                Vec::new()
            )))
        )
        .is_ok());
    h.send(job(1, 1, "x"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.stat("results_retried") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.stat("results_retried"), 1);
    // The shard reads its channel: the filler, then the result.
    assert!(matches!(
        h.rx.recv().unwrap(),
        MeshMsg::Shard(crate::core::ShardMsg::NetReports(_))
    ));
    let (id, outcome) = h.result();
    assert_eq!((id, outcome.status), (1, UpstreamStatus::Accepted));
    assert_eq!(h.stat("results_lost"), 0);
}
