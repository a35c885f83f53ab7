//! The directory's data: which nodes hold a user's devices, as one JetStream key-value entry
//! per user. Pure functions; the NATS calls are in `bucket.rs`.
//!
//! Key: the user id in URL-safe base64 without padding (KV keys allow `A-Z a-z 0-9 - _ = . /`
//! only; user ids are any UTF-8 of up to 128 bytes). Value: JSON `{"n": {"<node>": expiry_ms}}`
//! with one entry per node that holds at least one of the user's main connections, each with
//! its own expiry (Unix milliseconds, written by that node). A user with a phone on node a and
//! a desktop on node b has both; a push resolves both and reaches both.
//!
//! The bucket's `max_age` drops an entry nobody rewrote for a TTL (every node holding the user
//! died); the per-node expiry drops one node of an entry other nodes keep refreshing. Readers
//! ignore expired nodes, writers prune them. The shard holding the user on a node is not stored:
//! it is the user's home shard there, `shard_for(user, shards)`.
//!
//! **Nothing read is trusted as it is.** The value also carries `"s"`, an HMAC under the
//! cluster secret over the key and the nodes (`seal::sign_entry`): whoever can write the bucket
//! without the secret cannot add a node, so pushes are only ever forwarded to nodes of the
//! fleet. An entry whose MAC does not verify is read as empty. Then every entry is checked
//! ([`Entry::sanitize`]): a node id that is not one subject token, an expiry further ahead than
//! a node would write (`now + directory_ttl_ms + max_clock_skew_ms`), and nodes past
//! `directory_max_nodes` (those expiring first) are dropped. Whatever was dropped is counted
//! (`cluster_directory_invalid_total`), ignored for routing, and gone from the entry at the
//! next write of it (the node's next refresh pass at the latest rewrites what is valid).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::config::ClusterConfig;
use super::seal::{self, Keys};

/// The KV key of `user`.
pub fn key(user: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(user.as_bytes())
}

/// One user's nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Node id → expiry, Unix milliseconds.
    #[serde(rename = "n")]
    pub nodes: BTreeMap<String, u64>,
}

/// An entry as stored: the nodes and their MAC.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// Node id → expiry.
    n: BTreeMap<String, u64>,
    /// The MAC of the key and `n` under the cluster secret.
    #[serde(default)]
    s: String,
}

/// The bounds a read entry is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Now, Unix milliseconds.
    pub now_ms: u64,
    /// The furthest expiry a node writes, plus the clock skew allowed between nodes.
    pub max_ahead_ms: u64,
    /// Most nodes kept.
    pub max_nodes: usize,
}

impl Entry {
    /// Decodes the value stored under `key`; `None` when it is not one (a foreign writer) or
    /// its MAC does not verify under `keys`: treated as empty.
    pub fn decode(bytes: &[u8], key: &str, keys: &Keys) -> Option<Entry> {
        let stored: Stored = serde_json::from_slice(bytes).ok()?;
        let nodes = serde_json::to_vec(&stored.n).ok()?;
        seal::check_entry(keys, key, &nodes, &stored.s).then_some(Entry { nodes: stored.n })
    }

