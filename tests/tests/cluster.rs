//! Three tether nodes and a real nats-server with JetStream, on loopback: a push into one node
//! reaches a user on another, a re-login elsewhere replaces the old connection (and a forged,
//! unsigned or replayed request to a node's subject does nothing but get counted), a hung
//! node's pushes time out and say so (and a forged reply in its place is refused), a killed
//! node's users are found where they reconnect, and the cluster rides out a NATS restart with
//! clear results meanwhile.
//!
//! Skipped (with a message) when `nats-server` is not installed; `.ci/run` installs it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use tether_proto::{BackendPush, CloseCode, Frame, PushAck, PushStatus};
use tether_tests::fleet::{api_push, expect_kick, expect_push, poll, Fleet, SETTLE, TTL_MS};
use tether_tests::http::{get, post};
use tether_tests::nats::{self, Nats, RawNats, CLUSTER_SECRET};
use tether_tests::{Server, Settings, PATIENCE};

/// One fleet at a time: three nodes and a nats-server per test are enough for two cores.
static TURN: Mutex<()> = Mutex::new(());

#[test]
fn a_push_into_a_reaches_users_on_c_and_on_several_nodes() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = Fleet::start() else {
        return;
    };
    let (a, c) = (fleet.node(0), fleet.node(2));
    let (mut carol, _) = c.client("carol", "phone").unwrap();
    fleet.wait_seen(0, "carol", "c", 1);

    // HTTP push into a, user on c.
    assert_eq!(
        api_push(a, "carol", "over there"),
        json!({"user": "carol", "outcome": "delivered", "devices": 1})
    );
    expect_push(&mut carol, b"over there");

    // A backend's binary push into a, user on c: one PushResult, Delivered(1).
    let mut backend = a.backend("chat").unwrap();
    backend
        .send(&Frame::BackendPush(BackendPush {
            id: 41,
            flags: 0,
            user: "carol".into(),
            payload: bytes::Bytes::from_static(b"binary"),
        }))
        .unwrap();
    match backend.recv().unwrap() {
        Frame::PushResult(r) => {
            assert_eq!((r.id, r.status), (41, PushStatus::Delivered(1)));
        }
        other => panic!("expected PushResult, got {other:?}"),
    }
    expect_push(&mut carol, b"binary");

    // An acknowledgement on c reaches the HTTP caller on a.
    let api = a.api;
    let request = std::thread::spawn(move || {
        post(
            api,
            "/api/push",
            &[],
            &json!({"user": "carol", "payload": "ack me", "want_ack": true,
                    "ack_timeout_ms": 10000}),
        )
        .unwrap()
    });
    let id = match carol.recv().unwrap() {
        Frame::Push(p) => {
            assert_eq!(&p.payload[..], b"ack me");
            p.id
        }
        other => panic!("expected Push, got {other:?}"),
    };
    carol.send(&Frame::PushAck(PushAck { id })).unwrap();
    let resp = request.join().unwrap();
    assert_eq!(
        resp.json()["results"][0],
        json!({"user": "carol", "outcome": "acked", "devices": 1}),
        "{}",
        resp.text()
    );

    // A user with a phone on a and a desktop on c: a push into b reaches both.
    let (mut phone, _) = a.client("dave", "phone").unwrap();
    let (mut desktop, _) = c.client("dave", "desktop").unwrap();
    fleet.wait_seen(1, "dave", "a", 1);
    fleet.wait_seen(1, "dave", "c", 1);
    assert_eq!(
        api_push(fleet.node(1), "dave", "both"),
        json!({"user": "dave", "outcome": "delivered", "devices": 2})
    );
    expect_push(&mut phone, b"both");
    expect_push(&mut desktop, b"both");

    // A client's Send on a reaches dave's desktop on c naming its sender, never as a Push;
    // the sender hears Accepted and nothing about where dave is.
    let (mut erin, _) = a.client("erin", "laptop").unwrap();
    erin.send(&Frame::Send(tether_proto::Send {
        to: "dave".into(),
        client_id: 9,
        payload: bytes::Bytes::from_static(b"hi dave"),
    }))
    .unwrap();
    match erin.recv().unwrap() {
        Frame::SendResult(r) => assert_eq!((r.client_id, r.status), (9, PushStatus::Accepted)),
        other => panic!("expected SendResult, got {other:?}"),
    }
    for device in [&mut phone, &mut desktop] {
        match device.recv().unwrap() {
            Frame::Message(m) => {
                assert_eq!((&m.from_user[..], &m.from_device[..]), ("erin", "laptop"));
                assert_eq!(&m.payload[..], b"hi dave");
            }
            other => panic!("expected a Message from erin, got {other:?}"),
        }
    }

    // Nobody anywhere: offline, from every node.
    for i in 0..3 {
        assert_eq!(api_push(fleet.node(i), "nobody", "x")["outcome"], "offline");
    }

    // A kick through a reaches carol on c.
    let resp = post(
        a.api,
        "/api/kick",
        &[],
        &json!({"user": "carol", "code": 2009}),
    )
    .unwrap();
    assert_eq!(resp.json()["kicked"], 1, "{}", resp.text());
    expect_kick(&mut carol, CloseCode::Kicked);
    poll(SETTLE, "c left carol's directory entry", || {
        fleet.devices_seen(0, "carol", "c").is_none()
    });
    assert_eq!(api_push(a, "carol", "gone")["outcome"], "offline");
    let stats = fleet.cluster_stats(0);
    assert!(stats["forwards"].as_u64().unwrap() > 0, "{stats}");
}

