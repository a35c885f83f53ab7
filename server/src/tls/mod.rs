//! TLS 1.3 on the client listener, in the shard that owns the connection.
//!
//! The handshake is rustls's (sans IO, fed from the ring's receive completions); the record
//! layer after it is the shard's own ([`record`]), on the keys rustls hands over through the
//! interface it offers for kernel TLS. `config.rs` reads `[tls]` and builds rustls's
//! configuration, `session.rs` is one connection's TLS.

pub mod config;
pub mod record;
pub mod session;

pub use config::{TlsConfig, TlsConfigError, ALPN};
pub use session::{Progress, TlsConn, TlsError};

#[cfg(test)]
pub(crate) mod tests;
