//! `[api]`: the control-plane listener, its keys and limits.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Shortest API key accepted (bytes).
pub const MIN_KEY_LEN: usize = 16;

/// `[api]`: see `default.toml` for each key's meaning.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// HTTP API address; empty = off.
    pub listen: String,
    /// Bearer keys; empty = no key needed (only allowed on a loopback address).
    pub keys: Vec<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most users one request may push to (a push's `users` plus every push of a batch).
    pub max_targets: usize,
    /// Longest `ack_timeout_ms` a push may ask for.
    pub max_ack_timeout_ms: u64,
    /// Most API pushes waiting for their result at once; beyond it pushes are refused.
    pub max_in_flight: usize,
    /// Most open HTTP connections (API and metrics listeners together).
    pub max_connections: usize,
}

impl ApiConfig {
    /// The address to listen on, `None` when the API is off.
    pub fn addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen
            .parse()
            .map(Some)
            .map_err(|_| format!("api.listen: {:?} is not an address", self.listen))
    }

    /// Checks limits, and that a non-loopback address has real keys.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes < 64 || self.max_body_bytes > 64 << 20 {
            return Err("api.max_body_bytes must be in 64..=67108864".into());
        }
        if self.max_targets == 0 || self.max_in_flight == 0 || self.max_connections == 0 {
            return Err("api.max_targets, max_in_flight and max_connections must be > 0".into());
        }
        if self.max_ack_timeout_ms == 0 {
            return Err("api.max_ack_timeout_ms must be > 0".into());
        }
        if let Some(k) = self.keys.iter().find(|k| k.trim().len() < MIN_KEY_LEN) {
            let shown: String = k.chars().take(4).collect();
            return Err(format!(
                "api.keys: every key needs at least {MIN_KEY_LEN} bytes (one starts {shown:?})"
            ));
        }
        if let Some(addr) = self.addr()? {
            if !addr.ip().is_loopback() && self.keys.is_empty() {
                return Err(
                    "refusing an API on a non-loopback address without api.keys (or TETHER_API_KEYS)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn api_off_loopback_needs_long_keys_and_metrics_may_be_public() {
        let c = Config::default();
        assert_eq!(c.api.listen, "127.0.0.1:7780");
        c.validate().unwrap();
        let open = Config::from_toml("[api]\nlisten = \"0.0.0.0:7780\"\n").unwrap();
        assert!(open.validate().is_err(), "a public API without keys");
        let short =
            Config::from_toml("[api]\nlisten = \"0.0.0.0:7780\"\nkeys = [\"short\"]\n").unwrap();
        assert!(short.validate().is_err(), "a short key");
        let keyed = Config::from_toml(
            "[api]\nlisten = \"0.0.0.0:7780\"\nkeys = [\"a-long-enough-api-key\"]\n",
        )
        .unwrap();
        keyed.validate().unwrap();
        let off = Config::from_toml("[api]\nlisten = \"\"\n").unwrap();
        off.validate().unwrap();
        assert_eq!(off.api.addr().unwrap(), None);
        let bad = Config::from_toml("[api]\nlisten = \"nowhere\"\n").unwrap();
        assert!(bad.validate().is_err());
        let metrics = Config::from_toml("[server]\nmetrics_listen = \"0.0.0.0:9090\"\n").unwrap();
        metrics.validate().unwrap();
        assert!(Config::from_toml("[api]\nlisten = \"127.0.0.1:1\"\nkeyz = []\n").is_err());
    }
}
