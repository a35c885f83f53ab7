//! Bad input and slow readers cost only the offending connection.

use std::time::Duration;

use tether_proto::{BackendPush, CloseCode, Frame, PushStatus};
use tether_tests::{payload, Client, Server, Settings};

fn close_code(frames: &[Frame]) -> Option<CloseCode> {
    frames.iter().find_map(|f| match f {
        Frame::Close(c) => Some(c.code),
        _ => None,
    })
}

#[test]
fn oversized_frame_closes_only_the_offender() {
    let settings = Settings {
        max_frame: 1_024,
        max_queue_bytes: 65_536,
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let (mut bystander, _) = server.client("ivy", "d").unwrap();
    let (mut offender, _) = server.client("jack", "d").unwrap();
    // A Send header announcing a 1 MiB body: refused on the length prefix alone.
    offender.send_raw(&[0x07, 0x80, 0x80, 0x40]).unwrap();
    let frames = offender.until_closed().unwrap();
    assert_eq!(
        close_code(&frames),
        Some(CloseCode::FrameTooLarge),
        "{frames:?}"
    );
    bystander.ping(60_000).expect("others are unaffected");
}

#[test]
fn malformed_and_unknown_frames_close_only_the_offender() {
    let server = Server::start(&Settings::default()).unwrap();
    let (mut bystander, _) = server.client("kate", "d").unwrap();
    // Version 1: a Ping with a trailing byte after its lease.
    let v1 = tether_proto::PROTOCOL_V1;
    let (mut bad, _) = Client::login_version(server.addr, "leo", "d", v1).unwrap();
    bad.send_raw(&[0x03, 0x02, 0x01, 0x00]).unwrap();
    let frames = bad.until_closed().unwrap();
    assert_eq!(
        close_code(&frames),
        Some(CloseCode::ProtocolError),
        "{frames:?}"
    );
    // Version 2 reads the trailing byte as a later field and skips an extension frame
    // (0x40-0x7f); the connection goes on.
    let (mut grown, _) = server.client("lou", "d").unwrap();
    grown.send_raw(&[0x03, 0x02, 0x01, 0x00]).unwrap();
    assert!(matches!(grown.recv().unwrap(), Frame::Pong(_)));
    grown.send_raw(&[0x7f, 0x01, 0x00]).unwrap();
    grown.ping(60_000).expect("an extension frame is skipped");
    // An unknown frame type: in version 1 anything unassigned, in version 2 outside the
    // extension range.
    let (mut unknown, _) = Client::login_version(server.addr, "mia", "d", v1).unwrap();
    unknown.send_raw(&[0x7f, 0x00]).unwrap();
    let frames = unknown.until_closed().unwrap();
    assert_eq!(
        close_code(&frames),
        Some(CloseCode::UnknownFrame),
        "{frames:?}"
    );
    let (mut unknown, _) = server.client("max", "d").unwrap();
    unknown.send_raw(&[0x80, 0x00]).unwrap();
    let frames = unknown.until_closed().unwrap();
    assert_eq!(
        close_code(&frames),
        Some(CloseCode::UnknownFrame),
        "{frames:?}"
    );
    // Garbage before login.
    let mut pre = Client::connect(server.addr).unwrap();
    pre.send_raw(&[0x01, 0x03, 0xff, 0xff, 0xff]).unwrap();
    let frames = pre.until_closed().unwrap();
    assert!(close_code(&frames).is_some(), "{frames:?}");
    bystander.ping(60_000).expect("others are unaffected");
}

#[test]
fn slow_consumer_is_cut_off_while_others_get_everything() {
    let settings = Settings {
        max_frame: 65_536,
        max_queue_bytes: 131_072,
        write_timeout_ms: 3_000,
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    // The slow reader asks for a tiny receive buffer and never reads.
    let (slow, _) = server.client("slowpoke", "d").unwrap();
    let (mut fast, _) = server.client("speedy", "d").unwrap();
    let mut backend = server.backend("firehose").unwrap();
    let chunk = payload(32 * 1024);
    let pushes = 400u64; // 12.5 MiB: more than any socket buffers plus the queue bound.
                         // The fast reader reports each push it got; the backend sends the next pair only then,
                         // so the fast reader is never more than one push behind while the slow one falls behind
                         // by everything.
    let (progress, got_one) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut got = 0u64;
        while got < pushes {
            match fast.recv().expect("fast consumer keeps receiving") {
                Frame::Push(p) => {
                    assert_eq!(p.payload.len(), 32 * 1024);
                    got += 1;
                    let _ = progress.send(got);
                }
                other => panic!("fast got {other:?}"),
            }
        }
        got
    });
    let results = std::thread::spawn({
        let mut rx = backend.try_clone().unwrap();
        move || {
            let mut slow = Vec::new();
            let mut fast = 0u64;
            for _ in 0..2 * pushes {
                match rx.recv().expect("result") {
                    Frame::PushResult(r) if r.id % 2 == 0 => slow.push(r.status),
                    Frame::PushResult(r) => {
                        assert_eq!(r.status, PushStatus::Delivered(1), "push {}", r.id);
                        fast += 1;
                    }
                    other => panic!("backend got {other:?}"),
                }
            }
            (slow, fast)
        }
    });
    for i in 0..pushes {
        for (id, user) in [(2 * i, "slowpoke"), (2 * i + 1, "speedy")] {
            backend
                .send(&Frame::BackendPush(BackendPush {
                    id,
                    flags: 0,
                    user: user.into(),
                    payload: chunk.clone(),
                }))
                .unwrap();
        }
        got_one
            .recv_timeout(tether_tests::PATIENCE)
            .expect("fast consumer got its push");
    }
    let (slow_results, fast_delivered) = results.join().unwrap();
    assert_eq!(fast_delivered, pushes);
    assert_eq!(reader.join().unwrap(), pushes);
    // The slow one: some delivered (buffers), then one refusal when it was cut off, then
    // offline. Every push got exactly one result.
    assert_eq!(slow_results.len() as u64, pushes);
    assert!(
        slow_results.contains(&PushStatus::Refused(
            tether_proto::RefuseReason::SlowConsumer
        )) || slow_results.contains(&PushStatus::Offline),
        "slow consumer never cut off: {slow_results:?}"
    );
    // Its socket was closed by the server.
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    drop(slow);
}
