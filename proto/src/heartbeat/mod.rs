//! Heartbeats: keeping a long connection alive with as few pings as the network allows.
//!
//! The client side is [`Client`], a sans-IO state machine built from small parts:
//! [`Learner`] (bounds on the network's NAT idle timeout, from probes and pings),
//! [`Prober`] (probe connections that each measure one idle gap), [`Backoff`] (reconnect
//! delays with decorrelated jitter), [`NetMemory`] (what was learned per network),
//! [`RttEstimator`] and [`Lateness`] (the dead-link timeout and the timer margin), and [`Rng`]
//! (seeded, so every run can be replayed). The server side's part is [`PriorTable`]: learned
//! intervals reported by clients, aggregated per network so new clients start from a prior.
//! [`sim`] runs all of it against a simulated NAT; `docs/heartbeat.md` has the algorithm and the
//! simulator's results.

mod adaptive;
mod backoff;
mod client;
mod config;
mod events;
mod lateness;
mod memory;
mod network_id;
mod priors;
mod prober;
mod rng;
mod rtt;
pub mod sim;

pub use adaptive::Learner;
pub use backoff::Backoff;
pub use client::Client;
pub use config::{HeartbeatConfig, HeartbeatConfigError};
pub use events::{Action, ClientEvent, ConnId, Credentials};
pub use lateness::{Grid, Lateness};
pub use memory::{Learned, NetMemory, DEFAULT_MEMORY_CAPACITY};
pub use network_id::NetworkId;
pub use priors::{reporter_id, PriorConfig, PriorTable};
pub use prober::{ProbeOutcome, Prober};
pub use rng::Rng;
pub use rtt::RttEstimator;