#[test]
fn a_login_on_b_replaces_the_same_device_on_a() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = Fleet::start() else {
        return;
    };
    let (a, b) = (fleet.node(0), fleet.node(1));
    // Anyone who can reach NATS sees a's subject (unless NATS permissions say otherwise).
    let mut raw = RawNats::connect(fleet.nats.port).expect("raw NATS client");
    raw.subscribe("tether.node.a", 1).unwrap();
    let (mut old, _) = a.client("erin", "phone").unwrap();
    let (mut tablet, _) = a.client("erin", "tablet").unwrap();
    fleet.wait_seen(1, "erin", "a", 2);
    let (mut new, _) = b.client("erin", "phone").unwrap();
    expect_kick(&mut old, CloseCode::Replaced);
    // The signed replace b sent a, as NATS carried it.
    let captured = raw
        .next_containing("\"op\":\"replace\"", SETTLE)
        .expect("b's replace request seen on a's subject");
    assert!(!captured.headers.is_empty(), "a node's request is signed");
    // The tablet on a stays; the phone is on b now.
    fleet.wait_seen(2, "erin", "a", 1);
    fleet.wait_seen(2, "erin", "b", 1);
    assert_eq!(
        api_push(fleet.node(2), "erin", "after"),
        json!({"user": "erin", "outcome": "delivered", "devices": 2})
    );
    expect_push(&mut new, b"after");
    expect_push(&mut tablet, b"after");

    // The phone comes back to a (b's connection is replaced in turn).
    let (mut phone, _) = a.client("erin", "phone").unwrap();
    expect_kick(&mut new, CloseCode::Replaced);
    fleet.wait_seen(2, "erin", "a", 2);

    // Forged requests published straight to a's subject: an unsigned replace of the tablet,
    // an unsigned push, a replace with made-up signature headers, and b's captured replace of
    // the phone again. None is carried out; each is counted.
    let forged_replace = br#"{"op":"replace","user":"erin","device":"tablet"}"#;
    let forged_push =
        br#"{"op":"push","user":"erin","payload":"Zm9yZ2Vk","want_ack":false,"from":"b","job":1}"#;
    raw.publish("tether.node.a", b"", forged_replace).unwrap();
    raw.publish("tether.node.a", b"", forged_push).unwrap();
    let made_up = format!(
        "NATS/1.0\r\nTether-Node: b\r\nTether-Time: {}\r\nTether-Seq: 7\r\n\
         Tether-Mac: {}\r\n\r\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
        "A".repeat(43)
    );
    raw.publish("tether.node.a", made_up.as_bytes(), forged_replace)
        .unwrap();
    raw.publish("tether.node.a", &captured.headers, &captured.payload)
        .unwrap();
    poll(SETTLE, "a counted every forged request", || {
        let s = fleet.cluster_stats(0);
        s["refused_unsigned"] == json!(2)
            && s["refused_bad_mac"] == json!(1)
            && s["refused_replay"] == json!(1)
    });
    // Nobody was kicked and nothing forged was delivered: the next frame each device gets
    // is a real push.
    assert_eq!(
        api_push(fleet.node(2), "erin", "still here"),
        json!({"user": "erin", "outcome": "delivered", "devices": 2})
    );
    expect_push(&mut phone, b"still here");
    expect_push(&mut tablet, b"still here");
    let metrics = get(a.api, "/metrics", &[]).unwrap().text();
    assert!(
        metrics.contains("tether_cluster_refused_unsigned_total 2"),
        "{metrics}"
    );
}