    /// The value to store under `key`, signed with `keys`.
    pub fn encode(&self, key: &str, keys: &Keys) -> Vec<u8> {
        let nodes = serde_json::to_vec(&self.nodes).unwrap_or_default();
        let stored = Stored {
            s: seal::sign_entry(keys, key, &nodes),
            n: self.nodes.clone(),
        };
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    /// Drops what no node of the fleet writes: malformed node ids, expiries too far ahead,
    /// and nodes past the cap (those expiring first; never `me`, the reading node). Returns
    /// how many were dropped.
    pub fn sanitize(&mut self, b: Bounds, me: &str) -> usize {
        let before = self.nodes.len();
        let latest = b.now_ms.saturating_add(b.max_ahead_ms);
        self.nodes
            .retain(|n, exp| ClusterConfig::valid_node(n) && *exp <= latest);
        if self.nodes.len() > b.max_nodes {
            let mut by_expiry: Vec<(u64, String)> =
                self.nodes.iter().map(|(n, e)| (*e, n.clone())).collect();
            // This node first, then the latest expiries.
            by_expiry.sort_unstable_by_key(|(exp, n)| std::cmp::Reverse((n == me, *exp)));
            for (_, n) in by_expiry.into_iter().skip(b.max_nodes) {
                self.nodes.remove(&n);
            }
        }
        before - self.nodes.len()
    }

    /// Nodes whose entry has not expired at `now_ms`, except `me`.
    pub fn live_others<'a>(&'a self, me: &'a str, now_ms: u64) -> impl Iterator<Item = &'a str> {
        self.nodes
            .iter()
            .filter(move |(n, exp)| n.as_str() != me && **exp > now_ms)
            .map(|(n, _)| n.as_str())
    }

    /// Whether `node` is named and its part has not expired at `now_ms`.
    pub fn holds(&self, node: &str, now_ms: u64) -> bool {
        self.nodes.get(node).is_some_and(|exp| *exp > now_ms)
    }

    /// Sets `me` present until `expiry_ms` or removes it, and drops every expired node.
    /// Returns whether the stored value must change (a refresh always does when present).
    pub fn set(&mut self, me: &str, present: bool, expiry_ms: u64, now_ms: u64) -> bool {
        let before = self.nodes.len();
        self.nodes.retain(|_, exp| *exp > now_ms);
        let pruned = self.nodes.len() != before;
        if present {
            self.nodes.insert(me.to_string(), expiry_ms);
            true
        } else {
            self.nodes.remove(me).is_some() || pruned
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::config::Hidden;

    fn keys(secret: &str) -> Keys {
        Keys::new(&[Hidden::new(secret)]).unwrap()
    }

    #[test]
    fn keys_are_valid_kv_keys_for_any_user() {
        for user in [
            "alice",
            "a b/c.d",
            "用户",
            "x".repeat(128).as_str(),
            "-._=~",
        ] {
            let k = key(user);
            assert!(!k.is_empty());
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{k}"
            );
        }
        assert_ne!(key("ab"), key("ac"));
    }

    #[test]
    fn nodes_come_expire_and_go() {
        let mut e = Entry::default();
        assert!(e.set("a", true, 1_000, 0));
        assert!(e.set("b", true, 2_000, 0));
        let mut live: Vec<_> = e.live_others("c", 500).collect();
        live.sort();
        assert_eq!(live, ["a", "b"]);
        assert!(e.holds("a", 500) && !e.holds("a", 1_000) && !e.holds("c", 0));
        assert_eq!(e.live_others("a", 500).collect::<Vec<_>>(), ["b"]);
        // a's entry expired: readers skip it, the next writer drops it.
        assert_eq!(e.live_others("c", 1_500).collect::<Vec<_>>(), ["b"]);
        assert!(e.set("b", true, 3_000, 1_500));
        assert_eq!(e.nodes.len(), 1);
        let k = keys("cluster-secret-0123456789");
        let back = Entry::decode(&e.encode("a2V5", &k), "a2V5", &k).unwrap();
        assert_eq!(back, e);
        assert!(e.set("b", false, 0, 1_600));
        assert!(e.nodes.is_empty());
        assert!(!e.set("b", false, 0, 1_600), "nothing to change");
        assert_eq!(Entry::decode(b"not json", "a2V5", &k), None);
    }

    #[test]
    fn an_entry_without_the_cluster_mac_is_not_read() {
        let k = keys("cluster-secret-0123456789");
        let mut e = Entry::default();
        e.set("a", true, 10_000, 0);
        let alice = key("alice");
        let stored = e.encode(&alice, &k);
        assert_eq!(Entry::decode(&stored, &alice, &k), Some(e.clone()));
        // Written by someone without the secret: an extra node to copy alice's pushes to.
        let forged = br#"{"n":{"a":10000,"forger":10000}}"#;
        assert_eq!(Entry::decode(forged, &alice, &k), None);
        let other = keys("another-secret-0123456789");
        assert_eq!(Entry::decode(&e.encode(&alice, &other), &alice, &k), None);
        // Alice's signed entry copied under bob's key.
        assert_eq!(Entry::decode(&stored, &key("bob"), &k), None);
        // Its nodes changed, its MAC kept.
        let text = String::from_utf8(stored)
            .unwrap()
            .replace("\"a\"", "\"forger\"");
        assert_eq!(Entry::decode(text.as_bytes(), &alice, &k), None);
    }

    #[test]
    fn bad_nodes_are_dropped_on_read() {
        let b = Bounds {
            now_ms: 1_000,
            max_ahead_ms: 60_000,
            max_nodes: 3,
        };
        let mut e = Entry::default();
        for (n, exp) in [
            ("ok", 30_000),
            ("far-future", 61_001),
            ("has.dot", 30_000),
            ("", 30_000),
            ("edge", 61_000),
        ] {
            e.nodes.insert(n.to_string(), exp);
        }
        e.nodes.insert("x".repeat(65), 30_000);
        assert_eq!(e.sanitize(b, "me"), 4);
        assert_eq!(e.nodes.keys().collect::<Vec<_>>(), ["edge", "ok"]);
        assert_eq!(e.sanitize(b, "me"), 0, "a clean entry stays as it is");
        // Thousands of nodes: the cap keeps those refreshed last.
        let mut wide = Entry::default();
        for i in 0..5_000u64 {
            wide.nodes.insert(format!("n{i}"), 2_000 + i);
        }
        let mut kept = wide.clone();
        assert_eq!(wide.sanitize(b, "me"), 4_997);
        assert_eq!(
            wide.nodes.keys().collect::<Vec<_>>(),
            ["n4997", "n4998", "n4999"]
        );
        // The writing node keeps itself whatever its expiry.
        kept.sanitize(b, "n0");
        assert_eq!(
            kept.nodes.keys().collect::<Vec<_>>(),
            ["n0", "n4998", "n4999"]
        );
    }
}
