//! Upstream messages through the real server: clients on both shards to backend connections
//! on either, in order, each with one result; a version-1 client beside them; a backend that
//! is absent, silent, or dies mid-stream.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tether_proto::{Frame, RefuseReason, Upstream, UpstreamAnswer, UpstreamResult, UpstreamStatus};
use tether_tests::{user_on_shard, Client, Server, Settings};

fn upstream(client_id: u64, payload: &[u8]) -> Frame {
    Frame::Upstream(Upstream {
        client_id,
        flags: 0,
        payload: Bytes::copy_from_slice(payload),
    })
}

fn next_result(c: &mut Client) -> UpstreamResult {
    loop {
        match c.recv().unwrap() {
            Frame::UpstreamResult(r) => return r,
            Frame::Pong(_) => {}
            other => panic!("expected an UpstreamResult, got {other:?}"),
        }
    }
}

/// Answers every delivery it reads, accepted with reply "seq=<n>"; returns (user, client_id)
/// in the order they arrived once `n` deliveries were answered.
fn serve(backend: &mut Client, n: usize) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        match backend.recv().unwrap() {
            Frame::UpstreamDeliver(d) => {
                seen.push((d.user.clone(), d.client_id));
                let reply = format!("seq={}", seen.len());
                backend
                    .send(&Frame::UpstreamAnswer(UpstreamAnswer {
                        id: d.id,
                        accepted: true,
                        reply: Bytes::from(reply.into_bytes()),
                    }))
                    .unwrap();
            }
            other => panic!("expected an UpstreamDeliver, got {other:?}"),
        }
    }
    seen
}

#[test]
fn messages_from_both_shards_reach_the_backend_in_order_and_each_gets_one_result() {
    const PER_CLIENT: u64 = 300;
    // Every message is pipelined before any is answered: room for all of them in flight.
    let server = Server::start(&Settings {
        extra: "[upstream]\nmax_in_flight_per_connection = 1000\n".into(),
        ..Settings::default()
    })
    .unwrap();
    let mut backend = server.upstream_backend("chat").unwrap();
    // The other shard hears about the backend at its next tick.
    std::thread::sleep(Duration::from_millis(200));
    let users: Vec<String> = (0..4)
        .map(|i| user_on_shard(&format!("u{i}"), i % 2, 2))
        .collect();
    let mut clients: Vec<Client> = users
        .iter()
        .map(|u| server.client(u, "phone").unwrap().0)
        .collect();
    // Everyone pipelines all of its messages before anything is answered.
    for c in clients.iter_mut() {
        for id in 1..=PER_CLIENT {
            c.send(&upstream(id, &id.to_be_bytes())).unwrap();
        }
    }
    let seen = serve(&mut backend, users.len() * PER_CLIENT as usize);
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (user, id) in &seen {
        let prev = last.insert(user.as_str(), *id).unwrap_or(0);
        assert_eq!(*id, prev + 1, "{user}'s messages out of order");
    }
    for c in clients.iter_mut() {
        let mut ids: Vec<u64> = (0..PER_CLIENT)
            .map(|_| {
                let r = next_result(c);
                assert_eq!(r.status, UpstreamStatus::Accepted);
                assert!(r.reply.starts_with(b"seq="));
                r.client_id
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=PER_CLIENT).collect::<Vec<_>>(), "one result each");
    }
}

#[test]
fn a_version_1_client_keeps_working_beside_version_2() {
    let server = Server::start(&Settings::default()).unwrap();
    let user = user_on_shard("old", 1, 2);
    let (mut old, ok) =
        Client::login_version(server.addr, &user, "phone", tether_proto::PROTOCOL_V1).unwrap();
    assert!(ok.max_frame > 0);
    assert!(old.ping(60_000).unwrap() > 0);
    let mut backend = server.backend("billing").unwrap();
    backend
        .send(&Frame::BackendPush(tether_proto::BackendPush {
            id: 1,
            flags: 0,
            user: user.clone(),
            payload: Bytes::from_static(b"hi"),
        }))
        .unwrap();
    assert!(matches!(old.recv().unwrap(), Frame::Push(p) if &p.payload[..] == b"hi"));
    // A version-2 frame is an unknown type to a version-1 connection.
    old.send(&upstream(1, b"x")).unwrap();
    let frames = old.until_closed().unwrap();
    assert!(matches!(
        frames.last(),
        Some(Frame::Close(c)) if c.code == tether_proto::CloseCode::UnknownFrame
    ));
}

#[test]
fn an_absent_silent_or_dying_backend_still_gives_one_result() {
    let server = Server::start(&Settings {
        extra: "[upstream]\ntimeout_ms = 400\n".into(),
        ..Settings::default()
    })
    .unwrap();
    let user = user_on_shard("alice", 0, 2);
    let (mut c, _) = server.client(&user, "phone").unwrap();
    c.send(&upstream(1, b"nobody home")).unwrap();
    let r = next_result(&mut c);
    assert_eq!(
        (r.client_id, r.status),
        (1, UpstreamStatus::Refused(RefuseReason::NoBackend))
    );

    // Silent: the message times out.
    let mut silent = server.upstream_backend("chat").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.send(&upstream(2, b"anyone?")).unwrap();
    assert!(matches!(silent.recv().unwrap(), Frame::UpstreamDeliver(d) if d.client_id == 2));
    let r = next_result(&mut c);
    assert_eq!(
        (r.client_id, r.status),
        (2, UpstreamStatus::Refused(RefuseReason::TimedOut))
    );

    // Dies holding two messages: both time out at once, later ones find no backend.
    c.send(&upstream(3, b"a")).unwrap();
    c.send(&upstream(4, b"b")).unwrap();
    for id in [3, 4] {
        assert!(matches!(silent.recv().unwrap(), Frame::UpstreamDeliver(d) if d.client_id == id));
    }
    drop(silent);
    let mut got: Vec<(u64, UpstreamStatus)> = (0..2)
        .map(|_| next_result(&mut c))
        .map(|r| (r.client_id, r.status))
        .collect();
    got.sort_by_key(|(id, _)| *id);
    let timed_out = UpstreamStatus::Refused(RefuseReason::TimedOut);
    assert_eq!(got, [(3, timed_out), (4, timed_out)]);
    std::thread::sleep(Duration::from_millis(200));
    c.send(&upstream(5, b"c")).unwrap();
    let r = next_result(&mut c);
    assert_eq!(
        (r.client_id, r.status),
        (5, UpstreamStatus::Refused(RefuseReason::NoBackend))
    );
}
