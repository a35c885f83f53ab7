//! Heartbeats: keeping a long connection alive with as few pings as the network allows.

mod network_id;

pub use network_id::NetworkId;
