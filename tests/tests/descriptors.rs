//! Connections are direct descriptors in each shard ring's file table, not descriptors of the
//! process: a server whose open-files limit is far below its connections holds them all,
//! moves them to their home shard and pushes to them; a full table refuses with a back-off.

use std::collections::HashMap;
use std::time::Duration;

use tether_proto::{BackendPush, Frame, PushStatus};
use tether_tests::http::{get, parse_metrics, sum, Sample};
use tether_tests::{
    eventually, take_refused, user_on_shard, users_on_shard, Client, Server, Settings,
};

/// The server's metrics once `ready` holds for them (shards publish twice a second).
fn metrics_when(server: &Server, ready: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    eventually(|| {
        let text = get(server.api, "/metrics", &[]).unwrap().text();
        let samples = parse_metrics(&text).unwrap();
        if ready(&samples) {
            Ok(samples)
        } else {
            Err(format!("metrics never got there:\n{text}"))
        }
    })
}

#[test]
fn the_process_descriptor_table_does_not_bound_the_connections() {
    const NOFILE: u64 = 256;
    const SHARDS: usize = 3;
    // Per home shard: more than the open-files limit in total, fewer than a table's slots.
    const PER_SHARD: usize = 190;
    let settings = Settings {
        shards: SHARDS,
        nofile: Some(NOFILE),
        log: "info",
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let users: Vec<String> = (0..SHARDS)
        .flat_map(|shard| users_on_shard("fd", shard, SHARDS).take(PER_SHARD))
        .collect();
    let mut clients = Vec::new();
    for u in &users {
        let (c, ok) = server
            .client(u, "phone")
            .unwrap_or_else(|e| panic!("login of {u}: {e:#}\n{}", server.log()));
        // The session id carries the shard that holds the connection: its user's home.
        let home = tether_server::routing::shard_for(u, SHARDS);
        assert_eq!((ok.session_id >> 48) as usize, home, "{u}");
        clients.push(c);
    }
    let held = users.len();
    assert!(held as u64 > NOFILE, "{held} connections");
    let fds = server.open_fds().unwrap().len();
    assert!(
        (fds as u64) < NOFILE / 2,
        "the process holds {fds} descriptors with {held} connections"
    );
    // About two of three logins landed on another shard than their home and moved there.
    let out = server.counter("handover_out");
    assert_eq!(out, server.counter("handover_in"));
    assert!(out as usize > held / 3, "{out} of {held} moved");

    // A push reaches every one of them, and each answers a heartbeat.
    let mut backend = server.backend("fd-svc").unwrap();
    for (i, u) in users.iter().enumerate() {
        backend
            .send(&Frame::BackendPush(BackendPush {
                id: i as u64,
                flags: 0,
                user: u.as_str().into(),
                payload: bytes::Bytes::from(format!("to {u}")),
            }))
            .unwrap();
    }
    let mut results = HashMap::new();
    while results.len() < held {
        match backend.recv().unwrap() {
            Frame::PushResult(r) => {
                results.insert(r.id, r.status);
            }
            other => panic!("backend got {other:?}"),
        }
    }
    assert!(
        results.values().all(|s| *s == PushStatus::Delivered(1)),
        "{results:?}"
    );
    for (c, u) in clients.iter_mut().zip(&users) {
        match c.recv().unwrap() {
            Frame::Push(p) => assert_eq!(p.payload, format!("to {u}").as_bytes()),
            other => panic!("{u} got {other:?}"),
        }
        c.ping(60_000).unwrap();
    }
    let samples = metrics_when(&server, |s| {
        sum(s, "tether_ring_files", &[]) >= (held + 1) as f64
    });
    assert_eq!(
        sum(&samples, "tether_ring_files_capacity", &[]),
        (SHARDS as u64 * NOFILE) as f64
    );
    assert!(sum(&samples, "tether_process_open_fds", &[]) < (NOFILE / 2) as f64);

    // Their slots are given back when they leave.
    drop(clients);
    metrics_when(&server, |s| sum(s, "tether_ring_files", &[]) <= 1.0);
    assert_eq!(server.counter("refused_ring_table"), 0);
}

#[test]
fn a_full_file_table_refuses_with_a_back_off_until_a_slot_is_free() {
    const NOFILE: u64 = 128;
    const CONNECTIONS: usize = 200;
    let settings = Settings {
        shards: 1,
        nofile: Some(NOFILE),
        log: "info",
        login_timeout_ms: 120_000,
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let mark = server.cpu_mark();
    let mut clients: Vec<Client> = (0..CONNECTIONS)
        .map(|_| Client::connect(server.addr).unwrap())
        .collect();
    // The table holds NOFILE sockets; every connection beyond it hears the back-off at once.
    let beyond = CONNECTIONS - NOFILE as usize;
    let refused = take_refused(&mut clients, beyond);
    assert_eq!(refused, beyond, "connections beyond the table answered");
    // No more than that: the held ones stay silent (their login deadline is far).
    std::thread::sleep(Duration::from_millis(300));
    for c in clients.iter_mut() {
        assert!(!c.refused(), "a held connection was refused");
    }
    assert_eq!(server.counter("refused_ring_table"), beyond as u64);
    let samples = metrics_when(&server, |s| {
        sum(s, "tether_ring_files", &[]) == NOFILE as f64
    });
    assert_eq!(
        sum(&samples, "tether_ring_files_capacity", &[]),
        NOFILE as f64
    );
    // Refusing costs no spinning and one log line per period, not one per connection.
    server.assert_idle_since(mark);
    let log = server.log();
    let lines = log.matches("file table is full").count();
    assert!((1..=2).contains(&lines), "{lines} lines:\n{log}");
    // A connection that leaves frees its slot for the next one.
    drop(clients);
    server.client_when_room("after-full", "d");
}

#[test]
fn a_full_home_table_refuses_the_move_with_overloaded() {
    const NOFILE: u64 = 64;
    const SHARDS: usize = 2;
    let settings = Settings {
        shards: SHARDS,
        nofile: Some(NOFILE),
        log: "info",
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    // Fill shard 1's table with users whose home it is.
    let mut users = users_on_shard("full", 1, SHARDS);
    let mut held = Vec::new();
    while held.len() < NOFILE as usize {
        let u = users.next().unwrap();
        held.push(server.client(&u, "phone").unwrap().0);
    }
    // Every further login of such a user is refused: on shard 1 at accept, on shard 0 when it
    // moves there (about half of them, by the kernel's spreading of accepts).
    for _ in 0..20 {
        let u = users.next().unwrap();
        let err = server.client(&u, "phone").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("Overloaded"), "{u}: {text}");
    }
    let stats = get(server.api, "/api/stats", &[]).unwrap().json();
    let shard1 = &stats["shards"][1]["counters"];
    assert_eq!(shard1["refused_ring_table"], 20, "{shard1}");
    assert!(
        stats["shards"][0]["counters"]["handover_out"]
            .as_u64()
            .unwrap()
            > 0,
        "{stats}"
    );
    // Shard 0 still takes its own users, once the kernel hands their connection to it
    // (shard 1 refuses those it accepts itself, whoever their user is).
    let u = user_on_shard("elsewhere", 0, SHARDS);
    assert!(
        (0..30).any(|_| server.client(&u, "phone").is_ok()),
        "shard 0 took none"
    );
}
