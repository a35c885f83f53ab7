//! `[cluster]`: whether this node joins a fleet, how it reaches NATS (credentials, TLS), the
//! secret its messages to other nodes are signed with, the directory's and forwarding's
//! timings, and the bounds on the cluster thread's work.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Longest node id (it is one token of a NATS subject).
pub const NODE_ID_MAX: usize = 64;
/// Shortest cluster secret, in bytes (as for token secrets).
pub const SECRET_MIN: usize = 16;
/// Longest `directory_ttl_ms`: a day (a larger one only keeps a dead node's entries longer).
const TTL_MAX_MS: u64 = 24 * 3600 * 1000;

/// `[cluster]`: see `default.toml` for each key's meaning.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs; empty = a single node, no NATS, nothing started. Never with
    /// credentials in them (refused at load: URLs are logged).
    pub nats_urls: Vec<String>,
    /// This node's id, unique in the fleet.
    pub node_id: String,
    /// The JetStream key-value bucket of the directory.
    pub bucket: String,
    /// Subjects of nodes: `<prefix>.<node_id>`.
    pub subject_prefix: String,
    /// A directory entry lives this long unless its node refreshes it.
    pub directory_ttl_ms: u64,
    /// One refresh pass over this node's users per period.
    pub refresh_ms: u64,
    /// How long a forwarded push, kick or presence waits for the other node.
    pub forward_timeout_ms: u64,
    /// Deliver a push at once on the user's home shard when the directory names this node
    /// alone (`local.rs`); off: every push reads the directory.
    pub local_first: bool,
    /// Capacity of the channel from the shards and the API to the cluster thread.
    pub queue_capacity: usize,
    /// Directory writes in flight at once during a refresh pass.
    pub refresh_concurrency: usize,

    /// NATS user name (with `nats_password`).
    pub nats_user: String,
    /// NATS password.
    pub nats_password: Hidden,
    /// A file holding the NATS password (replaces `nats_password`).
    pub nats_password_file: PathBuf,
    /// NATS token.
    pub nats_token: Hidden,
    /// A file holding the NATS token (replaces `nats_token`).
    pub nats_token_file: PathBuf,
    /// NATS NKey seed (`SU…`).
    pub nats_nkey_seed: Hidden,
    /// A file holding the NKey seed (replaces `nats_nkey_seed`).
    pub nats_nkey_seed_file: PathBuf,
    /// A NATS credentials file (user JWT and NKey seed, as `nsc` writes them).
    pub nats_credentials_file: PathBuf,
    /// The credentials file's contents, read at load.
    #[serde(skip)]
    pub nats_credentials: Hidden,
    /// CA certificates (PEM) the NATS servers' certificates are checked against.
    pub tls_ca_file: PathBuf,
    /// This node's client certificate (PEM), with `tls_key_file`.
    pub tls_cert_file: PathBuf,
    /// The client certificate's private key (PEM).
    pub tls_key_file: PathBuf,
    /// Refuse a NATS connection without TLS.
    pub tls_required: bool,

    /// Secrets node-to-node messages are signed with, newest first (one or two).
    pub secrets: Vec<Hidden>,
    /// A file with the secrets, one per line (replaces `secrets`).
    pub secrets_file: PathBuf,
    /// A request whose timestamp is further than this from the receiver's clock is refused.
    pub max_clock_skew_ms: u64,
    /// Requests remembered to refuse a replay within the window.
    pub replay_cache: usize,
    /// Most nodes a directory entry may name.
    pub directory_max_nodes: usize,
    /// Tasks of the cluster thread for this node's own work at once (pushes fanned out,
    /// kicks, presence questions, login and logout writes); past it a push is refused
    /// `Overloaded`.
    pub max_in_flight: usize,
    /// Requests from other nodes carried out at once; past it one is answered with an error.
    pub max_served_in_flight: usize,
}

impl ClusterConfig {
    /// Whether this node joins a cluster.
    pub fn enabled(&self) -> bool {
        !self.nats_urls.is_empty()
    }

