//! `[api]`: the control-plane listeners, the keys and their scopes, connection caps and
//! deadlines.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::scope::{Scope, Scopes};

/// Shortest API key accepted (bytes).
pub const MIN_KEY_LEN: usize = 16;

/// Bounds of the three deadlines, in milliseconds.
const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// `[api]`: see `default.toml` for each key's meaning.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// HTTP API address; empty = off.
    pub listen: String,
    /// Bearer keys with their scopes; empty = no key needed (only allowed on a loopback
    /// address).
    pub keys: Vec<ApiKey>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most users one request may push to (a push's `users` plus every push of a batch).
    pub max_targets: usize,
    /// Longest `ack_timeout_ms` a push may ask for.
    pub max_ack_timeout_ms: u64,
    /// Most API pushes waiting for their result at once; beyond it pushes are refused.
    pub max_in_flight: usize,
    /// Most open connections on the API listener (the metrics listener has its own cap, so
    /// sockets there never take the API's places).
    pub max_connections: usize,
    /// Most open connections on `server.metrics_listen`, which needs no key.
    pub metrics_max_connections: usize,
    /// Most open connections from one source (an IPv4 address or an IPv6 /64), on each
    /// listener separately, so one host cannot take a listener's every place.
    pub max_connections_per_address: usize,
    /// A request head must be complete this long after its first byte (or after the accept).
    pub header_timeout_ms: u64,
    /// A request body must be complete this long after its head.
    pub body_timeout_ms: u64,
    /// A keep-alive connection is closed after this long without a request.
    pub idle_timeout_ms: u64,
}

/// One `[api] keys` entry: a plain string grants every scope (what every key meant before
/// scopes existed, and what `TETHER_API_KEYS=k1,k2` gives); a table names its scopes.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "an API key: a string, or a table { key = \"...\", scopes = [\"push\", \"read\", \"admin\"] }"
)]
pub enum ApiKey {
    /// `"KEY"`: every scope.
    All(String),
    /// `{ key = "KEY", scopes = [...] }`.
    Scoped(ScopedKey),
}

/// The table form of an API key.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedKey {
    /// The bearer key.
    pub key: String,
    /// Names of the scopes it grants (`push`, `read`, `admin`), checked by
    /// [`ApiConfig::validate`].
    pub scopes: Vec<String>,
}

impl ApiKey {
    /// The bearer key itself.
    pub fn secret(&self) -> &str {
        match self {
            ApiKey::All(k) => k,
            ApiKey::Scoped(s) => &s.key,
        }
    }

    /// The scopes it grants; an error names the first bad scope by position only (the value
    /// might be a key pasted into the wrong field).
    pub fn scopes(&self) -> Result<Scopes, String> {
        let ApiKey::Scoped(s) = self else {
            return Ok(Scopes::ALL);
        };
        if s.scopes.is_empty() {
            return Err("scopes is empty (give at least one of push, read, admin)".into());
        }
        s.scopes
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Scope::parse(name)
                    .ok_or_else(|| format!("scopes[{i}] is not one of push, read, admin"))
            })
            .collect()
    }
}

/// Never shows the key, nor a scope that is not a scope's name (it might be a key in the wrong
/// field): a `{:?}` of the configuration may reach a log.
impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiKey::All(_) => f.write_str("ApiKey(<redacted>, all scopes)"),
            ApiKey::Scoped(s) => write!(f, "ApiKey{s:?}"),
        }
    }
}

/// See [`ApiKey`]'s `Debug`.
impl fmt::Debug for ScopedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scopes: Vec<&str> = self
            .scopes
            .iter()
            .map(|s| Scope::parse(s).map_or("<unknown>", Scope::name))
            .collect();
        write!(f, "(<redacted>, {scopes:?})")
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> ApiKey {
        ApiKey::All(key.to_string())
    }
}

