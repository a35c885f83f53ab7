//! The loadgen's MQTT and NATS sides against tiny brokers written here with std sockets (one
//! thread per connection): logins, heartbeats and pushes go through the same worker loop as
//! tether's, and the report must match what the broker saw.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use serde_json::Value;
use tether_loadgen::wire::mqtt;

/// What a fake broker counted.
#[derive(Default)]
struct Counts {
    logins: AtomicU64,
    pings: AtomicU64,
    published: AtomicU64,
}

/// Subscribers by topic or subject (or filter: MQTT's `prefix/#`, NATS's `prefix.*`): a writer
/// to each.
type Subscribers = Arc<Mutex<HashMap<String, TcpStream>>>;

/// The subscriber of `topic`: its exact subscription, else a wildcard filter that matches it
/// (the upstream sink's `up/#` or `up.*`).
fn subscriber(subs: &Subscribers, topic: &str) -> Option<TcpStream> {
    let subs = subs.lock().unwrap();
    if let Some(w) = subs.get(topic) {
        return w.try_clone().ok();
    }
    subs.iter()
        .find(|(filter, _)| {
            if let Some(prefix) = filter.strip_suffix('#') {
                topic.starts_with(prefix)
            } else if let Some(prefix) = filter.strip_suffix('*') {
                topic
                    .strip_prefix(prefix)
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains('.'))
            } else {
                false
            }
        })
        .and_then(|(_, w)| w.try_clone().ok())
}

/// Starts a broker on a free port; `serve` handles one connection.
fn start(serve: fn(TcpStream, Arc<Counts>, Subscribers)) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let subs: Subscribers = Arc::default();
    let c = counts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (c, s) = (c.clone(), subs.clone());
            std::thread::spawn(move || serve(stream, c, s));
        }
    });
    (addr, counts)
}

