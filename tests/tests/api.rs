//! The HTTP control plane over real HTTP: pushes with one outcome per user, kick, presence,
//! stats, drain and readiness, keys and their scopes, request errors, /metrics as valid
//! OpenMetrics text that follows the traffic, and an API nobody can lock out (deadlines, caps
//! per listener and per source address).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tether_proto::{CloseCode, Frame, PushAck};
use tether_tests::http::{self, get, post, scrape_until};
use tether_tests::{eventually, user_on_shard, Client, Server, Settings, PATIENCE};

/// The payload of the next `Push` frame (Pongs and other frames are not expected here).
fn next_push(client: &mut Client) -> (u64, Vec<u8>) {
    match client.recv().expect("a push") {
        Frame::Push(p) => (p.id, p.payload.to_vec()),
        other => panic!("expected Push, got {other:?}"),
    }
}

/// `results` of a push response, by user.
fn by_user(resp: &Value) -> std::collections::HashMap<String, Value> {
    resp["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| (r["user"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn push_reaches_users_on_both_shards_with_one_result_each() {
    let server = Server::start(&Settings::default()).unwrap();
    let a = user_on_shard("api-alice", 0, 2);
    let b = user_on_shard("api-bob", 1, 2);
    let (mut ca, _) = server.client(&a, "phone").unwrap();
    let (mut cb1, _) = server.client(&b, "phone").unwrap();
    let (mut cb2, _) = server.client(&b, "laptop").unwrap();
    let resp = post(
        server.api,
        "/api/push",
        &[],
        &json!({"users": [a, b, "api-nobody", ""], "payload": "hello"}),
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = by_user(&resp.json());
    assert_eq!(
        r[&a],
        json!({"user": a, "outcome": "delivered", "devices": 1})
    );
    assert_eq!(
        r[&b],
        json!({"user": b, "outcome": "delivered", "devices": 2})
    );
    assert_eq!(r["api-nobody"]["outcome"], "offline");
    assert_eq!(
        r[""],
        json!({"user": "", "outcome": "refused", "reason": "bad_target"})
    );
    assert_eq!(next_push(&mut ca).1, b"hello");
    let (id1, p1) = next_push(&mut cb1);
    let (id2, p2) = next_push(&mut cb2);
    assert_eq!(
        (p1.as_slice(), p2.as_slice()),
        (&b"hello"[..], &b"hello"[..])
    );
    assert_eq!(id1, id2, "one push, one id on every device");

    // Base64 payloads carry any bytes; a payload over max_frame is refused by the shard.
    let resp = post(
        server.api,
        "/api/push",
        &[],
        &json!({"user": a, "payload_b64": "AP8Q"}),
    )
    .unwrap();
    assert_eq!(by_user(&resp.json())[&a]["outcome"], "delivered");
    assert_eq!(next_push(&mut ca).1, vec![0x00, 0xff, 0x10]);
    let big = "x".repeat(70_000);
    let resp = post(
        server.api,
        "/api/push",
        &[],
        &json!({"user": a, "payload": big}),
    )
    .unwrap();
    assert_eq!(
        by_user(&resp.json())[&a],
        json!({"user": a, "outcome": "refused", "reason": "too_large"})
    );
}

#[test]
fn want_ack_reports_acked_or_an_ack_timeout() {
    let server = Server::start(&Settings::default()).unwrap();
    let a = user_on_shard("ack-a", 0, 2);
    let b = user_on_shard("ack-b", 1, 2);
    let (mut ca, _) = server.client(&a, "d").unwrap();
    let (mut cb, _) = server.client(&b, "d").unwrap();
    let api = server.api;
    let (ua, ub) = (a.clone(), b.clone());
    let request = std::thread::spawn(move || {
        post(
            api,
            "/api/push",
            &[],
            &json!({"users": [ua, ub], "payload": "ack me", "want_ack": true,
                    "ack_timeout_ms": 5000}),
        )
        .unwrap()
    });
    // a acknowledges, b stays silent.
    let (id, _) = next_push(&mut ca);
    ca.send(&Frame::PushAck(PushAck { id })).unwrap();
    next_push(&mut cb);
    let resp = request.join().unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = by_user(&resp.json());
    assert_eq!(r[&a], json!({"user": a, "outcome": "acked", "devices": 1}));
    assert_eq!(
        r[&b],
        json!({"user": b, "outcome": "delivered", "devices": 1, "ack": "timed_out"})
    );
}

#[test]
fn batch_answers_every_push_in_order() {
    let server = Server::start(&Settings::default()).unwrap();
    let a = user_on_shard("batch-a", 0, 2);
    let b = user_on_shard("batch-b", 1, 2);
    let (mut ca, _) = server.client(&a, "d").unwrap();
    let (mut cb, _) = server.client(&b, "d").unwrap();
    let resp = post(
        server.api,
        "/api/batch",
        &[],
        &json!({"pushes": [
            {"user": a, "payload": "one"},
            {"users": [b, "batch-nobody"], "payload": "two"},
            {"user": a, "payload": "three"},
        ]}),
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    let groups = body["results"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    assert_eq!(groups[0]["results"][0]["outcome"], "delivered");
    assert_eq!(groups[1]["results"][0]["user"], b.as_str());
    assert_eq!(groups[1]["results"][0]["outcome"], "delivered");
    assert_eq!(groups[1]["results"][1]["outcome"], "offline");
    assert_eq!(groups[2]["results"][0]["outcome"], "delivered");
    let mut got = vec![next_push(&mut ca).1, next_push(&mut ca).1];
    got.sort();
    assert_eq!(got, vec![b"one".to_vec(), b"three".to_vec()]);
    assert_eq!(next_push(&mut cb).1, b"two");
    // A malformed push fails the whole batch with its index.
    let resp = post(
        server.api,
        "/api/batch",
        &[],
        &json!({"pushes": [{"user": a, "payload": "ok"}, {"user": a}]}),
    )
    .unwrap();
    assert_eq!(resp.status, 400);
    assert!(resp.json()["error"]
        .as_str()
        .unwrap()
        .starts_with("pushes[1]"));
}

#[test]
fn kick_sends_the_kick_frame_and_presence_follows() {
    let server = Server::start(&Settings::default()).unwrap();
    let u = user_on_shard("kick-me", 1, 2);
    let (mut phone, _) = server.client(&u, "phone").unwrap();
    let (mut laptop, _) = server.client(&u, "laptop").unwrap();
    let presence = |user: &str| {
        let resp = get(server.api, &format!("/api/presence?user={user}"), &[]).unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()
    };
    assert_eq!(
        presence(&u),
        json!({"user": u, "online": true, "devices": 2, "shard": 1})
    );

    // One device, own code, may reconnect.
    let resp = post(
        server.api,
        "/api/kick",
        &[],
        &json!({"user": u, "device": "phone", "code": 4001, "may_reconnect": true}),
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["kicked"], 1);
    let frames = phone.until_closed().unwrap();
    match frames.as_slice() {
        [Frame::Kick(k)] => {
            assert_eq!(k.reason, CloseCode::Other(4001));
            assert!(k.may_reconnect);
        }
        other => panic!("expected one Kick, got {other:?}"),
    }
    laptop.ping(60_000).expect("the other device stays");
    assert_eq!(presence(&u)["devices"], 1);

    // The whole user, default code.
    let resp = post(server.api, "/api/kick", &[], &json!({"user": u})).unwrap();
    assert_eq!(resp.json()["kicked"], 1);
    let frames = laptop.until_closed().unwrap();
    match frames.as_slice() {
        [Frame::Kick(k)] => {
            assert_eq!(k.reason, CloseCode::Kicked);
            assert!(!k.may_reconnect);
        }
        other => panic!("expected one Kick, got {other:?}"),
    }
    assert_eq!(
        presence(&u),
        json!({"user": u, "online": false, "devices": 0, "shard": 1})
    );
    let resp = post(server.api, "/api/kick", &[], &json!({"user": u})).unwrap();
    assert_eq!(resp.json()["kicked"], 0, "nobody left to kick");
}

#[test]
fn stats_count_connections_per_shard() {
    let server = Server::start(&Settings::default()).unwrap();
    let _c0 = server.client(&user_on_shard("stats", 0, 2), "d").unwrap();
    let _c1 = server.client(&user_on_shard("stats", 1, 2), "d").unwrap();
    let _c2 = server.client(&user_on_shard("stats2", 1, 2), "d").unwrap();
    let resp = get(server.api, "/api/stats", &[]).unwrap();
    assert_eq!(resp.status, 200);
    let s = resp.json();
    assert_eq!(s["connections"], 3);
    assert_eq!(s["users"], 3);
    assert_eq!(s["shards"][0]["users"], 1);
    assert_eq!(s["shards"][1]["users"], 2);
    assert_eq!(s["ready"], true);
    assert!(s["shards"][1]["counters"]["logged_in"].as_u64().unwrap() >= 2);
}

#[test]
fn drain_through_the_api_makes_the_server_unready_and_exit() {
    let settings = Settings {
        drain_ms: 3_000,
        ..Settings::default()
    };
    let mut server = Server::start(&settings).unwrap();
    let (mut c, _) = server.client("drained", "d").unwrap();
    assert_eq!(get(server.api, "/readyz", &[]).unwrap().status, 200);
    let resp = post(server.api, "/api/drain", &[], &json!({})).unwrap();
    assert_eq!(resp.status, 202, "{}", resp.text());
    match c.recv().unwrap() {
        Frame::GoAway(g) => {
            assert_eq!(g.reason, CloseCode::ServerShutdown);
            assert_eq!(g.window_ms, 3_000);
        }
        other => panic!("expected GoAway, got {other:?}"),
    }
    // Still draining (the client is connected): alive but not ready, pushes refused.
    let resp = get(server.api, "/readyz", &[]).unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["status"], "draining");
    assert_eq!(get(server.api, "/healthz", &[]).unwrap().status, 200);
    let resp = post(
        server.api,
        "/api/push",
        &[],
        &json!({"user": "drained", "payload": "late"}),
    )
    .unwrap();
    assert_eq!(
        by_user(&resp.json())["drained"],
        json!({"user": "drained", "outcome": "refused", "reason": "shutting_down"})
    );
    drop(c);
    let status = server
        .wait(Duration::from_secs(30))
        .expect("server exits after the drain");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn keys_guard_the_api_but_not_health_or_metrics() {
    let key = "test-api-key-0123456789";
    let settings = Settings {
        api_keys: vec![key.into(), "second-api-key-0123456789".into()],
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let body = json!({"user": "k", "payload": "x"});
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong-key-0123456789")],
        vec![("authorization", "Basic dGVzdA==")],
    ] {
        let resp = post(server.api, "/api/push", &headers, &body).unwrap();
        assert_eq!(resp.status, 401, "{headers:?}");
        assert_eq!(resp.json()["code"], "unauthorized");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    }
    let bearer = format!("Bearer {key}");
    let resp = post(
        server.api,
        "/api/push",
        &[("authorization", &bearer)],
        &body,
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = post(
        server.api,
        "/api/push",
        &[("authorization", "Bearer second-api-key-0123456789")],
        &body,
    )
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(get(server.api, "/healthz", &[]).unwrap().status, 200);
    assert_eq!(get(server.api, "/readyz", &[]).unwrap().status, 200);
    assert_eq!(get(server.api, "/metrics", &[]).unwrap().status, 200);
}

#[test]
fn bad_requests_get_clear_errors() {
    let settings = Settings {
        api_max_body_bytes: 4096,
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let api = server.api;
    let expect = |resp: http::Response, status: u16, code: &str| {
        assert_eq!(resp.status, status, "{}", resp.text());
        let body = resp.json();
        assert_eq!(body["code"], code, "{body}");
        assert!(!body["error"].as_str().unwrap().is_empty());
    };
    let raw = |body: &[u8]| http::request(api, "POST", "/api/push", &[], body).unwrap();
    expect(raw(b"{\"user\": \"u\", "), 400, "bad_json");
    expect(raw(b"not json at all"), 400, "bad_json");
    expect(
        raw(br#"{"user": "u", "payload": "x", "colour": "red"}"#),
        400,
        "bad_json",
    );
    expect(
        raw(br#"{"user": "u", "payload": "x", "payload_b64": "eA=="}"#),
        400,
        "bad_request",
    );
    expect(
        raw(br#"{"user": "u", "payload_b64": "***"}"#),
        400,
        "bad_request",
    );
    expect(raw(br#"{"payload": "x"}"#), 400, "bad_request");
    // Declared too large: refused before the body is read (none is sent here).
    let resp = http::request(
        api,
        "POST",
        "/api/push",
        &[("content-length", "5000000")],
        b"",
    )
    .unwrap();
    expect(resp, 413, "body_too_large");
    // Streamed (chunked, no length) past the limit.
    let mut chunked = Vec::new();
    let piece = vec![b' '; 1000];
    for _ in 0..6 {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(&piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let resp = http::request(
        api,
        "POST",
        "/api/push",
        &[("transfer-encoding", "chunked")],
        &chunked,
    )
    .unwrap();
    expect(resp, 413, "body_too_large");
    expect(get(api, "/api/nothing", &[]).unwrap(), 404, "not_found");
    expect(
        get(api, "/api/push", &[]).unwrap(),
        405,
        "method_not_allowed",
    );
    expect(get(api, "/api/presence", &[]).unwrap(), 400, "bad_request");
    expect(
        post(api, "/api/kick", &[], &json!({"user": "u", "code": 7})).unwrap(),
        400,
        "bad_request",
    );
    // The server is still fine.
    assert_eq!(get(api, "/healthz", &[]).unwrap().status, 200);
}

#[test]
fn metrics_are_valid_and_follow_the_traffic() {
    let settings = Settings {
        metrics_listener: true,
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let metrics = server.metrics.expect("metrics listener");
    let before = scrape_until(metrics, "build info", |s| {
        http::sum(s, "tether_build_info", &[]) == 1.0
    });
    assert_eq!(http::sum(&before, "tether_ready", &[]), 1.0);
    assert_eq!(http::sum(&before, "tether_logins_total", &[]), 0.0);

    let (mut c, _) = server.client("metered", "d").unwrap();
    c.ping(60_000).unwrap();
    let resp = post(
        server.api,
        "/api/push",
        &[],
        &json!({"users": ["metered", "metered-offline"], "payload": "m"}),
    )
    .unwrap();
    assert_eq!(resp.status, 200);
    next_push(&mut c);
    let after = scrape_until(metrics, "the login, ping and pushes", |s| {
        http::sum(s, "tether_logins_total", &[("kind", "client")]) == 1.0
            && http::sum(s, "tether_heartbeats_total", &[]) >= 1.0
            && http::sum(s, "tether_push_results_total", &[("outcome", "delivered")]) == 1.0
            && http::sum(s, "tether_push_results_total", &[("outcome", "offline")]) == 1.0
            && http::sum(s, "tether_ping_handling_seconds_count", &[]) >= 1.0
            && http::sum(s, "tether_push_delivery_seconds_count", &[]) == 1.0
    });
    // Every Ping is in the handling histogram, in some bucket up to +Inf.
    assert_eq!(
        http::sum(&after, "tether_ping_handling_seconds_count", &[]),
        http::sum(
            &after,
            "tether_ping_handling_seconds_bucket",
            &[("le", "+Inf")]
        )
    );
    assert!(http::sum(&after, "tether_ring_waits_total", &[]) >= 1.0);
    assert!(http::sum(&after, "tether_ring_completions_total", &[]) >= 1.0);
    assert!(http::sum(&after, "tether_ring_recv_pool_bytes", &[]) > 0.0);
    assert_eq!(http::sum(&after, "tether_connections", &[]), 1.0);
    assert_eq!(
        http::sum(
            &after,
            "tether_api_pushes_total",
            &[("outcome", "delivered")]
        ),
        1.0
    );
    assert_eq!(
        http::sum(&after, "tether_api_pushes_total", &[("outcome", "offline")]),
        1.0
    );
    assert_eq!(
        http::sum(&after, "tether_api_push_duration_seconds_count", &[]),
        1.0
    );
    assert!(
        http::sum(
            &after,
            "tether_api_requests_total",
            &[("route", "/api/push"), ("status", "200")]
        ) == 1.0
    );

    // A kick shows as a close by reason.
    post(server.api, "/api/kick", &[], &json!({"user": "metered"})).unwrap();
    c.until_closed().unwrap();
    scrape_until(metrics, "the kick", |s| {
        http::sum(s, "tether_closes_total", &[("reason", "kicked")]) == 1.0
            && http::sum(s, "tether_connections", &[]) == 0.0
    });

    // The metrics listener serves nothing else.
    let resp = post(
        metrics,
        "/api/push",
        &[],
        &json!({"user": "x", "payload": "y"}),
    )
    .unwrap();
    assert_eq!(resp.status, 404);
    assert_eq!(get(metrics, "/readyz", &[]).unwrap().status, 200);
}

/// Another loopback host than the tests' default 127.0.0.1.
const OTHER_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Idle sockets a flood opens: more than the default `api.max_connections` (1024), which
/// the API and metrics listeners shared before each had its own cap.
const FLOOD: usize = 1_100;

/// Scrapes the API listener's /metrics once.
fn scrape(server: &Server) -> Vec<http::Sample> {
    let resp = http::request_from(Some(OTHER_HOST), server.api, "GET", "/metrics", &[], b"")
        .expect("a scrape");
    http::parse_metrics(&resp.text()).expect("valid metrics")
}

/// Waits (at most [`PATIENCE`] past `expected`) for `stream` to be closed by the server and
/// checks it was not closed before `expected`.
fn closed_after(
    stream: &mut std::net::TcpStream,
    started: Instant,
    expected: Duration,
    what: &str,
) {
    let waited = http::wait_closed(
        stream,
        expected + PATIENCE - started.elapsed().min(expected),
    )
    .unwrap_or_else(|| panic!("{what}: still open {:?} after its deadline", PATIENCE));
    let elapsed = started.elapsed();
    assert!(
        elapsed + Duration::from_millis(20) >= expected,
        "{what}: closed after {elapsed:?} (waited {waited:?}), before its {expected:?} deadline"
    );
}

#[test]
fn half_a_request_head_is_closed_after_header_timeout() {
    let header = Duration::from_millis(1_000);
    let settings = Settings {
        api_extra: format!("header_timeout_ms = {}\n", header.as_millis()),
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    // One client stops half-way through its head; another trickles a header byte every
    // 100 ms, which must not move the deadline.
    let started = Instant::now();
    let mut half = http::connect(server.api, None).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let trickle_api = server.api;
    let trickler = std::thread::spawn(move || {
        let started = Instant::now();
        let mut s = http::connect(trickle_api, None).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nx-slow: ").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while started.elapsed() < header + PATIENCE {
            if s.write_all(b"a").is_err() {
                break;
            }
            if http::wait_closed(&mut s, Duration::from_millis(100)).is_some() {
                return started.elapsed();
            }
        }
        started.elapsed()
    });
    closed_after(&mut half, started, header, "half a head");
    let trickled = trickler.join().unwrap();
    assert!(
        trickled >= header && trickled < header + PATIENCE,
        "a trickled head was closed after {trickled:?}"
    );
    // Both counted; the listener still serves.
    eventually(|| {
        let header_timeouts = http::sum(
            &scrape(&server),
            "tether_api_timeouts_total",
            &[("listener", "api"), ("kind", "header")],
        );
        if header_timeouts == 2.0 {
            Ok(())
        } else {
            Err(format!("header timeouts counted: {header_timeouts}, not 2"))
        }
    });
    assert_eq!(get(server.api, "/healthz", &[]).unwrap().status, 200);
}

#[test]
fn a_slow_body_and_an_idle_connection_are_closed_but_a_long_push_is_not() {
    let (body, idle) = (Duration::from_millis(1_000), Duration::from_millis(1_500));
    let settings = Settings {
        api_extra: format!(
            "body_timeout_ms = {}\nidle_timeout_ms = {}\n",
            body.as_millis(),
            idle.as_millis()
        ),
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    // A body promised and not sent: closed `body` after its head.
    let mut slow = http::connect(server.api, None).unwrap();
    let started = Instant::now();
    slow.write_all(b"POST /api/push HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"user\": ")
        .unwrap();
    closed_after(&mut slow, started, body, "a slow body");
    // A keep-alive connection answered once, then silent: closed `idle` after the answer.
    let mut kept = http::connect(server.api, None).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.ends_with(b"\n") || !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = std::io::Read::read(&mut kept, &mut chunk).unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&chunk[..n]);
    }
    let answered = Instant::now();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    closed_after(&mut kept, answered, idle, "an idle keep-alive connection");
    // Waiting for an acknowledgement is neither body nor idle time.
    let (mut c, _) = server.client("slow-acker", "d").unwrap();
    let api = server.api;
    let push = std::thread::spawn(move || {
        post(
            api,
            "/api/push",
            &[],
            &json!({"user": "slow-acker", "payload": "p", "want_ack": true,
                    "ack_timeout_ms": 2_500}),
        )
        .unwrap()
    });
    next_push(&mut c);
    let resp = push.join().unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(by_user(&resp.json())["slow-acker"]["ack"], "timed_out");
    let samples = scrape(&server);
    for kind in ["body", "idle"] {
        assert_eq!(
            http::sum(&samples, "tether_api_timeouts_total", &[("kind", kind)]),
            1.0,
            "{kind}"
        );
    }
}

/// Opens [`FLOOD`] idle sockets to `addr` from 127.0.0.1, then one more that sends a whole
/// request: once that one is answered or closed, the server has accepted (and kept or
/// refused) every socket before it.
fn flood(addr: std::net::SocketAddr) -> Vec<std::net::TcpStream> {
    let idle = http::idle_connections(addr, None, FLOOD).unwrap();
    let _ = http::get(addr, "/healthz", &[]);
    idle
}

#[test]
fn idle_sockets_on_the_metrics_listener_do_not_block_a_push() {
    let settings = Settings {
        metrics_listener: true,
        // Long enough that no idle socket is closed by its deadline during the test.
        api_extra: "header_timeout_ms = 600000\n".into(),
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let metrics = server.metrics.expect("metrics listener");
    let _idle = flood(metrics);
    // Pushes from this host and from another one get through.
    for from in [None, Some(OTHER_HOST)] {
        let resp = http::request_from(
            from,
            server.api,
            "POST",
            "/api/push",
            &[("content-type", "application/json")],
            json!({"user": "nobody", "payload": "p"})
                .to_string()
                .as_bytes(),
        )
        .expect("the API answers");
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(by_user(&resp.json())["nobody"]["outcome"], "offline");
    }
    // The metrics listener holds its own cap (64) and closed the rest at once.
    let samples = scrape(&server);
    let sum = |name: &str, labels: &[(&str, &str)]| http::sum(&samples, name, labels);
    assert_eq!(
        sum("tether_api_connections", &[("listener", "metrics")]),
        64.0
    );
    assert_eq!(
        sum(
            "tether_api_connections_refused_total",
            &[("listener", "metrics")]
        ),
        (FLOOD + 1 - 64) as f64
    );
    assert_eq!(
        sum(
            "tether_api_connections_refused_total",
            &[("listener", "api")]
        ),
        0.0
    );
}

#[test]
fn idle_sockets_from_one_address_do_not_block_a_push_from_another() {
    let settings = Settings {
        api_extra: "header_timeout_ms = 600000\n".into(),
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let _idle = flood(server.api);
    let resp = http::request_from(
        Some(OTHER_HOST),
        server.api,
        "POST",
        "/api/push",
        &[("content-type", "application/json")],
        json!({"user": "nobody", "payload": "p"})
            .to_string()
            .as_bytes(),
    )
    .expect("the API answers another host");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let samples = scrape(&server);
    assert_eq!(
        http::sum(
            &samples,
            "tether_api_connections_refused_total",
            &[("listener", "api"), ("reason", "address")]
        ),
        (FLOOD + 1 - 64) as f64
    );
}

#[test]
fn a_source_over_its_cap_is_closed_at_once_until_a_place_frees() {
    let settings = Settings {
        api_extra: "max_connections_per_address = 4\nheader_timeout_ms = 600000\n".into(),
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let mut held = http::idle_connections(server.api, None, 4).unwrap();
    let mut fifth = http::connect(server.api, None).unwrap();
    assert!(
        http::wait_closed(&mut fifth, PATIENCE).is_some(),
        "a fifth connection from one address must be closed at once"
    );
    for (i, h) in held.iter_mut().enumerate() {
        assert!(
            http::wait_closed(h, Duration::from_millis(50)).is_none(),
            "held connection {i} closed"
        );
    }
    let from_other = http::request_from(Some(OTHER_HOST), server.api, "GET", "/healthz", &[], b"");
    assert_eq!(from_other.unwrap().status, 200, "another address is served");
    // One place freed: this address is served again (once the server saw the close).
    drop(held.pop());
    eventually(|| match get(server.api, "/healthz", &[]) {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!(
            "the freed place never came back: status {}",
            r.status
        )),
        Err(e) => Err(format!("the freed place never came back: {e:#}")),
    });
}

#[test]
fn each_key_may_do_what_its_scopes_allow() {
    let keys = [
        ("all", "all-scopes-key-0123456789"),
        ("push", "push-scope-key-0123456789"),
        ("read", "read-scope-key-0123456789"),
        ("admin", "admin-scope-key-0123456789"),
    ];
    let settings = Settings {
        api_extra: format!(
            "keys = [\"{}\", {{ key = \"{}\", scopes = [\"push\"] }}, \
             {{ key = \"{}\", scopes = [\"read\"] }}, {{ key = \"{}\", scopes = [\"admin\"] }}]\n",
            keys[0].1, keys[1].1, keys[2].1, keys[3].1
        ),
        ..Settings::default()
    };
    let mut server = Server::start(&settings).unwrap();
    let api = server.api;
    let bearer = |scope: &str| format!("Bearer {}", keys.iter().find(|k| k.0 == scope).unwrap().1);
    let push = json!({"user": "nobody", "payload": "p"});
    let batch = json!({"pushes": [push]});
    let call = |scope: &str, route: &str| {
        let auth = bearer(scope);
        let h = [("authorization", auth.as_str())];
        match route {
            "push" => post(api, "/api/push", &h, &push),
            "batch" => post(api, "/api/batch", &h, &batch),
            "kick" => post(api, "/api/kick", &h, &json!({"user": "nobody"})),
            "drain" => post(api, "/api/drain", &h, &json!({})),
            "stats" => get(api, "/api/stats", &h),
            "presence" => get(api, "/api/presence?user=nobody", &h),
            _ => unreachable!(),
        }
        .unwrap()
    };
    let forbidden = |scope: &str, route: &str| {
        let resp = call(scope, route);
        assert_eq!(resp.status, 403, "{scope} key on {route}: {}", resp.text());
        let body = resp.json();
        assert_eq!(body["code"], "forbidden", "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            !error.contains("scope-key"),
            "the error shows the key: {error}"
        );
    };
    for (scope, allowed, denied) in [
        (
            "push",
            &["push", "batch"][..],
            &["stats", "presence", "kick", "drain"][..],
        ),
        (
            "read",
            &["stats", "presence"][..],
            &["push", "batch", "kick", "drain"][..],
        ),
        (
            "admin",
            &["kick"][..],
            &["push", "batch", "stats", "presence"][..],
        ),
        (
            "all",
            &["push", "batch", "stats", "presence", "kick"][..],
            &[][..],
        ),
    ] {
        for route in allowed {
            assert_eq!(call(scope, route).status, 200, "{scope} key on {route}");
        }
        for route in denied {
            forbidden(scope, route);
        }
    }
    // A wrong key is still 401; nobody drained so far.
    let resp = post(
        api,
        "/api/drain",
        &[("authorization", "Bearer not-a-key-0123456789")],
        &json!({}),
    );
    assert_eq!(resp.unwrap().status, 401);
    assert_eq!(get(api, "/readyz", &[]).unwrap().status, 200);
    // The admin key drains.
    assert_eq!(call("admin", "drain").status, 202);
    assert_eq!(get(api, "/readyz", &[]).unwrap().status, 503);
    let status = server
        .wait(Duration::from_secs(30))
        .expect("the server exits after the drain");
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_keys_are_refused_at_start_without_showing_them() {
    for (keys, why) in [
        ("[\"QZXJ-short\"]", "a short key"),
        (
            "[{ key = \"QZXJ-long-enough-0123456789\", scopes = [\"push\", \"everything\"] }]",
            "an unknown scope",
        ),
        (
            "[{ key = \"QZXJ-long-enough-0123456789\", scopes = [] }]",
            "no scope",
        ),
    ] {
        let settings = Settings {
            api_extra: format!("keys = {keys}\n"),
            ..Settings::default()
        };
        let (status, log) = Server::start_refused(&settings).unwrap();
        assert!(!status.success(), "{why}: started");
        assert!(log.contains("api.keys[0]"), "{why}: {log}");
        assert!(!log.contains("QZXJ"), "{why}: the log shows the key: {log}");
    }
}
