//! The real client learning a real NAT's timeout against the real server, and what it must
//! end with: shared by the user-space relay test and the kernel NAT test.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tether_client::{preset, Driver, Options, Report, Status};
use tether_proto::heartbeat::{ClientEvent, Credentials};

use crate::{expiry, minter};

/// Pongs the main connection must get after learning converged, each after an idle gap of at
/// least 0.85 T at the NAT, before the run counts as done.
pub const LONG_PONGS: u64 = 3;

/// What a run through a NAT ended with.
#[derive(Clone, Debug)]
pub struct Learning {
    /// The driver's final status.
    pub status: Status,
    /// Pongs since learning last converged that followed an idle gap (from the main
    /// connection's last byte either way) of at least 0.85 T: the learned interval survived
    /// the NAT that often.
    pub long_pongs: u64,
}

/// Runs a client against `server`, through a NAT that forgets flows idle for more than
/// `timeout_ms`, until learning converged and [`LONG_PONGS`] pongs came back after gaps of at
/// least 0.85 T, or until `budget` is spent. The client is not told the timeout: its
/// parameters are scaled for a NAT of about `hint_ms`, a rough guess. Call it on the thread
/// whose network namespace the client should use. Prints a line per change, like
/// `tether-client watch`.
pub fn learn(
    server: SocketAddr,
    user: &str,
    hint_ms: u32,
    timeout_ms: u32,
    budget: Duration,
) -> anyhow::Result<Learning> {
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
        tls: None,
    })?;
    eprintln!("{}", Status::HEADER);
    let mut shown: Option<Status> = None;
    let mut long_pongs = 0;
    let long = u64::from(timeout_ms) * 85 / 100;
    let status = driver.run(Instant::now() + budget, |s, report| {
        match report {
            Report::Event(ClientEvent::Offline) => eprintln!("main connection lost"),
            Report::Event(ClientEvent::Learned { .. }) => long_pongs = 0,
            Report::Pong { gap_ms } if s.converged && u64::from(*gap_ms) >= long => long_pongs += 1,
            _ => {}
        }
        if !s.converged {
            long_pongs = 0;
        }
        if shown.as_ref().map_or(true, |last| s.differs_visibly(last)) {
            eprintln!("{s}");
            shown = Some(s.clone());
        }
        if long_pongs >= LONG_PONGS {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    eprintln!("{status}\nfinal: {status:?}, {long_pongs} pongs after gaps >= 0.85 T");
    Ok(Learning { status, long_pongs })
}

/// The targets for a NAT that forgets flows idle for more than `timeout_ms`: converged, final
/// interval within [0.85 T, T), that interval seen to survive, no main connection lost, and at
/// least one failed gap (the NAT really dropped something).
pub fn check(learning: &Learning, timeout_ms: u32) {
    let status = &learning.status;
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
        learning.long_pongs >= LONG_PONGS,
        "only {} pongs after gaps of 0.85 T or more since convergence: {status:?}",
        learning.long_pongs
    );
    assert!(
        status.failed_ms > 0,
        "no probe ever failed, so nothing shows the NAT dropped a flow: {status:?}"
    );
}
