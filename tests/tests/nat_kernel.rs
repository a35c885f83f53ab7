//! Proof on real sockets, part two: Linux's own NAT. The server runs in one network namespace,
//! the client in another, and a router namespace between them masquerades with a conntrack
//! timeout of T seconds for established TCP flows, silently dropping segments of forgotten
//! flows. The client must learn T without losing its main connection.
//!
//! Needs root, `ip` and `iptables` (or `nft`); without them it prints why and passes.

use std::time::Duration;

use tether_tests::nat_kernel::{self, KernelNat, NsServer, SERVER_IP};
use tether_tests::nat_learn::{check, learn};

/// The conntrack timeout for established flows (whole seconds, as the sysctl takes them).
const T_SECS: u32 = 5;

#[test]
fn the_client_learns_a_kernel_nat_timeout_without_losing_its_main_connection() {
    if let Some(reason) = nat_kernel::unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let nat = match KernelNat::create(T_SECS).expect("namespaces and rules are set up") {
        Ok(nat) => nat,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let server = NsServer::start(nat.server_ns(), SERVER_IP).expect("server starts");
    let client_ns = tether_client::netns::named(nat.client_ns());
    let addr = server.addr;
    // The client thread alone enters the client's namespace; its sockets are created there.
    // Its parameters are scaled for a 3 s NAT: a rough guess, below the real 5 s.
    let learning = std::thread::spawn(move || {
        tether_client::netns::enter(&client_ns).expect("entering the client namespace");
        learn(
            addr,
            "nat-kernel",
            3_000,
            T_SECS * 1000,
            Duration::from_secs(200),
        )
    })
    .join()
    .expect("the client thread does not panic")
    .expect("the client runs");
    check(&learning, T_SECS * 1000);
}
