//! Configuration: what each key means and what values work (`validate`). Where it comes from
//! (the default embedded in the binary, a TOML file, `TETHER_*` environment variables, a
//! secrets file) and how those merge is `layered.rs`.
//!
//! `default.toml` is the single source of default values: a user file only needs the keys it
//! changes, and `tether config` prints the defaults with their explanations.

use std::net::SocketAddr;

use serde::Deserialize;
use tether_proto::heartbeat::PriorConfig;
use tether_proto::session::SessionConfig;

use crate::secrets;

/// The default configuration, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// A day and an hour in milliseconds: the bounds of durations in the configuration.
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;
/// Largest `server.mesh_capacity`.
const MAX_MESH_CAPACITY: usize = 1 << 24;
/// The kernel's bounds on TCP keepalive settings.
const KEEPALIVE_MAX_S: u32 = 32_767;
const KEEPALIVE_MAX_COUNT: u32 = 127;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
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
    /// Admission caps: per address, accept and login rates, failed-login bans.
    pub limits: crate::core::admission::LimitsConfig,
    /// The HTTP control plane.
    pub api: crate::api::ApiConfig,
    /// Log filter and format.
    pub log: LogConfig,
    /// Joining a fleet of nodes over NATS (off unless `nats_urls` is set).
    pub cluster: crate::cluster::ClusterConfig,
    /// Clients' messages to the app's backend.
    pub upstream: crate::upstream::UpstreamConfig,
    /// Client-to-client messages.
    pub send: crate::upstream::SendConfig,
    /// The TLS listener (off unless `listen` is set).
    pub tls: crate::tls::TlsConfig,
    /// The WebSocket listener (off unless `listen` is set).
    pub websocket: crate::ws::WsConfig,
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
    /// Largest frame body before login.
    pub max_login_frame: usize,
    /// io_uring submission-queue entries per shard.
    pub ring_entries: u32,
    /// Bytes of receive buffers each shard lends to the kernel.
    pub recv_pool_bytes: usize,
    /// How long a gathering shard may sleep, in µs, so that client connections' heartbeats
    /// share a wakeup (0: no gathering). See `ring.rs`, "Gathering".
    pub batch_wait_us: u32,
    /// A gathering wait returns as soon as this many completions are there.
    pub batch_target: u32,
    /// Frames one connection may have handled per batch before it waits for the next one.
    pub frame_budget: u16,
    /// Inbound mesh channel capacity per shard.
    pub mesh_capacity: usize,
    /// Drain period on SIGTERM/SIGINT.
    pub drain_ms: u64,
    /// Period of the counters log line; 0 = off.
    pub stats_interval_ms: u64,
    /// Plaintext metrics address; empty = off.
    pub metrics_listen: String,
    /// Join a server already listening on `listen` (a rolling restart) instead of refusing.
    pub takeover: bool,
    /// Every connection starts with a PROXY protocol v2 header.
    pub proxy_protocol: bool,
    /// TCP_USER_TIMEOUT of accepted sockets; 0 = the kernel's default.
    pub tcp_user_timeout_ms: u32,
}

/// `[auth]`. Its `Debug` shows how many secrets there are, never what they are.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secrets of client tokens, newest first (one or two).
    pub secrets: Vec<String>,
    /// HMAC secrets of backend tokens, newest first (one or two), none of them a client secret:
    /// whoever mints client tokens must not be able to mint backend tokens.
    pub backend_secrets: Vec<String>,
    /// Tokens whose expiry lies further than this after now are refused, seconds.
    pub max_token_lifetime_s: u64,
    /// A file holding the secrets, one per line, replacing `secrets` when set.
    #[serde(default)]
    pub secrets_file: std::path::PathBuf,
    /// When a reload withdraws a secret, the connections it authenticated end this many
    /// seconds later unless they refresh their token (at most a day).
    pub revoked_grace_s: u32,
}

/// Largest `auth.revoked_grace_s`: a day.
pub const REVOKED_GRACE_MAX_S: u32 = 24 * 3600;

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secrets", &secrets::Redacted(&self.secrets))
            .field("backend_secrets", &secrets::Redacted(&self.backend_secrets))
            .field("max_token_lifetime_s", &self.max_token_lifetime_s)
            .field("secrets_file", &self.secrets_file)
            .field("revoked_grace_s", &self.revoked_grace_s)
            .finish()
    }
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
    /// How long a finished connection may take to send its last frames.
    pub linger_ms: u64,
    /// Bytes of all partial frames and outbound queues together, server-wide.
    pub max_buffered_bytes: usize,
    /// Most results a shard parks for a full mesh channel.
    pub max_parked_results: usize,
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

