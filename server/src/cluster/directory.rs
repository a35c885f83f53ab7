//! The directory's data: which nodes hold a user's devices, as one JetStream key-value entry
//! per user. Pure functions; the NATS calls are in `node.rs`.
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

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

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

impl Entry {
    /// Decodes a stored value; `None` when it is not one (a foreign writer): treated as empty.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        serde_json::from_slice(bytes).ok()
    }

    /// The stored value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Nodes whose entry has not expired at `now_ms`, except `me`.
    pub fn live_others<'a>(&'a self, me: &'a str, now_ms: u64) -> impl Iterator<Item = &'a str> {
        self.nodes
            .iter()
            .filter(move |(n, exp)| n.as_str() != me && **exp > now_ms)
            .map(|(n, _)| n.as_str())
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
        assert_eq!(e.live_others("a", 500).collect::<Vec<_>>(), ["b"]);
        // a's entry expired: readers skip it, the next writer drops it.
        assert_eq!(e.live_others("c", 1_500).collect::<Vec<_>>(), ["b"]);
        assert!(e.set("b", true, 3_000, 1_500));
        assert_eq!(e.nodes.len(), 1);
        let back = Entry::decode(&e.encode()).unwrap();
        assert_eq!(back, e);
        assert!(e.set("b", false, 0, 1_600));
        assert!(e.nodes.is_empty());
        assert!(!e.set("b", false, 0, 1_600), "nothing to change");
        assert_eq!(Entry::decode(b"not json"), None);
    }
}
