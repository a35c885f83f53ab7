//! `tether-client`: the heartbeat machine of `tether_proto::heartbeat` on real sockets.
//!
//! [`Driver`] owns a [`tether_proto::heartbeat::Client`] and runs it over TCP with a real
//! clock: it opens the main and probe connections the machine asks for, writes its frames,
//! and feeds back frames, closes and timeouts. It reports the machine's events, the frames
//! meant for the application and a [`Status`] (interval, learned bounds, probes, losses) to an
//! observer, which may answer with frames of its own, timers, and what the operating system
//! told the app: network changes, foreground or background, a new token ([`Control`],
//! [`Input`]). A [`Role`] says
//! what logs in: a client that learns its network, a foreground client, or a backend that
//! receives upstream messages. [`Options::tls`] makes every connection speak TLS 1.3 ([`Tls`]:
//! the CA to trust, the server name to check; ALPN `tether`). The `tether-client` binary's commands (`watch`, `upstream`,
//! `backend`) are such observers, and so is the C ABI's `TetherConnection` (`sdk/`).
//!
//! # Architecture invariants
//!
//! - **All heartbeat decisions are the machine's.** The driver only performs I/O and keeps
//!   counters; it never chooses an interval or a probe delay.
//! - **All application decisions are the observer's.** The driver sends what the observer
//!   asks, when the main connection is logged in, and never answers a frame on its own.
//! - **One thread.** Every socket is created and used by the thread that calls
//!   [`Driver::run`], so a thread that entered a network namespace ([`netns::enter`]) keeps
//!   its client inside it. Other threads reach the driver only through a [`Doorbell`].

mod conn;
mod control;
mod driver;
pub mod netns;
pub mod preset;
mod role;
mod status;
mod tls;

pub use control::{Control, Doorbell, Input};
pub use driver::{Driver, DriverError, Observer, Options, TokenSource};
pub use role::Role;
/// The rustls types [`Tls`] is built from, at the version the client uses.
pub use rustls;
pub use status::{Report, Status};
pub use tls::{Tls, TlsError, TlsFailure, ALPN};
