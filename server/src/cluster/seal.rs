//! Signed node-to-node messages: every request a node sends on another node's subject carries
//! its sender, a timestamp, a sequence number and an HMAC-SHA256 under `[cluster] secrets`, in
//! NATS headers beside the JSON body (which `wire.rs` describes and this file never reads).
//! Every reply carries an HMAC bound to the request it answers. Pure functions and one
//! bounded table; the NATS calls are in `peers.rs` (requests sent, replies checked) and
//! `serve.rs` (requests checked, replies sent).
//!
//! **Request MAC** = HMAC(secret, `"tether-cluster-request-v1\0"` ‖ len(from) ‖ from ‖
//! len(to) ‖ to ‖ timestamp ms (u64 BE) ‖ seq (u64 BE) ‖ body), lengths one byte each. The
//! receiver computes it with its own id as `to`, so a request signed for one node is refused by
//! every other one. Headers: `Tether-Node` (from), `Tether-Time` (ms), `Tether-Seq`,
//! `Tether-Mac` (URL-safe base64, no padding).
//!
//! **Reply MAC** = HMAC(secret, `"tether-cluster-reply-v1\0"` ‖ request MAC ‖ body), in
//! `Tether-Mac`: a reply answers one request, and only a holder of the secret can make one.
//!
//! A receiver ([`Guard`]) refuses, in this order: a request without the headers (`unsigned`),
//! one whose MAC is not that of the current or the previous secret (`bad_mac`), one whose
//! timestamp is further than `max_clock_skew_ms` from its clock (`stale`), and one whose MAC it
//! has seen within the window (`replay`). The table of MACs seen is bounded: when it is full
//! the oldest is forgotten and anything stamped at or before that one's timestamp is refused
//! from then on (as a possible replay), so the bound never lets a replay through; it only
//! narrows the window under a load it was not sized for.

use std::collections::{HashSet, VecDeque};

use async_nats::HeaderMap;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::Hidden;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a MAC.
pub const MAC_LEN: usize = 32;
/// Domain of request MACs.
const REQUEST_DOMAIN: &[u8] = b"tether-cluster-request-v1\0";
/// Domain of reply MACs.
const REPLY_DOMAIN: &[u8] = b"tether-cluster-reply-v1\0";
/// The sender's node id.
pub const H_NODE: &str = "Tether-Node";
/// The sender's clock, Unix milliseconds.
pub const H_TIME: &str = "Tether-Time";
/// The sender's sequence number (two requests in one millisecond differ).
pub const H_SEQ: &str = "Tether-Seq";
/// The MAC.
pub const H_MAC: &str = "Tether-Mac";

/// A MAC.
pub type Tag = [u8; MAC_LEN];

