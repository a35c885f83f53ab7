//! The tether gateway: shard-per-core executors holding long connections.

pub mod wheel;