#[test]
fn users_of_a_killed_node_are_found_where_they_reconnect() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // Node a runs at most four tasks of its own at once (pushes fanned out, ...).
    let Some(mut fleet) = Fleet::start_with("max_in_flight = 4\n") else {
        return;
    };
    let (mut frank, _) = fleet.node(2).client("frank", "phone").unwrap();
    fleet.wait_seen(0, "frank", "c", 1);
    assert_eq!(
        api_push(fleet.node(0), "frank", "one")["outcome"],
        "delivered"
    );
    expect_push(&mut frank, b"one");

    // A node that hangs (stopped, but its subscription still there): the push times out
    // after cluster.forward_timeout_ms and says so.
    let pid = fleet.node(2).pid() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };

    // Whoever can reach NATS answers in the stopped node's place: its forged count is
    // refused (not signed for the request it answers), never reported.
    let mut raw = RawNats::connect(fleet.nats.port).expect("raw NATS client");
    raw.subscribe("tether.node.c", 1).unwrap();
    let api = fleet.node(0).api;
    let asking = std::thread::spawn(move || {
        get(api, "/api/presence?user=frank", &[])
            .expect("presence")
            .json()
    });
    let question = raw
        .next_containing("\"op\":\"presence\"", Duration::from_secs(10))
        .expect("a's presence question on c's subject");
    let inbox = question.reply.expect("a request asks for a reply");
    raw.publish(&inbox, b"", br#"{"r":"count","n":99}"#)
        .unwrap();
    let presence = asking.join().unwrap();
    let c_part = presence["cluster"]["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == "c").cloned())
        .unwrap_or_default();
    assert_ne!(c_part["count"], json!(99), "{presence}");
    assert_eq!(fleet.cluster_stats(0)["replies_refused"], json!(1));
    drop(raw);

    // Bounded work: four pushes waiting for the stopped node hold a's four permits; a fifth
    // is refused Overloaded at once instead of piling up behind them.
    let forwards = || fleet.cluster_stats(0)["forwards"].as_u64().unwrap_or(0);
    let before = forwards();
    let held: Vec<_> = (0..4)
        .map(|i| {
            let api = fleet.node(0).api;
            std::thread::spawn(move || {
                let body = json!({"user": "frank", "payload": format!("held {i}")});
                post(api, "/api/push", &[], &body).expect("push").json()["results"][0].clone()
            })
        })
        .collect();
    poll(SETTLE, "four pushes wait for c", || {
        forwards() >= before + 4
    });
    let started = Instant::now();
    assert_eq!(
        api_push(fleet.node(0), "frank", "over"),
        json!({"user": "frank", "outcome": "refused", "reason": "overloaded"})
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fleet.cluster_stats(0)["overloaded"], json!(1));
    for h in held {
        assert_eq!(h.join().unwrap()["outcome"], "timed_out");
    }

    let started = Instant::now();
    let r = api_push(fleet.node(0), "frank", "hung");
    let waited = started.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(r, json!({"user": "frank", "outcome": "timed_out"}));
    assert!(waited >= Duration::from_millis(2_900), "{waited:?}");
    // The stopped node delivers the pushes once it runs again (their results were already
    // given as timed out: they may or may not have been delivered); the refused one never.
    let mut got: Vec<String> = (0..5)
        .map(|_| match frank.recv().expect("a push") {
            Frame::Push(p) => String::from_utf8_lossy(&p.payload).into_owned(),
            other => panic!("expected Push, got {other:?}"),
        })
        .collect();
    got.sort();
    assert_eq!(got, ["held 0", "held 1", "held 2", "held 3", "hung"]);

    fleet.nodes[2].kill();
    // Its entry still names c, but nobody listens there: offline at once, not a timeout.
    let started = Instant::now();
    assert_eq!(
        api_push(fleet.node(0), "frank", "lost")["outcome"],
        "offline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a dead node must not cost the forward timeout ({:?})",
        started.elapsed()
    );

    // frank reconnects to b; pushes into a follow him well within the directory TTL.
    let reconnected = Instant::now();
    let (mut frank, _) = fleet.node(1).client("frank", "phone").unwrap();
    poll(
        Duration::from_millis(TTL_MS),
        "a push into a reaches frank on b",
        || api_push(fleet.node(0), "frank", "found")["outcome"] == "delivered",
    );
    eprintln!(
        "pushes followed frank to b {:?} after he reconnected",
        reconnected.elapsed()
    );
    let mut got = 0;
    while got == 0 {
        if let Frame::Push(p) = frank.recv().unwrap() {
            assert_eq!(&p.payload[..], b"found");
            got += 1;
        }
    }
    // c's entry for frank expires by itself: after the TTL only b is named.
    poll(
        Duration::from_millis(TTL_MS) + SETTLE,
        "c's stale entry expired",
        || {
            let resp = get(fleet.node(0).api, "/api/presence?user=frank", &[]).unwrap();
            let nodes = resp.json()["cluster"]["nodes"].clone();
            let named: Vec<&str> = nodes
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|n| n["node"].as_str())
                .collect();
            named == ["a", "b"]
        },
    );
}

