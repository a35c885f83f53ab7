//! Local-first pushes in a two-node fleet over a real nats-server: a push for a user whose
//! devices are all on the node is delivered there without a directory read; a user with a
//! device on each node gets every push on both; a device that moves from node a to node b is
//! reached through a, both by a push right after the move and by pushes made while it moved.
//!
//! Nothing here asserts a duration: each test waits for what it needs (a figure, a frame) with
//! a generous deadline, so it holds on a loaded two-core machine. Skipped (with a message) when
//! `nats-server` is not installed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tether_proto::{BackendPush, CloseCode, Frame, PushStatus};
use tether_tests::fleet::{api_push, expect_kick, expect_push, poll, Fleet, SETTLE};
use tether_tests::http::get;
use tether_tests::Client;

/// One fleet at a time.
static TURN: Mutex<()> = Mutex::new(());

/// Nodes `a` and `b`.
fn two_nodes() -> Option<Fleet> {
    Fleet::of(&["a", "b"], "", "")
}

/// Waits until `rounds` pushes in a row into node `i` reach `user`'s `device` (on node `i`)
/// without the directory: each delivered to one device, node i's local-first counter up by
/// one each, and its directory reads, fanned-out pushes and forwards unchanged. A round spoiled
/// by a voided note (a NATS hiccup on a loaded machine) is tried again.
fn wait_local_first(fleet: &Fleet, i: usize, user: &str, device: &mut Client, rounds: u64) {
    poll(
        SETTLE,
        &format!("{rounds} pushes to {user} without the directory"),
        || {
            let figures = |f: &Fleet| {
                (
                    f.shard_counter(i, "cluster_pushes_local_first"),
                    f.cluster_figure(i, "directory_reads"),
                    f.cluster_figure(i, "pushes"),
                    f.cluster_figure(i, "forwards"),
                )
            };
            let (local0, reads0, pushes0, forwards0) = figures(fleet);
            for n in 0..rounds {
                let body = format!("local {n}");
                assert_eq!(
                    api_push(fleet.node(i), user, &body),
                    json!({"user": user, "outcome": "delivered", "devices": 1})
                );
                expect_push(device, body.as_bytes());
            }
            let (local, reads, pushes, forwards) = figures(fleet);
            local == local0 + rounds && (reads, pushes, forwards) == (reads0, pushes0, forwards0)
        },
    );
}

#[test]
fn a_same_node_push_is_delivered_without_a_directory_read() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = two_nodes() else {
        return;
    };
    let (a, b) = (fleet.node(0), fleet.node(1));
    let (mut ann, _) = a.client("ann", "phone").unwrap();
    wait_local_first(&fleet, 0, "ann", &mut ann, 10);
    assert!(fleet.cluster_figure(0, "local_only_noted") >= 1);

    // A backend's push on a takes the same way, and gets its one result.
    let local = fleet.shard_counter(0, "cluster_pushes_local_first");
    let reads = fleet.cluster_figure(0, "directory_reads");
    let mut backend = a.backend("chat").unwrap();
    backend
        .send(&Frame::BackendPush(BackendPush {
            id: 7,
            flags: 0,
            user: "ann".into(),
            payload: bytes::Bytes::from_static(b"binary"),
        }))
        .unwrap();
    match backend.recv().unwrap() {
        Frame::PushResult(r) => assert_eq!((r.id, r.status), (7, PushStatus::Delivered(1))),
        other => panic!("expected PushResult, got {other:?}"),
    }
    expect_push(&mut ann, b"binary");
    poll(SETTLE, "the backend's push counted as local-first", || {
        fleet.shard_counter(0, "cluster_pushes_local_first") > local
    });
    // (A void between the two readings would send it to the directory: allowed, and rare.)
    if fleet.cluster_figure(0, "local_only_voided") == 0 {
        assert_eq!(fleet.cluster_figure(0, "directory_reads"), reads);
    }

    // Through b, which holds no device of ann, the push reads the directory and reaches her.
    let b_reads = fleet.cluster_figure(1, "directory_reads");
    assert_eq!(
        api_push(b, "ann", "from b"),
        json!({"user": "ann", "outcome": "delivered", "devices": 1})
    );
    expect_push(&mut ann, b"from b");
    assert!(fleet.cluster_figure(1, "directory_reads") > b_reads);

    // Declared once, exposed as a metric per shard.
    let metrics = get(a.api, "/metrics", &[]).unwrap().text();
    assert!(
        metrics.contains("# TYPE tether_cluster_pushes_local_first counter"),
        "{metrics}"
    );
    assert!(metrics.contains("tether_cluster_local_only_noted_total"));
}