impl Config {
    /// Checks values that parse but cannot work, and refuses a placeholder secret anywhere and
    /// a guessable one where the listener is exposed (see `secrets.rs`). No error shows a
    /// secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let s = &self.server;
        if s.tick_ms == 0 || s.tick_ms > 10_000 {
            return bad("server.tick_ms must be in 1..=10000");
        }
        if s.max_frame < 64 || s.max_frame > 16 << 20 {
            return bad("server.max_frame must be in 64..=16777216");
        }
        if s.max_login_frame < 256 || s.max_login_frame > s.max_frame {
            return bad("server.max_login_frame must be in 256..=server.max_frame");
        }
        if s.recv_pool_bytes < 64 << 10 || s.recv_pool_bytes > 1 << 30 {
            return bad("server.recv_pool_bytes must be in 65536..=1073741824");
        }
        if s.batch_wait_us > 100_000 {
            return bad("server.batch_wait_us must be at most 100000 (0.1 s)");
        }
        if s.frame_budget == 0 {
            return bad("server.frame_budget must be at least 1");
        }
        if s.max_connections == 0 || s.max_connections >= 1 << 31 {
            // Slab keys of connections must stay below 2^31 (see users.rs).
            return bad("server.max_connections must be in 1..2^31");
        }
        if s.mesh_capacity == 0 || s.mesh_capacity > MAX_MESH_CAPACITY {
            // Each channel's slots are allocated at start.
            return bad("server.mesh_capacity must be in 1..=16777216");
        }
        // Durations that are added to a clock or handed to the kernel: bounded here, so no
        // sum wraps and no socket option is refused at every accept.
        for (name, ms, max) in [
            ("server.drain_ms", s.drain_ms, DAY_MS),
            ("server.stats_interval_ms", s.stats_interval_ms, DAY_MS),
            (
                "server.tcp_user_timeout_ms",
                u64::from(s.tcp_user_timeout_ms),
                DAY_MS,
            ),
            (
                "outbound.write_timeout_ms",
                self.outbound.write_timeout_ms,
                HOUR_MS,
            ),
            ("outbound.linger_ms", self.outbound.linger_ms, HOUR_MS),
        ] {
            if ms > max {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at most {max} ({})",
                    if max == DAY_MS { "a day" } else { "an hour" }
                )));
            }
        }
        let k = &self.keepalive;
        let in_bounds = (1..=KEEPALIVE_MAX_S).contains(&k.idle_s)
            && (1..=KEEPALIVE_MAX_S).contains(&k.interval_s)
            && (1..=KEEPALIVE_MAX_COUNT).contains(&k.count);
        if k.enabled && !in_bounds {
            // The kernel's own bounds (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT).
            return bad(
                "keepalive.idle_s and interval_s must be in 1..=32767 and count in 1..=127",
            );
        }
        if !s.ring_entries.is_power_of_two() || s.ring_entries < 8 {
            return bad("server.ring_entries must be a power of two >= 8");
        }
        // Metrics carry no secrets: any address may serve them.
        if !s.metrics_listen.is_empty() && s.metrics_listen.parse::<SocketAddr>().is_err() {
            return bad("server.metrics_listen must be an address (host:port) or empty");
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        // API keys are checked here, before `[api]`'s own checks, so that no message about a
        // key can show any part of it.
        secrets::check_list(
            "api.keys",
            self.api.keys.iter().map(|k| k.secret()),
            secrets::check_exposed,
        )
        .map_err(ConfigError::Invalid)?;
        self.api.validate().map_err(ConfigError::Invalid)?;
        self.cluster.validate().map_err(ConfigError::Invalid)?;
        self.tls
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let tls_files = !self.tls.certificate.is_empty() && !self.tls.key.is_empty();
        self.websocket
            .validate(tls_files)
            .map_err(ConfigError::Invalid)?;
        self.upstream
            .validate(s.max_frame, self.cluster.enabled())
            .map_err(ConfigError::Invalid)?;
        self.session
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("session: {e}")))?;
        if self.outbound.max_buffered_bytes < self.outbound.max_queue_bytes {
            return bad("outbound.max_buffered_bytes must hold at least one queue (>= outbound.max_queue_bytes)");
        }
        if self.outbound.max_queue_bytes < s.max_frame {
            return bad(
                "outbound.max_queue_bytes must hold at least one frame (>= server.max_frame)",
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            // Checked here so a reload with a bad filter is refused before anything changes.
            return bad("log.filter is not a valid filter (tracing-subscriber EnvFilter syntax)");
        }
        if self.priors.quantile_pct > 100 || self.priors.reports_per_network == 0 {
            return bad("priors.quantile_pct must be <= 100 and priors.reports_per_network > 0");
        }
        let a = &self.auth;
        if a.secrets.is_empty() || a.secrets.len() > 2 {
            return bad("auth.secrets must list one or two secrets");
        }
        if a.backend_secrets.is_empty() || a.backend_secrets.len() > 2 {
            return bad("auth.backend_secrets must list one or two secrets");
        }
        if a.backend_secrets.iter().any(|b| a.secrets.contains(b)) {
            return bad("auth.backend_secrets must differ from every client secret (auth.secrets)");
        }
        if a.max_token_lifetime_s == 0 {
            return bad("auth.max_token_lifetime_s must be > 0");
        }
        if a.revoked_grace_s > REVOKED_GRACE_MAX_S {
            return bad("auth.revoked_grace_s must be at most 86400 (a day)");
        }
        let token_secret = |c: &crate::cluster::Hidden| {
            let c = c.expose().trim();
            a.secrets
                .iter()
                .chain(&a.backend_secrets)
                .any(|t| t.trim() == c)
        };
        if self.cluster.enabled() && self.cluster.secrets.iter().any(token_secret) {
            // Whoever mints tokens must not be able to speak for a node.
            return bad("cluster.secrets must differ from every auth secret and backend secret");
        }
        // Secrets: placeholders nowhere; where clients, backends or callers can reach the
        // listener, nothing short, well-known or repetitive either (secrets.rs).
        let exposed = self.clients_exposed();
        let rule = if exposed {
            secrets::check_exposed
        } else {
            secrets::check_anywhere
        };
        let why = if exposed {
            ": the listener is reachable from other hosts (a non-loopback address, \
             server.proxy_protocol, or a non-loopback tls.listen or websocket.listen)"
        } else {
            ""
        };
        secrets::check_list("auth.secrets", a.secrets.iter().map(String::as_str), rule)
            .and_then(|()| {
                let backend = a.backend_secrets.iter().map(String::as_str);
                secrets::check_list("auth.backend_secrets", backend, rule)
            })
            .map_err(|e| ConfigError::Invalid(format!("{e}{why}")))?;
        Ok(())
    }

    /// Whether clients and backends may reach the listener from other hosts: it listens on a
    /// non-loopback address, or it sits behind a PROXY-protocol balancer (which may take
    /// connections from anywhere, even when it runs on this host), or its TLS or WebSocket
    /// listener does on a non-loopback address.
    pub fn clients_exposed(&self) -> bool {
        let tls_exposed =
            self.tls.enabled() && self.tls.address().map_or(true, |a| !a.ip().is_loopback());
        let ws_exposed = self.websocket.enabled()
            && self
                .websocket
                .address()
                .map_or(true, |a| !a.ip().is_loopback());
        !self.server.listen.ip().is_loopback()
            || self.server.proxy_protocol
            || tls_exposed
            || ws_exposed
    }

    /// Number of shards to run: the configured one, or one per online CPU.
    pub fn shard_count(&self) -> usize {
        match self.server.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
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
    fn login_ok_announces_the_enforced_frame_limit() {
        let c = Config::from_toml("[server]\nmax_frame = 4096\n").unwrap();
        assert_eq!(c.session.max_frame, 4096);
        assert_eq!(
            Config::default().session.max_frame as usize,
            Config::default().server.max_frame
        );
        assert!(Config::from_toml("[session]\nmax_frame = 4096\n").is_err());
    }

    #[test]
    fn a_bad_log_filter_is_refused_with_the_rest() {
        Config::from_toml("[log]\nfilter = \"info,tether_server::api=debug\"\n")
            .unwrap()
            .validate()
            .unwrap();
        let e = Config::from_toml("[log]\nfilter = \"tether=notalevel\"\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.filter"), "{e}");
    }

    #[test]
    fn durations_added_to_a_clock_are_bounded_at_load() {
        // Each of these was taken and then wrapped where it was added to `now` (u64::MAX comes
        // from TETHER_* variables or --drain-ms; TOML stops at i64::MAX), or made the kernel
        // refuse a socket option at every accept, or a start-up allocation abort.
        type Set = fn(&mut Config);
        let cases: [(Set, &str); 10] = [
            (|c| c.server.drain_ms = u64::MAX, "server.drain_ms"),
            (
                |c| c.server.stats_interval_ms = u64::MAX,
                "server.stats_interval_ms",
            ),
            (
                |c| c.server.tcp_user_timeout_ms = u32::MAX,
                "server.tcp_user_timeout_ms",
            ),
            (|c| c.server.mesh_capacity = 1 << 40, "server.mesh_capacity"),
            (|c| c.outbound.linger_ms = u64::MAX, "outbound.linger_ms"),
            (
                |c| c.outbound.write_timeout_ms = u64::MAX,
                "outbound.write_timeout_ms",
            ),
            (|c| c.limits.ban_ms = u64::MAX, "limits.ban_ms"),
            (
                |c| c.limits.failed_login_window_ms = u64::MAX,
                "limits.failed_login_window_ms",
            ),
            (
                |c| {
                    c.keepalive.enabled = true;
                    c.keepalive.idle_s = u32::MAX;
                },
                "keepalive.idle_s",
            ),
            (
                |c| {
                    c.keepalive.enabled = true;
                    c.keepalive.count = 128;
                },
                "count in 1..=127",
            ),
        ];
        for (set, key) in cases {
            let mut c = Config::default();
            set(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        // The bounds themselves are taken.
        Config::from_toml(
            "[server]\ndrain_ms = 86400000\nmesh_capacity = 16777216\n[limits]\nban_ms = 86400000\n\
             [keepalive]\nenabled = true\nidle_s = 32767\ninterval_s = 32767\ncount = 127\n",
        )
        .unwrap()
        .validate()
        .unwrap();
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
            "[server]\nlisten = \"0.0.0.0:7700\"\n[auth]\nsecrets = [\"k3v9-Qe81-zzP0-aa71-91bc\"]\n\
             backend_secrets = [\"b7Qx-22aP-Lm90-ZZ1q-7c0d\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn a_proxied_listener_is_exposed_even_on_loopback() {
        // A balancer on this host takes connections from anywhere: the development secrets
        // are public ones behind it.
        let c = Config::from_toml("[server]\nproxy_protocol = true\n").unwrap();
        assert!(c.clients_exposed());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("auth.secrets[0] is a well-known value"), "{e}");
        assert!(e.contains("proxy_protocol"), "{e}");
        let c = Config::from_toml(
            "[server]\nproxy_protocol = true\n[auth]\nsecrets = [\"k3v9-Qe81-zzP0-aa71-91bc\"]\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("auth.backend_secrets[0] is a well-known value"),
            "{e}"
        );
        let c = Config::from_toml(
            "[server]\nproxy_protocol = true\n[auth]\nsecrets = [\"k3v9-Qe81-zzP0-aa71-91bc\"]\n\
             backend_secrets = [\"b7Qx-22aP-Lm90-ZZ1q-7c0d\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(!Config::default().clients_exposed());
    }

    #[test]
    fn placeholders_are_refused_on_loopback_too() {
        for toml in [
            "[auth]\nsecrets = [\"replace-with-a-long-random-secret\"]\n",
            "[auth]\nbackend_secrets = [\"tether-dev-backend-secret-not-for-production\", \
             \"<backend secret>\"]\n",
            "[api]\nkeys = [\"replace-with-a-long-random-api-key\"]\n",
            "[upstream]\nsink = \"webhook\"\nwebhook_url = \"http://127.0.0.1:9/up\"\n\
             webhook_secret = \"changeme-0123456789abcdef\"\n",
        ] {
            let c = Config::from_toml(toml).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("placeholder"), "{toml}: {e}");
        }
        // The development secrets stay usable on loopback (the quick start).
        Config::default().validate().unwrap();
    }

    #[test]
    fn backend_secrets_are_separate_and_checked_like_client_secrets() {
        let public = "[server]\nlisten = \"0.0.0.0:7700\"\n[auth]\nsecrets = [\"k3v9-Qe81-zzP0-aa71-91bc\"]\n";
        let with = |extra: &str| Config::from_toml(&format!("{public}{extra}")).unwrap();
        assert!(
            with("").validate().is_err(),
            "development backend secret on 0.0.0.0 must be refused"
        );
        assert!(with("backend_secrets = [\"short\"]\n").validate().is_err());
        assert!(with("backend_secrets = []\n").validate().is_err());
        assert!(
            with("backend_secrets = [\"k3v9-Qe81-zzP0-aa71-91bc\"]\n")
                .validate()
                .is_err(),
            "a client secret may not double as a backend secret"
        );
        with("backend_secrets = [\"b7Qx-22aP-Lm90-ZZ1q-7c0d\", \"b7Qx-22aP-Lm90-ZZ1q-old0\"]\n")
            .validate()
            .unwrap();
        let loopback = Config::default();
        assert_ne!(loopback.auth.secrets, loopback.auth.backend_secrets);
        assert_eq!(loopback.auth.max_token_lifetime_s, 30 * 24 * 3600);
        assert!(Config::from_toml("[auth]\nmax_token_lifetime_s = 0\n")
            .unwrap()
            .validate()
            .is_err());
    }
}