/// The cluster secrets: the first signs, any verifies.
#[derive(Clone)]
pub struct Keys {
    /// Keyed with the newest secret.
    current: HmacSha256,
    /// Keyed with the secret being rotated out.
    previous: Option<HmacSha256>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("has_previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys from a newest-first list of one or two secrets; `None` otherwise.
    pub fn new(secrets: &[Hidden]) -> Option<Keys> {
        let key = |s: &Hidden| HmacSha256::new_from_slice(s.expose().trim().as_bytes()).ok();
        match secrets {
            [current] => Some(Keys {
                current: key(current)?,
                previous: None,
            }),
            [current, previous] => Some(Keys {
                current: key(current)?,
                previous: Some(key(previous)?),
            }),
            _ => None,
        }
    }

    /// The MAC of `parts` under the current secret.
    fn sign(&self, parts: &[&[u8]]) -> Tag {
        let mut mac = self.current.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `parts` under one of the secrets (constant time).
    fn check(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let under = |key: &HmacSha256| {
            let mut mac = key.clone();
            for p in parts {
                mac.update(p);
            }
            mac.verify_slice(tag).is_ok()
        };
        under(&self.current) || self.previous.as_ref().is_some_and(under)
    }
}

/// What a request's headers say about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The sending node.
    pub from: String,
    /// The sender's clock, Unix milliseconds.
    pub time_ms: u64,
    /// The sender's sequence number.
    pub seq: u64,
}

/// The MAC of a request from `stamp.from` to `to` carrying `body`.
fn request_tag(
    keys: &Keys,
    stamp: &Stamp,
    to: &str,
    body: &[u8],
    tag: Option<&[u8]>,
) -> (Tag, bool) {
    let (from_len, to_len) = ([stamp.from.len() as u8], [to.len() as u8]);
    let (time, seq) = (stamp.time_ms.to_be_bytes(), stamp.seq.to_be_bytes());
    let parts: [&[u8]; 8] = [
        REQUEST_DOMAIN,
        &from_len,
        stamp.from.as_bytes(),
        &to_len,
        to.as_bytes(),
        &time,
        &seq,
        body,
    ];
    match tag {
        Some(t) => ([0; MAC_LEN], keys.check(&parts, t)),
        None => (keys.sign(&parts), true),
    }
}

/// Signs a request to node `to`: the headers to send it with, and its MAC (the reply is bound
/// to it).
pub fn sign_request(keys: &Keys, stamp: &Stamp, to: &str, body: &[u8]) -> (HeaderMap, Tag) {
    let (tag, _) = request_tag(keys, stamp, to, body, None);
    let mut h = HeaderMap::new();
    h.insert(H_NODE, stamp.from.as_str());
    h.insert(H_TIME, stamp.time_ms.to_string().as_str());
    h.insert(H_SEQ, stamp.seq.to_string().as_str());
    h.insert(H_MAC, encode(&tag).as_str());
    (h, tag)
}

/// Signs a reply to the request whose MAC is `request`.
pub fn sign_reply(keys: &Keys, request: &Tag, body: &[u8]) -> HeaderMap {
    let tag = keys.sign(&[REPLY_DOMAIN, request, body]);
    let mut h = HeaderMap::new();
    h.insert(H_MAC, encode(&tag).as_str());
    h
}

/// Whether `headers` carry a good MAC for a reply with `body` to the request whose MAC is
/// `request`.
pub fn check_reply(keys: &Keys, request: &Tag, headers: Option<&HeaderMap>, body: &[u8]) -> bool {
    let Some(tag) = headers.and_then(header_tag) else {
        return false;
    };
    keys.check(&[REPLY_DOMAIN, request, body], &tag)
}

/// Domain of directory entry MACs.
const ENTRY_DOMAIN: &[u8] = b"tether-cluster-directory-v1\0";

/// The MAC of directory entry `key` holding `nodes` (its canonical JSON), as stored.
pub fn sign_entry(keys: &Keys, key: &str, nodes: &[u8]) -> String {
    let len = (key.len() as u32).to_be_bytes();
    encode(&keys.sign(&[ENTRY_DOMAIN, &len, key.as_bytes(), nodes]))
}

/// Whether `tag` (as stored) is the MAC of entry `key` holding `nodes`.
pub fn check_entry(keys: &Keys, key: &str, nodes: &[u8], tag: &str) -> bool {
    let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag) else {
        return false;
    };
    let len = (key.len() as u32).to_be_bytes();
    keys.check(&[ENTRY_DOMAIN, &len, key.as_bytes(), nodes], &tag)
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No (well-formed) signature headers.
    Unsigned,
    /// The MAC is not one of the cluster secrets' for this request to this node.
    BadMac,
    /// Its timestamp is outside the window.
    Stale,
    /// Seen before within the window.
    Replay,
}

impl Refusal {
    /// The name in logs and error replies.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::BadMac => "bad_mac",
            Refusal::Stale => "stale",
            Refusal::Replay => "replay",
        }
    }
}

/// What a receiver checks every request against: the secrets, its own id, the window, and the
/// MACs seen in it.
#[derive(Debug)]
pub struct Guard {
    /// The cluster secrets.
    keys: Keys,
    /// This node's id (the `to` of every request it accepts).
    me: String,
    /// Half the window, ms.
    skew_ms: u64,
    /// Most MACs remembered.
    cap: usize,
    /// The first 16 bytes of each MAC remembered (2^-128 chance of a false replay).
    seen: HashSet<[u8; 16]>,
    /// The same, oldest first, with their timestamps.
    order: VecDeque<(u64, [u8; 16])>,
    /// Requests stamped at or before this are refused: the newest timestamp forgotten early.
    floor: u64,
}

impl Guard {
    /// A guard for node `me`.
    pub fn new(keys: Keys, me: &str, skew_ms: u64, cap: usize) -> Guard {
        Guard {
            keys,
            me: me.to_string(),
            skew_ms,
            cap: cap.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
            floor: 0,
        }
    }

