//! The tether gateway: shard-per-core executors holding long connections.
//!
//! Each shard is a pinned glommio executor with its own io_uring for connection I/O, a slab
//! of connections, a timing wheel and an index of its users; shards share nothing on the
//! connection path and talk through bounded channels (the mesh). See `ARCHITECTURE.md`.
//!
//! The socket-free core is [`state::ShardState`]: benchmarks can drive it with
//! [`io::NullIo`] to hold millions of simulated sessions.

pub mod acks;
pub mod api;
pub mod check;
pub mod config;
pub mod conn;
pub mod control;
pub mod counters;
pub mod delivery;
pub mod io;
pub mod layered;
pub mod limits;
pub mod listener;
pub mod mesh;
pub mod prom;
pub mod reload;
pub mod ring;
pub mod routing;
pub mod server;
pub mod shard;
pub mod state;
pub mod users;
pub mod wheel;

pub use server::{run, run_with, ServerError, Shutdown};
