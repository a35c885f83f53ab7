//! `tether-client`: the heartbeat machine of `tether_proto::heartbeat` on real sockets.
//!
//! [`Driver`] owns a [`tether_proto::heartbeat::Client`] and runs it over TCP with a real
//! clock: it opens the main and probe connections the machine asks for, writes its frames,
//! and feeds back frames, closes and timeouts. It reports the machine's events and a
//! [`Status`] (interval, learned bounds, probes, losses) to an observer. The `tether-client
//! watch` command prints that status as it changes.
//!
//! # Architecture invariants
//!
//! - **All heartbeat decisions are the machine's.** The driver only performs I/O and keeps
//!   counters; it never chooses an interval or a probe delay.
//! - **One thread.** Every socket is created and used by the thread that calls
//!   [`Driver::run`], so a thread that entered a network namespace ([`netns::enter`]) keeps
//!   its client inside it.

mod conn;
mod driver;
pub mod netns;
pub mod preset;
mod status;

pub use driver::{Driver, DriverError, Options};
pub use status::{Report, Status};
