//! Configuration: a TOML file merged over the default embedded in the binary, then validated.
//! The binary also layers `TETHER_*` environment variables and a secrets file over both (see
//! `layered.rs`).
//!
//! `default.toml` is the single source of default values: a user file only needs the keys it
//! changes, and `tether config` prints the defaults with their explanations.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use tether_proto::heartbeat::PriorConfig;
use tether_proto::session::SessionConfig;

/// The default configuration, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Secrets anyone can guess: the server refuses them on a non-loopback address.
const WELL_KNOWN_SECRETS: &[&str] = &[
    "tether-dev-secret-not-for-production",
    "secret",
    "changeme",
    "change-me",
    "password",
    "test",
    "dev",
    "default",
];

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening, shards, limits.
    pub server: ServerConfig,
    /// Token secrets.
    pub auth: AuthConfig,
    /// Login deadline, leases, probes: the sans-IO session's own rules.
    pub session: SessionConfig,
    /// Learned-interval priors per network key.
    pub priors: PriorsConfig,
    /// Slow-consumer limits.
    pub outbound: OutboundConfig,
    /// TCP keepalive backstop.
    pub keepalive: KeepaliveConfig,
    /// The HTTP control plane.
    pub api: crate::api::ApiConfig,
    /// Log filter and format.
    pub log: LogConfig,
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// tracing-subscriber `EnvFilter` directives; reloaded on SIGHUP.
    pub filter: String,
    /// One JSON object per line instead of text.
    pub json: bool,
}

/// `[server]`: see `default.toml` for each key's meaning.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address every shard listens on.
    pub listen: SocketAddr,
    /// Number of shards; 0 = one per online CPU.
    pub shards: usize,
    /// Pin shard i to CPU i.
    pub pin: bool,
    /// Most connections of the whole server.
    pub max_connections: usize,
    /// Timing-wheel granularity.
    pub tick_ms: u64,
    /// Largest frame body.
    pub max_frame: usize,
    /// io_uring submission-queue entries per shard.
    pub ring_entries: u32,
    /// Inbound mesh channel capacity per shard.
    pub mesh_capacity: usize,
    /// Drain period on SIGTERM/SIGINT.
    pub drain_ms: u64,
    /// Period of the counters log line; 0 = off.
    pub stats_interval_ms: u64,
    /// Plaintext metrics address; empty = off.
    pub metrics_listen: String,
}

/// `[auth]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secrets, newest first (one or two).
    pub secrets: Vec<String>,
    /// A file holding the secrets, one per line, replacing `secrets` when set.
    #[serde(default)]
    pub secrets_file: std::path::PathBuf,
}

/// `[priors]`: see `tether_proto::heartbeat::PriorConfig`; the clamp bounds come from
/// `[session]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorsConfig {
    /// Networks kept.
    pub capacity: usize,
    /// Votes kept per network.
    pub reports_per_network: usize,
    /// Distinct reporters needed before a prior is given.
    pub min_reporters: usize,
    /// Quantile of the votes used as the prior, percent.
    pub quantile_pct: u8,
    /// Votes older than this are ignored.
    pub max_age_ms: u64,
}

impl Config {
    /// The prior table's parameters, clamped to the session's lease bounds.
    pub fn prior_config(&self) -> PriorConfig {
        PriorConfig {
            capacity: self.priors.capacity,
            reports_per_network: self.priors.reports_per_network,
            min_reporters: self.priors.min_reporters,
            quantile_pct: self.priors.quantile_pct,
            max_age_ms: self.priors.max_age_ms,
            min_ms: self.session.min_lease_ms,
            max_ms: self.session.max_lease_ms,
        }
    }
}

/// `[outbound]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Bound on a connection's unsent bytes.
    pub max_queue_bytes: usize,
    /// Age limit of unsent bytes.
    pub write_timeout_ms: u64,
}

/// `[keepalive]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveConfig {
    /// Whether accepted sockets get TCP keepalive.
    pub enabled: bool,
    /// Idle seconds before the first probe.
    pub idle_s: u32,
    /// Seconds between probes.
    pub interval_s: u32,
    /// Unanswered probes before the kernel drops the connection.
    pub count: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config::from_toml("").expect("the embedded default configuration is valid")
    }
}

