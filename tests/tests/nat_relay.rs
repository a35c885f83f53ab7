//! Proof on real sockets, part one: the client learns the idle timeout of a user-space relay
//! that silently black-holes flows idle for more than T, against the real server, without
//! losing its main connection.

use std::time::Duration;

use tether_tests::nat_learn::{check, learn};
use tether_tests::nat_relay::NatRelay;
use tether_tests::{Server, Settings};

/// The relay's idle timeout. Seconds, so that ~100 ms of scheduler jitter on a loaded machine
/// stays well inside the [0.85 T, T) target.
const T: Duration = Duration::from_secs(5);

#[test]
fn the_client_learns_a_relay_nat_timeout_without_losing_its_main_connection() {
    let server = Server::start(&Settings::default()).expect("server starts");
    let relay = NatRelay::start(server.addr, T).expect("relay starts");
    // The parameters are scaled for a 3 s NAT: a rough guess, below the real 5 s.
    let learning = learn(
        relay.addr(),
        "nat-relay",
        3_000,
        T.as_millis() as u32,
        Duration::from_secs(200),
    )
    .expect("the client runs");
    let stats = relay.stats();
    eprintln!("relay: {stats:?}");
    check(&learning, T.as_millis() as u32);
    assert!(
        stats.blackholed > 0,
        "the relay never dropped a flow: {stats:?}"
    );
}
