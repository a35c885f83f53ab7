//! The tether gateway: shard-per-core executors holding long connections.
//!
//! Each shard is a pinned glommio executor with its own io_uring for connection I/O, a slab
//! of connections, a timing wheel and an index of its users; shards share nothing on the
//! connection path and talk through bounded channels (the mesh). See `ARCHITECTURE.md`.
//!
//! The socket-free core is [`core::Core`]: it is fed bytes and events and emits commands, so
//! benchmarks and tests drive exactly the server's path without sockets.

mod api;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
mod control;
pub mod core;
pub mod counters;
mod driver;
mod figures;
mod histogram;
mod layered;
mod layers;
mod limits;
mod listener;
mod mesh;
mod overload;
mod prom;
pub mod proxy;
mod ratelog;
mod reload;
mod results;
pub mod routing;
mod secrets;
mod server;
mod shutdown;
pub mod tls;
pub mod upstream;
pub mod ws;

pub use server::{run, run_with, ServerError, Shutdown};
