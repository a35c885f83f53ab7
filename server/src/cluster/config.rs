//! `[cluster]`: whether this node joins a fleet, and the directory's and forwarding's timings.

use serde::Deserialize;

/// Longest node id (it is one token of a NATS subject).
pub const NODE_ID_MAX: usize = 64;

/// `[cluster]`: see `default.toml` for each key's meaning.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs; empty = a single node, no NATS, nothing started.
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
    /// Capacity of the channel from the shards and the API to the cluster thread.
    pub queue_capacity: usize,
    /// Directory writes in flight at once during a refresh pass.
    pub refresh_concurrency: usize,
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
        if let Some(bad) = self
            .nats_urls
            .iter()
            .find(|u| u.parse::<async_nats::ServerAddr>().is_err())
        {
            return Err(format!(
                "cluster.nats_urls: {bad:?} is not a NATS server URL"
            ));
        }
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
        if self.directory_ttl_ms < 1000 {
            return Err("cluster.directory_ttl_ms must be at least 1000".into());
        }
        if self.refresh_ms == 0 || self.refresh_ms * 2 > self.directory_ttl_ms {
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
        Ok(())
    }
}

/// A NATS subject token and KV bucket name: `[A-Za-z0-9_-]{1,max}`.
fn valid_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn single_node_by_default_and_a_cluster_needs_a_node_id() {
        let c = Config::default();
        assert!(!c.cluster.enabled(), "the embedded default needs no NATS");
        c.validate().unwrap();
        let no_id =
            Config::from_toml("[cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\n").unwrap();
        assert!(no_id.validate().is_err());
        let ok = Config::from_toml(
            "[cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\nnode_id = \"edge-1\"\n",
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.cluster.subject("edge-1"), "tether.node.edge-1");
        let dotted = Config::from_toml(
            "[cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\nnode_id = \"a.b\"\n",
        )
        .unwrap();
        assert!(dotted.validate().is_err(), "a dot would split the subject");
        let bad_url =
            Config::from_toml("[cluster]\nnats_urls = [\"nats://a b:x\"]\nnode_id = \"a\"\n")
                .unwrap();
        assert!(
            bad_url.validate().is_err(),
            "an unparsable URL fails the start"
        );
        let slow = Config::from_toml(
            "[cluster]\nnats_urls = [\"n\"]\nnode_id = \"a\"\ndirectory_ttl_ms = 10000\nrefresh_ms = 6000\n",
        )
        .unwrap();
        assert!(
            slow.validate().is_err(),
            "a refresh slower than half the TTL"
        );
    }
}
