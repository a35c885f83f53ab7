//! The real client learning a real NAT's timeout against the real server, and what it must
//! end with: shared by the user-space relay test and the kernel NAT test.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tether_client::{preset, Driver, Options, Report, Status};
use tether_proto::heartbeat::{ClientEvent, Credentials};

use crate::{expiry, minter};

/// Pongs the main connection must get at the final interval before the run counts as done:
/// each one is a full idle gap of that length that the NAT let through.
pub const PONGS_AT_FINAL: u64 = 3;

/// Runs a client against `server` (through whatever NAT lies between) until learning converged
/// and [`PONGS_AT_FINAL`] pongs came back at the final interval, or until `budget` is spent.
/// The client's parameters are scaled for a NAT of about `hint_ms`, which need not be the
/// real timeout. Call it on the thread whose network namespace the client should use.
/// Prints one line per change, like `tether-client watch`.
pub fn learn(
    server: SocketAddr,
    user: &str,
    hint_ms: u32,
    budget: Duration,
) -> anyhow::Result<Status> {
    let device = "nat";
    let mut driver = Driver::new(Options {
        server,
        bind: None,
        credentials: Credentials {
            user: user.into(),
            device: device.into(),
            token: minter().client(user, device, expiry())?,
        },
        network_key: "nat-test".into(),
        heartbeat: preset::scaled(hint_ms),
        seed: 7,
        max_frame: 1 << 20,
    })?;
    eprintln!("{}", Status::HEADER);
    let mut shown: Option<Status> = None;
    let status = driver.run(Instant::now() + budget, |s, report| {
        if let Report::Event(ClientEvent::Offline) = report {
            eprintln!("main connection lost");
        }
        if shown.as_ref().map_or(true, |last| s.differs_visibly(last)) {
            eprintln!("{s}");
            shown = Some(s.clone());
        }
        if s.converged && s.pongs_at_interval >= PONGS_AT_FINAL {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    eprintln!("{status}\nfinal: {status:?}");
    Ok(status)
}

/// The targets for a NAT that forgets flows idle for more than `timeout_ms`: converged, final
/// interval within [0.85 T, T), that interval seen to survive, no main connection lost, and at
/// least one failed gap (the NAT really dropped something).
pub fn check(status: &Status, timeout_ms: u32) {
    let t = f64::from(timeout_ms);
    let ratio = f64::from(status.interval_ms) / t;
    eprintln!(
        "final interval {} ms = {ratio:.3} T (T = {timeout_ms} ms); verified {} ms, failed {} ms, \
         {} probes, {} main losses, {} s",
        status.interval_ms,
        status.verified_ms,
        status.failed_ms,
        status.probes,
        status.main_losses,
        status.elapsed_ms / 1000
    );
    assert!(status.converged, "learning did not converge: {status:?}");
    assert!(
        status.interval_ms < timeout_ms && ratio >= 0.85,
        "final interval {} ms is not within [0.85 T, T) for T = {timeout_ms} ms: {status:?}",
        status.interval_ms
    );
    assert_eq!(
        status.main_losses, 0,
        "the main connection was lost: {status:?}"
    );
    assert_eq!(
        status.dead_links, 0,
        "a main connection was declared dead: {status:?}"
    );
    assert_eq!(
        status.main_connects, 1,
        "the main connection was reopened: {status:?}"
    );
    assert!(
        status.pongs_at_interval >= PONGS_AT_FINAL
            && f64::from(status.max_gap_at_interval_ms) >= 0.85 * t,
        "the final interval was not seen to survive: {status:?}"
    );
    assert!(
        status.failed_ms > 0,
        "no probe ever failed, so nothing shows the NAT dropped a flow: {status:?}"
    );
}
