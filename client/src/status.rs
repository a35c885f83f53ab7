//! What the driver has seen so far, for tests to assert on and for a person to read.

use std::fmt;

use tether_proto::heartbeat::ClientEvent;

use crate::tls::TlsFailure;

/// Something the driver reports to its observer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// An event of the heartbeat machine.
    Event(ClientEvent),
    /// The main connection answered a ping after `gap_ms` of silence.
    Pong {
        /// Idle time of the main connection before the ping that was answered.
        gap_ms: u32,
    },
    /// The server closed a login of version `from` with `UnsupportedVersion` (an older
    /// server): the driver logs in again with version `to` and keeps it. Frames of the newer
    /// version only (`Upstream`, `Message`...) are then unavailable.
    VersionFallback {
        /// The version refused.
        from: u8,
        /// The version asked for from now on.
        to: u8,
    },
    /// The moment the observer asked for with [`crate::Control::wake_at`] came, or a
    /// [`crate::Doorbell`] rang.
    Wake,
    /// The driver asked the token source ([`crate::Driver::set_token_source`]) for a new token:
    /// the server gave notice that the connection's token ends (`TokenNotice`), or closed a
    /// login with `TokenExpired`. `got` says whether the source gave one; if it did, it went
    /// to the server as a `Refresh` (or the next login).
    TokenWanted {
        /// Milliseconds the server said were left (0: the token had already expired).
        expires_in_ms: u32,
        /// Whether the source gave a token.
        got: bool,
    },
    /// A connection's TLS failed (the handshake, or a record later): the connection is closed
    /// and the machine connects again after its back-off, which helps only if the server's
    /// certificate or configuration changes meanwhile.
    TlsFailed(TlsFailure),
}

/// Counters and the learned state, updated before every [`Report`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Milliseconds since the driver started.
    pub elapsed_ms: u64,
    /// The protocol version logins ask for: 2, or 1 after a server refused 2
    /// ([`Report::VersionFallback`]).
    pub version: u8,
    /// Whether the main connection is logged in.
    pub online: bool,
    /// The server's largest frame body, as its last `LoginOk` said (0: not logged in yet).
    pub max_frame: u32,
    /// The main connection's heartbeat interval.
    pub interval_ms: u32,
    /// Largest idle gap verified to survive on this network (0: none).
    pub verified_ms: u32,
    /// Smallest idle gap seen to fail (0: none).
    pub failed_ms: u32,
    /// Learning converged and the bounds have not moved since.
    pub converged: bool,
    /// Probe connections opened.
    pub probes: u64,
    /// Main connections opened.
    pub main_connects: u64,
    /// Main connections lost after being online (`ClientEvent::Offline`).
    pub main_losses: u64,
    /// Main connections the machine declared dead after a missed pong and its retry.
    pub dead_links: u64,
    /// Pings sent on the main connection.
    pub pings: u64,
    /// Pongs received on the main connection.
    pub pongs: u64,
    /// Pongs received since learning last converged (0 while learning).
    pub pongs_converged: u64,
    /// Longest idle gap of the main connection (from its last byte either way to a ping)
    /// among those pongs: the learned interval was seen to survive this long.
    pub max_gap_converged_ms: u32,
    /// Connections that failed to connect or broke with an I/O error.
    pub io_errors: u64,
    /// Connections whose TLS failed ([`Report::TlsFailed`]; also counted in `io_errors`).
    pub tls_failures: u64,
    /// `TokenNotice`s received on the main connection.
    pub token_notices: u64,
    /// `Refreshed` answers: tokens the server took in place.
    pub token_refreshes: u64,
}

impl Status {
    /// The column header matching [`Status`]'s `Display`.
    pub const HEADER: &'static str =
        "    time  interval  verified    failed  probes  losses  pongs  state";

    /// Whether a person would want a new line after `shown`: the state, the bounds, the probe
    /// or loss counts changed, or the interval moved by 1 % or more (smaller moves are the
    /// timer-lateness allowance breathing, one millisecond at a time).
    pub fn differs_visibly(&self, shown: &Status) -> bool {
        let key = |s: &Status| {
            (
                s.online,
                s.converged,
                s.verified_ms,
                s.failed_ms,
                s.probes,
                s.main_losses,
            )
        };
        key(self) != key(shown)
            || u64::from(self.interval_ms.abs_diff(shown.interval_ms)) * 100
                >= u64::from(shown.interval_ms)
    }
}

/// Milliseconds as seconds with three decimals, or `-` for 0 ("none").
struct Secs(u64);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.pad("-");
        }
        f.pad(&format!("{}.{:03}s", self.0 / 1000, self.0 % 1000))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match (self.online, self.converged) {
            (false, _) => "offline",
            (true, false) => "learning",
            (true, true) => "converged",
        };
        write!(
            f,
            "{:>8}  {:>8}  {:>8}  {:>8}  {:>6}  {:>6}  {:>5}  {state}",
            Secs(self.elapsed_ms.max(1)),
            Secs(self.interval_ms.into()),
            Secs(self.verified_ms.into()),
            Secs(self.failed_ms.into()),
            self.probes,
            self.main_losses,
            self.pongs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_lines_up_with_the_header() {
        let s = Status {
            elapsed_ms: 12_345,
            online: true,
            interval_ms: 4_812,
            verified_ms: 4_927,
            failed_ms: 0,
            probes: 12,
            ..Status::default()
        };
        let line = s.to_string();
        assert_eq!(
            line,
            " 12.345s    4.812s    4.927s         -      12       0      0  learning"
        );
        let breathing = Status {
            interval_ms: 4_820,
            pongs: 3,
            ..s.clone()
        };
        assert!(!breathing.differs_visibly(&s));
        let moved = Status {
            interval_ms: 4_870,
            ..s.clone()
        };
        assert!(moved.differs_visibly(&s));
        let probed = Status {
            probes: 13,
            ..s.clone()
        };
        assert!(probed.differs_visibly(&s));
        assert_eq!(
            line.find("learning"),
            Status::HEADER.find("state"),
            "{line}\n{}",
            Status::HEADER
        );
    }
}