#[test]
fn a_user_with_a_device_on_each_node_gets_every_push_on_both() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = two_nodes() else {
        return;
    };
    let (a, b) = (fleet.node(0), fleet.node(1));
    let (mut phone, _) = a.client("dave", "phone").unwrap();
    wait_local_first(&fleet, 0, "dave", &mut phone, 3);

    // A desktop logs in on b: b tells a before it writes itself into dave's entry.
    let (mut desktop, _) = b.client("dave", "desktop").unwrap();
    fleet.wait_seen(0, "dave", "b", 1);
    assert!(fleet.cluster_figure(0, "local_only_dropped") >= 1);
    for n in 0..5 {
        for (i, node) in [a, b].into_iter().enumerate() {
            let body = format!("both {n} via {i}");
            assert_eq!(
                api_push(node, "dave", &body),
                json!({"user": "dave", "outcome": "delivered", "devices": 2}),
                "{body}"
            );
            expect_push(&mut phone, body.as_bytes());
            expect_push(&mut desktop, body.as_bytes());
        }
    }

    // The desktop leaves: a finds itself alone again at its next write of dave's entry (a
    // refresh pass, every second here) and skips the directory once more.
    drop(desktop);
    poll(SETTLE, "b left dave's entry", || {
        fleet.devices_seen(0, "dave", "b").is_none()
    });
    wait_local_first(&fleet, 0, "dave", &mut phone, 3);
}

#[test]
fn a_device_that_moves_to_b_is_reached_through_a_during_and_right_after_the_move() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = two_nodes() else {
        return;
    };
    let (a, b) = (fleet.node(0), fleet.node(1));
    let (mut old, _) = a.client("erin", "phone").unwrap();
    wait_local_first(&fleet, 0, "erin", &mut old, 3);

    // Pushes into a, one after another, while the phone moves to b; each records whether the
    // move was in the directory (b's write seen) before it was sent.
    let moved = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (api, moved, stop) = (a.api, Arc::clone(&moved), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            let mut after = 0;
            for n in 0.. {
                let was_moved = moved.load(Ordering::SeqCst);
                if stop.load(Ordering::SeqCst) && after >= 20 {
                    break;
                }
                let body = format!("in flight {n}");
                let resp = tether_tests::http::post(
                    api,
                    "/api/push",
                    &[],
                    &json!({"user": "erin", "payload": body}),
                )
                .expect("push");
                let results = resp.json()["results"].clone();
                assert_eq!(results.as_array().map(Vec::len), Some(1), "{results}");
                after += u32::from(was_moved);
                sent.push((body, was_moved, results[0].clone()));
            }
            sent
        })
    };

    // The phone logs in on b while its old connection on a is still open (a phone that
    // changed networks): b replaces it, and a's note, before it writes the directory.
    let b_writes = fleet.cluster_figure(1, "directory_writes");
    let (mut new, _) = b.client("erin", "phone").unwrap();
    poll(SETTLE, "b wrote erin's entry", || {
        fleet.cluster_figure(1, "directory_writes") > b_writes
    });
    moved.store(true, Ordering::SeqCst);
    // Right after the move: one push into a, and it reaches the phone on b.
    assert_eq!(
        api_push(a, "erin", "right after"),
        json!({"user": "erin", "outcome": "delivered", "devices": 1})
    );
    stop.store(true, Ordering::SeqCst);
    let sent = pusher.join().unwrap();
    expect_kick(&mut old, CloseCode::Replaced);

    // Every push sent after the move was in the directory was delivered, to the phone on b;
    // the others each had one result too, delivered or offline (the old connection was going).
    let mut owed: Vec<String> = vec!["right after".to_string()];
    for (body, after, result) in &sent {
        let outcome = result["outcome"].as_str().unwrap_or_default();
        if *after {
            assert_eq!(
                result,
                &json!({"user": "erin", "outcome": "delivered", "devices": 1}),
                "{body}"
            );
            owed.push(body.clone());
        } else {
            assert!(
                matches!(outcome, "delivered" | "offline"),
                "{body}: {result}"
            );
        }
    }
    assert!(owed.len() > 20, "{} pushes after the move", owed.len());
    while !owed.is_empty() {
        match new.recv().expect("a push on b") {
            Frame::Push(p) => {
                let body = String::from_utf8_lossy(&p.payload).into_owned();
                owed.retain(|o| *o != body);
            }
            other => panic!("expected Push, got {other:?}"),
        }
    }

    // A clean move back to a (the phone on b closes first): reached through b at once after
    // a wrote the entry, and through a without the directory again once a is alone.
    let a_writes = fleet.cluster_figure(0, "directory_writes");
    drop(new);
    let (mut back, _) = a.client("erin", "phone").unwrap();
    poll(SETTLE, "a wrote erin's entry", || {
        fleet.cluster_figure(0, "directory_writes") > a_writes
    });
    assert_eq!(
        api_push(b, "erin", "back on a"),
        json!({"user": "erin", "outcome": "delivered", "devices": 1})
    );
    expect_push(&mut back, b"back on a");
    wait_local_first(&fleet, 0, "erin", &mut back, 3);
}