    /// Whether `node` is a well-formed node id (one subject token).
    pub fn valid_node(node: &str) -> bool {
        valid_token(node, NODE_ID_MAX)
    }

    /// The subject of node `node`.
    pub fn subject(&self, node: &str) -> String {
        format!("{}.{}", self.subject_prefix, node)
    }

    /// The NATS URLs without any credentials, as they may be logged.
    pub fn urls_for_log(&self) -> Vec<String> {
        self.nats_urls.iter().map(|u| redact_url(u)).collect()
    }

    /// Reads every `*_file` key into the value it replaces. The errors name the key and the
    /// file, never what is in it.
    pub fn load_files(&mut self) -> Result<(), String> {
        if !self.secrets_file.as_os_str().is_empty() {
            let text = read("cluster.secrets_file", &self.secrets_file)?;
            self.secrets = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| Hidden(l.to_string()))
                .collect();
        }
        for (key, path, value) in [
            (
                "cluster.nats_password_file",
                &self.nats_password_file,
                &mut self.nats_password,
            ),
            (
                "cluster.nats_token_file",
                &self.nats_token_file,
                &mut self.nats_token,
            ),
            (
                "cluster.nats_nkey_seed_file",
                &self.nats_nkey_seed_file,
                &mut self.nats_nkey_seed,
            ),
        ] {
            if !path.as_os_str().is_empty() {
                *value = Hidden(read(key, path)?.trim().to_string());
            }
        }
        if !self.nats_credentials_file.as_os_str().is_empty() {
            self.nats_credentials = Hidden(read(
                "cluster.nats_credentials_file",
                &self.nats_credentials_file,
            )?);
        }
        for (key, path) in [
            ("cluster.tls_ca_file", &self.tls_ca_file),
            ("cluster.tls_cert_file", &self.tls_cert_file),
            ("cluster.tls_key_file", &self.tls_key_file),
        ] {
            if !path.as_os_str().is_empty() {
                read(key, path)?;
            }
        }
        Ok(())
    }

    /// Checks the section; an empty `nats_urls` accepts anything else as it is (unused).
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !valid_token(&self.node_id, NODE_ID_MAX) {
            return Err(format!(
                "cluster.node_id must be 1..={NODE_ID_MAX} characters of A-Z a-z 0-9 - _ \
                 when cluster.nats_urls is set (got {:?})",
                self.node_id
            ));
        }
        for url in &self.nats_urls {
            if has_userinfo(url) {
                return Err(format!(
                    "cluster.nats_urls: {} carries credentials (user:password@ or token@), \
                     which would be logged; set cluster.nats_user with nats_password_file, \
                     or nats_token_file, nats_nkey_seed_file or nats_credentials_file \
                     (or TETHER_CLUSTER__NATS_PASSWORD, ...) instead",
                    redact_url(url)
                ));
            }
            if url.parse::<async_nats::ServerAddr>().is_err() {
                return Err(format!(
                    "cluster.nats_urls: {:?} is not a NATS server URL",
                    redact_url(url)
                ));
            }
        }
        self.validate_nats_auth()?;
        if !valid_token(&self.bucket, 64) {
            return Err("cluster.bucket must be 1..=64 characters of A-Z a-z 0-9 - _".into());
        }
        let prefix_ok = !self.subject_prefix.is_empty()
            && self
                .subject_prefix
                .split('.')
                .all(|t| valid_token(t, NODE_ID_MAX));
        if !prefix_ok {
            return Err(
                "cluster.subject_prefix must be dot-separated tokens of A-Z a-z 0-9 - _".into(),
            );
        }
        if !(1000..=TTL_MAX_MS).contains(&self.directory_ttl_ms) {
            return Err(format!(
                "cluster.directory_ttl_ms must be in 1000..={TTL_MAX_MS}"
            ));
        }
        if self.refresh_ms == 0 || self.refresh_ms > self.directory_ttl_ms / 2 {
            return Err(
                "cluster.refresh_ms must be > 0 and at most half of directory_ttl_ms \
                 (an entry must survive one missed pass)"
                    .into(),
            );
        }
        if self.forward_timeout_ms == 0 || self.queue_capacity == 0 || self.refresh_concurrency == 0
        {
            return Err(
                "cluster.forward_timeout_ms, queue_capacity and refresh_concurrency must be > 0"
                    .into(),
            );
        }
        self.validate_secrets()?;
        if !(1000..=300_000).contains(&self.max_clock_skew_ms) {
            return Err("cluster.max_clock_skew_ms must be in 1000..=300000".into());
        }
        if self.replay_cache < 1024 {
            return Err("cluster.replay_cache must be at least 1024".into());
        }
        if !(1..=1024).contains(&self.directory_max_nodes) {
            return Err("cluster.directory_max_nodes must be in 1..=1024".into());
        }
        if self.max_in_flight == 0 || self.max_served_in_flight == 0 {
            return Err("cluster.max_in_flight and max_served_in_flight must be > 0".into());
        }
        Ok(())
    }

    /// At most one way to authenticate to NATS, each complete; TLS files in pairs.
    fn validate_nats_auth(&self) -> Result<(), String> {
        let user = !self.nats_user.is_empty() || !self.nats_password.is_empty();
        let ways = [
            user,
            !self.nats_token.is_empty(),
            !self.nats_nkey_seed.is_empty(),
            !self.nats_credentials.is_empty() || !self.nats_credentials_file.as_os_str().is_empty(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(
                "cluster: set one way to authenticate to NATS: nats_user with nats_password, \
                 nats_token, nats_nkey_seed or nats_credentials_file"
                    .into(),
            );
        }
        if user && (self.nats_user.is_empty() || self.nats_password.is_empty()) {
            return Err("cluster.nats_user and cluster.nats_password go together".into());
        }
        if !self.nats_nkey_seed.is_empty()
            && nkeys::KeyPair::from_seed(self.nats_nkey_seed.expose()).is_err()
        {
            return Err("cluster.nats_nkey_seed is not an NKey seed (SU...)".into());
        }
        if !self.nats_credentials.is_empty()
            && async_nats::ConnectOptions::new()
                .credentials(self.nats_credentials.expose())
                .is_err()
        {
            return Err(format!(
                "cluster.nats_credentials_file {} is not a NATS credentials file \
                 (a user JWT and an NKey seed)",
                self.nats_credentials_file.display()
            ));
        }
        if self.tls_cert_file.as_os_str().is_empty() != self.tls_key_file.as_os_str().is_empty() {
            return Err("cluster.tls_cert_file and cluster.tls_key_file go together".into());
        }
        Ok(())
    }

    /// One or two secrets, long enough and not a known one; required in a cluster.
    fn validate_secrets(&self) -> Result<(), String> {
        if self.secrets.is_empty() || self.secrets.len() > 2 {
            return Err(
                "cluster.secrets must list one or two secrets (newest first) when \
                 cluster.nats_urls is set: every message between nodes is signed with it \
                 (also cluster.secrets_file or TETHER_CLUSTER__SECRETS)"
                    .into(),
            );
        }
        let guessable = |s: &Hidden| {
            let s = s.expose().trim();
            s.len() < SECRET_MIN
                || crate::secrets::WELL_KNOWN
                    .iter()
                    .chain(WELL_KNOWN)
                    .any(|w| w.eq_ignore_ascii_case(s))
        };
        if self.secrets.iter().any(guessable) {
            return Err(format!(
                "cluster.secrets: a secret is short (< {SECRET_MIN} bytes) or well-known; \
                 use a random one, the same on every node"
            ));
        }
        Ok(())
    }

    /// Whether the TLS settings ask for TLS (`tls_required`, or a CA or client certificate).
    pub fn tls(&self) -> bool {
        self.tls_required
            || !self.tls_ca_file.as_os_str().is_empty()
            || !self.tls_cert_file.as_os_str().is_empty()
    }
}

