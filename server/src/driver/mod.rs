//! The shard's driver: everything between a shard's sans-IO core (`core/`) and the kernel. It
//! owns the shard's io_uring, the sockets, the eventfd doorbell, the channels and the clock,
//! feeds the core its events and carries out the commands the core emits.
//!
//! - `shard.rs`: the shard's thread and loop (one wait per batch), and the execution of the
//!   core's commands; `shard/files.rs` the connections' slots in the ring's file table,
//!   `shard/transport.rs` the TLS and WebSocket layers between a socket and the core, and
//!   `shard/layered.rs` what the driver keeps of a layered connection (`Transport`).
//! - `ring.rs`: the shard's own io_uring (receives, sends, accepts, the doorbell poll, the
//!   file table, the gathering wait).
//! - `accept.rs`: what the shard does with each accepted socket before the core sees it.
//! - `nudge.rs`: the signal that ends a gathering shard's sleep when a message arrives.

pub(crate) mod accept;
pub(crate) mod nudge;
pub(crate) mod ring;
pub(crate) mod shard;
