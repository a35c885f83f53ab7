//! SIGTERM drains: every client gets a GoAway with a reconnect window, the server exits 0.

use std::time::Duration;

use tether_proto::{CloseCode, Frame};
use tether_tests::{user_on_shard, Server, Settings};

#[test]
fn sigterm_sends_goaway_and_exits_cleanly() {
    let settings = Settings {
        drain_ms: 3_000,
        ..Settings::default()
    };
    let mut server = Server::start(&settings).unwrap();
    let mut clients = Vec::new();
    for shard in 0..2 {
        for i in 0..3 {
            let user = user_on_shard(&format!("drain{i}"), shard, 2);
            clients.push(server.client(&user, "d").unwrap().0);
        }
    }
    let backend = server.backend("svc").unwrap();
    server.sigterm();
    for c in &mut clients {
        match c.recv().unwrap() {
            Frame::GoAway(g) => {
                assert_eq!(g.reason, CloseCode::ServerShutdown);
                assert!(g.may_reconnect);
                assert_eq!(g.window_ms, 3_000);
            }
            other => panic!("expected GoAway, got {other:?}"),
        }
    }
    // Clients leave as told; the backend stays until the drain period ends.
    drop(clients);
    let status = server
        .wait(Duration::from_secs(30))
        .expect("server exits after the drain");
    assert!(status.success(), "exit status {status:?}");
    drop(backend);
}

/// A client that is not reading when the drain starts still gets, once it reads, every push
/// that was answered `Delivered`, then its GoAway and Close; pushes arriving during the drain
/// are refused with `ShuttingDown`.
#[test]
fn drain_loses_no_delivered_push_and_refuses_new_ones() {
    let settings = Settings {
        drain_ms: 2_000,
        ..Settings::default()
    };
    let mut server = Server::start(&settings).unwrap();
    let user = user_on_shard("sleepy", 0, 2);
    let (mut client, _) = server.client(&user, "d").unwrap();
    let mut backend = server.backend("svc").unwrap();
    // The client does not read while 20 pushes of 4 KiB are sent (they fit in the sockets'
    // buffers, so each is handed to the socket and answered Delivered).
    for id in 0..20u64 {
        backend
            .send(&Frame::BackendPush(tether_proto::BackendPush {
                id,
                flags: 0,
                user: user.clone(),
                payload: tether_tests::payload(4096),
            }))
            .unwrap();
    }
    let mut delivered = 0;
    for _ in 0..20 {
        match backend.recv().unwrap() {
            Frame::PushResult(r) => match r.status {
                tether_proto::PushStatus::Delivered(1) => delivered += 1,
                other => panic!("push {} answered {other:?}", r.id),
            },
            other => panic!("{other:?}"),
        }
    }
    server.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    backend
        .send(&Frame::BackendPush(tether_proto::BackendPush {
            id: 1_000,
            flags: 0,
            user: user.clone(),
            payload: tether_tests::payload(16),
        }))
        .unwrap();
    match backend.recv().unwrap() {
        Frame::PushResult(r) => assert_eq!(
            r.status,
            tether_proto::PushStatus::Refused(tether_proto::RefuseReason::ShuttingDown)
        ),
        Frame::GoAway(_) => match backend.recv().unwrap() {
            Frame::PushResult(r) => assert_eq!(
                r.status,
                tether_proto::PushStatus::Refused(tether_proto::RefuseReason::ShuttingDown)
            ),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // Now the client reads: everything answered Delivered, then GoAway, then Close.
    let frames = client.until_closed().unwrap();
    let pushes = frames
        .iter()
        .filter(|f| matches!(f, Frame::Push(_)))
        .count();
    assert_eq!(
        pushes, delivered,
        "pushes answered Delivered but not received"
    );
    assert!(
        frames.iter().any(|f| matches!(f, Frame::GoAway(_))),
        "{frames:?}"
    );
    assert!(
        matches!(frames.last(), Some(Frame::Close(c)) if c.code == CloseCode::ServerShutdown),
        "last frames: {:?}",
        &frames[frames.len().saturating_sub(2)..]
    );
    drop(backend);
    let status = server
        .wait(Duration::from_secs(30))
        .expect("server exits after the drain");
    assert!(status.success(), "exit status {status:?}");
}