#[test]
fn the_cluster_rides_out_a_nats_restart() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut fleet) = Fleet::start() else {
        return;
    };
    let (mut gina, _) = fleet.node(2).client("gina", "phone").unwrap();
    fleet.wait_seen(0, "gina", "c", 1);

    fleet.nats.kill();
    poll(SETTLE, "a notices the outage", || {
        fleet.cluster_stats(0)["connected"] == json!(0)
    });
    // A push for a user on another node gets a clear answer, quickly.
    let started = Instant::now();
    let r = api_push(fleet.node(0), "gina", "during");
    assert_eq!(
        r,
        json!({"user": "gina", "outcome": "refused", "reason": "cluster_unavailable"})
    );
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    // Local delivery goes on.
    poll(SETTLE, "c notices the outage", || {
        fleet.cluster_stats(2)["connected"] == json!(0)
    });
    assert_eq!(
        api_push(fleet.node(2), "gina", "local")["outcome"],
        "delivered"
    );
    expect_push(&mut gina, b"local");
    let metrics = get(fleet.node(0).api, "/metrics", &[]).unwrap().text();
    assert!(
        metrics.contains("tether_cluster_push_unavailable_total 1"),
        "{metrics}"
    );

    fleet.nats.restart().expect("nats-server again");
    for i in 0..3 {
        fleet.wait_connected(i);
    }
    poll(SETTLE, "a push into a reaches gina on c again", || {
        api_push(fleet.node(0), "gina", "after")["outcome"] == "delivered"
    });
    expect_push(&mut gina, b"after");
}

#[test]
fn nats_credentials_reach_nats_and_no_secret_shows_in_a_log_line() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    if !nats::installed() {
        eprintln!("SKIPPED: nats-server is not installed");
        return;
    }
    const PASSWORD: &str = "nats-pw-never-logged-0123456789";
    const WRONG: &str = "wrong-pw-never-logged-0123456789";
    let nats = Nats::start_with(&["--user", "tether", "--pass", PASSWORD]).expect("nats-server");
    let dir = tempfile::tempdir().unwrap();
    let node = |id: &str, password: &str| {
        let file = dir.path().join(format!("{id}.password"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        Settings {
            log: "debug",
            extra: format!(
                "[cluster]\nnats_urls = [\"{}\"]\nnode_id = \"{id}\"\nsecrets = [\"{CLUSTER_SECRET}\"]\n\
                 nats_user = \"tether\"\nnats_password_file = \"{}\"\n",
                nats.url(),
                file.display()
            ),
            ..Settings::default()
        }
    };
    let stats =
        |s: &Server| get(s.api, "/api/stats", &[]).expect("stats").json()["cluster"].clone();
    // The password from its file reaches NATS: the node connects and serves.
    let good = Server::start(&node("good", PASSWORD)).expect("node");
    poll(SETTLE, "the node connected with its password", || {
        stats(&good)["connected"] == json!(1)
    });
    let (mut user, _) = good.client("hana", "phone").unwrap();
    assert_eq!(api_push(&good, "hana", "hi")["outcome"], "delivered");
    expect_push(&mut user, b"hi");
    // A wrong one is refused by NATS: the node runs alone and says why, not what.
    let bad = Server::start(&node("bad", WRONG)).expect("node");
    poll(SETTLE, "the refused node logged it", || {
        bad.log().to_lowercase().contains("authorization")
    });
    assert_eq!(stats(&bad)["connected"], json!(0));
    // Credentials in a URL: refused at start, pointing to the keys, without showing them.
    let in_url = Settings {
        extra: format!(
            "[cluster]\nnats_urls = [\"nats://tether:{PASSWORD}@127.0.0.1:{}\"]\nnode_id = \"u\"\n\
             secrets = [\"{CLUSTER_SECRET}\"]\n",
            nats.port
        ),
        ..Settings::default()
    };
    let (status, refused) = Server::start_refused(&in_url).expect("refused at start");
    assert!(!status.success());
    assert!(refused.contains("nats_password_file"), "{refused}");
    for (name, log) in [
        ("good", good.log()),
        ("bad", bad.log()),
        ("refused", refused),
    ] {
        for secret in [PASSWORD, WRONG, CLUSTER_SECRET] {
            assert!(!log.contains(secret), "{name}'s log shows a secret:\n{log}");
        }
    }
}