/// An MQTT 3.1.1 broker reduced to what the loadgen does: CONNECT → CONNACK, SUBSCRIBE →
/// SUBACK, PINGREQ → PINGRESP, PUBLISH QoS 0 forwarded to the topic's subscriber.
fn serve_mqtt(mut stream: TcpStream, counts: Arc<Counts>, subs: Subscribers) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Take every whole packet off the front of the buffer.
        while buf.len() >= 2 {
            let Ok(Some((len, used))) = mqtt::read_remaining_length(&buf[1..]) else {
                break;
            };
            let end = 1 + used + len;
            if buf.len() < end {
                break;
            }
            let (kind, body) = (buf[0] >> 4, buf[1 + used..end].to_vec());
            buf.drain(..end);
            let reply: Vec<u8> = match kind {
                mqtt::kind::CONNECT => {
                    counts.logins.fetch_add(1, Ordering::Relaxed);
                    vec![0x20, 2, 0, 0]
                }
                mqtt::kind::SUBSCRIBE => {
                    let topic_len = u16::from_be_bytes([body[2], body[3]]) as usize;
                    let topic = String::from_utf8(body[4..4 + topic_len].to_vec()).unwrap();
                    subs.lock()
                        .unwrap()
                        .insert(topic, stream.try_clone().unwrap());
                    vec![0x90, 3, body[0], body[1], 0]
                }
                mqtt::kind::PINGREQ => {
                    counts.pings.fetch_add(1, Ordering::Relaxed);
                    vec![0xd0, 0]
                }
                mqtt::kind::PUBLISH => {
                    counts.published.fetch_add(1, Ordering::Relaxed);
                    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).unwrap();
                    let mut out = BytesMut::new();
                    mqtt::publish(&topic, 0, 0, &body[2 + topic_len..], &mut out).unwrap();
                    if let Some(mut w) = subscriber(&subs, &topic) {
                        let _ = w.write_all(&out);
                    }
                    continue;
                }
                _ => return,
            };
            if stream.write_all(&reply).is_err() {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A NATS server reduced to what the loadgen does: INFO first, then CONNECT, SUB (a queue
/// group is taken as a plain subscription: one sink), PING → PONG, PUB forwarded as MSG to the
/// subject's subscriber.
fn serve_nats(mut stream: TcpStream, counts: Arc<Counts>, subs: Subscribers) {
    if stream
        .write_all(b"INFO {\"max_payload\":1048576}\r\n")
        .is_err()
    {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8(buf[..eol].to_vec()).unwrap();
            let words: Vec<&str> = line.split_whitespace().collect();
            let mut used = eol + 2;
            let reply: Vec<u8> = match words.first().copied() {
                Some("CONNECT") => {
                    counts.logins.fetch_add(1, Ordering::Relaxed);
                    Vec::new()
                }
                Some("SUB") => {
                    subs.lock()
                        .unwrap()
                        .insert(words[1].to_string(), stream.try_clone().unwrap());
                    Vec::new()
                }
                Some("PING") => {
                    counts.pings.fetch_add(1, Ordering::Relaxed);
                    b"PONG\r\n".to_vec()
                }
                Some("PUB") => {
                    let len: usize = words[2].parse().unwrap();
                    if buf.len() < used + len + 2 {
                        break;
                    }
                    counts.published.fetch_add(1, Ordering::Relaxed);
                    let payload = buf[used..used + len].to_vec();
                    used += len + 2;
                    if let Some(mut w) = subscriber(&subs, words[1]) {
                        let mut msg = format!("MSG {} 1 {len}\r\n", words[1]).into_bytes();
                        msg.extend_from_slice(&payload);
                        msg.extend_from_slice(b"\r\n");
                        let _ = w.write_all(&msg);
                    }
                    Vec::new()
                }
                _ => return,
            };
            buf.drain(..used);
            if !reply.is_empty() && stream.write_all(&reply).is_err() {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn loadgen(addr: SocketAddr, protocol: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tether-loadgen"))
        .args(args)
        .args(["--server", &addr.to_string(), "--protocol", protocol])
        .args(["--json", "--quiet", "--settle", "100ms"])
        .output()
        .expect("run tether-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `login_pings`: heartbeats each login sends (NATS's login ends with a PING whose PONG says
/// the CONNECT and SUB were processed).
fn check_idle_and_push(
    protocol: &str,
    serve: fn(TcpStream, Arc<Counts>, Subscribers),
    login_pings: u64,
) {
    let (addr, counts) = start(serve);
    let v = loadgen(
        addr,
        protocol,
        &[
            "idle",
            "-n",
            "10",
            "--shape",
            "burst",
            "--rounds",
            "3",
            "--interval",
            "600s",
        ],
    );
    assert_eq!(v["errors"], serde_json::json!({}), "{}", v["errors"]);
    assert_eq!(v["protocol"], protocol);
    assert_eq!(v["online_after_ramp"], 10);
    assert_eq!(v["load"]["pongs"], 30);
    assert_eq!(counts.pings.load(Ordering::Relaxed), 30 + 10 * login_pings);
    assert_eq!(counts.logins.load(Ordering::Relaxed), 10);

    let (addr, counts) = start(serve);
    let v = loadgen(
        addr,
        protocol,
        &[
            "push",
            "-n",
            "10",
            "--duration",
            "1s",
            "--msg-rate",
            "50",
            "--interval",
            "600s",
        ],
    );
    assert_eq!(v["errors"], serde_json::json!({}), "{}", v["errors"]);
    let sent = v["load"]["pushes_sent"].as_u64().unwrap();
    assert!(sent >= 20, "pushes sent {sent}");
    assert_eq!(counts.published.load(Ordering::Relaxed), sent);
    // Every target is subscribed, so every push arrives and is timed end to end; there is no
    // per-push result in these protocols.
    assert_eq!(v["load"]["delivered"].as_u64().unwrap(), sent);
    assert_eq!(v["latency_us"]["push_e2e"]["count"].as_u64().unwrap(), sent);
    assert!(v["latency_us"].get("push_result").is_none());
}

#[test]
fn mqtt_logs_in_heartbeats_and_receives_pushes() {
    check_idle_and_push("mqtt", serve_mqtt, 0);
}

#[test]
fn nats_logs_in_heartbeats_and_receives_pushes() {
    check_idle_and_push("nats", serve_nats, 1);
}

/// The upstream shape over a peer: clients publish to `up/<user>` or `up.<user>`, the one sink
/// subscribed to `up/#` or `up.*` receives every message in each sender's order; there is no
/// result, so its latency is n/a rather than 0.
fn check_upstream(protocol: &str, serve: fn(TcpStream, Arc<Counts>, Subscribers)) {
    let (addr, counts) = start(serve);
    let v = loadgen(
        addr,
        protocol,
        &[
            "upstream",
            "-n",
            "10",
            "--duration",
            "1s",
            "--msg-rate",
            "50",
            "--interval",
            "600s",
        ],
    );
    assert_eq!(v["errors"], serde_json::json!({}), "{}", v["errors"]);
    assert_eq!(v["online_after_ramp"], 10);
    let sent = v["load"]["upstream_sent"].as_u64().unwrap();
    assert!(sent >= 20, "upstream messages sent {sent}");
    assert_eq!(counts.published.load(Ordering::Relaxed), sent);
    // The sink's worker waits until the messages stop coming, so the load phase has them all.
    assert_eq!(v["load"]["upstream_received"].as_u64().unwrap(), sent);
    assert_eq!(v["load"]["upstream_accepted"], 0);
    assert_eq!(v["totals"]["upstream_out_of_order"], 0);
    assert_eq!(
        v["latency_us"]["upstream_e2e"]["count"].as_u64().unwrap(),
        sent
    );
    assert!(v["latency_us"].get("upstream_result").is_none());
    assert_eq!(
        v["latency_not_applicable"]["upstream_result"],
        format!("{protocol} has no per-message result")
    );
}

#[test]
fn mqtt_upstream_goes_to_one_subscriber() {
    check_upstream("mqtt", serve_mqtt);
}

#[test]
fn nats_upstream_goes_to_one_queue_subscriber() {
    check_upstream("nats", serve_nats);
}
