//! Pushes and sends reach every device of the target user, whichever shard holds it, and
//! every push gets exactly one result.

use std::collections::HashMap;

use tether_proto::{push_flags, BackendPush, Frame, PushAck, PushStatus, Send};
use tether_tests::{payload, user_on_shard, Server, Settings};

/// Reads frames until the PushResult for `id` arrives and returns its status. Results of one
/// backend connection may arrive in any order across users, so results for other ids are kept
/// in `seen` for later calls.
fn result_of(
    backend: &mut tether_tests::Client,
    seen: &mut HashMap<u64, Vec<PushStatus>>,
    id: u64,
) -> PushStatus {
    loop {
        if let Some(status) = seen
            .get_mut(&id)
            .and_then(|v| (!v.is_empty()).then(|| v.remove(0)))
        {
            return status;
        }
        match backend.recv().expect("push result") {
            Frame::PushResult(r) => seen.entry(r.id).or_default().push(r.status),
            other => panic!("backend got {other:?}"),
        }
    }
}

fn backend_push(backend: &mut tether_tests::Client, id: u64, user: &str, body: &[u8], flags: u8) {
    backend
        .send(&Frame::BackendPush(BackendPush {
            id,
            flags,
            user: user.into(),
            payload: bytes::Bytes::copy_from_slice(body),
        }))
        .expect("send push");
}

fn expect_push(client: &mut tether_tests::Client, body: &[u8]) -> u64 {
    match client.recv().expect("push") {
        Frame::Push(p) => {
            assert_eq!(&p.payload[..], body);
            p.id
        }
        other => panic!("expected Push, got {other:?}"),
    }
}

#[test]
fn push_reaches_users_on_both_shards() {
    let server = Server::start(&Settings::default()).unwrap();
    let a = user_on_shard("alice", 0, 2);
    let b = user_on_shard("bob", 1, 2);
    let (mut ca, _) = server.client(&a, "phone").unwrap();
    let (mut cb, _) = server.client(&b, "phone").unwrap();
    // The backend lands on either shard; one of the two pushes crosses the mesh.
    let mut backend = server.backend("chat").unwrap();
    let mut seen = HashMap::new();
    backend_push(&mut backend, 1, &a, b"to alice", 0);
    backend_push(&mut backend, 2, &b, b"to bob", 0);
    assert_eq!(
        result_of(&mut backend, &mut seen, 1),
        PushStatus::Delivered(1)
    );
    assert_eq!(
        result_of(&mut backend, &mut seen, 2),
        PushStatus::Delivered(1)
    );
    expect_push(&mut ca, b"to alice");
    expect_push(&mut cb, b"to bob");
    // Nobody home.
    backend_push(&mut backend, 3, "nobody-here", b"x", 0);
    assert_eq!(result_of(&mut backend, &mut seen, 3), PushStatus::Offline);
}

#[test]
fn send_crosses_shards_and_is_answered() {
    // Presence revealed: the sender learns how many devices got it.
    let server = Server::start(&Settings {
        extra: "[send]\nenabled = true\nreveal_presence = true\n".into(),
        ..Settings::default()
    })
    .unwrap();
    let a = user_on_shard("sender", 0, 2);
    let b = user_on_shard("receiver", 1, 2);
    let (mut ca, _) = server.client(&a, "d").unwrap();
    let (mut cb, _) = server.client(&b, "d").unwrap();
    ca.send(&Frame::Send(Send {
        to: b.clone(),
        client_id: 42,
        payload: payload(100),
    }))
    .unwrap();
    match cb.recv().unwrap() {
        Frame::Message(m) => {
            assert_eq!(
                (m.from_user.as_str(), m.from_device.as_str()),
                (a.as_str(), "d")
            );
            assert_eq!(m.payload, payload(100));
        }
        other => panic!("expected a Message naming its sender, got {other:?}"),
    }
    match ca.recv().unwrap() {
        Frame::SendResult(r) => {
            assert_eq!(r.client_id, 42);
            assert_eq!(r.status, PushStatus::Delivered(1));
        }
        other => panic!("expected SendResult, got {other:?}"),
    }
}

#[test]
fn push_reaches_every_device_and_ack_is_reported() {
    let server = Server::start(&Settings::default()).unwrap();
    let (mut phone, _) = server.client("carol", "phone").unwrap();
    let (mut laptop, _) = server.client("carol", "laptop").unwrap();
    let mut backend = server.backend("chat").unwrap();
    let mut seen = HashMap::new();
    backend_push(
        &mut backend,
        7,
        "carol",
        b"hello both",
        push_flags::WANT_ACK,
    );
    assert_eq!(
        result_of(&mut backend, &mut seen, 7),
        PushStatus::Delivered(2)
    );
    let id = expect_push(&mut phone, b"hello both");
    assert_eq!(
        expect_push(&mut laptop, b"hello both"),
        id,
        "one push, one id"
    );
    phone.send(&Frame::PushAck(PushAck { id })).unwrap();
    assert_eq!(result_of(&mut backend, &mut seen, 7), PushStatus::Acked);
    // Pipelined pushes: one result each, in order for one user.
    for i in 100..150 {
        backend_push(&mut backend, i, "carol", format!("m{i}").as_bytes(), 0);
    }
    for i in 100..150 {
        assert_eq!(
            result_of(&mut backend, &mut seen, i),
            PushStatus::Delivered(2)
        );
        expect_push(&mut phone, format!("m{i}").as_bytes());
        expect_push(&mut laptop, format!("m{i}").as_bytes());
    }
}

