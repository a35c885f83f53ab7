//! The tether gateway: shard-per-core executors holding long connections.
//!
//! Each shard is a pinned glommio executor with its own io_uring for connection I/O, a slab
//! of connections, a timing wheel and an index of its users; shards share nothing on the
//! connection path and talk through bounded channels (the mesh). See `ARCHITECTURE.md`.
//!
//! The socket-free core is [`core::Core`]: it is fed bytes and events and emits commands, so
//! benchmarks and tests drive exactly the server's path without sockets.

pub mod accept;
pub mod acks;
pub mod admission;
pub mod api;
pub mod bans;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod core;
pub mod counters;
pub mod figures;
pub mod histogram;
pub mod layered;
pub mod layers;
pub mod limits;
pub mod listener;
pub mod mesh;
pub mod overload;
pub mod prom;
pub mod proxy;
pub mod ratelog;
pub mod reload;
pub mod ring;
pub mod routing;
pub mod secrets;
pub mod server;
pub mod shard;
pub mod tls;
pub mod upstream;
pub mod users;
pub mod wheel;
pub mod ws;

pub use server::{run, run_with, ServerError, Shutdown};
