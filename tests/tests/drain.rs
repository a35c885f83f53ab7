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