impl Config {
    /// The default configuration with `text` (a TOML document, possibly empty) merged over it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut base: toml::Table = DEFAULT_TOML.parse()?;
        let over: toml::Table = text.parse()?;
        merge(&mut base, over);
        let config: Config = base.try_into()?;
        Ok(config)
    }

    /// Reads `path` and merges it over the default.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Checks values that parse but cannot work, and refuses a guessable secret on a
    /// non-loopback address.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let s = &self.server;
        if s.tick_ms == 0 || s.tick_ms > 10_000 {
            return bad("server.tick_ms must be in 1..=10000");
        }
        if s.max_frame < 64 || s.max_frame > 16 << 20 {
            return bad("server.max_frame must be in 64..=16777216");
        }
        if s.max_connections == 0 || s.max_connections >= 1 << 31 {
            // Slab keys of connections must stay below 2^31 (see users.rs).
            return bad("server.max_connections must be in 1..2^31");
        }
        if s.mesh_capacity == 0 {
            return bad("server.mesh_capacity must be > 0");
        }
        if !s.ring_entries.is_power_of_two() || s.ring_entries < 8 {
            return bad("server.ring_entries must be a power of two >= 8");
        }
        // Metrics carry no secrets: any address may serve them.
        if !s.metrics_listen.is_empty() && s.metrics_listen.parse::<SocketAddr>().is_err() {
            return bad("server.metrics_listen must be an address (host:port) or empty");
        }
        self.api.validate().map_err(ConfigError::Invalid)?;
        self.session
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("session: {e}")))?;
        if self.outbound.max_queue_bytes < s.max_frame {
            return bad(
                "outbound.max_queue_bytes must hold at least one frame (>= server.max_frame)",
            );
        }
        if self.priors.quantile_pct > 100 || self.priors.reports_per_network == 0 {
            return bad("priors.quantile_pct must be <= 100 and priors.reports_per_network > 0");
        }
        if self.auth.secrets.is_empty() || self.auth.secrets.len() > 2 {
            return bad("auth.secrets must list one or two secrets");
        }
        if !s.listen.ip().is_loopback() {
            for secret in &self.auth.secrets {
                if secret.trim().len() < 16
                    || WELL_KNOWN_SECRETS
                        .iter()
                        .any(|w| w.eq_ignore_ascii_case(secret.trim()))
                {
                    return bad(
                        "refusing to listen on a non-loopback address with an empty, short (< 16 \
                         bytes) or well-known auth secret: set auth.secrets",
                    );
                }
            }
        }
        Ok(())
    }

    /// Number of shards to run: the configured one, or one per online CPU.
    pub fn shard_count(&self) -> usize {
        match self.server.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parses_and_validates() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.server.listen.port(), 7700);
    }

    #[test]
    fn file_overrides_only_its_keys() {
        let c = Config::from_toml("[server]\nshards = 3\n").unwrap();
        assert_eq!(c.server.shards, 3);
        assert_eq!(c.server.tick_ms, Config::default().server.tick_ms);
    }

    #[test]
    fn unknown_key_is_refused() {
        assert!(Config::from_toml("[server]\nshardz = 3\n").is_err());
    }

    #[test]
    fn public_address_needs_a_real_secret() {
        let c = Config::from_toml("[server]\nlisten = \"0.0.0.0:7700\"\n").unwrap();
        assert!(
            c.validate().is_err(),
            "dev secret on 0.0.0.0 must be refused"
        );
        let c =
            Config::from_toml("[server]\nlisten = \"0.0.0.0:7700\"\n[auth]\nsecrets = [\"\"]\n")
                .unwrap();
        assert!(c.validate().is_err(), "empty secret must be refused");
        let c = Config::from_toml(
            "[server]\nlisten = \"0.0.0.0:7700\"\n[auth]\nsecrets = [\"k3v9-Qe81-zzP0-aa71-91bc\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
    }
}
