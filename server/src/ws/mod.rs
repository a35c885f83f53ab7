//! WebSocket (RFC 6455) on a client listener of its own, in the shard that owns the
//! connection: browsers speak the same protocol in binary messages.
//!
//! `upgrade.rs` answers the HTTP/1.1 upgrade (bounded head, path, `Origin` allow-list);
//! `frame.rs` reads the client's frames and writes the server's; `session.rs` is one
//! connection's WebSocket, sans IO. The driver (`shard.rs`) puts it between the socket (or
//! the connection's TLS, for `wss://`) and the core.

pub mod frame;
pub mod session;
pub mod upgrade;

use serde::Deserialize;

pub use session::{Progress, WsConn, WsError};
pub use upgrade::Rules;

/// `[websocket]`: see `default.toml` for each key's meaning.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsConfig {
    /// The listener's address ("" = off).
    pub listen: String,
    /// The path the upgrade must ask for.
    pub path: String,
    /// Origins a browser's page may come from.
    pub allowed_origins: Vec<String>,
    /// Speak `wss://`: TLS with `[tls]`'s certificates, then WebSocket.
    pub tls: bool,
}

impl WsConfig {
    /// Whether the listener is on.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// The listener's address.
    pub fn address(&self) -> Result<std::net::SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|_| format!("websocket.listen: {:?} is not an address", self.listen))
    }

    /// Checks the section; `tls_files`: whether `[tls]` names a certificate and key.
    pub fn validate(&self, tls_files: bool) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        let addr = self.address()?;
        if !self.path.starts_with('/') || self.path.contains(char::is_whitespace) {
            return Err("websocket.path must start with / and hold no spaces".into());
        }
        if self.allowed_origins.is_empty() && !addr.ip().is_loopback() {
            return Err(
                "websocket.allowed_origins must list the origins of the pages that connect \
                 (e.g. \"https://app.example.com\", or \"*\" for any) when the listener is \
                 reachable from other hosts"
                    .into(),
            );
        }
        if self.tls && !tls_files {
            return Err("websocket.tls needs tls.certificate and tls.key".into());
        }
        Ok(())
    }

    /// The upgrade's rules. An empty allow-list (a loopback listener) allows any origin.
    pub fn rules(&self) -> Rules {
        Rules {
            path: self.path.clone(),
            allowed_origins: if self.allowed_origins.is_empty() {
                vec!["*".into()]
            } else {
                self.allowed_origins.clone()
            },
        }
    }
}