/// Cluster secrets printed in the documentation.
const WELL_KNOWN: &[&str] = &["tether-cluster-example-secret-0123456789"];

/// Reads a file named by configuration key `key`.
fn read(key: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {key} {}: {e}", path.display()))
}

/// Whether a NATS URL names a user, password or token before its host.
fn has_userinfo(url: &str) -> bool {
    redact_url(url) != url
}

/// A NATS subject token and KV bucket name: `[A-Za-z0-9_-]{1,max}`.
fn valid_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A secret from the configuration. Its `Debug` shows only its length, and it is read from
/// any TOML scalar, so that neither a log line of the configuration nor a type error in it
/// can show the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Hidden(String);

impl Hidden {
    /// A secret.
    pub fn new(s: impl Into<String>) -> Hidden {
        Hidden(s.into())
    }

    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is unset.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Hidden(unset)")
        } else {
            f.write_str("Hidden(..)")
        }
    }
}

impl<'de> Deserialize<'de> for Hidden {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hidden, D::Error> {
        struct Any;
        impl Visitor<'_> for Any {
            type Value = Hidden;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Hidden, E> {
                Ok(Hidden(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Hidden, E> {
                Ok(Hidden(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Hidden, E> {
                Ok(Hidden(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Hidden, E> {
                Ok(Hidden(v.to_string()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Hidden, E> {
                Ok(Hidden(v.to_string()))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Hidden, E> {
                Ok(Hidden(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Hidden, E> {
                Ok(Hidden(v.to_string()))
            }
            fn visit_char<E: de::Error>(self, v: char) -> Result<Hidden, E> {
                Ok(Hidden(v.to_string()))
            }
        }
        d.deserialize_any(Any)
    }
}

/// `url` without what stands before the last `@` of its authority (a user, password or
/// token): `nats://u:p@host:4222` → `nats://***@host:4222`. Anything without `@` is returned
/// as it is.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// A cluster section with a URL, a node id and a good secret, unless `extra` sets them,
    /// and `extra`.
    fn cluster(extra: &str) -> Result<Config, crate::config::ConfigError> {
        let mut text = String::from("[cluster]\n");
        for (key, line) in [
            ("nats_urls", "nats_urls = [\"nats://127.0.0.1:4222\"]\n"),
            ("node_id", "node_id = \"edge-1\"\n"),
            ("secrets", "secrets = [\"k7Rt-cluster-0193-aQ9z\"]\n"),
        ] {
            if !extra.lines().any(|l| l.starts_with(&format!("{key} "))) {
                text.push_str(line);
            }
        }
        Config::from_toml(&format!("{text}{extra}"))
    }

    #[test]
    fn single_node_by_default_and_a_cluster_needs_a_node_id() {
        let c = Config::default();
        assert!(!c.cluster.enabled(), "the embedded default needs no NATS");
        c.validate().unwrap();
        let no_id = Config::from_toml(
            "[cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\n\
             secrets = [\"k7Rt-cluster-0193-aQ9z\"]\n",
        )
        .unwrap();
        assert!(no_id.validate().is_err());
        let ok = cluster("").unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.cluster.subject("edge-1"), "tether.node.edge-1");
        let dotted = cluster("node_id = \"a.b\"\n").unwrap();
        assert!(dotted.validate().is_err(), "a dot would split the subject");
        let bad_url = cluster("nats_urls = [\"nats://a b:x\"]\n").unwrap();
        assert!(
            bad_url.validate().is_err(),
            "an unparsable URL fails the start"
        );
        let slow = cluster("directory_ttl_ms = 10000\nrefresh_ms = 6000\n").unwrap();
        assert!(
            slow.validate().is_err(),
            "a refresh slower than half the TTL"
        );
        let huge = cluster("directory_ttl_ms = 9223372036854775807\nrefresh_ms = 1000\n").unwrap();
        assert!(
            huge.validate().is_err(),
            "expiries are bounded: no arithmetic wraps"
        );
    }

    #[test]
    fn a_cluster_needs_a_real_secret() {
        let none = Config::from_toml(
            "[cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\nnode_id = \"edge-1\"\n",
        )
        .unwrap();
        let e = none.validate().unwrap_err().to_string();
        assert!(e.contains("cluster.secrets"), "{e}");
        for bad in [
            "secrets = [\"short\"]",
            "secrets = [\"tether-dev-secret-not-for-production\"]",
            "secrets = [\"tether-cluster-example-secret-0123456789\"]",
            "secrets = [\"k7Rt-cluster-0193-aQ9z\", \"a\", \"b\"]",
            "secrets = []",
        ] {
            let c = cluster(&format!("{bad}\n")).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
        cluster("secrets = [\"k7Rt-cluster-0193-aQ9z\", \"k7Rt-cluster-0192-old0\"]\n")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn credentials_in_a_url_are_refused_without_being_shown() {
        for url in [
            "nats://tether:hunter2-secret@127.0.0.1:4222",
            "nats://s3cr3t-token-value@127.0.0.1:4222",
            "tls://tether:hunter2-secret@nats.example:4222",
            "tether:hunter2-secret@127.0.0.1:4222",
        ] {
            let c = cluster(&format!("nats_urls = [\"{url}\"]\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("nats_password_file"), "{e}");
            for secret in ["hunter2", "s3cr3t"] {
                assert!(!e.contains(secret), "the error shows the secret: {e}");
            }
        }
    }

    #[test]
    fn one_way_to_authenticate_to_nats_and_tls_files_in_pairs() {
        cluster("nats_user = \"tether\"\nnats_password = \"pw-0123456789\"\n")
            .unwrap()
            .validate()
            .unwrap();
        cluster("nats_token = \"tok-0123456789\"\n")
            .unwrap()
            .validate()
            .unwrap();
        for bad in [
            "nats_user = \"tether\"\n",
            "nats_password = \"pw\"\n",
            "nats_user = \"u\"\nnats_password = \"p\"\nnats_token = \"t\"\n",
            "nats_nkey_seed = \"SUnotaseed\"\n",
            "tls_cert_file = \"/c.pem\"\n",
        ] {
            let c = cluster(bad).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(!e.contains("notaseed"), "{e}");
            assert!(c.validate().is_err(), "{bad}");
        }
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let c = cluster(&format!(
            "nats_nkey_seed = \"{seed}\"\ntls_required = true\n"
        ))
        .unwrap();
        c.validate().unwrap();
        assert!(c.cluster.tls());
        assert!(
            !format!("{:?}", c.cluster).contains(&seed),
            "Debug hides the seed"
        );
    }

    #[test]
    fn files_replace_values_and_their_errors_do_not_show_them() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let secrets = write(
            "secrets",
            "# newest first\nk7Rt-cluster-0193-aQ9z\nk7Rt-cluster-0192-old0\n",
        );
        let password = write("password", "pw-from-file-0123\n");
        let mut c = cluster(&format!(
            "secrets_file = \"{secrets}\"\nnats_user = \"tether\"\nnats_password_file = \"{password}\"\n"
        ))
        .unwrap();
        c.cluster.load_files().unwrap();
        assert_eq!(c.cluster.secrets.len(), 2);
        assert_eq!(c.cluster.nats_password.expose(), "pw-from-file-0123");
        c.validate().unwrap();
        let mut missing = cluster("nats_token_file = \"/nonexistent/token\"\n").unwrap();
        let e = missing.cluster.load_files().unwrap_err();
        assert!(e.contains("cluster.nats_token_file"), "{e}");
        let creds = write("bad.creds", "not a creds file, secret-ish-content");
        let mut c = cluster(&format!("nats_credentials_file = \"{creds}\"\n")).unwrap();
        c.cluster.load_files().unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(!e.contains("secret-ish"), "{e}");
    }

    #[test]
    fn a_secret_of_any_type_is_read_and_never_printed() {
        let c = cluster("nats_token = 12345678901234567\n").unwrap();
        assert_eq!(c.cluster.nats_token.expose(), "12345678901234567");
        let shown = format!("{:?}", c.cluster);
        assert!(!shown.contains("12345678901234567"), "{shown}");
        assert!(!shown.contains("k7Rt-cluster"), "{shown}");
    }
}
