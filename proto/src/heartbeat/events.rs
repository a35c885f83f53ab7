//! The client machine's interface to the app: what it asks the app to do ([`Action`]), what it
//! tells the app ([`ClientEvent`]), and who the client is ([`Credentials`]).

use crate::message::{CloseCode, Frame};

/// Identifies one transport connection the app opened for the machine. Never reused, so late
/// reports about an old connection are recognised and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u32);

/// What the machine asks the app to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a transport to the server; report with [`super::Client::connected`] or
    /// [`super::Client::disconnected`].
    Connect {
        /// The id to report it under.
        conn: ConnId,
        /// A probe connection (short-lived) rather than the main one.
        probe: bool,
    },
    /// Write `frame` on `conn`.
    Send {
        /// Where.
        conn: ConnId,
        /// What.
        frame: Frame,
    },
    /// Close `conn`; the machine has forgotten it.
    Close {
        /// Which.
        conn: ConnId,
    },
}

/// What the machine tells the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The main connection is logged in.
    Online {
        /// The server's id of the connection.
        session_id: u64,
        /// The server's epoch; a change means the server restarted.
        server_epoch: u64,
    },
    /// The main connection is gone; a reconnect is scheduled unless [`ClientEvent::Stopped`]
    /// follows.
    Offline,
    /// An application frame from the main connection: `Push`, `SendResult`, and in version 2
    /// `Message`, `UpstreamResult`, (on a backend's connection) `UpstreamDeliver`, and the
    /// token's `TokenNotice` and `Refreshed`.
    Received(Frame),
    /// The main connection's heartbeat interval changed.
    IntervalChanged {
        /// The new interval.
        interval_ms: u32,
    },
    /// Learning converged for the current network.
    Learned {
        /// Largest verified idle gap.
        verified_ms: u32,
        /// Smallest failed idle gap (0: none below the maximum).
        failed_ms: u32,
    },
    /// The server said not to reconnect (bad token, kicked for good...): the machine stops
    /// until [`super::Client::restart`].
    Stopped {
        /// The server's reason.
        code: CloseCode,
    },
}

/// Who the client is, for `Login`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub user: String,
    /// Device id.
    pub device: String,
    /// Auth token (text form).
    pub token: String,
}
