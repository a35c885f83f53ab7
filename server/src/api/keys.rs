//! API keys at run time: SHA-256 digests of the configured keys, each with the scopes it grants
//! (`scope.rs`), compared in constant time, swappable on reload.

use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::config::ApiKey;
use super::scope::Scopes;

/// One configured key.
#[derive(Clone, Debug)]
struct Entry {
    /// SHA-256 of the key (equal lengths for the comparison).
    digest: [u8; 32],
    /// What it grants.
    scopes: Scopes,
}

/// The current set of bearer keys. Cloning shares the set; [`ApiKeys::replace`] swaps it for
/// every clone (a SIGHUP reload).
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    /// The keys; empty = no key needed.
    entries: Arc<RwLock<Vec<Entry>>>,
}

impl ApiKeys {
    /// A set holding `keys`.
    pub fn new(keys: &[ApiKey]) -> ApiKeys {
        let k = ApiKeys::default();
        k.replace(keys);
        k
    }

    /// Replaces the set. The configuration was validated; a key whose scopes do not parse
    /// anyway grants nothing.
    pub fn replace(&self, keys: &[ApiKey]) {
        let entries = keys
            .iter()
            .map(|k| Entry {
                digest: digest(k.secret().trim().as_bytes()),
                scopes: k.scopes().unwrap_or(Scopes::NONE),
            })
            .collect();
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = entries;
    }

    /// Whether a key is needed.
    pub fn required(&self) -> bool {
        !self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// What an `Authorization` header value grants: every scope when no key is configured;
    /// otherwise, for `Bearer KEY` with one of the keys, that key's scopes (the union, should
    /// a key be listed twice); `None` for a missing, malformed or unknown key. Every key is
    /// compared, in constant time, whatever matches.
    pub fn grant(&self, authorization: Option<&[u8]>) -> Option<Scopes> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        if entries.is_empty() {
            return Some(Scopes::ALL);
        }
        let token = authorization.and_then(bearer)?;
        let presented = digest(token);
        let mut matched = subtle::Choice::from(0);
        let mut scopes = 0u8;
        for e in entries.iter() {
            let this = e.digest.ct_eq(&presented);
            matched |= this;
            scopes |= u8::conditional_select(&0, &e.scopes.0, this);
        }
        bool::from(matched).then_some(Scopes(scopes))
    }
}

/// The token of a `Bearer TOKEN` header value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// SHA-256 of `key` (equal lengths for the comparison).
fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::scope::Scope;

    fn plain(k: &str) -> ApiKey {
        ApiKey::All(k.into())
    }

    fn scoped(k: &str, scopes: &[&str]) -> ApiKey {
        ApiKey::Scoped(super::super::config::ScopedKey {
            key: k.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn bearer_keys_are_checked_and_swappable() {
        let keys = ApiKeys::new(&[]);
        assert_eq!(
            keys.grant(None),
            Some(Scopes::ALL),
            "no keys configured: open"
        );
        keys.replace(&[
            plain("first-key-0123456789"),
            plain("second-key-0123456789"),
        ]);
        assert_eq!(keys.grant(None), None);
        assert_eq!(keys.grant(Some(b"Bearer wrong-key-0123456789")), None);
        assert_eq!(keys.grant(Some(b"Basic first-key-0123456789")), None);
        assert_eq!(keys.grant(Some(b"Bearer")), None);
        assert_eq!(
            keys.grant(Some(b"Bearer first-key-0123456789")),
            Some(Scopes::ALL)
        );
        assert_eq!(
            keys.grant(Some(b"bearer  second-key-0123456789 ")),
            Some(Scopes::ALL)
        );
        let clone = keys.clone();
        keys.replace(&[plain("third-key-0123456789")]);
        assert_eq!(clone.grant(Some(b"Bearer first-key-0123456789")), None);
        assert!(clone.grant(Some(b"Bearer third-key-0123456789")).is_some());
    }

    #[test]
    fn each_key_grants_its_own_scopes() {
        let keys = ApiKeys::new(&[
            scoped("push-key-0123456789", &["push"]),
            scoped("ops-key-0123456789", &["read", "admin"]),
            plain("every-scope-key-0123456789"),
            scoped("broken-key-0123456789", &["pussh"]),
        ]);
        let push = keys.grant(Some(b"Bearer push-key-0123456789")).unwrap();
        assert!(push.contains(Scope::Push));
        assert!(!push.contains(Scope::Read) && !push.contains(Scope::Admin));
        let ops = keys.grant(Some(b"Bearer ops-key-0123456789")).unwrap();
        assert!(!ops.contains(Scope::Push));
        assert!(ops.contains(Scope::Read) && ops.contains(Scope::Admin));
        assert_eq!(
            keys.grant(Some(b"Bearer every-scope-key-0123456789")),
            Some(Scopes::ALL)
        );
        // Validation refuses an unknown scope at load; past it, such a key grants nothing.
        assert_eq!(
            keys.grant(Some(b"Bearer broken-key-0123456789")),
            Some(Scopes::NONE)
        );
    }

    #[test]
    fn scope_names_round_trip() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.name()), Some(s));
        }
        assert_eq!(Scope::parse("Push"), None);
        assert_eq!(Scope::parse(""), None);
        let all: Scopes = Scope::ALL.into_iter().collect();
        assert_eq!(all, Scopes::ALL);
    }
}