#[test]
fn clients_cannot_push_and_backends_cannot_send() {
    let server = Server::start(&Settings::default()).unwrap();
    let (mut c, _) = server.client("dave", "d").unwrap();
    backend_push(&mut c, 1, "dave", b"x", 0);
    let frames = c.until_closed().unwrap();
    assert!(
        frames.iter().any(
            |f| matches!(f, Frame::Close(cl) if cl.code == tether_proto::CloseCode::NotAllowed)
        ),
        "got {frames:?}"
    );
}

/// A backend that half-closes after pipelining pushes still gets every result, those decided
/// on the other shard included.
#[test]
fn a_backend_that_half_closes_gets_every_result() {
    let server = Server::start(&Settings::default()).unwrap();
    let users: Vec<String> = (0..2)
        .map(|shard| tether_tests::user_on_shard("half", shard, 2))
        .collect();
    let mut clients: Vec<_> = users
        .iter()
        .map(|u| server.client(u, "d").unwrap().0)
        .collect();
    let mut backend = server.backend("svc").unwrap();
    let mut bytes = bytes::BytesMut::new();
    for id in 0..50u64 {
        tether_proto::codec::encode(
            &Frame::BackendPush(BackendPush {
                id,
                flags: 0,
                user: users[id as usize % 2].clone(),
                payload: bytes::Bytes::from_static(b"x"),
            }),
            &mut bytes,
        )
        .unwrap();
    }
    backend.send_raw(&bytes).unwrap();
    backend.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let frames = backend.until_closed().unwrap();
    let mut ids: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::PushResult(r) => {
                assert_eq!(r.status, PushStatus::Delivered(1), "push {}", r.id);
                Some(r.id)
            }
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..50).collect::<Vec<_>>());
    for c in &mut clients {
        for _ in 0..25 {
            assert!(matches!(c.recv().unwrap(), Frame::Push(_)));
        }
    }
}

/// With `batch_wait_us` a shard without a backend gathers its clients' frames for up to the
/// window, but a push is never held back: the backend's own shard does not gather, and a
/// message that crosses the mesh to a gathering shard wakes it at once.
#[test]
fn gathering_shards_hold_client_frames_back_but_not_pushes() {
    let window = std::time::Duration::from_millis(100);
    let settings = Settings {
        shards: 2,
        server_extra: format!("batch_wait_us = {}\n", window.as_micros()),
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let users = [user_on_shard("g", 0, 2), user_on_shard("g", 1, 2)];
    let mut clients: Vec<_> = users
        .iter()
        .map(|u| server.client(u, "phone").unwrap().0)
        .collect();
    let mut backend = server.backend("chat").unwrap();
    let mut seen = HashMap::new();

    // Pushes to both shards, one at a time: each arrives long before a window would end.
    let mut slowest = std::time::Duration::ZERO;
    for round in 0..10u64 {
        for (i, (user, client)) in users.iter().zip(clients.iter_mut()).enumerate() {
            let id = round * 2 + i as u64 + 1;
            let start = std::time::Instant::now();
            backend_push(&mut backend, id, user, b"now", 0);
            expect_push(client, b"now");
            slowest = slowest.max(start.elapsed());
            assert_eq!(
                result_of(&mut backend, &mut seen, id),
                PushStatus::Delivered(1)
            );
        }
    }
    // Ten pushes per shard: a push held for a window would take ~100 ms, one woken ~0.1 ms.
    assert!(slowest < window / 2, "a push waited {slowest:?}");

    // Pings: on the shard without the backend they wait for the window (the shard gathers);
    // ten of them would all be fast only if it never did.
    let mut longest = std::time::Duration::ZERO;
    for client in clients.iter_mut() {
        for _ in 0..10 {
            let start = std::time::Instant::now();
            client
                .send(&Frame::Ping(tether_proto::Ping { lease_ms: 60_000 }))
                .unwrap();
            match client.recv().unwrap() {
                Frame::Pong(_) => {}
                other => panic!("expected Pong, got {other:?}"),
            }
            longest = longest.max(start.elapsed());
        }
    }
    assert!(
        longest >= window / 10,
        "no ping waited: the shard without a backend did not gather ({longest:?})"
    );
}