/// The three deadlines of an HTTP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the accept, or the first byte after an idle spell, to a complete head.
    pub header: Duration,
    /// From the head to the end of its body.
    pub body: Duration,
    /// From a response to the next request's first byte.
    pub idle: Duration,
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

    /// The connection deadlines.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            header: Duration::from_millis(self.header_timeout_ms),
            body: Duration::from_millis(self.body_timeout_ms),
            idle: Duration::from_millis(self.idle_timeout_ms),
        }
    }

    /// Checks limits, keys and scopes, and that a non-loopback address has keys. No error
    /// shows any part of a key: keys are named by their position in `api.keys`.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes < 64 || self.max_body_bytes > 64 << 20 {
            return Err("api.max_body_bytes must be in 64..=67108864".into());
        }
        if self.max_targets == 0
            || self.max_in_flight == 0
            || self.max_connections == 0
            || self.metrics_max_connections == 0
            || self.max_connections_per_address == 0
        {
            return Err("api.max_targets, max_in_flight, max_connections, \
                        metrics_max_connections and max_connections_per_address must be > 0"
                .into());
        }
        if self.max_ack_timeout_ms == 0 {
            return Err("api.max_ack_timeout_ms must be > 0".into());
        }
        for (name, ms) in [
            ("header_timeout_ms", self.header_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if !TIMEOUT_MS.contains(&ms) {
                return Err(format!(
                    "api.{name} must be in {}..={}",
                    TIMEOUT_MS.start(),
                    TIMEOUT_MS.end()
                ));
            }
        }
        for (i, k) in self.keys.iter().enumerate() {
            if k.secret().trim().len() < MIN_KEY_LEN {
                return Err(format!(
                    "api.keys[{i}]: a key needs at least {MIN_KEY_LEN} bytes"
                ));
            }
            k.scopes().map_err(|e| format!("api.keys[{i}]: {e}"))?;
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
    use super::*;
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

    #[test]
    fn keys_are_strings_or_tables_with_known_scopes() {
        let c = Config::from_toml(
            "[api]\nkeys = [\"every-scope-key-0123456789\", \
             { key = \"push-only-key-0123456789\", scopes = [\"push\"] }, \
             { key = \"ops-key-0123456789\", scopes = [\"read\", \"admin\"] }]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.api.keys[0].scopes().unwrap(), Scopes::ALL);
        let push = c.api.keys[1].scopes().unwrap();
        assert!(push.contains(Scope::Push) && !push.contains(Scope::Admin));
        let ops = c.api.keys[2].scopes().unwrap();
        assert!(ops.contains(Scope::Admin) && !ops.contains(Scope::Push));

        let with = |entry: &str| Config::from_toml(&format!("[api]\nkeys = [{entry}]\n"));
        let unknown = with("{ key = \"push-only-key-0123456789\", scopes = [\"push\", \"root\"] }")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("api.keys[0]: scopes[1]"), "{unknown}");
        let none = with("{ key = \"push-only-key-0123456789\", scopes = [] }")
            .unwrap()
            .validate();
        assert!(none.is_err(), "a key with no scope is a mistake");
        assert!(
            with("{ key = \"push-only-key-0123456789\", scope = [\"push\"] }").is_err(),
            "unknown field"
        );
        assert!(with("{ key = \"push-only-key-0123456789\" }").is_err());
        assert!(with("42").is_err());
    }

    #[test]
    fn no_error_shows_any_part_of_a_key() {
        // A short key (plain or in a table), a key whose scope is a pasted key, a malformed
        // entry: the message names a position, never the value.
        for entry in [
            "\"QZXJVWK\"",
            "{ key = \"QZXJVWK\", scopes = [\"push\"] }",
            "{ key = \"QZXJVWKQZXJVWKQZXJVWK\", scopes = [\"QZXJVWK-0123456789\"] }",
            "\"ok-key-0123456789abc\", { key = \"QZXJVWK\", scopes = \"push\" }",
        ] {
            let text = format!("[api]\nlisten = \"0.0.0.0:7780\"\nkeys = [{entry}]\n");
            let message = match Config::from_toml(&text) {
                Ok(c) => c.validate().unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(!message.contains("QZX"), "{entry}: {message}");
            assert!(
                message.contains("api.keys") || message.contains("API key"),
                "{message}"
            );
            if let Ok(c) = Config::from_toml(&text) {
                let debug = format!("{:?}", c.api);
                assert!(!debug.contains("QZX"), "{debug}");
            }
        }
    }

    #[test]
    fn caps_and_deadlines_are_checked() {
        let c = Config::default();
        assert_eq!(c.api.header_timeout_ms, 5_000);
        assert_eq!(c.api.body_timeout_ms, 10_000);
        assert!(c.api.metrics_max_connections < c.api.max_connections);
        for bad in [
            "metrics_max_connections = 0",
            "max_connections_per_address = 0",
            "header_timeout_ms = 0",
            "body_timeout_ms = 99",
            "idle_timeout_ms = 3600001",
        ] {
            let c = Config::from_toml(&format!("[api]\n{bad}\n")).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}
