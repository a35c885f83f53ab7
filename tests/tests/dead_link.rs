//! A link that dies silently (a NAT forgetting the flow, a phone leaving the network): the
//! server's pushes are written into a socket nobody acknowledges. With
//! `server.tcp_user_timeout_ms` the kernel fails that socket, the server closes it as a dead
//! link, and later pushes see the user Offline instead of "delivered" for the 15 minutes
//! the kernel would otherwise retransmit.
//!
//! Needs root and `ip`; without them it prints why and passes.

use std::time::{Duration, Instant};

use tether_proto::{BackendPush, Frame, PushStatus};
use tether_tests::link_pair::{self, LinkPair, SERVER_IP};
use tether_tests::nat_kernel::NsServer;
use tether_tests::{payload, Client};

/// TCP_USER_TIMEOUT of the server's sockets in this test.
const USER_TIMEOUT_MS: u32 = 2_000;
/// How long the push may keep answering Delivered after the cut: the user timeout plus the
/// kernel's retransmission timer granularity (the check runs when a retransmission is due,
/// and the backoff doubles), with a generous margin for a loaded machine.
const BOUND: Duration = Duration::from_secs(40);

fn push(backend: &mut Client, id: u64, user: &str) -> PushStatus {
    backend
        .send(&Frame::BackendPush(BackendPush {
            id,
            flags: 0,
            user: user.into(),
            payload: payload(100),
        }))
        .unwrap();
    loop {
        match backend.recv().unwrap() {
            Frame::PushResult(r) if r.id == id => return r.status,
            _ => continue,
        }
    }
}

#[test]
fn a_push_into_a_dead_link_closes_it_and_the_user_goes_offline() {
    if let Some(reason) = link_pair::unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let pair = match LinkPair::create().expect("namespaces are set up") {
        Ok(p) => p,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let server = NsServer::start_with(
        pair.server_ns(),
        SERVER_IP,
        &format!("tcp_user_timeout_ms = {USER_TIMEOUT_MS}"),
    )
    .expect("server starts");
    let addr = server.addr;
    // Each thread enters its namespace; the sockets it makes stay there when they move.
    let client_ns = tether_client::netns::named(pair.client_ns());
    let (mut device, _) = std::thread::spawn(move || {
        tether_client::netns::enter(&client_ns).unwrap();
        Client::login(addr, "dead-link", "d", 0, 600_000)
    })
    .join()
    .unwrap()
    .expect("the device logs in");
    let server_ns = tether_client::netns::named(pair.server_ns());
    let mut backend = std::thread::spawn(move || {
        tether_client::netns::enter(&server_ns).unwrap();
        Client::backend(addr, "svc")
    })
    .join()
    .unwrap()
    .expect("the backend logs in");

    assert_eq!(push(&mut backend, 1, "dead-link"), PushStatus::Delivered(1));
    assert!(matches!(device.recv().unwrap(), Frame::Push(_)));

    pair.cut().unwrap();
    // The first push after the cut is written into the socket: the server cannot know yet.
    assert_eq!(push(&mut backend, 2, "dead-link"), PushStatus::Delivered(1));
    let cut = Instant::now();
    let mut id = 3;
    loop {
        let status = push(&mut backend, id, "dead-link");
        if status == PushStatus::Offline {
            break;
        }
        assert_eq!(status, PushStatus::Delivered(1));
        assert!(
            cut.elapsed() < BOUND,
            "still online {BOUND:?} after the link died; log:\n{}",
            server.log()
        );
        id += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("offline {:?} after the cut", cut.elapsed());
    let log = server.log();
    assert!(
        log.contains("timed out"),
        "the connection was closed by ETIMEDOUT; log:\n{log}"
    );
}