    /// Checks a request with `headers` and `body` at `now_ms`. Returns its sender and MAC (the
    /// reply is bound to it), or why it is refused.
    pub fn check(
        &mut self,
        headers: Option<&HeaderMap>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(Stamp, Tag), Refusal> {
        let (stamp, tag) = headers.and_then(parse).ok_or(Refusal::Unsigned)?;
        if !request_tag(&self.keys, &stamp, &self.me, body, Some(&tag)).1 {
            return Err(Refusal::BadMac);
        }
        if stamp.time_ms.abs_diff(now_ms) > self.skew_ms {
            return Err(Refusal::Stale);
        }
        self.expire(now_ms);
        let mut short = [0u8; 16];
        short.copy_from_slice(&tag[..16]);
        if stamp.time_ms <= self.floor || !self.seen.insert(short) {
            return Err(Refusal::Replay);
        }
        if self.order.len() >= self.cap {
            if let Some((time, old)) = self.order.pop_front() {
                self.seen.remove(&old);
                self.floor = self.floor.max(time);
            }
        }
        self.order.push_back((stamp.time_ms, short));
        Ok((stamp, tag))
    }

    /// Forgets MACs whose timestamps left the window (a replay of one would be stale).
    fn expire(&mut self, now_ms: u64) {
        let edge = now_ms.saturating_sub(self.skew_ms);
        while let Some(&(time, old)) = self.order.front() {
            // Arrival order is nearly timestamp order; one late entry only delays the rest.
            if time >= edge {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
    }

    /// MACs remembered now.
    pub fn remembered(&self) -> usize {
        self.order.len()
    }
}

/// The stamp and MAC in a request's headers.
fn parse(h: &HeaderMap) -> Option<(Stamp, Tag)> {
    let from = h.get(H_NODE)?.as_str();
    if !super::config::ClusterConfig::valid_node(from) {
        return None;
    }
    let time_ms = h.get(H_TIME)?.as_str().parse().ok()?;
    let seq = h.get(H_SEQ)?.as_str().parse().ok()?;
    let tag = header_tag(h)?;
    let stamp = Stamp {
        from: from.to_string(),
        time_ms,
        seq,
    };
    Some((stamp, tag))
}

/// The MAC in `Tether-Mac`.
fn header_tag(h: &HeaderMap) -> Option<Tag> {
    let text = h.get(H_MAC)?.as_str();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    bytes.try_into().ok()
}

/// A MAC as header text.
fn encode(tag: &Tag) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn keys(secrets: &[&str]) -> Keys {
        let list: Vec<Hidden> = secrets.iter().map(|s| Hidden::new(*s)).collect();
        Keys::new(&list).unwrap()
    }

    fn stamp(from: &str, time_ms: u64, seq: u64) -> Stamp {
        Stamp {
            from: from.into(),
            time_ms,
            seq,
        }
    }

    fn guard(k: Keys) -> Guard {
        Guard::new(k, "b", 30_000, 1024)
    }

    #[test]
    fn a_signed_request_passes_once_and_names_its_sender() {
        let k = keys(&["cluster-secret-0123456789"]);
        let mut g = guard(k.clone());
        let body = br#"{"op":"presence","user":"u"}"#;
        let (h, tag) = sign_request(&k, &stamp("a", NOW, 1), "b", body);
        let (s, t) = g.check(Some(&h), body, NOW + 5).unwrap();
        assert_eq!((s.from.as_str(), t), ("a", tag));
        assert_eq!(g.check(Some(&h), body, NOW + 6), Err(Refusal::Replay));
        // The same body again, next sequence number: a new request.
        let (h2, _) = sign_request(&k, &stamp("a", NOW, 2), "b", body);
        g.check(Some(&h2), body, NOW + 7).unwrap();
    }

    #[test]
    fn unsigned_forged_altered_and_misdirected_requests_are_refused() {
        let k = keys(&["cluster-secret-0123456789"]);
        let mut g = guard(k.clone());
        let body = br#"{"op":"replace","user":"alice","device":"phone"}"#;
        assert_eq!(g.check(None, body, NOW), Err(Refusal::Unsigned));
        assert_eq!(
            g.check(Some(&HeaderMap::new()), body, NOW),
            Err(Refusal::Unsigned)
        );
        let other = keys(&["another-secret-0123456789"]);
        let (h, _) = sign_request(&other, &stamp("a", NOW, 1), "b", body);
        assert_eq!(g.check(Some(&h), body, NOW), Err(Refusal::BadMac));
        let (h, _) = sign_request(&k, &stamp("a", NOW, 1), "b", body);
        let altered = br#"{"op":"replace","user":"bob","device":"phone"}"#;
        assert_eq!(g.check(Some(&h), altered, NOW), Err(Refusal::BadMac));
        let (h, _) = sign_request(&k, &stamp("a", NOW, 1), "c", body);
        assert_eq!(
            g.check(Some(&h), body, NOW),
            Err(Refusal::BadMac),
            "signed for node c, replayed to b"
        );
        // A sender that claims another node's id.
        let (mut h, _) = sign_request(&k, &stamp("a", NOW, 1), "b", body);
        h.insert(H_NODE, "c");
        assert_eq!(g.check(Some(&h), body, NOW), Err(Refusal::BadMac));
        let (mut h, _) = sign_request(&k, &stamp("a", NOW, 1), "b", body);
        h.insert(H_MAC, "not base64!");
        assert_eq!(g.check(Some(&h), body, NOW), Err(Refusal::Unsigned));
        assert_eq!(g.remembered(), 0, "nothing refused is remembered");
    }

    #[test]
    fn requests_outside_the_window_are_stale() {
        let k = keys(&["cluster-secret-0123456789"]);
        let mut g = guard(k.clone());
        let body = b"{}";
        for (sent, ok) in [
            (NOW - 30_001, false),
            (NOW - 30_000, true),
            (NOW + 30_000, true),
            (NOW + 30_001, false),
        ] {
            let (h, _) = sign_request(&k, &stamp("a", sent, sent), "b", body);
            let r = g.check(Some(&h), body, NOW);
            assert_eq!(r.is_ok(), ok, "{sent}: {r:?}");
            if !ok {
                assert_eq!(r, Err(Refusal::Stale));
            }
        }
        // A captured request replayed after the window is stale, not remembered forever.
        let (h, _) = sign_request(&k, &stamp("a", NOW, 99), "b", body);
        g.check(Some(&h), body, NOW).unwrap();
        assert_eq!(g.remembered(), 3);
        assert_eq!(g.check(Some(&h), body, NOW + 30_001), Err(Refusal::Stale));
        let later = NOW + 30_001;
        let (h, _) = sign_request(&k, &stamp("a", later, 100), "b", body);
        g.check(Some(&h), body, later).unwrap();
        // The first one stamped before the window is forgotten (the one stamped at NOW
        // arrived after one stamped NOW + 30 s: it goes when that one does).
        assert_eq!(g.remembered(), 3);
    }

    #[test]
    fn a_full_table_narrows_the_window_and_never_lets_a_replay_through() {
        let k = keys(&["cluster-secret-0123456789"]);
        let mut g = Guard::new(k.clone(), "b", 30_000, 4);
        let body = b"{}";
        let sent: Vec<HeaderMap> = (0..6)
            .map(|i| sign_request(&k, &stamp("a", NOW + i, i), "b", body).0)
            .collect();
        for h in &sent {
            g.check(Some(h), body, NOW + 10).unwrap();
        }
        assert_eq!(g.remembered(), 4);
        for h in &sent {
            assert_eq!(g.check(Some(h), body, NOW + 10), Err(Refusal::Replay));
        }
        // A new request stamped before the forgotten ones' time is refused too.
        let (h, _) = sign_request(&k, &stamp("a", NOW, 100), "b", body);
        assert_eq!(g.check(Some(&h), body, NOW + 10), Err(Refusal::Replay));
        let (h, _) = sign_request(&k, &stamp("a", NOW + 9, 101), "b", body);
        g.check(Some(&h), body, NOW + 10).unwrap();
    }

    #[test]
    fn rotation_verifies_both_secrets_and_signs_with_the_newest() {
        let old = keys(&["old-cluster-secret-0123"]);
        let both = keys(&["new-cluster-secret-0123", "old-cluster-secret-0123"]);
        let new = keys(&["new-cluster-secret-0123"]);
        let body = b"{}";
        let (h, _) = sign_request(&old, &stamp("a", NOW, 1), "b", body);
        assert!(guard(both.clone()).check(Some(&h), body, NOW).is_ok());
        assert_eq!(
            guard(new.clone()).check(Some(&h), body, NOW),
            Err(Refusal::BadMac)
        );
        let (h, _) = sign_request(&both, &stamp("a", NOW, 2), "b", body);
        assert!(guard(new).check(Some(&h), body, NOW).is_ok());
        assert_eq!(guard(old).check(Some(&h), body, NOW), Err(Refusal::BadMac));
    }

    #[test]
    fn a_reply_is_bound_to_its_request() {
        let k = keys(&["cluster-secret-0123456789"]);
        let (_, req) = sign_request(&k, &stamp("a", NOW, 1), "b", b"{}");
        let (_, other) = sign_request(&k, &stamp("a", NOW, 2), "b", b"{}");
        let body = br#"{"r":"status","status":"acked","n":0}"#;
        let h = sign_reply(&k, &req, body);
        assert!(check_reply(&k, &req, Some(&h), body));
        assert!(
            !check_reply(&k, &other, Some(&h), body),
            "another request's"
        );
        assert!(!check_reply(&k, &req, Some(&h), br#"{"r":"count","n":9}"#));
        assert!(!check_reply(&k, &req, None, body), "unsigned");
        let forged = sign_reply(&keys(&["forger-secret-0123456789"]), &req, body);
        assert!(!check_reply(&k, &req, Some(&forged), body));
    }
}
